//! The readiness-gate controller: sets the pod condition `django-migrate.io/migrated`
//! from the state of the pod's migrate (or wait-for-migrations) init container.
//!
//! Without it every injected pod stays unready, so it runs in the same binary as the
//! webhook (`serve --controller`). It watches only pods carrying the injection's
//! pod-template label, patches `pods/status` only when the condition changes, and only
//! while it holds a `coordination.k8s.io/v1` Lease, so that of several replicas exactly
//! one writes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ContainerStatus, ObjectReference, Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use thiserror::Error;
use tokio::sync::watch;

use crate::injected::{INJECTED_LABEL, MIGRATE, READINESS_GATE, WAIT_FOR_DB, WAIT_FOR_MIGRATIONS};
use crate::telemetry::Metrics;

/// Name this controller reports in Events and field managers.
pub const CONTROLLER_NAME: &str = "django-migrate-webhook";

#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot set up the leader-election Lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("cannot patch the status of pod {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// How the controller elects its leader.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    pub lease_namespace: String,
    pub lease_name: String,
    /// Unique per replica (the pod name in a cluster).
    pub identity: String,
    /// Seconds a leader's claim lasts without renewal: the longest takeover time.
    pub lease_duration: u64,
    /// Seconds before expiry at which the leader renews.
    pub lease_grace: u64,
}

/// The condition the controller wants on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

fn has_gate(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == READINESS_GATE))
}

fn status_of<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == name)
}

/// `exit code N: message`, or the message alone for exit code 0.
fn describe_exit(name: &str, code: i32, message: Option<&str>) -> String {
    let message = message.map(str::trim).filter(|m| !m.is_empty());
    match (code, message) {
        (0, Some(m)) => m.to_owned(),
        (0, None) => format!("init container {name} exited 0"),
        (c, Some(m)) => format!("exit code {c}: {m}"),
        (c, None) => format!("init container {name} exited with code {c}"),
    }
}

/// The condition a pod should carry, from its init container statuses. `None` for pods
/// without the gate (the `readiness-gate: "false"` escape hatch).
pub fn desired_condition(pod: &Pod) -> Option<Desired> {
    if !has_gate(pod) {
        return None;
    }
    let step = [MIGRATE, WAIT_FOR_MIGRATIONS]
        .into_iter()
        .find_map(|name| status_of(pod, name).map(|s| (name, s)));
    if let Some((name, status)) = step {
        let state = status.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let message = describe_exit(name, t.exit_code, t.message.as_deref());
            return Some(if t.exit_code == 0 {
                Desired {
                    status: "True",
                    reason: "Migrated",
                    message,
                }
            } else {
                Desired {
                    status: "False",
                    reason: "MigrationFailed",
                    message,
                }
            });
        }
        // A restarted init container keeps its last failure until it succeeds.
        if let Some(t) = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
        {
            return Some(Desired {
                status: "False",
                reason: "MigrationFailed",
                message: describe_exit(name, t.exit_code, t.message.as_deref()),
            });
        }
        let running = state.is_some_and(|s| s.running.is_some());
        return Some(Desired {
            status: "False",
            reason: "MigrationsPending",
            message: if running {
                format!("init container {name} is running")
            } else {
                format!("waiting for init container {name}")
            },
        });
    }
    // The database wait comes first; say why it has not finished.
    let wait = status_of(pod, WAIT_FOR_DB);
    let failed = wait.and_then(|s| {
        let terminated = s.state.as_ref().and_then(|st| st.terminated.as_ref());
        let last = s.last_state.as_ref().and_then(|st| st.terminated.as_ref());
        terminated.or(last).filter(|t| t.exit_code != 0)
    });
    Some(Desired {
        status: "False",
        reason: "MigrationsPending",
        message: match failed {
            Some(t) => format!(
                "{WAIT_FOR_DB} {}",
                describe_exit(WAIT_FOR_DB, t.exit_code, t.message.as_deref())
            ),
            None => "waiting for the init containers".to_owned(),
        },
    })
}

fn current_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == READINESS_GATE)
}

struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    store: Store<Pod>,
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let Some(desired) = desired_condition(&pod) else {
        return Ok(Action::await_change());
    };
    ctx.metrics.set_pods_gated(count_gated(&ctx.store));
    let current = current_condition(&pod);
    let unchanged = current.is_some_and(|c| {
        c.status == desired.status
            && c.reason.as_deref() == Some(desired.reason)
            && c.message.as_deref() == Some(desired.message.as_str())
    });
    if unchanged {
        return Ok(Action::await_change());
    }
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let now = Timestamp::now();
    let transition = match current {
        Some(c) if c.status == desired.status => c.last_transition_time.clone().map(|t| t.0),
        _ => None,
    }
    .unwrap_or(now);
    // Strategic merge on pods/status: conditions merge by type, the others are kept.
    let patch = json!({
        "status": {
            "conditions": [{
                "type": READINESS_GATE,
                "status": desired.status,
                "reason": desired.reason,
                "message": desired.message,
                "lastTransitionTime": transition.to_string(),
                "lastProbeTime": null,
            }]
        }
    });
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(source) = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        ctx.metrics.patch_error();
        return Err(ControllerError::Patch {
            namespace,
            name,
            source,
        });
    }
    tracing::info!(pod = %format!("{namespace}/{name}"), status = desired.status, reason = desired.reason, "set {READINESS_GATE}");
    let became_true = desired.status == "True" && current.is_none_or(|c| c.status != "True");
    if became_true && let Some(created) = pod.metadata.creation_timestamp.as_ref() {
        let seconds = now.duration_since(created.0).as_secs_f64();
        ctx.metrics.observe_time_to_gate(seconds.max(0.0));
    }
    let failed_now = desired.reason == "MigrationFailed"
        && current.and_then(|c| c.reason.as_deref()) != Some("MigrationFailed");
    let applied_here = became_true && applied_migrations(&desired.message);
    if failed_now || applied_here {
        publish_events(&ctx, &pod, &desired, failed_now).await;
    }
    Ok(Action::await_change())
}

/// True when this pod's summary says it applied migrations itself.
fn applied_migrations(message: &str) -> bool {
    message.starts_with("migrate: applied ") && !message.contains("by another pod")
}

fn count_gated(store: &Store<Pod>) -> i64 {
    store
        .state()
        .iter()
        .filter(|p| has_gate(p) && current_condition(p).is_none_or(|c| c.status != "True"))
        .count() as i64
}

/// An Event on the pod and a summarised one on its Deployment.
async fn publish_events(ctx: &Context, pod: &Pod, desired: &Desired, failed: bool) {
    let (type_, reason) = if failed {
        (EventType::Warning, "MigrationFailed")
    } else {
        (EventType::Normal, "MigrationsApplied")
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(&desired.message, 1000)),
        action: "Migrate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event on the pod");
    }
    let Some(deployment) = deployment_of(ctx, pod).await else {
        return;
    };
    let summary = Event {
        note: Some(truncate(
            &format!("pod {}: {}", pod.name_any(), desired.message),
            1000,
        )),
        ..event
    };
    if let Err(e) = ctx.recorder.publish(&summary, &deployment).await {
        tracing::warn!(error = %e, "cannot publish an event on the Deployment");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// The Deployment that owns the pod's ReplicaSet.
async fn deployment_of(ctx: &Context, pod: &Pod) -> Option<ObjectReference> {
    let namespace = pod.namespace()?;
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let rs = match replica_sets.get(&owner.name).await {
        Ok(rs) => rs,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the ReplicaSet of pod {}", pod.name_any());
            return None;
        }
    };
    let d = rs
        .owner_references()
        .iter()
        .find(|o| o.kind == "Deployment" && o.controller == Some(true))?;
    Some(ObjectReference {
        api_version: Some(d.api_version.clone()),
        kind: Some(d.kind.clone()),
        name: Some(d.name.clone()),
        namespace: Some(namespace),
        uid: Some(d.uid.clone()),
        ..Default::default()
    })
}

fn error_policy(_pod: Arc<Pod>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// Builds the Kubernetes client from the in-cluster config or `KUBECONFIG`.
pub async fn client() -> Result<Client, ControllerError> {
    Client::try_default().await.map_err(ControllerError::Client)
}

/// Runs until `stop` turns true: waits for the Lease, reconciles while holding it, and
/// releases it on the way out so that another replica takes over at once.
pub async fn run(
    client: Client,
    options: ControllerOptions,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    let lease_error = |source| ControllerError::Lease {
        namespace: options.lease_namespace.clone(),
        name: options.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
        .with_namespace(&options.lease_namespace)
        .with_identity(&options.identity)
        .with_duration(options.lease_duration)
        .with_grace(options.lease_grace)
        .with_field_manager(format!("{CONTROLLER_NAME}-{}", options.identity))
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(
        identity = %options.identity,
        lease = %format!("{}/{}", options.lease_namespace, options.lease_name),
        "controller waiting for the lease"
    );
    loop {
        tokio::select! {
            changed = leader.wait_for(|l| *l) => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        tracing::info!(identity = %options.identity, "holding the lease: reconciling pods");
        metrics.set_leader(true);
        let pods: Api<Pod> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
        let controller = Controller::new(pods, config);
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(options.identity.clone()),
        };
        let ctx = Arc::new(Context {
            client: client.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            metrics: metrics.clone(),
            store: controller.store(),
        });
        let running = controller
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures_util::future::ready(()));
        let stopping = tokio::select! {
            _ = running => false,
            _ = leader.wait_for(|l| !*l) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        metrics.set_leader(false);
        if stopping {
            break;
        }
        tracing::warn!(identity = %options.identity, "lost the lease: stopped reconciling");
    }
    // Closing the channel makes the lease task release the Lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot release the lease"),
        _ => tracing::warn!("the lease was not released in time"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: serde_json::Value, gate: bool) -> Pod {
        let gates = if gate {
            json!([{"conditionType": READINESS_GATE}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "web", "image": "x"}], "readinessGates": gates},
            "status": {"initContainerStatuses": init},
        }))
        .unwrap()
    }

    fn status(name: &str, state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": state, "lastState": last})
    }

    #[test]
    fn success_copies_the_summary() {
        let p = pod(
            json!([
                status(
                    WAIT_FOR_DB,
                    json!({"terminated": {"exitCode": 0}}),
                    json!({})
                ),
                status(
                    MIGRATE,
                    json!({"terminated": {"exitCode": 0, "message": "migrate: applied 2 migrations"}}),
                    json!({})
                )
            ]),
            true,
        );
        let d = desired_condition(&p).unwrap();
        assert_eq!((d.status, d.reason), ("True", "Migrated"));
        assert_eq!(d.message, "migrate: applied 2 migrations");
        assert!(applied_migrations(&d.message));
    }

    #[test]
    fn failure_and_restart_report_the_exit_code() {
        let failed =
            json!({"terminated": {"exitCode": 2, "message": "migrate: migration a.0002 failed"}});
        let p = pod(json!([status(MIGRATE, failed.clone(), json!({}))]), true);
        let d = desired_condition(&p).unwrap();
        assert_eq!((d.status, d.reason), ("False", "MigrationFailed"));
        assert_eq!(d.message, "exit code 2: migrate: migration a.0002 failed");
        let p = pod(
            json!([status(
                MIGRATE,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                failed
            )]),
            true,
        );
        assert_eq!(desired_condition(&p).unwrap().reason, "MigrationFailed");
    }

    #[test]
    fn pending_says_what_it_waits_for() {
        let p = pod(
            json!([status(MIGRATE, json!({"running": {}}), json!({}))]),
            true,
        );
        let d = desired_condition(&p).unwrap();
        assert_eq!((d.status, d.reason), ("False", "MigrationsPending"));
        assert_eq!(d.message, "init container django-migrate is running");
        let p = pod(
            json!([status(
                WAIT_FOR_DB,
                json!({"waiting": {}}),
                json!({"terminated": {"exitCode": 3, "message": "wait-for-db: rejected"}})
            )]),
            true,
        );
        assert_eq!(
            desired_condition(&p).unwrap().message,
            "django-wait-for-db exit code 3: wait-for-db: rejected"
        );
        let p = pod(json!(null), true);
        assert_eq!(
            desired_condition(&p).unwrap().message,
            "waiting for the init containers"
        );
    }

    #[test]
    fn pods_without_the_gate_are_left_alone() {
        assert_eq!(desired_condition(&pod(json!([]), false)), None);
    }
}
