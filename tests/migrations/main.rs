//! The migrations tier: the init containers taken from `inject` output for a Deployment
//! of the real Django project in `tests/django`, run as the kubelet would run them.

#[path = "../support/mod.rs"]
mod support;

mod kubelet;
mod sqlite;

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use support::repo;

/// The Python with Django that plays the image. `scripts/test.sh` creates `.venv`.
pub fn test_python() -> PathBuf {
    let python = std::env::var_os("DJANGO_MIGRATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import django"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Python with Django at {}: run scripts/test.sh (it creates .venv from \
         tests/requirements.txt) or set DJANGO_MIGRATE_TEST_PYTHON",
        python.display()
    );
    python
}

/// A Deployment of the test project, opted in, with the given env and annotations.
pub fn deployment(env: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let mut all: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (format!("django-migrate.io/{k}"), json!(v)))
        .collect();
    all.entry("django-migrate.io/python")
        .or_insert_with(|| json!(test_python().to_string_lossy()));
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "shop",
            "labels": {"django-migrate.io/inject": "true"},
            "annotations": all,
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "shop:test",
                    "workingDir": repo().join("tests/django").to_string_lossy(),
                    "env": env,
                }]},
            },
        },
    })
}

/// The init containers of `deployment` after `django-migrate-webhook inject`.
pub fn injected_init_containers(deployment: &Value) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_django-migrate-webhook"))
        .args(["inject", "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(deployment.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mutated: Value = serde_json::from_slice(&out.stdout).unwrap();
    mutated["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .clone()
}
