//! `status`: what a platform team asks every week, answered from the cluster with the
//! user's kubeconfig. For each opted-in workload (Deployment, StatefulSet, Job, CronJob,
//! Argo Rollout): injected or not (and the likely reason when not), its settings, the
//! migration step of each pod of its current release (from the pod's init container
//! statuses and the step's summary), and whether the rollout waits on the gate.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams, LogParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::names::{
    INJECT_LABEL, INJECTED_LABEL, MIGRATE_CONTAINER, MIGRATED_CONDITION, POLICY_LABEL, PREFIX,
    WAIT_CONTAINER, WEBHOOK_NAME,
};
use crate::settings::Settings;
use crate::step::{self, Reason, StepState, StepStatus};
use crate::summary::Phase;
use crate::summary::{Deferred, Summary};
use crate::workload::Kind;

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
}

/// Where to look.
#[derive(Clone, Debug)]
pub enum Scope {
    /// The kubeconfig's namespace (or `-n`).
    Namespace(Option<String>),
    AllNamespaces,
}

/// One opted-in workload.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentStatus {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The pod template carries the migration step.
    pub injected: bool,
    /// Why it is not injected, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_injected: Option<String>,
    /// Its `django-migrate.io/` annotations.
    pub settings: BTreeMap<String, String>,
    pub rollout: Rollout,
    /// The pods of the current release (a CronJob's: of its newest Job).
    pub pods: Vec<PodStatus>,
    /// Migrations the pods' steps left for the contract run, and its Job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractStatus>,
}

/// The contract run of the current release.
#[derive(Clone, Debug, Serialize)]
pub struct ContractStatus {
    /// What the current pods' steps deferred, and why (the first ones, when their
    /// summaries were cut).
    pub deferred: Vec<Deferred>,
    /// How many they deferred.
    pub count: u64,
    /// When it runs.
    pub runs: String,
    /// The Job of this release, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<ContractJobStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ContractJobStatus {
    pub name: String,
    /// `running`, `applied` or `failed`.
    pub state: String,
    /// Why it failed, from the Job's condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The summary of its step, once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

/// A Job's or CronJob's: `replicas` its completions, `available` the pods that succeeded.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rollout {
    pub replicas: i64,
    pub updated: i64,
    pub available: i64,
    /// Pods of the current release whose migrated condition is not True: a rollout
    /// waits on them (a Job's pod, on its step).
    pub waiting_on_gate: usize,
}

/// The migration step of one pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodStatus {
    pub name: String,
    /// `pending`, `waiting for the database`, `waiting for the lock`, `waiting for other
    /// pods' migrations`, `migrating`, `running`, `applied`, `failed`, `blocked as unsafe`
    /// or `blocked as locking`.
    pub phase: String,
    /// The reason of the condition the controller sets (or will set) for this step: the
    /// same function decides both.
    pub reason: Reason,
    /// The condition's message, or the step's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The step's summary, once it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

impl DeploymentStatus {
    /// Not injected, or a pod's step failed or was blocked.
    pub fn has_problem(&self) -> bool {
        !self.injected
            || self.pods.iter().any(|p| p.reason.is_failure())
            || self
                .contract
                .as_ref()
                .and_then(|c| c.job.as_ref())
                .is_some_and(|j| j.state == "failed")
    }
}

/// Reads the status of the opted-in workloads in `scope`, or of `target` only. A kind
/// the cluster does not serve (Argo Rollouts not installed), or the user may not list,
/// is left out of a listing.
pub async fn collect(
    client: &Client,
    scope: &Scope,
    target: Option<&(Kind, String)>,
) -> Result<Vec<DeploymentStatus>, StatusError> {
    let read = |what: String| move |source| StatusError::Read { what, source };
    let namespace = match scope {
        Scope::Namespace(ns) => Some(
            ns.clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        ),
        Scope::AllNamespaces => None,
    };
    let api = |kind: Kind| -> Api<DynamicObject> {
        let resource = kind.api_resource();
        match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    };
    let mut found: Vec<(Kind, Value)> = Vec::new();
    if let Some((kind, name)) = target {
        let ns = namespace.clone().unwrap_or_default();
        let object = api(*kind)
            .get_opt(name)
            .await
            .map_err(read(format!("{} {ns}/{name}", kind.plural())))?;
        let Some(object) = object else {
            return Err(StatusError::NotFound {
                kind: *kind,
                namespace: ns,
                name: name.clone(),
            });
        };
        found.push((*kind, as_json(*kind, &object)));
    } else {
        for kind in Kind::ALL {
            let list = match api(kind).list(&ListParams::default()).await {
                Ok(list) => list.items,
                // Not served (no CRD), or not this user's to list: not a failure of a
                // listing, unless it is the Deployments'.
                Err(kube::Error::Api(e))
                    if kind != Kind::Deployment && matches!(e.code, 403 | 404) =>
                {
                    continue;
                }
                Err(e) => return Err(read(kind.plural().into())(e)),
            };
            // Opted in on the workload or, by mistake, only on the pod template: filtered
            // here, since a label selector sees only the workload's own labels.
            found.extend(
                list.iter()
                    .map(|o| (kind, as_json(kind, o)))
                    .filter(|(kind, v)| opted_in(v) || label_only_on_template(*kind, v)),
            );
        }
    }
    found.sort_by(|(a, x), (b, y)| {
        let key = |k: &Kind, v: &Value| {
            (
                text(v, "/metadata/namespace").to_owned(),
                *k,
                text(v, "/metadata/name").to_owned(),
            )
        };
        key(a, x).cmp(&key(b, y))
    });
    let hooks = webhook_selectors(client).await;
    let mut out = Vec::with_capacity(found.len());
    for (kind, d) in &found {
        out.push(deployment_status(client, *kind, d, hooks.as_deref()).await?);
    }
    Ok(out)
}

/// The object as JSON, its `apiVersion` and `kind` set.
fn as_json(kind: Kind, object: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    v["apiVersion"] = kind.api_version().into();
    v["kind"] = kind.as_str().into();
    v
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn label_true(labels: &BTreeMap<String, String>, key: &str) -> bool {
    labels.get(key).is_some_and(|v| v == "true")
}

fn opted_in(d: &Value) -> bool {
    label_true(&string_map(d.pointer("/metadata/labels")), INJECT_LABEL)
}

fn template_labels(kind: Kind, d: &Value) -> BTreeMap<String, String> {
    string_map(d.pointer(&format!("{}/metadata/labels", kind.template_pointer())))
}

fn label_only_on_template(kind: Kind, d: &Value) -> bool {
    !opted_in(d) && label_true(&template_labels(kind, d), INJECT_LABEL)
}

/// The namespace selectors of what injects: this webhook's registrations and, in policy
/// mode, the injecting policy's bindings (`None` when the webhook registrations cannot be
/// read, `Some(empty)` when nothing is installed).
async fn webhook_selectors(client: &Client) -> Option<Vec<LabelSelector>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.ok()?;
    let mut selectors: Vec<LabelSelector> = list
        .items
        .into_iter()
        .flat_map(|c| c.webhooks.unwrap_or_default())
        .filter(|w| w.name == WEBHOOK_NAME)
        .map(|w| w.namespace_selector.unwrap_or_default())
        .collect();
    // Served from Kubernetes 1.36 only: a cluster without them has no policy mode.
    let bindings = kube::discovery::ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: crate::policy::API_VERSION.into(),
        kind: "MutatingAdmissionPolicyBinding".into(),
        plural: "mutatingadmissionpolicybindings".into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &bindings);
    let selected = ListParams::default().labels(&format!("{POLICY_LABEL}=inject"));
    if let Ok(list) = api.list(&selected).await {
        selectors.extend(list.items.into_iter().map(|b| {
            let selector = b.data.pointer("/spec/matchResources/namespaceSelector");
            selector
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default()
        }));
    }
    Some(selectors)
}

/// True when `selector` selects an object with `labels` (matchLabels and the four
/// matchExpressions operators).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

async fn why_not_injected(
    client: &Client,
    kind: Kind,
    d: &Value,
    hooks: Option<&[LabelSelector]>,
) -> String {
    if label_only_on_template(kind, d) {
        return format!(
            "the label {INJECT_LABEL}: \"true\" is on the pod template only: put it on the {kind}'s metadata"
        );
    }
    let annotations = string_map(d.pointer("/metadata/annotations"));
    if let Err(e) = Settings::for_kind(kind, Some(&annotations)) {
        return format!("the webhook denies its annotations: {e}");
    }
    if kind == Kind::Rollout && d.pointer("/spec/template").is_none() {
        return "it takes its pod template from another object (workloadRef): only a Rollout's own spec.template is injected".to_owned();
    }
    let namespace = text(d, "/metadata/namespace");
    match hooks {
        Some([]) => {
            return format!(
                "no MutatingWebhookConfiguration has the webhook {WEBHOOK_NAME} and no MutatingAdmissionPolicyBinding is labelled {POLICY_LABEL}=inject: is the chart installed?"
            );
        }
        Some(selectors) => {
            let api: Api<Namespace> = Api::all(client.clone());
            if let Ok(ns) = api.get(namespace).await {
                let labels = ns.metadata.labels.unwrap_or_default();
                if !selectors.iter().any(|s| selects(s, &labels)) {
                    return format!(
                        "namespace {namespace} is not selected by the namespaceSelector of the webhook or the policy binding (excluded)"
                    );
                }
            }
        }
        None => {}
    }
    if kind == Kind::Job {
        return "stored without the step: applied while the webhook was unreachable (failurePolicy Ignore), or before the chart was installed? A Job cannot change: delete it and create it again".to_owned();
    }
    "stored without the step: applied while the webhook was unreachable (failurePolicy Ignore), or before the chart was installed? Re-apply it".to_owned()
}

async fn deployment_status(
    client: &Client,
    kind: Kind,
    d: &Value,
    hooks: Option<&[LabelSelector]>,
) -> Result<DeploymentStatus, StatusError> {
    let namespace = text(d, "/metadata/namespace").to_owned();
    let name = text(d, "/metadata/name").to_owned();
    let injected = label_true(&template_labels(kind, d), INJECTED_LABEL);
    let not_injected = if injected {
        None
    } else {
        Some(why_not_injected(client, kind, d, hooks).await)
    };
    let settings = string_map(d.pointer("/metadata/annotations"))
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    let mut rollout = match kind {
        Kind::Job => Rollout {
            replicas: d
                .pointer("/spec/completions")
                .and_then(Value::as_i64)
                .unwrap_or(1),
            updated: 0,
            available: int(d, "/status/succeeded"),
            waiting_on_gate: 0,
        },
        Kind::CronJob => Rollout::default(),
        _ => Rollout {
            replicas: int(d, "/status/replicas"),
            updated: int(d, "/status/updatedReplicas"),
            available: int(d, "/status/availableReplicas"),
            waiting_on_gate: 0,
        },
    };
    let pods = if injected {
        current_pods(client, kind, d).await?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(pods.len());
    for pod in &pods {
        let p = pod_status(client, pod).await;
        if p.reason != Reason::Migrated {
            rollout.waiting_on_gate += 1;
        }
        out.push(p);
    }
    let contract = if kind.runs_to_completion() {
        None
    } else {
        contract_status(client, kind, d, &out).await
    };
    Ok(DeploymentStatus {
        kind,
        namespace,
        name,
        injected,
        not_injected,
        settings,
        rollout,
        pods: out,
        contract,
    })
}

/// What the pods deferred, when it runs, and the Job of this release (if the user may
/// read Jobs).
async fn contract_status(
    client: &Client,
    kind: Kind,
    d: &Value,
    pods: &[PodStatus],
) -> Option<ContractStatus> {
    let mut deferred: Vec<Deferred> = Vec::new();
    let mut count = 0;
    let mut delay: f64 = 0.0;
    for s in pods.iter().filter_map(|p| p.summary.as_ref()) {
        count = count.max(s.deferred_count());
        delay = delay.max(s.contract_delay_seconds.unwrap_or(0.0));
        for item in &s.deferred {
            if !deferred.iter().any(|x| x.migration == item.migration) {
                deferred.push(item.clone());
            }
        }
    }
    let namespace = text(d, "/metadata/namespace").to_owned();
    let job_name = crate::contract_job::contract_job(d, None)
        .ok()
        .and_then(|j| j["metadata"]["name"].as_str().map(str::to_owned))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = match jobs.get_opt(&job_name).await {
        Ok(Some(job)) => {
            let (state, why) = crate::contract::job_state(&job);
            let summary = if state == "running" {
                None
            } else {
                crate::contract::job_step_summary(client, &namespace, &job_name).await
            };
            Some(ContractJobStatus {
                name: job_name.clone(),
                state: state.to_owned(),
                why,
                summary,
            })
        }
        Ok(None) | Err(_) => None,
    };
    if count == 0 && job.is_none() {
        return None;
    }
    let annotations = string_map(d.pointer("/metadata/annotations"));
    let settings = Settings::for_kind(kind, Some(&annotations)).unwrap_or_default();
    let delay = delay.max(f64::from(settings.contract_delay));
    let complete = match kind {
        Kind::Rollout => "the Rollout is fully promoted",
        _ => "the rollout is complete",
    };
    let runs = match &job {
        Some(j) => format!("Job {} {}", j.name, j.state),
        None => format!(
            "in Job {job_name}, once {complete}, no pod of the previous release is left{}",
            if delay > 0.0 {
                format!(" and {delay:.0}s have passed")
            } else {
                String::new()
            }
        ),
    };
    Some(ContractStatus {
        deferred,
        count,
        runs,
        job,
    })
}

/// The pods of the workload's current release: a Deployment's current ReplicaSet (the one
/// of its revision), a StatefulSet's update revision, a Rollout's current pod hash, a
/// Job's pods, a CronJob's newest Job's.
async fn current_pods(client: &Client, kind: Kind, d: &Value) -> Result<Vec<Pod>, StatusError> {
    let namespace = text(d, "/metadata/namespace").to_owned();
    let uid = text(d, "/metadata/uid").to_owned();
    let read = |what: String| move |source| StatusError::Read { what, source };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = async |selector: String| {
        pods.list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .map_err(read(format!("pods in {namespace}")))
    };
    let owned_by = |p: &Pod, owner: &str| p.owner_references().iter().any(|o| o.uid == owner);
    let mut found = match kind {
        Kind::Deployment => {
            let revision = d
                .pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &namespace);
            let current = replica_sets
                .list(&ListParams::default())
                .await
                .map_err(read(format!("replicasets in {namespace}")))?
                .items
                .into_iter()
                .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
                .max_by_key(|rs| {
                    let own = rs
                        .annotations()
                        .get("deployment.kubernetes.io/revision")
                        .cloned();
                    (own == revision, rs.metadata.creation_timestamp.clone())
                });
            let Some(rs) = current else {
                return Ok(Vec::new());
            };
            let Some(hash) = rs.labels().get("pod-template-hash").cloned() else {
                return Ok(Vec::new());
            };
            let rs_uid = rs.metadata.uid.clone().unwrap_or_default();
            let mut pods = list(format!("pod-template-hash={hash}")).await?;
            pods.retain(|p| owned_by(p, &rs_uid));
            pods
        }
        Kind::StatefulSet => {
            let revision = text(d, "/status/updateRevision");
            if revision.is_empty() {
                return Ok(Vec::new());
            }
            let mut pods = list(format!("controller-revision-hash={revision}")).await?;
            pods.retain(|p| owned_by(p, &uid));
            pods
        }
        Kind::Rollout => {
            let hash = text(d, "/status/currentPodHash");
            if hash.is_empty() {
                return Ok(Vec::new());
            }
            let selector = string_map(d.pointer("/spec/selector/matchLabels"))
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain([format!("rollouts-pod-template-hash={hash}")])
                .collect::<Vec<_>>()
                .join(",");
            list(selector).await?
        }
        Kind::Job => list(format!("batch.kubernetes.io/controller-uid={uid}")).await?,
        Kind::CronJob => {
            let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
            let newest = jobs
                .list(&ListParams::default())
                .await
                .map_err(read(format!("jobs in {namespace}")))?
                .items
                .into_iter()
                .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
                .max_by_key(|j| j.metadata.creation_timestamp.clone());
            match newest.and_then(|j| j.metadata.uid) {
                Some(job) => list(format!("batch.kubernetes.io/controller-uid={job}")).await?,
                None => Vec::new(),
            }
        }
    };
    found.sort_by_key(kube::ResourceExt::name_any);
    Ok(found)
}

async fn pod_status(client: &Client, pod: &Pod) -> PodStatus {
    let status = pod.status.as_ref();
    let gate = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == MIGRATED_CONDITION);
    let statuses: Vec<StepStatus> = status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(StepStatus::from_container)
        .collect();
    let code_removed = pod.spec.as_ref().and_then(|spec| {
        let inits = spec.init_containers.iter().flatten().map(|c| {
            let run = c.command.iter().chain(&c.args).flatten();
            (c.name.as_str(), step::runs_program(run.map(String::as_str)))
        });
        let volumes = spec.volumes.iter().flatten().map(|v| v.name.as_str());
        step::code_removed(inits, volumes)
    });
    let state = StepState::of_pod(&statuses, code_removed);
    let phase = match &state {
        StepState::Pending { .. } => "pending",
        StepState::Running { container } => running_phase(client, pod, container).await,
        StepState::Succeeded { .. } => "applied",
        StepState::Failed {
            reason: Reason::UnsafeBlocked,
            ..
        } => "blocked as unsafe",
        StepState::Failed {
            reason: Reason::LockingBlocked,
            ..
        } => "blocked as locking",
        StepState::Failed { .. } => "failed",
        StepState::CodeUnavailable { .. } | StepState::CodeRemoved { .. } => "code unavailable",
    };
    // The summary of the run the state comes from.
    let summary = state.step_exit().and_then(|_| {
        let full = status?
            .init_container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == MIGRATE_CONTAINER || c.name == WAIT_CONTAINER)?;
        let ended = full
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| full.last_state.as_ref()?.terminated.as_ref())?;
        Summary::parse(ended.message.as_deref()?)
    });
    PodStatus {
        name: pod.name_any(),
        phase: phase.to_owned(),
        reason: state.reason(),
        message: gate
            .and_then(|g| g.message.clone())
            .or_else(|| Some(state.message())),
        summary,
    }
}

/// What a running step is doing, from the phase in its last log line.
async fn running_phase(client: &Client, pod: &Pod, container: &str) -> &'static str {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let params = LogParams {
        container: Some(container.to_owned()),
        tail_lines: Some(1),
        ..LogParams::default()
    };
    let last = api.logs(&pod.name_any(), &params).await.unwrap_or_default();
    match Phase::of_log_line(&last) {
        Some(Phase::Database) => "waiting for the database",
        Some(Phase::Lock) => "waiting for the lock",
        Some(Phase::Waiting) => "waiting for other pods' migrations",
        Some(Phase::Migrating) => "migrating",
        _ => "running",
    }
}

/// Where a workload's rollout stands, for the table: a Job's completions, else the gate.
fn rollout_cell(s: &DeploymentStatus) -> String {
    let waiting = s.rollout.waiting_on_gate;
    if !s.injected {
        "-".to_owned()
    } else if s.kind.runs_to_completion() {
        match s.kind {
            Kind::Job => format!(
                "{}/{} succeeded{}",
                s.rollout.available,
                s.rollout.replicas,
                if waiting > 0 {
                    format!(", {waiting} waiting on migrations")
                } else {
                    String::new()
                }
            ),
            _ if waiting > 0 => format!("newest Job: {waiting} waiting on migrations"),
            _ => "-".to_owned(),
        }
    } else if waiting > 0 {
        format!(
            "waiting on the gate ({waiting} pod{})",
            if waiting == 1 { "" } else { "s" }
        )
    } else if s.rollout.updated >= s.rollout.replicas && s.rollout.available >= s.rollout.replicas {
        "complete".to_owned()
    } else {
        format!("{}/{} available", s.rollout.available, s.rollout.replicas)
    }
}

/// The human table: one line per workload (a Deployment by its name, another kind as
/// `kind/name`), then one per pod.
pub fn table(statuses: &[DeploymentStatus]) -> String {
    use std::fmt::Write as _;
    if statuses.is_empty() {
        return "no workload labelled django-migrate.io/inject=true here\n".to_owned();
    }
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "WORKLOAD".to_owned(),
        "INJECTED".to_owned(),
        "PODS MIGRATED".to_owned(),
        "ROLLOUT".to_owned(),
    ]];
    for s in statuses {
        let migrated = s.pods.len() - s.rollout.waiting_on_gate;
        let rollout = rollout_cell(s);
        rows.push(vec![
            s.namespace.clone(),
            if s.kind == Kind::Deployment {
                s.name.clone()
            } else {
                format!("{}/{}", s.kind.as_str().to_lowercase(), s.name)
            },
            if s.injected { "yes" } else { "no" }.to_owned(),
            if s.injected {
                format!("{migrated}/{}", s.pods.len())
            } else {
                "-".to_owned()
            },
            rollout,
        ]);
    }
    let mut out = String::new();
    for (i, line) in crate::text::columns(&rows).iter().enumerate() {
        let _ = writeln!(out, "{line}");
        let Some(s) = i.checked_sub(1).map(|i| &statuses[i]) else {
            continue;
        };
        if let Some(why) = &s.not_injected {
            let _ = writeln!(out, "  not injected: {why}");
        }
        if !s.settings.is_empty() {
            let settings: Vec<String> = s
                .settings
                .iter()
                .map(|(k, v)| format!("{}={v}", k.trim_start_matches(PREFIX)))
                .collect();
            let _ = writeln!(out, "  settings: {}", settings.join(" "));
        }
        for p in &s.pods {
            let _ = writeln!(out, "  pod {}: {}", p.name, pod_line(p));
        }
        if let Some(c) = &s.contract {
            let names: Vec<String> = c
                .deferred
                .iter()
                .map(|d| format!("{} ({})", d.migration, d.why))
                .collect();
            let _ = writeln!(
                out,
                "  contract: {} deferred{}{}; runs {}",
                c.count,
                if names.is_empty() { "" } else { ": " },
                names.join(", "),
                c.runs
            );
            if let Some(j) = &c.job {
                if let Some(why) = &j.why {
                    let _ = writeln!(out, "  contract job {}: failed: {why}", j.name);
                }
                if let Some(summary) = &j.summary {
                    let _ = writeln!(out, "  contract job {}: {}", j.name, summary.message);
                }
            }
        }
    }
    out
}

fn pod_line(p: &PodStatus) -> String {
    use std::fmt::Write as _;
    let mut line = p.phase.clone();
    if let Some(s) = &p.summary {
        let applied = s.applied_count();
        if applied > 0 {
            // The summary names the first ones when it had to be cut; the count is whole.
            let named = u64::try_from(s.applied.len()).unwrap_or(u64::MAX);
            let more = if applied > named {
                format!(" and {} more", applied - named)
            } else {
                String::new()
            };
            let _ = write!(
                line,
                " {applied} migrations ({}{more})",
                s.applied.join(", ")
            );
        } else if p.phase == "applied" {
            let _ = write!(line, " ({})", s.result);
        }
        let _ = write!(line, " in {:.1}s", s.seconds.total);
        if s.seconds.django_setup > 0.0 {
            let _ = write!(line, " (Django start {:.1}s)", s.seconds.django_setup);
        }
        let _ = write!(line, ", lock wait {:.1}s", s.seconds.lock_wait);
        if s.post_migrate.as_ref().is_some_and(|m| m.ran) {
            line.push_str(", post_migrate ran");
        }
        if s.retries > 0 {
            let _ = write!(line, ", {} lock-timeout retries", s.retries);
        }
        match &s.fast_path {
            Some(f) if f.taken => line.push_str(", fast path"),
            // Only worth a look when the fast path could have answered.
            Some(f) if applied == 0 && p.phase == "applied" => {
                let _ = write!(line, ", full path ({})", f.why);
            }
            _ => {}
        }
    }
    // A success is described by its summary; without one (a step of an earlier version),
    // by its own message.
    if (p.phase != "applied" || p.summary.is_none())
        && let Some(m) = &p.message
    {
        let _ = write!(line, ": {m}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn namespace_selectors_follow_the_api_semantics() {
        let labels: BTreeMap<String, String> = [
            ("kubernetes.io/metadata.name".to_owned(), "shop".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]
        .into();
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: op.into(),
                values: Some(
                    values
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect(),
                ),
            }]),
            ..LabelSelector::default()
        };
        assert!(selects(&LabelSelector::default(), &labels));
        assert!(selects(&expr("NotIn", &["kube-system"]), &labels));
        assert!(!selects(&expr("NotIn", &["shop"]), &labels));
        assert!(selects(&expr("In", &["shop"]), &labels));
        let only_b = LabelSelector {
            match_labels: Some([("team".to_owned(), "b".to_owned())].into()),
            ..LabelSelector::default()
        };
        assert!(!selects(&only_b, &labels));
    }

    #[test]
    fn a_success_without_a_summary_shows_the_step_s_own_message() {
        let pod = |summary: Option<Summary>| PodStatus {
            name: "shop-1".into(),
            phase: "applied".into(),
            reason: Reason::Migrated,
            message: Some("migrate: applied 6 migrations in 2.1s".into()),
            summary,
        };
        // A step of an earlier version: its termination message is plain text.
        assert_eq!(
            pod_line(&pod(None)),
            "applied: migrate: applied 6 migrations in 2.1s"
        );
        let summary = Summary::parse(
            r#"{"exit_code": 0, "phase": "done", "result": "nothing-pending", "message": "m"}"#,
        );
        assert!(summary.is_some());
        assert_eq!(
            pod_line(&pod(summary)),
            "applied (nothing-pending) in 0.0s, lock wait 0.0s"
        );
    }
}
