//! The injected code against a throwaway SQLite database: every step and exit code that
//! needs no database server. (SQLite has no cross-pod lock; the concurrency guarantees
//! are proven against PostgreSQL and MariaDB in `servers`.)

use std::process::Command;
use std::time::Duration;

use django_migrate_webhook::step;
use k8s_openapi::api::core::v1::ContainerStateTerminated;

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
fn one_step_waits_for_the_database_and_applies_every_migration_once() {
    let (mut pods, db) = sqlite_pods();
    let starts = pods.dir.path().join("django-starts");
    pods.env
        .push(("DJANGO_STARTS_FILE".into(), starts.to_string_lossy().into()));
    let containers = pods.containers(&[], &[]);
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["django-migrate-code", "django-migrate"]);

    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert!(
        exit.logs
            .contains("attempt 1: database 'default' is reachable"),
        "{}",
        exit.logs
    );
    assert!(
        exit.logs
            .contains("no cross-pod lock for the sqlite backend"),
        "{}",
        exit.logs
    );
    assert!(pods.termination_message(None).len() <= 4096);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(summary["phase"], "done", "{summary}");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    assert_eq!(summary["applied"].as_array().unwrap().len(), 6, "{summary}");
    assert!(
        summary["applied"]
            .as_array()
            .unwrap()
            .contains(&"catalog.0003_backfill_slugs".into()),
        "{summary}"
    );
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .starts_with("applied 6 migrations in "),
        "{summary}"
    );
    assert_eq!(count_runs(&db), 1);
    // The database wait and the migration share one Django start.
    let started = std::fs::read_to_string(&starts).unwrap();
    assert_eq!(started.lines().count(), 1, "Django started {started:?}");

    // A restarted pod finds nothing to do and leaves the data alone.
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert_eq!(pods.summary(None)["result"], "nothing-pending");
    assert_eq!(count_runs(&db), 1);
}

#[test]
fn the_code_copy_writes_the_embedded_program_readable_by_anyone() {
    use std::os::unix::fs::PermissionsExt;
    let (pods, _) = sqlite_pods();
    let containers = pods.containers(&[], &[]);
    let pod = pods.pod(&containers, 7);
    let exit = pod[0].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    let file = pods
        .dir
        .path()
        .join("pod-7-code")
        .join(django_migrate_webhook::names::PROGRAM_FILE);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        django_migrate_webhook::injected::artifact()
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o444, 0o444, "mode {mode:o}");
    // A zip archive whose every entry Python's own reader checks (names, sizes, CRCs).
    let tested = pods.python(&["-m", "zipfile", "-t", &file.to_string_lossy()], &[]);
    assert!(tested.contains("Done testing"), "{tested}");
}

#[test]
fn wait_mode_times_out_with_exit_1_while_migrations_are_pending() {
    let (pods, _) = sqlite_pods();
    let containers = pods.containers(&[], &[("mode", "wait"), ("migrate-timeout", "2")]);
    assert_eq!(containers[1].name, "django-wait-for-migrations");
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 1, "{}", exit.logs);
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "timeout", "{summary}");
    assert_eq!(summary["phase"], "waiting", "{summary}");
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("gave up after"),
        "{summary}"
    );
    assert!(
        summary["pending"]
            .as_array()
            .unwrap()
            .contains(&"catalog.0001_initial".into()),
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
        let exit = containers[1].run(LIMIT);
        assert_eq!(exit.code, 4, "{needle}: {}", exit.logs);
        let summary = pods.summary(None);
        assert_eq!(summary["result"], "not-found", "{summary}");
        assert!(
            summary["message"].as_str().unwrap().contains(needle),
            "{summary}"
        );
    }
}

#[test]
fn manage_command_and_image_entrypoint_from_annotations() {
    let (mut pods, db) = sqlite_pods();
    // The image's PATH finds the Python with Django, so `./manage.py` runs by its shebang.
    let venv_bin = test_python()
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    pods.env.push((
        "PATH".into(),
        format!("{venv_bin}:/usr/local/bin:/usr/bin:/bin"),
    ));
    let containers = pods.containers(
        &[],
        &[("python", "python3"), ("manage-command", "./manage.py")],
    );
    assert_eq!(containers[1].argv[0], "python3");
    assert_eq!(
        containers[1].env["DJANGO_MIGRATE_MANAGE_COMMAND"],
        "./manage.py"
    );
    let exit = containers[1].run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert_eq!(count_runs(&db), 1);

    // With use-image-entrypoint only args are set: the wrapper sets DB_NAME, then runs them.
    let (mut pods, _) = sqlite_pods();
    let wrapped = pods
        .dir
        .path()
        .join("wrapped.sqlite3")
        .to_string_lossy()
        .into_owned();
    pods.env.retain(|(k, _)| k != "DB_NAME");
    pods.env
        .push(("DB_NAME".into(), "/nonexistent/db.sqlite3".into()));
    pods.env.push(("WRAPPED_DB_NAME".into(), wrapped.clone()));
    let entrypoint = [crate::repo()
        .join("tests/django/docker-entrypoint.sh")
        .to_string_lossy()
        .into_owned()];
    let specs = crate::injected_init_containers(&crate::deployment(
        &pods.python,
        &pods.env,
        &[("use-image-entrypoint", "true")],
    ));
    assert!(specs[1].get("command").is_none(), "only args: {}", specs[1]);
    let mut migrate = crate::kubelet::Container::from_spec(&specs[1], &entrypoint);
    // The code volume, as the copy container leaves it.
    let code = pods.containers(&[], &[])[1].volumes.clone();
    migrate.volumes = code;
    let exit = migrate.run(LIMIT);
    assert_eq!(exit.code, 0, "{}", exit.logs);
    assert_eq!(count_runs(&wrapped), 1);
}

/// An app with `count` migrations of long names: one model, then one nullable column
/// per migration. Returns the settings module that adds it to the test project, to be
/// found on PYTHONPATH=`dir`.
fn many_migrations_app(dir: &std::path::Path, count: usize) -> &'static str {
    let app = dir.join("sensors");
    let migrations = app.join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        dir.join("many_settings.py"),
        "from testsite.settings import *  # noqa: F403\n\
         INSTALLED_APPS = INSTALLED_APPS + [\"sensors\"]  # noqa: F405\n",
    )
    .unwrap();
    std::fs::write(app.join("__init__.py"), "").unwrap();
    std::fs::write(migrations.join("__init__.py"), "").unwrap();
    let name = |i: usize| format!("{i:04}_records_the_reading_of_sensor_{i:04}");
    let mut models =
        String::from("from django.db import models\n\n\nclass Reading(models.Model):\n");
    for i in 1..=count {
        let (dependencies, operation) = if i == 1 {
            (
                String::new(),
                "migrations.CreateModel(\"Reading\", [(\"id\", models.BigAutoField(primary_key=True))])"
                    .to_owned(),
            )
        } else {
            models.push_str(&format!(
                "    sensor_{i:04} = models.IntegerField(null=True)\n"
            ));
            (
                format!("(\"sensors\", \"{}\")", name(i - 1)),
                format!(
                    "migrations.AddField(\"reading\", \"sensor_{i:04}\", models.IntegerField(null=True))"
                ),
            )
        };
        std::fs::write(
            migrations.join(format!("{}.py", name(i))),
            format!(
                "from django.db import migrations, models\n\n\n\
                 class Migration(migrations.Migration):\n    \
                 dependencies = [{dependencies}]\n    \
                 operations = [{operation}]\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(app.join("models.py"), models).unwrap();
    "many_settings"
}

#[test]
fn hundreds_of_migrations_are_counted_in_a_summary_within_4_kib() {
    const GENERATED: usize = 300;
    let (mut pods, _) = sqlite_pods();
    let site = pods.dir.path().join("site");
    let settings = many_migrations_app(&site, GENERATED);
    pods.env
        .push(("PYTHONPATH".into(), site.to_string_lossy().into()));
    pods.env
        .push(("DJANGO_SETTINGS_MODULE".into(), settings.into()));
    // The plan `migrate` runs, in its order: the project's own apps and the generated one.
    let plan: Vec<String> = pods
        .python(&["manage.py", "showmigrations", "--plan"], &[])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[ ]").map(|m| m.trim().to_owned()))
        .collect();
    let generated = plan.iter().filter(|m| m.starts_with("sensors.")).count();
    assert_eq!(generated, GENERATED, "{plan:?}");
    assert!(plan.len() > GENERATED, "{plan:?}");

    let containers = pods.containers(&[], &[]);
    let exit = containers[1].run(Duration::from_secs(600));
    assert_eq!(exit.code, 0, "{}", exit.logs);
    let text = pods.termination_message(None);
    assert!(text.len() <= 4096, "{} bytes: {text}", text.len());
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(summary["counts"]["applied"], plan.len(), "{summary}");
    assert_eq!(summary["counts"]["pending"], 0, "{summary}");
    // The list is cut to fit, from the end: what is left is where the plan started.
    let applied: Vec<&str> = summary["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        !applied.is_empty() && applied.len() < plan.len(),
        "{summary}"
    );
    assert_eq!(applied, plan[..applied.len()], "{summary}");
    // The message names a few migrations, from the start of the plan, and counts the rest.
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("applied {} migrations in ", plan.len())),
        "{message}"
    );
    let named = plan.iter().filter(|m| message.contains(m.as_str())).count();
    assert!((1..=10).contains(&named), "{named} named: {message}");
    assert!(
        message.ends_with(&format!(" and {} more", plan.len() - named)),
        "{message}"
    );

    // What the controller reads from it: the whole count, for the Event, the metric and
    // `status`.
    let terminated = ContainerStateTerminated {
        exit_code: 0,
        message: Some(text.clone()),
        ..ContainerStateTerminated::default()
    };
    let read = step::Exit::read(&terminated);
    assert!(read.applied, "{text}");
    assert_eq!(read.stats.applied, plan.len() as u64, "{text}");
    assert_eq!(read.message.as_deref(), Some(message));

    // Another pod of the same rollout finds nothing to do.
    let second = pods.pod(&containers, 2);
    assert_eq!(second[0].run(LIMIT).code, 0);
    let exit = second[1].run(Duration::from_secs(120));
    assert_eq!(exit.code, 0, "{}", exit.logs);
    let summary = pods.summary(Some(2));
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert_eq!(summary["counts"]["applied"], 0, "{summary}");
    assert_eq!(summary["counts"]["pending"], 0, "{summary}");
}

/// Hundreds of migrations marked `Safe.after_deploy(delay=...)`, the longest delay on the
/// last one: the summary stays within 4 KiB, counts every deferred migration, lists the
/// first ones in plan order, and keeps the longest delay that the list no longer shows.
#[test]
fn hundreds_of_deferred_migrations_are_counted_in_a_summary_within_4_kib() {
    const GENERATED: usize = 300;
    let (mut pods, _) = sqlite_pods();
    let site = pods.dir.path().join("site");
    let settings = many_migrations_app(&site, GENERATED);
    let migrations = site.join("sensors/migrations");
    for entry in std::fs::read_dir(&migrations).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(number) = file.get(..4).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "class Migration(migrations.Migration):\n",
            &format!(
                "class Migration(migrations.Migration):\n    \
                 safe = Safe.after_deploy(delay=timedelta(seconds={number}))\n"
            ),
        );
        std::fs::write(
            &path,
            format!(
                "from datetime import timedelta\n\nfrom django_safemigrate import Safe\n{text}"
            ),
        )
        .unwrap();
    }
    pods.env
        .push(("PYTHONPATH".into(), site.to_string_lossy().into()));
    pods.env
        .push(("DJANGO_SETTINGS_MODULE".into(), settings.into()));

    let exit = pods.containers(&[], &[])[1].run(Duration::from_secs(600));
    assert_eq!(exit.code, 0, "{}", exit.logs);
    let text = pods.termination_message(None);
    assert!(text.len() <= 4096, "{} bytes: {text}", text.len());
    let summary = pods.summary(None);
    assert_eq!(summary["result"], "applied", "{summary}");
    assert_eq!(summary["counts"]["deferred"], GENERATED, "{summary}");
    assert_eq!(
        summary["contract_delay_seconds"],
        serde_json::json!(GENERATED as f64),
        "{summary}"
    );
    let deferred = summary["deferred"].as_array().unwrap();
    assert!(
        !deferred.is_empty() && deferred.len() < GENERATED,
        "{summary}"
    );
    for (i, d) in deferred.iter().enumerate() {
        let n = i + 1;
        assert_eq!(
            d["migration"],
            format!("sensors.{n:04}_records_the_reading_of_sensor_{n:04}"),
            "{summary}"
        );
        assert_eq!(d["delay"], serde_json::json!(n as f64), "{summary}");
    }
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "; {GENERATED} deferred to the contract run: sensors.0001_"
        )),
        "{message}"
    );
    // The log line has the whole message, which counts the migrations it does not name.
    let logged = exit
        .logs
        .lines()
        .find(|l| l.contains("deferred to the contract run: sensors.0001_"))
        .unwrap_or_else(|| panic!("{}", exit.logs));
    assert!(logged.ends_with(" more"), "{logged}");
}
