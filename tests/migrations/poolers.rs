//! Exactly once wherever the database really is: the step through PgBouncer in
//! transaction, session and statement mode (a pool smaller than the pods), under the
//! server's idle limits, and with its lock taken away. After each run the checks read what
//! a user would: every migration and data migration once, no advisory lock held and no
//! setting of the step left in any pooled server session.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kubelet::{self, Container};
use crate::servers::{Engine, ONE_RACE_AT_A_TIME, Server, race_through, run_pod, server};
use crate::{Pairs, Pods, test_python, test_python_django42};

const LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug)]
enum PoolMode {
    Transaction,
    Session,
    Statement,
}

/// The port of the PgBouncer that `scripts/databases.sh` started in `mode`.
fn pgbouncer(mode: PoolMode) -> u16 {
    let name = format!(
        "DJANGO_MIGRATE_TEST_PGBOUNCER_{}_PORT",
        format!("{mode:?}").to_uppercase()
    );
    std::env::var(&name)
        .unwrap_or_else(|_| {
            panic!(
                "{name} is not set: PgBouncer is started by scripts/test.sh \
                 (or: scripts/databases.sh install && scripts/databases.sh start DIR && \
                 source DIR/env)"
            )
        })
        .parse()
        .expect("a port number")
}

/// Server connections PgBouncer keeps per database: fewer than the pods of a race.
fn pool_size() -> usize {
    std::env::var("DJANGO_MIGRATE_TEST_PGBOUNCER_POOL_SIZE")
        .expect("DJANGO_MIGRATE_TEST_PGBOUNCER_POOL_SIZE is set by scripts/databases.sh")
        .parse()
        .expect("a number")
}

/// Advisory locks held on `database`, by anybody.
fn advisory_locks(s: &Server, database: &str) -> i64 {
    s.scalar(
        database,
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
}

/// Reads every server session the pooler on `port` keeps for `database` and checks that
/// none holds an advisory lock or a setting of the step: what the app's own requests get
/// from the pool next. `defaults` are the database's own values of those settings.
fn assert_pool_clean(s: &Server, port: u16, database: &str, defaults: &[(&str, &str)]) {
    assert_eq!(
        advisory_locks(s, database),
        0,
        "{database}: an advisory lock is still held"
    );
    let pods = s.pods(test_python(), database, port, &s.password);
    let out = pods.python(&["pooled_sessions.py", &pool_size().to_string()], &[]);
    let sessions: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut seen = BTreeSet::new();
    for session in &sessions {
        seen.insert(session["pid"].as_i64().unwrap());
        assert_eq!(session["advisory_locks"], 0, "{database}: {session}");
        for (name, value) in defaults {
            assert_eq!(
                session["settings"][name], *value,
                "{database}: a pooled session kept the step's {name}: {session}"
            );
        }
    }
    // Every server session of the database is one of those just read.
    let backends = s.sql(
        database,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    );
    for pid in backends.lines().filter(|l| !l.is_empty()) {
        assert!(
            seen.contains(&pid.parse().unwrap()),
            "{database}: server session {pid} was not read through the pooler ({seen:?})"
        );
    }
    eprintln!(
        "{database}: {} pooled server sessions read: no advisory lock, no setting of the step",
        seen.len()
    );
}

const PG_DEFAULTS: &[(&str, &str)] = &[
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("idle_session_timeout", "0"),
    ("statement_timeout", "0"),
];

/// Plan mode through PgBouncer in transaction mode: the same report as direct, and its
/// lock timeout (SET LOCAL, in its read-only transaction) ends with it: no session of the
/// pool keeps it, none holds a lock.
#[test]
fn plan_through_pgbouncer_in_transaction_mode() {
    let s = server(Engine::Postgresql);
    let (direct, database) = crate::plan::one_release_behind(&s, "planpool");
    let port = pgbouncer(PoolMode::Transaction);
    let mut pooled = s.pods(test_python(), &database, port, &s.password);
    pooled.env.push(("SHIPPING_APP".into(), "1".into()));
    let deny: Pairs = &[("unsafe-migrations", "deny")];
    let through = crate::plan::plan_step(&pooled, deny).run(LIMIT);
    assert_eq!(through.code, 5, "{}", through.logs);
    let straight = crate::plan::plan_step(&direct, deny).run(LIMIT);
    assert_eq!(straight.code, 5, "{}", straight.logs);
    let (a, b) = (
        crate::plan::report(&through.logs),
        crate::plan::report(&straight.logs),
    );
    assert_eq!(
        a["migrations"], b["migrations"],
        "through the pooler and direct"
    );
    assert_eq!(a["verdict"], b["verdict"]);
    assert_pool_clean(&s, port, &database, PG_DEFAULTS);
}

#[test]
fn ten_pods_through_pgbouncer_in_transaction_and_session_mode() {
    ten_pods_through_pgbouncer(&test_python());
}

#[test]
fn ten_pods_through_pgbouncer_in_transaction_and_session_mode_django42() {
    ten_pods_through_pgbouncer(&test_python_django42());
}

fn ten_pods_through_pgbouncer(python: &std::path::Path) {
    let s = server(Engine::Postgresql);
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let port = pgbouncer(mode);
        let route = format!("through PgBouncer ({mode:?} mode, pool of {})", pool_size());
        for behind in [false, true] {
            let database = race_through(&s, port, &route, python.to_owned(), behind);
            assert_pool_clean(&s, port, &database, PG_DEFAULTS);
        }
    }
}

/// With psycopg 3 PgBouncer's refusal reaches the step; psycopg2 only sees the connection
/// closed each time a transaction is opened: both are refused.
#[test]
fn statement_pooling_is_refused_with_exit_6_and_nothing_applied() {
    statement_pooling_refused(test_python(), "psycopg 3");
}

#[test]
fn statement_pooling_is_refused_with_exit_6_and_nothing_applied_psycopg2_django42() {
    statement_pooling_refused(test_python_django42(), "psycopg2");
}

fn statement_pooling_refused(python: std::path::PathBuf, driver: &str) {
    let s = server(Engine::Postgresql);
    let database = s.create_database("statement");
    let pods = s.pods(
        python,
        &database,
        pgbouncer(PoolMode::Statement),
        &s.password,
    );
    let exits = run_pod(&pods.containers(&[], &[]));
    let (name, exit, _) = exits.last().unwrap();
    assert_eq!(name, "django-migrate");
    assert_eq!(exit.code, 6, "{}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "lock-unavailable", "{summary}");
    let message = summary["message"].as_str().unwrap();
    for needle in [
        "cannot hold the migration lock",
        "statement",
        "nothing was applied",
        "django-migrate.io/database",
    ] {
        assert!(
            message.contains(needle),
            "{driver}: {needle:?} not in {summary}"
        );
    }
    assert!(!exit.logs.contains("Traceback"), "{}", exit.logs);
    assert_eq!(
        s.scalar(
            &database,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        0,
        "nothing may be applied"
    );
    eprintln!("statement pooling, {driver}: exit 6, {message}");
}

#[test]
fn lock_queue_through_pgbouncer_in_transaction_mode() {
    let s = server(Engine::Postgresql);
    let route = format!(
        "through PgBouncer (Transaction mode, pool of {})",
        pool_size()
    );
    crate::safety::lock_queue_through(&s, pgbouncer(PoolMode::Transaction), &route);
}

/// Polls until an advisory lock is held on `database` (the step holds the migration
/// lock), and returns the server session that holds it.
fn lock_holder(s: &Server, database: &str) -> i64 {
    let started = Instant::now();
    loop {
        let pid = s.sql(
            database,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())",
        );
        if let Ok(pid) = pid.parse() {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the step never took the migration lock"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The test project's pods with a data migration of `seconds`.
fn slow_pods(s: &Server, database: &str, port: u16, seconds: &str) -> Pods {
    let mut pods = s.pods(test_python(), database, port, &s.password);
    pods.env.retain(|(k, _)| k != "SLOW_MIGRATION_SECONDS");
    pods.env
        .push(("SLOW_MIGRATION_SECONDS".into(), seconds.into()));
    pods
}

/// The Django steps of two pods, the second started 2 s after the first (which is then
/// migrating): how each ended, the first's first.
fn two_pods_two_seconds_apart(pods: &Pods) -> (kubelet::Exit, kubelet::Exit) {
    let containers = pods.containers(&[], &[]);
    let (first, second) = (step_of(pods, &containers, 0), step_of(pods, &containers, 1));
    let migrating = first.start();
    thread::sleep(Duration::from_secs(2));
    let waiting = second.run(LIMIT);
    let done = kubelet::wait(&first.name, migrating, LIMIT);
    (done, waiting)
}

/// The copy container of pod `i` has run; its Django step, ready to start.
fn step_of(pods: &Pods, containers: &[Container], i: usize) -> Container {
    let pod = pods.pod(containers, i);
    let copy = pod[0].run(LIMIT);
    assert_eq!(copy.code, 0, "{}", copy.logs);
    pod[1].clone()
}

/// A pod killed (SIGKILL, every process) in the middle of its data migration while it
/// holds the lock, through the pooler: the lock ends with it, the next pod applies
/// everything, the data migration's work is done once.
#[test]
fn a_pod_killed_while_it_holds_the_lock_through_pgbouncer() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = server(Engine::Postgresql);
    let port = pgbouncer(PoolMode::Transaction);
    let database = s.create_database("killed");
    let pods = slow_pods(&s, &database, port, "20");
    let containers = pods.containers(&[], &[]);
    let (first, second) = (
        step_of(&pods, &containers, 0),
        step_of(&pods, &containers, 1),
    );
    let child = first.start();
    lock_holder(&s, &database);
    thread::sleep(Duration::from_secs(3));
    kubelet::kill_container(&child);
    let killed = kubelet::wait(&first.name, child, LIMIT);
    assert_eq!(killed.code, -1, "killed by a signal: {}", killed.logs);
    let started = Instant::now();
    while advisory_locks(&s, &database) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the killed pod's lock is still held"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let released = started.elapsed();
    let next = second.run(LIMIT);
    assert_eq!(next.code, 0, "{}", next.logs);
    assert_eq!(pods.summary(Some(1))["result"], "applied", "{}", next.logs);
    s.assert_applied_once(&database, "after a pod was killed holding the lock");
    assert_pool_clean(&s, port, &database, PG_DEFAULTS);
    eprintln!(
        "killed holding the lock through PgBouncer: lock gone {released:.1?} after the kill; \
         the next pod applied everything once"
    );
}

/// The lock's server session ends while the holder runs its data migration (a DBA's
/// pg_terminate_backend, a failover): the holder rolls the migration back, exits 6 with
/// one line and `lock-lost`, never a traceback; the next pod applies it, once.
#[test]
fn a_lost_lock_stops_the_holder_before_anything_more_is_applied() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = server(Engine::Postgresql);
    for (port, route) in [
        (s.port, "direct"),
        (pgbouncer(PoolMode::Transaction), "through PgBouncer"),
    ] {
        let database = s.create_database("lost");
        let pods = slow_pods(&s, &database, port, "10");
        let containers = pods.containers(&[], &[]);
        let (first, second) = (
            step_of(&pods, &containers, 0),
            step_of(&pods, &containers, 1),
        );
        let child = first.start();
        let holder = lock_holder(&s, &database);
        thread::sleep(Duration::from_secs(3));
        s.sql(&database, &format!("SELECT pg_terminate_backend({holder})"));
        let lost = kubelet::wait(&first.name, child, LIMIT);
        assert_eq!(lost.code, 6, "{route}: {}", lost.logs);
        assert!(!lost.logs.contains("Traceback"), "{route}: {}", lost.logs);
        let summary = pods.summary(Some(0));
        assert_eq!(summary["result"], "lock-lost", "{route}: {summary}");
        assert_eq!(summary["phase"], "migrating", "{route}: {summary}");
        let message = summary["message"].as_str().unwrap();
        assert!(
            message.contains("lost the migration lock")
                && message.contains("catalog.0003_backfill_slugs was rolled back"),
            "{route}: {summary}"
        );
        assert_eq!(
            s.scalar(&database, "SELECT COUNT(*) FROM catalog_migrationrun"),
            0,
            "{route}: the interrupted data migration must leave nothing"
        );
        let next = second.run(LIMIT);
        assert_eq!(next.code, 0, "{route}: {}", next.logs);
        s.assert_applied_once(&database, &format!("{route}, after the lock was lost"));
        eprintln!("lock lost {route}: exit 6: {message}");
    }
}

/// Idle limits of a few seconds on the server, a data migration several times longer, a
/// second pod 2 s after the first: applied once, both pods exit 0.
fn idle_limits(s: &Server, port: u16, route: &str, settings: &[(&str, &str)]) {
    let database = s.create_database("idle");
    let mut pods = slow_pods(s, &database, port, "12");
    match s.engine {
        Engine::Postgresql => {
            for (name, value) in settings {
                s.sql(
                    "postgres",
                    &format!("ALTER DATABASE {database} SET {name} = '{value}'"),
                );
            }
        }
        Engine::Mysql => {
            let init = settings
                .iter()
                .map(|(n, v)| format!("SET SESSION {n} = {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            pods.env.push(("DB_INIT_COMMAND".into(), init));
        }
    }
    let started = Instant::now();
    let (done, waiting) = two_pods_two_seconds_apart(&pods);
    let context = format!("{:?} {route} with {settings:?}", s.engine);
    assert_eq!(done.code, 0, "{context}: first pod: {}", done.logs);
    assert_eq!(waiting.code, 0, "{context}: second pod: {}", waiting.logs);
    assert_eq!(pods.summary(Some(0))["result"], "applied", "{context}");
    assert_eq!(
        pods.summary(Some(1))["result"],
        "applied-by-other-pod",
        "{context}"
    );
    s.assert_applied_once(&database, &context);
    if s.engine == Engine::Postgresql && port != s.port {
        let mut defaults = PG_DEFAULTS.to_vec();
        defaults.retain(|(n, _)| !settings.iter().any(|(m, _)| m == n));
        assert_pool_clean(s, port, &database, &defaults);
    }
    eprintln!(
        "{context}: 12 s data migration applied once, both pods exit 0 after {:.1?}",
        started.elapsed()
    );
}

#[test]
fn idle_limits_shorter_than_the_migration() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pg = server(Engine::Postgresql);
    let limits = [
        ("idle_session_timeout", "3s"),
        ("idle_in_transaction_session_timeout", "3s"),
    ];
    idle_limits(&pg, pg.port, "direct", &limits);
    idle_limits(
        &pg,
        pgbouncer(PoolMode::Transaction),
        "through PgBouncer (Transaction mode)",
        &limits,
    );
    let mariadb = server(Engine::Mysql);
    idle_limits(&mariadb, mariadb.port, "direct", &[("wait_timeout", "3")]);
}

/// A throttled backfill (non-atomic, a pause between batches, the connection idle between
/// transactions) longer than the database's `idle_session_timeout`, directly and through
/// PgBouncer in transaction and session mode, a second pod 2 s after the first: every batch
/// written once, both pods exit 0, and no setting left on a pooled server session.
#[test]
fn a_pausing_non_atomic_migration_under_an_idle_session_limit() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = server(Engine::Postgresql);
    for (route, port) in [
        ("direct".to_owned(), s.port),
        (
            "through PgBouncer (Transaction mode)".to_owned(),
            pgbouncer(PoolMode::Transaction),
        ),
        (
            "through PgBouncer (Session mode)".to_owned(),
            pgbouncer(PoolMode::Session),
        ),
    ] {
        let database = s.create_database("throttled");
        s.sql(
            "postgres",
            &format!("ALTER DATABASE {database} SET idle_session_timeout = '2s'"),
        );
        let mut pods = s.pods(test_python(), &database, port, &s.password);
        pods.env.push(("THROTTLED_APP".into(), "1".into()));
        pods.env.push(("THROTTLE_PAUSE_SECONDS".into(), "5".into()));
        let started = Instant::now();
        let (done, waiting) = two_pods_two_seconds_apart(&pods);
        assert_eq!(done.code, 0, "{route}: first pod: {}", done.logs);
        assert_eq!(waiting.code, 0, "{route}: second pod: {}", waiting.logs);
        assert_eq!(
            s.scalar(&database, "SELECT count(*) FROM throttled_batch"),
            3,
            "{route}: every batch written once"
        );
        s.assert_applied_once(&database, &route);
        if port != s.port {
            let mut defaults = PG_DEFAULTS.to_vec();
            defaults.retain(|(n, _)| *n != "idle_session_timeout");
            defaults.push(("idle_session_timeout", "2s"));
            assert_pool_clean(&s, port, &database, &defaults);
        }
        eprintln!(
            "{route}: a backfill pausing 5 s between batches under idle_session_timeout = 2s \
             applied once, both pods exit 0 after {:.1?}",
            started.elapsed()
        );
    }
}
