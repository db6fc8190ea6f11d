//! Bad input against the running TLS server: every case gets a clear 4xx or an allowed
//! answer, within a bounded time, and abusive clients do not stop a well-behaved one
//! from being served.

use std::time::Instant;

use super::*;

/// Longest any single bad request may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

enum Expect {
    /// 400 with a Status body whose message contains this.
    Rejected(&'static str),
    /// 200, allowed, without a patch.
    AllowedUnpatched,
    /// 200 and allowed (with or without a patch).
    Allowed,
    /// 200, not allowed, with a message containing this.
    Denied(&'static str),
}

/// Sets the field at `pointer`, creating missing parent objects on the way.
fn set(review: &mut Value, pointer: &str, value: Value) {
    let mut at = review;
    let keys: Vec<String> = pointer[1..]
        .split('/')
        .map(|k| k.replace("~1", "/"))
        .collect();
    for key in &keys[..keys.len() - 1] {
        at = match at {
            Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            other => other
                .as_object_mut()
                .unwrap()
                .entry(key.clone())
                .or_insert_with(|| json!({})),
        };
    }
    let last = keys.last().unwrap();
    match at {
        Value::Array(items) => items[last.parse::<usize>().unwrap()] = value,
        other => {
            other.as_object_mut().unwrap().insert(last.clone(), value);
        }
    }
}

fn with(pointer: &str, value: Value) -> Vec<u8> {
    let mut review = create_fixture();
    set(&mut review, pointer, value);
    review.to_string().into_bytes()
}

fn without(pointer: &str) -> Vec<u8> {
    let mut review = create_fixture();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    review
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
    review.to_string().into_bytes()
}

/// The body with the string "NESTED" replaced by 100 000 nested arrays.
fn nest_at_marker(body: Vec<u8>) -> Vec<u8> {
    String::from_utf8(body)
        .unwrap()
        .replacen("\"NESTED\"", &nested(100_000), 1)
        .into_bytes()
}

/// `depth` nested arrays, as a JSON text.
fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn cases() -> Vec<(String, Vec<u8>, Expect)> {
    use Expect::*;
    let fixture = create_fixture().to_string();
    let o = "/request/object";
    let mut cases: Vec<(String, Vec<u8>, Expect)> = vec![
        (
            "truncated JSON".into(),
            fixture.as_bytes()[..fixture.len() / 2].to_vec(),
            Rejected("not a valid AdmissionReview JSON document"),
        ),
        (
            "empty body".into(),
            Vec::new(),
            Rejected("not a valid AdmissionReview"),
        ),
        (
            "missing uid".into(),
            without("/request/uid"),
            Rejected("uid is missing or empty"),
        ),
        (
            "empty uid".into(),
            with("/request/uid", json!("")),
            Rejected("uid is missing or empty"),
        ),
        (
            "admission.k8s.io/v1beta1".into(),
            with("/apiVersion", json!("admission.k8s.io/v1beta1")),
            Rejected("admissionReviewVersions: [v1]"),
        ),
        (
            "non-UTF-8 bytes in a string".into(),
            non_utf8(&fixture),
            Rejected("not a valid AdmissionReview"),
        ),
        (
            "deeply nested JSON in a field the webhook reads".into(),
            nest_at_marker(with(
                "/request/object/spec/template/spec/containers/0/args",
                json!("NESTED"),
            )),
            Rejected("recursion limit exceeded"),
        ),
        (
            // Fields the webhook skips are not built into a tree, so depth costs nothing.
            "deeply nested JSON in a field the webhook skips".into(),
            fixture
                .replacen(
                    "\"metadata\":{",
                    &format!("\"status\":{},\"metadata\":{{", nested(100_000)),
                    1,
                )
                .into_bytes(),
            Allowed,
        ),
        (
            "deeply nested JSON beside the request, which the webhook skips".into(),
            fixture
                .replacen(
                    "\"request\":{",
                    &format!("\"extra\":{},\"request\":{{", nested(100_000)),
                    1,
                )
                .into_bytes(),
            Allowed,
        ),
        (
            "a huge value in a django-migrate annotation".into(),
            with(
                &format!("{o}/metadata/annotations"),
                json!({"django-migrate.io/mode": "x".repeat(200_000)}),
            ),
            Denied("django-migrate.io/mode"),
        ),
        (
            "a huge annotation of another tool".into(),
            with(
                &format!("{o}/metadata/annotations"),
                json!({"example.com/blob": "x".repeat(200_000)}),
            ),
            Allowed,
        ),
        (
            "a Deployment that is not opted in, with garbage in the spec".into(),
            {
                let mut review = create_fixture();
                review["request"]["object"]["metadata"]["labels"] = json!({"app": "web"});
                review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["env"] =
                    json!(5);
                review.to_string().into_bytes()
            },
            AllowedUnpatched,
        ),
    ];
    // Wrong JSON types in every field the webhook reads.
    for (pointer, value, needle) in [
        ("/apiVersion", json!(5), "not a valid AdmissionReview"),
        ("/kind", json!([]), "not a valid AdmissionReview"),
        ("/request", json!("x"), "not a valid AdmissionReview"),
        ("/request/uid", json!(5), "not a valid AdmissionReview"),
        (
            "/request/kind",
            json!("apps/v1"),
            "not a valid AdmissionReview",
        ),
        (
            "/request/kind/group",
            json!(1),
            "not a valid AdmissionReview",
        ),
        (
            "/request/operation",
            json!(5),
            "not a valid AdmissionReview",
        ),
        (
            "/request/object",
            json!("x"),
            "request.object is not a valid apps/v1 Deployment",
        ),
        ("/request/object/metadata", json!(5), "metadata"),
        (
            "/request/object/metadata/labels",
            json!([]),
            "metadata.labels",
        ),
        (
            "/request/object/metadata/labels/django-migrate.io~1inject",
            json!(true),
            "metadata.labels",
        ),
        (
            "/request/object/metadata/annotations",
            json!("x"),
            "metadata.annotations",
        ),
        ("/request/object/spec", json!("x"), "spec"),
        ("/request/object/spec/replicas", json!("3"), "spec.replicas"),
        ("/request/object/spec/template", json!(5), "spec.template"),
        (
            "/request/object/spec/template/metadata",
            json!([]),
            "spec.template.metadata",
        ),
        (
            "/request/object/spec/template/spec",
            json!(1.5),
            "spec.template.spec",
        ),
        (
            "/request/object/spec/template/spec/containers",
            json!({}),
            "spec.template.spec.containers",
        ),
        (
            "/request/object/spec/template/spec/containers/0",
            json!("web"),
            "spec.template.spec.containers[0]",
        ),
        (
            "/request/object/spec/template/spec/initContainers",
            json!(5),
            "spec.template.spec.initContainers",
        ),
        (
            "/request/object/spec/template/spec/readinessGates",
            json!("x"),
            "spec.template.spec.readinessGates",
        ),
    ] {
        cases.push((
            format!("{pointer} = {value}"),
            with(pointer, value.clone()),
            Rejected(needle),
        ));
    }
    // Fields the engine copies from the app container: odd types are passed through as
    // they are (the API server validates the result), never a 500.
    for (field, value) in [("env", json!(5)), ("name", json!(5)), ("image", json!({}))] {
        cases.push((
            format!("containers[0].{field} = {value}"),
            with(
                &format!("{o}/spec/template/spec/containers/0/{field}"),
                value,
            ),
            Allowed,
        ));
    }
    let mut many = create_fixture();
    let app = many["request"]["object"]["spec"]["template"]["spec"]["containers"][0].clone();
    many["request"]["object"]["spec"]["template"]["spec"]["containers"] = (0..1000)
        .map(|i| {
            let mut c = app.clone();
            c["name"] = json!(format!("c{i}"));
            c
        })
        .collect();
    cases.push((
        "a Deployment with 1000 containers".into(),
        many.to_string().into_bytes(),
        Allowed,
    ));
    cases
}

/// The fixture with one byte of a string value replaced by 0xFF, which is never UTF-8.
fn non_utf8(fixture: &str) -> Vec<u8> {
    let mut bytes = fixture.as_bytes().to_vec();
    let at = fixture.find("\"CREATE\"").expect("the fixture is a CREATE");
    bytes[at + 2] = 0xff;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_in_bounded_time() {
    let fx = start().await;
    let mut failures = Vec::new();
    for (name, body, expect) in cases() {
        // A new connection per case: a bad request must not depend on the one before.
        let mut sender = http1(&fx).await;
        let started = Instant::now();
        let response = tokio::time::timeout(ANSWER_WITHIN, async {
            let response = sender.send_request(post("/mutate", body)).await.unwrap();
            read(response).await
        })
        .await;
        let Ok((status, body)) = response else {
            failures.push(format!("{name}: no answer within {ANSWER_WITHIN:?}"));
            continue;
        };
        let took = started.elapsed();
        let message = body["message"]
            .as_str()
            .or(body["response"]["status"]["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        let ok = match expect {
            Expect::Rejected(needle) => {
                status == StatusCode::BAD_REQUEST
                    && body["kind"] == "Status"
                    && body["code"] == 400
                    && message.contains(needle)
            }
            Expect::AllowedUnpatched => {
                status == StatusCode::OK
                    && body["response"]["allowed"] == true
                    && body["response"].get("patch").is_none()
            }
            Expect::Allowed => status == StatusCode::OK && body["response"]["allowed"] == true,
            Expect::Denied(needle) => {
                status == StatusCode::OK
                    && body["response"]["allowed"] == false
                    && message.contains(needle)
                    && message.len() < 400
            }
        };
        if !ok {
            let text = body.to_string();
            failures.push(format!(
                "{name}: got {status}: {}",
                &text[..text.len().min(400)]
            ));
        }
        println!(
            "{name}: {status} in {took:?}: {}",
            &message[..message.len().min(160)]
        );
        for w in warnings(&body["response"]) {
            assert!(w.chars().count() <= 120, "{name}: warning too long: {w}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Just under and just over the body limit.
    let mut under = create_fixture().to_string().into_bytes();
    under.resize(server::MAX_BODY_BYTES, b' ');
    let mut sender = http1(&fx).await;
    let (status, body) = read(sender.send_request(post("/mutate", under)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["response"]["patch"].is_string());
    let mut over = create_fixture().to_string().into_bytes();
    over.resize(server::MAX_BODY_BYTES + 1, b' ');
    let mut sender = http1(&fx).await;
    let (status, _) = read(sender.send_request(post("/mutate", over)).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    fx.running.shutdown(Duration::ZERO).await.unwrap();
}

/// Sends `prefix` one byte at a time and returns how long the server took to hang up.
async fn trickle(fx: &Fixture, prefix: &'static [u8], every: Duration) -> Duration {
    let started = Instant::now();
    let mut stream = tls(
        fx.running.webhook_addr.unwrap(),
        &fx.ca,
        &[b"http/1.1"],
        rustls::DEFAULT_VERSIONS,
    )
    .await;
    for byte in prefix.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow client was never cut off"
        );
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_do_not_stop_the_others() {
    let fx = Arc::new(start().await);
    // A well-behaved client, as the API server: one keep-alive connection, one request
    // after the other, for as long as the abuse lasts.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let (fx, stop) = (fx.clone(), stop.clone());
        tokio::spawn(async move {
            let body = create_fixture().to_string();
            let mut sender = http1(&fx).await;
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                sender
                    .ready()
                    .await
                    .expect("the good client's connection stays usable");
                let response = sender
                    .send_request(post("/mutate", body.clone()))
                    .await
                    .unwrap();
                let (status, _) = read(response).await;
                assert_eq!(status, StatusCode::OK);
                latencies.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            latencies
        })
    };
    // 1000 connections that never send a byte: cut off by the TLS handshake timeout.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(
            TcpStream::connect(fx.running.webhook_addr.unwrap())
                .await
                .unwrap(),
        );
    }
    let idle_started = Instant::now();
    // A client that sends its request headers one byte at a time: cut off by the header
    // read timeout although it never stops sending.
    let slow = trickle(
        &fx,
        b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        Duration::from_millis(100),
    );
    let idle_closed = async {
        let mut closed = 0;
        for mut conn in idle {
            let mut buf = [0u8; 16];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await
            {
                closed += 1;
            }
        }
        (closed, idle_started.elapsed())
    };
    let (slow_took, (closed, idle_took)) = tokio::join!(slow, idle_closed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut latencies = good.await.unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    println!(
        "slow client cut off after {slow_took:?}; {closed} idle connections closed after {idle_took:?}; \
         good client: {} requests, p50 {:?}, p99 {p99:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(
        slow_took >= Duration::from_secs(9) && slow_took < Duration::from_secs(13),
        "slow client: {slow_took:?}"
    );
    assert_eq!(
        closed, 1000,
        "every idle connection is closed by the server"
    );
    assert!(
        idle_took < Duration::from_secs(13),
        "idle connections: {idle_took:?}"
    );
    assert!(
        latencies.len() > 100,
        "the good client was starved: {} requests",
        latencies.len()
    );
    assert!(
        p99 < Duration::from_millis(500),
        "the good client's p99 was {p99:?}"
    );
    Arc::try_unwrap(fx)
        .ok()
        .unwrap()
        .running
        .shutdown(Duration::ZERO)
        .await
        .unwrap();
}
