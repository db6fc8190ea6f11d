//! The view of a pod that the controller watches and caches: only the fields it reads.
//!
//! A cluster with thousands of injected pods sends each of them (containers, env,
//! volumes, managedFields, every status) to the controller on every list and change.
//! Deserialising straight into this small type keeps none of that: the cache holds the
//! pod's identity, owner, whether it has the gate, the names of the injected init
//! containers and whether the code volume is there, the gate condition and the statuses
//! of the injected init containers, and nothing is built only to be thrown away.

use k8s_openapi::api::core::v1::{ContainerState, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::ResourceExt;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use serde::{Deserialize, Deserializer};

use crate::names::{
    CODE_CONTAINER, CODE_VOLUME, CRONJOB_LABEL, MIGRATE_CONTAINER, MIGRATED_CONDITION,
    WAIT_CONTAINER,
};
use crate::step::{self, StepStatus};
use crate::workload::Kind;

/// A pod as the controller sees it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedPod {
    #[serde(deserialize_with = "identity_only")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WatchedSpec,
    #[serde(default)]
    pub status: WatchedStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedSpec {
    /// True when the pod has the `django-migrate.io/migrated` readiness gate.
    #[serde(default, rename = "readinessGates", deserialize_with = "has_our_gate")]
    pub gated: bool,
    /// The injected init containers, in order: each name and whether it runs the step's
    /// program from the code volume.
    #[serde(
        default,
        rename = "initContainers",
        deserialize_with = "injected_inits"
    )]
    pub injected_inits: Vec<(&'static str, bool)>,
    /// True when the pod has the `django-migrate-code` volume.
    #[serde(default, rename = "volumes", deserialize_with = "has_code_volume")]
    pub code_volume: bool,
}

impl WatchedSpec {
    /// The injected step, when the pod has no code for it (see `step::code_removed`).
    pub fn code_removed(&self) -> Option<&'static str> {
        let volumes = self.code_volume.then_some(CODE_VOLUME);
        step::code_removed(self.injected_inits.iter().copied(), volumes)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchedStatus {
    /// The `django-migrate.io/migrated` condition, if the pod has it.
    #[serde(default, rename = "conditions", deserialize_with = "our_condition")]
    pub gate: Option<PodCondition>,
    /// Statuses of the injected init containers.
    #[serde(default, deserialize_with = "our_statuses")]
    pub init_container_statuses: Vec<StepStatus>,
}

/// The metadata fields the controller and the reflector use.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    owner_references: Option<Vec<OwnerReference>>,
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// The pod labels that name its workload: Argo's, and the CronJob's.
const WORKLOAD_LABELS: [&str; 2] = [Kind::Rollout.release_label(), CRONJOB_LABEL];

fn identity_only<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut i = Identity::deserialize(d)?;
    // Only the controlling owner (the ReplicaSet) is read.
    if let Some(owners) = i.owner_references.as_mut() {
        owners.retain(|o| o.controller == Some(true));
    }
    Ok(ObjectMeta {
        name: i.name,
        namespace: i.namespace,
        uid: i.uid,
        resource_version: i.resource_version,
        creation_timestamp: i.creation_timestamp,
        owner_references: i.owner_references,
        labels: i
            .labels
            .map(|l| {
                l.into_iter()
                    .filter(|(k, _)| WORKLOAD_LABELS.contains(&k.as_str()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Gate {
    condition_type: String,
}

fn has_our_gate<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let gates = Option::<Vec<Gate>>::deserialize(d)?.unwrap_or_default();
    Ok(gates.iter().any(|g| g.condition_type == MIGRATED_CONDITION))
}

#[derive(Deserialize)]
struct Named {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
}

fn injected_inits<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(&'static str, bool)>, D::Error> {
    let inits = Option::<Vec<Named>>::deserialize(d)?.unwrap_or_default();
    Ok(inits
        .iter()
        .filter_map(|c| {
            let name = [CODE_CONTAINER, MIGRATE_CONTAINER, WAIT_CONTAINER]
                .into_iter()
                .find(|n| *n == c.name)?;
            let run = c.command.iter().chain(&c.args).map(String::as_str);
            Some((name, step::runs_program(run)))
        })
        .collect())
}

fn has_code_volume<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let volumes = Option::<Vec<Named>>::deserialize(d)?.unwrap_or_default();
    Ok(volumes.iter().any(|v| v.name == CODE_VOLUME))
}

fn our_condition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PodCondition>, D::Error> {
    let conditions = Option::<Vec<PodCondition>>::deserialize(d)?.unwrap_or_default();
    Ok(conditions
        .into_iter()
        .find(|c| c.type_ == MIGRATED_CONDITION))
}

/// A container status as the API server sends it, without what the controller ignores.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    name: String,
    state: Option<ContainerState>,
    last_state: Option<ContainerState>,
}

fn our_statuses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StepStatus>, D::Error> {
    let raw = Option::<Vec<RawStatus>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .iter()
        .filter_map(|s| StepStatus::read(&s.name, s.state.as_ref(), s.last_state.as_ref()))
        .collect())
}

/// `kube::Resource` for a lean, namespaced view of a built-in kind, so that the watcher,
/// the reflector and the controller runtime work on it as on the full type.
macro_rules! lean_resource {
    ($ty:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $group.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

lean_resource!(WatchedPod, "Pod", "", "v1", "pods");

/// The workload a pod belongs to: the labels of the controller's metrics, bounded by the
/// number of opted-in workloads, and where its Events go.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct WorkloadKey {
    pub namespace: String,
    /// Empty for a pod no workload owns.
    pub name: String,
    pub kind: Kind,
}

/// `namespace` and `deployment` (the workload's name, whatever its kind: the series of
/// Deployments keep their names), and `kind` for every other kind.
impl EncodeLabelSet for WorkloadKey {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("namespace", self.namespace.as_str()).encode(encoder.encode_label())?;
        ("deployment", self.name.as_str()).encode(encoder.encode_label())?;
        if self.kind != Kind::Deployment {
            ("kind", self.kind.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl WatchedPod {
    /// The status of the injected init container `name`.
    pub fn step_status(&self, name: &str) -> Option<&StepStatus> {
        self.status
            .init_container_statuses
            .iter()
            .find(|s| s.name == name)
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// The pod's workload, from its controlling owner: a ReplicaSet's name without the
    /// pod-template hash (the last `-` segment, which never contains a `-`) names its
    /// Deployment, or its Rollout when the pod has Argo's label; a StatefulSet's pod names
    /// it; a Job's pod names its CronJob when the CronJob's template says so, else the Job.
    pub fn workload(&self) -> WorkloadKey {
        let owner = self.owner_references().first();
        let (kind, name) = match owner.map(|o| (o.kind.as_str(), o.name.as_str())) {
            Some(("ReplicaSet", rs)) => (
                if self.label(Kind::Rollout.release_label()).is_some() {
                    Kind::Rollout
                } else {
                    Kind::Deployment
                },
                rs.rsplit_once('-').map_or(rs, |(d, _)| d),
            ),
            Some(("StatefulSet", name)) => (Kind::StatefulSet, name),
            Some(("Job", job)) => match self.label(CRONJOB_LABEL) {
                Some(cronjob) => (Kind::CronJob, cronjob),
                None => (Kind::Job, job),
            },
            _ => (Kind::Deployment, ""),
        };
        WorkloadKey {
            namespace: self.namespace().unwrap_or_default(),
            name: name.to_owned(),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::MIGRATE_CONTAINER;
    use serde_json::json;

    #[test]
    fn a_pod_names_its_workload_from_its_owner_and_labels() {
        let of = |owner: &str, name: &str, labels: serde_json::Value| {
            let pod: WatchedPod = serde_json::from_value(json!({"metadata": {
                "name": "p", "namespace": "n", "labels": labels,
                "ownerReferences": [{"apiVersion": "v1", "kind": owner, "name": name,
                                     "uid": "u", "controller": true}]}}))
            .unwrap();
            let key = pod.workload();
            (key.kind, key.name)
        };
        let none = json!({});
        assert_eq!(
            of("ReplicaSet", "shop-7d4b9c", none.clone()),
            (Kind::Deployment, "shop".into())
        );
        assert_eq!(
            of(
                "ReplicaSet",
                "shop-6988c4f9dd",
                json!({"rollouts-pod-template-hash": "6988c4f9dd"})
            ),
            (Kind::Rollout, "shop".into())
        );
        assert_eq!(
            of("StatefulSet", "db-web", none.clone()),
            (Kind::StatefulSet, "db-web".into())
        );
        assert_eq!(
            of("Job", "import-2024", none),
            (Kind::Job, "import-2024".into())
        );
        assert_eq!(
            of("Job", "nightly-29436480", json!({CRONJOB_LABEL: "nightly"})),
            (Kind::CronJob, "nightly".into())
        );
    }

    #[test]
    fn keeps_only_what_the_controller_reads() {
        let pod: WatchedPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "7",
                         "labels": {"a": "b"}, "annotations": {"x": "y".repeat(1000)},
                         "managedFields": [{"manager": "kubelet"}],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "shop-7d4b9c", "uid": "r", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "x",
                                     "env": [{"name": "A", "value": "1".repeat(1000)}]}],
                     "initContainers": [{"name": "user-init", "image": "x"},
                                        {"name": MIGRATE_CONTAINER, "image": "x",
                                         "command": ["python3", "/django-migrate/step.pyz"]}],
                     "volumes": [{"name": "data", "emptyDir": {}}],
                     "readinessGates": [{"conditionType": "other"}, {"conditionType": MIGRATED_CONDITION}]},
            "status": {"phase": "Pending",
                       "conditions": [{"type": "Ready", "status": "False"},
                                      {"type": MIGRATED_CONDITION, "status": "False", "reason": "R"}],
                       "initContainerStatuses": [
                           {"name": "user-init", "image": "x", "imageID": "", "ready": true,
                            "restartCount": 0, "state": {"running": {}}},
                           {"name": MIGRATE_CONTAINER, "image": "x", "imageID": "", "ready": false,
                            "restartCount": 1, "state": {"running": {}},
                            "lastState": {"terminated": {"exitCode": 1, "message":
                                "{\"phase\":\"lock\",\"message\":\"gave up\",\"applied\":[]}"}}}]},
        }))
        .unwrap();
        assert!(pod.spec.gated);
        // Neither the code copy nor the code volume: the step has no code.
        assert_eq!(pod.spec.injected_inits, [(MIGRATE_CONTAINER, true)]);
        assert_eq!(pod.spec.code_removed(), Some(MIGRATE_CONTAINER));
        let with_volume: WatchedSpec = serde_json::from_value(json!({
            "initContainers": [{"name": MIGRATE_CONTAINER, "args": ["python3", "/django-migrate/step.pyz"]}],
            "volumes": [{"name": "data"}, {"name": CODE_VOLUME, "image": {"reference": "w"}}]}))
        .unwrap();
        assert_eq!(with_volume.code_removed(), None);
        let earlier_release: WatchedSpec = serde_json::from_value(json!({"initContainers": [
            {"name": MIGRATE_CONTAINER, "command": ["python3", "-c", "$(DJANGO_MIGRATE_CODE)"]}]}))
        .unwrap();
        assert_eq!(earlier_release.code_removed(), None);
        assert_eq!(
            serde_json::from_value::<WatchedSpec>(json!({"initContainers": [
                {"name": CODE_CONTAINER}, {"name": MIGRATE_CONTAINER}]}))
            .unwrap()
            .code_removed(),
            None
        );
        assert_eq!(
            pod.status.gate.as_ref().unwrap().reason.as_deref(),
            Some("R")
        );
        assert_eq!(pod.status.init_container_statuses.len(), 1);
        let step = pod.step_status(MIGRATE_CONTAINER).unwrap();
        assert!(step.running && step.terminated.is_none());
        let last = step.last_terminated.as_ref().unwrap();
        assert_eq!(
            (last.code, last.phase, last.message.as_deref()),
            (1, Some(crate::summary::Phase::Lock), Some("gave up"))
        );
        assert_eq!(pod.workload().name, "shop");
        assert_eq!(pod.workload().kind, Kind::Deployment);
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert!(pod.metadata.labels.is_none() && pod.metadata.annotations.is_none());
        assert!(pod.metadata.managed_fields.is_none());
        // A pod without spec or status (as in a DELETED event's tombstone) still reads.
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "q"}})).unwrap();
        assert!(!bare.spec.gated && bare.spec.code_removed().is_none());
    }
}
