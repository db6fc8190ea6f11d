//! StatefulSets, Jobs, CronJobs and Argo Rollouts through the webhook and the controller:
//! applied labelled and unlabelled, updated, opted out; their pods gated (or, for Jobs,
//! given the condition) and counted under their workload.

use super::*;

/// A workload of `kind` around one Django container; `extra` is merged into its spec.
pub(super) fn workload(kind: &str, ns: &str, name: &str, image: &str, labelled: bool) -> Value {
    let mut labels = json!({"app": name});
    if labelled {
        labels["django-migrate.io/inject"] = json!("true");
    }
    let pod = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {
            // This tier plays the kubelet: its pods stay off the real node of the node tier.
            "nodeSelector": {"e2e.invalid/no-such-node": "true"},
            "containers": [{"name": "web", "image": image,
                            "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "shop.settings"}]}],
        },
    });
    let mut job_pod = pod.clone();
    job_pod["spec"]["restartPolicy"] = json!("Never");
    job_pod.as_object_mut().unwrap().remove("metadata");
    let (api_version, spec) = match kind {
        "StatefulSet" => (
            "apps/v1",
            json!({"replicas": 1, "serviceName": name,
                   "selector": {"matchLabels": {"app": name}}, "template": pod}),
        ),
        "Job" => ("batch/v1", json!({"backoffLimit": 0, "template": job_pod})),
        "CronJob" => (
            "batch/v1",
            json!({"schedule": "0 3 * * *", "suspend": true,
                   "jobTemplate": {"spec": {"backoffLimit": 0, "template": job_pod}}}),
        ),
        "Rollout" => (
            "argoproj.io/v1alpha1",
            json!({"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": pod,
                   "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}}),
        ),
        _ => unreachable!("{kind}"),
    };
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    })
}

fn pointer(kind: &str) -> &'static str {
    if kind == "CronJob" {
        "/spec/jobTemplate/spec/template"
    } else {
        "/spec/template"
    }
}

/// `kubectl apply` of a JSON manifest; the warnings kubectl printed.
pub(super) fn apply_json(manifest: &Value) -> String {
    apply(&manifest.to_string(), &[]).1
}

pub(super) fn get(kind: &str, ns: &str, name: &str) -> Value {
    let resource = match kind {
        "Rollout" => "rollouts.argoproj.io".to_owned(),
        _ => kind.to_lowercase(),
    };
    let out = kubectl(&["get", &resource, name, "-n", ns, "-o", "json"], None);
    assert!(out.status.success(), "{}", text(&out).1);
    serde_json::from_slice(&out.stdout).unwrap()
}

pub(super) fn template(kind: &str, stored: &Value) -> Value {
    stored.pointer(pointer(kind)).cloned().unwrap()
}

pub(super) fn init_of(template: &Value) -> Vec<String> {
    template["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn release_field(template: &Value) -> String {
    let step = &template["spec"]["initContainers"][1];
    step["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DJANGO_MIGRATE_RELEASE")
        .map(|e| {
            e["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap()
}

fn gated(template: &Value) -> bool {
    template["spec"]["readinessGates"]
        .as_array()
        .is_some_and(|g| {
            g.iter()
                .any(|g| g["conditionType"] == "django-migrate.io/migrated")
        })
}

/// Each kind, labelled and not: what is stored, what a metadata-only update, an image
/// update and an opt-out do, as `kubectl apply` shows them.
#[tokio::test]
async fn statefulsets_jobs_cronjobs_and_rollouts_are_injected_updated_and_opted_out() {
    install_rollout_crd();
    let ns = Namespace::new("e2e-workloads");
    let webhook = Serve::start::<&str>(&[]).await;
    register(&ns, &webhook, "Fail");
    wait_until_effective(&ns).await;
    let n = ns.name.as_str();

    let expected = [
        (
            "StatefulSet",
            "django-migrate",
            true,
            "metadata.labels['controller-revision-hash']",
        ),
        (
            "Job",
            "django-wait-for-migrations",
            false,
            "metadata.labels['batch.kubernetes.io/controller-uid']",
        ),
        (
            "CronJob",
            "django-wait-for-migrations",
            false,
            "metadata.labels['batch.kubernetes.io/controller-uid']",
        ),
        (
            "Rollout",
            "django-migrate",
            true,
            "metadata.labels['rollouts-pod-template-hash']",
        ),
    ];
    for (kind, step, gate, release) in expected {
        let name = kind.to_lowercase();
        let warnings = apply_json(&workload(kind, n, &name, "shop:1", true));
        let stored = template(kind, &get(kind, n, &name));
        assert_eq!(
            init_of(&stored),
            ["django-migrate-code", step],
            "{kind}: {stored}"
        );
        assert_eq!(gated(&stored), gate, "{kind}: {stored}");
        assert_eq!(release_field(&stored), release, "{kind}");
        assert_eq!(
            stored["metadata"]["labels"]["django-migrate.io/injected"],
            "true"
        );
        if gate {
            assert!(
                warnings.contains("readiness gate django-migrate.io/migrated"),
                "{warnings}"
            );
        } else {
            assert!(
                warnings.contains(&format!(
                    "no readiness gate (a {kind}'s pods serve no traffic)"
                )),
                "{warnings}"
            );
        }
        let plain = format!("plain-{name}");
        apply_json(&workload(kind, n, &plain, "shop:1", false));
        assert!(
            init_of(&template(kind, &get(kind, n, &plain))).is_empty(),
            "{kind}"
        );
    }

    // A StatefulSet: a metadata-only update makes no new revision; an image update makes
    // the step follow the app.
    let revisions = || {
        let out = kubectl(&["get", "controllerrevisions", "-n", n, "-o", "json"], None);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["metadata"]["ownerReferences"][0]["name"] == "statefulset")
            .count()
    };
    let before = revisions();
    let mut sts = workload("StatefulSet", n, "statefulset", "shop:1", true);
    sts["metadata"]["annotations"] = json!({"team": "payments"});
    apply_json(&sts);
    assert_eq!(
        revisions(),
        before,
        "a metadata-only update made a new revision"
    );
    for kind in ["StatefulSet", "CronJob", "Rollout"] {
        let name = kind.to_lowercase();
        apply_json(&workload(kind, n, &name, "shop:2", true));
        let stored = template(kind, &get(kind, n, &name));
        assert_eq!(
            stored["spec"]["initContainers"][1]["image"], "shop:2",
            "{kind}"
        );
    }

    // A CronJob's Job (`kubectl create job --from`) is its template as the CronJob has it,
    // even when the label is on the job template too: the webhook leaves it alone.
    let mut cron = workload("CronJob", n, "nightly", "shop:1", true);
    cron["metadata"]["annotations"] = json!({"django-migrate.io/mode": "migrate"});
    cron["spec"]["jobTemplate"]["metadata"] =
        json!({"labels": {"django-migrate.io/inject": "true"}});
    apply_json(&cron);
    let made = kubectl(
        &[
            "create",
            "job",
            "--from=cronjob/nightly",
            "nightly-by-hand",
            "-n",
            n,
        ],
        None,
    );
    assert!(made.status.success(), "{}", text(&made).1);
    let job = get("Job", n, "nightly-by-hand");
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["controller"]),
        (&json!("CronJob"), &json!(true))
    );
    let mut from_cron = template("CronJob", &get("CronJob", n, "nightly"));
    let mut of_job = template("Job", &job);
    for t in [&mut from_cron, &mut of_job] {
        let labels = t["metadata"]["labels"].as_object_mut().unwrap();
        labels.retain(|k, _| !k.contains("controller-uid") && !k.contains("job-name"));
    }
    assert_eq!(of_job, from_cron, "the Job's template is its CronJob's");
    assert_eq!(
        of_job["metadata"]["labels"]["django-migrate.io/cronjob"],
        "nightly"
    );

    // Opt-outs: everything removed, but from a Job, whose template cannot change.
    for kind in ["StatefulSet", "CronJob", "Rollout", "Job"] {
        let name = kind.to_lowercase();
        let image = if kind == "Job" { "shop:1" } else { "shop:2" };
        let warnings = apply_json(&workload(kind, n, &name, image, false));
        let stored = template(kind, &get(kind, n, &name));
        if kind == "Job" {
            assert_eq!(
                init_of(&stored),
                ["django-migrate-code", "django-wait-for-migrations"]
            );
            assert!(
                warnings.contains("a Job's pod template cannot change"),
                "{warnings}"
            );
        } else {
            assert!(init_of(&stored).is_empty(), "{kind}: {stored}");
            assert!(!gated(&stored), "{kind}");
            assert!(
                !stored.to_string().contains("django-migrate.io/"),
                "{kind}: {stored}"
            );
            assert!(
                warnings.contains("label django-migrate.io/inject removed"),
                "{warnings}"
            );
        }
    }

    // A Rollout that takes its template from a Deployment is explained, not changed.
    let mut by_ref = workload("Rollout", n, "by-ref", "shop:1", true);
    let spec = by_ref["spec"].as_object_mut().unwrap();
    spec.remove("template");
    spec.insert(
        "workloadRef".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}),
    );
    let warnings = apply_json(&by_ref);
    assert!(
        warnings
            .contains("takes its pod template from Deployment \"web\" (workloadRef): not injected"),
        "{warnings}"
    );
    assert!(
        get("Rollout", n, "by-ref")["spec"]
            .get("template")
            .is_none()
    );
}

/// The controller: a StatefulSet's pod is gated, its Event goes on the StatefulSet, and a
/// CronJob's pod (no gate) gets the condition; the metrics name each by kind.
#[tokio::test]
async fn the_controller_gates_statefulset_pods_and_counts_cronjob_pods_by_their_workload() {
    let client = client().await;
    let ns = Namespace::new("e2e-kinds");
    let controller = Serve::start(&[
        "--controller",
        "--lease-namespace",
        &ns.name,
        "--identity",
        "kinds",
    ])
    .await;
    register(&ns, &controller, "Fail");
    wait_until_effective(&ns).await;
    let n = ns.name.as_str();
    let applied = "applied 1 migration in 3.1s (waited 0.0s for the lock): catalog.0001_initial";
    let done = summary(0, "done", "applied", applied, &["catalog.0001_initial"]);

    apply_json(&workload("StatefulSet", n, "web", "shop:1", true));
    let pod = pods(&client, n, "web", 1).await.remove(0);
    assert_eq!(pod.name_any(), "web-0");
    gate_of(&client, &pod, "False", "MigrationStepPending").await;
    play_kubelet(&client, &pod, 0, &done).await;
    assert_eq!(gate_of(&client, &pod, "True", "Migrated").await, applied);
    let on_statefulset = eventually("an Event on the StatefulSet", WAIT, || async {
        let e = events(&client, n, "web").await;
        e.iter().any(|(r, _)| r == "MigrationsApplied").then_some(e)
    })
    .await;
    assert!(
        on_statefulset.iter().any(|(_, m)| m.contains("pod web-0")),
        "{on_statefulset:?}"
    );

    let mut cron = workload("CronJob", n, "nightly", "shop:1", true);
    cron["metadata"]["annotations"] = json!({"django-migrate.io/mode": "migrate"});
    apply_json(&cron);
    let made = kubectl(
        &[
            "create",
            "job",
            "--from=cronjob/nightly",
            "nightly-1",
            "-n",
            n,
        ],
        None,
    );
    assert!(made.status.success(), "{}", text(&made).1);
    let job_pod = eventually("the Job's pod", WAIT, || async {
        let api: Api<Pod> = Api::namespaced(client.clone(), n);
        let list = api
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=nightly-1"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    assert!(job_pod.spec.as_ref().unwrap().readiness_gates.is_none());
    play_kubelet(&client, &job_pod, 0, &done).await;
    assert_eq!(
        gate_of(&client, &job_pod, "True", "Migrated").await,
        applied
    );

    let ns_label = format!("namespace=\"{n}\"");
    let wanted = [
        format!(
            "django_migrate_controller_pods{{{ns_label},deployment=\"web\",kind=\"StatefulSet\",reason=\"Migrated\"}} 1"
        ),
        format!(
            "django_migrate_controller_pods{{{ns_label},deployment=\"nightly\",kind=\"CronJob\",reason=\"Migrated\"}} 1"
        ),
    ];
    // Other tests' controllers watch every namespace too and may set a condition first:
    // this one counts what it saw either way.
    let metrics = eventually("the pods counted by workload", WAIT, || async {
        let m = controller.metrics();
        wanted
            .iter()
            .all(|w| m.lines().any(|l| l == w))
            .then_some(m)
    })
    .await;
    assert!(
        !metrics.contains(&format!("{ns_label},deployment=\"\"")),
        "a pod without its workload: {metrics}"
    );

    // `status` lists both kinds with their pods' steps, and reads one by `kind/name`.
    let status = |args: &[&str]| {
        let out = Command::new(BIN).arg("status").args(args).output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, table, stderr) = status(&["-n", n]);
    eprintln!("$ django-migrate-webhook status -n {n}\n{table}");
    assert_eq!(code, Some(0), "{stderr}");
    for expected in [
        "cronjob/nightly",
        "statefulset/web",
        "pod web-0: applied 1 migrations (catalog.0001_initial)",
        "pod nightly-1-",
    ] {
        assert!(table.contains(expected), "missing {expected:?} in\n{table}");
    }
    let (code, json_out, stderr) = status(&["statefulset/web", "-n", n, "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let one: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    assert_eq!(
        (&one[0]["kind"], &one[0]["name"]),
        (&json!("StatefulSet"), &json!("web"))
    );
    assert_eq!(one[0]["pods"][0]["name"], "web-0");
    let (code, _, stderr) = status(&["daemonset/web", "-n", n]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("allowed: deployment, statefulset, job, cronjob, rollout"),
        "{stderr}"
    );
}
