//! The contract run: deferred migrations applied once no pod of the previous release is
//! left.
//!
//! The leader watches opted-in Deployments, StatefulSets and Argo Rollouts. When one's
//! update is complete (a Rollout: fully promoted), every pod it selects (terminating ones
//! included) comes from one pod template, the steps of those
//! pods left migrations for the contract run (their summaries' `deferred`), and the
//! longest `delay` (django-safemigrate's, or `django-migrate.io/contract-delay`) has passed
//! since the rollout completed, it creates one Job ([`contract_job`]) named after the pod
//! template, so a template is contracted at most once and `AlreadyExists` means done. A
//! rollout that starts before that point delays it: the new release's steps decide again
//! what waits. With Jobs off (the chart's default) it only reports what waits and how to
//! apply it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use thiserror::Error;

use crate::contract_job::{self, NoContractJob};
use crate::names::{
    CONTRACT_FOR_LABEL, CONTRACT_RELEASE_ANNOTATION, CONTRACTED_RELEASES, CONTROLLER_NAME,
    INJECT_LABEL, MIGRATE_CONTAINER, event,
};
use crate::settings::Settings;
use crate::summary::Summary;
use crate::telemetry::Chain;
use crate::text;
use crate::watched::WorkloadKey;
use crate::workload::Kind;

/// How often a Deployment whose older pods are still terminating is looked at again (their
/// going away changes nothing the watch sees).
const OLD_PODS_RECHECK: Duration = Duration::from_secs(5);

/// Longest Event note; the API server refuses notes over 1 KiB.
const MAX_NOTE_BYTES: usize = 1000;

#[derive(Debug, Error)]
pub enum ContractError {
    #[error("cannot list the pods of {0}")]
    ListPods(String, #[source] kube::Error),
    #[error("cannot read the contract Job {0}")]
    ReadJob(String, #[source] kube::Error),
    #[error("cannot create the contract Job {0}")]
    CreateJob(String, #[source] kube::Error),
    #[error("cannot build the contract Job of {0}")]
    Serialize(String, #[source] serde_json::Error),
}

type DeploymentLabels = WorkloadKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    #[prometheus(flatten)]
    workload: WorkloadKey,
    result: &'static str,
}

/// What the contract reconciler exports; the gauges are the leader's and cleared when it
/// steps down.
#[derive(Clone, Debug, Default)]
pub struct ContractMetrics {
    pending_since: Family<DeploymentLabels, Gauge>,
    failed: Family<DeploymentLabels, Gauge>,
    runs: Family<RunLabels, Counter>,
}

impl ContractMetrics {
    pub fn register(registry: &mut Registry) -> ContractMetrics {
        let metrics = ContractMetrics::default();
        registry.register(
            "contract_pending_since_timestamp_seconds",
            "When deferred migrations became due for the contract run (rollout complete, older pods gone, delay passed) and have not been applied since, by Deployment",
            metrics.pending_since.clone(),
        );
        registry.register(
            "contract_failed",
            "1 while the contract Job of a Deployment's current pod template has failed",
            metrics.failed.clone(),
        );
        registry.register(
            "contract_runs",
            "Contract Jobs that ended, by result (applied, failed)",
            metrics.runs.clone(),
        );
        metrics
    }

    #[cfg(test)]
    pub(crate) fn touch(&self) {
        let labels = DeploymentLabels::default();
        let _ = self.pending_since.get_or_create(&labels);
        let _ = self.failed.get_or_create(&labels);
        let _ = self.runs.get_or_create(&RunLabels {
            workload: labels,
            result: "applied",
        });
    }
}

/// Where a Deployment's contract stands, as last reported (Events are sent on change).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    Waiting { job: String },
    Due { job: String },
    Running { job: String },
    Applied { job: String },
    Failed { job: String },
}

/// What the reconciler works with.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: ContractMetrics,
    /// Create Jobs (the chart's `controller.contractJobs`); else only report.
    create_jobs: bool,
    stages: Mutex<HashMap<String, Stage>>,
}

impl Drop for Context {
    fn drop(&mut self) {
        self.metrics.pending_since.clear();
        self.metrics.failed.clear();
    }
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: ContractMetrics,
        create_jobs: bool,
    ) -> Context {
        Context {
            client,
            recorder,
            metrics,
            create_jobs,
            stages: Mutex::new(HashMap::new()),
        }
    }

    /// Records `stage`; true when it differs from the last one recorded.
    fn enter(&self, key: &str, stage: Stage) -> bool {
        let mut stages = self
            .stages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stages.insert(key.to_owned(), stage.clone()) != Some(stage)
    }

    fn forget(&self, key: &str) {
        self.stages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

/// Where the workload's update stands.
#[derive(Debug, PartialEq)]
enum Rollout {
    InProgress,
    /// Complete; when its controller said so, if it did.
    Complete(Option<Timestamp>),
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// When the condition of `type_` (with `reason`, if given) last changed to True.
fn condition_time(v: &Value, type_: &str, reason: Option<&str>) -> Option<Timestamp> {
    let conditions = v.pointer("/status/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| {
        c["type"] == type_ && c["status"] == "True" && reason.is_none_or(|r| c["reason"] == r)
    })?;
    let time = text_at(c, "/lastUpdateTime").or_else(|| text_at(c, "/lastTransitionTime"))?;
    time.parse().ok()
}

/// Whether the update of a workload of `kind` (as JSON) is complete: every replica of
/// the new template, and none of an older one, serving. A StatefulSet in a partitioned or
/// `OnDelete` update, and a Rollout paused, in its canary steps or not yet promoted
/// (blue-green), are in progress.
fn rollout(kind: Kind, d: &Value) -> Rollout {
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = int(d, "/metadata/generation");
    let complete = match kind {
        Kind::Deployment => {
            int(d, "/status/observedGeneration") >= generation
                && int(d, "/status/updatedReplicas") == want
                && int(d, "/status/replicas") == want
                && int(d, "/status/availableReplicas") == want
        }
        Kind::StatefulSet => {
            let current = text_at(d, "/status/currentRevision");
            int(d, "/status/observedGeneration") >= generation
                && current.is_some()
                && current == text_at(d, "/status/updateRevision")
                && int(d, "/status/updatedReplicas") == want
                && int(d, "/status/replicas") == want
                && int(d, "/status/readyReplicas") == want
        }
        Kind::Rollout => {
            // Argo writes its observed generation as a string.
            let observed = text_at(d, "/status/observedGeneration")
                .and_then(|g| g.parse::<i64>().ok())
                .unwrap_or(0);
            let current = text_at(d, "/status/currentPodHash");
            let blue_green = d.pointer("/spec/strategy/blueGreen").is_some();
            observed >= generation
                && d.pointer("/spec/paused") != Some(&Value::Bool(true))
                && current.is_some()
                && current == text_at(d, "/status/stableRS")
                && (!blue_green || current == text_at(d, "/status/blueGreen/activeSelector"))
                && int(d, "/status/updatedReplicas") == want
                && int(d, "/status/replicas") == want
                && int(d, "/status/availableReplicas") == want
        }
        Kind::Job | Kind::CronJob => false,
    };
    if !complete || want == 0 {
        return Rollout::InProgress;
    }
    Rollout::Complete(match kind {
        Kind::Deployment => condition_time(d, "Progressing", Some("NewReplicaSetAvailable")),
        Kind::Rollout => condition_time(d, "Completed", None),
        _ => None,
    })
}

/// When the newest of the pods turned Ready: when an update without a condition of its
/// own (a StatefulSet's) completed.
fn newest_ready(pods: &[Pod]) -> Option<Timestamp> {
    pods.iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .max()
}

/// What the current pods' steps left for the contract run.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Deferred {
    pub count: u64,
    pub names: BTreeSet<String>,
    /// The longest `delay`, in seconds.
    pub delay: f64,
}

/// The summaries of the pods' finished migrate steps.
pub(crate) fn deferred(pods: &[Pod]) -> Deferred {
    let mut out = Deferred::default();
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref());
        let Some(step) = statuses
            .into_iter()
            .flatten()
            .find(|s| s.name == MIGRATE_CONTAINER)
        else {
            continue;
        };
        let Some(summary) = step
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code == 0)
            .and_then(|t| t.message.as_deref())
            .and_then(Summary::parse)
        else {
            continue;
        };
        out.count = out.count.max(summary.deferred_count());
        out.names
            .extend(summary.deferred.iter().map(|d| d.migration.clone()));
        out.delay = out.delay.max(summary.contract_delay_seconds.unwrap_or(0.0));
    }
    out
}

/// The pods' templates (by the label their controller names it in, `release_label`),
/// terminating pods included.
fn templates<'a>(pods: &'a [Pod], release_label: &str) -> BTreeSet<&'a str> {
    pods.iter()
        .filter_map(|p| p.labels().get(release_label).map(String::as_str))
        .collect()
}

fn names(d: &Deferred) -> String {
    let list: Vec<&str> = d.names.iter().map(String::as_str).take(10).collect();
    let more = d.count.saturating_sub(list.len() as u64);
    if more > 0 {
        format!("{} and {more} more", list.join(", "))
    } else {
        list.join(", ")
    }
}

/// How a Job ended, if it did.
fn outcome(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let done = c.status == "True";
        match c.type_.as_str() {
            "Complete" if done => Some((true, String::new())),
            "Failed" if done => Some((
                false,
                [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
            )),
            _ => None,
        }
    })
}

/// The summary of the Job's step (else its raw termination message), from its newest pod
/// whose step ended.
pub async fn job_step_summary(client: &Client, namespace: &str, job: &str) -> Option<Summary> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .ok()?;
    let mut items = list.items;
    items.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    items.iter().rev().find_map(|p| {
        let status = p.status.as_ref()?.container_statuses.as_ref()?;
        let t = status
            .iter()
            .find(|s| s.name == MIGRATE_CONTAINER)?
            .state
            .as_ref()?
            .terminated
            .as_ref()?;
        let message = t.message.as_deref()?;
        Some(Summary::parse(message).unwrap_or_else(|| Summary {
            exit_code: t.exit_code,
            message: message.trim().to_owned(),
            ..Summary::default()
        }))
    })
}

/// Where a contract Job stands: `running`, `applied`, or `failed` with why.
pub fn job_state(job: &Job) -> (&'static str, Option<String>) {
    match outcome(job) {
        None => ("running", None),
        Some((true, _)) => ("applied", None),
        Some((false, why)) => ("failed", Some(why)),
    }
}

async fn job_summary(ctx: &Context, namespace: &str, job: &str) -> Option<String> {
    job_step_summary(&ctx.client, namespace, job)
        .await
        .map(|s| s.message)
}

/// An opted-in workload as the reconciler works on it.
struct Target {
    kind: Kind,
    name: String,
    /// Its object, as JSON.
    object: Value,
    /// Where its Events go.
    reference: ObjectReference,
}

async fn publish(ctx: &Context, d: &Target, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(text::cut_to(&note, MAX_NOTE_BYTES)),
        action: "Contract".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &d.reference).await {
        tracing::warn!(error = %Chain(&e), "cannot publish an event on the {}", d.kind);
    }
}

/// The contract phase of one kind of workload: what its controller reconciles with.
struct Watched {
    ctx: Arc<Context>,
    kind: Kind,
    resource: ApiResource,
}

async fn reconcile(d: Arc<DynamicObject>, w: Arc<Watched>) -> Result<Action, ContractError> {
    let ctx = w.ctx.as_ref();
    let kind = w.kind;
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let key = format!("{kind} {namespace}/{name}");
    let labels = DeploymentLabels {
        namespace: namespace.clone(),
        name: name.clone(),
        kind,
    };
    let mut object =
        serde_json::to_value(d.as_ref()).map_err(|e| ContractError::Serialize(key.clone(), e))?;
    object["apiVersion"] = kind.api_version().into();
    object["kind"] = kind.as_str().into();
    let target = Target {
        kind,
        name: name.clone(),
        reference: d.object_ref(&w.resource),
        object,
    };
    let job = match contract_job::contract_job(&target.object, d.metadata.uid.as_deref()) {
        Ok(job) => job,
        Err(
            NoContractJob::NotInjected
            | NoContractJob::WaitMode
            | NoContractJob::NoName
            | NoContractJob::NoContractPhase(_),
        ) => {
            ctx.forget(&key);
            ctx.metrics.pending_since.remove(&labels);
            return Ok(Action::await_change());
        }
    };
    let job_name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let Rollout::Complete(completed) = rollout(kind, &target.object) else {
        // An update in progress: what waits is decided again by the new release's steps.
        return Ok(Action::await_change());
    };
    let Some(selector) = target
        .object
        .pointer("/spec/selector")
        .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
        .and_then(|s| Selector::try_from(s).ok())
    else {
        return Ok(Action::await_change());
    };
    // Every pod the workload selects, terminating ones and ones from before the injection
    // included: each is a release still serving.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|e| ContractError::ListPods(key.clone(), e))?
        .items;
    let deferred = deferred(&pods);

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    // With Jobs off the controller may not read them: then a Job applied by hand is not
    // seen, and the contract stays reported as due until new pods find nothing deferred.
    let existing = match jobs.get_opt(&job_name).await {
        Ok(job) => job,
        Err(kube::Error::Api(s)) if s.code == 403 && !ctx.create_jobs => None,
        Err(e) => return Err(ContractError::ReadJob(job_name.clone(), e)),
    };
    if let Some(existing) = existing {
        return Ok(report_job(
            ctx, &w, &target, &key, &labels, &existing, &job_name, &deferred,
        )
        .await);
    }
    if deferred.count == 0 {
        ctx.forget(&key);
        ctx.metrics.pending_since.remove(&labels);
        return Ok(Action::await_change());
    }
    if templates(&pods, kind.release_label()).len() > 1 {
        tracing::debug!(workload = %key, "pods of an older release are still terminating");
        return Ok(Action::requeue(OLD_PODS_RECHECK));
    }
    let completed = completed.or_else(|| newest_ready(&pods));

    let settings = Settings::for_kind(kind, d.metadata.annotations.as_ref()).unwrap_or_default();
    // A summary is the pod's word: a delay beyond a year (or below zero) is bounded.
    let delay = deferred
        .delay
        .max(f64::from(settings.contract_delay))
        .clamp(0.0, 365.0 * 86_400.0);
    let due = completed.map(|t| {
        t.checked_add(Duration::from_secs_f64(delay.max(0.0)))
            .unwrap_or(t)
    });
    let pending = Pending {
        key,
        labels,
        what: format!(
            "{} deferred migration(s): {}",
            deferred.count,
            names(&deferred)
        ),
        job_name,
        delay,
    };
    start(ctx, &target, &jobs, pending, due, job).await
}

/// Deferred migrations that wait for a contract run that has not started.
struct Pending {
    key: String,
    labels: DeploymentLabels,
    /// How many wait, and their names.
    what: String,
    job_name: String,
    delay: f64,
}

/// Starts the contract run once it is due (or says that Jobs are off); else waits.
async fn start(
    ctx: &Context,
    d: &Target,
    jobs: &Api<Job>,
    p: Pending,
    due: Option<Timestamp>,
    job: serde_json::Value,
) -> Result<Action, ContractError> {
    let Pending {
        key,
        labels,
        what,
        job_name,
        delay,
    } = p;
    let now = Timestamp::now();
    let due = due.unwrap_or(now);
    if due > now {
        if ctx.enter(
            &key,
            Stage::Waiting {
                job: job_name.clone(),
            },
        ) {
            publish(
                ctx,
                d,
                EventType::Normal,
                event::CONTRACT_PENDING,
                format!(
                    "{what}; the contract run starts at {due} (rollout complete, delay {delay:.0}s)"
                ),
            )
            .await;
        }
        let wait = (due.as_second() - now.as_second()).max(1);
        return Ok(Action::requeue(Duration::from_secs(
            u64::try_from(wait).unwrap_or(1),
        )));
    }
    let _ = ctx
        .metrics
        .pending_since
        .get_or_create(&labels)
        .set(due.as_second());

    if !ctx.create_jobs {
        if ctx.enter(
            &key,
            Stage::Due {
                job: job_name.clone(),
            },
        ) {
            tracing::warn!(workload = %key, job = %job_name, "deferred migrations are due and contract Jobs are off");
            publish(
                ctx,
                d,
                EventType::Warning,
                event::CONTRACT_PENDING,
                format!(
                    "{what}; no pod of the previous release is left, but contract Jobs are off (controller.contractJobs): apply `django-migrate-webhook inject --contract-job` of this {}, or turn them on",
                    d.kind
                ),
            )
            .await;
        }
        return Ok(Action::await_change());
    }

    let job: Job =
        serde_json::from_value(job).map_err(|e| ContractError::Serialize(key.clone(), e))?;
    let params = PostParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PostParams::default()
    };
    match jobs.create(&params, &job).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(ContractError::CreateJob(job_name, e)),
    }
    tracing::info!(workload = %key, job = %job_name, "created the contract Job");
    if ctx.enter(
        &key,
        Stage::Running {
            job: job_name.clone(),
        },
    ) {
        publish(
            ctx,
            d,
            EventType::Normal,
            event::CONTRACT_PENDING,
            format!("{what}; no pod of the previous release is left: created Job {job_name} to apply them"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Reports a contract Job that exists: Events and metrics when it ends.
#[allow(
    clippy::too_many_arguments,
    reason = "the reconciler's state, passed down once"
)]
async fn report_job(
    ctx: &Context,
    w: &Watched,
    d: &Target,
    key: &str,
    labels: &DeploymentLabels,
    job: &Job,
    job_name: &str,
    deferred: &Deferred,
) -> Action {
    let namespace = &labels.namespace;
    match outcome(job) {
        None => {
            ctx.enter(
                key,
                Stage::Running {
                    job: job_name.to_owned(),
                },
            );
        }
        Some((true, _)) => {
            ctx.metrics.pending_since.remove(labels);
            ctx.metrics.failed.remove(labels);
            if ctx.enter(
                key,
                Stage::Applied {
                    job: job_name.to_owned(),
                },
            ) {
                let summary = job_summary(ctx, namespace, job_name)
                    .await
                    .unwrap_or_else(|| format!("applied {}", names(deferred)));
                ctx.metrics
                    .runs
                    .get_or_create(&RunLabels {
                        workload: labels.clone(),
                        result: "applied",
                    })
                    .inc();
                tracing::info!(workload = %key, job = %job_name, "the contract Job applied the deferred migrations");
                if let Err(e) = record_older_releases(ctx, w, d, job).await {
                    tracing::warn!(workload = %key, error = %Chain(&e), "cannot record the releases older than the contract run");
                }
                publish(
                    ctx,
                    d,
                    EventType::Normal,
                    event::CONTRACT_APPLIED,
                    format!("Job {job_name}: {summary}"),
                )
                .await;
            }
        }
        Some((false, why)) => {
            let _ = ctx.metrics.failed.get_or_create(labels).set(1);
            if ctx.enter(
                key,
                Stage::Failed {
                    job: job_name.to_owned(),
                },
            ) {
                let summary = job_summary(ctx, namespace, job_name).await;
                ctx.metrics
                    .runs
                    .get_or_create(&RunLabels {
                        workload: labels.clone(),
                        result: "failed",
                    })
                    .inc();
                tracing::warn!(workload = %key, job = %job_name, why = %why, "the contract Job failed");
                publish(
                    ctx,
                    d,
                    EventType::Warning,
                    event::CONTRACT_FAILED,
                    format!(
                        "Job {job_name} failed ({why}): {}; see `kubectl logs job/{job_name} -n {namespace}`, fix, then delete the Job to run it again",
                        summary.as_deref().unwrap_or("no summary")
                    ),
                )
                .await;
            }
        }
    }
    Action::await_change()
}

/// Records on the workload the releases of its older pod templates (what `kubectl rollout
/// undo` goes back to: a Deployment's or Rollout's ReplicaSets, a StatefulSet's
/// ControllerRevisions), so that admission warns about a rollback to one of them.
async fn record_older_releases(
    ctx: &Context,
    w: &Watched,
    d: &Target,
    job: &Job,
) -> Result<(), kube::Error> {
    let namespace = d.reference.namespace.clone().unwrap_or_default();
    let contracted = job
        .annotations()
        .get(CONTRACT_RELEASE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let uid = d.reference.uid.clone().unwrap_or_default();
    let mut releases: BTreeSet<String> = d
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CONTRACTED_RELEASES))
        .and_then(Value::as_str)
        .into_iter()
        .flat_map(|r| r.split(','))
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    let known = releases.len();
    let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.iter().any(|o| o.uid == uid)
    };
    let mut templates: Vec<Value> = Vec::new();
    if d.kind == Kind::StatefulSet {
        let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &namespace);
        for r in revisions.list(&ListParams::default()).await?.items {
            if owned(r.owner_references()) {
                templates.extend(
                    r.data
                        .and_then(|data| data.0.pointer("/spec/template").cloned()),
                );
            }
        }
    } else {
        let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
        for rs in replica_sets.list(&ListParams::default()).await?.items {
            if owned(rs.owner_references()) {
                templates.extend(
                    rs.spec
                        .and_then(|s| s.template)
                        .and_then(|t| serde_json::to_value(t).ok()),
                );
            }
        }
    }
    for template in templates {
        let step = template
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["name"] == MIGRATE_CONTAINER));
        if let Some(Value::Object(step)) = step {
            let hash = contract_job::release_hash(step);
            if hash != contracted {
                releases.insert(hash);
            }
        }
    }
    if releases.len() == known {
        return Ok(());
    }
    let value = releases.into_iter().collect::<Vec<_>>().join(",");
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &w.resource);
    let params = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({"metadata": {"annotations": {CONTRACTED_RELEASES: value}}});
    api.patch(&d.name, &params, &Patch::Merge(patch)).await?;
    Ok(())
}

fn error_policy(_d: Arc<DynamicObject>, error: &ContractError, _w: Arc<Watched>) -> Action {
    tracing::warn!(error = %Chain(error), "contract check failed; retrying in 10s");
    Action::requeue(Duration::from_secs(10))
}

/// Watches opted-in workloads of each of `kinds` (and, with Jobs on, their contract
/// Jobs); runs until dropped (when the leader steps down).
pub async fn run(ctx: Context, kinds: Vec<Kind>) {
    let ctx = Arc::new(ctx);
    let controllers = kinds.into_iter().map(|kind| {
        let resource = kind.api_resource();
        let objects: Api<DynamicObject> = Api::all_with(ctx.client.clone(), &resource);
        let config = watcher::Config::default().labels(&format!("{INJECT_LABEL}=true"));
        let mut controller = Controller::new_with(objects, config, resource.clone());
        if ctx.create_jobs {
            let jobs: Api<Job> = Api::all(ctx.client.clone());
            controller =
                controller.owns(jobs, watcher::Config::default().labels(CONTRACT_FOR_LABEL));
        }
        let watched = Arc::new(Watched {
            ctx: ctx.clone(),
            kind,
            resource,
        });
        controller
            .run(reconcile, error_policy, watched)
            .for_each(|_| futures_util::future::ready(()))
    });
    futures_util::future::join_all(controllers).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(status: &serde_json::Value) -> Value {
        json!({
            "metadata": {"name": "shop", "namespace": "n", "generation": 3},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop"}},
                     "template": {"spec": {"containers": []}}},
            "status": status,
        })
    }

    const POD_TEMPLATE_HASH: &str = "pod-template-hash";

    #[test]
    fn a_rollout_is_complete_when_every_replica_is_new_and_available() {
        let complete = json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3,
            "availableReplicas": 3, "conditions": [{"type": "Progressing", "status": "True",
            "reason": "NewReplicaSetAvailable", "lastUpdateTime": "2026-12-02T10:00:00Z",
            "lastTransitionTime": "2026-12-01T10:00:00Z"}]});
        assert_eq!(
            rollout(Kind::Deployment, &deployment(&complete)),
            Rollout::Complete(Some("2026-12-02T10:00:00Z".parse().unwrap()))
        );
        for (field, value) in [
            ("observedGeneration", 2),
            ("replicas", 4),
            ("updatedReplicas", 2),
            ("availableReplicas", 2),
        ] {
            let mut status = complete.clone();
            status[field] = json!(value);
            assert_eq!(
                rollout(Kind::Deployment, &deployment(&status)),
                Rollout::InProgress,
                "{field}"
            );
        }
    }

    fn pod(hash: &str, summary: Option<serde_json::Value>) -> Pod {
        let statuses = summary.map(|s| {
            json!([{"name": MIGRATE_CONTAINER, "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": s.to_string()}}}])
        });
        serde_json::from_value(json!({
            "metadata": {"name": format!("shop-{hash}"), "labels": {POD_TEMPLATE_HASH: hash}},
            "status": {"initContainerStatuses": statuses},
        }))
        .unwrap()
    }

    #[test]
    fn what_waits_comes_from_the_pods_summaries() {
        let one = json!({"result": "applied", "deferred": [{"migration": "shop.0002_drop", "why": "x", "delay": 300}],
                         "contract_delay_seconds": 300, "counts": {"deferred": 1}});
        let none = json!({"result": "nothing-pending", "counts": {"deferred": 0}});
        let pods = [pod("a", Some(one)), pod("a", Some(none)), pod("a", None)];
        let d = deferred(&pods);
        assert_eq!(d.count, 1);
        assert_eq!(d.names, BTreeSet::from(["shop.0002_drop".to_owned()]));
        assert!((d.delay - 300.0).abs() < f64::EPSILON);
        assert_eq!(names(&d), "shop.0002_drop");
        assert_eq!(templates(&pods, POD_TEMPLATE_HASH).len(), 1);
        assert_eq!(
            templates(&[pod("a", None), pod("b", None)], POD_TEMPLATE_HASH).len(),
            2
        );
    }

    #[test]
    fn a_statefulset_is_complete_when_every_replica_runs_the_update_revision() {
        let complete = json!({
            "metadata": {"generation": 4},
            "spec": {"replicas": 3},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3,
                       "readyReplicas": 3, "currentRevision": "web-7c9", "updateRevision": "web-7c9"},
        });
        assert_eq!(
            rollout(Kind::StatefulSet, &complete),
            Rollout::Complete(None)
        );
        // A partitioned or OnDelete update: some pods still run the current revision.
        for (pointer, value) in [
            ("/status/updateRevision", json!("web-5d1")),
            ("/status/updatedReplicas", json!(2)),
            ("/status/readyReplicas", json!(2)),
            ("/status/observedGeneration", json!(3)),
            ("/spec/replicas", json!(0)),
        ] {
            let mut s = complete.clone();
            *s.pointer_mut(pointer).unwrap() = value;
            assert_eq!(
                rollout(Kind::StatefulSet, &s),
                Rollout::InProgress,
                "{pointer}"
            );
        }
    }

    #[test]
    fn a_rollout_is_complete_once_fully_promoted() {
        let promoted = json!({
            "metadata": {"generation": 3},
            "spec": {"replicas": 2, "strategy": {"canary": {"steps": [{"setWeight": 50}]}}},
            "status": {"observedGeneration": "3", "currentPodHash": "5c9f8bf4f",
                       "stableRS": "5c9f8bf4f", "replicas": 2, "updatedReplicas": 2,
                       "availableReplicas": 2, "phase": "Healthy",
                       "conditions": [{"type": "Completed", "status": "True",
                                       "lastTransitionTime": "2026-12-06T10:00:00Z"}]},
        });
        assert_eq!(
            rollout(Kind::Rollout, &promoted),
            Rollout::Complete(Some("2026-12-06T10:00:00Z".parse().unwrap()))
        );
        // In its canary steps, paused, or not yet observed.
        for (pointer, value) in [
            ("/status/stableRS", json!("6988c4f9dd")),
            ("/status/observedGeneration", json!("2")),
            ("/status/updatedReplicas", json!(1)),
            ("/status/replicas", json!(3)),
        ] {
            let mut r = promoted.clone();
            *r.pointer_mut(pointer).unwrap() = value;
            assert_eq!(rollout(Kind::Rollout, &r), Rollout::InProgress, "{pointer}");
        }
        let mut paused = promoted.clone();
        paused["spec"]["paused"] = json!(true);
        assert_eq!(rollout(Kind::Rollout, &paused), Rollout::InProgress);
        // Blue-green: complete once the active Service selects the new pods.
        let mut blue_green = promoted.clone();
        blue_green["spec"]["strategy"] = json!({"blueGreen": {"activeService": "web"}});
        blue_green["status"]["blueGreen"] = json!({"activeSelector": "6988c4f9dd",
                                                   "previewSelector": "5c9f8bf4f"});
        assert_eq!(rollout(Kind::Rollout, &blue_green), Rollout::InProgress);
        blue_green["status"]["blueGreen"]["activeSelector"] = json!("5c9f8bf4f");
        assert!(matches!(
            rollout(Kind::Rollout, &blue_green),
            Rollout::Complete(_)
        ));
    }
}
