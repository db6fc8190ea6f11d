//! `check`: whether a cluster can run the product (`--pre`, before `helm install`) and
//! whether an installation works (after it), the way `linkerd check` and `cmctl check api`
//! answer their users. Every line says what was checked; a failed or doubtful one says
//! what to do. Only reads, `SelfSubjectAccessReview`s and one server-side dry run: nothing
//! is stored.

use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use thiserror::Error;

use crate::injected::CodeDelivery;
use crate::names::{
    CODE_CONTAINER, CODE_VOLUME, INJECT_LABEL, MIGRATE_CONTAINER, MIGRATED_CONDITION, POLICY_LABEL,
    WEBHOOK_NAME,
};

/// The oldest Kubernetes this release supports (the chart's `kubeVersion`).
pub const MIN_KUBERNETES: (u32, u32) = (1, 34);
/// Kubernetes serves the admission policies of `policy` mode as v1 from this minor on.
pub const POLICY_KUBERNETES: (u32, u32) = (1, 36);
/// A serving certificate that expires sooner than this is reported.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// A fact that needs no action.
    Info,
    /// Works, but needs attention soon.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub section: &'static str,
    pub outcome: Outcome,
    pub message: String,
    /// What to do, for a line that warns or fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Every line, in the order checked.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    fn push(
        &mut self,
        section: &'static str,
        outcome: Outcome,
        message: String,
        hint: Option<String>,
    ) {
        self.lines.push(Line {
            section,
            outcome,
            message,
            hint,
        });
    }
    fn ok(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Outcome::Ok, message.into(), None);
    }
    fn info(&mut self, section: &'static str, message: impl Into<String>) {
        self.push(section, Outcome::Info, message.into(), None);
    }
    fn warn(&mut self, section: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(section, Outcome::Warn, message.into(), Some(hint.into()));
    }
    fn fail(&mut self, section: &'static str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(section, Outcome::Fail, message.into(), Some(hint.into()));
    }

    /// True when a check failed.
    pub fn failed(&self) -> bool {
        self.lines.iter().any(|l| l.outcome == Outcome::Fail)
    }

    /// The report as people read it: sections, one line per check, hints indented below.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for line in &self.lines {
            if line.section != section {
                section = line.section;
                if !out.is_empty() {
                    out.push('\n');
                }
                let _ = writeln!(out, "{section}\n{}", "-".repeat(section.len()));
            }
            let mark = match line.outcome {
                Outcome::Ok => "[ok]  ",
                Outcome::Info => "[info]",
                Outcome::Warn => "[warn]",
                Outcome::Fail => "[FAIL]",
            };
            let _ = writeln!(out, "{mark} {}", line.message);
            if let Some(hint) = &line.hint {
                let _ = writeln!(out, "       -> {hint}");
            }
        }
        let failed = self
            .lines
            .iter()
            .filter(|l| l.outcome == Outcome::Fail)
            .count();
        let warned = self
            .lines
            .iter()
            .filter(|l| l.outcome == Outcome::Warn)
            .count();
        let _ = match (failed, warned) {
            (0, 0) => writeln!(out, "\nAll checks passed."),
            (0, w) => writeln!(out, "\nAll checks passed, {w} with a warning."),
            (f, _) => writeln!(out, "\n{f} check(s) failed."),
        };
        out
    }
}

/// Errors that end the check before any line could be checked.
#[derive(Debug, Error)]
pub enum CheckError {
    #[error("cannot reach the Kubernetes API server")]
    Unreachable(#[source] kube::Error),
}

/// How the chart will be installed: what `--pre` checks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallMode {
    /// The webhook (`mode: webhook`, the default).
    Webhook,
    /// Admission policies (`mode: policy`, Kubernetes 1.36 and later).
    Policy,
}

/// `check --pre`'s options.
#[derive(Clone, Debug)]
pub struct PreOptions {
    /// The namespace the chart will be installed into.
    pub namespace: String,
    pub mode: InstallMode,
    /// `tls.mode: certManager`: cert-manager must serve its API.
    pub cert_manager: bool,
    /// `controller.contractJobs`: the chart grants Jobs too.
    pub contract_jobs: bool,
    /// The chart's `codeDelivery`.
    pub code_delivery: CodeDelivery,
}

/// `check`'s options (after install).
#[derive(Clone, Debug)]
pub struct InstalledOptions {
    /// Namespace of the installation (default: found by looking in every namespace).
    pub namespace: Option<String>,
    /// Where the dry run of a labelled Deployment is sent.
    pub probe_namespace: String,
}

const API: &str = "Kubernetes API";
const ADMISSION: &str = "Admission";
const NODES: &str = "Nodes";
const TLS: &str = "TLS";
const RBAC: &str = "Permissions of the caller";
const INSTALL: &str = "Installation";
const CONTROLLER: &str = "Controller";
const INJECTION: &str = "Injection";

/// `major.minor.patch` of a `gitVersion` (`v1.37.2`, `v1.33.4-gke.1`).
fn parse_version(git_version: &str) -> Option<(u32, u32, u32)> {
    let v = git_version.strip_prefix('v').unwrap_or(git_version);
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// The API server's version, or the error that says it cannot be reached.
async fn server_version(
    client: &Client,
    report: &mut Report,
) -> Result<Option<(u32, u32)>, CheckError> {
    let info = client
        .apiserver_version()
        .await
        .map_err(CheckError::Unreachable)?;
    report.ok(
        API,
        format!("the API server answers: Kubernetes {}", info.git_version),
    );
    let Some((major, minor, _)) = parse_version(&info.git_version) else {
        report.warn(
            API,
            format!("cannot read a version from {:?}", info.git_version),
            "the version checks below assume a supported version",
        );
        return Ok(None);
    };
    if (major, minor) >= MIN_KUBERNETES {
        report.ok(
            API,
            format!(
                "Kubernetes {major}.{minor} is supported (1.{} or later)",
                MIN_KUBERNETES.1
            ),
        );
    } else {
        report.fail(
            API,
            format!(
                "Kubernetes {major}.{minor} is older than 1.{}, the oldest this release supports",
                MIN_KUBERNETES.1
            ),
            "upgrade the cluster first (the chart refuses to install on it)",
        );
    }
    Ok(Some((major, minor)))
}

/// The plural resource names `group_version` serves (empty when it is not served).
async fn served(client: &Client, group_version: &str) -> Vec<String> {
    let list = if group_version.contains('/') {
        client.list_api_group_resources(group_version).await
    } else {
        client.list_core_api_resources(group_version).await
    };
    list.map(|l| l.resources.into_iter().map(|r| r.name).collect())
        .unwrap_or_default()
}

/// `check --pre`: can the chart be installed here, as `options` says it will be?
pub async fn pre(client: &Client, options: &PreOptions) -> Result<Report, CheckError> {
    let mut report = Report::default();
    let version = server_version(client, &mut report).await?;

    let admission = served(client, "admissionregistration.k8s.io/v1").await;
    let has = |r: &str| admission.iter().any(|a| a == r);
    if has("mutatingwebhookconfigurations") {
        report.ok(
            ADMISSION,
            "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration is served",
        );
    } else if options.mode == InstallMode::Webhook {
        report.fail(
            ADMISSION,
            "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration is not served",
            "the API server runs without the MutatingAdmissionWebhook admission plugin: enable it (--enable-admission-plugins)",
        );
    }
    let policies = has("mutatingadmissionpolicies") && has("validatingadmissionpolicies");
    match (policies, options.mode) {
        (true, InstallMode::Policy) => report.ok(
            ADMISSION,
            "admissionregistration.k8s.io/v1 MutatingAdmissionPolicy and ValidatingAdmissionPolicy are served: policy mode can be used",
        ),
        (true, InstallMode::Webhook) => report.info(
            ADMISSION,
            "policy mode can be used here too (mode: policy puts no server of ours in the API server's write path)",
        ),
        (false, InstallMode::Policy) => report.fail(
            ADMISSION,
            "admissionregistration.k8s.io/v1 MutatingAdmissionPolicy is not served: policy mode cannot be used",
            format!(
                "policy mode needs Kubernetes 1.{} or later{}; install with mode: webhook (the default)",
                POLICY_KUBERNETES.1,
                version.map_or(String::new(), |(a, b)| format!(" (this is {a}.{b})"))
            ),
        ),
        (false, InstallMode::Webhook) => report.info(
            ADMISSION,
            format!(
                "policy mode is not available (Kubernetes 1.{} or later serves its v1 policies)",
                POLICY_KUBERNETES.1
            ),
        ),
    }

    image_volumes(
        client,
        options.code_delivery,
        &options.namespace,
        &mut report,
    )
    .await;

    if options.cert_manager {
        let resources = served(client, "cert-manager.io/v1").await;
        if ["certificates", "issuers"]
            .iter()
            .all(|r| resources.iter().any(|s| s == r))
        {
            report.ok(TLS, "cert-manager.io/v1 Certificate and Issuer are served");
        } else {
            report.fail(
                TLS,
                "cert-manager.io/v1 Certificate and Issuer are not served: cert-manager is not installed",
                "install cert-manager first, or install with tls.mode: generate (the default)",
            );
        }
    }

    permissions(client, options, &mut report).await;
    Ok(report)
}

/// Whether the code can be delivered as an image volume here: the API server keeps the
/// field (a server-side dry run of a pod in `namespace`), and every node's kubelet and
/// runtime mount it (`nodeInfo`). With `codeDelivery: imageVolume` a gap fails (a pod on
/// such a node cannot start its step); with `copy` it is a fact.
async fn image_volumes(
    client: &Client,
    delivery: CodeDelivery,
    namespace: &str,
    report: &mut Report,
) {
    let wanted = delivery == CodeDelivery::ImageVolume;
    let served = image_volume_served(client, namespace).await;
    match (&served, wanted) {
        (Ok(true), true) => report.ok(
            NODES,
            "the API server serves image volumes (volumes[].image): codeDelivery imageVolume",
        ),
        (Ok(false), true) => report.fail(
            NODES,
            "the API server drops image volumes (volumes[].image): codeDelivery is imageVolume, so injected pods would lose the code volume and its mount, and their step could not run",
            "image volumes are on by default from Kubernetes 1.35 (beta behind the ImageVolume feature gate in 1.33 and 1.34): turn the gate on for the API server and every kubelet, or use codeDelivery: copy",
        ),
        (Err(why), true) => report.warn(
            NODES,
            format!("cannot tell whether the API server serves image volumes: {why}"),
            format!("run check as a user who may create pods in namespace {namespace} (a server-side dry run, nothing is stored)"),
        ),
        (Ok(false), false) => report.info(
            NODES,
            "the API server drops image volumes (volumes[].image): codeDelivery stays copy",
        ),
        _ => {}
    }
    image_volume_nodes(client, wanted, served == Ok(true), report).await;
}

/// Which nodes' kubelet and runtime mount image volumes; `served`: the API server keeps the
/// field.
async fn image_volume_nodes(client: &Client, wanted: bool, served: bool, report: &mut Report) {
    let nodes = match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            let message = format!("cannot list nodes ({e}): image-volume support unknown");
            if wanted {
                report.warn(NODES, message, "run check as a user who may list nodes");
            } else {
                report.info(NODES, message);
            }
            return;
        }
    };
    let unable: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let info = n.status.as_ref().and_then(|s| s.node_info.as_ref());
            let (kubelet, runtime) = info.map_or(("?", "?"), |i| {
                (
                    i.kubelet_version.as_str(),
                    i.container_runtime_version.as_str(),
                )
            });
            (!image_volume_capable(kubelet, runtime))
                .then(|| format!("{} (kubelet {kubelet}, {runtime})", n.name_any()))
        })
        .collect();
    let capable = nodes.len() - unable.len();
    let listed = |names: &[String]| {
        let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > 5 {
            let _ = write!(text, " and {} more", names.len() - 5);
        }
        text
    };
    let needs = "kubelet 1.35+ with containerd 2.1+ or CRI-O 1.31+";
    if !wanted {
        let can_switch = served && unable.is_empty() && !nodes.is_empty();
        report.info(
            NODES,
            format!(
                "{} node(s); {capable} can mount the code as an image volume ({needs}){}",
                nodes.len(),
                if can_switch {
                    ": codeDelivery imageVolume can be used here (one init container fewer per pod)"
                } else {
                    ""
                }
            ),
        );
    } else if nodes.is_empty() {
        report.warn(
            NODES,
            "no node is registered: image-volume support unknown",
            "run check again once the nodes have joined",
        );
    } else if unable.is_empty() {
        report.ok(
            NODES,
            format!(
                "every node ({}) can mount the code as an image volume ({needs})",
                nodes.len()
            ),
        );
    } else {
        let message = format!(
            "{} of {} node(s) cannot mount the code as an image volume: {}",
            unable.len(),
            nodes.len(),
            listed(&unable)
        );
        let hint = format!(
            "an injected pod scheduled there fails with reason MigrationCodeUnavailable: upgrade those nodes ({needs}), keep injected workloads off them, or use codeDelivery: copy"
        );
        if capable == 0 {
            report.fail(NODES, message, hint);
        } else {
            report.warn(NODES, message, hint);
        }
    }
}

/// Whether a server-side dry run of a pod with an image volume keeps the field (an API
/// server without the feature drops it, and then refuses a volume without a source).
async fn image_volume_served(client: &Client, namespace: &str) -> Result<bool, String> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "django-migrate-check-image-volume"},
        "spec": {
            "containers": [{"name": "probe", "image": "django-migrate-check:dry-run"}],
            "volumes": [{"name": "code", "image": {"reference": "django-migrate-check:dry-run", "pullPolicy": "IfNotPresent"}}],
        }
    }))
    .map_err(|e| e.to_string())?;
    let params = PostParams {
        dry_run: true,
        field_manager: Some("django-migrate-webhook-check".into()),
    };
    let mut result = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, &pod)
        .await;
    // Before install, the chart's namespace may not exist yet.
    if matches!(&result, Err(kube::Error::Api(s)) if s.code == 404) && namespace != "default" {
        result = Api::<Pod>::namespaced(client.clone(), "default")
            .create(&params, &pod)
            .await;
    }
    match result {
        Ok(stored) => Ok(stored
            .spec
            .and_then(|s| s.volumes)
            .unwrap_or_default()
            .iter()
            .any(|v| v.image.is_some())),
        Err(kube::Error::Api(s)) if s.code == 422 => Ok(false),
        Err(kube::Error::Api(s)) => Err(format!(
            "a dry run of a pod in namespace {namespace} was refused: {}",
            s.message
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A node whose kubelet and runtime mount image volumes.
pub fn image_volume_capable(kubelet: &str, runtime: &str) -> bool {
    let kubelet_ok = parse_version(kubelet).is_some_and(|(a, b, _)| (a, b) >= (1, 35));
    let runtime_ok = match runtime.split_once("://") {
        Some(("containerd", v)) => parse_version(v).is_some_and(|(a, b, _)| (a, b) >= (2, 1)),
        Some(("cri-o", v)) => parse_version(v).is_some_and(|(a, b, _)| (a, b) >= (1, 31)),
        _ => false,
    };
    kubelet_ok && runtime_ok
}

/// One permission: verb, API group, resource (with subresource after a `/`), and whether it
/// is namespaced (checked in the install namespace) or cluster-wide.
type Permission = (&'static str, &'static str, &'static str, bool);

/// What installing the chart creates, so what its installer must be allowed to create.
fn install_permissions(options: &PreOptions) -> Vec<Permission> {
    let mut p: Vec<Permission> = vec![
        ("create", "apps", "deployments", true),
        ("create", "", "services", true),
        ("create", "", "serviceaccounts", true),
        ("create", "policy", "poddisruptionbudgets", true),
        ("create", "rbac.authorization.k8s.io", "roles", true),
        ("create", "rbac.authorization.k8s.io", "rolebindings", true),
        ("create", "rbac.authorization.k8s.io", "clusterroles", false),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            false,
        ),
        // The uninstall hook (`uninstall.removeInjection`).
        ("create", "batch", "jobs", true),
    ];
    match options.mode {
        InstallMode::Webhook => {
            p.push(("create", "", "secrets", true));
            p.push((
                "create",
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                false,
            ));
        }
        InstallMode::Policy => {
            for r in [
                "mutatingadmissionpolicies",
                "mutatingadmissionpolicybindings",
                "validatingadmissionpolicies",
                "validatingadmissionpolicybindings",
            ] {
                p.push(("create", "admissionregistration.k8s.io", r, false));
            }
        }
    }
    if options.cert_manager {
        p.push(("create", "cert-manager.io", "certificates", true));
        p.push(("create", "cert-manager.io", "issuers", true));
    }
    p
}

/// What the chart grants the controller: RBAC lets a user grant only what they hold.
fn granted_permissions(options: &PreOptions) -> Vec<Permission> {
    let mut p: Vec<Permission> = vec![
        ("get", "", "pods", false),
        ("list", "", "pods", false),
        ("watch", "", "pods", false),
        ("patch", "", "pods/status", false),
        ("get", "apps", "deployments", false),
        ("list", "apps", "deployments", false),
        ("watch", "apps", "deployments", false),
        ("get", "apps", "statefulsets", false),
        ("list", "apps", "statefulsets", false),
        ("watch", "apps", "statefulsets", false),
        ("list", "batch", "jobs", false),
        ("watch", "batch", "jobs", false),
        ("list", "batch", "cronjobs", false),
        ("watch", "batch", "cronjobs", false),
        ("create", "", "events", false),
        ("patch", "", "events", false),
        ("create", "events.k8s.io", "events", false),
        ("patch", "events.k8s.io", "events", false),
        ("get", "coordination.k8s.io", "leases", true),
        ("create", "coordination.k8s.io", "leases", true),
        ("update", "coordination.k8s.io", "leases", true),
        ("patch", "coordination.k8s.io", "leases", true),
        // The uninstall hook takes the injection out of every workload (a grant on
        // Rollouts holds where Argo Rollouts is not installed too).
        ("patch", "apps", "deployments", false),
        ("patch", "apps", "statefulsets", false),
        ("get", "batch", "cronjobs", false),
        ("patch", "batch", "cronjobs", false),
        ("get", "argoproj.io", "rollouts", false),
        ("list", "argoproj.io", "rollouts", false),
        ("patch", "argoproj.io", "rollouts", false),
    ];
    if options.contract_jobs {
        p.push(("list", "apps", "replicasets", false));
        p.push(("list", "apps", "controllerrevisions", false));
        for verb in ["create", "get"] {
            p.push((verb, "batch", "jobs", false));
        }
    }
    p
}

/// The permissions in `wanted` the caller lacks, as `verb resource` words.
async fn missing(client: &Client, namespace: &str, wanted: &[Permission]) -> Vec<String> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for &(verb, group, resource, namespaced) in wanted {
        let (resource_name, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource_name.into()),
                    subresource: (!subresource.is_empty()).then(|| subresource.into()),
                    namespace: namespaced.then(|| namespace.into()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let allowed = api
            .create(&PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        if !allowed {
            let group = if group.is_empty() {
                String::new()
            } else {
                format!(".{group}")
            };
            missing.push(format!("{verb} {resource}{group}"));
        }
    }
    missing
}

async fn permissions(client: &Client, options: &PreOptions, report: &mut Report) {
    let ns = &options.namespace;
    let namespace_exists = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt(ns)
        .await
        .ok()
        .flatten()
        .is_some();
    let mut create = install_permissions(options);
    if !namespace_exists {
        create.push(("create", "", "namespaces", false));
    }
    let lacking = missing(client, ns, &create).await;
    if lacking.is_empty() {
        report.ok(
            RBAC,
            format!("you can create every kind of object the chart installs ({} checked, namespace {ns})", create.len()),
        );
    } else {
        report.fail(
            RBAC,
            format!("you cannot {} (namespace {ns})", lacking.join(", ")),
            "install as a cluster administrator, or ask one for these permissions",
        );
    }
    let granted = granted_permissions(options);
    let lacking = missing(client, ns, &granted).await;
    if lacking.is_empty() {
        report.ok(
            RBAC,
            format!(
                "you hold every permission the chart grants its controller ({} checked)",
                granted.len()
            ),
        );
    } else {
        report.fail(
            RBAC,
            format!("you cannot {}, which the chart grants its controller", lacking.join(", ")),
            "RBAC lets you grant only what you hold (or the escalate verb): install as a cluster administrator",
        );
    }
}

// ------------------------------------------------------------------ after install

/// What the installation's own Deployment says about it.
#[derive(Debug)]
struct Installation {
    deployment: Deployment,
    namespace: String,
    name: String,
    args: Vec<String>,
}

impl Installation {
    fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
    fn value(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.args.iter().find_map(|a| a.strip_prefix(&prefix))
    }
    fn image(&self) -> Option<&str> {
        self.container().and_then(|c| c.image.as_deref())
    }
    fn container(&self) -> Option<&k8s_openapi::api::core::v1::Container> {
        let spec = self.deployment.spec.as_ref()?.template.spec.as_ref()?;
        spec.containers.iter().find(|c| {
            c.args
                .as_ref()
                .and_then(|a| a.first())
                .is_some_and(|a| a == "serve")
        })
    }
    /// The Secret mounted as the serving certificate.
    fn tls_secret(&self) -> Option<String> {
        let spec = self.deployment.spec.as_ref()?.template.spec.as_ref()?;
        let cert = self.value("--tls-cert")?;
        let mount = self
            .container()?
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| cert.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())?;
        spec.volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)?
            .secret
            .as_ref()?
            .secret_name
            .clone()
    }
}

/// The installations: Deployments whose container runs `serve` of this binary.
async fn find_installations(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<Installation>, kube::Error> {
    let api: Api<Deployment> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await?;
    let mut found = Vec::new();
    for deployment in list.items {
        let mut installation = Installation {
            namespace: deployment.namespace().unwrap_or_default(),
            name: deployment.name_any(),
            args: Vec::new(),
            deployment,
        };
        let Some(container) = installation.container() else {
            continue;
        };
        let args = container.args.clone().unwrap_or_default();
        if args.iter().any(|a| a.starts_with("--code-image")) {
            installation.args = args;
            found.push(installation);
        }
    }
    Ok(found)
}

/// `check` after install: is the installation running, registered, trusted, leading, and
/// does a labelled Deployment come back injected?
pub async fn installed(client: &Client, options: &InstalledOptions) -> Result<Report, CheckError> {
    let mut report = Report::default();
    server_version(client, &mut report).await?;

    let installations = match find_installations(client, options.namespace.as_deref()).await {
        Ok(i) => i,
        Err(e) => {
            report.fail(
                INSTALL,
                format!("cannot list Deployments: {e}"),
                "run check with a kubeconfig that can read Deployments",
            );
            return Ok(report);
        }
    };
    let where_ = options
        .namespace
        .as_ref()
        .map_or_else(|| "any namespace".to_owned(), |n| format!("namespace {n}"));
    let installation = match installations.as_slice() {
        [] => {
            report.fail(
                INSTALL,
                format!("no django-migrate-webhook Deployment in {where_}"),
                "install the chart (helm install django-migrate-webhook charts/django-migrate-webhook -n django-migrate-system --create-namespace), or pass -n with its namespace",
            );
            return Ok(report);
        }
        [one] => one,
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|i| format!("{}/{}", i.namespace, i.name))
                .collect();
            report.fail(
                INSTALL,
                format!("{} installations found: {}", many.len(), names.join(", ")),
                "pass -n NAMESPACE to check one of them",
            );
            return Ok(report);
        }
    };
    let policy_mode = installation.flag("--no-webhook");
    report.ok(
        INSTALL,
        format!(
            "found {}/{} in {} mode, image {}",
            installation.namespace,
            installation.name,
            if policy_mode { "policy" } else { "webhook" },
            installation.image().unwrap_or("(none)")
        ),
    );
    replicas(installation, &mut report);
    if let Some(tag) = installation.image().and_then(image_tag) {
        let version = env!("CARGO_PKG_VERSION");
        if tag != version {
            report.warn(
                INSTALL,
                format!("the installed image is {tag}, this command is {version}"),
                "use the command of the installed version, or upgrade the chart",
            );
        }
    }

    if policy_mode {
        policies(client, &mut report).await;
    } else {
        webhook(client, installation, &mut report).await;
    }
    controller(client, installation, &mut report).await;
    let delivery = match installation.value("--code-delivery") {
        Some("imageVolume" | "image-volume") => CodeDelivery::ImageVolume,
        _ => CodeDelivery::Copy,
    };
    image_volumes(client, delivery, &options.probe_namespace, &mut report).await;
    dry_run(client, &options.probe_namespace, delivery, &mut report).await;
    Ok(report)
}

/// The tag of an image reference (`None` for a digest or no tag; a registry's port is not
/// a tag).
fn image_tag(image: &str) -> Option<&str> {
    if image.contains('@') {
        return None;
    }
    let (_, tag) = image.rsplit_once(':')?;
    (!tag.contains('/')).then_some(tag)
}

fn replicas(installation: &Installation, report: &mut Report) {
    let wanted = installation
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let available = installation
        .deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let ns = &installation.namespace;
    let describe = format!(
        "kubectl -n {ns} describe deployment {} and its pods' logs",
        installation.name
    );
    if wanted == 0 {
        report.fail(
            INSTALL,
            "scaled to 0 replicas: nothing serves the webhook or runs the controller",
            format!(
                "kubectl -n {ns} scale deployment {} --replicas=2",
                installation.name
            ),
        );
    } else if available == 0 {
        report.fail(
            INSTALL,
            format!("no replica of {wanted} is available"),
            format!("see {describe}"),
        );
    } else if available < wanted {
        report.warn(
            INSTALL,
            format!("{available} of {wanted} replicas are available"),
            format!("see {describe}"),
        );
    } else {
        report.ok(
            INSTALL,
            format!("{available} of {wanted} replicas are available"),
        );
    }
}

async fn webhook(client: &Client, installation: &Installation, report: &mut Report) {
    let ns = &installation.namespace;
    let configurations = match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            report.fail(
                ADMISSION,
                format!("cannot list MutatingWebhookConfigurations: {e}"),
                "run check with a kubeconfig that can read them",
            );
            return;
        }
    };
    let registered = configurations.iter().find_map(|c| {
        let hook = c.webhooks.iter().flatten().find(|w| {
            w.name == WEBHOOK_NAME
                && w.client_config
                    .service
                    .as_ref()
                    .is_some_and(|s| s.namespace == *ns)
        })?;
        Some((c.name_any(), hook.clone()))
    });
    let Some((configuration, hook)) = registered else {
        report.fail(
            ADMISSION,
            format!(
                "no MutatingWebhookConfiguration registers {WEBHOOK_NAME} with a Service in {ns}"
            ),
            "the chart creates it: helm upgrade the release, or check that mode is webhook",
        );
        return;
    };
    let service = hook.client_config.service.clone().unwrap_or_default();
    report.ok(
        ADMISSION,
        format!(
            "MutatingWebhookConfiguration {configuration} calls Service {}/{} (failurePolicy {})",
            service.namespace,
            service.name,
            hook.failure_policy.as_deref().unwrap_or("Fail")
        ),
    );

    // The Service's ready endpoints: what the API server's calls reach.
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default().labels(&format!("kubernetes.io/service-name={}", service.name)),
        )
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let ready = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count();
    if ready == 0 {
        report.fail(
            ADMISSION,
            format!("Service {}/{} has no ready endpoint: the API server cannot call the webhook", ns, service.name),
            format!("kubectl -n {ns} get pods,endpointslices; with failurePolicy Fail, applies of opted-in Deployments fail until one is ready"),
        );
    } else {
        report.ok(
            ADMISSION,
            format!(
                "Service {}/{} has {ready} ready endpoint(s)",
                ns, service.name
            ),
        );
    }

    serving_certificate(client, installation, &hook, report).await;
}

/// The serving certificate in the mounted Secret, as the API server will check it.
async fn serving_certificate(
    client: &Client,
    installation: &Installation,
    hook: &k8s_openapi::api::admissionregistration::v1::MutatingWebhook,
    report: &mut Report,
) {
    let ns = &installation.namespace;
    let service = hook.client_config.service.clone().unwrap_or_default();
    let ca = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    if ca.is_empty() {
        report.fail(
            TLS,
            "the webhook configuration has no caBundle: the API server cannot trust the webhook",
            "with tls.mode certManager, check cert-manager's cainjector; otherwise helm upgrade the release",
        );
        return;
    }
    let Some(secret_name) = installation.tls_secret() else {
        report.info(
            TLS,
            "the serving certificate is not mounted from a Secret: not checked",
        );
        return;
    };
    let secret = match Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&secret_name)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            report.fail(TLS, format!("Secret {ns}/{secret_name} of the serving certificate does not exist"), "with tls.mode certManager, see kubectl describe certificate; with tls.mode secret, create it");
            return;
        }
        Err(e) => {
            report.info(
                TLS,
                format!(
                    "cannot read Secret {ns}/{secret_name} ({e}): the certificate is not checked"
                ),
            );
            return;
        }
    };
    let cert = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let host = format!("{}.{}.svc", service.name, service.namespace);
    match verify_serving(&ca, &cert, &host, Timestamp::now()) {
        Ok(days) if days < EXPIRY_WARNING_DAYS => report.warn(
            TLS,
            format!("the serving certificate in Secret {secret_name} is trusted for {host} but expires in {days} day(s)"),
            "cert-manager renews it on its own; with tls.mode generate, delete the Secret and helm upgrade; with tls.mode secret, replace it",
        ),
        Ok(days) => report.ok(
            TLS,
            format!("the serving certificate in Secret {secret_name} is trusted by the caBundle for {host}, valid for {days} more days"),
        ),
        Err(problem) => report.fail(
            TLS,
            format!("the serving certificate in Secret {secret_name}: {problem}"),
            "the API server refuses it the same way: re-issue it for the Service's DNS name from the CA in the caBundle",
        ),
    }
}

/// Checks a serving certificate as the API server will: chained to `ca_pem`, valid now and
/// for `host`. The whole days it stays valid, or what is wrong.
pub fn verify_serving(
    ca_pem: &[u8],
    cert_pem: &[u8],
    host: &str,
    now: Timestamp,
) -> Result<i64, String> {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("tls.crt holds no certificate".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| format!("the caBundle is not PEM: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("the caBundle holds a certificate that cannot be used: {e}"))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .map_err(|e| format!("the caBundle holds no usable CA: {e}"))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    let seconds = u64::try_from(now.as_second()).unwrap_or(0);
    verifier
        .verify_server_cert(
            leaf,
            intermediates,
            &name,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
        )
        .map_err(|e| format!("not trusted for {host}: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("tls.crt cannot be parsed: {e}"))?;
    Ok((parsed.validity().not_after.timestamp() - now.as_second()) / 86_400)
}

async fn policies(client: &Client, report: &mut Report) {
    for (kind, plural) in [
        ("MutatingAdmissionPolicy", "mutatingadmissionpolicies"),
        (
            "MutatingAdmissionPolicyBinding",
            "mutatingadmissionpolicybindings",
        ),
    ] {
        let resource = kube::discovery::ApiResource {
            group: "admissionregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: crate::policy::API_VERSION.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
        let selected = ListParams::default().labels(&format!("{POLICY_LABEL}=inject"));
        match api.list(&selected).await {
            Ok(list) if !list.items.is_empty() => {
                let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
                report.ok(ADMISSION, format!("{kind} {} injects", names.join(", ")));
            }
            Ok(_) => report.fail(
                ADMISSION,
                format!("no {kind} labelled {POLICY_LABEL}=inject"),
                "the chart creates it in mode policy: helm upgrade the release",
            ),
            Err(e) => report.fail(
                ADMISSION,
                format!("cannot list {kind}: {e}"),
                format!(
                    "policy mode needs Kubernetes 1.{} or later",
                    POLICY_KUBERNETES.1
                ),
            ),
        }
    }
}

async fn controller(client: &Client, installation: &Installation, report: &mut Report) {
    if !installation.flag("--controller") {
        report.fail(
            CONTROLLER,
            "the controller is off (controller.enabled: false): injected pods never become Ready",
            "helm upgrade with controller.enabled=true, or run something that sets the django-migrate.io/migrated condition",
        );
        return;
    }
    let ns = &installation.namespace;
    let lease_name = installation
        .value("--lease-name")
        .unwrap_or("django-migrate-webhook-controller");
    let lease = match Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(lease_name)
        .await
    {
        Ok(Some(l)) => l,
        Ok(None) => {
            report.fail(
                CONTROLLER,
                format!("no Lease {ns}/{lease_name}: no replica has started the controller"),
                format!("see the logs of the pods of {ns}/{}", installation.name),
            );
            return;
        }
        Err(e) => {
            report.fail(
                CONTROLLER,
                format!("cannot read Lease {ns}/{lease_name}: {e}"),
                "run check with a kubeconfig that can read Leases",
            );
            return;
        }
    };
    let spec = lease.spec.unwrap_or_default();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .map(|t| Timestamp::now().as_second() - t.0.as_second());
    let holder = spec.holder_identity.unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let running = pods
        .iter()
        .any(|p| p.name_any() == holder && p.metadata.deletion_timestamp.is_none());
    match renewed {
        Some(age) if !holder.is_empty() && age <= duration => {
            if running {
                report.ok(
                    CONTROLLER,
                    format!("replica {holder} holds Lease {lease_name}, renewed {age}s ago"),
                );
            } else {
                report.warn(
                    CONTROLLER,
                    format!("Lease {lease_name} is held by {holder}, which is not a pod of {ns}"),
                    "two installations may share the Lease: keep one",
                );
            }
        }
        _ => report.fail(
            CONTROLLER,
            format!(
                "no replica holds Lease {lease_name} (holder {:?}, last renewed {})",
                holder,
                renewed.map_or_else(|| "never".to_owned(), |a| format!("{a}s ago"))
            ),
            format!(
                "no pod's readiness gate is set meanwhile: see the logs of the pods of {ns}/{}",
                installation.name
            ),
        ),
    }
}

/// A server-side dry run of a labelled Deployment in `namespace`: what `kubectl apply`
/// of an opted-in Deployment gets, through whatever injects.
async fn dry_run(client: &Client, namespace: &str, delivery: CodeDelivery, report: &mut Report) {
    let name = "django-migrate-check";
    let probe: Deployment = match serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {INJECT_LABEL: "true"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "django-migrate-check:dry-run", "command": ["python", "manage.py", "runserver"]}]}
            }
        }
    })) {
        Ok(d) => d,
        Err(e) => {
            report.fail(
                INJECTION,
                format!("cannot build the probe Deployment: {e}"),
                "report this as a bug",
            );
            return;
        }
    };
    let params = PostParams {
        dry_run: true,
        field_manager: Some("django-migrate-webhook-check".into()),
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let result = match api.create(&params, &probe).await {
        Err(kube::Error::Api(s)) if s.code == 409 => api.replace(name, &params, &probe).await,
        other => other,
    };
    match result {
        Ok(stored) => {
            let spec = stored.spec.and_then(|s| s.template.spec).unwrap_or_default();
            let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
            let gated = spec.readiness_gates.iter().flatten().any(|g| g.condition_type == MIGRATED_CONDITION);
            let volume = spec.volumes.iter().flatten().find(|v| v.name == CODE_VOLUME);
            let (delivered, parts) = match delivery {
                CodeDelivery::Copy => (
                    init.contains(&CODE_CONTAINER),
                    format!("{CODE_CONTAINER}, {MIGRATE_CONTAINER}"),
                ),
                CodeDelivery::ImageVolume => (
                    volume.is_some_and(|v| v.image.is_some()) && !init.contains(&CODE_CONTAINER),
                    format!("{MIGRATE_CONTAINER}, image volume {CODE_VOLUME}"),
                ),
            };
            if delivered && init.contains(&MIGRATE_CONTAINER) && gated {
                report.ok(
                    INJECTION,
                    format!("a server-side dry run of a labelled Deployment in namespace {namespace} comes back injected ({parts}, readiness gate)"),
                );
            } else if init.contains(&MIGRATE_CONTAINER) && gated {
                report.fail(
                    INJECTION,
                    format!("a server-side dry run of a labelled Deployment in namespace {namespace} comes back injected, but not with codeDelivery {} ({parts})", delivery.as_str()),
                    "the webhook's --code-delivery and the policies' codeDelivery differ, or an older release injects: helm upgrade with one codeDelivery",
                );
            } else {
                report.fail(
                    INJECTION,
                    format!("a server-side dry run of a labelled Deployment in namespace {namespace} comes back without the injection"),
                    "the namespace may not be selected (webhook.namespaceSelector, webhook.excludeNamespaces): try --probe-namespace with a namespace of your Django apps",
                );
            }
        }
        Err(kube::Error::Api(s)) => report.fail(
            INJECTION,
            format!("a server-side dry run of a labelled Deployment in namespace {namespace} was refused: {}", s.message),
            "this is what kubectl apply of an opted-in Deployment gets now: see the lines above",
        ),
        Err(e) => report.fail(
            INJECTION,
            format!("a server-side dry run in namespace {namespace} failed: {e}"),
            "check the API server's reachability and your permissions (create deployments)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_what_providers_report() {
        assert_eq!(parse_version("v1.37.2"), Some((1, 37, 2)));
        assert_eq!(parse_version("v1.33.4-gke.1200000"), Some((1, 33, 4)));
        assert_eq!(parse_version("v1.34.1+k3s1"), Some((1, 34, 1)));
        assert_eq!(parse_version("2.1.5"), Some((2, 1, 5)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn only_a_tag_is_compared_with_the_version() {
        assert_eq!(image_tag("registry.local:5000/dmw:0.1.0"), Some("0.1.0"));
        assert_eq!(image_tag("registry.local:5000/dmw"), None);
        assert_eq!(image_tag("dmw@sha256:0123abcd"), None);
        assert_eq!(image_tag("dmw"), None);
    }

    #[test]
    fn image_volumes_need_a_new_kubelet_and_runtime() {
        assert!(image_volume_capable("v1.35.0", "containerd://2.1.4"));
        assert!(image_volume_capable("v1.37.2", "cri-o://1.31.0"));
        assert!(!image_volume_capable("v1.34.4", "containerd://2.1.4"));
        assert!(!image_volume_capable("v1.37.2", "containerd://1.7.24"));
        assert!(!image_volume_capable("v1.37.2", "docker://27.0.0"));
    }

    #[test]
    fn the_serving_certificate_is_verified_as_the_api_server_would() {
        let dev = crate::certs::generate(&["hook.ns.svc".into()], &[]).expect("certs");
        let now = Timestamp::now();
        let days = verify_serving(
            dev.ca_cert.as_bytes(),
            dev.tls_cert.as_bytes(),
            "hook.ns.svc",
            now,
        )
        .expect("trusted");
        assert!(days > EXPIRY_WARNING_DAYS, "{days}");
        let wrong_name = verify_serving(
            dev.ca_cert.as_bytes(),
            dev.tls_cert.as_bytes(),
            "other.ns.svc",
            now,
        )
        .unwrap_err();
        assert!(
            wrong_name.contains("not trusted for other.ns.svc"),
            "{wrong_name}"
        );
        let other = crate::certs::generate(&["hook.ns.svc".into()], &[]).expect("certs");
        let wrong_ca = verify_serving(
            other.ca_cert.as_bytes(),
            dev.tls_cert.as_bytes(),
            "hook.ns.svc",
            now,
        )
        .unwrap_err();
        assert!(wrong_ca.contains("not trusted"), "{wrong_ca}");
        let later = Timestamp::from_second(now.as_second() + 86_400 * 365 * 20).expect("time");
        let expired = verify_serving(
            dev.ca_cert.as_bytes(),
            dev.tls_cert.as_bytes(),
            "hook.ns.svc",
            later,
        )
        .unwrap_err();
        assert!(expired.contains("xpired"), "{expired}");
        let garbage = verify_serving(b"nothing", b"nothing", "hook.ns.svc", now).unwrap_err();
        assert!(garbage.contains("no certificate"), "{garbage}");
    }

    #[test]
    fn the_text_report_says_what_to_do_under_a_failed_line() {
        let mut report = Report::default();
        report.ok(API, "fine");
        report.fail(
            RBAC,
            "you cannot create clusterroles",
            "ask an administrator",
        );
        let text = report.text();
        assert!(report.failed());
        assert!(
            text.contains("Kubernetes API\n--------------\n[ok]   fine\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "[FAIL] you cannot create clusterroles\n       -> ask an administrator\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("1 check(s) failed.\n"), "{text}");
    }
}
