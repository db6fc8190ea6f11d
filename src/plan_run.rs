//! `plan`: runs plan mode for one Deployment on the cluster, with the caller's
//! credentials, as a one-off Job (`plan_job`), and reads its report.
//!
//! The Deployment is the stored one, or the one of a manifest (the next release, as it
//! will be applied); one without the injection goes through the webhook's engine first.
//! The Job is deleted whatever happens (a plan, a failure, Ctrl-C or SIGTERM), unless the
//! caller keeps it; `ttlSecondsAfterFinished` removes it if the caller dies first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::injected::CodeImage;
use crate::mutation::Denial;
use crate::names::MIGRATE_CONTAINER;
use crate::plan::{Outcome, Report};
use crate::plan_job::{self, NoPlanJob, PlanJobOptions};
use crate::preview::{self, PreviewError};
use crate::summary::Summary;
use crate::telemetry::Chain;

/// What the caller's credentials must allow in the namespace.
pub const PERMISSIONS: &str =
    "get deployments; create, get and delete jobs; list and get pods; get pods/log";

/// How much later than the plan's own timeout the Job's deadline stops it: the timeout
/// comes first and says what the pod was waiting for; the deadline stops a Job whose
/// caller died.
const DEADLINE_GRACE: Duration = Duration::from_secs(30);

/// How often the Job's pod is looked at.
const POLL: Duration = Duration::from_secs(1);

/// Waiting reasons of a container that will not start without a change.
const CANNOT_START: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// Why a `plan` argument names no Deployment.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "plan runs for a Deployment, not a {kind}: give NAME or deployment/NAME (or deploy/NAME, deployments/NAME)"
    )]
    Kind { kind: String },
    #[error(
        "{name:?} is not a Deployment's name (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    Name { name: String },
}

/// The Deployment an argument names: `NAME`, or `deployment/NAME` as kubectl writes it
/// (`deploy/`, `deployments/`, `deployment.apps/` too).
pub fn parse_target(arg: &str) -> Result<String, TargetError> {
    let name = match arg.split_once('/') {
        None => arg,
        Some((kind, name)) => {
            let kind_only = kind.strip_suffix(".apps").unwrap_or(kind);
            if !["deployment", "deployments", "deploy"].contains(&kind_only) {
                return Err(TargetError::Kind {
                    kind: kind.to_owned(),
                });
            }
            name
        }
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        return Err(TargetError::Name {
            name: name.to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// What to plan, and how.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub deployment: String,
    /// Default: the kubeconfig context's.
    pub namespace: Option<String>,
    /// The step's image: the next release's.
    pub image: Option<String>,
    /// A manifest's text: plan its Deployment of that name instead of the stored one.
    pub manifest: Option<String>,
    /// The code copy's image for a Deployment injected here, when the stored one has no
    /// code copy to take it from.
    pub code_image: CodeImage,
    /// How long the plan may take, image pulls included; the Job's deadline is a little
    /// later.
    pub timeout: Duration,
    /// Leave the Job for inspection.
    pub keep: bool,
}

/// A plan that was made.
#[derive(Clone, Debug)]
pub struct Planned {
    pub namespace: String,
    pub job: String,
    pub made: Made,
}

/// What the step left.
#[derive(Clone, Debug)]
pub enum Made {
    /// The full report, from its log.
    Report {
        report: Box<Report>,
        /// The report's line, as the step wrote it.
        line: String,
        exit_code: i32,
    },
    /// Its summary only: the log has no report, or cannot be read (`why`). The summary of
    /// a step that failed says why in its message.
    Summary { summary: Box<Summary>, why: String },
}

impl Made {
    pub fn outcome(&self) -> Outcome {
        match self {
            Made::Report {
                report, exit_code, ..
            } => report.outcome(*exit_code),
            Made::Summary { summary, .. } => {
                Outcome::of_summary(summary.result, summary.plan.as_ref())
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum PlanError {
    #[error(
        "forbidden to {verb} {resource} in namespace {namespace}: {message} (plan needs, in the namespace: {PERMISSIONS})"
    )]
    Forbidden {
        verb: &'static str,
        resource: String,
        namespace: String,
        message: String,
    },
    #[error("cannot {verb} {resource} in namespace {namespace}")]
    Api {
        verb: &'static str,
        resource: String,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("deployment {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error(
        "the manifest has no apps/v1 Deployment {name} (in namespace {namespace}, or naming none)"
    )]
    NotInManifest { namespace: String, name: String },
    #[error("cannot read the manifest")]
    Manifest(#[source] Box<PreviewError>),
    #[error("the webhook would deny deployment {name}: {denial}")]
    Denied { name: String, denial: Denial },
    #[error("cannot inject deployment {name}")]
    Inject {
        name: String,
        #[source]
        source: Box<PreviewError>,
    },
    #[error("deployment {namespace}/{name} has no plan Job: {why}")]
    NoJob {
        namespace: String,
        name: String,
        why: NoPlanJob,
    },
    #[error("cannot build the plan Job")]
    Build(#[source] serde_json::Error),
    #[error("the plan Job {job} failed: {why}")]
    JobFailed { job: String, why: String },
    #[error("the plan Job's pod {pod} cannot run: {why}")]
    PodFailed { pod: String, why: String },
    #[error("no plan within {seconds}s: still waiting for {waiting_for}")]
    Timeout { seconds: u64, waiting_for: String },
    #[error("the step ended with exit code {exit_code} and no summary ({why}): {message}")]
    StepFailed {
        exit_code: i32,
        message: String,
        why: String,
    },
    #[error("interrupted")]
    Interrupted,
}

impl PlanError {
    /// What `plan` exits with: the cluster or the Job could not be used, or the plan could
    /// not be made.
    pub fn outcome(&self) -> Outcome {
        match self {
            PlanError::Forbidden { .. }
            | PlanError::Api { .. }
            | PlanError::NotFound { .. }
            | PlanError::Build(_) => Outcome::Cluster,
            _ => Outcome::NotMade,
        }
    }
}

/// Maps a failed request: a refusal names the permission it lacks.
fn refused(
    verb: &'static str,
    resource: impl Into<String>,
    namespace: &str,
) -> impl FnOnce(kube::Error) -> PlanError {
    let resource = resource.into();
    let namespace = namespace.to_owned();
    move |source| match source {
        kube::Error::Api(status) if status.is_forbidden() => PlanError::Forbidden {
            verb,
            resource,
            namespace,
            message: status.message,
        },
        source => PlanError::Api {
            verb,
            resource,
            namespace,
            source: Box::new(source),
        },
    }
}

/// Runs the plan; `note` gets progress and warnings for the caller's terminal.
pub async fn run(
    client: &Client,
    options: &PlanOptions,
    note: &mut dyn FnMut(String),
) -> Result<Planned, PlanError> {
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let name = options.deployment.as_str();
    let stored = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get_opt(name)
        .await
        .map_err(refused("get", format!("deployments/{name}"), &namespace))?;
    let mut object = match (&options.manifest, &stored) {
        (Some(text), _) => preview::find_deployment(text, name, &namespace)
            .map_err(|e| PlanError::Manifest(Box::new(e)))?
            .ok_or_else(|| PlanError::NotInManifest {
                namespace: namespace.clone(),
                name: name.to_owned(),
            })?,
        (None, Some(d)) => serde_json::to_value(d).map_err(PlanError::Build)?,
        (None, None) => {
            return Err(PlanError::NotFound {
                namespace,
                name: name.to_owned(),
            });
        }
    };
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("namespace".into(), json!(namespace));
    }
    let suffix = fresh_suffix();
    let job_options = PlanJobOptions {
        image: options.image.as_deref(),
        suffix: Some(&suffix),
        deadline: options.timeout + DEADLINE_GRACE,
    };
    let job = job_for(&mut object, stored.as_ref(), options, &job_options, note)?;
    let container = plan_job::step_container(&job)
        .unwrap_or(MIGRATE_CONTAINER)
        .to_owned();
    let job: Job = serde_json::from_value(job).map_err(PlanError::Build)?;

    // Listening before the Job exists: a signal from then on deletes it.
    let mut signals = Signals::install();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job_name = jobs
        .create(&PostParams::default(), &job)
        .await
        .map_err(refused("create", "jobs", &namespace))?
        .name_any();
    note(format!(
        "created Job {namespace}/{job_name}; waiting for its step"
    ));
    let watched = Watched {
        client,
        namespace: &namespace,
        job: &job_name,
        container: &container,
    };
    let made = tokio::select! {
        made = watched.watch(options.timeout) => made,
        () = signals.received() => Err(PlanError::Interrupted),
    };
    if options.keep {
        note(format!(
            "kept Job {namespace}/{job_name}: kubectl -n {namespace} logs job/{job_name}; kubectl -n {namespace} delete job {job_name}"
        ));
    } else if let Err(e) = jobs.delete(&job_name, &DeleteParams::background()).await {
        note(format!(
            "warning: cannot delete Job {namespace}/{job_name} ({}): kubectl -n {namespace} delete job {job_name} (it goes by itself 10 minutes after it finished)",
            Chain(&e)
        ));
    }
    made.map(|made| Planned {
        namespace,
        job: job_name,
        made,
    })
}

/// The plan Job of the Deployment, injecting it first when it carries no (current)
/// injection, with the code image of the stored one's code copy when it has one.
fn job_for(
    object: &mut Value,
    stored: Option<&Deployment>,
    options: &PlanOptions,
    job_options: &PlanJobOptions,
    note: &mut dyn FnMut(String),
) -> Result<Value, PlanError> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let no_job = |why| PlanError::NoJob {
        namespace: namespace.clone(),
        name: options.deployment.clone(),
        why,
    };
    match plan_job::plan_job(object, job_options) {
        Err(NoPlanJob::NotInjected) => {}
        done => return done.map_err(no_job),
    }
    let image = stored
        .and_then(code_image_of)
        .unwrap_or_else(|| options.code_image.clone());
    let name = options.deployment.clone();
    let warnings = preview::inject_object(object, &image).map_err(|e| match e {
        PreviewError::Denied { denial, .. } => PlanError::Denied {
            name: name.clone(),
            denial,
        },
        source => PlanError::Inject {
            name: name.clone(),
            source: Box::new(source),
        },
    })?;
    for w in warnings {
        note(format!("Warning: {w}"));
    }
    plan_job::plan_job(object, job_options).map_err(no_job)
}

/// The image of a Deployment's injected program: the one its webhook chose.
fn code_image_of(d: &Deployment) -> Option<CodeImage> {
    crate::injected::code_image_of(d.spec.as_ref()?.template.spec.as_ref()?)
}

/// A name suffix no other run of this release takes: two pipelines may plan one release
/// at once.
fn fresh_suffix() -> String {
    use std::hash::BuildHasher;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()));
    format!("{:08x}", random & 0xffff_ffff)
}

/// SIGINT (Ctrl-C) and SIGTERM (a cancelled pipeline).
struct Signals(Option<(Signal, Signal)>);

impl Signals {
    /// Without the handlers (never on Linux), a signal ends the process as it would have.
    fn install() -> Signals {
        Signals(
            signal(SignalKind::interrupt())
                .and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
                .ok(),
        )
    }

    async fn received(&mut self) {
        match &mut self.0 {
            Some((interrupt, terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// The Job being waited on.
struct Watched<'a> {
    client: &'a Client,
    namespace: &'a str,
    job: &'a str,
    container: &'a str,
}

impl Watched<'_> {
    /// Polls the Job's pod until its step ended, its pod cannot run, or `timeout`.
    async fn watch(&self, timeout: Duration) -> Result<Made, PlanError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), self.namespace);
        let selector =
            ListParams::default().labels(&format!("batch.kubernetes.io/job-name={}", self.job));
        let mut waiting_for = "the Job controller to create its pod".to_owned();
        loop {
            let list =
                pods.list(&selector)
                    .await
                    .map_err(refused("list", "pods", self.namespace))?;
            let newest = list
                .items
                .iter()
                .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
            if let Some(pod) = newest {
                match progress(pod, self.container) {
                    Progress::Waiting(what) => waiting_for = what,
                    Progress::Failed(why) => {
                        return Err(PlanError::PodFailed {
                            pod: pod.name_any(),
                            why,
                        });
                    }
                    Progress::Ended { exit_code, message } => {
                        return self.read(&pods, &pod.name_any(), exit_code, message).await;
                    }
                }
            } else {
                // No pod: the Job may have failed to make one (its deadline, a quota).
                let job = jobs.get(self.job).await.map_err(refused(
                    "get",
                    format!("jobs/{}", self.job),
                    self.namespace,
                ))?;
                if let Some(why) = job_failure(&job) {
                    return Err(PlanError::JobFailed {
                        job: self.job.to_owned(),
                        why,
                    });
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PlanError::Timeout {
                    seconds: timeout.as_secs(),
                    waiting_for,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The report from the step's log, else its summary (the termination message).
    async fn read(
        &self,
        pods: &Api<Pod>,
        pod: &str,
        exit_code: i32,
        message: Option<String>,
    ) -> Result<Made, PlanError> {
        let params = LogParams {
            container: Some(self.container.to_owned()),
            ..LogParams::default()
        };
        let why = match pods.logs(pod, &params).await {
            Ok(log) => match Report::find_line(&log).map(|l| (l, Report::parse(l))) {
                Some((line, Ok(report))) => {
                    return Ok(Made::Report {
                        report: Box::new(report),
                        line: line.to_owned(),
                        exit_code,
                    });
                }
                Some((_, Err(e))) => format!("its report line is not valid: {e}"),
                None => "its log has no report".to_owned(),
            },
            Err(e) => {
                let e = refused("get", "pods/log", self.namespace)(e);
                format!("cannot read its log: {}", Chain(&e))
            }
        };
        let message = message.unwrap_or_default();
        let message = match message.trim() {
            "" => "no termination message".to_owned(),
            text => text.to_owned(),
        };
        match Summary::parse(&message) {
            Some(summary) => Ok(Made::Summary {
                summary: Box::new(summary),
                why,
            }),
            None => Err(PlanError::StepFailed {
                exit_code,
                message,
                why,
            }),
        }
    }
}

/// The Job's `Failed` condition, as a reason and message.
fn job_failure(job: &Job) -> Option<String> {
    let failed = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(reason_message(
        failed.reason.as_deref(),
        failed.message.as_deref(),
    ))
}

fn reason_message(reason: Option<&str>, message: Option<&str>) -> String {
    match (reason, message) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "no reason given".to_owned(),
    }
}

/// Where the Job's pod stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// Still on its way; what it waits for, in words.
    Waiting(String),
    /// It cannot get to the step's end.
    Failed(String),
    /// The step ended.
    Ended {
        exit_code: i32,
        message: Option<String>,
    },
}

/// Where the pod stands, from its status: the step ended, or something stops it (an
/// image that cannot be pulled, an init container that failed, the pod failed), or what
/// it is waiting for.
fn progress(pod: &Pod, container: &str) -> Progress {
    let Some(status) = pod.status.as_ref() else {
        return Progress::Waiting("the pod to be scheduled".to_owned());
    };
    let init = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    let main = status.container_statuses.as_deref().unwrap_or_default();
    for s in init.iter().chain(main) {
        let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref());
        if let Some(w) = waiting
            && let Some(reason) = w.reason.as_deref()
            && CANNOT_START.contains(&reason)
        {
            return Progress::Failed(format!(
                "container {} cannot start: {}",
                s.name,
                reason_message(Some(reason), w.message.as_deref())
            ));
        }
    }
    if let Some(t) = main
        .iter()
        .find(|s| s.name == container)
        .and_then(|s| s.state.as_ref()?.terminated.as_ref())
    {
        return Progress::Ended {
            exit_code: t.exit_code,
            message: t.message.clone(),
        };
    }
    // Native sidecars restart on their own; the others run once, in order.
    let sidecars: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let once: Vec<&ContainerStatus> = init
        .iter()
        .filter(|s| !sidecars.contains(&s.name.as_str()))
        .collect();
    for s in &once {
        if let Some(t) = s.state.as_ref().and_then(|st| st.terminated.as_ref())
            && t.exit_code != 0
        {
            let why = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .or(t.reason.as_deref())
                .unwrap_or("no message");
            return Progress::Failed(format!(
                "init container {} failed with exit code {}: {why}",
                s.name, t.exit_code
            ));
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Progress::Failed(reason_message(
            status.reason.as_deref(),
            status.message.as_deref(),
        ));
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        return Progress::Waiting(format!(
            "the pod to be scheduled ({})",
            reason_message(c.reason.as_deref(), c.message.as_deref())
        ));
    }
    let unfinished = once
        .iter()
        .find(|s| s.state.as_ref().is_none_or(|st| st.terminated.is_none()));
    if let Some(s) = unfinished {
        return Progress::Waiting(format!("init container {} ({})", s.name, state_words(s)));
    }
    match main.iter().find(|s| s.name == container) {
        Some(s) => Progress::Waiting(format!("container {container} ({})", state_words(s))),
        None => Progress::Waiting("the pod to start".to_owned()),
    }
}

/// A container's state in a few words: `running`, `waiting: ContainerCreating`.
fn state_words(s: &ContainerStatus) -> String {
    let state = s.state.as_ref();
    if state.and_then(|st| st.running.as_ref()).is_some() {
        return "running".to_owned();
    }
    match state.and_then(|st| st.waiting.as_ref()) {
        Some(w) => format!(
            "waiting: {}",
            reason_message(w.reason.as_deref(), w.message.as_deref())
        ),
        None => "not started".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injected::CodeDelivery;
    use crate::names::CODE_CONTAINER;

    #[test]
    fn a_deployment_is_named_as_kubectl_names_it() {
        for arg in [
            "shop",
            "deployment/shop",
            "deploy/shop",
            "deployments/shop",
            "deployment.apps/shop",
        ] {
            assert_eq!(parse_target(arg).as_deref(), Ok("shop"), "{arg}");
        }
        assert_eq!(parse_target("shop-v2.eu").as_deref(), Ok("shop-v2.eu"));
        let e = parse_target("statefulset/shop").unwrap_err();
        assert_eq!(
            e,
            TargetError::Kind {
                kind: "statefulset".into()
            }
        );
        assert!(
            e.to_string()
                .contains("give NAME or deployment/NAME (or deploy/NAME, deployments/NAME)"),
            "{e}"
        );
        for bad in ["", "deployment/", "Shop", "a/b/c", "deploy/-x", "shop_1"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    fn pod(status: &Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "shop-plan-1-abcde"},
            "spec": {
                "initContainers": [
                    {"name": "proxy", "restartPolicy": "Always"},
                    {"name": "django-migrate-code"},
                ],
                "containers": [{"name": "django-migrate"}],
            },
            "status": status,
        }))
        .unwrap()
    }

    fn container(name: &str, state: &Value) -> Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": state})
    }

    #[test]
    fn the_pods_progress_says_what_it_waits_for_and_what_stops_it() {
        let step = |state: Value| {
            pod(&json!({
                "phase": "Running",
                "initContainerStatuses": [
                    container("proxy", &json!({"running": {}})),
                    container("django-migrate-code", &json!({"terminated": {"exitCode": 0}})),
                ],
                "containerStatuses": [container("django-migrate", &state)],
            }))
        };
        assert_eq!(
            progress(&step(json!({"running": {}})), MIGRATE_CONTAINER),
            Progress::Waiting("container django-migrate (running)".into())
        );
        assert_eq!(
            progress(
                &step(
                    json!({"terminated": {"exitCode": 5, "message": "{\"result\": \"unsafe-blocked\"}"}})
                ),
                MIGRATE_CONTAINER
            ),
            Progress::Ended {
                exit_code: 5,
                message: Some("{\"result\": \"unsafe-blocked\"}".into())
            }
        );
        let pull = step(
            json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"shop:3\""}}),
        );
        assert_eq!(
            progress(&pull, MIGRATE_CONTAINER),
            Progress::Failed(
                "container django-migrate cannot start: ImagePullBackOff: Back-off pulling image \"shop:3\"".into()
            )
        );
        let copy_failed = pod(&json!({
            "phase": "Failed",
            "initContainerStatuses": [
                container("proxy", &json!({"terminated": {"exitCode": 137}})),
                container("django-migrate-code", &json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "cannot write\n"}})),
            ],
            "containerStatuses": [container("django-migrate", &json!({"waiting": {"reason": "PodInitializing"}}))],
        }));
        assert_eq!(
            progress(&copy_failed, MIGRATE_CONTAINER),
            Progress::Failed(
                "init container django-migrate-code failed with exit code 1: cannot write".into()
            )
        );
        let copying = pod(&json!({
            "phase": "Pending",
            "initContainerStatuses": [
                container("proxy", &json!({"running": {}})),
                container("django-migrate-code", &json!({"waiting": {"reason": "ContainerCreating"}})),
            ],
        }));
        assert_eq!(
            progress(&copying, MIGRATE_CONTAINER),
            Progress::Waiting(
                "init container django-migrate-code (waiting: ContainerCreating)".into()
            )
        );
        let unschedulable = pod(&json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available"}],
        }));
        assert_eq!(
            progress(&unschedulable, MIGRATE_CONTAINER),
            Progress::Waiting(
                "the pod to be scheduled (Unschedulable: 0/3 nodes are available)".into()
            )
        );
        let deadline = pod(&json!({"phase": "Failed", "reason": "DeadlineExceeded",
                                   "message": "Pod was active on the node longer than the specified deadline"}));
        assert!(matches!(
            progress(&deadline, MIGRATE_CONTAINER),
            Progress::Failed(why) if why.starts_with("DeadlineExceeded: ")
        ));
    }

    #[test]
    fn a_refusal_names_the_permission() {
        let status = kube::core::Status::failure(
            "jobs.batch is forbidden: User \"ci\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"prod\"",
            "Forbidden",
        )
        .with_code(403);
        let e = refused("create", "jobs", "prod")(kube::Error::Api(status.boxed()));
        assert_eq!(e.outcome(), Outcome::Cluster);
        let text = e.to_string();
        assert!(
            text.starts_with("forbidden to create jobs in namespace prod: jobs.batch is forbidden"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("(plan needs, in the namespace: {PERMISSIONS})")),
            "{text}"
        );
        let missing = kube::core::Status::failure("not found", "NotFound").with_code(404);
        let e = refused("get", "jobs/x", "prod")(kube::Error::Api(missing.boxed()));
        assert!(matches!(e, PlanError::Api { .. }));
        assert_eq!(e.to_string(), "cannot get jobs/x in namespace prod");
    }

    #[test]
    fn the_exit_code_of_each_failure() {
        let timeout = PlanError::Timeout {
            seconds: 600,
            waiting_for: "container django-migrate (running)".into(),
        };
        assert_eq!(timeout.outcome(), Outcome::NotMade);
        assert_eq!(
            timeout.to_string(),
            "no plan within 600s: still waiting for container django-migrate (running)"
        );
        assert_eq!(PlanError::Interrupted.outcome(), Outcome::NotMade);
        let not_found = PlanError::NotFound {
            namespace: "prod".into(),
            name: "shop".into(),
        };
        assert_eq!(not_found.outcome(), Outcome::Cluster);
        let summary = Summary::parse(
            r#"{"mode": "plan", "result": "credentials-rejected", "exit_code": 3, "message": "password authentication failed"}"#,
        )
        .unwrap();
        let made = Made::Summary {
            summary: Box::new(summary),
            why: "its log has no report".into(),
        };
        assert_eq!(made.outcome(), Outcome::NotMade);
    }

    #[test]
    fn the_code_image_is_the_stored_one() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "shop"},
            "spec": {"selector": {}, "template": {"spec": {
                "initContainers": [{"name": CODE_CONTAINER, "image": "registry.local/dmw:9", "imagePullPolicy": "Always"}],
                "containers": [{"name": "web"}]}}}
        }))
        .unwrap();
        assert_eq!(
            code_image_of(&d),
            Some(CodeImage {
                image: "registry.local/dmw:9".into(),
                pull_policy: "Always".into(),
                delivery: CodeDelivery::Copy,
            })
        );
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "shop"},
            "spec": {"selector": {}, "template": {"spec": {
                "initContainers": [{"name": MIGRATE_CONTAINER, "image": "app:2"}],
                "volumes": [{"name": crate::names::CODE_VOLUME, "image": {"reference": "registry.local/dmw:9"}}],
                "containers": [{"name": "web"}]}}}
        }))
        .unwrap();
        assert_eq!(
            code_image_of(&d),
            Some(CodeImage {
                image: "registry.local/dmw:9".into(),
                pull_policy: "IfNotPresent".into(),
                delivery: CodeDelivery::ImageVolume,
            })
        );
        assert_eq!(code_image_of(&Deployment::default()), None);
        assert_ne!(fresh_suffix(), fresh_suffix());
    }
}
