//! `uninject`, the inverse of `inject`: every admission fixture's Deployment, injected and
//! then uninjected, is its own again, with the opt-in label set to "false"; uninjecting
//! again changes nothing; what earlier releases injected goes too.

use std::fs;

use django_migrate_webhook::names::{INJECT_LABEL, INJECTED_LABEL, RESERVED_CONTAINERS};
use django_migrate_webhook::preview::{self, OutputFormat};
use serde_json::Value;

use crate::support::*;

/// The Deployment as its team wrote it, with the label set to "false" when it had one.
fn expected_back(original: &Value) -> Value {
    let mut v = original.clone();
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
        && labels.contains_key(INJECT_LABEL)
    {
        labels.insert(INJECT_LABEL.into(), "false".into());
    }
    v
}

/// Whether `d` carries anything the webhook owns (a shape of an earlier release, say).
fn carries_ours(d: &Value) -> bool {
    let spec = &d["spec"]["template"]["spec"];
    let names = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    names("initContainers")
        .iter()
        .any(|n| RESERVED_CONTAINERS.contains(&n.as_str()))
        || names("volumes").iter().any(|n| n == "django-migrate-code")
        || spec["readinessGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty())
        || d.pointer(&format!(
            "/spec/template/metadata/labels/{}",
            INJECTED_LABEL.replace('/', "~1")
        ))
        .is_some()
}

fn json(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn every_fixture_comes_back_as_its_team_wrote_it() {
    let dir = repo().join("tests/fixtures/admission");
    let (mut round_trips, mut earlier_shapes) = (0, 0);
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".request.json") {
            continue;
        }
        let object = read_json(&path)["request"]["object"].clone();
        if object["kind"] != "Deployment" || object["apiVersion"] != "apps/v1" {
            continue;
        }
        let Ok(injected) = preview::inject(&json(&object), OutputFormat::Json, &Default::default())
        else {
            continue; // denied: the webhook stores nothing
        };
        if injected.mutated == 0 {
            continue;
        }
        let back = preview::uninject(&injected.output, OutputFormat::Json).unwrap();
        assert_eq!(back.mutated, 1, "{}", path.display());
        let back = parse(&back.output);
        if carries_ours(&object) {
            // A shape of an earlier release: it goes too, as when the label is removed.
            let direct = parse(
                &preview::uninject(&json(&object), OutputFormat::Json)
                    .unwrap()
                    .output,
            );
            assert_eq!(back, direct, "{}", path.display());
            assert!(!carries_ours(&back), "{}: {back}", path.display());
            earlier_shapes += 1;
        } else {
            assert_eq!(back, expected_back(&object), "{}", path.display());
            round_trips += 1;
        }
        let again = preview::uninject(&json(&back), OutputFormat::Json).unwrap();
        assert_eq!(
            again.mutated,
            0,
            "{}: uninject is not idempotent",
            path.display()
        );
    }
    assert!(
        round_trips >= 12,
        "only {round_trips} fixtures round-tripped"
    );
    eprintln!(
        "uninject: {round_trips} fixtures round-tripped, {earlier_shapes} of earlier shapes cleaned"
    );
}

#[test]
fn the_controllers_record_goes_and_other_documents_stay_byte_for_byte() {
    let input = r#"# the team's comment
apiVersion: v1
kind: ConfigMap # kept as written
metadata: {name: shop-config}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: {django-migrate.io/inject: "true"}
  annotations:
    django-migrate.io/contracted-releases: "abc123"
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: web, image: "shop:2"}]
"#;
    let injected = preview::inject(input, OutputFormat::Yaml, &Default::default()).unwrap();
    let back = preview::uninject(&injected.output, OutputFormat::Yaml).unwrap();
    assert_eq!(back.mutated, 1);
    assert!(
        back.output.starts_with(
            "# the team's comment\napiVersion: v1\nkind: ConfigMap # kept as written\n"
        ),
        "{}",
        back.output
    );
    let docs: Vec<Value> = back
        .output
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let d = &docs[1];
    assert_eq!(d["metadata"]["labels"][INJECT_LABEL], "false");
    assert!(d["metadata"].get("annotations").is_none(), "{d}");
    assert!(!carries_ours(d), "{d}");
    // A List, as `kubectl get deployments -o yaml` prints it.
    let list = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{}]}}",
        json(
            &serde_yaml_ng::from_str::<Value>(injected.output.split("\n---\n").nth(1).unwrap())
                .unwrap()
        )
    );
    let back = preview::uninject(&list, OutputFormat::Json).unwrap();
    assert_eq!(back.mutated, 1);
    assert!(!carries_ours(&parse(&back.output)["items"][0]));
}
