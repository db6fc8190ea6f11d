//! `remove-injection`: what the chart's pre-delete hook runs before `helm uninstall`
//! removes the controller. Every workload that is opted in or carries the injection gets
//! its own pod template back (as `uninject` writes it, the opt-in label set to `"false"`),
//! and the hook waits until each has rolled out, so that no current or future pod waits
//! for a readiness gate that nobody will set once the controller is gone. The webhook and
//! the controller still run meanwhile: the old pods keep their gate satisfied while the
//! new ones, without gate or step, replace them; nothing migrates. A Job is left as it is:
//! its template cannot change, its pods have no gate and it runs to completion.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use thiserror::Error;

use crate::workload::{Kind, Workload};
use crate::{mutation, preview};

#[derive(Debug, Error)]
pub enum RemovalError {
    #[error("cannot list {0}")]
    List(&'static str, #[source] kube::Error),
    #[error("{} workload(s) still carry the injection or have not rolled out: {}", .0.len(), .0.join(", "))]
    NotDone(Vec<String>),
}

/// One workload's removal, as reported.
#[derive(Debug)]
struct Target {
    kind: Kind,
    namespace: String,
    name: String,
    /// The generation the removal's update made; rolled out once observed and complete.
    generation: Option<i64>,
    error: Option<String>,
    done: bool,
}

impl Target {
    fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &self.kind.api_resource())
    }
}

/// The object as JSON, its `apiVersion` and `kind` set (a list's items may lack them).
fn as_json(kind: Kind, object: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    v["apiVersion"] = kind.api_version().into();
    v["kind"] = kind.as_str().into();
    v
}

/// Removes the injection from every workload of the cluster and waits, at most `timeout`,
/// until each has rolled out. Progress goes to stdout, one line per event. Rollouts are
/// looked for where the cluster serves them.
pub async fn remove_all(client: &Client, timeout: Duration) -> Result<(), RemovalError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut targets = Vec::new();
    for kind in Kind::ALL {
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        let list = match all.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // Argo Rollouts not installed.
            Err(kube::Error::Api(e)) if kind == Kind::Rollout && e.code == 404 => continue,
            Err(e) => return Err(RemovalError::List(kind.plural(), e)),
        };
        for object in list {
            let v = as_json(kind, &object);
            if !carries_injection(kind, &v) {
                continue;
            }
            let namespace = object.namespace().unwrap_or_default();
            let name = object.name_any();
            if kind == Kind::Job {
                println!(
                    "{kind} {namespace}/{name}: left as it is: a Job's template cannot change, and its pods have no gate"
                );
                continue;
            }
            // A namespace being deleted takes its workloads with it, and admits no new pods.
            if let Ok(Some(ns)) = namespaces.get_opt(&namespace).await
                && ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
            {
                println!("{kind} {namespace}/{name}: skipped, its namespace is being deleted");
                continue;
            }
            let mut target = Target {
                kind,
                namespace,
                name,
                generation: None,
                error: None,
                done: false,
            };
            match update(client, &target).await {
                Ok(generation) => {
                    println!("{}: injection removed, rolling out", target.id());
                    target.generation = generation;
                }
                Err(e) => {
                    println!("{}: cannot remove the injection: {e}", target.id());
                    target.error = Some(e);
                }
            }
            targets.push(target);
        }
    }
    if targets.is_empty() {
        println!("no workload is opted in or carries the injection");
        return Ok(());
    }
    wait_rolled_out(client, &mut targets, timeout).await;
    let left: Vec<String> = targets
        .iter()
        .filter(|t| !t.done)
        .map(|t| match &t.error {
            Some(e) => format!("{} ({e})", t.id()),
            None => format!("{} (not rolled out within {}s)", t.id(), timeout.as_secs()),
        })
        .collect();
    if left.is_empty() {
        println!(
            "{} workload(s) rolled out without the injection",
            targets.len()
        );
        Ok(())
    } else {
        Err(RemovalError::NotDone(left))
    }
}

/// Whether the pod template carries the injection. An opted-in workload the webhook did
/// not inject (its namespace not selected) is the team's as it is, and left alone.
fn carries_injection(kind: Kind, v: &Value) -> bool {
    Workload::from_value(kind, v.clone()).is_ok_and(|d| mutation::carries_injection(&d))
}

/// Writes the uninjected template of one workload, read afresh, with a test of its
/// resourceVersion so that a concurrent change is never overwritten (retried on conflict).
async fn update(client: &Client, t: &Target) -> Result<Option<i64>, String> {
    let api = t.api(client);
    let mut last = String::new();
    for _ in 0..5 {
        let current = api.get(&t.name).await.map_err(|e| e.to_string())?;
        let before = as_json(t.kind, &current);
        let mut after = before.clone();
        if !preview::uninject_object(&mut after).map_err(|e| e.to_string())? {
            return Ok(current.metadata.generation);
        }
        let mut ops = vec![json!({
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": current.resource_version(),
        })];
        let diff = serde_json::to_value(json_patch::diff(&before, &after)).unwrap_or_default();
        ops.extend(diff.as_array().cloned().unwrap_or_default());
        let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
            Ok(p) => p,
            Err(e) => return Err(e.to_string()),
        };
        let params = PatchParams {
            field_manager: Some("django-migrate-webhook-uninstall".into()),
            ..PatchParams::default()
        };
        match api.patch(&t.name, &params, &Patch::<()>::Json(patch)).await {
            Ok(updated) => return Ok(updated.metadata.generation),
            // The test failed: changed since it was read; read it again.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => last = s.message,
            Err(kube::Error::Api(s)) => return Err(s.message),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("changed on every attempt: {last}"))
}

/// Where a workload's update to `generation` stands.
#[derive(Debug, PartialEq, Eq)]
enum Rolled {
    Out,
    /// It will not replace its pods by itself: what to do.
    Held(&'static str),
    No,
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Whether the update of `generation` is complete: observed, every replica updated and
/// available, and no replica of an older template left. A CronJob's next Job takes the
/// new template: done at once.
fn rolled_out(kind: Kind, d: &Value, generation: Option<i64>) -> Rolled {
    if d.pointer("/status").is_none() && kind != Kind::CronJob {
        return Rolled::No;
    }
    let wanted = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let observed = |observed: i64| generation.is_none_or(|g| observed >= g);
    let done = match kind {
        Kind::CronJob | Kind::Job => true,
        Kind::Deployment => {
            if d.pointer("/spec/paused") == Some(&Value::Bool(true)) {
                return Rolled::Held(
                    "paused: its template has no injection; resume it to replace its pods",
                );
            }
            observed(int(d, "/status/observedGeneration"))
                && int(d, "/status/updatedReplicas") >= wanted
                && int(d, "/status/availableReplicas") >= wanted
                && int(d, "/status/replicas") <= wanted
        }
        Kind::StatefulSet => {
            if d.pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("OnDelete")
            {
                return Rolled::Held(
                    "OnDelete: its template has no injection; delete its pods to replace them",
                );
            }
            let current = d.pointer("/status/currentRevision");
            observed(int(d, "/status/observedGeneration"))
                && current.is_some()
                && current == d.pointer("/status/updateRevision")
                && int(d, "/status/updatedReplicas") >= wanted
                && int(d, "/status/readyReplicas") >= wanted
        }
        Kind::Rollout => {
            let paused = d.pointer("/spec/paused") == Some(&Value::Bool(true))
                || d.pointer("/status/phase").and_then(Value::as_str) == Some("Paused");
            if paused {
                return Rolled::Held(
                    "paused in its steps: its template has no injection; promote it to replace its pods",
                );
            }
            let current = d.pointer("/status/currentPodHash");
            let observed_generation = d
                .pointer("/status/observedGeneration")
                .and_then(Value::as_str)
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            observed(observed_generation)
                && current.is_some()
                && current == d.pointer("/status/stableRS")
                && int(d, "/status/availableReplicas") >= wanted
                && int(d, "/status/replicas") <= wanted
        }
    };
    if done { Rolled::Out } else { Rolled::No }
}

async fn wait_rolled_out(client: &Client, targets: &mut [Target], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        for t in targets.iter_mut().filter(|t| !t.done && t.error.is_none()) {
            match t.api(client).get_opt(&t.name).await {
                Ok(Some(d)) => match rolled_out(t.kind, &as_json(t.kind, &d), t.generation) {
                    Rolled::Out => {
                        t.done = true;
                        println!("{}: rolled out without the injection", t.id());
                    }
                    Rolled::Held(what) => {
                        t.done = true;
                        println!("{}: {what}", t.id());
                    }
                    Rolled::No => {}
                },
                Ok(None) => {
                    t.done = true;
                    println!("{}: deleted meanwhile", t.id());
                }
                Err(_) => {}
            }
        }
        if targets.iter().all(|t| t.done || t.error.is_some()) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_rolled_out_by_its_own_status() {
        let sts = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "currentRevision": "a", "updateRevision": "a",
                       "updatedReplicas": 2, "readyReplicas": 2}});
        assert_eq!(rolled_out(Kind::StatefulSet, &sts, Some(2)), Rolled::Out);
        let mut rolling = sts.clone();
        rolling["status"]["currentRevision"] = json!("b");
        assert_eq!(rolled_out(Kind::StatefulSet, &rolling, Some(2)), Rolled::No);
        rolling["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        assert!(matches!(
            rolled_out(Kind::StatefulSet, &rolling, Some(2)),
            Rolled::Held(_)
        ));
        assert_eq!(rolled_out(Kind::CronJob, &json!({}), Some(3)), Rolled::Out);
        let rollout = json!({"spec": {"replicas": 2},
            "status": {"observedGeneration": "4", "currentPodHash": "x", "stableRS": "y",
                       "availableReplicas": 2, "replicas": 3}});
        assert_eq!(rolled_out(Kind::Rollout, &rollout, Some(4)), Rolled::No);
        let mut paused = rollout.clone();
        paused["status"]["phase"] = json!("Paused");
        assert!(matches!(
            rolled_out(Kind::Rollout, &paused, Some(4)),
            Rolled::Held(_)
        ));
        let mut promoted = rollout;
        promoted["status"]["stableRS"] = json!("x");
        promoted["status"]["replicas"] = json!(2);
        assert_eq!(rolled_out(Kind::Rollout, &promoted, Some(4)), Rolled::Out);
    }
}
