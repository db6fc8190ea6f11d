//! Graceful shutdown of the real binary under load: SIGTERM loses no admission request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use super::*;

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Answered 200 after SIGTERM.
    ok_after_term: AtomicUsize,
    /// Answers that carried `Connection: close`.
    closing: AtomicUsize,
    /// Connections refused or reset before a request was written: the port was closed.
    not_sent: AtomicUsize,
    /// Requests written that got no answer: these would fail an admission.
    lost: AtomicUsize,
}

/// Starts `serve` with a given shutdown delay; returns the child, the webhook port, the
/// admin port and the CA.
fn spawn_serve(dir: &std::path::Path, delay: &str) -> (std::process::Child, u16, u16, Vec<u8>) {
    let bin = env!("CARGO_BIN_EXE_django-migrate-webhook");
    let out = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--dns", "localhost", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (webhook, admin) = (free_port(), free_port());
    let child = std::process::Command::new(bin)
        .args(["serve", "--log-format", "json", "--shutdown-delay", delay])
        .args(["--listen", &format!("127.0.0.1:{webhook}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin}")])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (
        child,
        webhook,
        admin,
        std::fs::read(dir.join("ca.crt")).unwrap(),
    )
}

async fn wait_ready(admin: u16) {
    let addr = SocketAddr::new(LOCALHOST, admin);
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok()
            && get_admin(addr, "/readyz").await.0 == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("serve did not become ready");
}

/// One load client: an HTTP/1.1 keep-alive connection like the API server's, reopened
/// whenever the server closes it, until the server is gone.
async fn client(addr: SocketAddr, ca: Vec<u8>, term: Arc<AtomicBool>, tally: Arc<Tally>) {
    let body = Bytes::from(create_fixture().to_string());
    let connector = connector(&ca, &[b"http/1.1"], rustls::DEFAULT_VERSIONS);
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 20 {
        let connected = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .ok()?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(sender)
        }
        .await;
        let Some(mut sender) = connected else {
            tally.not_sent.fetch_add(1, Ordering::Relaxed);
            refused_in_a_row += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        refused_in_a_row = 0;
        loop {
            if sender.ready().await.is_err() {
                break; // closed by the server between requests, before anything was sent
            }
            match sender.send_request(post("/mutate", body.clone())).await {
                Ok(response) => {
                    let close = response
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(_) if status == StatusCode::OK => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if term.load(Ordering::Relaxed) {
                                tally.ok_after_term.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            tally.lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if close {
                        tally.closing.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                // Canceled: hyper saw the connection close before writing the request.
                Err(e) if e.is_canceled() => {
                    tally.not_sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    eprintln!("request lost: {e:?}");
                    tally.lost.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

#[test]
fn sigterm_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_secs(2);
    let (mut child, webhook, admin, ca) = spawn_serve(dir.path(), "2");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tally = Arc::new(Tally::default());
    let term = Arc::new(AtomicBool::new(false));
    let (term_at, readyz_after_term) = runtime.block_on(async {
        wait_ready(admin).await;
        let addr = SocketAddr::new(LOCALHOST, webhook);
        let clients: Vec<_> = (0..16)
            .map(|_| tokio::spawn(client(addr, ca.clone(), term.clone(), tally.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = tally.ok.load(Ordering::Relaxed);
        assert!(before > 50, "the load is running: {before} answers");
        term.store(true, Ordering::Relaxed);
        let term_at = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let readyz = get_admin(SocketAddr::new(LOCALHOST, admin), "/readyz")
            .await
            .0;
        for c in clients {
            c.await.unwrap();
        }
        (term_at, readyz)
    });
    let status = child.wait().unwrap();
    let exited_after = term_at.elapsed();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    let t = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    println!(
        "ok {}, ok after SIGTERM {}, Connection: close {}, not sent (port closed) {}, lost {}; exited {exited_after:?} after SIGTERM",
        t(&tally.ok),
        t(&tally.ok_after_term),
        t(&tally.closing),
        t(&tally.not_sent),
        t(&tally.lost)
    );
    assert!(status.success(), "serve exited with {status}: {logs}");
    assert_eq!(
        readyz_after_term,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz fails first"
    );
    assert_eq!(
        t(&tally.lost),
        0,
        "requests written before the port closed got no answer"
    );
    assert!(
        t(&tally.ok_after_term) > 50,
        "the server keeps serving during the delay"
    );
    assert!(
        t(&tally.closing) >= 16,
        "answers during the delay carry Connection: close"
    );
    assert!(
        exited_after >= delay,
        "exited before the delay: {exited_after:?}"
    );
    assert!(
        exited_after < delay + Duration::from_secs(5),
        "took {exited_after:?} to exit"
    );
    for needle in [
        "still serving while the endpoints drop this pod",
        "stopped accepting",
        "all connections closed",
    ] {
        assert!(logs.contains(needle), "no {needle:?} in the log: {logs}");
    }
}
