//! The test control plane (`scripts/kube/`): kubectl, a kube client, a namespace per test
//! and the chart's MutatingWebhookConfiguration pointing at that test's `serve` process.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::serve::{Serve, eventually};

/// The control plane started by `scripts/test.sh` (`scripts/kube/start-cluster.sh`).
pub fn kubeconfig() -> String {
    std::env::var("KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "KUBECONFIG is not set: the cluster tier needs the test control plane that \
             scripts/test.sh builds and starts (or: scripts/kube/build-current.sh 1.37.2 && \
             scripts/kube/start-cluster.sh DIR && source DIR/env)"
        )
    })
}

pub async fn client() -> Client {
    kubeconfig();
    Client::try_default()
        .await
        .expect("a client for the test cluster")
}

/// Runs kubectl with `stdin` and returns its output, whatever the exit code.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    kubeconfig();
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (scripts/kube/start-cluster.sh puts it on PATH via DIR/env)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl apply -f -` that must succeed; returns stderr (the warnings).
pub fn apply(manifest: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    let out = kubectl(&args, Some(manifest));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "kubectl apply failed: {stderr}\n{manifest}"
    );
    (stdout, stderr)
}

/// A namespace of one test; deleted when the test ends.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// `prefix` plus this test process's PID, so that a rerun never meets a namespace
    /// that is still terminating.
    pub fn new(prefix: &str) -> Namespace {
        let name = format!("{prefix}-{}", std::process::id());
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    django-migrate-test: {name}\n"
        );
        apply(&manifest, &[]);
        Namespace { name }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"], None);
        let _ = kubectl(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &format!("django-migrate-{}", self.name),
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// The chart's own MutatingWebhookConfiguration (rendered with Helm's SDK by
/// `tests/chart/render.py`), pointed at this test's webhook process by URL and limited
/// to this test's namespace.
pub fn register(ns: &Namespace, webhook: &Serve, failure_policy: &str) {
    let python = std::env::var_os("DJANGO_MIGRATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let values = serde_json::json!({
        "fullnameOverride": format!("django-migrate-{}", ns.name),
        "tls": {"mode": "secret", "secret": {"name": "unused", "caBundle": webhook.ca_bundle}},
        "injection": {"argoRollouts": true},
        "webhook": {
            "url": format!("https://127.0.0.1:{}/mutate", webhook.port),
            "failurePolicy": failure_policy,
            "namespaceSelector": {"matchLabels": {"django-migrate-test": ns.name}},
        },
    });
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/chart/render.py"
        ))
        .args([
            &values.to_string(),
            "django-migrate",
            "django-migrate-system",
            "webhook.yaml",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/test.sh creates .venv)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "rendering the chart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8(out.stdout).unwrap();
    assert!(
        manifest.contains("kind: MutatingWebhookConfiguration"),
        "{manifest}"
    );
    apply(&manifest, &[]);
}

/// Installs Argo Rollouts' Rollout CRD (from its Go module, cached by
/// `scripts/kube/build-argo-rollouts.sh`) and waits until it is served. Idempotent.
pub fn install_rollout_crd() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/kube/build-argo-rollouts.sh"
    );
    let out = Command::new("bash")
        .args([script, "crds"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} crds failed (it fetches github.com/argoproj/argo-rollouts through the Go module proxy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let crd = format!("{dir}/crds/rollout-crd.yaml");
    let out = kubectl(&["apply", "--server-side", "-f", &crd], None);
    assert!(out.status.success(), "cannot apply {crd}: {}", text(&out).1);
    // The first wait right after the create can miss the status; the second does not.
    for attempt in 0..5 {
        let out = kubectl(
            &[
                "wait",
                "--for",
                "condition=established",
                "--timeout=60s",
                "crd/rollouts.argoproj.io",
            ],
            None,
        );
        if out.status.success() {
            return;
        }
        assert!(
            attempt < 4,
            "the Rollout CRD is not established: {}",
            text(&out).1
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until the configuration is in effect: a server-side dry run of a labelled
/// Deployment comes back injected.
pub async fn wait_until_effective(ns: &Namespace) {
    let probe = deployment(&ns.name, "probe", "shop:1", true, &[]);
    eventually(
        "the webhook configuration to take effect",
        Duration::from_secs(60),
        || async {
            let out = kubectl(
                &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&probe),
            );
            let stored: Value = serde_json::from_slice(&out.stdout).ok()?;
            init_names(&stored)
                .iter()
                .any(|n| n == django_migrate_webhook::names::MIGRATE_CONTAINER)
                .then_some(())
        },
    )
    .await;
}

/// A Deployment manifest of a Django app.
pub fn deployment(
    ns: &str,
    name: &str,
    image: &str,
    labelled: bool,
    annotations: &[(&str, &str)],
) -> String {
    let label = if labelled {
        "\n    django-migrate.io/inject: \"true\""
    } else {
        ""
    };
    let mut ann = String::new();
    if !annotations.is_empty() {
        ann.push_str("\n  annotations:");
        for (k, v) in annotations {
            ann.push_str(&format!("\n    {k}: \"{v}\""));
        }
    }
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}{label}{ann}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      # This tier plays the kubelet: its pods stay off the real node of the node tier.
      nodeSelector:
        e2e.invalid/no-such-node: "true"
      containers:
        - name: web
          image: {image}
          workingDir: /app
          env:
            - name: DJANGO_SETTINGS_MODULE
              value: shop.settings
"#
    )
}

pub fn init_names(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn get_deployment(client: &Client, ns: &str, name: &str) -> Value {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// ReplicaSets owned by the Deployment `name`.
pub async fn replica_sets(client: &Client, ns: &str, name: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.name == name))
        .collect()
}

pub async fn pods_of(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}
