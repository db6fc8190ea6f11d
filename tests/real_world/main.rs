//! The real-world tier: the nine real Django Deployments in
//! `../shared/real-world-deployments/` (other projects' files: read from there, never
//! copied into this repository). Opt-in: `scripts/test.sh` runs it when
//! `DJANGO_MIGRATE_REAL_WORLD_DIR` names their folder (CI sets it).
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;

use django_migrate_webhook::names;
use django_migrate_webhook::preview::{self, OutputFormat};
use serde::Deserialize;
use serde_json::Value;

use crate::support::*;

fn real_world_dir() -> PathBuf {
    let dir = std::env::var_os("DJANGO_MIGRATE_REAL_WORLD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/real-world-deployments"));
    // Opted in but missing is a failure, never a skip.
    assert!(
        dir.is_dir(),
        "the real-world Deployments are not at {}: they live in shared/real-world-deployments \
         beside this checkout; set DJANGO_MIGRATE_REAL_WORLD_DIR to their folder",
        dir.display()
    );
    dir
}

fn load(name: &str) -> Value {
    let path = real_world_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}")))
        .filter(|d| !d.is_null())
        .collect();
    assert_eq!(docs.len(), 1, "{name}: expected one document");
    docs.into_iter().next().unwrap()
}

fn containers<'a>(d: &'a Value, key: &str) -> Vec<&'a Value> {
    d.pointer(&format!("/spec/template/spec/{key}"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// What a user checks after `kubectl apply`: their init containers kept in order and
/// ours after them, copied from the right container, the gate and the label set, and
/// nothing else touched.
fn check(name: &str, original: &Value, app: &str) -> (Value, Vec<String>) {
    let (mutated, warnings) = admit(original);
    assert_valid_workload(&mutated);
    assert_eq!(
        without_owned(&mutated),
        without_owned(original),
        "{name}: something outside the injection changed"
    );
    let before = containers(original, "initContainers");
    let after = containers(&mutated, "initContainers");
    assert_eq!(after.len(), before.len() + 2, "{name}");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "{name}: user init containers"
    );
    let (copy, migrate) = (after[before.len()], after[before.len() + 1]);
    assert_eq!(copy["name"], names::CODE_CONTAINER);
    assert_eq!(migrate["name"], names::MIGRATE_CONTAINER);
    let app_container = containers(original, "containers")
        .into_iter()
        .find(|c| c["name"] == app)
        .unwrap_or_else(|| panic!("{name}: no container {app}"));
    let (added, beyond) = footprint(original, &mutated, app_container);
    eprintln!(
        "{name}: the injection adds {added} bytes to the pod template, {beyond} beyond the app's copied fields"
    );
    assert!(
        beyond <= FOOTPRINT_BUDGET,
        "{name}: {beyond} bytes beyond the copied fields"
    );
    for c in [migrate] {
        for field in [
            "image",
            "imagePullPolicy",
            "envFrom",
            "workingDir",
            "securityContext",
            "resources",
        ] {
            assert_eq!(c.get(field), app_container.get(field), "{name}: {field}");
        }
        let mounts = c["volumeMounts"].as_array().unwrap();
        let app_mounts = app_container["volumeMounts"]
            .as_array()
            .map_or(&[][..], |m| &m[..]);
        assert_eq!(
            &mounts[..app_mounts.len()],
            app_mounts,
            "{name}: mounts copied in order"
        );
        assert_eq!(
            mounts.len(),
            app_mounts.len() + 1,
            "{name}: plus the code volume"
        );
        let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
        let app_env: Vec<&Value> = app_container
            .get("env")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        assert_eq!(
            &env[..app_env.len()],
            &app_env[..],
            "{name}: env copied in order"
        );
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    }
    let gates = containers(&mutated, "readinessGates");
    assert!(
        gates
            .iter()
            .any(|g| g["conditionType"] == names::MIGRATED_CONDITION),
        "{name}: readiness gate"
    );
    assert_eq!(
        mutated["spec"]["template"]["metadata"]["labels"][names::INJECTED_LABEL],
        "true"
    );
    // Stable: the stored object, sent back unchanged, needs no patch.
    let (_, again) = respond(&review("UPDATE", &mutated, Some(&mutated)));
    assert!(patch_of(&again["response"]).is_none(), "{name}: not stable");
    (mutated, warnings)
}

fn has(warnings: &[String], needle: &str) -> bool {
    warnings.iter().any(|w| w.contains(needle))
}

/// `policy` mode: each Deployment through the webhook and through the admission policies
/// of a real API server (the control plane `scripts/test.sh` starts, from KUBECONFIG):
/// created, touched, updated and opted out alike.
#[tokio::test]
async fn every_real_world_deployment_is_injected_alike_in_policy_mode() {
    let parity = support::parity::Parity::start("rw-parity", "copy").await;
    let mut files: Vec<String> = std::fs::read_dir(real_world_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 9, "{files:?}");
    let mut steps = 0;
    for file in &files {
        let mut d = load(file);
        d["metadata"]["labels"][names::INJECT_LABEL] = Value::from("true");
        steps += parity.check(file.trim_end_matches(".yaml"), &d);
    }
    assert!(
        parity.differences.borrow().is_empty(),
        "{:?}",
        parity.differences.borrow()
    );
    assert_eq!(
        steps,
        4 * files.len(),
        "every Deployment went through all four steps"
    );
    eprintln!(
        "real-world parity: {} Deployments, {steps} steps identical",
        files.len()
    );
}

#[test]
fn every_real_world_deployment_is_injected() {
    let expected = [
        ("defectdojo-django.yaml", "metrics"),
        ("labelstudio-app.yaml", "app"),
        ("netbox-web.yaml", "netbox"),
        ("openedx-lms.yaml", "lms"),
        ("plane-api.yaml", "plane-api"),
        ("posthog-web.yaml", "posthog-web"),
        ("sentry-worker.yaml", "sentry-worker"),
        ("weblate-web.yaml", "weblate"),
        ("zulip-web.yaml", "zulip"),
    ];
    let mut files: Vec<String> = std::fs::read_dir(real_world_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(files, names, "the set of real-world Deployments changed");
    for (file, app) in expected {
        let (_, warnings) = check(file, &load(file), app);
        assert!(
            has(&warnings, &format!("copied from \"{app}\"")),
            "{file}: {warnings:?}"
        );
    }
}

#[test]
fn defectdojo_warns_about_the_first_container_and_honours_the_annotation() {
    let mut d = load("defectdojo-django.yaml");
    let (_, warnings) = check("defectdojo", &d, "metrics");
    assert!(
        has(
            &warnings,
            "3 containers, using the first, \"metrics\"; set django-migrate.io/container"
        ),
        "{warnings:?}"
    );
    // The native sidecar stays first, so the database is reachable through it.
    assert!(
        has(&warnings, "\"db-migration-checker\" polls migrate --check"),
        "{warnings:?}"
    );
    d["metadata"]["annotations"] = serde_json::json!({"django-migrate.io/container": "uwsgi"});
    let (mutated, warnings) = check("defectdojo", &d, "uwsgi");
    let init = containers(&mutated, "initContainers");
    assert_eq!(init[0]["name"], "cloudsql-proxy");
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert!(!has(&warnings, "using the first"), "{warnings:?}");
}

#[test]
fn existing_migration_init_containers_are_reported() {
    let (_, w) = check("posthog", &load("posthog-web.yaml"), "posthog-web");
    assert!(
        has(&w, "\"wait-for-migrations\" polls migrate --check"),
        "{w:?}"
    );
    let (_, w) = check("labelstudio", &load("labelstudio-app.yaml"), "app");
    assert!(
        has(&w, "\"db-migrations\" already runs migrations"),
        "{w:?}"
    );
}

#[test]
fn real_world_yaml_round_trips_through_inject() {
    // The preview leaves nothing behind: its output, previewed again, is unchanged text.
    for entry in std::fs::read_dir(real_world_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let first = preview::inject(&text, OutputFormat::Yaml, &Default::default()).unwrap();
        assert_eq!(first.mutated, 1, "{}", path.display());
        let second =
            preview::inject(&first.output, OutputFormat::Yaml, &Default::default()).unwrap();
        assert_eq!(second.mutated, 0, "{}", path.display());
        assert_eq!(second.output, first.output, "{}", path.display());
    }
}

#[test]
fn real_world_deployments_uninject_to_their_own_template() {
    // `uninject` of what `inject` made is the team's own Deployment again, with the opt-in
    // label set to "false" (the change a GitOps user commits before uninstalling).
    let mut checked = 0;
    for entry in std::fs::read_dir(real_world_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let injected = preview::inject(&text, OutputFormat::Yaml, &Default::default()).unwrap();
        let back = preview::uninject(&injected.output, OutputFormat::Json).unwrap();
        assert_eq!(back.mutated, 1, "{name}");
        let back: Value = serde_json::from_str(&back.output).unwrap();
        let mut expected = load(&name);
        expected["metadata"]["labels"][names::INJECT_LABEL] = "false".into();
        assert_eq!(back, expected, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 9);
}
