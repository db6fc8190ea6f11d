//! The injected code against a throwaway SQLite database: every step and exit code that
//! needs no database server. (SQLite has no cross-pod lock; the concurrency guarantees
//! are proven against PostgreSQL and MariaDB.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::kubelet::{Container, read_termination_message};
use crate::{deployment, injected_init_containers, test_python};

const LIMIT: Duration = Duration::from_secs(60);

/// Env vars or annotations, as name/value pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

struct Pod {
    dir: tempfile::TempDir,
}

impl Pod {
    fn new() -> Pod {
        Pod {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DB_NAME", self.path("db.sqlite3")),
            (
                "DJANGO_MIGRATE_TERMINATION_LOG",
                self.path("termination-log"),
            ),
            ("SLOW_MIGRATION_SECONDS", "0.2".into()),
        ]
    }

    /// The pod's init containers for a Deployment with these extra env vars/annotations.
    fn containers(
        &self,
        extra_env: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Vec<Container> {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra_env);
        injected_init_containers(&deployment(&all, annotations))
            .iter()
            .map(|spec| Container::from_spec(spec, &[]))
            .collect()
    }

    fn termination_message(&self) -> String {
        read_termination_message(Path::new(&self.path("termination-log")))
    }

    fn count_runs(&self) -> i64 {
        let out = Command::new(test_python())
            .args([
                "-c",
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\
                 'select count(*) from catalog_migrationrun').fetchone()[0])",
                &self.path("db.sqlite3"),
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
}

#[test]
fn wait_for_db_and_migrate_apply_every_migration_once() {
    let pod = Pod::new();
    let containers = pod.containers(&[], &[]);
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
        pod.termination_message()
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
    let summary = pod.termination_message();
    assert!(
        summary.starts_with("migrate: applied 6 migrations in "),
        "{summary}"
    );
    assert!(summary.contains("catalog.0003_backfill_slugs"), "{summary}");
    assert!(summary.len() <= 4096);
    assert_eq!(pod.count_runs(), 1);

    // A restarted pod finds nothing to do and leaves the data alone.
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert!(
        pod.termination_message()
            .starts_with("migrate: nothing to apply")
    );
    assert_eq!(pod.count_runs(), 1);
}

#[test]
fn wait_mode_times_out_with_exit_1_while_migrations_are_pending() {
    let pod = Pod::new();
    let containers = pod.containers(&[], &[("mode", "wait"), ("migrate-timeout", "2")]);
    assert_eq!(containers[1].name, "django-wait-for-migrations");
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 1, "{}", exit.logs);
    let summary = pod.termination_message();
    assert!(summary.contains("gave up after"), "{summary}");
    assert!(
        summary.contains("still pending: catalog.0001_initial"),
        "{summary}"
    );
}

#[test]
fn missing_manage_py_settings_or_alias_exit_4() {
    let pod = Pod::new();
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
        let containers = pod.containers(env, annotations);
        let exit = containers[0].run(LIMIT);
        assert_eq!(exit.code, 4, "{needle}: {}", exit.logs);
        let summary = pod.termination_message();
        assert!(summary.contains(needle), "{summary}");
    }
}
