//! `status`: what a platform team asks every week, answered from the cluster with the
//! user's kubeconfig. For each opted-in Deployment: injected or not (and the likely reason
//! when not), its settings, the migration step of each pod of its current ReplicaSet (from
//! the pod's init container statuses and the step's summary), and whether the rollout
//! waits on the gate.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use thiserror::Error;

use crate::names::{
    INJECT_LABEL, INJECTED_LABEL, MIGRATE_CONTAINER, MIGRATED_CONDITION, POLICY_LABEL, PREFIX,
    WAIT_CONTAINER, WEBHOOK_NAME,
};
use crate::settings::Settings;
use crate::step::{Reason, StepState, StepStatus};
use crate::summary::Phase;
use crate::summary::{Deferred, Summary};

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deployment {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
}

/// Where to look.
#[derive(Clone, Debug)]
pub enum Scope {
    /// The kubeconfig's namespace (or `-n`).
    Namespace(Option<String>),
    AllNamespaces,
}

/// One opted-in Deployment.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentStatus {
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
    /// The pods of the current ReplicaSet.
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

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rollout {
    pub replicas: i32,
    pub updated: i32,
    pub available: i32,
    /// Pods of the current ReplicaSet whose gate is not True: the rollout waits on them.
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

/// Reads the status of the opted-in Deployments in `scope`, or of `name` only.
pub async fn collect(
    client: &Client,
    scope: &Scope,
    name: Option<&str>,
) -> Result<Vec<DeploymentStatus>, StatusError> {
    let read = |what: String| move |source| StatusError::Read { what, source };
    let namespace = match scope {
        Scope::Namespace(ns) => Some(
            ns.clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        ),
        Scope::AllNamespaces => None,
    };
    let deployments: Api<Deployment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut found: Vec<Deployment> = match name {
        Some(name) => {
            let ns = namespace.clone().unwrap_or_default();
            match deployments
                .get_opt(name)
                .await
                .map_err(read(format!("deployment {ns}/{name}")))?
            {
                Some(d) => vec![d],
                None => {
                    return Err(StatusError::NotFound {
                        namespace: ns,
                        name: name.to_owned(),
                    });
                }
            }
        }
        // Opted in on the Deployment or, by mistake, only on the pod template: filtered
        // here, since a label selector sees only the Deployment's own labels.
        None => deployments
            .list(&ListParams::default())
            .await
            .map_err(read("deployments".into()))?
            .items
            .into_iter()
            .filter(|d| opted_in(d) || label_only_on_template(d))
            .collect(),
    };
    found.sort_by_key(|d| (d.namespace(), d.name_any()));
    let hooks = webhook_selectors(client).await;
    let mut out = Vec::with_capacity(found.len());
    for d in &found {
        out.push(deployment_status(client, d, hooks.as_deref()).await?);
    }
    Ok(out)
}

fn label_true(labels: Option<&BTreeMap<String, String>>, key: &str) -> bool {
    labels.and_then(|l| l.get(key)).is_some_and(|v| v == "true")
}

fn opted_in(d: &Deployment) -> bool {
    label_true(d.metadata.labels.as_ref(), INJECT_LABEL)
}

fn template_labels(d: &Deployment) -> Option<&BTreeMap<String, String>> {
    d.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref()
}

fn label_only_on_template(d: &Deployment) -> bool {
    !opted_in(d) && label_true(template_labels(d), INJECT_LABEL)
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
    d: &Deployment,
    hooks: Option<&[LabelSelector]>,
) -> String {
    if label_only_on_template(d) {
        return format!(
            "the label {INJECT_LABEL}: \"true\" is on the pod template only: put it on the Deployment's metadata"
        );
    }
    if let Err(e) = Settings::from_annotations(d.metadata.annotations.as_ref()) {
        return format!("the webhook denies its annotations: {e}");
    }
    let namespace = d.namespace().unwrap_or_default();
    match hooks {
        Some([]) => {
            return format!(
                "no MutatingWebhookConfiguration has the webhook {WEBHOOK_NAME} and no MutatingAdmissionPolicyBinding is labelled {POLICY_LABEL}=inject: is the chart installed?"
            );
        }
        Some(selectors) => {
            let api: Api<Namespace> = Api::all(client.clone());
            if let Ok(ns) = api.get(&namespace).await {
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
    "stored without the step: applied while the webhook was unreachable (failurePolicy Ignore), or before the chart was installed? Re-apply it".to_owned()
}

async fn deployment_status(
    client: &Client,
    d: &Deployment,
    hooks: Option<&[LabelSelector]>,
) -> Result<DeploymentStatus, StatusError> {
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let injected = label_true(template_labels(d), INJECTED_LABEL);
    let not_injected = if injected {
        None
    } else {
        Some(why_not_injected(client, d, hooks).await)
    };
    let settings = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let status = d.status.clone().unwrap_or_default();
    let mut rollout = Rollout {
        replicas: status.replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        waiting_on_gate: 0,
    };
    let pods = if injected {
        current_pods(client, d).await?
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
    let contract = contract_status(client, d, &out).await;
    Ok(DeploymentStatus {
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
    d: &Deployment,
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
    let namespace = d.namespace().unwrap_or_default();
    let job_name = serde_json::to_value(d)
        .ok()
        .and_then(|v| crate::contract_job::contract_job(&v, None).ok())
        .and_then(|j| j["metadata"]["name"].as_str().map(str::to_owned))?;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &namespace);
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
    let settings = Settings::from_annotations(d.metadata.annotations.as_ref()).unwrap_or_default();
    let delay = delay.max(f64::from(settings.contract_delay));
    let runs = match &job {
        Some(j) => format!("Job {} {}", j.name, j.state),
        None => format!(
            "in Job {job_name}, once the rollout is complete, no pod of the previous release is left{}",
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

/// The pods of the Deployment's current ReplicaSet (the one of its revision).
async fn current_pods(client: &Client, d: &Deployment) -> Result<Vec<Pod>, StatusError> {
    let namespace = d.namespace().unwrap_or_default();
    let revision = d
        .annotations()
        .get("deployment.kubernetes.io/revision")
        .cloned();
    let uid = d.uid().unwrap_or_default();
    let read = |what: String| move |source| StatusError::Read { what, source };
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut list = pods
        .list(&ListParams::default().labels(&format!("pod-template-hash={hash}")))
        .await
        .map_err(read(format!("pods in {namespace}")))?
        .items;
    list.retain(|p| {
        p.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == rs.metadata.uid.as_ref())
    });
    list.sort_by_key(kube::ResourceExt::name_any);
    Ok(list)
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
    let state = StepState::of(&statuses);
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

/// The human table: one line per Deployment, then one per pod.
pub fn table(statuses: &[DeploymentStatus]) -> String {
    use std::fmt::Write as _;
    if statuses.is_empty() {
        return "no Deployment labelled django-migrate.io/inject=true here\n".to_owned();
    }
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "DEPLOYMENT".to_owned(),
        "INJECTED".to_owned(),
        "PODS MIGRATED".to_owned(),
        "ROLLOUT".to_owned(),
    ]];
    for s in statuses {
        let migrated = s.pods.len() - s.rollout.waiting_on_gate;
        let rollout = if !s.injected {
            "-".to_owned()
        } else if s.rollout.waiting_on_gate > 0 {
            let n = s.rollout.waiting_on_gate;
            format!(
                "waiting on the gate ({n} pod{})",
                if n == 1 { "" } else { "s" }
            )
        } else if s.rollout.updated >= s.rollout.replicas
            && s.rollout.available >= s.rollout.replicas
        {
            "complete".to_owned()
        } else {
            format!("{}/{} available", s.rollout.available, s.rollout.replicas)
        };
        rows.push(vec![
            s.namespace.clone(),
            s.name.clone(),
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
