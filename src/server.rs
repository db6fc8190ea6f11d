//! The HTTPS webhook listener and the plain-HTTP admin listener (health and metrics),
//! two of the parts `process` starts side by side.
//!
//! The accept loop is written out instead of hidden in a framework so that every
//! connection gets `TCP_NODELAY` (without it h2 stalls ~40 ms per burst), a TLS handshake
//! timeout and a header read timeout, and so that shutdown can drain connections.
//!
//! Shutdown loses no admission request: on SIGTERM `/readyz` fails and every answer
//! carries `Connection: close` for `--shutdown-delay` seconds while the port still
//! accepts (the Service's endpoints take a while to drop the pod, and the API server must
//! not reuse a connection that is about to close); then the listener closes, requests in
//! flight are answered, idle connections are closed (HTTP/2 gets a GOAWAY) and the
//! process exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::Response;
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::admission::{self, Outcome};
use crate::injected::CodeImage;
use crate::telemetry;
use crate::tls::{self, CertStore, TlsError};

/// Largest AdmissionReview accepted. Kubernetes objects are limited to ~1.5 MiB in etcd;
/// a review carries the object twice on UPDATE.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How much of a body over the limit is read and discarded before answering 413.
const LINGER_BYTES: u64 = 2 * MAX_BODY_BYTES as u64;
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send the request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for open connections to finish during shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

/// The admission handler's metrics. A counter for every outcome exists from the start, so
/// a dashboard sees zeros instead of missing series.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    by_outcome: [Counter; Outcome::ALL.len()],
    latency: Histogram,
}

impl AdmissionMetrics {
    pub fn register(registry: &mut Registry) -> AdmissionMetrics {
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
        AdmissionMetrics {
            by_outcome,
            latency,
        }
    }

    fn observe(&self, outcome: Outcome, seconds: f64) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.by_outcome[i].inc();
        self.latency.observe(seconds);
    }
}

/// State shared by the handlers.
#[derive(Clone, Debug)]
pub struct AppState {
    pub ready: Arc<AtomicBool>,
    /// Set once shutdown started: HTTP/1 answers then carry `Connection: close`.
    pub draining: Arc<AtomicBool>,
    /// The webhook's own image, run by the injected code-copy container.
    pub code_image: Arc<CodeImage>,
    admission: AdmissionMetrics,
    /// Every part's metrics, for `/metrics`.
    registry: Arc<Registry>,
}

impl AppState {
    pub fn new(
        code_image: CodeImage,
        admission: AdmissionMetrics,
        registry: Arc<Registry>,
    ) -> AppState {
        AppState {
            ready: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(false)),
            code_image: Arc::new(code_image),
            admission,
            registry,
        }
    }

    /// Marks the server as going away: `/readyz` fails and HTTP/1 answers carry
    /// `Connection: close`, while the listener keeps accepting.
    pub fn start_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The router of the webhook port: `POST /mutate` and JSON errors for everything else.
pub fn webhook_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(mutate).fallback(|| async {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST /mutate")
            }),
        )
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "not found: the admission endpoint is POST /mutate",
            )
        })
        .with_state(state)
}

/// The router of the admin port: `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    telemetry::encode(&s.registry),
                )
            }),
        )
        .with_state(state)
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json_response(status, admission::error_body(status.as_u16(), message))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn mutate(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    // `Connection` is HTTP/1 only; HTTP/2 clients learn of the shutdown from the GOAWAY.
    let close = state.draining.load(Ordering::Relaxed) && request.version() < Version::HTTP_2;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = read_body(request.into_body(), declared);
    let reply = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Ok(Ok(bytes)) => admission::review(&bytes, &state.code_image),
        Ok(Err(BodyError::TooLarge)) => too_large(),
        Ok(Err(BodyError::Read(e))) => {
            admission::invalid(400, format!("cannot read the request body: {e}"))
        }
        Err(_) => admission::invalid(
            400,
            format!(
                "the request body did not arrive within {}s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ),
    };
    state
        .admission
        .observe(reply.outcome, started.elapsed().as_secs_f64());
    match reply.outcome {
        Outcome::Denied => tracing::info!(
            uid = reply.uid.as_deref().unwrap_or_default(),
            message = reply.message.as_deref().unwrap_or_default(),
            "denied"
        ),
        Outcome::Invalid => tracing::warn!(
            status = reply.status,
            message = reply.message.as_deref().unwrap_or_default(),
            "rejected request"
        ),
        _ => tracing::debug!(
            uid = reply.uid.as_deref().unwrap_or_default(),
            outcome = reply.outcome.as_str(),
            "admitted"
        ),
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, reply.body);
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads a request body of at most [`MAX_BODY_BYTES`].
///
/// A body over the limit is still read, and thrown away, up to [`LINGER_BYTES`] in all:
/// closing a connection while the client is still sending makes its kernel reset the
/// connection, and the client then sees "broken pipe" instead of the 413.
async fn read_body(mut body: Body, declared: Option<u64>) -> Result<Bytes, BodyError> {
    let mut collected = Vec::new();
    let mut seen: u64 = 0;
    let mut too_large = declared.is_some_and(|n| n > MAX_BODY_BYTES as u64);
    if too_large && declared.is_some_and(|n| n > LINGER_BYTES) {
        return Err(BodyError::TooLarge);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if seen > MAX_BODY_BYTES as u64 {
            too_large = true;
            collected = Vec::new();
        }
        if seen > LINGER_BYTES {
            break;
        }
        if !too_large {
            collected.extend_from_slice(&data);
        }
    }
    if too_large {
        Err(BodyError::TooLarge)
    } else {
        Ok(Bytes::from(collected))
    }
}

fn too_large() -> admission::Reply {
    admission::invalid(
        413,
        format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
    )
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// The webhook listener: HTTPS with the certificate `certs` serves. It stops
/// accepting when `stop` turns true, answers the requests in flight and returns once every
/// connection is closed.
pub fn spawn_webhook(
    listener: TcpListener,
    state: &AppState,
    certs: Arc<CertStore>,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ServerError> {
    let config = tls::server_config(certs)?;
    Ok(tokio::spawn(serve_tls(
        listener,
        TlsAcceptor::from(config),
        webhook_router(state.clone()),
        state.draining.clone(),
        stop,
    )))
}

/// The admin listener (`/healthz`, `/readyz`, `/metrics`), until `stop` turns true.
pub fn spawn_admin(
    listener: TcpListener,
    state: AppState,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let app = admin_router(state);
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server failed");
        }
    })
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    draining: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = |keep_alive: bool| {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(keep_alive)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        builder.http2().timer(TokioTimer::new());
        Arc::new(builder)
    };
    let (builder, one_request) = (builder(true), builder(false));
    // Every connection task holds a clone; the drain waits until all are dropped.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = async { let _ = stopped.wait_for(|s| *s).await; } => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let (builder, one_request) = (builder.clone(), one_request.clone());
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let draining = draining.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let result = if draining.load(Ordering::Relaxed) && !h2 {
                // An HTTP/1 connection opened while draining serves the request its client
                // is sending and closes: closing it idle at the final stop could drop a
                // request already on the wire.
                drop(watcher);
                one_request
                    .serve_connection(TokioIo::new(tls), service)
                    .await
            } else {
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                watcher.watch(connection.into_owned()).await
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(alive);
    tracing::info!("stopped accepting; answering the requests in flight");
    let drained = async {
        graceful.shutdown().await;
        let _ = all_closed.recv().await;
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}
