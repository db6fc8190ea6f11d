//! AdmissionReview requests built and answered through the same function the server uses,
//! patches decoded from the wire, and the one definition of the parts of a workload the
//! webhook owns. Shared with the fuzz crate, so it needs only what that crate has.

use base64::Engine as _;
use django_migrate_webhook::{admission, names};
use serde_json::{Value, json};

/// An AdmissionReview request for a workload: its kind from the object's `apiVersion` and
/// `kind` (a Deployment when they are missing).
pub fn review(operation: &str, object: &Value, old: Option<&Value>) -> Value {
    let (group, version, kind) = gvk(object);
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "b1f0c1d2-0000-4000-8000-000000000001",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
            "operation": operation,
            "object": object,
            "oldObject": old,
        }
    })
}

/// `(group, version, kind)` of an object; a Deployment's when it does not say.
pub fn gvk(object: &Value) -> (String, String, String) {
    let api_version = object["apiVersion"].as_str().unwrap_or("apps/v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or("Deployment");
    (group.to_owned(), version.to_owned(), kind.to_owned())
}

/// The JSON Pointer of an object's pod template (a CronJob's is under `jobTemplate`).
pub fn template_pointer(object: &Value) -> &'static str {
    if object["kind"] == "CronJob" {
        "/spec/jobTemplate/spec/template"
    } else {
        "/spec/template"
    }
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
    let reply = admission::review(&serde_json::to_vec(review).unwrap(), &Default::default());
    let body: Value = serde_json::from_slice(&reply.body).expect("reply body is JSON");
    (reply.status, body)
}

/// The response of a review that must be answered 200, after checking it is well formed.
pub fn answer(review: &Value) -> Value {
    let (status, body) = respond(review);
    assert_eq!(status, 200, "a valid workload gets a 200: {body}");
    assert_eq!(body["kind"], "AdmissionReview", "{body}");
    body["response"].clone()
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
    let template = template_pointer(object);
    if let Some(meta) = v
        .pointer_mut(&format!("{template}/metadata"))
        .and_then(Value::as_object_mut)
    {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove(names::INJECTED_LABEL);
            labels.remove(names::CRONJOB_LABEL);
            if labels.is_empty() {
                meta.remove("labels");
            }
        }
        if meta.is_empty() {
            v.pointer_mut(template)
                .and_then(Value::as_object_mut)
                .unwrap()
                .remove("metadata");
        }
    }
    if let Some(spec) = v
        .pointer_mut(&format!("{template}/spec"))
        .and_then(Value::as_object_mut)
    {
        for (key, field, values) in [
            ("initContainers", "name", &names::RESERVED_CONTAINERS[..]),
            (
                "readinessGates",
                "conditionType",
                &[names::MIGRATED_CONDITION][..],
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
