//! Helpers shared by the test tiers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use django_migrate_webhook::names;
use serde_json::{Value, json};

/// Stands for the program that earlier releases carried in `DJANGO_MIGRATE_CODE`, in
/// fixtures of Deployments injected by them.
pub const CODE_PLACEHOLDER: &str = "<DJANGO_MIGRATE_CODE>";
/// What the placeholder expands to: the engine removes that env var by name, whatever
/// its value, so a short stand-in is as good as the old program.
pub const LEGACY_CODE: &str = "import os\n# the migration program of an earlier release\n";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Replaces every string equal to `from` with `to`, anywhere in `v`.
pub fn replace_strings(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from => *s = to.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|i| replace_strings(i, from, to)),
        Value::Object(map) => map.values_mut().for_each(|i| replace_strings(i, from, to)),
        _ => {}
    }
}

pub fn with_code(mut v: Value) -> Value {
    replace_strings(&mut v, CODE_PLACEHOLDER, LEGACY_CODE);
    v
}

pub fn without_code(mut v: Value) -> Value {
    replace_strings(&mut v, LEGACY_CODE, CODE_PLACEHOLDER);
    v
}

/// An AdmissionReview request for a Deployment.
pub fn review(operation: &str, object: &Value, old: Option<&Value>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b1f0c1d2-0000-4000-8000-000000000001",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "operation": operation,
            "object": object,
            "oldObject": old,
        }
    })
}

/// Decodes `response.patch` (a base64 string on the wire) into JSON Patch operations.
pub fn patch_of(response: &Value) -> Option<Value> {
    let patch = response.get("patch")?;
    let text = patch
        .as_str()
        .unwrap_or_else(|| panic!("patch must be a base64 string on the wire, got {patch}"));
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("patch is valid base64");
    Some(serde_json::from_slice(&bytes).expect("patch is JSON"))
}

/// Runs a review through the same function the server uses and returns the response.
pub fn respond(review: &Value) -> (u16, Value) {
    let reply = django_migrate_webhook::admission::review(
        &serde_json::to_vec(review).unwrap(),
        &Default::default(),
    );
    let body: Value = serde_json::from_slice(&reply.body).expect("reply body is JSON");
    (reply.status, body)
}

pub fn apply(object: &Value, patch: &Value) -> Value {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("valid JSON Patch");
    let mut out = object.clone();
    json_patch::patch(&mut out, &ops).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    out
}

/// Runs the webhook on `object` (CREATE) and returns the stored object and the warnings.
pub fn admit(object: &Value) -> (Value, Vec<String>) {
    let (status, body) = respond(&review("CREATE", object, None));
    assert_eq!(status, 200, "{body}");
    let response = &body["response"];
    assert_eq!(response["allowed"], true, "{response}");
    let mutated = match patch_of(response) {
        Some(p) => apply(object, &p),
        None => object.clone(),
    };
    (mutated, warnings(response))
}

pub fn warnings(response: &Value) -> Vec<String> {
    response
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The object with everything the webhook owns removed, for "nothing else changed".
pub fn without_owned(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(meta) = v
        .pointer_mut("/spec/template/metadata")
        .and_then(Value::as_object_mut)
    {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(names::INJECTED_LABEL);
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
        if meta.is_empty() {
            v["spec"]["template"]
                .as_object_mut()
                .unwrap()
                .remove("metadata");
        }
    }
    if let Some(spec) = v
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
    {
        for (key, field, values) in [
            ("initContainers", "name", &names::RESERVED_CONTAINERS[..]),
            (
                "readinessGates",
                "conditionType",
                &[names::READINESS_GATE][..],
            ),
            ("volumes", "name", &[names::CODE_VOLUME][..]),
        ] {
            if let Some(items) = spec.get_mut(key).and_then(Value::as_array_mut) {
                items.retain(|i| !i[field].as_str().is_some_and(|n| values.contains(&n)));
                if items.is_empty() {
                    spec.remove(key);
                }
            }
        }
    }
    v
}

/// Asserts that the object reads as a Kubernetes apps/v1 Deployment.
pub fn assert_valid_deployment(object: &Value) {
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(object.clone())
    {
        panic!("not a valid apps/v1 Deployment: {e}\n{object:#}");
    }
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Bytes the injection may add to a pod template (compact JSON) beyond one copy of the
/// app container's env, envFrom, volumeMounts, resources and securityContext.
pub const FOOTPRINT_BUDGET: usize = 3000;
/// Longest value of an env var the injection sets itself.
pub const MAX_INJECTED_ENV_VALUE: usize = 256;

fn compact_len(v: Option<&Value>) -> usize {
    v.map_or(0, |v| serde_json::to_vec(v).unwrap().len())
}

/// `(bytes added to the pod template, bytes added beyond the app's copied fields)`, after
/// checking that no env value the injection sets itself is longer than
/// [`MAX_INJECTED_ENV_VALUE`].
pub fn footprint(original: &Value, mutated: &Value, app: &Value) -> (usize, usize) {
    let template = |d: &Value| compact_len(d.pointer("/spec/template"));
    let added = template(mutated) - template(original);
    let copied: usize = [
        "env",
        "envFrom",
        "volumeMounts",
        "resources",
        "securityContext",
    ]
    .iter()
    .map(|f| compact_len(app.get(*f)))
    .sum();
    let app_env: Vec<&Value> = app
        .get("env")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for c in mutated
        .pointer("/spec/template/spec/initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| names::RESERVED_CONTAINERS.contains(&n))
        })
    {
        for e in c["env"].as_array().into_iter().flatten() {
            if app_env.contains(&e) {
                continue;
            }
            let len = e["value"].as_str().map_or(0, str::len);
            assert!(
                len <= MAX_INJECTED_ENV_VALUE,
                "injected env {} is {len} bytes long",
                e["name"]
            );
        }
    }
    (added, added.saturating_sub(copied))
}
