//! The node tier: a current Kubernetes with a real node (kubelet, containerd and runc from
//! Debian, a CNI bridge; `scripts/kube/start-node.sh`), images built locally without a
//! registry (`scripts/kube/build-images.sh`), and PostgreSQL on the node's own address.
//! The webhook binary runs beside the cluster with `--controller`, registered through the
//! chart's MutatingWebhookConfiguration; the kubelet runs the injected containers for real
//! and owns pod readiness.
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

mod contract;
mod image_volume;
mod plan;
mod workloads;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;
use support::kube::*;
use support::serve::*;

const DJANGO_IMAGE: &str = "localhost/e2e/django:test";

/// Tests share one PostgreSQL server; the test that restarts it takes this for writing,
/// every other test for reading.
static DATABASE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

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
    django_deployment_with(ns, name, database, replicas, annotations, extra_env, "")
}

/// A Deployment of the Django test image; `extra_env` overrides or adds variables, and
/// `init_containers` is YAML for the pod's own `initContainers:` list (indented 8).
fn django_deployment_with(
    ns: &str,
    name: &str,
    database: &str,
    replicas: u32,
    annotations: &[(&str, &str)],
    extra_env: &[(&str, &str)],
    init_containers: &str,
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
    for (k, v) in extra_env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k, v.to_string())),
        }
    }
    let init_containers = if init_containers.is_empty() {
        String::new()
    } else {
        format!("\n      initContainers:{init_containers}")
    };
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
      terminationGracePeriodSeconds: 2{init_containers}
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
async fn setup(prefix: &str) -> (Namespace, Serve, String) {
    setup_with(prefix, &[]).await
}

/// [`setup`], with extra flags for `serve`.
async fn setup_with(prefix: &str, extra: &[&str]) -> (Namespace, Serve, String) {
    let ns = Namespace::new(prefix);
    let image = webhook_image();
    let mut args = vec![
        "--controller",
        "--lease-namespace",
        &ns.name,
        "--code-image",
        &image,
        "--code-image-pull-policy",
        "Never",
    ];
    args.extend_from_slice(extra);
    let webhook = Serve::start(&args).await;
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
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-fail").await;
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
    let started = std::time::Instant::now();
    let pod = loop {
        let pods = pods_of(&client, &ns.name, "shop").await;
        if let Some(p) = pods
            .iter()
            .find(|p| gate(p).is_some_and(|(_, reason, _)| reason == "MigrationFailed"))
        {
            break p.clone();
        }
        if started.elapsed() > Duration::from_secs(120) {
            let describe = kubectl(&["describe", "pods", "-n", &ns.name], None);
            let steps: Vec<String> = pods
                .iter()
                .map(|p| {
                    let out = kubectl(
                        &[
                            "logs",
                            "-n",
                            &ns.name,
                            &p.name_any(),
                            "-c",
                            "django-migrate",
                        ],
                        None,
                    );
                    text(&out).0
                })
                .collect();
            panic!(
                "no MigrationFailed condition after 120 s; conditions: {:?}\nstep logs:\n{}\n{}\nwebhook log:\n{}",
                pods.iter().map(gate).collect::<Vec<_>>(),
                steps.join("\n---\n"),
                text(&describe).0,
                webhook.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
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
    let _db = DATABASE.read().await;
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
    let _db = DATABASE.read().await;
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
    // `status` on the real node: injected, 3/3 migrated, the rollout complete, exit 0.
    let out = Command::new(BIN)
        .args(["status", "-n", &ns.name])
        .output()
        .expect("status runs");
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("$ django-migrate-webhook status -n {}\n{table}", ns.name);
    assert_eq!(out.status.code(), Some(0), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("shop"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(2..),
        Some(&["yes", "3/3", "complete"][..]),
        "{table}"
    );
    assert_eq!(table.matches(": applied").count(), 3, "{table}");

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

/// Waits for `kubectl rollout status`, and on failure shows the pods and the webhook's log.
fn rollout_completes(ns: &str, name: &str, timeout: &str, webhook: &Serve) {
    let status = rollout(ns, name, timeout);
    if !status.status.success() {
        let describe = kubectl(&["describe", "pods", "-n", ns], None);
        panic!(
            "the rollout of {name} did not complete: {}\n{}\nwebhook log:\n{}",
            text(&status).1,
            text(&describe).0,
            webhook.logs()
        );
    }
}

/// Every pod gated True, each catalog migration recorded once, and the data migration
/// (which records its runs) run to completion exactly once.
fn assert_migrated_once(pods: &[Pod], database: &str) {
    for pod in pods {
        let (status, reason, _) = gate(pod).expect("the gate condition");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Migrated"));
    }
    assert_eq!(catalog_migrations(database), "3|3");
    assert_eq!(
        psql(database, "SELECT COUNT(*) FROM catalog_migrationrun"),
        "1",
        "the data migration ran to completion once"
    );
}

/// Catalog migrations recorded in `django_migrations`, and how many distinct ones.
fn catalog_migrations(database: &str) -> String {
    psql(
        database,
        "SELECT COUNT(*), COUNT(DISTINCT name) FROM django_migrations WHERE app = 'catalog'",
    )
}

/// The database is reachable only through a native sidecar (a TCP proxy in an init
/// container with `restartPolicy: Always`, as cloud-sql-proxy runs): the injected step runs
/// after it has started, migrates through it, and the proxy keeps running beside the app.
#[tokio::test]
async fn the_step_migrates_through_a_native_sidecar_proxy() {
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-sidecar").await;
    let target = format!(
        "{}:{}",
        env("DJANGO_MIGRATE_TEST_POSTGRES_NODE_HOST"),
        env("DJANGO_MIGRATE_TEST_POSTGRES_PORT")
    );
    // The kubelet probes the pod IP, so the proxy listens on every address of the pod.
    let proxy = format!(
        r#"
        - name: db-proxy
          image: {DJANGO_IMAGE}
          imagePullPolicy: Never
          restartPolicy: Always
          command: ["python3", "tcp_proxy.py"]
          env:
            - name: LISTEN
              value: "0.0.0.0:15432"
            - name: TARGET
              value: "{target}"
          startupProbe:
            tcpSocket:
              port: 15432
            periodSeconds: 1"#
    );
    let started = std::time::Instant::now();
    apply(
        &django_deployment_with(
            &ns.name,
            "shop",
            &database,
            2,
            &[],
            &[("DB_HOST", "127.0.0.1"), ("DB_PORT", "15432")],
            &proxy,
        ),
        &[],
    );
    rollout_completes(&ns.name, "shop", "180s", &webhook);
    let seconds = started.elapsed();
    let pods = pods_of(&client, &ns.name, "shop").await;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let order: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(order, ["db-proxy", "django-migrate-code", "django-migrate"]);
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.clone())
            .unwrap_or_default();
        let proxy = statuses.iter().find(|s| s.name == "db-proxy").unwrap();
        assert!(
            proxy.state.as_ref().is_some_and(|s| s.running.is_some()),
            "the sidecar keeps running: {proxy:?}"
        );
        let step = statuses
            .iter()
            .find(|s| s.name == "django-migrate")
            .unwrap();
        let done = step.state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(done.map(|t| t.exit_code), Some(0), "{step:?}");
        let (status, reason, _) = gate(pod).expect("the gate condition");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Migrated"));
        let logs = kubectl_ok(&["logs", "-n", &ns.name, &pod.name_any(), "-c", "db-proxy"]);
        assert!(
            logs.contains(&format!("-> {target}")),
            "the step's connections went through the proxy: {logs}"
        );
    }
    assert_eq!(catalog_migrations(&database), "3|3");
    eprintln!(
        "native sidecar proxy: 2 replicas migrated through it, rollout complete after {seconds:.1?}"
    );
}

/// Three replicas that reach PostgreSQL through PgBouncer in transaction mode (a pool of
/// 4 server connections, the way many Django sites run): the rollout completes, every
/// migration and the data migration once, and no advisory lock is left in the pool.
#[tokio::test]
async fn three_replicas_migrate_once_through_pgbouncer_in_transaction_mode() {
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-pgbouncer").await;
    let pgbouncer = env("DJANGO_MIGRATE_TEST_PGBOUNCER_TRANSACTION_PORT");
    let started = std::time::Instant::now();
    apply(
        &django_deployment(
            &ns.name,
            "shop",
            &database,
            3,
            &[],
            &[("DB_PORT", &pgbouncer)],
        ),
        &[],
    );
    rollout_completes(&ns.name, "shop", "240s", &webhook);
    let seconds = started.elapsed();
    let pods = pods_of(&client, &ns.name, "shop").await;
    assert_eq!(pods.len(), 3);
    assert_migrated_once(&pods, &database);
    assert_eq!(
        psql(
            &database,
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND database = \
             (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        "0",
        "an advisory lock is left in the pool"
    );
    eprintln!(
        "PgBouncer (transaction mode): 3 replicas migrated once, rollout complete after {seconds:.1?}"
    );
}

/// PostgreSQL goes down before the pods start and comes back 20 s later: the steps wait for
/// it (phase `database`), then migrate once, and the rollout completes.
#[tokio::test]
async fn pods_waiting_for_a_restarted_database_recover() {
    let _db = DATABASE.write().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-dbdown").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/databases.sh");
    let mut restart = Command::new("bash")
        .args([
            script,
            "restart-postgres",
            &env("DJANGO_MIGRATE_TEST_DB_DIR"),
            "20",
        ])
        .spawn()
        .expect("scripts/databases.sh runs");
    let port = env("DJANGO_MIGRATE_TEST_POSTGRES_PORT");
    eventually("PostgreSQL to be down", Duration::from_secs(15), || async {
        let up = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()));
        up.is_err().then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    apply(
        &django_deployment(&ns.name, "shop", &database, 2, &[], &[]),
        &[],
    );
    let waiting = eventually(
        "a step waiting for the database",
        Duration::from_secs(60),
        || async {
            for pod in pods_of(&client, &ns.name, "shop").await {
                let out = kubectl(
                    &[
                        "logs",
                        "-n",
                        &ns.name,
                        &pod.name_any(),
                        "-c",
                        "django-migrate",
                    ],
                    None,
                );
                let logs = text(&out).0;
                if logs.contains("not reachable") {
                    return Some(logs);
                }
            }
            None
        },
    )
    .await;
    let status = restart.wait().expect("restart-postgres finishes");
    assert!(
        status.success(),
        "scripts/databases.sh restart-postgres failed"
    );
    rollout_completes(&ns.name, "shop", "180s", &webhook);
    let seconds = started.elapsed();
    assert_migrated_once(&pods_of(&client, &ns.name, "shop").await, &database);
    let attempts = waiting.matches("not reachable").count();
    eprintln!(
        "database down 20 s: the steps waited ({attempts}+ attempts logged), rollout complete after {seconds:.1?}, migrations once"
    );
}

/// The pod that holds the migration lock is deleted mid-migration: its session ends, the
/// lock passes to a waiting pod, which applies what was rolled back, and nothing is
/// applied twice.
#[tokio::test]
async fn deleting_the_lock_holder_hands_the_migration_to_another_pod() {
    let _db = DATABASE.read().await;
    let client = client().await;
    let (ns, webhook, database) = setup("node-holder").await;
    let started = std::time::Instant::now();
    apply(
        &django_deployment(
            &ns.name,
            "shop",
            &database,
            2,
            &[],
            &[("SLOW_MIGRATION_SECONDS", "15")],
        ),
        &[],
    );
    let holder_sql = format!(
        "SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.datname = '{database}'"
    );
    let holder_ip = eventually(
        "a pod holding the migration lock",
        Duration::from_secs(90),
        || async {
            let ip = psql("postgres", &holder_sql);
            (!ip.is_empty()).then_some(ip)
        },
    )
    .await;
    let pods = pods_of(&client, &ns.name, "shop").await;
    let holder = pods
        .iter()
        .find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| ip == holder_ip)
        })
        .unwrap_or_else(|| panic!("no pod has the lock holder's address {holder_ip}"))
        .name_any();
    kubectl_ok(&["delete", "pod", "-n", &ns.name, &holder, "--grace-period=2"]);
    let deleted_at = started.elapsed();
    rollout_completes(&ns.name, "shop", "240s", &webhook);
    let seconds = started.elapsed();
    let pods = pods_of(&client, &ns.name, "shop").await;
    assert!(pods.iter().all(|p| p.name_any() != holder));
    assert_migrated_once(&pods, &database);
    eprintln!(
        "lock holder {holder} deleted after {deleted_at:.1?}: another pod finished, rollout complete after {seconds:.1?}, nothing applied twice"
    );
}
