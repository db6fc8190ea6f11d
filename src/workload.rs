//! The workloads the webhook injects, and the parts of them that the mutation reads.
//!
//! Every kind carries one pod template: a Deployment, StatefulSet, Job and Argo Rollout at
//! `spec.template`, a CronJob at `spec.jobTemplate.spec.template`. What differs is how
//! their pods name their release, whether anything routes traffic to them (a readiness
//! gate) and whether an update of theirs completes (a contract phase).
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

/// A kind of workload the webhook injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    #[default]
    Deployment,
    StatefulSet,
    Job,
    CronJob,
    /// `argoproj.io/v1alpha1` Rollout (Argo Rollouts).
    Rollout,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Job,
        Kind::CronJob,
        Kind::Rollout,
    ];

    /// The kind of an admission request's `kind` (group, version, kind), if it is one.
    pub fn from_gvk(group: &str, version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.version() == version && k.as_str() == kind)
    }

    /// The kind of a manifest or stored object, from its `apiVersion` and `kind`; a
    /// Deployment when they name none of these kinds (an object read as a Deployment).
    pub fn of_object(object: &Value) -> Kind {
        let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
        let (group, version) = text("apiVersion").split_once('/').unwrap_or_default();
        Kind::from_gvk(group, version, text("kind")).unwrap_or_default()
    }

    /// The API resource, for dynamic clients of the kind (Argo's has no typed one).
    pub fn api_resource(self) -> kube::api::ApiResource {
        kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(self.group(), self.version(), self.as_str()),
            self.plural(),
        )
    }

    /// The kind a `kubectl`-style resource name means (`deployment`, `deploy`,
    /// `deployments.apps`, `sts`, `cronjob`, `cj`, `rollouts.argoproj.io`, ...).
    pub fn from_resource_name(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            let plain = lower
                .strip_suffix(&format!(".{}", k.group()))
                .unwrap_or(&lower);
            let short = match k {
                Kind::Deployment => "deploy",
                Kind::StatefulSet => "sts",
                Kind::Job => "job",
                Kind::CronJob => "cj",
                Kind::Rollout => "ro",
            };
            plain == k.as_str().to_ascii_lowercase() || plain == k.plural() || plain == short
        })
    }

    /// `NAME` (a Deployment's) or `KIND/NAME`, as `kubectl` writes them.
    pub fn parse_target(arg: &str) -> Result<(Kind, String), String> {
        let (kind, name) = match arg.split_once('/') {
            None => (Kind::Deployment, arg),
            Some((kind, name)) => (
                Kind::from_resource_name(kind).ok_or_else(|| {
                    format!(
                        "{kind:?} is not a kind that is injected; allowed: deployment, statefulset, job, cronjob, rollout (or NAME alone, a Deployment's)"
                    )
                })?,
                name,
            ),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "{name:?} is not a {kind}'s name (lowercase letters, digits, '-' and '.', at most 253)"
            ));
        }
        Ok((kind, name.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::Rollout => "Rollout",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::StatefulSet => "apps",
            Kind::Job | Kind::CronJob => "batch",
            Kind::Rollout => "argoproj.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Kind::Rollout => "v1alpha1",
            _ => "v1",
        }
    }

    /// `group/version`, as in an object's `apiVersion`.
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }

    /// The resource name, as in RBAC rules and `kubectl get`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::Job => "jobs",
            Kind::CronJob => "cronjobs",
            Kind::Rollout => "rollouts",
        }
    }

    /// The fields from the object to its pod template.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            Kind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }

    /// The pod template as a JSON Pointer.
    pub fn template_pointer(self) -> &'static str {
        match self {
            Kind::CronJob => "/spec/jobTemplate/spec/template",
            _ => "/spec/template",
        }
    }

    /// Jobs and CronJobs: their pods run to completion and serve no traffic, so they get
    /// no readiness gate, wait for migrations by default, and have no contract phase.
    pub fn runs_to_completion(self) -> bool {
        matches!(self, Kind::Job | Kind::CronJob)
    }

    /// The pod label in which the workload's controller names a pod's pod template: the
    /// step's release. A Job's pods share one template, named by the Job's UID.
    pub const fn release_label(self) -> &'static str {
        match self {
            Kind::Deployment => "pod-template-hash",
            Kind::StatefulSet => "controller-revision-hash",
            Kind::Job | Kind::CronJob => "batch.kubernetes.io/controller-uid",
            Kind::Rollout => "rollouts-pod-template-hash",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload as the mutation reads it; `kind` is set by whoever parsed it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Workload {
    #[serde(skip)]
    pub kind: Kind,
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<WorkloadSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<StringMap>,
    pub annotations: Option<StringMap>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct OwnerReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub controller: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub replicas: Option<i64>,
    pub template: Option<PodTemplate>,
    /// A CronJob's.
    pub job_template: Option<JobTemplate>,
    /// A Rollout that takes its pod template from another object.
    pub workload_ref: Option<WorkloadRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobTemplate {
    pub spec: Option<JobSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobSpec {
    pub template: Option<PodTemplate>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct WorkloadRef {
    pub kind: Option<String>,
    pub name: Option<String>,
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

impl Workload {
    /// Parses `json` as a workload of `kind`.
    pub fn parse(kind: Kind, json: &str) -> serde_json::Result<Workload> {
        let mut w: Workload = serde_json::from_str(json)?;
        w.kind = kind;
        Ok(w)
    }

    /// Reads a workload of `kind` from a JSON value.
    pub fn from_value(kind: Kind, value: Value) -> serde_json::Result<Workload> {
        let mut w: Workload = serde_json::from_value(value)?;
        w.kind = kind;
        Ok(w)
    }

    /// True when the workload carries the opt-in label with the value `"true"`.
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

    pub fn name(&self) -> &str {
        self.metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or_default()
    }

    pub fn template(&self) -> Option<&PodTemplate> {
        let spec = self.spec.as_ref()?;
        match self.kind {
            Kind::CronJob => spec.job_template.as_ref()?.spec.as_ref()?.template.as_ref(),
            _ => spec.template.as_ref(),
        }
    }

    /// The kind and name of the object that controls this one (a CronJob's Job).
    pub fn controller(&self) -> Option<(&str, &str)> {
        self.metadata
            .as_ref()?
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| {
                (
                    o.kind.as_deref().unwrap_or_default(),
                    o.name.as_deref().unwrap_or_default(),
                )
            })
    }

    /// A Rollout's `workloadRef` (kind, name): the object it takes its pod template from.
    pub fn workload_ref(&self) -> Option<(&str, &str)> {
        if self.kind != Kind::Rollout {
            return None;
        }
        let r = self.spec.as_ref()?.workload_ref.as_ref()?;
        Some((
            r.kind.as_deref().unwrap_or("Deployment"),
            r.name.as_deref().unwrap_or_default(),
        ))
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
