//! The code as an image volume (`serve --code-delivery imageVolume`): on a runtime that
//! mounts image volumes (containerd 2.x, built by scripts/kube/build-containerd.sh) an
//! injected pod runs one init container and migrates exactly once; on one that does not
//! (Debian's containerd 1.6) the pod's condition, an Event and `status` say why the step
//! cannot start. `scripts/test.sh` runs each test on the node it is for.

use django_migrate_webhook::check::image_volume_capable;
use django_migrate_webhook::names::{CODE_VOLUME, MIGRATE_CONTAINER};

use super::*;

/// The node's kubelet version and container runtime, as it reports them (the test cluster
/// has one node).
fn node_runtime() -> (String, String) {
    let info = kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[0].status.nodeInfo.kubeletVersion} {.items[0].status.nodeInfo.containerRuntimeVersion}",
    ]);
    let (kubelet, runtime) = info.trim().split_once(' ').unwrap_or_default();
    (kubelet.to_owned(), runtime.to_owned())
}

/// The summary of a pod's step.
fn summary(pod: &Pod) -> Value {
    let status = pod.status.as_ref().unwrap();
    let step = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == MIGRATE_CONTAINER)
        .unwrap();
    let message = step
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.clone())
        .unwrap_or_default();
    serde_json::from_str(&message).unwrap_or(Value::Null)
}

/// Three replicas with the code as an image volume: each pod's only injected init container
/// is the step, the volume is the webhook's image, one pod applies the migrations, all are
/// gated and Ready; a fourth pod of the same release takes the fast path.
#[tokio::test]
async fn injected_pods_read_the_code_image_volume_with_one_init_container() {
    let _db = DATABASE.read().await;
    let (kubelet, runtime) = node_runtime();
    assert!(
        image_volume_capable(&kubelet, &runtime),
        "this node ({runtime}, kubelet {kubelet}) cannot mount image volumes: run this test \
         on a node of containerd 2.1+ (CONTAINERD_BIN=$(bash scripts/kube/build-containerd.sh)/bin \
         bash scripts/kube/start-node.sh DIR, as scripts/test.sh does)"
    );
    let client = client().await;
    let (ns, webhook, database) =
        setup_with("node-volume", &["--code-delivery", "imageVolume"]).await;
    let started = std::time::Instant::now();
    let (_, warnings) = apply(
        &django_deployment(&ns.name, "shop", &database, 3, &[], &[]),
        &[],
    );
    assert!(
        warnings.contains(&format!(
            "injected init container {MIGRATE_CONTAINER} (copied from \"web\") and image volume {CODE_VOLUME}"
        )),
        "{warnings}"
    );
    rollout_completes(&ns.name, "shop", "240s", &webhook);
    let seconds = started.elapsed();
    let pods = pods_of(&client, &ns.name, "shop").await;
    assert_eq!(pods.len(), 3);
    let mut appliers = 0;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, [MIGRATE_CONTAINER], "{}", pod.name_any());
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == CODE_VOLUME)
            .and_then(|v| v.image.as_ref())
            .expect("the code image volume");
        assert_eq!(volume.reference.as_deref(), Some(webhook_image().as_str()));
        let summary = summary(pod);
        assert_eq!(summary["exit_code"], 0, "{}: {summary}", pod.name_any());
        if summary["result"] == "applied" {
            appliers += 1;
        }
    }
    assert_eq!(appliers, 1, "exactly one pod applies the migrations");
    assert_migrated_once(&pods, &database);

    // A pod of the same release, started later: nothing pending, on the fast path.
    kubectl_ok(&["scale", "deployment/shop", "-n", &ns.name, "--replicas=4"]);
    rollout_completes(&ns.name, "shop", "120s", &webhook);
    let pods = pods_of(&client, &ns.name, "shop").await;
    let newest = pods
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
        .unwrap();
    let summary = summary(newest);
    assert_eq!(summary["result"], "nothing-pending", "{summary}");
    assert_eq!(summary["fast_path"]["taken"], true, "{summary}");
    assert_migrated_once(&pods, &database);
    eprintln!(
        "code as an image volume on {runtime}: 3 replicas migrated once with one init container, rollout complete after {seconds:.1?}; a 4th pod took the fast path"
    );
}

/// On a node whose runtime cannot mount image volumes the step never starts: the pod's
/// condition says MigrationCodeUnavailable with the kubelet's error, a Warning Event on the
/// Deployment says so, and `status` exits 1 naming it; the pod is not Ready.
#[tokio::test]
async fn a_node_that_cannot_mount_the_image_volume_says_so() {
    let _db = DATABASE.read().await;
    let (kubelet, runtime) = node_runtime();
    assert!(
        !image_volume_capable(&kubelet, &runtime)
            && runtime.starts_with("containerd://1.")
            && parse_minor(&kubelet) >= 35,
        "this node ({runtime}, kubelet {kubelet}) is not one that serves image volumes and \
         cannot mount them: run this test on a kubelet of 1.35+ with Debian's containerd 1.6 \
         (bash scripts/kube/start-node.sh DIR without CONTAINERD_BIN, as scripts/test.sh does)"
    );
    let client = client().await;
    let (ns, webhook, database) =
        setup_with("node-novolume", &["--code-delivery", "imageVolume"]).await;
    apply(
        &django_deployment(&ns.name, "shop", &database, 1, &[], &[]),
        &[],
    );
    let (status, reason, message) = eventually(
        "the condition to say the code is unavailable",
        Duration::from_secs(120),
        || async {
            let pods = pods_of(&client, &ns.name, "shop").await;
            let gate = gate(pods.first()?)?;
            (gate.1 == "MigrationCodeUnavailable").then_some(gate)
        },
    )
    .await;
    assert_eq!(status, "False");
    assert_eq!(reason, "MigrationCodeUnavailable");
    assert!(message.contains("CreateContainerError"), "{message}");
    assert!(message.contains("containerd 2.1+"), "{message}");
    let event = eventually(
        "a Warning Event on the Deployment",
        Duration::from_secs(60),
        || async {
            let out = kubectl_ok(&[
                "get",
                "events",
                "-n",
                &ns.name,
                "--field-selector",
                "involvedObject.kind=Deployment,reason=MigrationCodeUnavailable",
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            (!out.trim().is_empty()).then_some(out)
        },
    )
    .await;
    assert!(event.contains("image volume"), "{event}");
    let out = Command::new(BIN)
        .args(["status", "-n", &ns.name, "shop"])
        .output()
        .expect("status runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains("code unavailable"), "{table}");
    assert!(table.contains("containerd 2.1+"), "{table}");
    let pods = pods_of(&client, &ns.name, "shop").await;
    let ready = pods[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready.as_deref(), Some("False"));
    assert_eq!(
        psql(
            &database,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'django_migrations'"
        ),
        "0",
        "nothing ran against the database"
    );
    eprintln!(
        "code as an image volume on {runtime}: MigrationCodeUnavailable: {message}\n$ django-migrate-webhook status\n{table}"
    );
    drop(webhook);
}

/// The minor version of `v1.37.2`.
fn parse_minor(version: &str) -> u32 {
    version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}
