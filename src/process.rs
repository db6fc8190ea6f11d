//! The `serve` process: signals, one shutdown token, the metrics registry and the
//! Kubernetes client, and four parts started side by side — the webhook listener, the
//! admin listener, the certificate reloader and the controller.
//!
//! On SIGTERM (or Ctrl-C) `/readyz` fails at once and two things run concurrently: the
//! controller releases its Lease (so another replica takes over without waiting for it to
//! expire) and the listeners keep serving for `--shutdown-delay`, then drain. A
//! controller that stops on its own (it lost the cluster) stops the process with a
//! non-zero exit, so that the pod restarts instead of serving without its controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::{self, ControllerMetrics, ControllerOptions};
use crate::injected::CodeImage;
use crate::kube_client::{self, ApiMetrics, ClientError};
use crate::leader::LeaseError;
use crate::server::{self, AdmissionMetrics, AppState, ServerError};
use crate::telemetry;
use crate::tls::{self, CertMetrics, CertStore, TlsError};

/// What `serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Serve the webhook; `false` runs the controller alone (`policy` mode: admission
    /// policies inject, and no server of ours is in the API server's write path).
    pub webhook: bool,
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub metrics_listen: SocketAddr,
    /// How often the certificate files are checked for a new pair.
    pub cert_reload_interval: Duration,
    /// How long to keep serving after SIGTERM before the listener closes.
    pub shutdown_delay: Duration,
    /// Run the readiness-gate controller too.
    pub controller: Option<ControllerOptions>,
    /// The webhook's own image, run by the injected code-copy container.
    pub code_image: CodeImage,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("the controller stopped on its own; stopping so that the pod restarts")]
    ControllerStopped,
}

/// The four parts, running.
pub struct Running {
    /// `None` without the webhook.
    pub webhook_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub state: AppState,
    /// The shutdown token: the reloader and the controller stop when it turns true.
    token: watch::Sender<bool>,
    /// Closes the listeners, after the shutdown delay.
    close: watch::Sender<bool>,
    webhook: Option<JoinHandle<()>>,
    admin: JoinHandle<()>,
    reloader: Option<JoinHandle<()>>,
    controller: Option<JoinHandle<Result<(), LeaseError>>>,
}

/// Every part's metrics, registered into one registry that `/metrics` encodes.
struct Metrics {
    registry: Registry,
    admission: AdmissionMetrics,
    certs: CertMetrics,
    api: ApiMetrics,
    controller: ControllerMetrics,
}

impl Metrics {
    fn register() -> Metrics {
        let mut registry = telemetry::registry();
        let admission = AdmissionMetrics::register(&mut registry);
        let certs = CertMetrics::register(&mut registry);
        let api = ApiMetrics::register(registry.sub_registry_with_prefix("controller"));
        let controller = ControllerMetrics::register(&mut registry);
        Metrics {
            registry,
            admission,
            certs,
            api,
            controller,
        }
    }
}

/// Starts the parts: both listeners bound before anything is spawned, so that a port in
/// use fails the start; the controller only with a client.
pub async fn start(
    options: &ServeOptions,
    client: Option<kube::Client>,
) -> Result<Running, ServeError> {
    start_with(options, client, Metrics::register()).await
}

/// [`start`], with the metrics the client already counts its requests in.
async fn start_with(
    options: &ServeOptions,
    client: Option<kube::Client>,
    metrics: Metrics,
) -> Result<Running, ServeError> {
    let Metrics {
        registry,
        admission,
        certs: cert_metrics,
        api: _,
        controller: controller_metrics,
    } = metrics;
    let state = AppState::new(options.code_image.clone(), admission, Arc::new(registry));
    let (token, stopped) = watch::channel(false);
    let (close, closed) = watch::channel(false);
    let (webhook, reloader, webhook_addr) = if options.webhook {
        let certs = CertStore::new(tls::load_pair(&options.tls_cert, &options.tls_key)?);
        let (listener, addr) = server::bind(options.listen).await?;
        let webhook = server::spawn_webhook(listener, &state, certs.clone(), closed.clone())?;
        let reloader = tokio::spawn(tls::reload_on_change(
            certs,
            options.tls_cert.clone(),
            options.tls_key.clone(),
            options.cert_reload_interval,
            cert_metrics,
            stopped.clone(),
        ));
        (Some(webhook), Some(reloader), Some(addr))
    } else {
        (None, None, None)
    };
    let (admin_listener, admin_addr) = server::bind(options.metrics_listen).await?;
    let admin = server::spawn_admin(admin_listener, state.clone(), closed);
    let controller = match (client, options.controller.clone()) {
        (Some(client), Some(controller_options)) => Some(tokio::spawn(controller::run(
            client,
            controller_options,
            controller_metrics,
            stopped,
        ))),
        _ => None,
    };
    tracing::info!(?webhook_addr, %admin_addr, controller = controller.is_some(), "serving");
    Ok(Running {
        webhook_addr,
        admin_addr,
        state,
        token,
        close,
        webhook,
        admin,
        reloader,
        controller,
    })
}

impl Running {
    /// Marks the process as going away: `/readyz` fails and HTTP/1 answers carry
    /// `Connection: close`, while the listeners keep accepting.
    pub fn start_draining(&self) {
        self.state.start_draining();
    }

    /// Stops every part: the controller (releasing its Lease) and the reloader at once,
    /// and concurrently the listeners after `delay`, once their requests are answered.
    /// Returns the controller's own result.
    pub async fn shutdown(self, delay: Duration) -> Result<(), LeaseError> {
        self.start_draining();
        let Running {
            token,
            close,
            webhook,
            admin,
            reloader,
            controller,
            ..
        } = self;
        let _ = token.send(true);
        let drain = async move {
            if !delay.is_zero() {
                tracing::info!(
                    seconds = delay.as_secs_f64(),
                    "still serving while the endpoints drop this pod"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = close.send(true);
            if let Some(webhook) = webhook {
                let _ = webhook.await;
            }
            let _ = admin.await;
            tracing::info!("all connections closed");
        };
        let release = async move {
            match controller {
                Some(task) => task.await.unwrap_or(Ok(())),
                None => Ok(()),
            }
        };
        let ((), controller) = tokio::join!(drain, release);
        if let Some(reloader) = reloader {
            let _ = reloader.await;
        }
        controller
    }
}

/// Runs `serve` until SIGTERM or Ctrl-C (exit 0 after a clean drain) or until the
/// controller stops on its own (an error).
pub async fn run(options: &ServeOptions) -> Result<(), ServeError> {
    let metrics = Metrics::register();
    // Fail before listening when the controller cannot reach the cluster at all.
    let client = match &options.controller {
        Some(_) => Some(kube_client::build(metrics.api.clone()).await?),
        None => None,
    };
    let mut running = start_with(options, client, metrics).await?;
    let controller_ended = {
        let controller = running.controller.as_mut();
        let ended = async {
            match controller {
                Some(task) => Some(task.await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown_signal() => None,
            result = ended => result,
        }
    };
    tracing::info!("shutting down");
    match controller_ended {
        None => Ok(running.shutdown(options.shutdown_delay).await?),
        Some(result) => {
            // A pod without its controller is broken anyway: no point in the delay.
            running.controller = None;
            running.shutdown(Duration::ZERO).await?;
            match result {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(ServeError::ControllerStopped),
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The book's metrics page lists exactly what `/metrics` exports.
    #[test]
    fn every_metric_is_documented_and_every_documented_metric_exists() {
        // Labelled families show up once they have a series.
        let metrics = Metrics::register();
        metrics.api.touch();
        metrics.controller.touch();
        let exported: std::collections::BTreeSet<String> = telemetry::encode(&metrics.registry)
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
        let readme = include_str!("../docs/src/reference/metrics.md");
        let documented: std::collections::BTreeSet<String> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `django_migrate_"))
            .filter_map(|l| l.split('`').next())
            .map(|name| format!("django_migrate_{name}"))
            .collect();
        assert_eq!(exported, documented);
    }
}
