//! The server tier: the HTTPS webhook in-process (and the real binary) with a CA from
//! `certs`, driven by a real TLS client over HTTP/1.1 and h2. Its modules hold the
//! bad-input tier (`bad_input`), graceful shutdown under load (`shutdown`) and the TLS
//! checks made with openssl and curl (`security`).
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use django_migrate_webhook::{certs, process, server};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::*;

mod bad_input;
mod security;
mod shutdown;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Fixture {
    running: process::Running,
    ca: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let generated = certs::generate(&["localhost".into()], &[LOCALHOST]).unwrap();
    certs::write(dir.path(), &generated).unwrap();
    let options = process::ServeOptions {
        webhook: true,
        listen: SocketAddr::new(LOCALHOST, 0),
        tls_cert: dir.path().join("tls.crt"),
        tls_key: dir.path().join("tls.key"),
        metrics_listen: SocketAddr::new(LOCALHOST, 0),
        cert_reload_interval: Duration::from_millis(200),
        shutdown_delay: Duration::ZERO,
        controller: None,
        code_image: Default::default(),
    };
    let running = process::start(&options, None).await.expect("server starts");
    Fixture {
        running,
        ca: generated.ca_cert.into_bytes(),
        _dir: dir,
    }
}

fn connector(
    ca: &[u8],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls(
    addr: SocketAddr,
    ca: &[u8],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector(ca, alpn, versions)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook")
}

/// An HTTP/1.1 keep-alive connection, as kube-apiserver opens them.
async fn http1(fx: &Fixture) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tls(
        fx.running.webhook_addr.unwrap(),
        &fx.ca,
        &[b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> (StatusCode, Value) {
    let status = response.status();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

fn create_fixture() -> Value {
    with_code(read_json(
        &repo().join("tests/fixtures/admission/create.request.json"),
    ))
}

#[tokio::test]
async fn http1_keep_alive_answers_admission_reviews_with_a_base64_patch() {
    let fx = start().await;
    let mut sender = http1(&fx).await;
    let review = create_fixture();
    let object = review["request"]["object"].clone();
    for _ in 0..3 {
        sender.ready().await.unwrap();
        let response = sender
            .send_request(post("/mutate?timeout=10s", review.to_string()))
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["response"]["uid"], review["request"]["uid"]);
        assert_eq!(body["response"]["allowed"], true);
        assert!(
            body["response"]["patch"].is_string(),
            "patch must be base64 text"
        );
        let mutated = apply(&object, &patch_of(&body["response"]).unwrap());
        assert_eq!(
            mutated["spec"]["template"]["spec"]["initContainers"][1]["name"],
            "django-migrate"
        );
    }
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn h2_serves_concurrent_streams() {
    let fx = start().await;
    let stream = tls(
        fx.running.webhook_addr.unwrap(),
        &fx.ca,
        &[b"h2", b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = create_fixture().to_string();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut sender = sender.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let response = sender.send_request(post("/mutate", body)).await.unwrap();
            assert_eq!(response.version(), hyper::Version::HTTP_2);
            read(response).await
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body["response"]["patch"].is_string());
    }
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn tls12_and_tls13_clients_connect() {
    let fx = start().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = tls(
            fx.running.webhook_addr.unwrap(),
            &fx.ca,
            &[b"http/1.1"],
            &[version],
        )
        .await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

/// A ClientHello written by hand (no modern TLS library sends a TLS 1.1 one): ECDHE
/// suites and the extensions a TLS 1.2 server needs, no supported_versions extension, so
/// `version` alone decides.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut hello = version.to_vec();
    hello.extend([0x42; 32]); // random
    hello.push(0); // session id
    // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES128-SHA
    hello.extend([0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x09]);
    hello.extend([0x01, 0x00]); // compression: null
    let extensions: Vec<u8> = [
        &[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d][..], // supported_groups: x25519
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],             // ec_point_formats
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
        &[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04][..],
    ]
    .concat();
    hello.extend((extensions.len() as u16).to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((hello.len() as u16).to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

async fn first_record(addr: SocketAddr, hello: &[u8]) -> [u8; 7] {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut header = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header))
        .await
        .expect("the server answers a ClientHello at once")
        .unwrap();
    header
}

#[tokio::test]
async fn tls11_is_refused() {
    let fx = start().await;
    let addr = fx.running.webhook_addr.unwrap();
    // The same hello with version TLS 1.2 gets a ServerHello, so the hello itself is fine.
    let accepted = first_record(addr, &client_hello([0x03, 0x03])).await;
    assert_eq!(accepted[0], 0x16, "handshake record expected: {accepted:?}");
    assert_eq!(accepted[5], 0x02, "ServerHello expected: {accepted:?}");
    for version in [[0x03, 0x02], [0x03, 0x01]] {
        let refused = first_record(addr, &client_hello(version)).await;
        assert_eq!(
            refused[0], 0x15,
            "alert record expected for {version:?}: {refused:?}"
        );
        assert_eq!(refused[5], 2, "fatal alert");
    }
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let fx = start().await;
    let mut sender = http1(&fx).await;
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (post("/mutate", "{not json"), StatusCode::BAD_REQUEST, "not a valid AdmissionReview"),
        (
            post("/mutate", json!({"apiVersion": "v1", "kind": "Pod"}).to_string()),
            StatusCode::BAD_REQUEST,
            "expected apiVersion",
        ),
        (
            post(
                "/mutate",
                json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "x"}}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "admissionReviewVersions",
        ),
        (post("/other", "{}"), StatusCode::NOT_FOUND, "POST /mutate"),
        (
            Request::get("/mutate").header("host", "localhost").body(Full::default()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
    ];
    for (request, expected, needle) in cases {
        sender.ready().await.unwrap();
        let (status, body) = read(sender.send_request(request).await.unwrap()).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["code"], expected.as_u16());
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    }
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn bodies_over_8_mib_get_413() {
    let fx = start().await;
    let big = vec![b' '; server::MAX_BODY_BYTES + 1];
    // Declared length over the limit: refused before reading.
    let mut sender = http1(&fx).await;
    let (status, body) = read(
        sender
            .send_request(post("/mutate", big.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["message"].as_str().unwrap().contains("8388608"));
    // Streamed without a length (h2 data frames): cut off at the limit.
    let stream = tls(
        fx.running.webhook_addr.unwrap(),
        &fx.ca,
        &[b"h2"],
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = big
        .chunks(1 << 20)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = Request::post("/mutate").body(body).unwrap();
    let (status, _) = read(h2.send_request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

async fn get_admin(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn health_and_metrics_report_requests_by_outcome() {
    let fx = start().await;
    let admin = fx.running.admin_addr;
    assert_eq!(get_admin(admin, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get_admin(admin, "/readyz").await.0, StatusCode::OK);
    let mut sender = http1(&fx).await;
    let review = create_fixture();
    for body in [review.to_string(), review.to_string(), "{".to_string()] {
        sender.ready().await.unwrap();
        read(sender.send_request(post("/mutate", body)).await.unwrap()).await;
    }
    let (status, metrics) = get_admin(admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "django_migrate_admission_requests_total{outcome=\"patched\"} 2",
        "django_migrate_admission_requests_total{outcome=\"invalid\"} 1",
        "django_migrate_admission_requests_total{outcome=\"denied\"} 0",
        "django_migrate_admission_duration_seconds_count 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("django_migrate_admission_duration_seconds_bucket{le=\"0.001\"}"));
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

/// A start that cannot happen says why in one line, each cause once: a port in use, a
/// certificate file that is not there.
#[test]
fn a_failed_start_names_its_cause_once() {
    let bin = env!("CARGO_BIN_EXE_django-migrate-webhook");
    let dir = tempfile::tempdir().unwrap();
    let generated = certs::generate(&["localhost".into()], &[LOCALHOST]).unwrap();
    certs::write(dir.path(), &generated).unwrap();
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let serve = |cert: &std::path::Path| {
        let out = std::process::Command::new(bin)
            .args(["serve", "--metrics-listen", "127.0.0.1:0"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.lines().last().unwrap_or_default().to_owned()
    };
    let line = serve(&dir.path().join("tls.crt"));
    assert!(
        line.starts_with(&format!("error: cannot listen on 127.0.0.1:{port}: ")),
        "{line}"
    );
    assert_eq!(line.matches("in use").count(), 1, "{line}");
    let line = serve(&dir.path().join("missing.crt"));
    assert!(
        line.starts_with("error: cannot read certificate file ") && line.contains("missing.crt"),
        "{line}"
    );
    assert_eq!(line.matches("No such file").count(), 1, "{line}");
}

/// The real binary: `certs` writes the files, `serve` starts from flags, answers over
/// TLS, and exits 0 on SIGTERM.
#[test]
fn the_binary_serves_with_certificates_from_certs() {
    let bin = env!("CARGO_BIN_EXE_django-migrate-webhook");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--dns", "localhost", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_mode = std::fs::metadata(dir.path().join("tls.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
    let (webhook, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--log-format", "json", "--shutdown-delay", "0"])
        .args(["--listen", &format!("127.0.0.1:{webhook}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let result = runtime.block_on(async {
        let admin_addr = SocketAddr::new(LOCALHOST, admin);
        let mut ready = false;
        for _ in 0..100 {
            if TcpStream::connect(admin_addr).await.is_ok()
                && get_admin(admin_addr, "/readyz").await.0 == StatusCode::OK
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "serve did not become ready");
        let stream = tls(
            SocketAddr::new(LOCALHOST, webhook),
            &ca,
            &[b"http/1.1"],
            rustls::DEFAULT_VERSIONS,
        )
        .await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        read(
            sender
                .send_request(post("/mutate", create_fixture().to_string()))
                .await
                .unwrap(),
        )
        .await
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let (code, body) = result;
    assert_eq!(code, StatusCode::OK);
    assert!(body["response"]["patch"].is_string());
    assert!(status.success(), "serve exited with {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    let first: Value = serde_json::from_str(logs.lines().next().unwrap()).expect("JSON logs");
    assert_eq!(first["level"], "INFO");
    assert!(
        !logs.contains("admitted"),
        "per-request logs must stay at debug: {logs}"
    );
}

/// Lays out a certificate pair the way the kubelet mounts a Secret: `tls.crt` and
/// `tls.key` are symlinks into `..data`, itself a symlink to a timestamped directory.
fn mount_secret(
    dir: &std::path::Path,
    version: &str,
    certs: &certs::DevCerts,
    key_override: Option<&str>,
) {
    use std::os::unix::fs::symlink;
    let data = dir.join(version);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), &certs.tls_cert).unwrap();
    std::fs::write(data.join("tls.key"), key_override.unwrap_or(&certs.tls_key)).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key"] {
        if std::fs::symlink_metadata(dir.join(name)).is_err() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Certificate rotation as cert-manager or the kubelet does it, while a client keeps
/// sending requests: no request fails, new connections get the new certificate, and a
/// broken pair is refused while the previous one keeps serving.
#[tokio::test]
async fn certificates_rotate_without_a_restart_or_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let first = certs::generate(&["localhost".into()], &[LOCALHOST]).unwrap();
    let second = certs::generate(&["localhost".into()], &[LOCALHOST]).unwrap();
    mount_secret(dir.path(), "..2026_11_24_v1", &first, None);
    let options = process::ServeOptions {
        webhook: true,
        listen: SocketAddr::new(LOCALHOST, 0),
        tls_cert: dir.path().join("tls.crt"),
        tls_key: dir.path().join("tls.key"),
        metrics_listen: SocketAddr::new(LOCALHOST, 0),
        cert_reload_interval: Duration::from_millis(100),
        shutdown_delay: Duration::ZERO,
        controller: None,
        code_image: Default::default(),
    };
    let running = process::start(&options, None).await.unwrap();
    let addr = running.webhook_addr.unwrap();
    // The client trusts both CAs, as the API server does while caBundle holds both.
    let cas = format!("{}{}", first.ca_cert, second.ca_cert).into_bytes();
    let body = create_fixture().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (cas, body, stop) = (cas.clone(), body.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            // One long-lived keep-alive connection and a new connection per round.
            let keep = tls(addr, &cas, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await;
            let (mut keep, conn) = hyper::client::conn::http1::handshake(TokioIo::new(keep))
                .await
                .unwrap();
            tokio::spawn(conn);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let stream = tls(addr, &cas, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await;
                let (mut fresh, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for (which, sender) in [("keep", &mut keep), ("fresh", &mut fresh)] {
                    let result = match sender.ready().await {
                        Ok(()) => sender.send_request(post("/mutate", body.clone())).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(r) => {
                            let status = r.status();
                            // Read to the end, so that the connection can be reused.
                            let body = r.into_body().collect().await;
                            match (status, body) {
                                (StatusCode::OK, Ok(_)) => ok += 1,
                                (status, body) => {
                                    failed.push(format!("{which}: {status} {:?}", body.err()))
                                }
                            }
                        }
                        Err(e) => failed.push(format!("{which}: {e} after {ok} ok")),
                    }
                }
            }
            (ok, failed)
        })
    };
    let peer_cert = |cas: Vec<u8>| async move {
        let stream = tls(addr, &cas, &[b"http/1.1"], rustls::DEFAULT_VERSIONS).await;
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer_cert(cas.clone()).await, der(&first.tls_cert));

    mount_secret(dir.path(), "..2026_11_24_v2", &second, None);
    let started = std::time::Instant::now();
    loop {
        if peer_cert(cas.clone()).await == der(&second.tls_cert) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key that does not belong to the certificate: the current pair stays.
    let third = certs::generate(&["localhost".into()], &[LOCALHOST]).unwrap();
    mount_secret(dir.path(), "..2026_11_24_v3", &third, Some(&first.tls_key));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer_cert(cas.clone()).await, der(&second.tls_cert));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 20, "only {ok} requests were sent");
    eprintln!("rotation: {ok} requests, none failed");
    running.shutdown(Duration::ZERO).await.unwrap();
}
