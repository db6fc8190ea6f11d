//! The reconciler against a mock API server (as kube-rs's controller-rs tests its own):
//! each test says which requests a reconcile must send, in order, and fails on any other.

use axum::http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use tower_test::mock;

use super::*;
use crate::names::{CODE_CONTAINER, MIGRATE_CONTAINER};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// One request the reconciler must send, and the answer it gets (`None`: its own body).
struct Expect {
    method: &'static str,
    path: &'static str,
    reply: Option<Value>,
}

fn expect(method: &'static str, path: &'static str, reply: Option<Value>) -> Expect {
    Expect {
        method,
        path,
        reply,
    }
}

/// Answers the expected requests in order, then checks that no other one comes; returns
/// the request bodies.
async fn serve(mut handle: Handle, expected: Vec<Expect>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for e in expected {
        let (request, send) = handle
            .next_request()
            .await
            .unwrap_or_else(|| panic!("expected {} {}, got nothing", e.method, e.path));
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            (e.method, e.path)
        );
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let reply = e.reply.unwrap_or_else(|| body.clone());
        bodies.push(body);
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
    if let Some((request, _)) = handle.next_request().await {
        panic!(
            "unexpected request {} {}",
            request.method(),
            request.uri().path()
        );
    }
    bodies
}

/// The reconciler's metrics, kept across reconciles as in the process.
struct Fixture {
    registry: Registry,
    metrics: GateMetrics,
}

impl Fixture {
    fn new() -> Fixture {
        let mut registry = crate::telemetry::registry();
        let metrics = GateMetrics::register(&mut registry);
        Fixture { registry, metrics }
    }

    /// Reconciles `pod` once against a mock API server expecting `expected`.
    async fn reconcile(&self, pod: &WatchedPod, expected: Vec<Expect>) -> Vec<Value> {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let reporter = Reporter {
            controller: "test".into(),
            instance: None,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let ctx = Arc::new(Context::new(client, recorder, self.metrics.clone()));
        let server = tokio::spawn(serve(handle, expected));
        reconcile(Arc::new(pod.clone()), ctx.clone())
            .await
            .expect("reconcile succeeds");
        drop(ctx);
        server.await.expect("the API server saw what it expected")
    }

    fn sample(&self, start: &str) -> String {
        crate::telemetry::encode(&self.registry)
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start}"))
            .to_owned()
    }
}

/// A pod of Deployment `shop` whose migrate step ended with `summary` (exit code from it).
fn pod(summary: &Value, condition: Option<Value>) -> WatchedPod {
    let code = summary["exit_code"].as_i64().unwrap();
    let conditions: Vec<Value> = condition.into_iter().collect();
    serde_json::from_value(json!({
        "metadata": {"name": "shop-5d8f9c-x2x4z", "namespace": "n",
                     "creationTimestamp": "2026-01-01T00:00:00Z",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "shop-5d8f9c", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "x"}],
                 "readinessGates": [{"conditionType": MIGRATED_CONDITION}]},
        "status": {"conditions": conditions, "initContainerStatuses": [
            {"name": CODE_CONTAINER, "state": {"terminated": {"exitCode": 0}}},
            {"name": MIGRATE_CONTAINER, "state": {"terminated": {
                "exitCode": code, "message": summary.to_string()}}},
        ]},
    }))
    .unwrap()
}

/// The condition the reconciler patched, as the pod then carries it.
fn patched_condition(patch: &Value) -> Value {
    patch["status"]["conditions"][0].clone()
}

const POD_STATUS: &str = "/api/v1/namespaces/n/pods/shop-5d8f9c-x2x4z/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/n/events";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/n/deployments/shop";

fn deployment_metadata() -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": "shop", "namespace": "n", "uid": "deployment-uid"}})
}

/// What a step that ended sends: the condition, an Event on the pod, the Deployment's
/// metadata read for its UID, an Event on the Deployment.
fn step_ended() -> Vec<Expect> {
    vec![
        expect("PATCH", POD_STATUS, Some(pod_reply())),
        expect("POST", EVENTS, None),
        expect("GET", DEPLOYMENT, Some(deployment_metadata())),
        expect("POST", EVENTS, None),
    ]
}

fn pod_reply() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shop-5d8f9c-x2x4z", "namespace": "n"}})
}

#[tokio::test]
async fn a_step_that_applied_hundreds_of_migrations_is_counted_and_told_once() {
    // What the program writes for 300 migrations: the list is cut, the count is not.
    let summary = json!({
        "mode": "migrate", "phase": "done", "result": "applied", "exit_code": 0,
        "message": "applied 300 migrations in 41.2s (waited 0.0s for the lock): shop.0001_initial, shop.0002_a and 298 more",
        "applied": ["shop.0001_initial", "shop.0002_a"], "pending": [],
        "seconds": {"total": 42.0, "database": 0.1, "lock_wait": 0.0, "migrate": 41.2},
        "retries": 1, "unsafe_operations": [],
        "counts": {"applied": 300, "pending": 0, "unsafe": 0, "held_back": 0},
    });
    let fx = Fixture::new();
    let bodies = fx.reconcile(&pod(&summary, None), step_ended()).await;
    let condition = patched_condition(&bodies[0]);
    assert_eq!(
        (&condition["status"], &condition["reason"]),
        (&json!("True"), &json!("Migrated"))
    );
    assert_eq!(condition["message"], summary["message"]);
    assert_eq!(
        (&bodies[1]["reason"], &bodies[1]["type"]),
        (&json!(event::MIGRATIONS_APPLIED), &json!("Normal"))
    );
    assert_eq!(bodies[1]["note"], summary["message"]);
    assert_eq!(bodies[3]["regarding"]["uid"], "deployment-uid");
    assert!(
        bodies[3]["note"]
            .as_str()
            .unwrap()
            .starts_with("pod shop-5d8f9c-x2x4z: applied 300 migrations"),
        "{}",
        bodies[3]["note"]
    );
    let applied = r#"django_migrate_migrations_applied_total{namespace="n",deployment="shop"}"#;
    assert_eq!(fx.sample(applied), format!("{applied} 300"));
    let retries = r#"django_migrate_lock_timeout_retries_total{namespace="n",deployment="shop"}"#;
    assert_eq!(fx.sample(retries), format!("{retries} 1"));

    let fast = r#"django_migrate_steps_fast_path_total{namespace="n",deployment="shop"}"#;
    assert_eq!(fx.sample(fast), format!("{fast} 0"));

    // The pod now carries the condition: nothing is sent, nothing is counted again.
    let done = pod(&summary, Some(condition));
    fx.reconcile(&done, vec![]).await;
    assert_eq!(fx.sample(applied), format!("{applied} 300"));
}

#[tokio::test]
async fn a_failed_step_gets_its_reason_one_event_pair_and_one_count() {
    let summary = json!({
        "mode": "migrate", "phase": "migrating", "result": "lock-lost", "exit_code": 6,
        "message": "lost the migration lock (connection closed); stopped before applying anything more",
        "counts": {"applied": 2, "pending": 5, "unsafe": 0, "held_back": 0},
    });
    let fx = Fixture::new();
    let bodies = fx.reconcile(&pod(&summary, None), step_ended()).await;
    let condition = patched_condition(&bodies[0]);
    assert_eq!(
        (&condition["status"], &condition["reason"]),
        (&json!("False"), &json!("MigrationLockLost"))
    );
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .starts_with("exit code 6: lost the migration lock")
    );
    assert_eq!(
        (&bodies[1]["reason"], &bodies[1]["type"]),
        (&json!("MigrationLockLost"), &json!("Warning"))
    );
    let failures = r#"django_migrate_step_failures_total{namespace="n",deployment="shop",reason="MigrationLockLost"}"#;
    assert_eq!(fx.sample(failures), format!("{failures} 1"));
    let applied = r#"django_migrate_migrations_applied_total{namespace="n",deployment="shop"}"#;
    assert_eq!(fx.sample(applied), format!("{applied} 2"));

    fx.reconcile(&pod(&summary, Some(condition)), vec![]).await;
    assert_eq!(fx.sample(failures), format!("{failures} 1"));
}

#[tokio::test]
async fn a_running_step_is_patched_without_events_and_pods_without_the_gate_are_left_alone() {
    let fx = Fixture::new();
    let mut running = pod(&json!({"exit_code": 0}), None);
    running.status.init_container_statuses[1] = crate::step::StepStatus {
        name: MIGRATE_CONTAINER,
        running: true,
        ..Default::default()
    };
    let bodies = fx
        .reconcile(
            &running,
            vec![expect("PATCH", POD_STATUS, Some(pod_reply()))],
        )
        .await;
    assert_eq!(
        patched_condition(&bodies[0])["reason"],
        "MigrationStepRunning"
    );
    running.spec.gated = false;
    fx.reconcile(&running, vec![]).await;
}

#[tokio::test]
async fn a_step_that_ended_on_the_fast_path_is_counted() {
    let summary = json!({
        "mode": "migrate", "phase": "done", "result": "nothing-pending", "exit_code": 0,
        "message": "nothing to apply (0.21s, fast path: fingerprint 0123456789ab recorded 2026-12-01T10:00:00Z; its 219 applied migrations are all in django_migrations)",
        "applied": [], "pending": [],
        "seconds": {"total": 0.21, "database": 0.0, "lock_wait": 0.0, "migrate": 0.0},
        "fast_path": {"taken": true, "why": "fingerprint 0123456789ab recorded 2026-12-01T10:00:00Z"},
    });
    let fx = Fixture::new();
    let bodies = fx
        .reconcile(
            &pod(&summary, None),
            vec![expect("PATCH", POD_STATUS, Some(pod_reply()))],
        )
        .await;
    let condition = patched_condition(&bodies[0]);
    assert_eq!(condition["status"], "True");
    let fast = r#"django_migrate_steps_fast_path_total{namespace="n",deployment="shop"}"#;
    assert_eq!(fx.sample(fast), format!("{fast} 1"));
}
