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

/// The admission metrics. Counters for every outcome exist from the start, so a
/// dashboard sees zeros instead of missing series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    by_outcome: [Counter; Outcome::ALL.len()],
    latency: Histogram,
    pods_gated: Gauge,
    time_to_gate: Histogram,
    patch_errors: Counter,
    leader: Gauge,
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
        Arc::new(Metrics {
            registry,
            by_outcome,
            latency,
            pods_gated,
            time_to_gate,
            patch_errors,
            leader,
        })
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

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
