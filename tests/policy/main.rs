//! The policy tier: `policy` mode against a real kube-apiserver that serves
//! `admissionregistration.k8s.io/v1` admission policies (Kubernetes 1.36 and later; run by
//! `scripts/test.sh` on the newest version). Every Deployment of the webhook's own
//! admission fixtures goes through the webhook in one namespace and through the policies
//! in another; what is stored, warned and denied must be the same.
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

use django_migrate_webhook::names;
use django_migrate_webhook::workload::Kind;
use serde_json::Value;
use support::kube::install_rollout_crd;
use support::parity::Parity;
use support::*;

/// The workloads of `tests/fixtures/admission`: the object of every CREATE or UPDATE
/// request, and the stored object of every UPDATE.
fn fixture_workloads() -> Vec<(String, Value)> {
    let dir = repo().join("tests/fixtures/admission");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let review = read_json(&path);
        let request = &review["request"];
        let is_workload = Kind::from_gvk(
            request["kind"]["group"].as_str().unwrap_or_default(),
            request["kind"]["version"].as_str().unwrap_or_default(),
            request["kind"]["kind"].as_str().unwrap_or_default(),
        )
        .is_some();
        if !is_workload || !matches!(request["operation"].as_str(), Some("CREATE" | "UPDATE")) {
            continue;
        }
        let case = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".request.json")
            .to_owned();
        for (key, suffix) in [("object", ""), ("oldObject", "-old")] {
            let mut d = request[key].clone();
            if d.is_object() && d["apiVersion"].is_string() {
                replace_strings(&mut d, CODE_PLACEHOLDER, LEGACY_CODE);
                declare_mounted_volumes(&mut d);
                out.push((format!("{case}{suffix}"), d));
            }
        }
    }
    out
}

/// Some fixtures mount volumes they do not declare; an API server wants them declared.
fn declare_mounted_volumes(d: &mut Value) {
    let Some(spec) = d.pointer_mut(&format!("{}/spec", template_pointer(d))) else {
        return;
    };
    let mut mounted: Vec<String> = Vec::new();
    for key in ["containers", "initContainers"] {
        for c in spec[key].as_array().into_iter().flatten() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or_default().to_owned();
                if !mounted.contains(&name) {
                    mounted.push(name);
                }
            }
        }
    }
    let declared: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    for name in mounted {
        if !declared.contains(&name) && name != names::CODE_VOLUME {
            if !spec["volumes"].is_array() {
                spec["volumes"] = serde_json::json!([]);
            }
            spec["volumes"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"name": name, "emptyDir": {}}));
        }
    }
}

#[tokio::test]
async fn every_fixture_is_stored_warned_and_denied_alike_through_the_webhook_and_the_policy() {
    install_rollout_crd();
    let parity = Parity::start("parity", "copy").await;
    let cases = fixture_workloads();
    assert!(cases.len() >= 40, "{} fixture workloads", cases.len());
    for kind in Kind::ALL {
        assert!(
            cases.iter().any(|(_, d)| d["kind"] == kind.as_str()),
            "no fixture of kind {kind}"
        );
    }
    let mut steps = 0;
    for (case, d) in &cases {
        steps += parity.check(case, d);
    }
    let differences = parity.differences.borrow();
    eprintln!(
        "parity: {} workloads, {steps} steps; {} differ, all refused by the API server's own validation:",
        cases.len(),
        differences.len()
    );
    for d in differences.iter() {
        eprintln!("  {d}");
    }
}

/// With `codeDelivery: imageVolume` on both paths: the fixtures of every kind that create
/// or update a workload (not the stored objects of updates, which are the same in both
/// modes), each applied, updated, given a new image and opted out alike; what is stored
/// has one injected init container and the code image volume.
#[tokio::test]
async fn the_code_as_an_image_volume_is_injected_alike_through_the_webhook_and_the_policy() {
    install_rollout_crd();
    let parity = Parity::start("volume", "imageVolume").await;
    let cases: Vec<_> = fixture_workloads()
        .into_iter()
        .filter(|(case, _)| !case.ends_with("-old"))
        .collect();
    for kind in Kind::ALL {
        assert!(
            cases.iter().any(|(_, d)| d["kind"] == kind.as_str()),
            "no fixture of kind {kind}"
        );
    }
    let mut steps = 0;
    for (case, d) in &cases {
        steps += parity.check(case, d);
    }
    let probe = support::kube::deployment(&parity.webhook_ns.name, "probe", "shop:1", true, &[]);
    let out = support::kube::kubectl(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&probe),
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        support::kube::init_names(&stored),
        [names::MIGRATE_CONTAINER],
        "{stored}"
    );
    let volumes = &stored["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == names::CODE_VOLUME && v["image"]["reference"].is_string()),
        "{volumes}"
    );
    eprintln!(
        "parity with the code as an image volume: {} workloads, {steps} steps",
        cases.len()
    );
}

/// Settings written the way people write them (leading zeros, spaces, tabs, repeats),
/// values the webhook denies for their order or length, and pod settings the copy
/// container depends on: parsed, normalised, denied and warned about alike.
#[tokio::test]
async fn settings_as_people_write_them_are_read_alike_by_the_webhook_and_the_policy() {
    let parity = Parity::start("edges", "copy").await;
    let base = |annotations: Value| {
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"django-migrate.io/inject": "true"},
                         "annotations": annotations},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}}, "spec": {
                         "containers": [{"name": "web", "image": "shop:1",
                                         "env": [{"name": "DATABASE_URL", "value": "sqlite:///db"},
                                                 {"name": "DJANGO_MIGRATE_MODE", "value": "old"}]},
                                        {"name": "sidecar", "image": "proxy:1"}]}}}
        })
    };
    let long = "x ".repeat(75);
    let cases: Vec<(&str, Value)> = vec![
        (
            "leading-zeros-and-spaces",
            serde_json::json!({
                "django-migrate.io/wait-timeout": "0300",
                "django-migrate.io/lock-timeout": "007",
                "django-migrate.io/locking-min-rows": "0100000",
                "django-migrate.io/hold-back": "locking, breaking,locking",
                "django-migrate.io/manage-command": "  sentry\tdjango ",
                "django-migrate.io/defer": " shop.0042_drop , shop.0043_x,",
                "django-migrate.io/allow-unsafe": "shop.0041_y",
                "django-migrate.io/contract-delay": "0",
                "django-migrate.io/fast-path": "false",
            }),
        ),
        (
            "wait-mode-entrypoint-no-gate",
            serde_json::json!({
                "django-migrate.io/mode": "wait",
                "django-migrate.io/use-image-entrypoint": "true",
                "django-migrate.io/readiness-gate": "false",
                "django-migrate.io/python": "/venv/bin/python3.12",
                "django-migrate.io/container": "web",
                "django-migrate.io/unsafe-migrations": "defer",
                "django-migrate.io/locking-min-rows": "18446744073709551615",
            }),
        ),
        (
            "first-bad-annotation-in-order",
            serde_json::json!({
                "django-migrate.io/wait-timeout": "soon",
                "django-migrate.io/mode": "fast",
                "django-migrate.io/zzz": "1",
            }),
        ),
        (
            "unknown-before-invalid",
            serde_json::json!({"django-migrate.io/aaa": "1", "django-migrate.io/mode": "x"}),
        ),
        (
            "long-value-is-cut",
            serde_json::json!({"django-migrate.io/database": long}),
        ),
        (
            "quotes-in-value",
            serde_json::json!({"django-migrate.io/mode": "say \"hi\" \\ there"}),
        ),
        (
            "rows-beyond-u64",
            serde_json::json!({"django-migrate.io/locking-min-rows": "18446744073709551616"}),
        ),
        (
            "bad-manage-command-after-good-rest",
            serde_json::json!({"django-migrate.io/manage-command": "sh -c `id`"}),
        ),
        (
            "no-such-container",
            serde_json::json!({"django-migrate.io/container": "worker"}),
        ),
    ];
    let mut steps = 0;
    for (case, annotations) in cases {
        steps += parity.check(case, &base(annotations));
    }
    // The default-container annotation, right and wrong, and a pod that runs as root.
    let mut d = base(serde_json::json!({}));
    d["spec"]["template"]["metadata"]["annotations"] =
        serde_json::json!({"kubectl.kubernetes.io/default-container": "sidecar"});
    d["spec"]["template"]["spec"]["securityContext"] = serde_json::json!({"runAsUser": 0});
    steps += parity.check("default-container-and-root", &d);
    d["spec"]["template"]["metadata"]["annotations"] =
        serde_json::json!({"kubectl.kubernetes.io/default-container": "gone"});
    steps += parity.check("default-container-gone", &d);
    // An app's own init containers that run migrate.
    let mut d = base(serde_json::json!({}));
    d["spec"]["template"]["spec"]["initContainers"] = serde_json::json!([
        {"name": "migrate", "image": "shop:1", "command": ["python", "manage.py", "migrate"]},
        {"name": "check", "image": "shop:1", "args": ["manage.py", "migrate", "--check"]},
        {"name": "assets", "image": "shop:1", "command": ["collectstatic"]},
    ]);
    steps += parity.check("own-migrate-init-containers", &d);
    assert!(
        parity.differences.borrow().is_empty(),
        "{:?}",
        parity.differences.borrow()
    );
    eprintln!("edges: {steps} steps identical through the webhook and the policy");
}
