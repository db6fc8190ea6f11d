//! The parts of an apps/v1 Deployment that the mutation reads.
//!
//! Everything else in the object (status, managedFields, volumes, probes, ...) is skipped
//! while parsing instead of being built into a tree: the webhook only needs these fields,
//! and the JSON Patch it returns leaves the rest of the object as the API server holds it.
//! Containers are kept as JSON maps so that copying env, mounts and the like from the app
//! container loses nothing that a newer Kubernetes version may have added.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::settings::INJECT_LABEL;

pub type StringMap = BTreeMap<String, String>;
pub type JsonMap = Map<String, Value>;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Deployment {
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<DeploymentSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<StringMap>,
    pub annotations: Option<StringMap>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct DeploymentSpec {
    pub replicas: Option<i64>,
    pub template: Option<PodTemplate>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodTemplate {
    pub metadata: Option<TemplateMeta>,
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TemplateMeta {
    pub labels: Option<StringMap>,
    pub annotations: Option<StringMap>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Option<Vec<JsonMap>>,
    pub init_containers: Option<Vec<JsonMap>>,
    pub readiness_gates: Option<Vec<JsonMap>>,
    pub volumes: Option<Vec<JsonMap>>,
    pub security_context: Option<JsonMap>,
}

impl Deployment {
    /// True when the Deployment carries the opt-in label with the value `"true"`.
    pub fn is_opted_in(&self) -> bool {
        self.labels()
            .and_then(|l| l.get(INJECT_LABEL))
            .is_some_and(|v| v == "true")
    }

    pub fn labels(&self) -> Option<&StringMap> {
        self.metadata.as_ref()?.labels.as_ref()
    }

    pub fn annotations(&self) -> Option<&StringMap> {
        self.metadata.as_ref()?.annotations.as_ref()
    }

    pub fn template(&self) -> Option<&PodTemplate> {
        self.spec.as_ref()?.template.as_ref()
    }

    pub fn pod_spec(&self) -> Option<&PodSpec> {
        self.template()?.spec.as_ref()
    }

    pub fn template_labels(&self) -> Option<&StringMap> {
        self.template()?.metadata.as_ref()?.labels.as_ref()
    }

    pub fn template_annotations(&self) -> Option<&StringMap> {
        self.template()?.metadata.as_ref()?.annotations.as_ref()
    }
}

/// The `name` of a container map, if it is a string.
pub fn container_name(c: &JsonMap) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}
