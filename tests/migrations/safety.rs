//! Keeping the running service safe while the step migrates, on real PostgreSQL and
//! MariaDB: bounded lock waits with retries, long migrations that finish, unsafe
//! operations named and held back.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::{Engine, ONE_RACE_AT_A_TIME, Server, server};
use crate::{Pairs, Pods, test_python, test_python_django42};

const LIMIT: Duration = Duration::from_secs(180);

fn django_dir() -> PathBuf {
    crate::repo().join("tests/django")
}

/// `manage.py ARGS` with the pods' env (the previous release's deploy, say).
fn manage(pods: &Pods, args: &[&str]) {
    pods.python(&[&["manage.py"], args].concat(), &[]);
}

/// `tests/django/traffic.py` as the running release: `hold` a transaction that read
/// `table` (returns once it holds it), or `query` the table every 100 ms.
fn traffic(pods: &Pods, what: &str, table: &str, seconds: u32) -> Child {
    let mut child = Command::new(&pods.python)
        .args(["traffic.py", what, table, &seconds.to_string()])
        .current_dir(django_dir())
        .envs(pods.env.iter().cloned())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if what == "hold" {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "holding", "the holder did not start");
    }
    child
}

/// The longest wait of one traffic query, in seconds.
fn max_wait(child: Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "traffic failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .strip_prefix("max_wait=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected traffic output {text:?}"))
}

fn applied(s: &Server, database: &str, app: &str, name: &str) -> i64 {
    s.scalar(
        database,
        &format!("SELECT COUNT(*) FROM django_migrations WHERE app = '{app}' AND name = '{name}'"),
    )
}

/// A 20 s transaction reads `orders_order` while the step's `ALTER TABLE` needs it:
/// with the lock timeout, traffic queries on that table never wait long, the migration
/// is retried and applied once after the transaction ends. Without it (a timeout longer
/// than the transaction), traffic stalls for most of the transaction: the same test
/// notices an outage.
fn lock_queue(engine: Engine) {
    let s = server(engine);
    lock_queue_through(&s, s.port, "direct");
}

/// `lock_queue` with the step and the traffic connecting to `port` (a pooler, say).
pub(crate) fn lock_queue_through(s: &Server, port: u16, route: &str) {
    let engine = s.engine;
    for lock_timeout in ["600", "3"] {
        let database = s.create_database("lockq");
        let pods = s.pods(test_python(), &database, port, &s.password);
        manage(&pods, &["migrate", "catalog", "-v", "0"]);
        manage(&pods, &["migrate", "orders", "0002", "-v", "0"]);
        let step = pods.containers(&[], &[("lock-timeout", lock_timeout)])[1].clone();
        let holder = traffic(&pods, "hold", "orders_order", 20);
        let queries = traffic(&pods, "query", "orders_order", 27);
        let started = Instant::now();
        let exit = step.run(LIMIT);
        let took = started.elapsed();
        assert!(holder.wait_with_output().unwrap().status.success());
        let wait = max_wait(queries);
        assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
        let summary = pods.summary(None);
        assert_eq!(
            summary["applied"],
            serde_json::json!(["orders.0003_order_reference"]),
            "{summary}"
        );
        assert_eq!(applied(s, &database, "orders", "0003_order_reference"), 1);
        eprintln!(
            "{engine:?} {route}: lock-timeout {lock_timeout}s: longest traffic query {wait:.2}s, \
             migration applied after {took:.1?}, {} retries",
            summary["retries"]
        );
        if lock_timeout == "3" {
            assert!(
                exit.logs.contains("hit the lock timeout (3s)"),
                "{}",
                exit.logs
            );
            assert!(summary["retries"].as_u64().unwrap() >= 1, "{summary}");
            assert!(
                wait < 5.0,
                "{engine:?} {route}: a traffic query waited {wait:.2}s behind the migration"
            );
        } else {
            assert!(
                wait > 10.0,
                "{engine:?}: without a lock timeout traffic should have queued behind the \
                 ALTER for most of the 20 s transaction, longest wait {wait:.2}s"
            );
        }
    }
}

#[test]
fn lock_queue_postgresql() {
    lock_queue(Engine::Postgresql);
}

#[test]
fn lock_queue_mariadb() {
    lock_queue(Engine::Mysql);
}

/// A data migration of 20 s with `migrate-timeout: 2` (the watchdog of earlier releases
/// would have ended it at 17 s): it finishes, once; a pod that waits for it gives up at
/// its timeout and succeeds when restarted.
#[test]
fn a_migration_longer_than_migrate_timeout_finishes_once() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let database = s.create_database("long");
        let mut pods = s.pods(test_python(), &database, s.port, &s.password);
        pods.env
            .retain(|(k, _)| k.as_str() != "SLOW_MIGRATION_SECONDS");
        pods.env
            .push(("SLOW_MIGRATION_SECONDS".into(), "20".into()));
        let containers = pods.containers(&[], &[("migrate-timeout", "2")]);
        let (first, second) = (pods.pod(&containers, 0), pods.pod(&containers, 1));
        for pod in [&first, &second] {
            let copy = pod[0].run(LIMIT);
            assert_eq!(copy.code, 0, "{}", copy.logs);
        }
        let first = first[1].clone();
        let started = Instant::now();
        let migrating = first.start();
        thread::sleep(Duration::from_secs(3));
        let waiting = second[1].run(LIMIT);
        assert_eq!(waiting.code, 1, "{engine:?}: {}", waiting.logs);
        let summary = pods.summary(Some(1));
        assert_eq!(summary["phase"], "lock", "{summary}");
        let done = crate::kubelet::wait(&first.name, migrating, LIMIT);
        let took = started.elapsed();
        assert_eq!(done.code, 0, "{engine:?}: {}", done.logs);
        assert!(took > Duration::from_secs(20), "{took:?}");
        assert_eq!(pods.summary(Some(0))["result"], "applied");
        let restarted = second[1].run(LIMIT);
        assert_eq!(restarted.code, 0, "{}", restarted.logs);
        assert_eq!(pods.summary(Some(1))["result"], "nothing-pending");
        assert_eq!(
            s.scalar(&database, "SELECT COUNT(*) FROM catalog_migrationrun"),
            1
        );
        eprintln!(
            "{engine:?}: 20 s migration with migrate-timeout 2 finished after {took:.1?}; \
             the waiting pod gave up, then succeeded on restart"
        );
    }
}

/// Two statements on two tables, the second one's table held by a transaction. MariaDB
/// cannot roll DDL back: the first column stays, so the step exits 2 and names the
/// migration and the statement instead of retrying it blindly. PostgreSQL rolls the
/// atomic migration back and retries it until the transaction ends.
#[test]
fn a_half_applied_migration_is_never_retried_blindly() {
    for engine in [Engine::Mysql, Engine::Postgresql] {
        let s = server(engine);
        let database = s.create_database("twostep");
        let pods = s.pods(test_python(), &database, s.port, &s.password);
        let extra: Pairs = &[("TWO_STEP_APP", "1")];
        let mut setup = Pods::new(pods.python.clone(), &[]);
        setup.env = pods.env.clone();
        setup.env.push(("TWO_STEP_APP".into(), "1".into()));
        manage(&setup, &["migrate", "-v", "0"]);
        manage(&setup, &["migrate", "twostep", "0001", "-v", "0"]);
        let step = pods.containers(extra, &[("lock-timeout", "2")])[1].clone();
        // Held long enough that the step meets it even on a loaded machine; PostgreSQL retries
        // until it ends.
        let holder = traffic(&setup, "hold", "twostep_second", 20);
        let exit = step.run(LIMIT);
        holder.wait_with_output().unwrap();
        let summary = pods.summary(None);
        if engine == Engine::Mysql {
            assert_eq!(exit.code, 2, "{}", exit.logs);
            assert_eq!(summary["failed_migration"], "twostep.0002_two_columns");
            assert_eq!(summary["retries"], 0, "{summary}");
            let message = summary["message"].as_str().unwrap();
            assert!(message.contains("half-applied"), "{message}");
            assert!(message.contains("twostep_second"), "{message}");
            assert_eq!(summary["result"], "half-applied", "{summary}");
            assert_eq!(applied(&s, &database, "twostep", "0002_two_columns"), 0);
        } else {
            assert_eq!(exit.code, 0, "{}", exit.logs);
            assert!(summary["retries"].as_u64().unwrap() >= 1, "{summary}");
            assert_eq!(applied(&s, &database, "twostep", "0002_two_columns"), 1);
        }
        eprintln!("{engine:?}: two-statement migration behind a lock: {summary}");
    }
}

/// What a user checks of an unsafe release under `deny`, `allow-unsafe` and `warn`.
fn unsafe_migrations(engine: Engine, python: PathBuf) {
    let s = server(engine);
    let extra: Pairs = &[("UNSAFE_APP", "1")];
    let deny: Pairs = &[("unsafe-migrations", "deny")];
    // `at`: how far the previous release got (None: a first install).
    let run = |at: Option<&str>, annotations: Pairs| -> (i32, Value, String, String) {
        let database = s.create_database("unsafe");
        let mut pods = s.pods(python.clone(), &database, s.port, &s.password);
        pods.env.push(("UNSAFE_APP".into(), "1".into()));
        if let Some(target) = at {
            manage(&pods, &["migrate", "-v", "0"]);
            manage(&pods, &["migrate", "inventory", target, "-v", "0"]);
        }
        let step = pods.containers(extra, annotations)[1].clone();
        let exit = step.run(LIMIT);
        (exit.code, pods.summary(None), exit.logs, database)
    };
    let context = format!("{engine:?}, Django {}", crate::django_version(&python));

    // deny: held back with exit 5, named, nothing applied.
    let (code, summary, logs, database) = run(Some("0001"), deny);
    assert_eq!(code, 5, "{context}: {logs}");
    assert_eq!(summary["result"], "unsafe-blocked", "{summary}");
    let op = &summary["unsafe_operations"][0];
    assert_eq!(
        op["migration"], "inventory.0002_remove_item_legacy",
        "{summary}"
    );
    assert!(
        op["operation"]
            .as_str()
            .unwrap()
            .starts_with("RemoveField("),
        "{summary}"
    );
    assert!(
        op["why"].as_str().unwrap().contains("drops column"),
        "{summary}"
    );
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("inventory.0002_remove_item_legacy"),
        "{message}"
    );
    assert!(
        logs.contains("breaks the release still serving (held back)"),
        "{logs}"
    );
    assert_eq!(
        applied(&s, &database, "inventory", "0002_remove_item_legacy"),
        0
    );

    // Allowed by name: applied.
    let allow: Pairs = &[
        ("unsafe-migrations", "deny"),
        ("allow-unsafe", "inventory.0002_remove_item_legacy"),
    ];
    let (code, summary, logs, database) = run(Some("0001"), allow);
    assert_eq!(code, 0, "{context}: {logs}");
    assert_eq!(
        summary["unsafe_operations"][0]["applied"], true,
        "{summary}"
    );
    assert_eq!(
        applied(&s, &database, "inventory", "0002_remove_item_legacy"),
        1
    );

    // warn: applied and named.
    let (code, summary, logs, _) = run(Some("0001"), &[]);
    assert_eq!(code, 0, "{context}: {logs}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("unsafe for the previous release: inventory.0002_remove_item_legacy"),
        "{summary}"
    );

    // A first install is never held back.
    let (code, summary, logs, _) = run(None, deny);
    assert_eq!(code, 0, "{context}: first install: {logs}");
    assert!(
        summary["unsafe_operations"].as_array().unwrap().is_empty(),
        "{summary}"
    );

    // A state-only change and a nullable column are safe under deny.
    let (code, summary, logs, _) = run(Some("0002"), deny);
    assert_eq!(code, 0, "{context}: safe release: {logs}");
    assert_eq!(
        summary["applied"],
        serde_json::json!([
            "inventory.0003_forget_item_note",
            "inventory.0004_item_label"
        ]),
        "{summary}"
    );
    eprintln!("{context}: unsafe migrations denied, allowed by name, warned; safe ones pass");
}

#[test]
fn unsafe_migrations_postgresql() {
    unsafe_migrations(Engine::Postgresql, test_python());
}

#[test]
fn unsafe_migrations_mariadb() {
    unsafe_migrations(Engine::Mysql, test_python());
}

#[test]
fn unsafe_migrations_postgresql_django42() {
    unsafe_migrations(Engine::Postgresql, test_python_django42());
}

#[test]
fn unsafe_migrations_mariadb_django42() {
    unsafe_migrations(Engine::Mysql, test_python_django42());
}
