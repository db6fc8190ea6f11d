//! The injected code against a throwaway SQLite database: every step and exit code that
//! needs no database server. (SQLite has no cross-pod lock; the concurrency guarantees
//! are proven against PostgreSQL and MariaDB in `servers`.)

use std::process::Command;
use std::time::Duration;

use crate::{Pairs, Pods, test_python};

const LIMIT: Duration = Duration::from_secs(60);

fn sqlite_pods() -> (Pods, String) {
    let mut pods = Pods::new(test_python(), &[("SLOW_MIGRATION_SECONDS", "0.2")]);
    let db = pods
        .dir
        .path()
        .join("db.sqlite3")
        .to_string_lossy()
        .into_owned();
    pods.env.push(("DB_NAME".into(), db.clone()));
    (pods, db)
}

fn count_runs(db: &str) -> i64 {
    let out = Command::new(test_python())
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\
             'select count(*) from catalog_migrationrun').fetchone()[0])",
            db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn wait_for_db_and_migrate_apply_every_migration_once() {
    let (pods, db) = sqlite_pods();
    let containers = pods.containers(&[], &[]);
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["django-wait-for-db", "django-migrate"]);

    let exit = containers[0].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert!(
        exit.logs
            .contains("attempt 1: database 'default' is reachable"),
        "{}",
        exit.logs
    );
    assert!(
        pods.termination_message(None)
            .starts_with("wait-for-db: database 'default' reachable")
    );

    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert!(
        exit.logs
            .contains("no cross-pod lock for the sqlite backend"),
        "{}",
        exit.logs
    );
    let summary = pods.termination_message(None);
    assert!(
        summary.starts_with("migrate: applied 6 migrations in "),
        "{summary}"
    );
    assert!(summary.contains("catalog.0003_backfill_slugs"), "{summary}");
    assert!(summary.len() <= 4096);
    assert_eq!(count_runs(&db), 1);

    // A restarted pod finds nothing to do and leaves the data alone.
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert!(
        pods.termination_message(None)
            .starts_with("migrate: nothing to apply")
    );
    assert_eq!(count_runs(&db), 1);
}

#[test]
fn wait_mode_times_out_with_exit_1_while_migrations_are_pending() {
    let (pods, _) = sqlite_pods();
    let containers = pods.containers(&[], &[("mode", "wait"), ("migrate-timeout", "2")]);
    assert_eq!(containers[1].name, "django-wait-for-migrations");
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 1, "{}", exit.logs);
    let summary = pods.termination_message(None);
    assert!(summary.contains("gave up after"), "{summary}");
    assert!(
        summary.contains("still pending: catalog.0001_initial"),
        "{summary}"
    );
}

#[test]
fn missing_manage_py_settings_or_alias_exit_4() {
    let (pods, _) = sqlite_pods();
    let cases: [(Pairs, Pairs, &str); 3] = [
        (
            &[],
            &[("manage-py", "src/manage.py")],
            "src/manage.py not found in working directory",
        ),
        (
            &[("DJANGO_SETTINGS_MODULE", "missing.settings")],
            &[],
            "cannot load the Django settings (DJANGO_SETTINGS_MODULE=missing.settings): ModuleNotFoundError",
        ),
        (
            &[],
            &[("database", "replica")],
            "database alias 'replica' is not in settings.DATABASES",
        ),
    ];
    for (env, annotations, needle) in cases {
        let containers = pods.containers(env, annotations);
        let exit = containers[0].run(LIMIT);
        assert_eq!(exit.code, 4, "{needle}: {}", exit.logs);
        let summary = pods.termination_message(None);
        assert!(summary.contains(needle), "{summary}");
    }
}
