//! The view of a pod that the controller watches and caches: only the fields it reads.
//!
//! A cluster with thousands of injected pods sends each of them (containers, env,
//! volumes, managedFields, every status) to the controller on every list and change.
//! Deserialising straight into this small type keeps none of that: the cache holds the
//! pod's identity, owner, whether it has the gate, the gate condition and the statuses
//! of the injected init containers, and nothing is built only to be thrown away.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

use crate::names::{CODE_CONTAINER, MIGRATE_CONTAINER, READINESS_GATE, WAIT_CONTAINER};
use crate::summary::Summary;

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

/// The status of one injected init container, its termination message already read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStatus {
    /// One of the injected init container names.
    pub name: &'static str,
    pub running: bool,
    /// How the current run ended, if it did.
    pub terminated: Option<Exit>,
    /// How the previous run ended (kept by the kubelet across restarts).
    pub last_terminated: Option<Exit>,
}

/// How a run of an injected init container ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exit {
    pub code: i32,
    /// The summary's phase, when the message was a summary.
    pub phase: Option<Box<str>>,
    /// The summary's result, when the message was a summary.
    pub result: Option<Box<str>>,
    /// The summary's message, else the raw termination message (log tail).
    pub message: Option<Box<str>>,
    /// This run applied migrations itself.
    pub applied: bool,
    /// This run applied operations that break the previous release.
    pub applied_unsafe: bool,
    /// The summary's numbers, for the controller's metrics.
    pub stats: StepStats,
}

/// The numbers of a step's summary that the metrics use (zero without a summary).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    pub seconds_total: f64,
    pub seconds_lock_wait: f64,
    /// Migrations this run applied itself.
    pub applied: u32,
    pub retries: u32,
    /// Unsafe operations held back (`unsafe-migrations: deny`).
    pub unsafe_blocked: u32,
}

impl StepStats {
    fn of(s: &Summary) -> StepStats {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        StepStats {
            seconds_total: s.seconds.total,
            seconds_lock_wait: s.seconds.lock_wait,
            applied: count(s.applied.len()),
            retries: s.retries,
            unsafe_blocked: count(s.unsafe_operations.iter().filter(|u| u.held_back).count()),
        }
    }
}

impl Exit {
    fn read(t: ContainerStateTerminated) -> Exit {
        let raw = t
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let summary = raw.and_then(Summary::parse);
        let message = summary
            .as_ref()
            .map(|s| s.message.trim())
            .filter(|m| !m.is_empty())
            .or(raw)
            .map(Into::into);
        Exit {
            code: t.exit_code,
            phase: summary.as_ref().map(|s| s.phase.as_str().into()),
            result: summary.as_ref().map(|s| s.result.as_str().into()),
            message,
            applied: summary.as_ref().is_some_and(|s| !s.applied.is_empty()),
            applied_unsafe: summary.as_ref().is_some_and(|s| {
                s.unsafe_operations
                    .iter()
                    .any(|u| u.applied && u.kind != "locking")
            }),
            stats: summary.as_ref().map(StepStats::of).unwrap_or_default(),
        }
    }
}

/// A container status as the API server sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    name: String,
    state: Option<ContainerState>,
    last_state: Option<ContainerState>,
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
    Ok(gates.iter().any(|g| g.condition_type == READINESS_GATE))
}

fn our_condition<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PodCondition>, D::Error> {
    let conditions = Option::<Vec<PodCondition>>::deserialize(d)?.unwrap_or_default();
    Ok(conditions.into_iter().find(|c| c.type_ == READINESS_GATE))
}

fn our_statuses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StepStatus>, D::Error> {
    let raw = Option::<Vec<RawStatus>>::deserialize(d)?.unwrap_or_default();
    let terminated = |s: Option<ContainerState>| s.and_then(|s| s.terminated).map(Exit::read);
    Ok(raw
        .into_iter()
        .filter_map(|s| {
            let name = [CODE_CONTAINER, MIGRATE_CONTAINER, WAIT_CONTAINER]
                .into_iter()
                .find(|n| *n == s.name)?;
            let running = s.state.as_ref().is_some_and(|st| st.running.is_some());
            Some(StepStatus {
                name,
                running,
                terminated: terminated(s.state),
                last_terminated: terminated(s.last_state),
            })
        })
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

impl WatchedPod {
    /// The status of the injected init container `name`.
    pub fn step_status(&self, name: &str) -> Option<&StepStatus> {
        self.status
            .init_container_statuses
            .iter()
            .find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_what_the_controller_reads() {
        let pod: WatchedPod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u", "resourceVersion": "7",
                         "labels": {"a": "b"}, "annotations": {"x": "y".repeat(1000)},
                         "managedFields": [{"manager": "kubelet"}],
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "rs", "uid": "r", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "x",
                                     "env": [{"name": "A", "value": "1".repeat(1000)}]}],
                     "readinessGates": [{"conditionType": "other"}, {"conditionType": READINESS_GATE}]},
            "status": {"phase": "Pending",
                       "conditions": [{"type": "Ready", "status": "False"},
                                      {"type": READINESS_GATE, "status": "False", "reason": "R"}],
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
            (last.code, last.phase.as_deref(), last.message.as_deref()),
            (1, Some("lock"), Some("gave up"))
        );
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert!(pod.metadata.labels.is_none() && pod.metadata.annotations.is_none());
        assert!(pod.metadata.managed_fields.is_none());
        // A pod without spec or status (as in a DELETED event's tombstone) still reads.
        let bare: WatchedPod = serde_json::from_value(json!({"metadata": {"name": "q"}})).unwrap();
        assert!(!bare.spec.gated);
    }
}
