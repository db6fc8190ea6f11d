#![allow(dead_code)] // each fuzz target uses half of this module
//! The fuzz targets' inputs and checks (`fuzz/`), shared with the engine tier, which
//! replays the kept corpus (`tests/fixtures/fuzz/`) with them on every test run. What the
//! webhook owns is `review::without_owned`, the definition every tier uses.

use arbitrary::Arbitrary;
use django_migrate_webhook::admission;
use serde_json::{Map, Value, json};

use super::review::{answer, apply, patch_of, review, without_owned};

/// Any bytes: the answer is a 200 AdmissionReview or a 400/413 `Status`, always JSON.
pub fn check_review_bytes(data: &[u8]) {
    let reply = admission::review(data, &Default::default());
    let body: Value = serde_json::from_slice(&reply.body).expect("every answer is JSON");
    match reply.status {
        200 => {
            assert_eq!(body["kind"], "AdmissionReview");
            assert!(
                body["response"]["uid"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty())
            );
            if let Some(patch) = body["response"]["patch"].as_str() {
                assert!(
                    patch
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
                    "patch is base64"
                );
            }
        }
        400 | 413 => {
            assert_eq!(body["kind"], "Status");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        other => panic!("status {other}: {body}"),
    }
}

#[derive(Arbitrary, Debug)]
pub enum Key {
    Database,
    MigrateTimeout,
    WaitTimeout,
    Mode,
    Container,
    ReadinessGate,
    ManagePy,
    ManageCommand,
    Python,
    UseImageEntrypoint,
    /// A `django-migrate.io/` key the webhook does not know.
    Unknown(String),
    /// Another tool's annotation.
    Other(String),
}

impl Key {
    fn name(&self) -> String {
        let known = |k: &str| format!("django-migrate.io/{k}");
        match self {
            Key::Database => known("database"),
            Key::MigrateTimeout => known("migrate-timeout"),
            Key::WaitTimeout => known("wait-timeout"),
            Key::Mode => known("mode"),
            Key::Container => known("container"),
            Key::ReadinessGate => known("readiness-gate"),
            Key::ManagePy => known("manage-py"),
            Key::ManageCommand => known("manage-command"),
            Key::Python => known("python"),
            Key::UseImageEntrypoint => known("use-image-entrypoint"),
            Key::Unknown(k) => known(k),
            Key::Other(k) => format!("example.com/{k}"),
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Name {
    WaitForDb,
    Migrate,
    WaitForMigrations,
    Web,
    Other(String),
}

#[derive(Arbitrary, Debug)]
pub struct Container {
    pub name: Name,
    pub image: Option<String>,
    pub env: Vec<(String, Option<String>)>,
    pub command: Vec<String>,
    pub run_as_non_root: Option<bool>,
}

impl Container {
    fn json(&self) -> Value {
        let name = match &self.name {
            Name::WaitForDb => "django-wait-for-db".to_owned(),
            Name::Migrate => "django-migrate".to_owned(),
            Name::WaitForMigrations => "django-wait-for-migrations".to_owned(),
            Name::Web => "web".to_owned(),
            Name::Other(n) => n.clone(),
        };
        let mut c = Map::new();
        c.insert("name".into(), json!(name));
        if let Some(image) = &self.image {
            c.insert("image".into(), json!(image));
        }
        if !self.env.is_empty() {
            let env: Vec<Value> = self
                .env
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => json!({"name": k, "value": v}),
                    None => {
                        json!({"name": k, "valueFrom": {"secretKeyRef": {"name": "s", "key": k}}})
                    }
                })
                .collect();
            c.insert("env".into(), Value::Array(env));
        }
        if !self.command.is_empty() {
            c.insert("command".into(), json!(self.command));
        }
        if let Some(v) = self.run_as_non_root {
            c.insert("securityContext".into(), json!({"runAsNonRoot": v}));
        }
        Value::Object(c)
    }
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub update: bool,
    pub labelled: bool,
    pub labelled_before: bool,
    pub annotations: Vec<(Key, String)>,
    pub template_labels: Vec<(String, String)>,
    pub default_container: Option<String>,
    pub containers: Vec<Container>,
    pub init_containers: Vec<Container>,
    pub gates: Vec<String>,
    pub replicas: Option<i8>,
}

fn deployment(input: &Input, labelled: bool) -> Value {
    let mut labels = json!({"app": "web"});
    if labelled {
        labels["django-migrate.io/inject"] = json!("true");
    }
    let annotations: Map<String, Value> = input
        .annotations
        .iter()
        .map(|(k, v)| (k.name(), json!(v)))
        .collect();
    let mut template_labels: Map<String, Value> = input
        .template_labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    template_labels.insert("app".into(), json!("web"));
    let mut template_annotations = Map::new();
    if let Some(d) = &input.default_container {
        template_annotations.insert("kubectl.kubernetes.io/default-container".into(), json!(d));
    }
    let mut spec = Map::new();
    spec.insert(
        "containers".into(),
        input.containers.iter().map(Container::json).collect(),
    );
    if !input.init_containers.is_empty() {
        spec.insert(
            "initContainers".into(),
            input.init_containers.iter().map(Container::json).collect(),
        );
    }
    if !input.gates.is_empty() {
        spec.insert(
            "readinessGates".into(),
            input
                .gates
                .iter()
                .map(|g| json!({"conditionType": g}))
                .collect(),
        );
    }
    spec.insert("volumes".into(), json!([{"name": "data", "emptyDir": {}}]));
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels, "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": template_labels, "annotations": template_annotations},
                "spec": spec,
            }
        }
    });
    if let Some(r) = input.replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

/// A structured Deployment: allowed with a patch that applies, touches only what the
/// webhook owns, never widens a securityContext, and is empty on a second pass; or denied
/// with a message.
pub fn check_mutation(input: &Input) {
    let object = deployment(input, input.labelled);
    let old = input
        .update
        .then(|| deployment(input, input.labelled_before));
    let operation = if input.update { "UPDATE" } else { "CREATE" };
    let response = answer(&review(operation, &object, old.as_ref()));
    if response["allowed"] == false {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("django-migrate: "), "{response}");
        assert!(
            input.labelled,
            "only opted-in Deployments are denied: {response}"
        );
        return;
    }
    for w in response["warnings"].as_array().into_iter().flatten() {
        assert!(w.as_str().is_some_and(|w| w.chars().count() <= 120), "{w}");
    }
    let Some(patch) = patch_of(&response) else {
        return;
    };
    let mutated = apply(&object, &patch);
    assert_eq!(
        without_owned(&mutated),
        without_owned(&object),
        "the patch changed something the webhook does not own"
    );
    let spec = &mutated["spec"]["template"]["spec"];
    let app_contexts: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| &c["securityContext"])
        .collect();
    for init in spec["initContainers"].as_array().into_iter().flatten() {
        let name = init["name"].as_str().unwrap_or_default();
        if name == "django-migrate-code" {
            let s = &init["securityContext"];
            assert_eq!(s["runAsNonRoot"], true, "{init}");
            assert_eq!(s["allowPrivilegeEscalation"], false, "{init}");
            assert_eq!(s["readOnlyRootFilesystem"], true, "{init}");
            assert_eq!(s["capabilities"]["drop"], json!(["ALL"]), "{init}");
        }
        if ["django-migrate", "django-wait-for-migrations"].contains(&name) {
            assert!(
                app_contexts.contains(&&init["securityContext"]),
                "{name} has a securityContext no app container has: {init}"
            );
        }
    }
    let again = answer(&review("UPDATE", &mutated, Some(&object)));
    assert!(
        again.get("patch").is_none(),
        "a second pass changes the object again: {again}"
    );
}
