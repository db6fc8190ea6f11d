//! The floor server of `bench/load.sh`: hyper and tokio-rustls with the webhook's own TLS
//! configuration and runtime, answering `POST /<input>` with [`floor::answer`].
//!
//! Usage: `floor-server ADDR CERT KEY INPUT...` where each INPUT is a benchmark input file;
//! `/<file stem>` serves the answer prepared for it, and with inputs `create` and `update`,
//! `/admission` answers each by its operation (the floor registered as a webhook,
//! `bench/apiserver_admission.py`).
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "floor.rs"]
mod floor;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use django_migrate_webhook::{admission, tls};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The same allocator as the webhook, so that the comparison is about the work done.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, cert, key, inputs @ ..] = args.as_slice() else {
        eprintln!("usage: floor-server ADDR CERT KEY INPUT...");
        std::process::exit(2);
    };
    let mut prepared = HashMap::new();
    for input in inputs {
        let path = Path::new(input);
        let body = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {input}: {e}"));
        let reply = admission::review(&body, &Default::default());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        prepared.insert(
            format!("/{stem}"),
            floor::Prepared::from_response(&reply.body),
        );
    }
    let prepared = Arc::new(prepared);
    let pair = tls::load_pair(Path::new(cert), Path::new(key)).expect("certificate pair");
    let config = tls::server_config(tls::CertStore::new(pair)).expect("TLS configuration");
    let acceptor = TlsAcceptor::from(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr.as_str()).await.expect("bind");
        println!("listening on {}", listener.local_addr().expect("address"));
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, builder, prepared) =
                (acceptor.clone(), builder.clone(), prepared.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let prepared = prepared.clone();
                    async move { Ok::<_, Infallible>(handle(request, &prepared).await) }
                });
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
}

async fn handle(
    request: Request<Incoming>,
    prepared: &HashMap<String, floor::Prepared>,
) -> Response<Full<Bytes>> {
    // `/admission` is the floor registered as a webhook: CREATE gets the answer prepared
    // for the input `create`, UPDATE the one for `update`.
    let by_operation = (request.uri().path() == "/admission")
        .then(|| prepared.get("/create").zip(prepared.get("/update")))
        .flatten();
    if let Some((create, update)) = by_operation {
        let answer = match request.into_body().collect().await {
            Ok(body) => floor::answer_by_operation(&body.to_bytes(), create, update)
                .map_err(|e| (StatusCode::BAD_REQUEST, e)),
            Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
        };
        return respond(answer);
    }
    let answer = match prepared.get(request.uri().path()) {
        Some(p) => match request.into_body().collect().await {
            Ok(body) => {
                floor::answer(&body.to_bytes(), p).map_err(|e| (StatusCode::BAD_REQUEST, e))
            }
            Err(e) => Err((StatusCode::BAD_REQUEST, e.to_string())),
        },
        None => Err((StatusCode::NOT_FOUND, "no such input".to_owned())),
    };
    respond(answer)
}

fn respond(answer: Result<Vec<u8>, (StatusCode, String)>) -> Response<Full<Bytes>> {
    let (status, body) = match answer {
        Ok(body) => (StatusCode::OK, body),
        Err((status, message)) => (status, message.into_bytes()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
