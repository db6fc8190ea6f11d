//! The pod reconciler: sets the condition `django-migrate.io/migrated` that the injected
//! readiness gate waits for, from the pod's [`StepState`].
//!
//! It patches `pods/status` only when the condition changes, sends Events once when a
//! step ends (on the pod and on its Deployment) and counts each finished step in the
//! step metrics once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use thiserror::Error;

use crate::names::{INJECTED_LABEL, MIGRATED_CONDITION, event};
use crate::pod_states::{self, PodMetrics, PodStates};
use crate::step::{Reason, StepState, StepStats};
use crate::telemetry::Chain;
use crate::text;
use crate::watched::{WatchedPod, WorkloadKey};
use crate::workload::Kind;

/// Reconciles (so status patches) in flight at once: as many as a client with 8
/// connections, for a predictable load on the API server (the book's "Performance and scale").
const RECONCILE_CONCURRENCY: u16 = 8;

/// Longest Event note; the API server refuses notes over 1 KiB.
const MAX_NOTE_BYTES: usize = 1000;

#[derive(Debug, Error)]
#[error("cannot patch the status of pod {namespace}/{name}")]
pub struct PatchError {
    namespace: String,
    name: String,
    source: kube::Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    #[prometheus(flatten)]
    workload: WorkloadKey,
    reason: &'static str,
}

type HistogramFamily = Family<WorkloadKey, Histogram, fn() -> Histogram>;

/// Seconds a Django step takes, or waits for the lock: from a check that finds nothing
/// to do to the default migrate timeout.
const STEP_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

/// Seconds from pod creation to the gate turning True: image pulls, the database wait
/// and the migrations themselves, so from seconds to the migrate timeout.
const TIME_TO_GATE_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// What the reconciler counts: finished steps by Deployment, and its own patches.
#[derive(Clone, Debug)]
pub struct GateMetrics {
    time_to_gate: Histogram,
    patch_errors: Counter,
    step_duration: HistogramFamily,
    lock_wait: HistogramFamily,
    applied: Family<WorkloadKey, Counter>,
    retries: Family<WorkloadKey, Counter>,
    failures: Family<FailureLabels, Counter>,
    held_back: Family<WorkloadKey, Counter>,
    fast_path: Family<WorkloadKey, Counter>,
    pods: PodMetrics,
}

impl GateMetrics {
    /// Registers the step metrics at the top and the controller's own under `controller_`.
    pub fn register(registry: &mut Registry) -> GateMetrics {
        let metrics = GateMetrics {
            time_to_gate: Histogram::new(TIME_TO_GATE_BUCKETS),
            patch_errors: Counter::default(),
            step_duration: Family::new_with_constructor(step_histogram),
            lock_wait: Family::new_with_constructor(step_histogram),
            applied: Family::default(),
            retries: Family::default(),
            failures: Family::default(),
            held_back: Family::default(),
            fast_path: Family::default(),
            pods: PodMetrics::default(),
        };
        registry.register(
            "step_duration_seconds",
            "Duration of finished Django steps (the summary's seconds.total), by Deployment",
            metrics.step_duration.clone(),
        );
        registry.register(
            "step_lock_wait_seconds",
            "Time finished Django steps waited for the migration lock or other pods' migrations",
            metrics.lock_wait.clone(),
        );
        registry.register(
            "migrations_applied",
            "Migrations applied by injected steps",
            metrics.applied.clone(),
        );
        registry.register(
            "lock_timeout_retries",
            "Migrations retried after a DDL statement hit the lock timeout",
            metrics.retries.clone(),
        );
        registry.register(
            "step_failures",
            "Django steps that ended in failure, by condition reason",
            metrics.failures.clone(),
        );
        registry.register(
            "unsafe_migrations_blocked",
            "Unsafe operations held back by unsafe-migrations: deny",
            metrics.held_back.clone(),
        );
        registry.register(
            "steps_fast_path",
            "Django steps that found nothing pending from their record, without starting Django",
            metrics.fast_path.clone(),
        );
        let controller = registry.sub_registry_with_prefix("controller");
        controller.register(
            "time_to_gate_seconds",
            "Time from pod creation to the migrated condition turning True",
            metrics.time_to_gate.clone(),
        );
        controller.register(
            "patch_errors",
            "Failed patches of pods/status",
            metrics.patch_errors.clone(),
        );
        GateMetrics {
            pods: PodMetrics::register(controller),
            ..metrics
        }
    }

    fn step_ended(&self, deployment: &WorkloadKey, stats: &StepStats) {
        self.step_duration
            .get_or_create(deployment)
            .observe(stats.seconds_total);
        self.lock_wait
            .get_or_create(deployment)
            .observe(stats.seconds_lock_wait);
        self.applied.get_or_create(deployment).inc_by(stats.applied);
        self.retries.get_or_create(deployment).inc_by(stats.retries);
        self.held_back
            .get_or_create(deployment)
            .inc_by(stats.held_back);
        let fast_path = self.fast_path.get_or_create(deployment);
        if stats.fast_path {
            fast_path.inc();
        }
    }

    /// One series of each labelled family, for tests that list what is exported.
    #[cfg(test)]
    pub(crate) fn touch(&self) {
        let d = WorkloadKey::default();
        self.step_ended(&d, &StepStats::default());
        self.step_failed(&d, Reason::Failed);
        self.pods.touch();
    }

    fn step_failed(&self, deployment: &WorkloadKey, reason: Reason) {
        self.failures
            .get_or_create(&FailureLabels {
                workload: deployment.clone(),
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// What the reconciler works with.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: GateMetrics,
    states: PodStates,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: GateMetrics) -> Context {
        Context {
            client,
            recorder,
            states: PodStates::new(metrics.pods.clone()),
            metrics,
        }
    }
}

/// The condition a pod should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    status: &'static str,
    reason: Reason,
    message: String,
}

/// Watches the injected pods (filtered by the API server on the injection's label) and
/// reconciles them until dropped.
pub async fn run(ctx: Context) {
    let pods: Api<WatchedPod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true"));
    let (store, writer) = reflector::store();
    let ctx = Arc::new(ctx);
    let observer = ctx.clone();
    let stream = watcher(pods, config)
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                observer.states.observe(event);
            }
        })
        .applied_objects();
    Controller::for_stream(stream, store)
        .with_config(Config::default().concurrency(RECONCILE_CONCURRENCY))
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

async fn reconcile(pod: Arc<WatchedPod>, ctx: Arc<Context>) -> Result<Action, PatchError> {
    let deployment = pod.workload();
    if !pod.spec.gated && !deployment.kind.runs_to_completion() {
        // The `readiness-gate: "false"` escape hatch: nothing waits on a condition. A
        // Job's pods have no gate either, but get the condition: it is what `status`
        // reads, and what counts each step's end once across leader changes.
        return Ok(Action::await_change());
    }
    let state = StepState::of_pod(&pod.status.init_container_statuses, pod.spec.code_removed());
    let desired = Desired {
        status: state.condition_status(),
        reason: state.reason(),
        message: state.message(),
    };
    ctx.states
        .set(pod_states::key(&pod), deployment.clone(), desired.reason);
    let current = pod.status.gate.as_ref();
    let unchanged = current.is_some_and(|c| {
        c.status == desired.status
            && c.reason.as_deref() == Some(desired.reason.as_str())
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
                "type": MIGRATED_CONDITION,
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
        ctx.metrics.patch_errors.inc();
        return Err(PatchError {
            namespace,
            name,
            source,
        });
    }
    tracing::info!(pod = %format!("{namespace}/{name}"), status = desired.status, reason = %desired.reason, "set {MIGRATED_CONDITION}");
    let became_true = desired.status == "True" && current.is_none_or(|c| c.status != "True");
    if became_true && let Some(created) = pod.metadata.creation_timestamp.as_ref() {
        let seconds = now.duration_since(created.0).as_secs_f64();
        ctx.metrics.time_to_gate.observe(seconds.max(0.0));
    }
    let failed_now = desired.reason.is_failure()
        && current.and_then(|c| c.reason.as_deref()) != Some(desired.reason.as_str());
    let exit = state.step_exit();
    if became_true || failed_now {
        if let Some(exit) = exit {
            ctx.metrics.step_ended(&deployment, &exit.stats);
        }
        if failed_now {
            ctx.metrics.step_failed(&deployment, desired.reason);
        }
    }
    let applied_here = became_true && exit.is_some_and(|e| e.applied);
    if failed_now || applied_here {
        let (type_, reason) = if failed_now {
            (EventType::Warning, desired.reason.as_str())
        } else if exit.is_some_and(|e| e.applied_unsafe) {
            // `unsafe-migrations: warn`: applied, and the team is told what may break.
            (EventType::Warning, event::UNSAFE_MIGRATIONS_APPLIED)
        } else {
            (EventType::Normal, event::MIGRATIONS_APPLIED)
        };
        publish_events(&ctx, &pod, &deployment, type_, reason, &desired.message).await;
    }
    Ok(Action::await_change())
}

/// An Event on the pod and one naming the pod on its workload (a CronJob's pod: on its
/// Job).
async fn publish_events(
    ctx: &Context,
    pod: &WatchedPod,
    workload: &WorkloadKey,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(text::cut_to(message, MAX_NOTE_BYTES)),
        action: "Migrate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::warn!(error = %Chain(&e), "cannot publish an event on the pod");
    }
    let Some(reference) = workload_reference(ctx, pod, workload).await else {
        return;
    };
    let on_workload = Event {
        note: Some(text::cut_to(
            &format!("pod {}: {message}", pod.name_any()),
            MAX_NOTE_BYTES,
        )),
        ..event
    };
    if let Err(e) = ctx.recorder.publish(&on_workload, &reference).await {
        tracing::warn!(error = %Chain(&e), "cannot publish an event on the pod's workload");
    }
}

/// A reference to the pod's workload, with its UID (which `kubectl describe` matches
/// Events by): a StatefulSet or Job is the pod's own owner; a Deployment or Rollout is
/// read once per Event (the pod's owner is its ReplicaSet).
async fn workload_reference(
    ctx: &Context,
    pod: &WatchedPod,
    key: &WorkloadKey,
) -> Option<ObjectReference> {
    if key.name.is_empty() {
        return None;
    }
    let reference = |kind: Kind, name: &str, uid: Option<String>| ObjectReference {
        api_version: Some(kind.api_version()),
        kind: Some(kind.as_str().into()),
        name: Some(name.to_owned()),
        namespace: Some(key.namespace.clone()),
        uid,
        ..ObjectReference::default()
    };
    if matches!(key.kind, Kind::StatefulSet | Kind::Job | Kind::CronJob) {
        let owner = pod.owner_references().first()?;
        let kind = if key.kind == Kind::StatefulSet {
            Kind::StatefulSet
        } else {
            Kind::Job
        };
        return Some(reference(kind, &owner.name, Some(owner.uid.clone())));
    }
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(key.kind.group(), key.kind.version(), key.kind.as_str()),
        key.kind.plural(),
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &key.namespace, &resource);
    match api.get_metadata(&key.name).await {
        Ok(d) => Some(reference(key.kind, &key.name, d.metadata.uid)),
        Err(e) => {
            tracing::debug!(error = %Chain(&e), workload = %format!("{} {}/{}", key.kind, key.namespace, key.name), "cannot read the workload of a pod");
            None
        }
    }
}

fn error_policy(_pod: Arc<WatchedPod>, error: &PatchError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %Chain(error), "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests;
