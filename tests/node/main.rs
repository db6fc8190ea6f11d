//! The node tier: a current Kubernetes with a real node (kubelet, containerd and runc from
//! Debian, a CNI bridge; `scripts/kube/start-node.sh`), images built locally without a
//! registry (`scripts/kube/build-images.sh`), and PostgreSQL on the node's own address.
//! The webhook binary runs beside the cluster with `--controller`, registered through the
//! chart's MutatingWebhookConfiguration; the kubelet runs the injected containers for real
//! and owns pod readiness.

// The cluster tier's harness; this tier uses part of it.
#[allow(dead_code)]
#[path = "../cluster/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use harness::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

const DJANGO_IMAGE: &str = "localhost/e2e/django:test";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the node tier needs the node, the images and the databases \
             that scripts/test.sh starts (scripts/kube/start-node.sh, build-images.sh, \
             DB_EXTRA_LISTEN for scripts/databases.sh)"
        )
    })
}

fn webhook_image() -> String {
    format!(
        "localhost/e2e/django-migrate-webhook:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// SQL on the test PostgreSQL server, with its own client.
fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env("DJANGO_MIGRATE_TEST_POSTGRES_PORT"),
        ])
        .args(["-U", &env("DJANGO_MIGRATE_TEST_DB_USER"), "-d", database])
        .args(["-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", env("DJANGO_MIGRATE_TEST_DB_PASSWORD"))
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn django_deployment(
    ns: &str,
    name: &str,
    database: &str,
    replicas: u32,
    annotations: &[(&str, &str)],
    extra_env: &[(&str, &str)],
) -> String {
    let mut env = vec![
        ("DB_ENGINE", "postgresql".to_owned()),
        ("DB_NAME", database.to_owned()),
        ("DB_HOST", env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST")),
        ("DB_PORT", env("DJANGO_MIGRATE_TEST_POSTGRES_PORT")),
        ("DB_USER", env("DJANGO_MIGRATE_TEST_DB_USER")),
        ("DB_PASSWORD", env("DJANGO_MIGRATE_TEST_DB_PASSWORD")),
        ("SLOW_MIGRATION_SECONDS", "2".to_owned()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env: String = env
        .iter()
        .map(|(k, v)| format!("\n            - name: {k}\n              value: \"{v}\""))
        .collect();
    let annotations: String = if annotations.is_empty() {
        String::new()
    } else {
        let lines: String = annotations
            .iter()
            .map(|(k, v)| format!("\n    django-migrate.io/{k}: \"{v}\""))
            .collect();
        format!("\n  annotations:{lines}")
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
    django-migrate.io/inject: "true"{annotations}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: {DJANGO_IMAGE}
          imagePullPolicy: Never
          env:{env}
"#
    )
}

fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args, None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "kubectl {args:?}: {stderr}");
    stdout
}

/// A namespace with the webhook (and its controller) registered for it, and a fresh
/// database.
async fn setup(prefix: &str) -> (Namespace, Webhook, String) {
    let ns = Namespace::new(prefix);
    let image = webhook_image();
    let webhook = Webhook::start(&[
        "--controller",
        "--lease-namespace",
        &ns.name,
        "--code-image",
        &image,
        "--code-image-pull-policy",
        "Never",
    ])
    .await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let database = format!("e2e_{}", ns.name.replace('-', "_"));
    psql("postgres", &format!("CREATE DATABASE {database}"));
    (ns, webhook, database)
}

fn rollout(ns: &str, name: &str, timeout: &str) -> std::process::Output {
    kubectl(
        &[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "-n",
            ns,
            &format!("--timeout={timeout}"),
        ],
        None,
    )
}

/// The gate condition of a pod: (status, reason, message).
fn gate(pod: &Pod) -> Option<(String, String, String)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "django-migrate.io/migrated")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

/// A failing migration: the rollout stalls, the pod's condition and an Event on the
/// Deployment name the migration, and `kubectl describe pod` shows it.
#[tokio::test]
async fn a_failing_migration_stalls_the_rollout_and_names_the_migration() {
    let client = client().await;
    let (ns, _webhook, database) = setup("node-fail").await;
    apply(
        &django_deployment(
            &ns.name,
            "shop",
            &database,
            1,
            &[],
            &[("BROKEN_MIGRATION", "1")],
        ),
        &[],
    );
    let status = rollout(&ns.name, "shop", "40s");
    assert!(!status.status.success(), "the rollout must not complete");
    let pod = eventually(
        "the MigrationFailed condition",
        Duration::from_secs(60),
        || async {
            let pods = pods_of(&client, &ns.name, "shop").await;
            pods.into_iter()
                .find(|p| gate(p).is_some_and(|(_, reason, _)| reason == "MigrationFailed"))
        },
    )
    .await;
    let (status, _, message) = gate(&pod).unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("broken.0001_explode"), "{message}");
    assert!(message.starts_with("exit code 2: "), "{message}");
    let describe = kubectl_ok(&["describe", "pod", &pod.name_any(), "-n", &ns.name]);
    assert!(describe.contains("broken.0001_explode"), "{describe}");
    let events = eventually(
        "a MigrationFailed Event on the Deployment",
        Duration::from_secs(60),
        || async {
            let out = kubectl_ok(&[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "involvedObject.kind=Deployment,reason=MigrationFailed",
                "-o",
                "json",
            ]);
            let events: Value = serde_json::from_str(&out).unwrap();
            let items = events["items"].as_array().cloned().unwrap_or_default();
            (!items.is_empty()).then_some(items)
        },
    )
    .await;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("broken.0001_explode"))),
        "{events:?}"
    );
    eprintln!(
        "failing migration: rollout stalled, condition and Deployment Event name it: {message}"
    );
}

/// Workers in `wait` mode stay unready until a migrate pod has applied everything.
#[tokio::test]
async fn wait_mode_workers_become_ready_after_the_web_pods_migrated() {
    let client = client().await;
    let (ns, _webhook, database) = setup("node-wait").await;
    apply(
        &django_deployment(&ns.name, "worker", &database, 2, &[("mode", "wait")], &[]),
        &[],
    );
    // Waiting, not Ready, while nothing migrates.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let workers = pods_of(&client, &ns.name, "worker").await;
    assert_eq!(workers.len(), 2);
    for w in &workers {
        let (status, reason, _) = gate(w).unwrap_or_default();
        assert_eq!(status, "False", "{}: {reason}", w.name_any());
    }
    let started = std::time::Instant::now();
    apply(
        &django_deployment(&ns.name, "web", &database, 1, &[], &[]),
        &[],
    );
    for name in ["web", "worker"] {
        let status = rollout(&ns.name, name, "180s");
        assert!(status.status.success(), "{name}: {}", text(&status).1);
    }
    let workers = pods_of(&client, &ns.name, "worker").await;
    for w in &workers {
        let (status, reason, message) = gate(w).unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("True", "Migrated"),
            "{message}"
        );
    }
    eprintln!(
        "wait mode: 2 workers Ready {:.1?} after the web Deployment was applied",
        started.elapsed()
    );
}

/// Three replicas of an opted-in Django Deployment on a real kubelet: every pod runs the
/// code copy and the Django step, every migration is applied exactly once, the gate turns
/// True and `kubectl rollout status` completes.
#[tokio::test]
async fn injected_pods_migrate_once_on_a_real_kubelet() {
    let client = client().await;
    let (ns, webhook, database) = setup("node-e2e").await;

    let started = std::time::Instant::now();
    let (_, warnings) = apply(
        &django_deployment(&ns.name, "shop", &database, 3, &[], &[]),
        &[],
    );
    assert!(warnings.contains("injected init containers"), "{warnings}");
    let status = kubectl(
        &[
            "rollout",
            "status",
            "deployment/shop",
            "-n",
            &ns.name,
            "--timeout=240s",
        ],
        None,
    );
    let pods: Vec<Pod> = pods_of(&client, &ns.name, "shop").await;
    if !status.status.success() {
        let describe = kubectl(&["describe", "pods", "-n", &ns.name], None);
        panic!(
            "rollout did not complete: {}\n{}\nwebhook log:\n{}",
            text(&status).1,
            text(&describe).0,
            webhook.logs()
        );
    }
    let rollout = started.elapsed();
    assert_eq!(pods.len(), 3);

    let mut appliers = 0;
    for pod in &pods {
        let status = pod.status.as_ref().unwrap();
        let init = status.init_container_statuses.as_ref().unwrap();
        let names: Vec<&str> = init.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["django-migrate-code", "django-migrate"],
            "{}",
            pod.name_any()
        );
        for s in init {
            let t = s.state.as_ref().unwrap().terminated.as_ref().unwrap();
            assert_eq!(
                t.exit_code,
                0,
                "{} {}: {:?}",
                pod.name_any(),
                s.name,
                t.message
            );
        }
        let message = init[1]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .message
            .clone();
        let summary: Value = serde_json::from_str(&message.unwrap_or_default()).unwrap();
        if summary["result"] == "applied" {
            appliers += 1;
        }
        let gate = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "django-migrate.io/migrated")
            .expect("the gate condition");
        assert_eq!(
            (gate.status.as_str(), gate.reason.as_deref()),
            ("True", Some("Migrated"))
        );
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            ready.status,
            "True",
            "the kubelet made {} Ready",
            pod.name_any()
        );
    }
    assert_eq!(appliers, 1, "exactly one pod applies the migrations");
    let recorded = psql(
        &database,
        "SELECT COUNT(*), COUNT(DISTINCT (app, name)) FROM django_migrations WHERE app IN ('catalog', 'orders')",
    );
    assert_eq!(recorded, "6|6", "every migration recorded once");
    assert_eq!(
        psql(&database, "SELECT COUNT(*) FROM catalog_migrationrun"),
        "1"
    );
    eprintln!(
        "3 replicas on a real kubelet: rollout complete after {rollout:.1?}, 6 migrations applied once by one pod"
    );

    // A rolling update to a release with a new app and its four migrations: applied once,
    // and the previous release keeps all three replicas available until new pods are gated.
    let started = std::time::Instant::now();
    apply(
        &django_deployment(&ns.name, "shop", &database, 3, &[], &[("UNSAFE_APP", "1")]),
        &[],
    );
    let mut fewest = i64::MAX;
    loop {
        let d = get_deployment(&client, &ns.name, "shop").await;
        let status = &d["status"];
        fewest = fewest.min(status["availableReplicas"].as_i64().unwrap_or(0));
        let done = status["updatedReplicas"] == 3
            && status["availableReplicas"] == 3
            && status["replicas"] == 3
            && status["observedGeneration"] == d["metadata"]["generation"];
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the rolling update did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let updated = started.elapsed();
    assert_eq!(
        fewest, 3,
        "available replicas dropped during the rolling update"
    );
    let recorded = psql(
        &database,
        "SELECT COUNT(*), COUNT(DISTINCT name) FROM django_migrations WHERE app = 'inventory'",
    );
    assert_eq!(
        recorded, "4|4",
        "the new release's migrations recorded once"
    );
    eprintln!(
        "rolling update with 4 new migrations: done after {updated:.1?}, applied once, never fewer than 3 available"
    );
    let _ = kubectl_ok(&[
        "delete",
        "deployment",
        "shop",
        "-n",
        &ns.name,
        "--wait=false",
    ]);
}
