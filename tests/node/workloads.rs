//! The other workloads on the real node: a CronJob's run of a new release waits for its
//! migrations and then runs; a StatefulSet of three migrates once; an Argo Rollout's
//! canary with a deferred column drop is contracted only once fully promoted.

use serde_json::json;

use super::*;

/// The Django test Deployment's manifest, as JSON, to be made into another kind.
fn django_json(ns: &str, name: &str, database: &str, env: &[(&str, &str)]) -> Value {
    serde_yaml_ng::from_str(&django_deployment(ns, name, database, 1, &[], env)).unwrap()
}

/// `template` (a Deployment's pod template) as a Job's: runs `command` once.
fn job_template(mut template: Value, command: &[&str]) -> Value {
    template.as_object_mut().unwrap().remove("metadata");
    let spec = &mut template["spec"];
    spec["restartPolicy"] = json!("Never");
    spec["containers"][0]["command"] = json!(command);
    template
}

/// The twostep app's migrations (two) recorded, and how many distinct ones.
fn twostep_applied(database: &str) -> String {
    psql(
        database,
        "SELECT COUNT(*), COUNT(DISTINCT name) FROM django_migrations WHERE app = 'twostep'",
    )
}

/// A CronJob of the next release (an app with a migration the web Deployment has not
/// applied yet): its run waits, with the reason on its pod, and runs once the web
/// Deployment of that release has migrated. The migration is applied once, by the web
/// pod; the Job's pod only waited.
#[tokio::test]
async fn a_cronjobs_run_of_a_new_release_waits_for_its_migrations_then_runs() {
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-cron").await;
    let n = ns.name.as_str();
    apply(&django_deployment(n, "web", &database, 1, &[], &[]), &[]);
    rollout_completes(n, "web", "180s", &webhook);

    let next = django_json(n, "report", &database, &[("TWO_STEP_APP", "1")]);
    let cron = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report", "namespace": n,
                     "labels": {"django-migrate.io/inject": "true"}},
        "spec": {"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": {
            "backoffLimit": 0,
            "template": job_template(next["spec"]["template"].clone(),
                                     &["python3", "manage.py", "showmigrations", "twostep"]),
        }}},
    });
    let (_, warnings) = apply(&cron.to_string(), &[]);
    assert!(
        warnings.contains("django-wait-for-migrations"),
        "{warnings}"
    );
    kubectl_ok(&[
        "create",
        "job",
        "--from=cronjob/report",
        "report-1",
        "-n",
        n,
    ]);
    let job_pod = || async {
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), n);
        let list = api
            .list(&kube::api::ListParams::default().labels("batch.kubernetes.io/job-name=report-1"))
            .await
            .ok()?;
        list.items.into_iter().next()
    };
    // Waiting, and saying so, while its release's migration is not applied.
    let waiting = eventually(
        "the Job's pod waiting for migrations",
        Duration::from_secs(120),
        || async {
            let pod = job_pod().await?;
            let (status, reason, message) = gate(&pod)?;
            (status == "False" && reason == "MigrationStepRunning").then_some(message)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job: Value = serde_json::from_str(&kubectl_ok(&[
        "get", "job", "report-1", "-n", n, "-o", "json",
    ]))
    .unwrap();
    assert!(
        job["status"]["succeeded"].is_null(),
        "ran before its migrations: {job}"
    );
    assert_eq!(twostep_applied(&database), "0|0");
    let status = Command::new(BIN)
        .args(["status", "cronjob/report", "-n", n])
        .output()
        .unwrap();
    let table = text(&status).0;
    eprintln!("$ django-migrate-webhook status cronjob/report -n {n}\n{table}");
    assert!(
        table.contains("waiting for other pods' migrations"),
        "{table}\n{waiting}"
    );

    // The web Deployment of the next release migrates; the run goes on.
    let started = std::time::Instant::now();
    apply(
        &django_deployment(n, "web", &database, 1, &[], &[("TWO_STEP_APP", "1")]),
        &[],
    );
    rollout_completes(n, "web", "180s", &webhook);
    kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/report-1",
        "-n",
        n,
        "--timeout=180s",
    ]);
    eprintln!(
        "cronjob: its run completed {:.1?} after the web Deployment of its release was applied",
        started.elapsed()
    );
    assert_eq!(twostep_applied(&database), "2|2", "each applied once");
    let pod = job_pod().await.unwrap();
    let (status, reason, _) = gate(&pod).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Migrated"));
    let log = kubectl_ok(&["logs", &pod.name_any(), "-c", "web", "-n", n]);
    assert!(
        log.contains("[X] 0001_initial") && log.contains("[X] 0002_two_columns"),
        "{log}"
    );
}

/// A StatefulSet of three pods started together: one migration run, every pod gated True
/// and Ready.
#[tokio::test]
async fn a_statefulset_of_three_migrates_once() {
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-sts").await;
    let n = ns.name.as_str();
    let web = django_json(n, "web", &database, &[]);
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": n, "labels": web["metadata"]["labels"]},
        "spec": {"replicas": 3, "serviceName": "web", "podManagementPolicy": "Parallel",
                 "selector": web["spec"]["selector"], "template": web["spec"]["template"]},
    });
    apply(&sts.to_string(), &[]);
    let status = kubectl(
        &[
            "rollout",
            "status",
            "statefulset/web",
            "-n",
            n,
            "--timeout=240s",
        ],
        None,
    );
    if !status.status.success() {
        panic!(
            "the StatefulSet did not become ready: {}\n{}\nwebhook log:\n{}",
            text(&status).1,
            text(&kubectl(&["describe", "pods", "-n", n], None)).0,
            webhook.logs()
        );
    }
    let pods = pods_of(&client, n, "web").await;
    assert_eq!(pods.len(), 3);
    assert_migrated_once(&pods, &database);
    let release = |p: &Pod| p.labels().get("controller-revision-hash").cloned();
    assert!(pods.iter().all(|p| release(p) == release(&pods[0])));
    // The Event of the pod that applied them is on the StatefulSet.
    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        n,
        "--field-selector",
        "involvedObject.kind=StatefulSet,involvedObject.name=web,reason=MigrationsApplied",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("applied"), "{events}");
}

/// Argo Rollouts' controller, built from its Go module by
/// `scripts/kube/build-argo-rollouts.sh`, with its CRDs installed, running beside the
/// cluster like the webhook; stopped when dropped.
pub(super) struct ArgoRollouts {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ArgoRollouts {
    pub(super) async fn start() -> ArgoRollouts {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube/build-argo-rollouts.sh"
        );
        let out = Command::new("bash").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "{script} failed (it builds Argo Rollouts' controller from github.com/argoproj/argo-rollouts through the Go module proxy): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let crds = dir.join("crds");
        kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        install_rollout_crd();
        // Its ports listen on every address; one free there.
        let port = || {
            std::net::TcpListener::bind("0.0.0.0:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
                .to_string()
        };
        let (metrics, health) = (port(), port());
        let log = std::env::temp_dir().join(format!("argo-rollouts-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(dir.join("bin/rollouts-controller"))
            .args(["--kubeconfig", &kubeconfig(), "--leader-elect=false"])
            .args(["--metricsport", &metrics, "--healthzPort", &health])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let argo = ArgoRollouts { child, log };
        eventually(
            "Argo Rollouts' controller to listen",
            Duration::from_secs(60),
            || async {
                std::net::TcpStream::connect(("127.0.0.1", health.parse::<u16>().unwrap()))
                    .ok()
                    .map(drop)
            },
        )
        .await;
        argo
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ArgoRollouts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
