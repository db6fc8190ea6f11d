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
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use thiserror::Error;
use tokio::sync::watch;

use crate::missed;
use crate::names::{
    CODE_CONTAINER, INJECTED_LABEL, MIGRATE_CONTAINER, READINESS_GATE, WAIT_CONTAINER, reason,
};
use crate::pod_states::{self, PodStates};
use crate::summary;
use crate::telemetry::{DeploymentLabels, Metrics};
use crate::watched::{Exit, StepStatus, WatchedPod};

/// Reconciles (so status patches) in flight at once.
const RECONCILE_CONCURRENCY: u16 = 8;

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
    /// Patch opted-in Deployments stored without the injection so that the API server
    /// sends them through the webhook again.
    pub heal_missed_injections: bool,
}

/// The condition the controller wants on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

fn has_gate(pod: &WatchedPod) -> bool {
    pod.spec.gated
}

fn status_of<'a>(pod: &'a WatchedPod, name: &str) -> Option<&'a StepStatus> {
    pod.step_status(name)
}

/// The condition message for a finished run: the summary's message (or the raw
/// termination message when it is not a summary), prefixed with the exit code on failure.
fn describe_exit(name: &str, exit: &Exit) -> String {
    match (exit.code, exit.message.as_deref()) {
        (0, Some(m)) => m.to_owned(),
        (0, None) => format!("init container {name} exited 0"),
        (c, Some(m)) => format!("exit code {c}: {m}"),
        (c, None) => format!("init container {name} exited with code {c}"),
    }
}

fn failed(name: &str, exit: &Exit) -> Desired {
    Desired {
        status: "False",
        reason: summary::failure_reason(exit.code, exit.phase.as_deref(), exit.result.as_deref()),
        message: describe_exit(name, exit),
    }
}

/// The condition a pod should carry, from its init container statuses. `None` for pods
/// without the gate (the `readiness-gate: "false"` escape hatch).
pub fn desired_condition(pod: &WatchedPod) -> Option<Desired> {
    if !has_gate(pod) {
        return None;
    }
    // The code copy comes first; when it fails, the step never starts.
    if let Some(copy) = status_of(pod, CODE_CONTAINER) {
        let ended = copy.terminated.as_ref().or(copy.last_terminated.as_ref());
        if let Some(exit) = ended.filter(|e| e.code != 0) {
            return Some(Desired {
                status: "False",
                reason: reason::CODE_COPY_FAILED,
                message: format!("{CODE_CONTAINER} {}", describe_exit(CODE_CONTAINER, exit)),
            });
        }
    }
    let Some(step) = [MIGRATE_CONTAINER, WAIT_CONTAINER]
        .into_iter()
        .find_map(|name| status_of(pod, name))
    else {
        return Some(Desired {
            status: "False",
            reason: reason::PENDING,
            message: "waiting for the init containers".to_owned(),
        });
    };
    let name = step.name;
    if let Some(exit) = &step.terminated {
        if exit.code != 0 {
            return Some(failed(name, exit));
        }
        return Some(Desired {
            status: "True",
            reason: reason::MIGRATED,
            message: describe_exit(name, exit),
        });
    }
    // A restarted step keeps its last failure until it succeeds.
    if let Some(exit) = step.last_terminated.as_ref().filter(|e| e.code != 0) {
        return Some(failed(name, exit));
    }
    Some(if step.running {
        Desired {
            status: "False",
            reason: reason::RUNNING,
            message: format!(
                "init container {name} is running: waiting for the database, the migration lock, or migrating (see its log)"
            ),
        }
    } else {
        Desired {
            status: "False",
            reason: reason::PENDING,
            message: format!("waiting for init container {name} to start"),
        }
    })
}

fn current_condition(pod: &WatchedPod) -> Option<&PodCondition> {
    pod.status.gate.as_ref()
}

struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    states: Arc<PodStates>,
}

async fn reconcile(pod: Arc<WatchedPod>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let Some(desired) = desired_condition(&pod) else {
        return Ok(Action::await_change());
    };
    ctx.states.set(
        pod_states::key(&pod),
        deployment_labels(&pod),
        desired.reason,
    );
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
    let failed_now = desired.status == "False"
        && summary::is_failure(desired.reason)
        && current.and_then(|c| c.reason.as_deref()) != Some(desired.reason);
    if became_true || failed_now {
        record_step(&ctx.metrics, &pod, failed_now.then_some(desired.reason));
    }
    let applied_here = became_true && applied_migrations(&pod);
    if failed_now || applied_here {
        publish_events(&ctx, &pod, &desired, failed_now).await;
    }
    Ok(Action::await_change())
}

/// How this pod's migrate step ended, if it did.
fn finished(pod: &WatchedPod) -> Option<&Exit> {
    status_of(pod, MIGRATE_CONTAINER)?.terminated.as_ref()
}

/// True when this pod's step applied migrations itself (not another pod).
fn applied_migrations(pod: &WatchedPod) -> bool {
    finished(pod).is_some_and(|e| e.applied)
}

/// True when this pod's step applied operations unsafe for the previous release.
fn applied_unsafe(pod: &WatchedPod) -> bool {
    finished(pod).is_some_and(|e| e.applied_unsafe)
}

/// The Deployment of a pod, for the metrics' labels: its ReplicaSet's name without the
/// pod-template hash (the last `-` segment, which never contains a `-`).
fn deployment_labels(pod: &WatchedPod) -> DeploymentLabels {
    let replica_set = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.as_str());
    DeploymentLabels {
        namespace: pod.namespace().unwrap_or_default(),
        deployment: replica_set
            .map(|rs| rs.rsplit_once('-').map_or(rs, |(d, _)| d))
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Counts a finished step once, when the controller records its outcome: its summary's
/// durations, migrations, retries and held-back operations, and the failure reason.
fn record_step(metrics: &Metrics, pod: &WatchedPod, failure: Option<&'static str>) {
    let labels = deployment_labels(pod);
    let step = [MIGRATE_CONTAINER, WAIT_CONTAINER]
        .into_iter()
        .find_map(|name| status_of(pod, name));
    if let Some(exit) = step.and_then(|s| s.terminated.as_ref().or(s.last_terminated.as_ref())) {
        metrics.observe_step(&labels, &exit.stats);
    }
    if let Some(reason) = failure {
        metrics.step_failed(&labels, reason);
    }
}

/// An Event on the pod and a summarised one on its Deployment.
async fn publish_events(ctx: &Context, pod: &WatchedPod, desired: &Desired, failed: bool) {
    let (type_, reason) = if failed {
        (EventType::Warning, desired.reason)
    } else if applied_unsafe(pod) {
        // `unsafe-migrations: warn`: applied, and the team is told what may break.
        (EventType::Warning, "UnsafeMigrationsApplied")
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
async fn deployment_of(ctx: &Context, pod: &WatchedPod) -> Option<ObjectReference> {
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

fn error_policy(_pod: Arc<WatchedPod>, error: &ControllerError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// Builds the Kubernetes client from the in-cluster config or `KUBECONFIG`; every request
/// it sends is counted by HTTP method (`django_migrate_controller_api_requests_total`), so
/// that its cost to the API server is known.
pub async fn client(metrics: Arc<Metrics>) -> Result<Client, ControllerError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| ControllerError::Client(kube::Error::InferConfig(e)))?;
    let count = tower::util::MapRequestLayer::new(
        move |request: axum::http::Request<kube::client::Body>| {
            metrics.api_request(request.method(), resource_of(request.uri().path()));
            request
        },
    );
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ControllerError::Client)?
        .with_layer(&count)
        .build())
}

/// The resource of an API path, for the request counter's label: `pods`, `pods/status`,
/// `leases`, `events`, ... (bounded: the kinds the controller touches).
fn resource_of(path: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "pods",
        "leases",
        "events",
        "replicasets",
        "deployments",
        "namespaces",
    ];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut found = "other";
    for (i, segment) in segments.iter().enumerate() {
        if let Some(kind) = KNOWN.iter().find(|k| *k == segment) {
            found = kind;
            if *kind == "pods" && segments.get(i + 2) == Some(&"status") {
                return "pods/status";
            }
        }
    }
    found
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
        let pods: Api<WatchedPod> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
        let (store, writer) = reflector::store();
        let states = Arc::new(PodStates::new(metrics.clone()));
        let observer = states.clone();
        let stream = watcher(pods, config)
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if let Ok(event) = event {
                    observer.observe(event);
                }
            })
            .applied_objects();
        // At most as many patches in flight as a client with 8 connections: predictable
        // load on the API server, and as fast as it accepts them (README, "Scale").
        let controller = Controller::for_stream(stream, store).with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        );
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(options.identity.clone()),
        };
        let deployments = missed::run(
            client.clone(),
            Recorder::new(client.clone(), reporter.clone()),
            metrics.clone(),
            options.heal_missed_injections,
        );
        let ctx = Arc::new(Context {
            client: client.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            metrics: metrics.clone(),
            states,
        });
        let running = controller
            .run(reconcile, error_policy, ctx)
            .for_each(|_| futures_util::future::ready(()));
        let stopping = tokio::select! {
            _ = async { tokio::join!(running, deployments) } => false,
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

    fn pod(init: serde_json::Value, gate: bool) -> WatchedPod {
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

    fn summary(code: i32, phase: &str, result: &str, message: &str, applied: &[&str]) -> String {
        json!({"mode": "migrate", "phase": phase, "result": result, "exit_code": code,
               "message": message, "applied": applied})
        .to_string()
    }

    #[test]
    fn requests_are_counted_by_the_resource_they_touch() {
        assert_eq!(
            resource_of("/api/v1/namespaces/n/pods/web-1/status"),
            "pods/status"
        );
        assert_eq!(resource_of("/api/v1/pods"), "pods");
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/n/leases/l"),
            "leases"
        );
        assert_eq!(
            resource_of("/apis/events.k8s.io/v1/namespaces/n/events"),
            "events"
        );
        assert_eq!(resource_of("/version"), "other");
    }

    #[test]
    fn success_copies_the_summary_message() {
        let done = summary(
            0,
            "done",
            "applied",
            "applied 2 migrations in 1.0s",
            &["a.0001", "a.0002"],
        );
        let p = pod(
            json!([
                status(
                    CODE_CONTAINER,
                    json!({"terminated": {"exitCode": 0}}),
                    json!({})
                ),
                status(
                    MIGRATE_CONTAINER,
                    json!({"terminated": {"exitCode": 0, "message": done}}),
                    json!({})
                )
            ]),
            true,
        );
        let d = desired_condition(&p).unwrap();
        assert_eq!((d.status, d.reason), ("True", reason::MIGRATED));
        assert_eq!(d.message, "applied 2 migrations in 1.0s");
        assert!(applied_migrations(&p));
    }

    #[test]
    fn failures_get_a_reason_per_cause() {
        let cases = [
            (
                summary(
                    2,
                    "migrating",
                    "failed",
                    "migration a.0002 failed: boom",
                    &[],
                ),
                reason::FAILED,
            ),
            (
                summary(
                    1,
                    "database",
                    "timeout",
                    "gave up: database not reachable",
                    &[],
                ),
                reason::DATABASE_UNREACHABLE,
            ),
            (
                summary(
                    1,
                    "lock",
                    "timeout",
                    "gave up waiting for the migration lock",
                    &[],
                ),
                reason::LOCK_TIMEOUT,
            ),
            (
                summary(3, "database", "credentials-rejected", "rejected", &[]),
                reason::CREDENTIALS_REJECTED,
            ),
            (
                summary(4, "setup", "not-found", "manage.py not found", &[]),
                reason::DJANGO_NOT_FOUND,
            ),
            (
                summary(5, "migrating", "unsafe-blocked", "held back", &[]),
                reason::UNSAFE_BLOCKED,
            ),
            (
                "Traceback (most recent call last): ...".to_owned(),
                reason::FAILED,
            ),
        ];
        for (message, expected) in cases {
            let code: i32 = crate::summary::Summary::parse(&message).map_or(2, |s| s.exit_code);
            let failed = json!({"terminated": {"exitCode": code, "message": message}});
            let p = pod(
                json!([status(MIGRATE_CONTAINER, failed.clone(), json!({}))]),
                true,
            );
            let d = desired_condition(&p).unwrap();
            assert_eq!((d.status, d.reason), ("False", expected), "{message}");
            assert!(
                d.message.starts_with(&format!("exit code {code}: ")),
                "{}",
                d.message
            );
            // A restarted step keeps its last failure until it succeeds.
            let p = pod(
                json!([status(
                    MIGRATE_CONTAINER,
                    json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                    failed
                )]),
                true,
            );
            assert_eq!(desired_condition(&p).unwrap().reason, expected);
        }
    }

    #[test]
    fn pending_running_and_copy_failure() {
        let p = pod(
            json!([status(MIGRATE_CONTAINER, json!({"running": {}}), json!({}))]),
            true,
        );
        assert_eq!(desired_condition(&p).unwrap().reason, reason::RUNNING);
        let p = pod(
            json!([status(MIGRATE_CONTAINER, json!({"waiting": {}}), json!({}))]),
            true,
        );
        assert_eq!(desired_condition(&p).unwrap().reason, reason::PENDING);
        let p = pod(json!(null), true);
        assert_eq!(desired_condition(&p).unwrap().reason, reason::PENDING);
        let p = pod(
            json!([status(
                CODE_CONTAINER,
                json!({"waiting": {}}),
                json!({"terminated": {"exitCode": 1, "message": "error: cannot write"}})
            )]),
            true,
        );
        let d = desired_condition(&p).unwrap();
        assert_eq!(d.reason, reason::CODE_COPY_FAILED);
        assert!(d.message.contains("cannot write"), "{}", d.message);
    }

    #[test]
    fn pods_without_the_gate_are_left_alone() {
        assert_eq!(desired_condition(&pod(json!([]), false)), None);
    }
}
