//! What `manage.py migrate` does besides applying migrations, once per release, on real
//! PostgreSQL and MariaDB: the `post_migrate` run of a release with nothing to apply
//! (counted in rows its receiver writes and in lines of a file), a receiver that fails,
//! a migration that fails halfway, and the summary's times.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kubelet::{Container, POD_TEMPLATE_HASH};
use crate::servers::{Engine, ONE_RACE_AT_A_TIME, Server, run_pod, server};
use crate::{Pairs, Pods, test_python};
use django_migrate_webhook::names::ENV_RELEASE;

const LIMIT: Duration = Duration::from_secs(180);
const UPKEEP: Pairs = &[("UPKEEP_APP", "1")];

/// A database of the test project with the upkeep app, its pods, and the file the
/// receiver appends a line to on each run.
struct Upkeep {
    server: Server,
    database: String,
    pods: Pods,
    runs_file: std::path::PathBuf,
}

impl Upkeep {
    fn new(engine: Engine, label: &str) -> Upkeep {
        let server = server(engine);
        let database = server.create_database(label);
        let mut pods = server.pods(test_python(), &database, server.port, &server.password);
        let runs_file = pods.dir.path().join("upkeep-runs");
        pods.env.extend([
            ("UPKEEP_APP".into(), "1".into()),
            (
                "UPKEEP_RUNS_FILE".into(),
                runs_file.to_string_lossy().into(),
            ),
            ("SLOW_MIGRATION_SECONDS".into(), "0".into()),
        ]);
        Upkeep {
            server,
            database,
            pods,
            runs_file,
        }
    }

    /// The init containers (the code copy, the Django step) of a pod of release
    /// `release`, with extra env and annotations.
    fn pod_of(&self, release: &str, env: Pairs, annotations: Pairs) -> Vec<Container> {
        let mut containers = self.pods.containers(&[UPKEEP, env].concat(), annotations);
        containers[1].env.insert(ENV_RELEASE.into(), release.into());
        containers
    }

    /// The Django step of release `release` on its own (the code is copied already).
    fn step(&self, release: &str, env: Pairs, annotations: Pairs) -> Container {
        self.pod_of(release, env, annotations)[1].clone()
    }

    /// Runs of the receiver, counted twice: the rows it wrote and the lines it appended.
    fn runs(&self) -> usize {
        let rows = self
            .server
            .scalar(&self.database, "SELECT COUNT(*) FROM upkeep_upkeeprun");
        let lines = std::fs::read_to_string(&self.runs_file).map_or(0, |s| s.lines().count());
        assert_eq!(
            usize::try_from(rows).unwrap(),
            lines,
            "rows and file lines of the receiver's runs differ"
        );
        lines
    }

    /// Starts `n` pods of `containers` at once; their summaries, after all succeeded.
    fn pods_at_once(&self, containers: &[Container], n: usize) -> Vec<Value> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let pod = self.pods.pod(containers, i);
                thread::spawn(move || run_pod(&pod))
            })
            .collect();
        let exits: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        exits
            .iter()
            .enumerate()
            .map(|(i, exits)| {
                for (name, exit, _) in exits {
                    assert_eq!(exit.code, 0, "pod {i} {name}:\n{}", exit.logs);
                }
                assert_eq!(exits.len(), 2, "pod {i}");
                self.pods.summary(Some(i))
            })
            .collect()
    }
}

fn ran_here(summaries: &[Value]) -> usize {
    summaries
        .iter()
        .filter(|s| s["post_migrate"]["ran"] == true)
        .count()
}

/// The previous release deployed by hand (`manage.py migrate`, one run), then releases
/// with nothing to apply: six pods of one release run the receiver once between them, a
/// restart of that release runs it zero times (on the fast path), the next release once,
/// and a release with `post-migrate: false` never.
fn once_per_release(engine: Engine) {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let u = Upkeep::new(engine, "upkeep");
    u.pods.python(&["manage.py", "migrate", "-v", "0"], &[]);
    assert_eq!(u.runs(), 1, "{engine:?}: the deploy by hand ran it once");

    let release = u.pod_of(POD_TEMPLATE_HASH, &[("UPKEEP_SLEEP", "1")], &[]);
    let summaries = u.pods_at_once(&release, 6);
    assert_eq!(
        u.runs(),
        2,
        "{engine:?}: six pods of one release: {summaries:?}"
    );
    assert_eq!(ran_here(&summaries), 1, "{summaries:?}");
    for s in &summaries {
        assert_eq!(s["result"], "nothing-pending", "{s}");
        assert_eq!(s["post_migrate"]["release"], POD_TEMPLATE_HASH, "{s}");
    }
    let ran = summaries
        .iter()
        .find(|s| s["post_migrate"]["ran"] == true)
        .unwrap();
    assert!(
        ran["message"]
            .as_str()
            .unwrap()
            .contains(&format!("post_migrate ran for release {POD_TEMPLATE_HASH}")),
        "{ran}"
    );
    assert!(
        ran["seconds"]["post_migrate"].as_f64().unwrap() >= 1.0,
        "{ran}"
    );

    // A restart of the same release: no run, and no Django start either.
    let exit = release[1].run(LIMIT);
    let restart = u.pods.summary(None);
    assert_eq!(exit.code, 0, "{restart}");
    assert_eq!(restart["fast_path"]["taken"], true, "{restart}");
    assert_eq!(u.runs(), 2, "{engine:?}: a restart of the release");

    // The next release (a new image without migrations): one run among three pods; the
    // fast path says why it could not end the step.
    let next = u.pod_of("7b6c5d4e3", &[("UPKEEP_SLEEP", "1")], &[]);
    let summaries = u.pods_at_once(&next, 3);
    assert_eq!(
        u.runs(),
        3,
        "{engine:?}: three pods of the next release: {summaries:?}"
    );
    assert_eq!(ran_here(&summaries), 1, "{summaries:?}");
    assert!(
        summaries.iter().all(|s| s["fast_path"]["why"]
            .as_str()
            .unwrap()
            .contains("post_migrate has not run for release 7b6c5d4e3")),
        "{summaries:?}"
    );

    // Turned off: no run, and the fast path ends the step.
    let off = u.step("0a1b2c3d4", &[], &[("post-migrate", "false")]);
    assert_eq!(off.run(LIMIT).code, 0);
    let summary = u.pods.summary(None);
    assert_eq!(summary["fast_path"]["taken"], true, "{summary}");
    assert_eq!(u.runs(), 3, "{engine:?}: post-migrate false");
    eprintln!(
        "{engine:?}: post_migrate runs: deploy by hand 1, six pods of a release 1, restart 0, next release 1, off 0"
    );
}

#[test]
fn postgresql_post_migrate_runs_once_per_release() {
    once_per_release(Engine::Postgresql);
}

#[test]
fn mysql_post_migrate_runs_once_per_release() {
    once_per_release(Engine::Mysql);
}

/// A receiver that raises after every migration was applied: the step fails with its
/// own result and names the receiver; nothing is pending, and the next pod of the
/// release runs post_migrate again (and the one after it does not).
fn failing_receiver(engine: Engine) {
    let u = Upkeep::new(engine, "upkeepfail");
    let failing = u.step(POD_TEMPLATE_HASH, &[("UPKEEP_FAIL", "1")], &[]);
    let exit = failing.run(LIMIT);
    let summary = u.pods.summary(None);
    assert_eq!(exit.code, 2, "{summary}\n{}", exit.logs);
    assert_eq!(summary["result"], "post-migrate-failed", "{summary}");
    assert!(summary["failed_migration"].is_null(), "{summary}");
    assert_eq!(summary["counts"]["pending"], 0, "{summary}");
    let applied = summary["counts"]["applied"].as_u64().unwrap();
    assert!(applied >= 7, "{summary}");
    let message = summary["message"].as_str().unwrap();
    for said in [
        &format!("every migration was applied and recorded ({applied} by this pod)"),
        "post_migrate failed in receiver upkeep.apps.record_run: RuntimeError: the upkeep receiver fails on purpose",
        "the next pod of this release runs post_migrate again",
    ] {
        assert!(message.contains(said), "{engine:?}: {message}");
    }
    assert_eq!(
        summary["post_migrate"]["receiver"],
        "upkeep.apps.record_run"
    );
    eprintln!("{engine:?}: {message}");
    assert_eq!(u.runs(), 0);

    let next = u.step(POD_TEMPLATE_HASH, &[], &[]);
    assert_eq!(next.run(LIMIT).code, 0);
    let summary = u.pods.summary(None);
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert_eq!(summary["post_migrate"]["ran"], true, "{summary}");
    assert_eq!(u.runs(), 1, "{engine:?}: the next pod ran it again");
    assert_eq!(next.run(LIMIT).code, 0);
    assert_eq!(u.runs(), 1, "{engine:?}: and the one after it did not");

    // The same with nothing to apply: a new release whose receiver raises.
    let failing = u.step("7b6c5d4e3", &[("UPKEEP_FAIL", "1")], &[]);
    assert_eq!(failing.run(LIMIT).code, 2);
    let summary = u.pods.summary(None);
    assert_eq!(summary["result"], "post-migrate-failed", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("(0 by this pod)"),
        "{summary}"
    );
}

#[test]
fn postgresql_a_failing_post_migrate_receiver_is_named_and_run_again() {
    failing_receiver(Engine::Postgresql);
}

#[test]
fn mysql_a_failing_post_migrate_receiver_is_named_and_run_again() {
    failing_receiver(Engine::Mysql);
}

/// A migration that creates a table and then fails: MariaDB keeps the table, and the
/// step says the migration is half-applied, what ran and what to do; PostgreSQL rolls it
/// back, and the step says it failed.
#[test]
fn a_migration_that_fails_halfway_is_reported_half_applied() {
    for engine in [Engine::Mysql, Engine::Postgresql] {
        let s = server(engine);
        let database = s.create_database("halfway");
        let pods = s.pods(test_python(), &database, s.port, &s.password);
        let step = pods.containers(&[("HALFWAY_APP", "1")], &[])[1].clone();
        let exit = step.run(LIMIT);
        let summary = pods.summary(None);
        assert_eq!(exit.code, 2, "{summary}\n{}", exit.logs);
        assert_eq!(summary["failed_migration"], "halfway.0001_create_then_fail");
        let message = summary["message"].as_str().unwrap();
        let this_database = match engine {
            Engine::Postgresql => "table_catalog = current_database()",
            Engine::Mysql => "table_schema = DATABASE()",
        };
        let table = s.scalar(
            &database,
            &format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_name = 'halfway_thing' AND {this_database}"
            ),
        );
        if engine == Engine::Mysql {
            assert_eq!(summary["result"], "half-applied", "{summary}");
            for said in [
                "migration halfway.0001_create_then_fail is half-applied: ",
                "statement(s) of it ran and stay",
                "cannot roll DDL back",
                "RuntimeError: the second operation fails on purpose",
                "ran: CREATE TABLE `halfway_thing`",
                "manage.py migrate halfway 0001_create_then_fail --fake",
            ] {
                assert!(message.contains(said), "{message}");
            }
            assert_eq!(table, 1, "MariaDB keeps the table");
        } else {
            assert_eq!(summary["result"], "failed", "{summary}");
            assert!(!message.contains("half-applied"), "{message}");
            assert_eq!(table, 0, "PostgreSQL rolled the table back");
        }
        eprintln!("{engine:?}: {message}");
    }
}

/// The summary's times count from the container's start: the total covers Django's
/// start-up, which it also gives on its own.
#[test]
fn the_summary_times_the_step_from_the_container_start() {
    let s = server(Engine::Postgresql);
    let database = s.create_database("times");
    let pods = s.pods(test_python(), &database, s.port, &s.password);
    let step = pods.containers(&[], &[("fast-path", "false")])[1].clone();
    let started = Instant::now();
    assert_eq!(step.run(LIMIT).code, 0);
    let wall = started.elapsed().as_secs_f64();
    let summary = pods.summary(None);
    let seconds = &summary["seconds"];
    let total = seconds["total"].as_f64().unwrap();
    let setup = seconds["django_setup"].as_f64().unwrap();
    assert!(setup > 0.0, "{summary}");
    assert!(
        total >= setup + seconds["migrate"].as_f64().unwrap(),
        "{summary}"
    );
    // What the container's process did not see: its own exec and exit.
    assert!(
        total <= wall && total >= wall - 1.0,
        "wall {wall:.2}s: {summary}"
    );
    eprintln!("container {wall:.2}s, summary {seconds}");
}
