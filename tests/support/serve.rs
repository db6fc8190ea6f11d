//! The webhook binary on free loopback ports with its own development certificates, and
//! polling until a condition holds.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub const BIN: &str = env!("CARGO_BIN_EXE_django-migrate-webhook");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when `/readyz` on the admin port answers 200.
fn ready(admin: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok_and(|mut s| {
        use std::io::Read;
        let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
    })
}

/// Polls `check` until it returns Some, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A `serve` process with its own development certificates.
pub struct Serve {
    pub child: Option<Child>,
    pub port: u16,
    /// The admin port: `/healthz`, `/readyz`, `/metrics`.
    pub admin: u16,
    pub ca_bundle: String,
    pub log: PathBuf,
    /// Keeps the certificates on disk while the process runs.
    _certs: tempfile::TempDir,
}

impl Serve {
    /// Starts `serve`, with extra flags (e.g. `--controller`), and waits for `/readyz`.
    pub async fn start<S: AsRef<std::ffi::OsStr>>(extra: &[S]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(dir.path())
            .args(["--ip", "127.0.0.1", "--dns", "localhost"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let log = dir.path().join("serve.log");
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(ca);
        // A port found free may be taken by another test before serve binds it: serve then
        // exits at once, and is started again on other ports.
        for attempt in 1..=3 {
            let (port, admin) = (free_port(), free_port());
            let mut child = Command::new(BIN)
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--metrics-listen", &format!("127.0.0.1:{admin}")])
                .arg("--tls-cert")
                .arg(dir.path().join("tls.crt"))
                .arg("--tls-key")
                .arg(dir.path().join("tls.key"))
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let started = Instant::now();
            loop {
                if ready(admin) {
                    return Serve {
                        child: Some(child),
                        port,
                        admin,
                        ca_bundle,
                        log,
                        _certs: dir,
                    };
                }
                let logs = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        attempt < 3 && logs.contains("in use"),
                        "serve exited with {status} before answering /readyz:\n{logs}"
                    );
                    break;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("timed out after 20s waiting for serve to answer /readyz:\n{logs}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        unreachable!("serve started three times")
    }

    /// The admin port's `/metrics`.
    pub fn metrics(&self) -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.admin)).expect("admin port");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet stops a pod; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.sigterm();
        self.child.take()?.wait().ok()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}
