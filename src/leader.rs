//! Leadership: of several replicas, only the one holding a `coordination.k8s.io/v1`
//! Lease runs the leader-only parts (the reconcilers), so exactly one writes.
//!
//! [`run`] waits for the Lease, runs the parts while it holds it (dropping them the
//! moment it is lost), and releases it on the way out so that another replica takes over
//! at once instead of waiting for it to expire.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::watch;

use crate::names::CONTROLLER_NAME;
use crate::telemetry::Chain;

#[derive(Debug, Error)]
#[error("cannot set up the leader-election Lease {namespace}/{name}")]
pub struct LeaseError {
    namespace: String,
    name: String,
    source: kube_lease_manager::LeaseManagerError,
}

/// Which Lease, and how long a claim lasts.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name in a cluster).
    pub identity: String,
    /// How long a leader's claim lasts without renewal: the longest takeover time.
    pub duration: Duration,
}

/// Whether this replica leads.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
}

impl LeaderMetrics {
    /// Registers under the controller's prefix.
    pub fn register(registry: &mut Registry) -> LeaderMetrics {
        let metrics = LeaderMetrics::default();
        registry.register(
            "leader",
            "1 while this replica holds the controller Lease",
            metrics.leader.clone(),
        );
        metrics
    }
}

/// Runs until `stop` turns true: waits for the Lease, runs the future `lead` returns while
/// holding it (a new one after each takeover), and releases the Lease on the way out.
pub async fn run<F, Fut>(
    client: Client,
    options: &LeaseOptions,
    metrics: LeaderMetrics,
    mut stop: watch::Receiver<bool>,
    mut lead: F,
) -> Result<(), LeaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let seconds = options.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &options.name)
        .with_namespace(&options.namespace)
        .with_identity(&options.identity)
        .with_duration(seconds)
        // Renewed a third of the way before expiry: two renewals may fail in a row.
        .with_grace((seconds / 3).max(1))
        .with_field_manager(format!("{CONTROLLER_NAME}-{}", options.identity))
        .build()
        .await
        .map_err(|source| LeaseError {
            namespace: options.namespace.clone(),
            name: options.name.clone(),
            source,
        })?;
    let (mut leader, lease_task) = manager.watch().await;
    let lease = format!("{}/{}", options.namespace, options.name);
    tracing::info!(identity = %options.identity, %lease, "waiting for the lease");
    loop {
        tokio::select! {
            changed = leader.wait_for(|l| *l) => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
        tracing::info!(identity = %options.identity, "holding the lease: reconciling");
        metrics.leader.set(1);
        let stopping = tokio::select! {
            () = lead() => false,
            _ = leader.wait_for(|l| !*l) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        metrics.leader.set(0);
        if stopping {
            break;
        }
        tracing::warn!(identity = %options.identity, "lost the lease: stopped reconciling");
    }
    // Closing the channel makes the lease task release the Lease.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!(%lease, "released the lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %Chain(&e), "cannot release the lease"),
        _ => tracing::warn!(%lease, "the lease was not released in time"),
    }
    Ok(())
}
