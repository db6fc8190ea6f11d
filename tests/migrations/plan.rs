//! Plan mode on real PostgreSQL and MariaDB, with the `shipping` app of the test project:
//! a database one release behind whose table holds 200,000 rows, and a release that
//! builds an index on it, backfills it, makes a column non-nullable and drops one. The
//! plan names every pending migration and what the settings do with it, sizes the locking
//! operations from the statistics, and leaves the database exactly as it was: the rows of
//! `django_migrations`, the schema and indexes, every table's rows, no record table, no
//! row written by its session, no lock taken, no migrating pod waited for.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kubelet::{self, Container};
use crate::servers::{Engine, Server, server};
use crate::{Pairs, Pods, test_python};

const LIMIT: Duration = Duration::from_secs(180);
const ROWS: i64 = 200_000;
const PENDING: [&str; 4] = [
    "shipping.0002_shipment_code_index",
    "shipping.0003_fill_note",
    "shipping.0004_shipment_note_not_null",
    "shipping.0005_remove_shipment_legacy",
];

/// Pods of the shipping release on a new database at the previous release (every app
/// migrated, shipping at 0001) with `ROWS` shipments, half of them without a note.
pub(crate) fn one_release_behind(s: &Server, label: &str) -> (Pods, String) {
    let database = s.create_database(label);
    let mut pods = s.pods(test_python(), &database, s.port, &s.password);
    pods.env.push(("SHIPPING_APP".into(), "1".into()));
    pods.python(&["manage.py", "migrate", "-v", "0"], &[]);
    pods.python(
        &["manage.py", "migrate", "shipping", "0001", "-v", "0"],
        &[],
    );
    if s.engine == Engine::Mysql {
        // Per-table counts of changed rows (information_schema.TABLE_STATISTICS).
        s.sql(&database, "SET GLOBAL userstat = 1");
    }
    let fill = match s.engine {
        Engine::Postgresql => format!(
            "INSERT INTO shipping_shipment (code, weight, note, legacy) \
             SELECT 'S' || g, g % 1000, CASE WHEN g % 2 = 0 THEN NULL ELSE 'n' END, 'x' \
             FROM generate_series(1, {ROWS}) g; ANALYZE shipping_shipment"
        ),
        Engine::Mysql => format!(
            "INSERT INTO shipping_shipment (code, weight, note, legacy) \
             SELECT CONCAT('S', seq), seq % 1000, IF(seq % 2 = 0, NULL, 'n'), 'x' \
             FROM seq_1_to_{ROWS}; ANALYZE TABLE shipping_shipment"
        ),
    };
    s.sql(&database, &fill);
    (pods, database)
}

/// Everything a user would compare to see that nothing changed, as text per part.
fn snapshot(s: &Server, database: &str) -> Vec<(&'static str, String)> {
    let parts: &[(&str, &str)] = match s.engine {
        Engine::Postgresql => &[
            (
                "django_migrations",
                "SELECT string_agg(id || ':' || app || '.' || name || '@' || applied, ',' ORDER BY id) \
                 FROM django_migrations",
            ),
            (
                "tables",
                "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
                 WHERE schemaname = current_schema()",
            ),
            (
                "columns",
                "SELECT string_agg(table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
                 || ' ' || coalesce(column_default, ''), ',' ORDER BY table_name, column_name) \
                 FROM information_schema.columns WHERE table_schema = current_schema()",
            ),
            (
                "indexes",
                "SELECT string_agg(indexdef, ',' ORDER BY indexname) FROM pg_indexes \
                 WHERE schemaname = current_schema()",
            ),
            (
                "rows written (inserted, updated, deleted)",
                "SELECT sum(n_tup_ins) || ',' || sum(n_tup_upd) || ',' || sum(n_tup_del) \
                 FROM pg_stat_user_tables",
            ),
            (
                "shipments",
                "SELECT count(*) || ',' || sum(weight) || ',' || count(note) || ',' || md5(string_agg(code || coalesce(note, '-'), ',' ORDER BY id)) \
                 FROM shipping_shipment",
            ),
        ],
        Engine::Mysql => &[
            (
                "django_migrations",
                "SET SESSION group_concat_max_len = 1000000; SELECT GROUP_CONCAT(CONCAT(id, ':', app, '.', \
                 name, '@', applied) ORDER BY id) FROM django_migrations",
            ),
            (
                "tables",
                "SELECT GROUP_CONCAT(TABLE_NAME ORDER BY TABLE_NAME) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE()",
            ),
            (
                "columns",
                "SET SESSION group_concat_max_len = 1000000; SELECT GROUP_CONCAT(CONCAT(TABLE_NAME, '.', \
                 COLUMN_NAME, ' ', COLUMN_TYPE, ' ', IS_NULLABLE, ' ', COALESCE(COLUMN_DEFAULT, '')) \
                 ORDER BY TABLE_NAME, COLUMN_NAME) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE()",
            ),
            (
                "indexes",
                "SET SESSION group_concat_max_len = 1000000; SELECT GROUP_CONCAT(CONCAT(TABLE_NAME, '.', \
                 INDEX_NAME, '.', COLUMN_NAME) ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX) \
                 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()",
            ),
            (
                "rows written (changed)",
                "SELECT COALESCE(SUM(ROWS_CHANGED), 0) FROM information_schema.TABLE_STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE()",
            ),
            (
                "shipments",
                "SET SESSION group_concat_max_len = 100000000; SELECT CONCAT(COUNT(*), ',', SUM(weight), ',', \
                 COUNT(note), ',', MD5(GROUP_CONCAT(CONCAT(code, COALESCE(note, '-')) \
                 ORDER BY id))) FROM shipping_shipment",
            ),
        ],
    };
    parts
        .iter()
        .map(|(name, sql)| (*name, s.sql(database, sql)))
        .collect()
}

/// The migration lock's holders in `database`: PostgreSQL's advisory locks, MariaDB's
/// GET_LOCK of the step's name.
fn lock_holders(s: &Server, database: &str) -> i64 {
    match s.engine {
        Engine::Postgresql => s.scalar(
            database,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ),
        Engine::Mysql => s.scalar(
            database,
            &format!("SELECT IS_USED_LOCK('django-migrate:{database}') IS NOT NULL"),
        ),
    }
}

/// The step of these pods with `annotations`, in plan mode (as the plan Job runs it).
pub(crate) fn plan_step(pods: &Pods, annotations: Pairs) -> Container {
    let mut step = pods.containers(&[], annotations)[1].clone();
    step.env.insert(
        django_migrate_webhook::names::ENV_MODE.into(),
        "plan".into(),
    );
    step
}

/// The report the step printed: its one JSON line on stdout.
pub(crate) fn report(logs: &str) -> Value {
    let line = logs
        .lines()
        .rfind(|l| l.starts_with("{\"django_migrate_plan\":"))
        .unwrap_or_else(|| panic!("no plan report in the logs:\n{logs}"));
    serde_json::from_str(line).unwrap()
}

fn findings(report: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for m in report["migrations"].as_array().unwrap() {
        for o in m["operations"].as_array().unwrap() {
            for f in o["findings"].as_array().unwrap() {
                out.push((m["migration"].as_str().unwrap().to_owned(), f.clone()));
            }
        }
    }
    out
}

fn plan_changes_nothing(engine: Engine) {
    let s = server(engine);
    let (pods, database) = one_release_behind(&s, "plan");
    // The statistics of the fill are flushed within a second of its session's end.
    thread::sleep(Duration::from_secs(2));
    let before = snapshot(&s, &database);

    let started = Instant::now();
    let denied = plan_step(&pods, &[("unsafe-migrations", "deny")]).run(LIMIT);
    let took = started.elapsed();
    assert_eq!(denied.code, 5, "{engine:?}: {}", denied.logs);
    let plan = report(&denied.logs);
    let names: Vec<&str> = plan["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["migration"].as_str().unwrap())
        .collect();
    assert_eq!(names, PENDING, "{plan}");
    assert_eq!(plan["verdict"], "held-back", "{plan}");
    let actions: Vec<&str> = plan["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["apply", "apply", "hold-back", "hold-back"],
        "{plan}"
    );
    assert_eq!(plan["counts"]["data"], 1, "the RunPython: {plan}");
    let all = findings(&plan);
    let locking: Vec<&Value> = all
        .iter()
        .filter(|(_, f)| f["kind"] == "locking" && f["table"] == "shipping_shipment")
        .map(|(_, f)| f)
        .collect();
    assert!(
        !locking.is_empty(),
        "{engine:?}: no locking operation on the big table: {plan}"
    );
    for f in &locking {
        let rows = f["rows"].as_i64().unwrap_or(0);
        assert!(
            (ROWS * 8 / 10..=ROWS * 12 / 10).contains(&rows),
            "{engine:?}: estimated rows {rows} of {ROWS}: {f}"
        );
        assert!(f["bytes"].as_i64().unwrap_or(0) > 4 << 20, "{f}");
        assert!(f["lock"].is_string(), "{f}");
    }
    if engine == Engine::Postgresql {
        assert!(
            all.iter().any(|(m, f)| m == PENDING[0]
                && f["lock"] == "SHARE"
                && f["why"].as_str().unwrap().contains("without CONCURRENTLY")),
            "the index build: {plan}"
        );
    }
    assert!(
        all.iter()
            .any(|(m, f)| m == PENDING[3] && f["kind"] == "breaking" && f["held_back"] == true),
        "the dropped column: {plan}"
    );
    let summary = pods.summary(None);
    assert_eq!(summary["mode"], "plan", "{summary}");
    assert_eq!(summary["result"], "unsafe-blocked", "{summary}");
    assert_eq!(summary["plan"]["verdict"], "held-back", "{summary}");
    assert_eq!(summary["counts"]["pending"], 4, "{summary}");
    assert!(
        denied.logs.contains("MIGRATION") && denied.logs.contains("hold-back"),
        "the table in the log: {}",
        denied.logs
    );

    let passed = plan_step(&pods, &[]).run(LIMIT);
    assert_eq!(passed.code, 0, "{engine:?}: {}", passed.logs);
    let plan = report(&passed.logs);
    assert_eq!(plan["verdict"], "pass", "{plan}");
    assert_eq!(pods.summary(None)["result"], "planned");
    let deferred = plan_step(&pods, &[("unsafe-migrations", "defer")]).run(LIMIT);
    assert_eq!(deferred.code, 0, "{engine:?}: {}", deferred.logs);
    let plan = report(&deferred.logs);
    assert_eq!(plan["counts"]["defer"], 2, "{plan}");

    // Every session of the plans has ended: their statistics are flushed.
    thread::sleep(Duration::from_secs(2));
    let after = snapshot(&s, &database);
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(
            was, is,
            "{engine:?}: the plan changed {name} (before, after)"
        );
    }
    assert_eq!(lock_holders(&s, &database), 0);
    eprintln!(
        "{engine:?}: planned {} migrations on {ROWS} rows in {took:.1?}; {} locking \
         finding(s) on the table, estimated {} rows; nothing changed: {}",
        names.len(),
        locking.len(),
        locking[0]["rows"],
        before
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The same comparison sees a migration: the snapshot can tell.
    let step = pods.containers(&[], &[])[1].clone();
    let applied = step.run(LIMIT);
    assert_eq!(applied.code, 0, "{}", applied.logs);
    thread::sleep(Duration::from_secs(2));
    let migrated = snapshot(&s, &database);
    for ((name, was), (_, is)) in before.iter().zip(&migrated) {
        if *name != "tables" {
            assert_ne!(was, is, "{engine:?}: migrating did not change {name}");
        }
    }
}

#[test]
fn plan_changes_nothing_postgresql() {
    plan_changes_nothing(Engine::Postgresql);
}

#[test]
fn plan_changes_nothing_mariadb() {
    plan_changes_nothing(Engine::Mysql);
}

/// A pod of the release migrates (a 15 s data migration under the lock) while the plan
/// runs: the plan waits neither for the lock nor for the migration, and the lock stays
/// the migrating pod's.
fn plan_does_not_wait(engine: Engine) {
    let s = server(engine);
    let database = s.create_database("planwait");
    let mut pods = s.pods(test_python(), &database, s.port, &s.password);
    pods.env
        .retain(|(k, _)| k.as_str() != "SLOW_MIGRATION_SECONDS");
    pods.env
        .push(("SLOW_MIGRATION_SECONDS".into(), "15".into()));
    pods.python(&["manage.py", "migrate", "catalog", "0002", "-v", "0"], &[]);
    let containers = pods.containers(&[], &[]);
    let migrating_pod = pods.pod(&containers, 0);
    let copy = migrating_pod[0].run(LIMIT);
    assert_eq!(copy.code, 0, "{}", copy.logs);
    let migrating = migrating_pod[1].start();
    let started = Instant::now();
    while lock_holders(&s, &database) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the migrating pod never took the lock"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let planning = Instant::now();
    let plan = plan_step(&pods, &[]).run(LIMIT);
    let took = planning.elapsed();
    assert_eq!(plan.code, 0, "{engine:?}: {}", plan.logs);
    let report = report(&plan.logs);
    assert!(
        report["counts"]["pending"].as_u64().unwrap() >= 1,
        "the migration under way is pending: {report}"
    );
    assert_eq!(
        lock_holders(&s, &database),
        1,
        "the lock is the migrating pod's"
    );
    let done = kubelet::wait("migrating pod", migrating, LIMIT);
    assert_eq!(done.code, 0, "{}", done.logs);
    let waited = started.elapsed();
    assert!(
        took < Duration::from_secs(10) && took + Duration::from_secs(5) < waited,
        "{engine:?}: the plan took {took:?}, the migration {waited:?}"
    );
    eprintln!(
        "{engine:?}: plan made in {took:.1?} while another pod held the lock for {waited:.1?}"
    );
}

#[test]
fn plan_does_not_wait_for_a_migrating_pod_postgresql() {
    plan_does_not_wait(Engine::Postgresql);
}

#[test]
fn plan_does_not_wait_for_a_migrating_pod_mariadb() {
    plan_does_not_wait(Engine::Mysql);
}
