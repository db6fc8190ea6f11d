//! The fast path against real PostgreSQL and MariaDB: a start with nothing pending ends
//! without starting Django only when the step's own record proves it, and every case in
//! which a skip would be wrong takes the full path (and migrates what is pending).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::{Engine, Server, server};
use crate::{Pairs, Pods, test_python, test_python_django42};

const LIMIT: Duration = Duration::from_secs(120);
const RECORD_TABLE: &str = "django_migrate_record";

/// One migration of the `fleet` app: `0001` creates the model, later ones add a column.
fn fleet_migration(number: usize, extra: &str) -> String {
    let (dependencies, operation) = if number == 1 {
        (
            String::new(),
            "migrations.CreateModel(\"Vehicle\", [(\"id\", models.BigAutoField(primary_key=True))])".to_owned(),
        )
    } else {
        (
            format!("(\"fleet\", \"{:04}_step\")", number - 1),
            format!(
                "migrations.AddField(\"vehicle\", \"column_{number:04}\", models.IntegerField(null=True))"
            ),
        )
    };
    format!(
        "from django.db import migrations, models\n\n\n\
         class Migration(migrations.Migration):\n    \
         dependencies = [{dependencies}]\n    \
         operations = [{operation}]\n{extra}"
    )
}

/// A Django test project's pods on one server, with an app of its own (`fleet`) beside
/// the test project's, whose migration files the tests change as a new image would.
struct Site {
    pods: Pods,
    server: Server,
    database: String,
    /// `fleet`'s migrations package.
    migrations: PathBuf,
    /// One line per Django start-up (`django.setup()`), from the test project.
    starts: PathBuf,
}

impl Site {
    fn new(engine: Engine, label: &str) -> Site {
        Site::with_python(engine, label, test_python())
    }

    fn with_python(engine: Engine, label: &str, python: PathBuf) -> Site {
        let server = server(engine);
        let database = server.create_database(label);
        let mut pods = server.pods(python, &database, server.port, &server.password);
        let site = pods.dir.path().join("site");
        let migrations = site.join("fleet/migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(site.join("fleet/__init__.py"), "").unwrap();
        std::fs::write(migrations.join("__init__.py"), "").unwrap();
        for number in 1..=3 {
            std::fs::write(
                migrations.join(format!("{number:04}_step.py")),
                fleet_migration(number, ""),
            )
            .unwrap();
        }
        std::fs::write(
            site.join("fleet_settings.py"),
            "import os\n\n\
             from testsite.settings import *  # noqa: F403\n\n\
             INSTALLED_APPS = INSTALLED_APPS + [\"fleet\"]  # noqa: F405\n\
             if os.environ.get(\"FLEET_MIGRATIONS\"):\n    \
             MIGRATION_MODULES = {\"fleet\": os.environ[\"FLEET_MIGRATIONS\"]}\n",
        )
        .unwrap();
        let starts = pods.dir.path().join("django-starts");
        pods.env.extend([
            ("PYTHONPATH".into(), site.to_string_lossy().into()),
            ("DJANGO_SETTINGS_MODULE".into(), "fleet_settings".into()),
            ("DJANGO_STARTS_FILE".into(), starts.to_string_lossy().into()),
            ("SLOW_MIGRATION_SECONDS".into(), "0".into()),
        ]);
        Site {
            pods,
            server,
            database,
            migrations,
            starts,
        }
    }

    /// Runs the injected step once; its summary, after it succeeded.
    fn step(&self, extra_env: Pairs, annotations: Pairs) -> Value {
        let exit = self.pods.containers(extra_env, annotations)[1].run(LIMIT);
        let summary = self.pods.summary(None);
        assert_eq!(exit.code, 0, "{summary}\n{}", exit.logs);
        summary
    }

    fn django_starts(&self) -> usize {
        std::fs::read_to_string(&self.starts).map_or(0, |s| s.lines().count())
    }

    fn rows(&self, database: &str, app: &str) -> i64 {
        self.server.scalar(
            database,
            &format!("SELECT COUNT(*) FROM django_migrations WHERE app = '{app}'"),
        )
    }

    fn record_table_exists(&self, database: &str) -> bool {
        let sql = match self.server.engine {
            Engine::Postgresql => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{RECORD_TABLE}' \
                 AND table_catalog = current_database()"
            ),
            Engine::Mysql => format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{RECORD_TABLE}' \
                 AND table_schema = DATABASE()"
            ),
        };
        self.server.scalar(database, &sql) == 1
    }

    /// `manage.py migrate ARGS` as a person would run it, on `database`.
    fn manage(&self, database: &str, args: &[&str]) {
        let mut all = vec!["manage.py", "migrate"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-v", "0"]);
        self.pods.python(&all, &[("DB_NAME", database)]);
    }
}

/// The summary says the step took the full path; returns why.
fn full_path(summary: &Value) -> String {
    assert_eq!(summary["fast_path"]["taken"], false, "{summary}");
    summary["fast_path"]["why"].as_str().unwrap().to_owned()
}

/// The summary says the step ended on the fast path with nothing pending.
fn assert_fast(summary: &Value) {
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert_eq!(summary["fast_path"]["taken"], true, "{summary}");
    assert_eq!(summary["counts"]["applied"], 0, "{summary}");
}

/// The full path ran, recorded the image, and the next start takes the fast path again.
fn recorded_then_fast(site: &Site, summary: &Value, env: Pairs) {
    let recorded = summary["fast_path"]["recorded"]
        .as_str()
        .unwrap_or_default();
    assert!(recorded.starts_with("recorded fingerprint"), "{summary}");
    assert_fast(&site.step(env, &[]));
}

/// Holds the migration lock of `database` from a session of the server's own client
/// until the returned child's stdin is closed.
fn hold_migration_lock(s: &Server, database: &str) -> Child {
    let (program, args, sql, held) = match s.engine {
        Engine::Postgresql => (
            "psql",
            vec![
                "-h".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                s.port.to_string(),
                "-U".to_owned(),
                s.user.clone(),
                "-d".to_owned(),
                database.to_owned(),
            ],
            format!(
                "SELECT pg_advisory_lock(('x' || substr(encode(sha256('django-migrate:{database}'::bytea), \
                 'hex'), 1, 16))::bit(64)::bigint);\n"
            ),
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
                .to_owned(),
        ),
        Engine::Mysql => (
            "mariadb",
            vec![
                "--no-defaults".to_owned(),
                "-h".to_owned(),
                "127.0.0.1".to_owned(),
                "-P".to_owned(),
                s.port.to_string(),
                "-u".to_owned(),
                s.user.clone(),
                format!("-p{}", s.password),
                "-D".to_owned(),
                database.to_owned(),
            ],
            format!("SELECT GET_LOCK('django-migrate:{database}', 10);\n"),
            format!("SELECT IS_USED_LOCK('django-migrate:{database}') IS NOT NULL"),
        ),
    };
    let mut child = Command::new(program)
        .args(&args)
        .env("PGPASSWORD", &s.password)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let started = Instant::now();
    while s.scalar(database, &held) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the test never got the migration lock"
        );
        thread::sleep(Duration::from_millis(100));
    }
    child
}

/// A full run records the image; the next start, in migrate mode and in wait mode, ends
/// on the fast path without starting Django, while another session holds the migration
/// lock (the fast path never asks for it). With the annotation off there is no record.
fn second_start_takes_the_fast_path(engine: Engine) {
    let site = Site::new(engine, "fast");
    let first = site.step(&[], &[]);
    assert_eq!(first["result"], "applied", "{first}");
    assert_eq!(site.django_starts(), 1);
    assert!(full_path(&first).contains("no record table"), "{first}");
    assert!(site.record_table_exists(&site.database));

    let mut holder = hold_migration_lock(&site.server, &site.database);
    let started = Instant::now();
    let again = site.step(&[], &[]);
    let waited = started.elapsed();
    let wait_mode = site.step(&[], &[("mode", "wait")]);
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert_fast(&again);
    assert!(
        again["fast_path"]["why"]
            .as_str()
            .unwrap()
            .contains("applied migrations are all in django_migrations"),
        "{again}"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}: {again}");
    assert_fast(&wait_mode);
    assert_eq!(wait_mode["mode"], "wait", "{wait_mode}");
    assert_eq!(site.django_starts(), 1, "the fast path started Django");
    assert_eq!(site.rows(&site.database, "fleet"), 3);

    // Turned off: Django starts, and a database without a record gets no table.
    let off = site.step(&[], &[("fast-path", "false")]);
    assert_eq!(off["result"], "nothing-pending", "{off}");
    assert!(off["fast_path"].is_null(), "{off}");
    assert_eq!(site.django_starts(), 2);
    let other = site.server.create_database("off");
    let off = site.step(&[("DB_NAME", &other)], &[("fast-path", "false")]);
    assert_eq!(off["result"], "applied", "{off}");
    assert!(!site.record_table_exists(&other));
}

#[test]
fn postgresql_second_start_takes_the_fast_path() {
    second_start_takes_the_fast_path(Engine::Postgresql);
}

#[test]
fn mysql_second_start_takes_the_fast_path() {
    second_start_takes_the_fast_path(Engine::Mysql);
}

/// Django 4.2 with psycopg2 (the previous LTS and the other PostgreSQL driver): the
/// record a full run writes lets the next start end on the fast path.
#[test]
fn postgresql_django42_psycopg2_second_start_takes_the_fast_path() {
    let site = Site::with_python(Engine::Postgresql, "fast42", test_python_django42());
    let first = site.step(&[], &[]);
    assert_eq!(first["result"], "applied", "{first}");
    recorded_then_fast(&site, &first, &[]);
    assert_eq!(site.django_starts(), 1, "the fast path started Django");
}

/// Every change after the record that makes a skip wrong sends the step down the full
/// path, which migrates what is pending and records the new state.
fn wrong_skips_take_the_full_path(engine: Engine) {
    let site = Site::new(engine, "skips");
    let first = site.step(&[], &[]);
    assert_eq!(first["result"], "applied", "{first}");
    assert_fast(&site.step(&[], &[]));

    // A new migration file in the image.
    std::fs::write(site.migrations.join("0004_step.py"), fleet_migration(4, "")).unwrap();
    let s = site.step(&[], &[]);
    assert!(full_path(&s).contains("no record of this image"), "{s}");
    // What differs from the newest record, by name.
    assert!(
        full_path(&s).contains("differs in: module fleet.migrations"),
        "{s}"
    );
    assert_eq!(s["applied"], serde_json::json!(["fleet.0004_step"]), "{s}");
    recorded_then_fast(&site, &s, &[]);

    // A changed migration file (applied already: nothing is pending, and only Django can
    // tell).
    std::fs::write(
        site.migrations.join("0004_step.py"),
        fleet_migration(4, "    # reviewed\n"),
    )
    .unwrap();
    let s = site.step(&[], &[]);
    full_path(&s);
    assert_eq!(s["result"], "nothing-pending", "{s}");
    recorded_then_fast(&site, &s, &[]);

    // A migration unapplied by hand after the record was written.
    site.manage(&site.database, &["fleet", "0002_step"]);
    assert_eq!(site.rows(&site.database, "fleet"), 2);
    let s = site.step(&[], &[]);
    assert!(
        full_path(&s).contains("no longer in django_migrations"),
        "{s}"
    );
    assert_eq!(
        s["applied"],
        serde_json::json!(["fleet.0003_step", "fleet.0004_step"]),
        "{s}"
    );
    recorded_then_fast(&site, &s, &[]);

    // A squashed migration replacing applied ones.
    std::fs::write(
        site.migrations.join("0001_squashed_0004_step.py"),
        fleet_migration(1, "")
            .replace(
                "operations = [",
                "replaces = [(\"fleet\", \"0001_step\"), (\"fleet\", \"0002_step\"), \
                 (\"fleet\", \"0003_step\"), (\"fleet\", \"0004_step\")]\n    operations = [",
            )
            .replace(
                "(\"id\", models.BigAutoField(primary_key=True))",
                "(\"id\", models.BigAutoField(primary_key=True)), \
                 (\"column_0002\", models.IntegerField(null=True)), \
                 (\"column_0003\", models.IntegerField(null=True)), \
                 (\"column_0004\", models.IntegerField(null=True))",
            ),
    )
    .unwrap();
    let s = site.step(&[], &[]);
    full_path(&s);
    assert_eq!(s["result"], "nothing-pending", "{s}");
    recorded_then_fast(&site, &s, &[]);

    // MIGRATION_MODULES pointing elsewhere (a package with one more migration), by a
    // setting alone.
    let other = site.migrations.with_file_name("migrations_next");
    std::fs::create_dir_all(&other).unwrap();
    for entry in std::fs::read_dir(&site.migrations).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, other.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(other.join("0005_step.py"), fleet_migration(5, "")).unwrap();
    let next = [("FLEET_MIGRATIONS", "fleet.migrations_next")];
    let s = site.step(&next, &[]);
    full_path(&s);
    assert_eq!(s["applied"], serde_json::json!(["fleet.0005_step"]), "{s}");
    assert_fast(&site.step(&next, &[]));

    // The record table dropped.
    site.server
        .sql(&site.database, &format!("DROP TABLE {RECORD_TABLE}"));
    let s = site.step(&next, &[]);
    assert!(full_path(&s).contains("no record table"), "{s}");
    recorded_then_fast(&site, &s, &next);
    // Five migrations and the squashed one, recorded by `migrate` once all it replaces were.
    assert_eq!(site.rows(&site.database, "fleet"), 6);
    // Seven full paths and one `manage.py migrate` by hand.
    assert_eq!(site.django_starts(), 8);
}

#[test]
fn postgresql_wrong_skips_take_the_full_path() {
    wrong_skips_take_the_full_path(Engine::Postgresql);
}

#[test]
fn mysql_wrong_skips_take_the_full_path() {
    wrong_skips_take_the_full_path(Engine::Mysql);
}

/// Copies the record table of `from` into `to` (a restored backup, a cloned database).
fn copy_record(s: &Server, from: &str, to: &str) {
    match s.engine {
        Engine::Postgresql => {
            let dump = Command::new("pg_dump")
                .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", &s.user])
                .args(["-t", RECORD_TABLE, from])
                .env("PGPASSWORD", &s.password)
                .output()
                .unwrap();
            assert!(
                dump.status.success(),
                "{}",
                String::from_utf8_lossy(&dump.stderr)
            );
            let mut psql = Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &s.port.to_string(), "-U", &s.user])
                .args(["-d", to, "-v", "ON_ERROR_STOP=1", "-q"])
                .env("PGPASSWORD", &s.password)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            psql.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
            assert!(psql.wait().unwrap().success());
        }
        Engine::Mysql => {
            s.sql(
                to,
                &format!(
                    "CREATE TABLE {RECORD_TABLE} LIKE {from}.{RECORD_TABLE}; \
                     INSERT INTO {RECORD_TABLE} SELECT * FROM {from}.{RECORD_TABLE}"
                ),
            );
        }
    }
}

/// Another database with the same record (copied from a fully migrated one) but behind:
/// the full path, and the migration is applied there.
fn another_database_with_the_same_record(engine: Engine) {
    let site = Site::new(engine, "origin");
    site.step(&[], &[]);
    assert_fast(&site.step(&[], &[]));
    let copy = site.server.create_database("copy");
    site.manage(&copy, &[]);
    site.manage(&copy, &["fleet", "0002_step"]);
    copy_record(&site.server, &site.database, &copy);
    assert!(site.record_table_exists(&copy));

    let s = site.step(&[("DB_NAME", &copy)], &[]);
    assert!(full_path(&s).contains("no record of this image"), "{s}");
    assert_eq!(s["applied"], serde_json::json!(["fleet.0003_step"]), "{s}");
    assert_eq!(site.rows(&copy, "fleet"), 3);
}

#[test]
fn postgresql_another_database_with_the_same_record_takes_the_full_path() {
    another_database_with_the_same_record(Engine::Postgresql);
}

#[test]
fn mysql_another_database_with_the_same_record_takes_the_full_path() {
    another_database_with_the_same_record(Engine::Mysql);
}

/// Two images whose migration sets differ only in the content of one file: the second
/// never takes the first one's record, though both have the same names and the same
/// rows in django_migrations.
fn images_differing_in_one_file_never_share_a_record(engine: Engine) {
    let site = Site::new(engine, "collide");
    site.step(&[], &[]);
    assert_fast(&site.step(&[], &[]));
    let path = site.migrations.join("0003_step.py");
    let original = std::fs::read_to_string(&path).unwrap();
    // The same length and the same names: only one byte of one file differs.
    let changed = original.replace("column_0003", "column_0303");
    assert_eq!(changed.len(), original.len());
    std::fs::write(&path, &changed).unwrap();
    let s = site.step(&[], &[]);
    assert!(full_path(&s).contains("no record of this image"), "{s}");
    // Back to the first image: its record is still there.
    std::fs::write(&path, &original).unwrap();
    assert_fast(&site.step(&[], &[]));
}

#[test]
fn postgresql_images_differing_in_one_file_never_share_a_record() {
    images_differing_in_one_file_never_share_a_record(Engine::Postgresql);
}

#[test]
fn mysql_images_differing_in_one_file_never_share_a_record() {
    images_differing_in_one_file_never_share_a_record(Engine::Mysql);
}

/// A swappable setting that an app defaults when it loads (swapper, as Wagtail does for
/// its page model) and the settings module never sets: the check, which never starts
/// Django, reads it as the record did, and the second start takes the fast path.
#[test]
fn a_swappable_setting_an_app_defaults_keeps_the_fast_path() {
    let site = Site::new(Engine::Postgresql, "swapper");
    let gadgets: Pairs = &[("GADGETS_APP", "1")];
    let first = site.step(gadgets, &[]);
    assert_eq!(first["result"], "applied", "{first}");
    assert!(
        first["applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "gadgets.0002_part"),
        "{first}"
    );
    recorded_then_fast(&site, &first, gadgets);
    assert_eq!(site.django_starts(), 1, "the fast path started Django");
}

/// A wrapper management command (a console script that sets its settings module, as
/// `nautobot-server` does): without `settings-module` every start takes the full path and
/// says why; with it the second start takes the fast path; a `settings-module` that is not
/// what the command loads writes no record, and the summary says what it loaded.
#[test]
fn a_wrapper_command_takes_the_fast_path_with_its_settings_module() {
    let site = Site::new(Engine::Postgresql, "wrapper");
    let wrapper = site.pods.dir.path().join("site-manage");
    std::fs::write(
        &wrapper,
        format!(
            "#!{}\nimport os\nimport sys\n\n\
             os.environ[\"DJANGO_SETTINGS_MODULE\"] = \"fleet_settings\"\n\n\
             from django.core.management import execute_from_command_line\n\n\
             execute_from_command_line(sys.argv)\n",
            site.pods.python.display()
        ),
    )
    .unwrap();
    let mut permissions = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&wrapper, permissions).unwrap();
    let command = wrapper.to_string_lossy().into_owned();
    // Like an installed console script, it imports the project from the path, not from
    // its own directory.
    let path = format!(
        "{}:{}",
        site.pods.dir.path().join("site").display(),
        crate::repo().join("tests/django").display()
    );
    let env: Pairs = &[("PYTHONPATH", &path)];

    let s = site.step(env, &[("manage-command", &command)]);
    assert!(
        full_path(&s).contains("name the settings module it loads"),
        "{s}"
    );
    assert_eq!(s["result"], "applied", "{s}");
    assert!(s["fast_path"]["recorded"].is_null(), "{s}");

    let declared: Pairs = &[
        ("manage-command", &command),
        ("settings-module", "fleet_settings"),
    ];
    let s = site.step(env, declared);
    full_path(&s);
    assert_eq!(s["result"], "nothing-pending", "{s}");
    let starts = site.django_starts();
    assert_fast(&site.step(env, declared));
    assert_eq!(site.django_starts(), starts, "the fast path started Django");

    let wrong: Pairs = &[
        ("manage-command", &command),
        ("settings-module", "testsite.settings"),
    ];
    let s = site.step(env, wrong);
    let recorded = s["fast_path"]["recorded"].as_str().unwrap_or_default();
    assert!(
        recorded.contains("loaded the settings module fleet_settings, not testsite.settings"),
        "{s}"
    );
}

/// What the fast path cannot see through sends every start down the full path, says
/// so, and writes no record it could never use: a manage.py that does more than Django's
/// template, a database engine it does not know, a settings module that cannot be
/// loaded outside `manage.py`.
#[test]
fn what_the_fast_path_cannot_read_takes_the_full_path() {
    let site = Site::new(Engine::Postgresql, "doubts");
    let dir = site.pods.dir.path();

    // A manage.py that loads more than the settings.
    let manage = dir.join("manage.py");
    std::fs::write(
        &manage,
        format!(
            "import sys\n\nsys.path.append({:?})\n\n\
             if __name__ == \"__main__\":\n    \
             from django.core.management import execute_from_command_line\n\n    \
             execute_from_command_line(sys.argv)\n",
            crate::repo().join("tests/django")
        ),
    )
    .unwrap();
    let command = format!("{} {}", site.pods.python.display(), manage.display());
    let s = site.step(&[], &[("manage-command", &command)]);
    assert!(
        full_path(&s).contains("does more than Django's manage.py template"),
        "{s}"
    );
    assert_eq!(s["result"], "applied", "{s}");
    assert!(s["fast_path"]["recorded"].is_null(), "{s}");
    assert!(!site.record_table_exists(&site.database));

    // A database engine of the project's own (a wrapper around PostgreSQL's).
    let backend = dir.join("site/wrapped_backend");
    std::fs::create_dir_all(&backend).unwrap();
    std::fs::write(backend.join("__init__.py"), "").unwrap();
    std::fs::write(
        backend.join("base.py"),
        "from django.db.backends.postgresql.base import *  # noqa: F403\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("site/wrapped_settings.py"),
        "from fleet_settings import *  # noqa: F403\n\n\
         DATABASES[\"default\"][\"ENGINE\"] = \"wrapped_backend\"  # noqa: F405\n",
    )
    .unwrap();
    let wrapped = [("DJANGO_SETTINGS_MODULE", "wrapped_settings")];
    let s = site.step(&wrapped, &[]);
    assert!(full_path(&s).contains("no fast path for ENGINE"), "{s}");
    assert_eq!(s["result"], "nothing-pending", "{s}");
    assert!(!site.record_table_exists(&site.database));

    // Settings that only load under manage.py.
    std::fs::write(
        dir.join("site/strict_settings.py"),
        "import sys\n\nif not sys.argv[0].endswith(\"manage.py\"):\n    \
         raise RuntimeError(\"run me through manage.py\")\n\n\
         from fleet_settings import *  # noqa: E402, F403\n",
    )
    .unwrap();
    let strict = [("DJANGO_SETTINGS_MODULE", "strict_settings")];
    let s = site.step(&strict, &[]);
    assert!(
        full_path(&s).contains("cannot load the settings module strict_settings"),
        "{s}"
    );
    assert_eq!(s["result"], "nothing-pending", "{s}");
}
