//! Expand and contract on real PostgreSQL and MariaDB, with the `ledger` app of the test
//! project: release 1 reads `ledger_entry.legacy`, release 2 drops it. At pod start the
//! step leaves the deferred migrations (django-safemigrate's `Safe.after_deploy()`, the
//! `defer` annotation, breaking ones under `unsafe-migrations: defer`) for the contract
//! run, which applies them once no pod of release 1 is left.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use django_migrate_webhook::names;
use django_migrate_webhook::summary::{StepResult, Summary};
use serde_json::{Value, json};

use crate::kubelet::{self, Container};
use crate::servers::{Engine, ONE_RACE_AT_A_TIME, Server, server};
use crate::{Pairs, Pods, test_python, test_python_django42};

const LIMIT: Duration = Duration::from_secs(180);
const DROP: &str = "ledger.0002_remove_entry_legacy";
const RELEASE_1: Pairs = &[("LEDGER_RELEASE", "1")];
const DEFER: Pairs = &[("unsafe-migrations", "defer")];

/// Pods of release 2 of the ledger on a new database; `variant` picks its migrations
/// (`LEDGER_MIGRATIONS`, empty for the default ones).
fn ledger_pods(s: &Server, python: PathBuf, variant: &str, label: &str) -> (Pods, String) {
    let database = s.create_database(label);
    let mut pods = s.pods(python, &database, s.port, &s.password);
    pods.env.push(("LEDGER_APP".into(), "1".into()));
    if !variant.is_empty() {
        pods.env.push(("LEDGER_MIGRATIONS".into(), variant.into()));
    }
    (pods, database)
}

/// Release 1's deploy: `manage.py migrate ARGS` with its code.
fn release_1_migrate(pods: &Pods, args: &[&str]) {
    pods.python(
        &[&["manage.py", "migrate"], args, &["-v", "0"]].concat(),
        RELEASE_1,
    );
}

/// `GET /ledger/` through the code of `release`: "STATUS BODY".
fn ledger_view(pods: &Pods, release: &str) -> String {
    pods.python(&["ledger_probe.py", "get"], &[("LEDGER_RELEASE", release)])
        .trim()
        .to_owned()
}

fn rows(s: &Server, database: &str, migration: &str) -> i64 {
    let (app, name) = migration.split_once('.').unwrap();
    s.scalar(
        database,
        &format!("SELECT COUNT(*) FROM django_migrations WHERE app = '{app}' AND name = '{name}'"),
    )
}

fn all_rows(s: &Server, database: &str) -> i64 {
    s.scalar(database, "SELECT COUNT(*) FROM django_migrations")
}

/// Whether the real table `ledger_entry` has the column `legacy`.
fn has_legacy_column(s: &Server, database: &str) -> bool {
    let schema = match s.engine {
        Engine::Postgresql => "current_schema()",
        Engine::Mysql => "DATABASE()",
    };
    s.scalar(
        database,
        &format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = {schema} \
             AND table_name = 'ledger_entry' AND column_name = 'legacy'"
        ),
    ) == 1
}

/// The step of the contract run's Job: the Deployment's step in `contract` mode.
fn contract_step(containers: &[Container]) -> Vec<Container> {
    containers
        .iter()
        .cloned()
        .map(|mut c| {
            if c.name == names::MIGRATE_CONTAINER {
                c.env.insert(names::ENV_MODE.into(), "contract".into());
            }
            c
        })
        .collect()
}

/// The termination message as the controller reads it.
fn parsed(pods: &Pods, pod: Option<usize>) -> Summary {
    let text = pods.termination_message(pod);
    Summary::parse(&text).unwrap_or_else(|| panic!("not a summary: {text}"))
}

fn message(summary: &Value) -> &str {
    summary["message"].as_str().unwrap()
}

/// Runs the pods' init containers (the copy, then the step) at once, each pod in a thread;
/// the step's exits, by pod.
fn run_at_once(pods: &[Vec<Container>]) -> Vec<kubelet::Exit> {
    for pod in pods {
        let copy = pod[0].run(LIMIT);
        assert_eq!(copy.code, 0, "{}", copy.logs);
    }
    let handles: Vec<_> = pods
        .iter()
        .map(|pod| {
            let step = pod[1].clone();
            thread::spawn(move || step.run(LIMIT))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// `Safe.after_deploy(delay=timedelta(minutes=5))` on the column drop: a first install
/// applies everything else, leaves the column, and names the drop with its delay for the
/// contract run; the next pod start has nothing to apply and says the same. Migrations
/// marked `Safe.before_deploy()` and `Safe.always` are applied at pod start.
fn after_deploy_marker(engine: Engine) {
    let s = server(engine);
    let (pods, database) = ledger_pods(&s, test_python(), "marked", "marked");
    let step = pods.containers(&[], &[])[1].clone();
    let exit = step.run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(rows(&s, &database, "ledger.0001_initial"), 1);
    assert_eq!(rows(&s, &database, DROP), 0);
    assert!(has_legacy_column(&s, &database));
    assert_eq!(
        summary["deferred"],
        json!([{"migration": DROP, "why": "marked Safe.after_deploy()", "delay": 300.0}]),
        "{summary}"
    );
    assert_eq!(summary["contract_delay_seconds"], json!(300.0), "{summary}");
    assert!(
        message(&summary).ends_with(&format!("; 1 deferred to the contract run: {DROP}")),
        "{summary}"
    );
    assert!(
        !summary["applied"]
            .as_array()
            .unwrap()
            .contains(&json!(DROP)),
        "{summary}"
    );
    let parsed = parsed(&pods, None);
    assert_eq!(parsed.deferred_count(), 1);
    assert_eq!(parsed.deferred[0].delay, Some(300.0));
    assert_eq!(parsed.contract_delay_seconds, Some(300.0));

    // The next pod: nothing to apply, the drop still deferred.
    let exit = step.run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert!(
        message(&summary).contains(&format!("1 deferred to the contract run: {DROP}")),
        "{summary}"
    );
    assert_eq!(rows(&s, &database, DROP), 0);

    // before_deploy and always: applied at pod start, on top of release 1.
    let (pods, database) = ledger_pods(&s, test_python(), "safe", "safe");
    release_1_migrate(&pods, &[]);
    let exit = pods.containers(&[], &[])[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(
        summary["applied"],
        json!(["ledger.0002_entry_note", "ledger.0003_entry_tag"]),
        "{summary}"
    );
    assert_eq!(summary["deferred"], json!([]), "{summary}");
    assert_eq!(summary["contract_delay_seconds"], Value::Null, "{summary}");
    assert_eq!(rows(&s, &database, "ledger.0003_entry_tag"), 1);
    eprintln!("{engine:?}: after_deploy deferred with its delay; before_deploy and always applied");
}

#[test]
fn after_deploy_marker_postgresql() {
    after_deploy_marker(Engine::Postgresql);
}

#[test]
fn after_deploy_marker_mariadb() {
    after_deploy_marker(Engine::Mysql);
}

/// `django-migrate.io/defer` names an unmarked migration: everything else of the plan is
/// applied, the named one waits.
fn defer_annotation(engine: Engine) {
    let s = server(engine);
    let (pods, database) = ledger_pods(&s, test_python(), "", "deferann");
    release_1_migrate(&pods, &["ledger"]);
    let exit = pods.containers(&[], &[("defer", DROP)])[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(summary["counts"]["applied"], 6, "{summary}");
    assert_eq!(
        summary["deferred"],
        json!([{"migration": DROP, "why": "named in django-migrate.io/defer", "delay": null}]),
        "{summary}"
    );
    assert_eq!(summary["contract_delay_seconds"], Value::Null, "{summary}");
    assert!(
        message(&summary).starts_with("applied 6 migrations"),
        "{summary}"
    );
    assert!(
        message(&summary).ends_with(&format!("; 1 deferred to the contract run: {DROP}")),
        "{summary}"
    );
    assert!(
        exit.logs.contains(&format!(
            "deferred to the contract run (named in django-migrate.io/defer): {DROP}"
        )),
        "{}",
        exit.logs
    );
    assert_eq!(rows(&s, &database, DROP), 0);
    assert_eq!(all_rows(&s, &database), 7);
    assert!(has_legacy_column(&s, &database));

    // The contract run under `deny`: no pod of release 1 is left, so the drop is applied,
    // named, and not held back.
    let job =
        contract_step(&pods.containers(&[], &[("defer", DROP), ("unsafe-migrations", "deny")]));
    let exit = job[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(
        (&summary["mode"], &summary["result"], &summary["applied"]),
        (&json!("contract"), &json!("applied"), &json!([DROP])),
        "{summary}"
    );
    assert_eq!(
        summary["unsafe_operations"][0]["applied"], true,
        "{summary}"
    );
    assert_eq!(summary["counts"]["held_back"], 0, "{summary}");
    assert_eq!(rows(&s, &database, DROP), 1);
    assert!(!has_legacy_column(&s, &database));
    eprintln!(
        "{engine:?}: the defer annotation left {DROP} for the contract run, which applied it under deny"
    );
}

#[test]
fn defer_annotation_postgresql() {
    defer_annotation(Engine::Postgresql);
}

#[test]
fn defer_annotation_mariadb() {
    defer_annotation(Engine::Mysql);
}

/// `unsafe-migrations: defer` with release 1 serving: the unmarked column drop waits, the
/// rest is applied, and release 1's `/ledger/` (which reads the column) keeps working.
/// Then two contract runs start at once: exactly one drops the column, both exit 0, and
/// release 1's code now fails while release 2's works.
fn unsafe_defer_then_contract(engine: Engine, python: PathBuf) {
    let context = format!("{engine:?}, Django {}", crate::django_version(&python));
    let s = server(engine);
    let (pods, database) = ledger_pods(&s, python, "", "defer");
    release_1_migrate(&pods, &["ledger"]);
    pods.python(&["ledger_probe.py", "add", "a1"], RELEASE_1);
    assert_eq!(ledger_view(&pods, "1"), r#"200 {"release": 1, "rows": 1}"#);

    // Expand: the step of release 2's pods.
    let containers = pods.containers(&[], DEFER);
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{context}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(summary["counts"]["applied"], 6, "{summary}");
    assert_eq!(
        summary["deferred"],
        json!([{"migration": DROP, "why": "unsafe for the release still serving", "delay": null}]),
        "{summary}"
    );
    assert!(
        message(&summary).ends_with(&format!("; 1 deferred to the contract run: {DROP}")),
        "{summary}"
    );
    assert_eq!(rows(&s, &database, DROP), 0);
    assert!(has_legacy_column(&s, &database));
    assert_eq!(
        ledger_view(&pods, "1"),
        r#"200 {"release": 1, "rows": 1}"#,
        "{context}: release 1 after the expand step"
    );
    assert_eq!(ledger_view(&pods, "2"), r#"200 {"release": 2, "rows": 1}"#);

    // Another pod of release 2 starts: nothing to apply, the drop still waits.
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{context}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert_eq!(
        message(&summary).split_once("; ").unwrap().1,
        format!("1 deferred to the contract run: {DROP}"),
        "{summary}"
    );
    assert_eq!(rows(&s, &database, DROP), 0);

    // Contract: two runs at once, as two Jobs would.
    let job = contract_step(&containers);
    let exits = run_at_once(&[pods.pod(&job, 0), pods.pod(&job, 1)]);
    let mut appliers = Vec::new();
    for (i, exit) in exits.iter().enumerate() {
        assert_eq!(exit.code, 0, "{context}: contract run {i}: {}", exit.logs);
        assert!(
            exit.logs.contains("django-migrate contract ["),
            "{}",
            exit.logs
        );
        let summary = pods.summary(Some(i));
        assert_eq!(summary["mode"], "contract", "{summary}");
        assert_eq!(summary["deferred"], json!([]), "{summary}");
        let parsed = parsed(&pods, Some(i));
        if parsed.result == StepResult::Applied {
            assert_eq!(parsed.applied, [DROP], "{summary}");
            let op = &parsed.unsafe_operations[0];
            assert_eq!(
                (
                    op.migration.as_str(),
                    op.kind.as_str(),
                    op.applied,
                    op.held_back
                ),
                (DROP, "breaking", true, false),
                "{summary}"
            );
            appliers.push(i);
        } else {
            assert!(
                [StepResult::NothingPending, StepResult::AppliedByOtherPod]
                    .contains(&parsed.result),
                "{summary}"
            );
            assert!(parsed.applied.is_empty(), "{summary}");
        }
    }
    assert_eq!(
        appliers.len(),
        1,
        "{context}: exactly one contract run applies it"
    );
    assert_eq!(rows(&s, &database, DROP), 1);
    assert!(!has_legacy_column(&s, &database));
    assert!(
        ledger_view(&pods, "1").starts_with("500 "),
        "{context}: release 1 reads the dropped column"
    );
    assert_eq!(ledger_view(&pods, "2"), r#"200 {"release": 2, "rows": 1}"#);
    eprintln!(
        "{context}: the drop waited for the contract run; contract run {} applied it, once",
        appliers[0]
    );
}

#[test]
fn unsafe_defer_then_contract_postgresql() {
    unsafe_defer_then_contract(Engine::Postgresql, test_python());
}

#[test]
fn unsafe_defer_then_contract_mariadb() {
    unsafe_defer_then_contract(Engine::Mysql, test_python());
}

#[test]
fn unsafe_defer_then_contract_postgresql_django42() {
    unsafe_defer_then_contract(Engine::Postgresql, test_python_django42());
}

#[test]
fn unsafe_defer_then_contract_mariadb_django42() {
    unsafe_defer_then_contract(Engine::Mysql, test_python_django42());
}

/// A migration that is not deferred depends on one that is: exit 5, both named, nothing
/// of the plan applied (the other apps' migrations included). Deferring it too, as the
/// message says, lets the rest through.
fn blocked_by_deferred(engine: Engine) {
    let s = server(engine);
    let (pods, database) = ledger_pods(&s, test_python(), "blocked", "blocked");
    release_1_migrate(&pods, &["ledger"]);
    let before = all_rows(&s, &database);
    let exit = pods.containers(&[], &[])[1].run(LIMIT);
    assert_eq!(exit.code, 5, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "deferred-blocked", "{summary}");
    let text = message(&summary);
    for part in [
        "ledger.0003_entry_note depends on ledger.0002_remove_entry_legacy",
        "nothing was applied",
        "django-migrate.io/defer",
        "ship it in the next release",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert_eq!(summary["deferred"][0]["migration"], DROP, "{summary}");
    assert_eq!(summary["applied"], json!([]), "{summary}");
    assert_eq!(
        all_rows(&s, &database),
        before,
        "nothing of the plan applied"
    );
    assert!(has_legacy_column(&s, &database));

    let exit = pods.containers(&[], &[("defer", "ledger.0003_entry_note")])[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["counts"]["deferred"], 2, "{summary}");
    assert_eq!(rows(&s, &database, "ledger.0003_entry_note"), 0);
    assert_eq!(all_rows(&s, &database), before + 6);
    eprintln!("{engine:?}: a migration after a deferred one stopped the step: {text}");
}

#[test]
fn blocked_by_deferred_postgresql() {
    blocked_by_deferred(Engine::Postgresql);
}

#[test]
fn blocked_by_deferred_mariadb() {
    blocked_by_deferred(Engine::Mysql);
}

/// One pod migrates (a 6 s data migration among the rest) under `defer`; a pod that waits
/// for its lock and a `wait`-mode pod (a worker) start meanwhile: both exit 0 once the
/// rest is applied, while the deferred drop is still pending.
fn waiting_pods_skip_deferred(engine: Engine) {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = server(engine);
    let (mut pods, database) = ledger_pods(&s, test_python(), "", "waiting");
    pods.env.retain(|(k, _)| k != "SLOW_MIGRATION_SECONDS");
    pods.env.push(("SLOW_MIGRATION_SECONDS".into(), "6".into()));
    release_1_migrate(&pods, &["ledger"]);
    let migrate = pods.containers(
        &[],
        &[("unsafe-migrations", "defer"), ("migrate-timeout", "60")],
    );
    let wait = pods.containers(
        &[],
        &[
            ("unsafe-migrations", "defer"),
            ("migrate-timeout", "60"),
            ("mode", "wait"),
        ],
    );
    let first = pods.pod(&migrate, 0);
    let copy = first[0].run(LIMIT);
    assert_eq!(copy.code, 0, "{}", copy.logs);
    let started = Instant::now();
    let migrating = first[1].start();
    thread::sleep(Duration::from_secs(2));
    let exits = run_at_once(&[pods.pod(&migrate, 1), pods.pod(&wait, 2)]);
    let done = kubelet::wait(&first[1].name, migrating, LIMIT);
    let took = started.elapsed();
    assert_eq!(done.code, 0, "{engine:?}: {}", done.logs);
    assert_eq!(pods.summary(Some(0))["result"], "applied");
    for (i, exit) in exits.iter().enumerate() {
        let pod = i + 1;
        assert_eq!(exit.code, 0, "{engine:?}: pod {pod}: {}", exit.logs);
        let summary = pods.summary(Some(pod));
        assert_eq!(summary["result"], "applied-by-other-pod", "{summary}");
        assert_eq!(summary["mode"], if pod == 2 { "wait" } else { "migrate" });
        assert_eq!(summary["pending"], json!([]), "{summary}");
        assert_eq!(summary["deferred"][0]["migration"], DROP, "{summary}");
        assert!(
            message(&summary).ends_with(&format!("; 1 deferred to the contract run: {DROP}")),
            "{summary}"
        );
    }
    assert_eq!(rows(&s, &database, DROP), 0);
    assert_eq!(rows(&s, &database, "catalog.0003_backfill_slugs"), 1);
    assert!(has_legacy_column(&s, &database));
    eprintln!(
        "{engine:?}: a pod waiting for the lock and a wait-mode pod were done after {took:.1?} \
         with {DROP} still pending"
    );
}

#[test]
fn waiting_pods_skip_deferred_postgresql() {
    waiting_pods_skip_deferred(Engine::Postgresql);
}

#[test]
fn waiting_pods_skip_deferred_mariadb() {
    waiting_pods_skip_deferred(Engine::Mysql);
}
