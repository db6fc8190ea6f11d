//! The readiness-gate controller, composed: without it every injected pod stays unready,
//! so it runs in the same binary as the webhook (`serve --controller`).
//!
//! Under the Lease ([`leader`]) it runs three reconcilers side by side: the pods'
//! ([`gate`]), the opted-in Deployments' missed injections ([`missed`]) and their
//! contract runs ([`contract`]).

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::contract::{self, ContractMetrics};
use crate::gate::{self, GateMetrics};
use crate::leader::{self, LeaderMetrics, LeaseError, LeaseOptions};
use crate::missed::{self, MissedMetrics};
use crate::names::CONTROLLER_NAME;
use crate::workload::Kind;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    pub lease: LeaseOptions,
    /// Patch opted-in Deployments stored without the injection so that the API server
    /// sends them through the webhook again.
    pub heal_missed_injections: bool,
    /// Create contract Jobs; else only report deferred migrations that are due.
    pub contract_jobs: bool,
    /// Watch Argo Rollouts too (the cluster serves their CRD).
    pub argo_rollouts: bool,
}

impl ControllerOptions {
    /// The kinds the webhook injects, as far as the cluster serves them.
    pub fn injected_kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k != Kind::Rollout || self.argo_rollouts)
            .collect()
    }

    /// The kinds whose updates have a contract phase, as far as the cluster serves them.
    pub fn contract_kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Deployment, Kind::StatefulSet];
        if self.argo_rollouts {
            kinds.push(Kind::Rollout);
        }
        kinds
    }
}

/// The metrics of the controller's parts, kept across leadership terms.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    leader: LeaderMetrics,
    gate: GateMetrics,
    missed: MissedMetrics,
    contract: ContractMetrics,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> ControllerMetrics {
        ControllerMetrics {
            leader: LeaderMetrics::register(registry.sub_registry_with_prefix("controller")),
            gate: GateMetrics::register(registry),
            missed: MissedMetrics::register(registry),
            contract: ContractMetrics::register(registry),
        }
    }
}

impl ControllerMetrics {
    #[cfg(test)]
    pub(crate) fn touch(&self) {
        self.gate.touch();
        self.missed.touch();
        self.contract.touch();
    }
}

/// Runs until `stop` turns true; the reconcilers only while this replica leads.
pub async fn run(
    client: Client,
    options: ControllerOptions,
    metrics: ControllerMetrics,
    stop: watch::Receiver<bool>,
) -> Result<(), LeaseError> {
    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: Some(options.lease.identity.clone()),
    };
    let lead = || {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        let pods = gate::run(gate::Context::new(
            client.clone(),
            recorder.clone(),
            metrics.gate.clone(),
        ));
        let deployments = missed::run(
            missed::Context::new(
                client.clone(),
                recorder.clone(),
                metrics.missed.clone(),
                options.heal_missed_injections,
            ),
            options.injected_kinds(),
        );
        let contracts = contract::run(
            contract::Context::new(
                client.clone(),
                recorder,
                metrics.contract.clone(),
                options.contract_jobs,
            ),
            options.contract_kinds(),
        );
        async {
            tokio::join!(pods, deployments, contracts);
        }
    };
    leader::run(
        client.clone(),
        &options.lease,
        metrics.leader.clone(),
        stop,
        lead,
    )
    .await
}
