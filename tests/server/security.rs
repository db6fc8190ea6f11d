//! The webhook port with the tools a security review uses: `openssl s_client` and curl.

use super::*;

fn tool(name: &str, package: &str) -> std::process::Command {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is missing: install the Debian package {package} (scripts/test.sh does)"
    );
    std::process::Command::new(name)
}

/// Runs `openssl s_client` with one protocol version; returns (success, output).
fn s_client(port: u16, version: &str) -> (bool, String) {
    let out = tool("openssl", "openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
        ])
        // Let the client offer the old versions at all; the server must refuse them.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_and_plain_http_are_refused() {
    let fx = start().await;
    let port = fx.running.webhook_addr.unwrap().port();
    let result = tokio::task::spawn_blocking(move || {
        for version in ["-tls1", "-tls1_1"] {
            let (ok, text) = s_client(port, version);
            assert!(!ok, "openssl s_client {version} connected:\n{text}");
            // The server answers the old ClientHello with a fatal alert: no cipher agreed.
            assert!(
                text.contains("SSL alert number") && text.contains("Cipher is (NONE)"),
                "{version}: not refused with an alert:\n{text}"
            );
        }
        for (version, shown) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let (ok, text) = s_client(port, version);
            assert!(
                ok && text.contains(shown),
                "openssl s_client {version} failed:\n{text}"
            );
        }
        // Plain HTTP on the TLS port gets no HTTP answer.
        let out = tool("curl", "curl")
            .args(["-sS", "-m", "5", "-o", "-", "-w", "%{http_code}"])
            .args(["-H", "Content-Type: application/json", "-d", "{}"])
            .arg(format!("http://127.0.0.1:{port}/mutate"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!out.status.success(), "plain HTTP was answered: {stdout}");
        assert!(
            stdout.ends_with("000"),
            "plain HTTP got an HTTP status: {stdout}"
        );
        // curl with TLS 1.1 at most cannot connect either.
        let out = tool("curl", "curl")
            .args(["-sS", "-m", "5", "-k", "--tls-max", "1.1", "--tlsv1"])
            .arg(format!("https://127.0.0.1:{port}/mutate"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "curl --tls-max 1.1 connected");
    })
    .await;
    fx.running.shutdown(Duration::ZERO).await.unwrap();
    result.unwrap();
}
