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
use serde_json::Value;
use support::parity::Parity;
use support::*;

/// The Deployments of `tests/fixtures/admission`: the object of every CREATE or UPDATE
/// request, and the stored object of every UPDATE.
fn fixture_deployments() -> Vec<(String, Value)> {
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
        let is_deployment =
            request["kind"]["group"] == "apps" && request["kind"]["kind"] == "Deployment";
        if !is_deployment || !matches!(request["operation"].as_str(), Some("CREATE" | "UPDATE")) {
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
            if d.is_object() && d["apiVersion"] == "apps/v1" {
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
    let spec = &mut d["spec"]["template"]["spec"];
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
    let parity = Parity::start("parity").await;
    let cases = fixture_deployments();
    assert!(cases.len() >= 40, "{} fixture Deployments", cases.len());
    let mut steps = 0;
    for (case, d) in &cases {
        steps += parity.check(case, d);
    }
    let differences = parity.differences.borrow();
    eprintln!(
        "parity: {} Deployments, {steps} steps; {} differ, all refused by the API server's own validation:",
        cases.len(),
        differences.len()
    );
    for d in differences.iter() {
        eprintln!("  {d}");
    }
}
