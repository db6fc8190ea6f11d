//! The cluster tier: a real kube-apiserver and kube-controller-manager of a current
//! Kubernetes (built from the Go modules by `scripts/kube/build-current.sh`; run once per
//! version in `KUBE_VERSIONS` by `scripts/test.sh`), the webhook binary running locally
//! with `serve` (and `--controller`), registered through a MutatingWebhookConfiguration.
//! There is no kubelet: the tests play it by patching `pods/status`.
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::kube::*;
use support::serve::*;

mod workloads;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn apply_injects_labelled_deployments_only_and_dry_run_stores_nothing() {
    let client = client().await;
    let ns = Namespace::new("e2e-apply");
    let webhook = Serve::start::<&str>(&[]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;

    let (_, warnings) = apply(&deployment(&ns.name, "web", "shop:1", true, &[]), &[]);
    assert!(
        warnings.contains("Warning: django-migrate: injected init containers django-migrate-code and django-migrate"),
        "kubectl shows the warnings: {warnings}"
    );
    let stored = get_deployment(&client, &ns.name, "web").await;
    assert_eq!(
        init_names(&stored),
        ["django-migrate-code", "django-migrate"]
    );
    let volumes = &stored["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["name"], "django-migrate-code", "{volumes}");
    let template = &stored["spec"]["template"];
    assert_eq!(
        template["spec"]["readinessGates"][0]["conditionType"],
        "django-migrate.io/migrated"
    );
    assert_eq!(
        template["metadata"]["labels"]["django-migrate.io/injected"],
        "true"
    );
    assert_eq!(template["spec"]["initContainers"][1]["image"], "shop:1");

    apply(&deployment(&ns.name, "plain", "shop:1", false, &[]), &[]);
    let plain = get_deployment(&client, &ns.name, "plain").await;
    assert!(init_names(&plain).is_empty());
    assert!(
        plain["spec"]["template"]["spec"]
            .get("readinessGates")
            .is_none()
    );

    let (out, _) = apply(
        &deployment(&ns.name, "dry", "shop:1", true, &[]),
        &["--dry-run=server", "-o", "json"],
    );
    let answered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        init_names(&answered),
        ["django-migrate-code", "django-migrate"]
    );
    let get = kubectl(&["get", "deployment", "dry", "-n", &ns.name], None);
    assert!(!get.status.success(), "a dry run must store nothing");
    assert!(text(&get).1.contains("NotFound"), "{}", text(&get).1);
}

#[tokio::test]
async fn updates_follow_the_app_and_no_op_changes_start_no_rollout() {
    let client = client().await;
    let ns = Namespace::new("e2e-update");
    let webhook = Serve::start::<&str>(&[]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let v1 = deployment(&ns.name, "web", "shop:1", true, &[]);
    apply(&v1, &[]);
    let rs_count = |n: usize| {
        let client = client.clone();
        let ns = ns.name.clone();
        async move {
            eventually(&format!("{n} ReplicaSets"), WAIT, || async {
                (replica_sets(&client, &ns, "web").await.len() == n).then_some(())
            })
            .await
        }
    };
    rs_count(1).await;
    let template = get_deployment(&client, &ns.name, "web").await["spec"]["template"].clone();

    // The same manifest again, and a change of metadata only: no new template.
    let (_, warnings) = apply(&v1, &[]);
    assert!(
        !warnings.contains("injected"),
        "a no-op apply reports no injection: {warnings}"
    );
    let out = kubectl(
        &[
            "annotate",
            "deployment",
            "web",
            "-n",
            &ns.name,
            "team=payments",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out).1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replica_sets(&client, &ns.name, "web").await.len(), 1);
    let stored = get_deployment(&client, &ns.name, "web").await;
    assert_eq!(
        stored["spec"]["template"], template,
        "the pod template did not change"
    );

    // A new image: the injected containers follow.
    let (_, warnings) = apply(&deployment(&ns.name, "web", "shop:2", true, &[]), &[]);
    assert!(warnings.contains("updated init containers"), "{warnings}");
    let stored = get_deployment(&client, &ns.name, "web").await;
    let init = &stored["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(
        init[0]["image"], "django-migrate-webhook:0.1.0",
        "the webhook's own image"
    );
    assert_eq!(
        init[1]["image"], "shop:2",
        "the Django step follows the app"
    );
    rs_count(2).await;

    // Opt-out: the label removed removes the injection.
    let (_, warnings) = apply(&deployment(&ns.name, "web", "shop:2", false, &[]), &[]);
    assert!(
        warnings.contains("removed the injected init containers"),
        "{warnings}"
    );
    let stored = get_deployment(&client, &ns.name, "web").await;
    assert!(init_names(&stored).is_empty(), "{stored}");
    assert!(
        stored["spec"]["template"]["spec"]
            .get("readinessGates")
            .is_none()
    );
    assert!(
        stored["spec"]["template"]["metadata"]["labels"]
            .get("django-migrate.io/injected")
            .is_none()
    );
    assert!(
        stored["spec"]["template"]["spec"].get("volumes").is_none(),
        "{stored}"
    );
}

/// A Deployment stored by an earlier release (two Django init containers, the program in
/// `DJANGO_MIGRATE_CODE`) takes the new shape on its next UPDATE, and an opt-out removes
/// the old shape completely.
#[tokio::test]
async fn the_shape_of_an_earlier_release_is_rewritten_on_update() {
    let client = client().await;
    let ns = Namespace::new("e2e-upgrade");
    // Stored before this webhook was registered, as the earlier release left it.
    let fixture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/admission/upgrade-legacy-shape.request.json"
    ))
    .unwrap();
    let mut legacy: Value = serde_json::from_str(&fixture).unwrap();
    let mut legacy = legacy["request"]["oldObject"].take();
    for key in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
    ] {
        legacy["metadata"].as_object_mut().unwrap().remove(key);
    }
    legacy.as_object_mut().unwrap().remove("status");
    legacy["metadata"]["namespace"] = json!(ns.name);
    // The fixture mounts a volume it does not declare; an API server wants it declared.
    legacy["spec"]["template"]["spec"]["volumes"] = json!([{"name": "media", "emptyDir": {}}]);
    // This tier plays the kubelet: its pods stay off the real node of the node tier.
    legacy["spec"]["template"]["spec"]["nodeSelector"] =
        json!({"e2e.invalid/no-such-node": "true"});
    let legacy_text = legacy
        .to_string()
        .replace("<DJANGO_MIGRATE_CODE>", "import os");
    let out = kubectl(&["create", "-f", "-"], Some(&legacy_text));
    assert!(out.status.success(), "{}", text(&out).1);
    let name = legacy["metadata"]["name"].as_str().unwrap().to_owned();
    let stored = get_deployment(&client, &ns.name, &name).await;
    assert_eq!(
        init_names(&stored),
        ["django-wait-for-db", "django-migrate"]
    );
    legacy["metadata"]["name"] = json!("old");
    let out = kubectl(
        &["create", "-f", "-"],
        Some(
            &legacy
                .to_string()
                .replace("<DJANGO_MIGRATE_CODE>", "import os"),
        ),
    );
    assert!(out.status.success(), "{}", text(&out).1);

    let webhook = Serve::start::<&str>(&[]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let out = kubectl(
        &[
            "annotate",
            "deployment",
            &name,
            "-n",
            &ns.name,
            "team=payments",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let stored = get_deployment(&client, &ns.name, &name).await;
    assert_eq!(
        init_names(&stored),
        ["django-migrate-code", "django-migrate"]
    );
    let template = stored["spec"]["template"].to_string();
    assert!(!template.contains("DJANGO_MIGRATE_CODE"), "{template}");
    assert!(
        template.len() < 4000,
        "{} bytes: {template}",
        template.len()
    );

    // Opt-out from the old shape.
    let out = kubectl(
        &[
            "label",
            "deployment",
            "old",
            "-n",
            &ns.name,
            "django-migrate.io/inject-",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let stored = get_deployment(&client, &ns.name, "old").await;
    assert!(init_names(&stored).is_empty(), "{stored}");
    let template = stored["spec"]["template"].to_string();
    assert!(!template.contains("django-migrate"), "{template}");
}

#[tokio::test]
async fn an_invalid_annotation_fails_kubectl_apply_with_the_message() {
    let client = client().await;
    let ns = Namespace::new("e2e-deny");
    let webhook = Serve::start::<&str>(&[]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let manifest = deployment(
        &ns.name,
        "web",
        "shop:1",
        true,
        &[("django-migrate.io/wait-timeout", "-5")],
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(stderr.contains("denied the request"), "{stderr}");
    assert!(
        stderr.contains(
            "django-migrate: annotation django-migrate.io/wait-timeout: invalid value \"-5\""
        ),
        "{stderr}"
    );
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, &ns.name);
    assert!(
        api.get_opt("web").await.unwrap().is_none(),
        "nothing half-injected is stored"
    );
}

#[tokio::test]
async fn webhook_down_fails_closed_or_open_as_configured() {
    let client = client().await;
    for (policy, ns_name) in [("Fail", "e2e-down-fail"), ("Ignore", "e2e-down-ignore")] {
        let ns = Namespace::new(ns_name);
        let mut webhook = Serve::start::<&str>(&[]).await;
        register(&ns, &webhook, policy);
        wait_until_effective(&ns).await;
        webhook.kill();
        let manifest = deployment(&ns.name, "web", "shop:1", true, &[]);
        let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
        let stderr = text(&out).1;
        if policy == "Fail" {
            assert!(!out.status.success(), "failurePolicy Fail must refuse");
            assert!(stderr.contains("failed calling webhook"), "{stderr}");
            assert!(stderr.contains("connection refused"), "{stderr}");
        } else {
            assert!(out.status.success(), "{stderr}");
            let stored = get_deployment(&client, &ns.name, "web").await;
            assert!(init_names(&stored).is_empty(), "stored without injection");
        }
    }
}

/// An opted-in Deployment applied while the webhook is down with `failurePolicy: Ignore`
/// is stored without the injection. The controller reports it (a Warning Event on the
/// Deployment, a log line, the gauge by namespace); with healing on, it sends it through
/// the webhook again once the webhook is back, and the gauge returns to 0.
#[tokio::test]
async fn a_missed_injection_is_reported_and_healed_when_enabled() {
    let client = client().await;
    let ns = Namespace::new("e2e-missed");
    let mut down = Serve::start::<&str>(&[]).await;
    register(&ns, &down, "Ignore");
    wait_until_effective(&ns).await;
    down.kill();
    apply(&deployment(&ns.name, "web", "shop:1", true, &[]), &[]);
    assert!(init_names(&get_deployment(&client, &ns.name, "web").await).is_empty());
    // The other kinds: a Job cannot change, so it is only ever reported.
    let n = ns.name.as_str();
    for kind in ["StatefulSet", "CronJob", "Job"] {
        let name = kind.to_lowercase();
        workloads::apply_json(&workloads::workload(kind, n, &name, "shop:1", true));
    }

    let gauge = format!(
        r#"django_migrate_deployments_not_injected{{namespace="{}"}}"#,
        ns.name
    );
    let lease = format!("--lease-namespace={}", ns.name);
    let reporting = Serve::start(&["--controller", &lease]).await;
    register(&ns, &reporting, "Ignore");
    let events = eventually("a MigrationStepNotInjected Event", Duration::from_secs(30), || async {
        let out = kubectl(
            &["get", "events", "-n", &ns.name, "--field-selector",
              "involvedObject.kind=Deployment,involvedObject.name=web,reason=MigrationStepNotInjected",
              "-o", "jsonpath={.items[*].message}"],
            None,
        );
        let notes = text(&out).0;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(
        events.contains("controller.healMissedInjections"),
        "{events}"
    );
    let metrics = eventually("every kind counted", Duration::from_secs(30), || async {
        let m = reporting.metrics();
        let counted = |kind: &str| {
            m.contains(&format!(
                r#"django_migrate_deployments_not_injected{{namespace="{n}",kind="{kind}"}} 1"#
            ))
        };
        (counted("StatefulSet") && counted("CronJob") && counted("Job")).then_some(m)
    })
    .await;
    assert!(metrics.contains(&format!("{gauge} 1")), "{metrics}");
    assert!(
        reporting
            .logs()
            .contains("stored without the migration step")
    );
    // Reported, not touched: without healing the Deployment stays as stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(init_names(&get_deployment(&client, &ns.name, "web").await).is_empty());
    drop(reporting);

    let healing = Serve::start(&["--controller", &lease, "--heal-missed-injections"]).await;
    register(&ns, &healing, "Ignore");
    let healed = eventually(
        "the Deployment sent through the webhook again",
        Duration::from_secs(60),
        || async {
            let d = get_deployment(&client, &ns.name, "web").await;
            (!init_names(&d).is_empty()).then_some(d)
        },
    )
    .await;
    assert_eq!(
        init_names(&healed),
        ["django-migrate-code", "django-migrate"]
    );
    for kind in ["StatefulSet", "CronJob"] {
        let name = kind.to_lowercase();
        eventually(
            &format!("the {kind} sent through the webhook again"),
            Duration::from_secs(60),
            || async {
                let t = workloads::template(kind, &workloads::get(kind, n, &name));
                (!workloads::init_of(&t).is_empty()).then_some(())
            },
        )
        .await;
    }
    let note = eventually("the Job's Event", Duration::from_secs(30), || async {
        let out = kubectl(
            &[
                "get",
                "events",
                "-n",
                n,
                "--field-selector",
                "involvedObject.kind=Job,involvedObject.name=job,reason=MigrationStepNotInjected",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            None,
        );
        let notes = text(&out).0;
        notes
            .contains("delete it and create it again")
            .then_some(notes)
    })
    .await;
    assert!(!note.is_empty());
    // Reported, never patched.
    let job = workloads::template("Job", &workloads::get("Job", n, "job"));
    assert!(workloads::init_of(&job).is_empty(), "{job}");
    eventually("the gauge back to 0", Duration::from_secs(30), || async {
        healing
            .metrics()
            .contains(&format!("{gauge} 0"))
            .then_some(())
    })
    .await;
    assert!(
        healing.logs().contains("sent through the webhook again"),
        "{}",
        healing.logs()
    );
}

/// `status` against the control plane, with Deployments in each state: migrated, failed,
/// blocked as unsafe, and not injected (the opt-in label only on the pod template).
#[tokio::test]
async fn status_tells_migrated_failed_blocked_and_not_injected_apart() {
    let client = client().await;
    let ns = Namespace::new("e2e-status");
    let lease = format!("--lease-namespace={}", ns.name);
    let webhook = Serve::start(&["--controller", &lease]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let applied = "applied 2 migrations in 3.1s (waited 0.0s for the lock): catalog.0001_initial, orders.0001_initial";
    let blocked =
        "held back 1 unsafe operation: inventory.0002_remove_item_legacy RemoveField(item.legacy)";
    let unsafe_summary = json!({"mode": "migrate", "phase": "lock", "result": "unsafe-blocked",
        "exit_code": 5, "message": blocked, "applied": [],
        "pending": ["inventory.0002_remove_item_legacy"],
        "seconds": {"total": 1.2, "database": 0.1, "lock_wait": 0.4, "migrate": 0.0},
        "unsafe_operations": [{"migration": "inventory.0002_remove_item_legacy",
            "operation": "RemoveField(item.legacy)", "why": "the release still serving reads it",
            "applied": false}]})
    .to_string();
    let failed = "migration orders.0003_order_reference failed: ProgrammingError: boom";
    for (name, exit, message, reason) in [
        (
            "web",
            0,
            summary(
                0,
                "done",
                "applied",
                applied,
                &["catalog.0001_initial", "orders.0001_initial"],
            ),
            "Migrated",
        ),
        (
            "broken",
            2,
            summary(2, "migrating", "failed", failed, &[]),
            "MigrationFailed",
        ),
        ("risky", 5, unsafe_summary, "UnsafeMigrationBlocked"),
    ] {
        apply(
            &deployment(
                &ns.name,
                name,
                "shop:1",
                true,
                &[("django-migrate.io/lock-timeout", "5")],
            ),
            &[],
        );
        let pod = pods(&client, &ns.name, name, 1).await.remove(0);
        play_kubelet(&client, &pod, exit, &message).await;
        gate_of(
            &client,
            &pod,
            if exit == 0 { "True" } else { "False" },
            reason,
        )
        .await;
    }
    // The opt-in label on the pod template only: the webhook never sees it as opted in.
    let misplaced = deployment(&ns.name, "legacy", "shop:1", false, &[]).replace(
        "      labels:\n        app: legacy",
        "      labels:\n        app: legacy\n        django-migrate.io/inject: \"true\"",
    );
    apply(&misplaced, &[]);

    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("status")
            .args(args)
            .output()
            .expect("status runs");
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, table, stderr) = run(&["-n", &ns.name]);
    eprintln!("$ django-migrate-webhook status -n {}\n{table}", ns.name);
    assert_eq!(
        code,
        Some(1),
        "a failed step and a missed injection exit 1: {stderr}"
    );
    for expected in [
        "web       yes       1/1",
        "pod web-",
        "applied 2 migrations (catalog.0001_initial, orders.0001_initial) in 3.4s, lock wait 0.0s",
        "broken    yes       0/1",
        "waiting on the gate (1 pod)",
        "failed in 3.4s, lock wait 0.0s: exit code 2: migration orders.0003_order_reference failed",
        "blocked as unsafe in 1.2s, lock wait 0.4s: exit code 5: held back 1 unsafe operation",
        "legacy    no",
        "not injected: the label django-migrate.io/inject: \"true\" is on the pod template only",
        "settings: lock-timeout=5",
    ] {
        assert!(table.contains(expected), "missing {expected:?} in\n{table}");
    }
    let (code, json_out, _) = run(&["-n", &ns.name, "-o", "json"]);
    assert_eq!(code, Some(1));
    let statuses: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    let names: Vec<&str> = statuses
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "legacy", "risky", "web"]);
    let risky = &statuses[2]["pods"][0];
    assert_eq!(risky["phase"], "blocked as unsafe");
    assert_eq!(
        risky["summary"]["unsafe_operations"][0]["migration"],
        "inventory.0002_remove_item_legacy"
    );
    assert_eq!(
        statuses[3]["pods"][0]["summary"]["applied"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(statuses[0]["rollout"]["waiting_on_gate"], 1);
    let (code, yaml_out, _) = run(&["web", "-n", &ns.name, "-o", "yaml"]);
    assert_eq!(code, Some(0), "a healthy Deployment exits 0: {yaml_out}");
    assert!(yaml_out.contains("phase: applied"), "{yaml_out}");
    let (code, _, stderr) = run(&["nosuch", "-n", &ns.name]);
    assert_eq!(code, Some(3));
    assert!(
        stderr.contains(&format!("Deployment {}/nosuch not found", ns.name)),
        "{stderr}"
    );
}

/// A controller that stops on its own (here: its Lease cannot be created, the namespace
/// does not exist) stops the process with a non-zero exit, so that the pod restarts
/// instead of serving without its controller.
#[tokio::test]
async fn serve_exits_non_zero_when_the_controller_stops_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let started = std::time::Instant::now();
    let out = Command::new("timeout")
        .args([
            "60",
            BIN,
            "serve",
            "--controller",
            "--lease-namespace",
            "no-such-namespace-e2e",
        ])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot set up the leader-election Lease no-such-namespace-e2e/"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no shutdown delay when the controller failed"
    );
}

/// The step's JSON summary, as the step writes it.
fn summary(exit_code: i32, phase: &str, result: &str, message: &str, applied: &[&str]) -> String {
    json!({"mode": "migrate", "phase": phase, "result": result, "exit_code": exit_code,
           "message": message, "applied": applied,
           "seconds": {"total": 3.4, "database": 0.1, "lock_wait": 0.0, "migrate": 3.1}})
    .to_string()
}

/// Patches a pod's status as the kubelet would after running the init containers.
async fn play_kubelet(client: &Client, pod: &Pod, migrate_exit: i32, message: &str) {
    let ok = migrate_exit == 0;
    let image = pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    let status = |name: &str, ready: bool, state: Value| json!({"name": name, "ready": ready, "restartCount": 0, "image": image, "imageID": "", "state": state});
    let patch = json!({"status": {
        "phase": if ok { "Running" } else { "Pending" },
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": if ok { "True" } else { "False" }},
            {"type": "ContainersReady", "status": if ok { "True" } else { "False" }},
            {"type": "Ready", "status": "False"},
        ],
        "initContainerStatuses": [
            status("django-migrate-code", true, json!({"terminated": {"exitCode": 0, "reason": "Completed"}})),
            status("django-migrate", ok, json!({"terminated": {"exitCode": migrate_exit,
                "reason": if ok { "Completed" } else { "Error" }, "message": message}})),
        ],
        "containerStatuses": [
            status("web", ok, if ok { json!({"running": {}}) } else { json!({"waiting": {"reason": "PodInitializing"}}) }),
        ],
    }});
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .expect("patch pods/status");
}

/// The kubelet's own rule: Ready = ContainersReady and every readiness gate True.
async fn set_ready(client: &Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .unwrap();
}

fn gate(pod: &Pod) -> Option<(String, String, String)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find_map(|c| {
            (c.type_ == "django-migrate.io/migrated").then(|| {
                (
                    c.status.clone(),
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
        })
}

async fn pods(client: &Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} pods of {app}"), WAIT, || async {
        let pods = pods_of(client, ns, app).await;
        (pods.len() == n).then_some(pods)
    })
    .await
}

/// Waits for the gate condition with this status and reason; returns its message.
async fn gate_of(client: &Client, pod: &Pod, status: &str, reason: &str) -> String {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
    eventually(
        &format!("gate {status}/{reason} on {}", pod.name_any()),
        WAIT,
        || async {
            let p = api.get(&pod.name_any()).await.ok()?;
            gate(&p)
                .filter(|g| g.0 == status && g.1 == reason)
                .map(|g| g.2)
        },
    )
    .await
}

async fn events(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt("django-migrate-webhook-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

/// Two controller replicas: one holds the Lease and gates pods (success and failure);
/// when it dies the other takes over within the lease duration.
#[tokio::test]
async fn the_controller_gates_pods_and_a_second_replica_takes_over() {
    let client = client().await;
    let ns = Namespace::new("e2e-controller");
    let controller = |id: &'static str| {
        [
            "--controller".to_owned(),
            "--lease-namespace".to_owned(),
            ns.name.clone(),
            "--identity".to_owned(),
            id.to_owned(),
            "--lease-duration".to_owned(),
            "6".to_owned(),
        ]
    };
    let mut a = Serve::start(&controller("replica-a")).await;
    let mut b = Serve::start(&controller("replica-b")).await;
    register(&ns, &a, "Fail");
    wait_until_effective(&ns).await;
    let holder = eventually("a lease holder", WAIT, || lease_holder(&client, &ns.name)).await;
    assert!(holder == "replica-a" || holder == "replica-b", "{holder}");

    // Success: the gate turns True with the summary, then the Deployment is available.
    let mut web = deployment(&ns.name, "web", "shop:1", true, &[]);
    web = web.replace("replicas: 1", "replicas: 2");
    apply(&web, &[]);
    let applied = "applied 2 migrations in 3.1s (waited 0.0s for the lock): catalog.0001_initial, orders.0001_initial";
    let done = summary(
        0,
        "done",
        "applied",
        applied,
        &["catalog.0001_initial", "orders.0001_initial"],
    );
    for pod in pods(&client, &ns.name, "web", 2).await {
        gate_of(&client, &pod, "False", "MigrationStepPending").await;
        play_kubelet(&client, &pod, 0, &done).await;
        assert_eq!(gate_of(&client, &pod, "True", "Migrated").await, applied);
        set_ready(&client, &pod).await;
    }
    eventually("web 2/2 available", WAIT, || async {
        let d = get_deployment(&client, &ns.name, "web").await;
        (d["status"]["availableReplicas"] == 2).then_some(())
    })
    .await;
    let deployment_events = eventually("an Event on the Deployment", WAIT, || async {
        let e = events(&client, &ns.name, "web").await;
        e.iter().any(|(r, _)| r == "MigrationsApplied").then_some(e)
    })
    .await;
    assert!(
        deployment_events.iter().any(|(_, m)| m.contains(applied)),
        "{deployment_events:?}"
    );

    // Failure: exit code 2 gives MigrationFailed and an Event; the Deployment is not available.
    apply(&deployment(&ns.name, "broken", "shop:1", true, &[]), &[]);
    let pod = pods(&client, &ns.name, "broken", 1).await.remove(0);
    let failed = "migration orders.0003_order_reference failed: ProgrammingError: boom";
    play_kubelet(
        &client,
        &pod,
        2,
        &summary(2, "migrating", "failed", failed, &[]),
    )
    .await;
    let message = gate_of(&client, &pod, "False", "MigrationFailed").await;
    assert_eq!(message, format!("exit code 2: {failed}"));
    let pod_events = eventually("a MigrationFailed Event on the pod", WAIT, || async {
        let e = events(&client, &ns.name, &pod.name_any()).await;
        e.iter().any(|(r, _)| r == "MigrationFailed").then_some(e)
    })
    .await;
    assert!(
        pod_events.iter().any(|(_, m)| m.contains("exit code 2")),
        "{pod_events:?}"
    );
    let broken = get_deployment(&client, &ns.name, "broken").await;
    assert!(
        broken["status"]["availableReplicas"].as_i64().unwrap_or(0) == 0,
        "{broken}"
    );

    // Only the holder reconciles.
    let (leader, follower) = if holder == "replica-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        leader.logs().contains("holding the lease"),
        "{}",
        leader.logs()
    );
    assert!(
        !follower.logs().contains("holding the lease"),
        "{}",
        follower.logs()
    );
    // The holder's metrics, from the steps' summaries; the follower keeps none.
    let ns_label = format!("namespace=\"{}\"", ns.name);
    let metrics = eventually("the leader's migration metrics", WAIT, || async {
        let m = leader.metrics();
        m.contains(&format!(
            "django_migrate_step_failures_total{{{ns_label},deployment=\"broken\",reason=\"MigrationFailed\"}} 1"
        ))
        .then_some(m)
    })
    .await;
    for line in [
        format!("django_migrate_migrations_applied_total{{{ns_label},deployment=\"web\"}} 4"),
        format!("django_migrate_step_duration_seconds_count{{{ns_label},deployment=\"web\"}} 2"),
        format!("django_migrate_step_duration_seconds_sum{{{ns_label},deployment=\"web\"}} 6.8"),
        format!(
            "django_migrate_controller_pods{{{ns_label},deployment=\"web\",reason=\"Migrated\"}} 2"
        ),
        format!(
            "django_migrate_controller_pods{{{ns_label},deployment=\"broken\",reason=\"MigrationFailed\"}} 1"
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    assert!(
        !follower
            .metrics()
            .contains("django_migrate_controller_pods{")
    );

    // The holder dies without releasing the Lease: the other takes over.
    // (In a cluster a Service sends admission requests to the live replica; here the
    // configuration is pointed at it.)
    leader.kill();
    let started = std::time::Instant::now();
    register(&ns, follower, "Fail");
    wait_until_effective(&ns).await;
    // The controllers of the tests running beside this one watch every namespace too and
    // may set a gate first: the takeover is read from the Lease and the follower's own
    // count of the new pod, not from the gate alone.
    let new_holder = eventually("the follower to take the Lease", WAIT, || async {
        lease_holder(&client, &ns.name)
            .await
            .filter(|h| *h != holder)
    })
    .await;
    let took_over = started.elapsed();
    apply(&deployment(&ns.name, "after", "shop:1", true, &[]), &[]);
    let pod = pods(&client, &ns.name, "after", 1).await.remove(0);
    play_kubelet(&client, &pod, 0, &done).await;
    let counted = format!(
        "django_migrate_controller_pods{{{ns_label},deployment=\"after\",reason=\"Migrated\"}} 1"
    );
    // Its condition, as the new leader counts it: it set it, or saw it set.
    eventually(
        "the new leader to count the new pod as Migrated",
        3 * WAIT,
        || async {
            follower
                .metrics()
                .lines()
                .any(|l| l == counted)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "takeover: {new_holder} held the Lease {took_over:.1?} after {holder} was killed and counted the next pod Migrated {:.1?} after",
        started.elapsed()
    );
    assert!(follower.logs().contains("holding the lease"));

    // A clean shutdown: the Lease is released while the listener still serves its
    // 5 s shutdown delay (the two run concurrently), then the process exits 0.
    let started = std::time::Instant::now();
    follower.sigterm();
    eventually("the Lease released", Duration::from_secs(4), || async {
        (lease_holder(&client, &ns.name).await.as_deref() != Some(new_holder.as_str()))
            .then_some(())
    })
    .await;
    let released = started.elapsed();
    assert!(
        follower.is_running(),
        "the Lease is released during the shutdown delay, not after it"
    );
    let status = follower.terminate().unwrap();
    assert!(status.success(), "serve exited with {status}");
    eprintln!(
        "shutdown: Lease released {released:.1?} after SIGTERM, exit 0 after {:.1?}",
        started.elapsed()
    );
}
