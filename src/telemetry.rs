//! Logs (tracing, text or JSON) and Prometheus metrics.

use std::io::IsTerminal;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::admission::Outcome;
use crate::watched::StepStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is not an error worth failing for.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Latency buckets in seconds: the webhook answers in well under a millisecond, the API
/// server gives up after `timeoutSeconds` (5 in the chart).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The Deployment a pod belongs to: the labels of the migration metrics, bounded by the
/// number of opted-in Deployments.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub namespace: String,
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    namespace: String,
    deployment: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    deployment: String,
    reason: &'static str,
}

type HistogramFamily = Family<DeploymentLabels, Histogram, fn() -> Histogram>;

/// The webhook's and the controller's metrics. Counters for every admission outcome exist
/// from the start, so a dashboard sees zeros instead of missing series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    by_outcome: [Counter; Outcome::ALL.len()],
    latency: Histogram,
    pods_gated: Gauge,
    time_to_gate: Histogram,
    patch_errors: Counter,
    leader: Gauge,
    step_duration: HistogramFamily,
    lock_wait: HistogramFamily,
    applied: Family<DeploymentLabels, Counter>,
    retries: Family<DeploymentLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    unsafe_blocked: Family<DeploymentLabels, Counter>,
    pods: Family<PodLabels, Gauge>,
    certificate_expiry: Gauge,
    not_injected: Family<NamespaceLabel, Gauge>,
    api_requests: Family<RequestLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

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

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("django_migrate");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests answered, by outcome",
            requests.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request, from the end of the request headers",
            latency.clone(),
        );
        let by_outcome = Outcome::ALL.map(|o| {
            requests
                .get_or_create(&OutcomeLabel {
                    outcome: o.as_str(),
                })
                .clone()
        });
        let pods_gated = Gauge::default();
        registry.register(
            "controller_pods_gated",
            "Injected pods whose migrated condition is not True (as seen by the leader)",
            pods_gated.clone(),
        );
        let time_to_gate = Histogram::new(TIME_TO_GATE_BUCKETS);
        registry.register(
            "controller_time_to_gate_seconds",
            "Time from pod creation to the migrated condition turning True",
            time_to_gate.clone(),
        );
        let patch_errors = Counter::default();
        registry.register(
            "controller_patch_errors",
            "Failed patches of pods/status",
            patch_errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "controller_leader",
            "1 while this replica holds the controller Lease",
            leader.clone(),
        );
        let step_duration: HistogramFamily = Family::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "Duration of finished Django steps (the summary's seconds.total), by Deployment",
            step_duration.clone(),
        );
        let lock_wait: HistogramFamily = Family::new_with_constructor(step_histogram);
        registry.register(
            "step_lock_wait_seconds",
            "Time finished Django steps waited for the migration lock or other pods' migrations",
            lock_wait.clone(),
        );
        let applied = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "migrations_applied",
            "Migrations applied by injected steps",
            applied.clone(),
        );
        let retries = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "lock_timeout_retries",
            "Migrations retried after a DDL statement hit the lock timeout",
            retries.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "step_failures",
            "Django steps that ended in failure, by condition reason",
            failures.clone(),
        );
        let unsafe_blocked = Family::<DeploymentLabels, Counter>::default();
        registry.register(
            "unsafe_migrations_blocked",
            "Unsafe operations held back by unsafe-migrations: deny",
            unsafe_blocked.clone(),
        );
        let pods = Family::<PodLabels, Gauge>::default();
        registry.register(
            "controller_pods",
            "Injected pods by Deployment and the reason of their migrated condition (as seen by the leader)",
            pods.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate in use expires (Unix time)",
            certificate_expiry.clone(),
        );
        let not_injected = Family::<NamespaceLabel, Gauge>::default();
        registry.register(
            "deployments_not_injected",
            "Deployments labelled django-migrate.io/inject=true stored without the migration step",
            not_injected.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "controller_api_requests",
            "Requests the controller sent to the API server, by HTTP method and resource",
            api_requests.clone(),
        );
        Arc::new(Metrics {
            registry,
            by_outcome,
            latency,
            pods_gated,
            time_to_gate,
            patch_errors,
            leader,
            step_duration,
            lock_wait,
            applied,
            retries,
            failures,
            unsafe_blocked,
            pods,
            certificate_expiry,
            not_injected,
            api_requests,
        })
    }

    /// Records a finished Django step of a pod of `deployment`.
    pub fn observe_step(&self, deployment: &DeploymentLabels, stats: &StepStats) {
        self.step_duration
            .get_or_create(deployment)
            .observe(stats.seconds_total);
        self.lock_wait
            .get_or_create(deployment)
            .observe(stats.seconds_lock_wait);
        self.applied
            .get_or_create(deployment)
            .inc_by(u64::from(stats.applied));
        self.retries
            .get_or_create(deployment)
            .inc_by(u64::from(stats.retries));
        self.unsafe_blocked
            .get_or_create(deployment)
            .inc_by(u64::from(stats.unsafe_blocked));
    }

    /// Counts a step that ended in failure with condition reason `reason`.
    pub fn step_failed(&self, deployment: &DeploymentLabels, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                namespace: deployment.namespace.clone(),
                deployment: deployment.deployment.clone(),
                reason,
            })
            .inc();
    }

    /// Sets the number of pods of `deployment` whose condition has `reason`.
    pub fn set_pods(&self, deployment: &DeploymentLabels, reason: &'static str, n: i64) {
        self.pods
            .get_or_create(&PodLabels {
                namespace: deployment.namespace.clone(),
                deployment: deployment.deployment.clone(),
                reason,
            })
            .set(n);
    }

    pub fn api_request(&self, method: &axum::http::Method, resource: &'static str) {
        self.api_requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_owned(),
                resource,
            })
            .inc();
    }

    pub fn set_deployments_not_injected(&self, namespace: &str, n: i64) {
        self.not_injected
            .get_or_create(&NamespaceLabel {
                namespace: namespace.to_owned(),
            })
            .set(n);
    }

    pub fn set_certificate_expiry(&self, unix_seconds: i64) {
        self.certificate_expiry.set(unix_seconds);
    }

    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.by_outcome[i].inc();
        self.latency.observe(seconds);
    }

    pub fn set_pods_gated(&self, n: i64) {
        self.pods_gated.set(n);
    }

    pub fn observe_time_to_gate(&self, seconds: f64) {
        self.time_to_gate.observe(seconds);
    }

    pub fn patch_error(&self) {
        self.patch_errors.inc();
    }

    /// Marks this replica as the leader or not. A replica that stops leading drops the
    /// gauges only the leader keeps (pods by reason, missed injections, pods gated), so
    /// that no stale value of a former leader stays behind to alert on.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if !leader {
            self.pods.clear();
            self.not_injected.clear();
            self.pods_gated.set(0);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The README's metrics table lists exactly what `/metrics` exports.
    #[test]
    fn every_metric_is_documented_and_every_documented_metric_exists() {
        // Families with labels show up once they have a series.
        let metrics = Metrics::new();
        let shop = DeploymentLabels {
            namespace: "n".into(),
            deployment: "shop".into(),
        };
        metrics.observe_step(&shop, &StepStats::default());
        metrics.step_failed(&shop, "MigrationFailed");
        metrics.set_pods(&shop, "Migrated", 1);
        metrics.set_deployments_not_injected("n", 0);
        metrics.api_request(&axum::http::Method::GET, "pods");
        let exported: std::collections::BTreeSet<String> = metrics
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let mut parts = l.split(' ');
                let name = parts.next().unwrap_or_default();
                match parts.next() {
                    Some("counter") => format!("{name}_total"),
                    _ => name.to_owned(),
                }
            })
            .collect();
        let readme = include_str!("../README.md");
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `django_migrate_"))
            .filter_map(|l| l.split('`').next())
            .map(|name| format!("django_migrate_{name}"))
            .collect();
        assert_eq!(exported, documented);
    }
}
