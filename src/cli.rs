//! Command-line interface: one subcommand per part of the binary.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::controller::ControllerOptions;
use crate::injected::{CodeDelivery, CodeImage};
use crate::leader::LeaseOptions;
use crate::preview::OutputFormat;
use crate::process::ServeOptions;
use crate::telemetry::LogFormat;

/// Whole seconds in `min..=max`, as a duration.
fn seconds(min: u64, max: u64) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64)
        .range(min..=max)
        .map(Duration::from_secs)
}

/// Safe Django migrations for Kubernetes Deployments.
///
/// A mutating admission webhook: a Deployment labelled `django-migrate.io/inject: "true"`
/// gets two init containers, `django-migrate-code` (copies the migration program into
/// the pod; with `--code-delivery imageVolume` an image volume brings it instead) and
/// `django-migrate` (one Django process that waits for the database and
/// migrates under a database lock, so that many pods can start at once), and the readiness
/// gate `django-migrate.io/migrated`, which the controller sets once the pod's step
/// succeeded.
#[derive(Debug, Parser)]
#[command(name = "django-migrate-webhook", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook (POST /mutate) and the health/metrics port.
    Serve(Box<ServeArgs>),
    /// Preview the injection offline: read manifests, write them back mutated.
    ///
    /// Reads YAML or JSON (several documents, `kind: List`), runs every opted-in workload
    /// (Deployment, StatefulSet, Job, CronJob, Argo Rollout) through the webhook's own
    /// engine and leaves every other document as it was. Warnings go to stderr; a denial exits 1 with the message the
    /// webhook would return.
    Inject(InjectArgs),
    /// Take the injection out of manifests: the inverse of `inject`.
    ///
    /// Reads YAML or JSON (several documents, `kind: List`, `kubectl get -o yaml` output)
    /// and writes every workload that is opted in or carries the injection back
    /// with its own pod template (the init containers, volume, readiness gate and label
    /// the webhook or the admission policies added removed, the shapes of earlier releases
    /// included), the controller's `django-migrate.io/contracted-releases` record removed,
    /// and the label `django-migrate.io/inject` set to "false", so that a later install
    /// does not inject it again unasked. Every other document is written back as it was
    /// read. For GitOps users this is the change to commit before uninstalling.
    Uninject(UninjectArgs),
    /// Remove the injection from every workload of the cluster and wait until each has
    /// rolled out: what the chart's pre-delete hook runs before `helm uninstall` removes
    /// the controller, so that no pod is left waiting for a readiness gate nobody sets.
    ///
    /// Each Deployment, StatefulSet, CronJob and Argo Rollout that is opted in or carries
    /// the injection gets its own pod template back (as `uninject` writes it, with the
    /// label `django-migrate.io/inject: "false"`); a Job cannot change, has no gate and is
    /// left. Exits 1, naming them, when a workload cannot be updated or has not rolled out
    /// within the timeout. Uses the in-cluster config or KUBECONFIG.
    RemoveInjection(RemoveInjectionArgs),
    /// Write a development CA and serving certificate (ca.crt, tls.crt, tls.key).
    Certs(CertsArgs),
    /// Write the embedded migration program into DIR (what the injected
    /// `django-migrate-code` init container runs; needs no shell).
    InstallCode(InstallCodeArgs),
    /// Show the opted-in workloads: injected or not (and why not), their settings, the
    /// migration step of each pod of the current release, and whether the rollout waits
    /// on the gate. Reads the cluster with your kubeconfig, like kubectl.
    ///
    /// Exit codes: 0 all injected and no step failed, 1 a workload is not injected or a
    /// step failed or was blocked as unsafe, 2 bad arguments, 3 the cluster could not be
    /// read. As a kubectl
    /// plugin: link this binary as `kubectl-django_migrate` on PATH, then
    /// `kubectl django-migrate status`.
    Status(StatusArgs),
    /// Print the injection as admission policies (`admissionregistration.k8s.io/v1`,
    /// Kubernetes 1.36 and later): a MutatingAdmissionPolicy that injects exactly what the
    /// webhook injects, ValidatingAdmissionPolicies for its denials and warnings, and their
    /// bindings. Apply them instead of the webhook configuration (the chart's
    /// `mode: policy` does), and keep the controller running.
    Policy(PolicyArgs),
    /// Show, before a rollout, what a Deployment's pending migrations would do to its
    /// database.
    ///
    /// Each migration in plan order, what its operations would do (the locks they take
    /// and the tables' estimated sizes, what breaks the release still serving, the data
    /// migrations to review by hand) and what the Deployment's settings would make of it
    /// (apply, hold back, defer, block). Runs the injected step in read-only `plan` mode as a one-off Job built from the
    /// Deployment's pod template (as `inject --plan-job` prints it), with your
    /// kubeconfig's credentials, which must allow in the namespace: get deployments;
    /// create, get and delete jobs; list and get pods; get pods/log. The Job is deleted
    /// afterwards (on Ctrl-C and SIGTERM too) unless --keep is given. A Deployment stored
    /// without the injection is injected here first, as the webhook would.
    ///
    /// Exit codes: 0 the rollout would pass (verdict `pass` or `nothing-pending`), 5 it
    /// would be held back or blocked (the step's own code), 1 the plan could not be made
    /// (the step failed or timed out, the pod could not run), 2 bad arguments, 3 the
    /// cluster could not be read or the Job could not be created or read.
    Plan(PlanArgs),
    /// Check a cluster before installing (`--pre`) or an installation after it.
    ///
    /// With `--pre`: the API server's version, the admission APIs (and whether policy
    /// mode and image volumes can be used), cert-manager when `--cert-manager` is given,
    /// and your permissions to install the chart. Without it: the installation's
    /// replicas, its webhook registration and Service endpoints (or its admission
    /// policies), its serving certificate against the caBundle, the controller's Lease,
    /// and a server-side dry run of a labelled Deployment, which must come back injected.
    /// Reads the cluster with your kubeconfig, like kubectl; stores nothing.
    ///
    /// Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 3 the
    /// cluster could not be read.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check the cluster before installing, instead of an installation.
    #[arg(long)]
    pub pre: bool,
    /// The installation's namespace (with --pre: the namespace it will be installed
    /// into; default: django-migrate-system with --pre, else found in every namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// With --pre: the chart's `mode` to check for.
    #[arg(long, value_enum, default_value = "webhook", requires = "pre")]
    pub mode: crate::check::InstallMode,
    /// With --pre: the chart will use `tls.mode: certManager`.
    #[arg(long, requires = "pre")]
    pub cert_manager: bool,
    /// With --pre: the chart will set `controller.contractJobs` (it grants Jobs).
    #[arg(long, requires = "pre")]
    pub contract_jobs: bool,
    /// With --pre: the chart's `codeDelivery` (an installation's is read from it).
    #[arg(
        long,
        value_enum,
        default_value = "copy",
        requires = "pre",
        value_name = "HOW"
    )]
    pub code_delivery: CodeDelivery,
    /// Namespace of the dry run of a labelled Deployment: one whose Deployments the
    /// webhook should inject.
    #[arg(
        long,
        default_value = "default",
        value_name = "NAMESPACE",
        conflicts_with = "pre"
    )]
    pub probe_namespace: String,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: CheckOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    /// One line per check, with what to do under a failed one.
    Table,
    /// `{"lines": [{"section", "outcome", "message", "hint"}]}`.
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The Deployment: NAME or deployment/NAME.
    #[arg(value_name = "DEPLOYMENT", value_parser = crate::plan_run::parse_target)]
    pub deployment: String,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Plan the release of this image: the step runs it instead of the Deployment's own.
    #[arg(long, value_name = "IMAGE", conflicts_with = "manifest")]
    pub image: Option<String>,
    /// Plan the Deployment of this name in a manifest file (YAML or JSON, `-` for stdin),
    /// e.g. the next release's, instead of the stored one.
    #[arg(short = 'f', long = "filename", value_name = "MANIFEST")]
    pub manifest: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: PlanOutput,
    /// Seconds the plan may take, image pulls included. The Job's activeDeadlineSeconds is
    /// 30 more: it stops by itself if this command is gone.
    #[arg(long, default_value = "600", value_parser = seconds(1, 86400), value_name = "SECONDS")]
    pub timeout: Duration,
    /// Keep the Job and its pod for inspection.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub code_image: CodeImageArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanOutput {
    /// The verdict, a row per migration, then each finding in full.
    Table,
    /// The step's report (`{"django_migrate_plan": 1, ...}`), indented.
    Json,
    /// For a pull-request comment: a heading with the verdict, a table, the findings.
    Markdown,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Name of the mutating policy; the validating ones add `-settings` and `-warnings`.
    #[arg(long, default_value = "django-migrate-webhook", value_name = "NAME")]
    pub name: String,
    /// A namespace the policies never touch (repeat for more).
    #[arg(
        long = "exclude-namespace",
        default_value = "kube-system",
        value_name = "NAMESPACE"
    )]
    pub exclude_namespaces: Vec<String>,
    /// What the API server does when a policy cannot be evaluated.
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"], value_name = "POLICY")]
    pub failure_policy: String,
    /// Print the three policies only, without bindings.
    #[arg(long)]
    pub without_bindings: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub code_image: CodeImageArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One workload: `NAME` (a Deployment's) or `KIND/NAME`, as kubectl writes it
    /// (`statefulset/web`, `cronjob/nightly`, `rollout/web`); default: every opted-in
    /// workload in the namespace.
    #[arg(value_name = "WORKLOAD", value_parser = crate::workload::Kind::parse_target)]
    pub deployment: Option<(crate::workload::Kind, String)>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "deployment"])]
    pub all_namespaces: bool,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: StatusOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    Table,
    Json,
    Yaml,
}

/// The image of the injected code-copy container: the webhook's own.
#[derive(Debug, Args)]
pub struct CodeImageArgs {
    /// Image of the injected `django-migrate-code` init container: this webhook's own
    /// image, pullable from every namespace that opts in (the chart sets it).
    #[arg(long, env = "DJANGO_MIGRATE_CODE_IMAGE", default_value = crate::injected::default_image(), value_name = "IMAGE")]
    pub code_image: String,
    /// Pull policy of that image.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"], value_name = "POLICY")]
    pub code_image_pull_policy: String,
    /// How the program reaches the Django step: `copy` (an init container copies it into
    /// an emptyDir; every cluster) or `imageVolume` (the image mounted read-only as an
    /// image volume: one init container; Kubernetes 1.35+ with containerd 2.1+ or CRI-O
    /// 1.31+ on every node, see `check`).
    #[arg(
        long,
        env = "DJANGO_MIGRATE_CODE_DELIVERY",
        value_enum,
        default_value = "copy",
        value_name = "HOW"
    )]
    pub code_delivery: CodeDelivery,
}

impl From<CodeImageArgs> for CodeImage {
    fn from(args: CodeImageArgs) -> CodeImage {
        CodeImage {
            image: args.code_image,
            pull_policy: args.code_image_pull_policy,
            delivery: args.code_delivery,
        }
    }
}

#[derive(Debug, Args)]
pub struct InstallCodeArgs {
    /// Directory to write the step (step.pyz) into (the shared emptyDir).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools, reason = "each is a command-line flag")]
pub struct ServeArgs {
    /// Address of the HTTPS webhook listener.
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// PEM certificate chain served on the webhook port.
    #[arg(long, value_name = "FILE", required_unless_present = "no_webhook")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the serving certificate.
    #[arg(long, value_name = "FILE", required_unless_present = "no_webhook")]
    pub tls_key: Option<PathBuf>,
    /// Run the controller without the webhook: in `policy` mode admission policies
    /// inject (see `policy`), and no server of ours is in the API server's write path.
    #[arg(long, requires = "controller", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub no_webhook: bool,
    /// Seconds between checks of the certificate files; a new pair is served on new
    /// connections without a restart.
    #[arg(long, default_value = "10", value_parser = seconds(1, 3600), value_name = "SECONDS")]
    pub cert_reload_interval: Duration,
    /// Address of the plain-HTTP listener for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub metrics_listen: SocketAddr,
    /// Seconds to keep serving after SIGTERM, with /readyz failing and `Connection: close`
    /// on every answer, so that the Service's endpoints drop this pod before the port
    /// closes. Keep it plus the drain (at most 20 s) under the pod's grace period.
    #[arg(long, default_value = "5", value_parser = seconds(0, 300), value_name = "SECONDS")]
    pub shutdown_delay: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Also run the readiness-gate controller (needs a Kubernetes client: in-cluster
    /// config or KUBECONFIG). Without it injected pods never become Ready.
    #[arg(long)]
    pub controller: bool,
    /// Namespace of the controller's leader-election Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub lease_namespace: String,
    /// Name of the controller's leader-election Lease.
    #[arg(
        long,
        default_value = "django-migrate-webhook-controller",
        value_name = "NAME"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host name and PID).
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    pub identity: Option<String>,
    /// Seconds a leader's claim lasts without renewal; another replica takes over within it.
    #[arg(long, default_value = "15", value_parser = seconds(2, 300), value_name = "SECONDS")]
    pub lease_duration: Duration,
    /// Patch opted-in Deployments found stored without the injection (applied while the
    /// webhook was unreachable) so that the API server sends them through it again.
    /// Needs `patch` on Deployments.
    #[arg(long, requires = "controller")]
    pub heal_missed_injections: bool,
    /// Create the contract Job of a Deployment whose steps deferred migrations, once its
    /// rollout is complete and no pod of the previous release is left. Needs `create`,
    /// `get`, `list` and `watch` on Jobs; without it the controller only reports them.
    #[arg(long, requires = "controller")]
    pub contract_jobs: bool,
    /// Argo Rollouts is installed: run the contract phase of opted-in Rollouts once they
    /// are fully promoted, and name them in their pods' Events. Needs `get`, `list` and
    /// `watch` on rollouts.argoproj.io (`patch` with --contract-jobs).
    #[arg(long, requires = "controller")]
    pub argo_rollouts: bool,
    #[command(flatten)]
    pub code_image: CodeImageArgs,
}

impl From<ServeArgs> for ServeOptions {
    fn from(args: ServeArgs) -> ServeOptions {
        let controller = args.controller.then(|| ControllerOptions {
            lease: LeaseOptions {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity: args.identity.unwrap_or_else(default_identity),
                duration: args.lease_duration,
            },
            heal_missed_injections: args.heal_missed_injections,
            contract_jobs: args.contract_jobs,
            argo_rollouts: args.argo_rollouts,
        });
        ServeOptions {
            webhook: !args.no_webhook,
            listen: args.listen,
            tls_cert: args.tls_cert.unwrap_or_default(),
            tls_key: args.tls_key.unwrap_or_default(),
            metrics_listen: args.metrics_listen,
            cert_reload_interval: args.cert_reload_interval,
            shutdown_delay: args.shutdown_delay,
            controller,
            code_image: args.code_image.into(),
        }
    }
}

/// Host name and PID: unique enough for replicas started outside a cluster.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".into(), |h| h.trim().to_owned());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
    /// Print, instead of the injected manifests, the contract Job of each opted-in
    /// Deployment: what the controller creates once its rollout is complete and no pod of
    /// the previous release is left (for review, or to apply it yourself).
    #[arg(long)]
    pub contract_job: bool,
    /// Print, instead of the injected manifests, the plan Job of each opted-in
    /// Deployment: its step in read-only `plan` mode, once (what `plan` runs).
    #[arg(long, conflicts_with = "contract_job")]
    pub plan_job: bool,
    /// With --plan-job: the image of the release to plan (default: the Deployment's own).
    #[arg(long, value_name = "IMAGE", requires = "plan_job")]
    pub image: Option<String>,
    #[command(flatten)]
    pub code_image: CodeImageArgs,
}

#[derive(Debug, Args)]
pub struct RemoveInjectionArgs {
    /// Seconds to wait for the Deployments to roll out without the injection.
    #[arg(long, default_value = "600", value_parser = seconds(1, 86400), value_name = "SECONDS")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct UninjectArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
}

/// Where `inject` and `uninject` read manifests from, and how they write them.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Manifest file to read, or `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        default_value = "-",
        value_name = "FILE"
    )]
    pub file: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// DNS name of the serving certificate (repeatable), e.g. the Service's
    /// `NAME.NAMESPACE.svc`.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// IP address of the serving certificate (repeatable), e.g. 127.0.0.1.
    #[arg(long = "ip", value_name = "IP")]
    pub ip: Vec<IpAddr>,
}

/// The command-line reference of the book (`docs/src/reference/cli.md`): every command's
/// `--help`, generated so that the page cannot fall behind the binary (a test compares).
pub fn markdown_reference() -> String {
    fn walk(command: &mut clap::Command, path: &str, out: &mut String) {
        let name = if path.is_empty() {
            command.get_name().to_owned()
        } else {
            format!("{path} {}", command.get_name())
        };
        let help = command.render_long_help().to_string();
        let _ = write!(out, "\n## `{name}`\n\n```text\n{}\n```\n", help.trim_end());
        let mut subcommands: Vec<clap::Command> = command
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .cloned()
            .collect();
        for sub in &mut subcommands {
            walk(sub, &name, out);
        }
    }
    let mut command = Cli::command();
    command.build();
    let mut out = String::from(
        "# Command line\n\nEvery command's `--help`, generated from the binary (`cargo test` fails when this\npage differs from it; `UPDATE_GOLDEN=1 cargo test --test engine` rewrites it). What the\ncommands do in use is in [Commands in use](commands.md).\n",
    );
    walk(&mut command, "", &mut out);
    out
}
