//! Expand and contract on the real node: a column drop shipped in one release under
//! `unsafe-migrations: defer`, with a client reading the column from the old pods through
//! the whole rollout; a contract Job that fails; a rollout that starts before the contract;
//! contract Jobs off, and the Job applied from `inject --contract-job`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// A controller with contract Jobs on acts on every namespace: the test with them off runs
/// alone.
static CONTRACT_JOBS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The ledger app of `tests/django`: release 1 reads `ledger_entry.legacy` on every
/// request to `/ledger/`, release 2 drops it (`ledger.0002_remove_entry_legacy`).
fn ledger(ns: &str, database: &str, release: &str, annotations: &[(&str, &str)]) -> String {
    ledger_with(ns, database, release, annotations, &[])
}

fn ledger_with(
    ns: &str,
    database: &str,
    release: &str,
    annotations: &[(&str, &str)],
    extra_env: &[(&str, &str)],
) -> String {
    let mut env = vec![("LEDGER_APP", "1"), ("LEDGER_RELEASE", release)];
    env.extend_from_slice(extra_env);
    django_deployment(ns, "ledger", database, 3, annotations, &env)
}

/// What the traffic client saw, by the release of the pod that answered.
#[derive(Debug, Default)]
struct Seen {
    ok: BTreeMap<String, u64>,
    /// HTTP 5xx answers: the release failed against the database.
    failed: BTreeMap<String, u64>,
    /// Connections refused or cut (a pod going away between two looks at the pod list).
    unreachable: u64,
    first_failure: Option<String>,
}

/// Requests `/ledger/` from every Ready pod of the Deployment, round after round, every
/// 50 ms, until stopped: what a Service would send traffic to.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(ns: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (ns, stop2, seen2) = (ns.to_owned(), stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut pods: Vec<(SocketAddr, String)> = Vec::new();
            let mut looked = Instant::now() - Duration::from_secs(10);
            while !stop2.load(Ordering::Relaxed) {
                if looked.elapsed() > Duration::from_millis(500) {
                    pods = ready_pods(&ns);
                    looked = Instant::now();
                }
                for (addr, release) in &pods {
                    let answer = get(*addr);
                    let mut seen = seen2.lock().unwrap();
                    match answer {
                        Some((200, _)) => {
                            *seen.ok.entry(release.clone()).or_default() += 1;
                        }
                        Some((status, body)) => {
                            *seen.failed.entry(release.clone()).or_default() += 1;
                            if seen.first_failure.is_none() {
                                let body: String = body.chars().take(300).collect();
                                seen.first_failure =
                                    Some(format!("release {release}: HTTP {status}: {body}"));
                            }
                        }
                        None => seen.unreachable += 1,
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Traffic {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn ok(&self, release: &str) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .ok
            .get(release)
            .copied()
            .unwrap_or(0)
    }

    fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Ready, not terminating pods of the ledger Deployment: address and release.
fn ready_pods(ns: &str) -> Vec<(SocketAddr, String)> {
    let out = kubectl(
        &["get", "pods", "-n", ns, "-l", "app=ledger", "-o", "json"],
        None,
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut pods = Vec::new();
    for pod in list["items"].as_array().into_iter().flatten() {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = pod["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok());
        if !ready || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let release = pod["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == "LEDGER_RELEASE")
            .and_then(|e| e["value"].as_str())
            .unwrap_or("?")
            .to_owned();
        if let Some(ip) = ip {
            pods.push((SocketAddr::new(ip, 8000), release));
        }
    }
    pods
}

/// `GET /ledger/`: the status code and body, or `None` when the pod cannot be reached.
fn get(addr: SocketAddr) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /ledger/ HTTP/1.0\r\nHost: ledger\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Some((status, body))
}

fn legacy_column(database: &str) -> String {
    psql(
        database,
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'ledger_entry' AND column_name = 'legacy'",
    )
}

fn ledger_0002(database: &str) -> String {
    psql(
        database,
        "SELECT COUNT(*) FROM django_migrations WHERE app = 'ledger' AND name = '0002_remove_entry_legacy'",
    )
}

/// The contract Jobs of the ledger Deployment.
fn contract_jobs(ns: &str) -> Vec<Value> {
    let out = kubectl_ok(&[
        "get",
        "jobs",
        "-n",
        ns,
        "-l",
        "django-migrate.io/contract-for=ledger",
        "-o",
        "json",
    ]);
    serde_json::from_str::<Value>(&out).unwrap()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn job_condition(job: &Value, kind: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// Reasons and notes of the Deployment's Events.
fn deployment_events(ns: &str) -> Vec<(String, String)> {
    let out = kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "--field-selector",
        "regarding.kind=Deployment,regarding.name=ledger",
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn wait_for<T>(
    what: &str,
    limit: Duration,
    webhook: &Serve,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if started.elapsed() > limit {
            let describe = kubectl(&["get", "pods,jobs", "-A", "-o", "wide"], None);
            panic!(
                "{what}: not within {limit:?}\n{}\nwebhook log:\n{}",
                text(&describe).0,
                webhook.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Pods of the ledger Deployment whose template is not the current one (terminating
/// ones included).
fn old_pods(ns: &str, release: &str) -> usize {
    let out = kubectl_ok(&["get", "pods", "-n", ns, "-l", "app=ledger", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            !p["spec"]["containers"][0]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["name"] == "LEDGER_RELEASE" && e["value"] == release)
        })
        .count()
}

/// The column drop in one release: release 1 serves (and reads the column) until its last
/// pod is gone; the new pods' steps apply everything but the drop; then the controller
/// creates one Job that drops it. No request of either release fails.
#[tokio::test]
async fn a_column_drop_ships_in_one_release_under_defer_without_a_failed_request() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with("contract", &["--contract-jobs"]).await;
    let defer = [("unsafe-migrations", "defer")];
    apply(&ledger(&ns.name, &database, "1", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    psql(
        &database,
        "INSERT INTO ledger_entry (code, legacy) VALUES ('a', 'x'), ('b', 'y')",
    );
    let traffic = Traffic::start(&ns.name);
    wait_for(
        "release 1 to answer",
        Duration::from_secs(30),
        &webhook,
        || (traffic.ok("1") >= 10).then_some(()),
    )
    .await;

    let t0 = Instant::now();
    apply(&ledger(&ns.name, &database, "2", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let rollout_complete = t0.elapsed();
    let old_ok_during_rollout = traffic.ok("1");
    assert_eq!(
        legacy_column(&database),
        "1",
        "the expand step left the column"
    );
    wait_for(
        "the old pods to go",
        Duration::from_secs(60),
        &webhook,
        || (old_pods(&ns.name, "2") == 0).then_some(()),
    )
    .await;
    let old_pods_gone = t0.elapsed();
    let job = wait_for(
        "the contract Job to succeed",
        Duration::from_secs(180),
        &webhook,
        || {
            let jobs = contract_jobs(&ns.name);
            jobs.first()
                .filter(|j| job_condition(j, "Complete"))
                .cloned()
        },
    )
    .await;
    let applied = t0.elapsed();
    // Let release 2 serve a little after the drop.
    let before = traffic.ok("2");
    wait_for(
        "release 2 to answer after the contract",
        Duration::from_secs(30),
        &webhook,
        || (traffic.ok("2") >= before + 10).then_some(()),
    )
    .await;
    let seen = traffic.stop();

    let at = |field: &str| -> String { job["status"][field].as_str().unwrap_or("?").to_owned() };
    eprintln!(
        "column drop under defer: rollout complete {rollout_complete:.1?} after apply, old pods gone {old_pods_gone:.1?}, \
         Job {} created {} started {} completed {} (applied seen {applied:.1?})",
        job["metadata"]["name"].as_str().unwrap_or("?"),
        job["metadata"]["creationTimestamp"].as_str().unwrap_or("?"),
        at("startTime"),
        at("completionTime"),
    );
    eprintln!(
        "traffic: ok {:?}, failed {:?}, unreachable {}, release 1 ok during the rollout {old_ok_during_rollout}",
        seen.ok, seen.failed, seen.unreachable
    );
    assert!(
        seen.failed.is_empty(),
        "requests failed: {:?}; first: {:?}",
        seen.failed,
        seen.first_failure
    );
    assert!(seen.ok.get("1").copied().unwrap_or(0) >= 10, "{seen:?}");
    assert!(seen.ok.get("2").copied().unwrap_or(0) >= 10, "{seen:?}");
    assert_eq!(
        legacy_column(&database),
        "0",
        "the contract run dropped the column"
    );
    assert_eq!(ledger_0002(&database), "1", "the drop is recorded once");
    assert_eq!(contract_jobs(&ns.name).len(), 1, "one contract Job");
    let reasons: Vec<String> = deployment_events(&ns.name)
        .into_iter()
        .map(|e| e.0)
        .collect();
    for reason in ["ContractMigrationsPending", "ContractMigrationsApplied"] {
        assert!(reasons.iter().any(|r| r == reason), "{reasons:?}");
    }
    let metrics = webhook.metrics();
    assert!(
        metrics.contains(&format!(
            "django_migrate_contract_runs_total{{namespace=\"{}\",deployment=\"ledger\",result=\"applied\"}} 1",
            ns.name
        )),
        "{metrics}"
    );
    let (_, table) = status(&ns.name);
    eprintln!("$ django-migrate-webhook status -n {}\n{table}", ns.name);
    assert!(
        table.contains("contract:") && table.contains("applied"),
        "{table}"
    );
    // The controller does not run it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(contract_jobs(&ns.name).len(), 1);

    // A rollback to release 1, which reads the dropped column, is warned about.
    wait_for(
        "the contracted releases on the Deployment",
        Duration::from_secs(30),
        &webhook,
        || {
            let d = kubectl_ok(&["get", "deployment", "ledger", "-n", &ns.name, "-o", "json"]);
            let d: Value = serde_json::from_str(&d).unwrap();
            d["metadata"]["annotations"]["django-migrate.io/contracted-releases"]
                .as_str()
                .map(|_| ())
        },
    )
    .await;
    let undo = kubectl(
        &["rollout", "undo", "deployment/ledger", "-n", &ns.name],
        None,
    );
    let (_, stderr) = text(&undo);
    assert!(undo.status.success(), "{stderr}");
    assert!(
        stderr.contains("release from before an applied contract run"),
        "kubectl rollout undo printed: {stderr}"
    );
}

/// A deferred migration that fails in the contract run: the Job fails at once (the step's
/// verdict is final), the Deployment gets a Warning Event naming the migration, the gauge
/// behind the alert is 1, and `status` exits 1.
#[tokio::test]
async fn a_failing_contract_job_is_reported() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with("contract-fail", &["--contract-jobs"]).await;
    let manifest = django_deployment(
        &ns.name,
        "ledger",
        &database,
        2,
        &[("defer", "broken.0001_explode")],
        &[("BROKEN_MIGRATION", "1")],
    );
    apply(&manifest, &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let job = wait_for(
        "the contract Job to fail",
        Duration::from_secs(180),
        &webhook,
        || {
            contract_jobs(&ns.name)
                .into_iter()
                .find(|j| job_condition(j, "Failed"))
        },
    )
    .await;
    assert_eq!(job["status"]["failed"], 1, "not retried: {}", job["status"]);
    let events = wait_for(
        "the failure Event",
        Duration::from_secs(30),
        &webhook,
        || {
            deployment_events(&ns.name)
                .into_iter()
                .find(|(r, _)| r == "ContractMigrationsFailed")
        },
    )
    .await;
    assert!(events.1.contains("broken.0001_explode"), "{events:?}");
    let metrics = webhook.metrics();
    assert!(
        metrics.contains(&format!(
            "django_migrate_contract_failed{{namespace=\"{}\",deployment=\"ledger\"}} 1",
            ns.name
        )),
        "{metrics}"
    );
    let (code, table) = status(&ns.name);
    assert_eq!(code, Some(1), "{table}");
    assert!(table.contains("failed"), "{table}");
}

/// A rollout that starts while the contract waits for its delay: no Job for the release it
/// replaced; the new release's own contract runs once it is complete.
#[tokio::test]
async fn a_new_rollout_before_the_contract_replaces_it() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with("contract-new", &["--contract-jobs"]).await;
    let defer = [("unsafe-migrations", "defer"), ("contract-delay", "20")];
    apply(&ledger(&ns.name, &database, "1", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    apply(&ledger(&ns.name, &database, "2", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let first = contract_job_name(&ns.name).await;
    // Release 2 again with another setting: a new release before the delay ran out.
    apply(
        &ledger_with(&ns.name, &database, "2", &defer, &[("RELEASE_NOTE", "2b")]),
        &[],
    );
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let second = contract_job_name(&ns.name).await;
    assert_ne!(first, second);
    let job = wait_for(
        "the new release's contract Job",
        Duration::from_secs(120),
        &webhook,
        || {
            contract_jobs(&ns.name)
                .into_iter()
                .find(|j| job_condition(j, "Complete"))
        },
    )
    .await;
    assert_eq!(job["metadata"]["name"], second.as_str());
    assert_eq!(
        contract_jobs(&ns.name).len(),
        1,
        "no Job for the replaced release"
    );
    assert_eq!(legacy_column(&database), "0");
    assert_eq!(ledger_0002(&database), "1");
}

/// A migration that depends on a deferred one stops the first new pod's step before
/// anything is applied: the gate says why, the rollout stalls and release 1 keeps serving.
#[tokio::test]
async fn a_migration_after_a_deferred_one_stalls_the_rollout() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with("contract-dep", &["--contract-jobs"]).await;
    let defer = [("unsafe-migrations", "defer")];
    apply(&ledger(&ns.name, &database, "1", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    apply(
        &ledger_with(
            &ns.name,
            &database,
            "2",
            &defer,
            &[("LEDGER_MIGRATIONS", "dependent")],
        ),
        &[],
    );
    let client = client().await;
    let (_, message) =
        wait_for_gate(&client, &ns.name, "MigrationBlockedByDeferred", &webhook).await;
    assert!(
        message.contains("ledger.0003_entry_note")
            && message.contains("ledger.0002_remove_entry_legacy"),
        "{message}"
    );
    assert_eq!(
        psql(
            &database,
            "SELECT COUNT(*) FROM django_migrations WHERE app = 'ledger' \
             AND name IN ('0002_remove_entry_legacy', '0003_entry_note')"
        ),
        "0",
        "nothing of the plan applied"
    );
    assert_eq!(legacy_column(&database), "1");
    let d = get_deployment(&client, &ns.name, "ledger").await;
    assert_eq!(
        d["status"]["availableReplicas"], 3,
        "release 1 keeps serving"
    );
    assert!(contract_jobs(&ns.name).is_empty());
}

/// The first pod whose gate has `reason`: its status and message.
async fn wait_for_gate(
    client: &kube::Client,
    ns: &str,
    reason: &str,
    webhook: &Serve,
) -> (String, String) {
    let started = Instant::now();
    loop {
        for pod in pods_of(client, ns, "ledger").await {
            if let Some((status, r, message)) = gate(&pod)
                && r == reason
            {
                return (status, message);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no pod's gate says {reason}\nwebhook log:\n{}",
            webhook.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `django-migrate-webhook status -n NS`: its exit code and table.
fn status(ns: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["status", "-n", ns])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What `inject --contract-job -o FORMAT` prints for the ledger Deployment as stored.
fn printed_contract_job(ns: &str, format: &str) -> String {
    let stored = kubectl_ok(&["get", "deployment", "ledger", "-n", ns, "-o", "json"]);
    let out = std::process::Command::new(BIN)
        .args(["inject", "--contract-job", "-o", format, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(stored.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Job name `inject --contract-job` gives the Deployment as stored.
async fn contract_job_name(ns: &str) -> String {
    let job: Value = serde_json::from_str(&printed_contract_job(ns, "json")).unwrap();
    job["metadata"]["name"].as_str().unwrap().to_owned()
}

/// Contract Jobs off: the controller warns that deferred migrations are due and creates
/// nothing; the Job that `inject --contract-job` prints, applied by hand, contracts.
#[tokio::test]
async fn with_contract_jobs_off_the_printed_job_applies_the_deferred_migrations() {
    let _jobs = CONTRACT_JOBS.write().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with("contract-off", &[]).await;
    let defer = [("unsafe-migrations", "defer")];
    apply(&ledger(&ns.name, &database, "1", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    apply(&ledger(&ns.name, &database, "2", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let (_, note) = wait_for(
        "the pending Event",
        Duration::from_secs(60),
        &webhook,
        || {
            deployment_events(&ns.name).into_iter().find(|(r, n)| {
                r == "ContractMigrationsPending" && n.contains("contract Jobs are off")
            })
        },
    )
    .await;
    assert!(note.contains("ledger.0002_remove_entry_legacy"), "{note}");
    assert!(contract_jobs(&ns.name).is_empty());
    assert_eq!(legacy_column(&database), "1");
    // The Event may come from another test's controller (each watches the whole cluster):
    // this one's gauge follows once it has reconciled the Deployment too.
    let gauge = format!(
        "django_migrate_contract_pending_since_timestamp_seconds{{namespace=\"{}\"",
        ns.name
    );
    wait_for(
        "this controller's pending gauge",
        Duration::from_secs(60),
        &webhook,
        || webhook.metrics().contains(&gauge).then_some(()),
    )
    .await;

    apply(&printed_contract_job(&ns.name, "yaml"), &[]);
    wait_for(
        "the applied Job to succeed",
        Duration::from_secs(180),
        &webhook,
        || {
            contract_jobs(&ns.name)
                .first()
                .filter(|j| job_condition(j, "Complete"))
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(legacy_column(&database), "0");
    assert_eq!(ledger_0002(&database), "1");
}

/// With the code as an image volume (containerd 2.x): the contract Job the controller
/// creates mounts the same volume, runs no copy, and drops the column once.
#[tokio::test]
async fn the_contract_job_mounts_the_code_image_volume() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let (ns, webhook, database) = setup_with(
        "contract-volume",
        &["--contract-jobs", "--code-delivery", "imageVolume"],
    )
    .await;
    let defer = [("unsafe-migrations", "defer")];
    apply(&ledger(&ns.name, &database, "1", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    apply(&ledger(&ns.name, &database, "2", &defer), &[]);
    rollout_completes(&ns.name, "ledger", "240s", &webhook);
    let job = wait_for(
        "the contract Job to succeed",
        Duration::from_secs(180),
        &webhook,
        || {
            contract_jobs(&ns.name)
                .into_iter()
                .find(|j| job_condition(j, "Complete"))
        },
    )
    .await;
    let spec = &job["spec"]["template"]["spec"];
    assert!(
        spec["initContainers"].as_array().is_none_or(Vec::is_empty),
        "{spec}"
    );
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == django_migrate_webhook::names::CODE_VOLUME)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        volume["image"]["reference"],
        webhook_image().as_str(),
        "{spec}"
    );
    assert_eq!(legacy_column(&database), "0");
    assert_eq!(ledger_0002(&database), "1");
    assert_eq!(contract_jobs(&ns.name).len(), 1);
}

/// The column drop in an Argo Rollouts canary: while the canary step holds both releases
/// serving, there is no contract Job and the column stays; once the Rollout is fully
/// promoted and release 1's pods are gone, one Job drops it. No request of either release
/// fails.
#[tokio::test]
async fn an_argo_canary_is_contracted_only_once_fully_promoted() {
    let _jobs = CONTRACT_JOBS.read().await;
    let _db = DATABASE.read().await;
    let argo = super::workloads::ArgoRollouts::start().await;
    let (ns, webhook, database) = setup_with("argo", &["--contract-jobs", "--argo-rollouts"]).await;
    let n = ns.name.clone();
    let defer = [("unsafe-migrations", "defer")];
    let rollout = |release: &str| {
        let d: Value = serde_yaml_ng::from_str(&ledger(&n, &database, release, &defer)).unwrap();
        serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": d["metadata"],
            "spec": {"replicas": 2, "selector": d["spec"]["selector"], "template": d["spec"]["template"],
                     "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "20s"}}]}}},
        })
        .to_string()
    };
    let status = || -> Value {
        let out = kubectl_ok(&[
            "get",
            "rollouts.argoproj.io",
            "ledger",
            "-n",
            &n,
            "-o",
            "json",
        ]);
        serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
    };
    let promoted = |s: &Value| {
        s["phase"] == "Healthy"
            && s["stableRS"] == s["currentPodHash"]
            && s["availableReplicas"] == 2
    };
    apply(&rollout("1"), &[]);
    wait_for(
        "release 1 Healthy",
        Duration::from_secs(240),
        &webhook,
        || promoted(&status()).then_some(()),
    )
    .await;
    psql(
        &database,
        "INSERT INTO ledger_entry (code, legacy) VALUES ('a', 'x'), ('b', 'y')",
    );
    let traffic = Traffic::start(&n);
    wait_for(
        "release 1 to answer",
        Duration::from_secs(30),
        &webhook,
        || (traffic.ok("1") >= 10).then_some(()),
    )
    .await;

    let t0 = Instant::now();
    apply(&rollout("2"), &[]);
    wait_for(
        "the canary step",
        Duration::from_secs(240),
        &webhook,
        || {
            let s = status();
            (s["phase"] == "Paused" && s["stableRS"] != s["currentPodHash"]).then_some(())
        },
    )
    .await;
    wait_for(
        "both releases to answer",
        Duration::from_secs(60),
        &webhook,
        || (traffic.ok("2") >= 5 && traffic.ok("1") >= 20).then_some(()),
    )
    .await;
    assert!(
        contract_jobs(&n).is_empty(),
        "a contract Job while the canary serves both releases"
    );
    assert_eq!(
        legacy_column(&database),
        "1",
        "the column is gone during the canary"
    );
    wait_for("full promotion", Duration::from_secs(240), &webhook, || {
        promoted(&status()).then_some(())
    })
    .await;
    let promoted_after = t0.elapsed();
    let job = wait_for(
        "the contract Job to apply the drop",
        Duration::from_secs(240),
        &webhook,
        || {
            contract_jobs(&n)
                .into_iter()
                .find(|j| j["status"]["succeeded"] == 1)
        },
    )
    .await;
    let contracted_after = t0.elapsed();
    let seen = traffic.stop();
    assert!(
        job["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("ledger-rollout-contract-"),
        "{}",
        job["metadata"]
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "Rollout");
    assert_eq!(contract_jobs(&n).len(), 1);
    assert_eq!(legacy_column(&database), "0");
    assert_eq!(ledger_0002(&database), "1");
    assert!(
        seen.failed.is_empty() && seen.first_failure.is_none(),
        "{seen:?}\nArgo Rollouts' log:\n{}",
        argo.log()
    );
    eprintln!(
        "argo canary: fully promoted {promoted_after:.1?} after release 2 was applied, contract Job done at {contracted_after:.1?}; requests answered: {:?}, none failed",
        seen.ok
    );
}
