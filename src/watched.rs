//! The view of a pod that the controller watches and caches: only the fields it reads.
//!
//! A cluster with thousands of injected pods sends each of them (containers, env,
//! volumes, managedFields, every status) to the controller on every list and change.
//! Deserialising straight into this small type keeps none of that: the cache holds the
//! pod's identity, owner, whether it has the gate, the gate condition and the statuses
//! of the injected init containers, and nothing is built only to be thrown away.

use k8s_openapi::api::core::v1::{ContainerState, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use serde::{Deserialize, Deserializer};

use crate::names::MIGRATED_CONDITION;
use crate::step::StepStatus;

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
}

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

pub(crate) use lean_resource;

lean_resource!(WatchedPod, "Pod", "", "v1", "pods");

/// The Deployment a pod belongs to: the labels of the controller's metrics, bounded by
/// the number of opted-in Deployments, and where its Events go.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentKey {
    pub namespace: String,
    /// Empty for a pod no Deployment owns.
    pub deployment: String,
}

impl WatchedPod {
    /// The status of the injected init container `name`.
    pub fn step_status(&self, name: &str) -> Option<&StepStatus> {
        self.status
            .init_container_statuses
            .iter()
            .find(|s| s.name == name)
    }

    /// The pod's Deployment: its controlling ReplicaSet's name without the pod-template
    /// hash (the last `-` segment, which never contains a `-`), as the Deployment
    /// controller names them.
    pub fn deployment(&self) -> DeploymentKey {
        let replica_set = self
            .owner_references()
            .iter()
            .find(|o| o.kind == "ReplicaSet")
            .map(|o| o.name.as_str());
        DeploymentKey {
            namespace: self.namespace().unwrap_or_default(),
            deployment: replica_set
                .map(|rs| rs.rsplit_once('-').map_or(rs, |(d, _)| d))
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::MIGRATE_CONTAINER;
    use serde_json::json;

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
        assert_eq!(pod.deployment().deployment, "shop");
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert!(pod.metadata.labels.is_none() && pod.metadata.annotations.is_none());
        assert!(pod.metadata.managed_fields.is_none());
        // A pod without spec or status (as in a DELETED event's tombstone) still reads.
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "q"}})).unwrap();
        assert!(!bare.spec.gated);
    }
}
