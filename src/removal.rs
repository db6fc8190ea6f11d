//! `remove-injection`: what the chart's pre-delete hook runs before `helm uninstall`
//! removes the controller. Every Deployment that is opted in or carries the injection
//! gets its own pod template back (as `uninject` writes it, the opt-in label set to
//! `"false"`), and the hook waits until each has rolled out, so that no current or future
//! pod waits for a readiness gate that nobody will set once the controller is gone. The
//! webhook and the controller still run meanwhile: the old pods keep their gate satisfied
//! while the new ones, without gate or step, replace them; nothing migrates.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{mutation, preview};

#[derive(Debug, Error)]
pub enum RemovalError {
    #[error("cannot list Deployments")]
    List(#[source] kube::Error),
    #[error("{} Deployment(s) still carry the injection or have not rolled out: {}", .0.len(), .0.join(", "))]
    NotDone(Vec<String>),
}

/// One Deployment's removal, as reported.
#[derive(Debug)]
struct Target {
    namespace: String,
    name: String,
    /// The generation the removal's update made; rolled out once observed and complete.
    generation: Option<i64>,
    error: Option<String>,
    done: bool,
}

impl Target {
    fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Removes the injection from every Deployment of the cluster and waits, at most
/// `timeout`, until each has rolled out. Progress goes to stdout, one line per event.
pub async fn remove_all(client: &Client, timeout: Duration) -> Result<(), RemovalError> {
    let all: Api<Deployment> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default())
        .await
        .map_err(RemovalError::List)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut targets = Vec::new();
    for d in list.items {
        if !carries_injection(&d) {
            continue;
        }
        // A namespace being deleted takes its Deployments with it, and admits no new pods.
        let namespace = d.namespace().unwrap_or_default();
        if let Ok(Some(ns)) = namespaces.get_opt(&namespace).await
            && ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
        {
            println!(
                "{namespace}/{}: skipped, its namespace is being deleted",
                d.name_any()
            );
            continue;
        }
        let mut target = Target {
            namespace: d.namespace().unwrap_or_default(),
            name: d.name_any(),
            generation: None,
            error: None,
            done: false,
        };
        match update(client, &target.namespace, &target.name).await {
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
    if targets.is_empty() {
        println!("no Deployment is opted in or carries the injection");
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
            "{} Deployment(s) rolled out without the injection",
            targets.len()
        );
        Ok(())
    } else {
        Err(RemovalError::NotDone(left))
    }
}

/// Whether the pod template carries the injection. An opted-in Deployment the webhook did
/// not inject (its namespace not selected) is the team's as it is, and left alone.
fn carries_injection(d: &Deployment) -> bool {
    serde_json::to_value(d)
        .ok()
        .and_then(|v| serde_json::from_value::<crate::workload::Workload>(v).ok())
        .is_some_and(|d| mutation::carries_injection(&d))
}

/// Writes the uninjected template of one Deployment, read afresh, with a test of its
/// resourceVersion so that a concurrent change is never overwritten (retried on conflict).
async fn update(client: &Client, namespace: &str, name: &str) -> Result<Option<i64>, String> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut last = String::new();
    for _ in 0..5 {
        let current = api.get(name).await.map_err(|e| e.to_string())?;
        let before = serde_json::to_value(&current).map_err(|e| e.to_string())?;
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
        match api.patch(name, &params, &Patch::<()>::Json(patch)).await {
            Ok(updated) => return Ok(updated.metadata.generation),
            // The test failed: changed since it was read; read it again.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => last = s.message,
            Err(kube::Error::Api(s)) => return Err(s.message),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("changed on every attempt: {last}"))
}

/// Whether a Deployment's rollout of `generation` is complete: observed, every replica
/// updated and available, and no replica of an older template left.
fn rolled_out(d: &Deployment, generation: Option<i64>) -> bool {
    let Some(status) = &d.status else {
        return false;
    };
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    if paused {
        return true;
    }
    status.observed_generation >= generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.available_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) <= wanted
}

async fn wait_rolled_out(client: &Client, targets: &mut [Target], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        for t in targets.iter_mut().filter(|t| !t.done && t.error.is_none()) {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &t.namespace);
            match api.get_opt(&t.name).await {
                Ok(Some(d)) if rolled_out(&d, t.generation) => {
                    t.done = true;
                    let paused = d.spec.and_then(|s| s.paused).unwrap_or(false);
                    if paused {
                        println!(
                            "{}: paused: its template has no injection; resume it to replace its pods",
                            t.id()
                        );
                    } else {
                        println!("{}: rolled out without the injection", t.id());
                    }
                }
                Ok(None) => {
                    t.done = true;
                    println!("{}: deleted meanwhile", t.id());
                }
                _ => {}
            }
        }
        if targets.iter().all(|t| t.done || t.error.is_some()) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
