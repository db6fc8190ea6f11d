//! `plan` on the real node: the next release of the ledger app, given by its image,
//! planned against the database the running release migrated, with the caller's
//! kubeconfig; the report printed, the exit code a pipeline gates on, and nothing changed
//! or left behind (the database, the Deployment, the plan's Job and pods).

use std::time::Instant;

use super::*;

/// The ledger app's two releases as images (`scripts/kube/build-images.sh`): release 1
/// reads `ledger_entry.legacy`, release 2 drops it.
const RELEASE_1: &str = "localhost/e2e/django:ledger-1";
const RELEASE_2: &str = "localhost/e2e/django:ledger-2";
const DROP: &str = "ledger.0002_remove_entry_legacy";
/// The step's record tables.
const RECORDS: &str = "SELECT coalesce(string_agg(tablename, ',' ORDER BY tablename), '') \
                       FROM pg_tables WHERE tablename LIKE 'django_migrate%'";

/// `django-migrate-webhook plan ARGS` with the test cluster's kubeconfig: (exit code,
/// stdout, stderr) and how long it took.
fn plan(args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_django-migrate-webhook"))
        .arg("plan")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("the binary runs");
    let (stdout, stderr) = text(&out);
    (
        out.status.code().unwrap_or(-1),
        stdout,
        stderr,
        started.elapsed(),
    )
}

fn migrations(database: &str) -> String {
    psql(
        database,
        "SELECT string_agg(app || '.' || name, ',' ORDER BY id) FROM django_migrations",
    )
}

#[tokio::test]
async fn plan_reports_the_next_release_and_gates_on_a_breaking_migration() {
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup("plan").await;
    let manifest = django_deployment(
        &ns.name,
        "ledger",
        &database,
        2,
        &[("unsafe-migrations", "deny")],
        &[],
    )
    .replace(DJANGO_IMAGE, RELEASE_1);
    apply(&manifest, &[]);
    rollout_completes(&ns.name, "ledger", "180s", &webhook);
    let before = migrations(&database);
    let records = psql(&database, RECORDS);
    assert!(before.contains("ledger.0001_initial") && !before.contains(DROP));
    let generation = kubectl_ok(&[
        "get",
        "deployment",
        "ledger",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.metadata.generation}",
    ]);

    // The next release, by its image: its column drop is held back under deny.
    let (code, stdout, stderr, took) = plan(&[
        "deployment/ledger",
        "-n",
        &ns.name,
        "--image",
        RELEASE_2,
        "-o",
        "json",
    ]);
    assert_eq!(code, 5, "held back: {stdout}\n{stderr}");
    let stdout_json = stdout.clone();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("-o json is not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["verdict"], "held-back", "{report}");
    let planned = report["migrations"].as_array().unwrap();
    assert_eq!(planned.len(), 1, "{report}");
    assert_eq!(planned[0]["migration"], DROP, "{report}");
    assert_eq!(planned[0]["action"], "hold-back", "{report}");
    let finding = &planned[0]["operations"][0]["findings"][0];
    assert_eq!(finding["kind"], "breaking", "{report}");
    assert!(
        finding["why"]
            .as_str()
            .unwrap()
            .contains("drops column entry.legacy"),
        "{report}"
    );
    assert_eq!(report["database"]["vendor"], "postgresql", "{report}");

    // The same as a table, for people.
    let (code, table, stderr, _) = plan(&["ledger", "-n", &ns.name, "--image", RELEASE_2]);
    assert_eq!(code, 5, "{table}\n{stderr}");
    assert!(
        table.contains(DROP) && table.contains("hold-back") && table.contains("breaking"),
        "{table}"
    );

    // As a pull-request comment.
    let (code, markdown, stderr, _) = plan(&[
        "deployment/ledger",
        "-n",
        &ns.name,
        "--image",
        RELEASE_2,
        "-o",
        "markdown",
    ]);
    assert_eq!(code, 5, "{markdown}\n{stderr}");
    assert!(
        markdown.contains(&format!("| `{DROP}`")) || markdown.contains(&format!("| {DROP}")),
        "{markdown}"
    );
    eprintln!("{table}\n{markdown}\n{stdout_json}");

    // The running release's own image: nothing pending, the rollout would pass.
    let (code, stdout, stderr, _) = plan(&["deployment/ledger", "-n", &ns.name, "-o", "json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verdict"], "nothing-pending", "{report}");

    // Nothing changed, nothing left behind.
    assert_eq!(migrations(&database), before);
    assert_eq!(
        psql(
            &database,
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'ledger_entry' AND column_name = 'legacy'"
        ),
        "1"
    );
    assert_eq!(
        psql(&database, RECORDS),
        records,
        "the step's record tables"
    );
    let jobs = kubectl_ok(&["get", "jobs", "-n", &ns.name, "-o", "name"]);
    assert_eq!(jobs.trim(), "", "the plan's Jobs are deleted");
    eventually("the plan's pods deleted", Duration::from_secs(60), || {
        let ns = ns.name.clone();
        async move {
            let pods = kubectl_ok(&[
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                "django-migrate.io/plan-for",
                "-o",
                "name",
            ]);
            pods.trim().is_empty().then_some(())
        }
    })
    .await;
    assert_eq!(
        kubectl_ok(&[
            "get",
            "deployment",
            "ledger",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.metadata.generation}",
        ]),
        generation,
        "the Deployment is untouched"
    );
    rollout_completes(&ns.name, "ledger", "30s", &webhook);
    eprintln!(
        "plan --image {RELEASE_2}: exit 5 (held back: {DROP}) in {took:.1?}; nothing pending \
         for {RELEASE_1}; no Job or pod left, django_migrations unchanged"
    );
}
