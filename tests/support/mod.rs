//! The test-support layer of every tier (and, for `review` and `fuzz_checks`, of the fuzz
//! crate): review builders and patch decoding (`review`), `serve` on free ports with
//! development certificates (`serve`), the test control plane (`kube`), the fuzz targets'
//! checks (`fuzz_checks`), and fixtures and the footprint budget here.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

use django_migrate_webhook::names;
use serde_json::Value;

pub mod fuzz_checks;
pub mod kube;
pub mod parity;
pub mod review;
pub mod serve;

pub use review::*;
pub use serve::*;

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

/// Panics unless `object` parses as its kind's API type (a Rollout, which has none here:
/// its pod template as a PodTemplateSpec).
pub fn assert_valid_workload(object: &Value) {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), serde_json::Error> {
        serde_json::from_value::<T>(v.clone()).map(drop)
    }
    let result = match object["kind"].as_str().unwrap_or("Deployment") {
        "StatefulSet" => check::<apps::StatefulSet>(object),
        "Job" => check::<batch::Job>(object),
        "CronJob" => check::<batch::CronJob>(object),
        "Rollout" => check::<core::PodTemplateSpec>(&object["spec"]["template"]),
        _ => check::<apps::Deployment>(object),
    };
    if let Err(e) = result {
        panic!("not a valid {}: {e}\n{object:#}", object["kind"]);
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
