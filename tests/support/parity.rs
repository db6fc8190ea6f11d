//! Parity of the two modes: the same workload (Deployment, StatefulSet, Job, CronJob,
//! Argo Rollout) applied through the webhook in one namespace and through the admission
//! policies of `policy` mode in another, then compared as a user would see it: what the
//! API server stored, the warnings kubectl printed, and the denial.

use std::time::Duration;

use django_migrate_webhook::names;
use serde_json::{Value, json};

use super::kube::{Namespace, apply, deployment, init_names, kubectl, register, text};
use super::review::template_pointer;
use super::serve::{Serve, eventually};

/// The binary's `policy` output, bound to one namespace.
pub struct Policies {
    pub name: String,
}

impl Policies {
    /// Applies the policies of `django-migrate-webhook policy --code-delivery DELIVERY`,
    /// their bindings limited to namespace `ns`, and waits until they are in effect.
    pub async fn apply(ns: &Namespace, delivery: &str) -> Policies {
        let name = format!("parity-{}", ns.name);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_django-migrate-webhook"))
            .args(["policy", "-o", "json", "--name", &name])
            .args(["--code-delivery", delivery])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut list: Value = serde_json::from_slice(&out.stdout).unwrap();
        for item in list["items"].as_array_mut().unwrap() {
            if item["kind"].as_str().unwrap().ends_with("Binding") {
                item["spec"]["matchResources"]["namespaceSelector"] =
                    json!({"matchLabels": {"django-migrate-test": ns.name}});
            }
        }
        let out = kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        assert!(
            out.status.success(),
            "cannot create the admission policies (admissionregistration.k8s.io/v1 is served \
             from Kubernetes 1.36): {}",
            text(&out).1
        );
        let policies = Policies { name };
        wait_until_effective(ns).await;
        policies
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        for kind in [
            "mutatingadmissionpolicybinding",
            "mutatingadmissionpolicy",
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let names = match kind.starts_with("mutating") {
                true => vec![self.name.clone()],
                false => vec![
                    format!("{}-settings", self.name),
                    format!("{}-warnings", self.name),
                ],
            };
            for name in names {
                let _ = kubectl(&["delete", kind, &name, "--ignore-not-found"], None);
            }
        }
    }
}

/// Waits until a dry run of a labelled Deployment comes back injected and warned about,
/// and one with a bad setting is denied: each kind of policy is loaded on its own.
async fn wait_until_effective(ns: &Namespace) {
    let probe = deployment(&ns.name, "probe", "shop:1", true, &[]);
    let bad = deployment(
        &ns.name,
        "probe",
        "shop:1",
        true,
        &[("django-migrate.io/mode", "fast")],
    );
    eventually(
        "the admission policies to take effect",
        Duration::from_secs(60),
        || async {
            let out = kubectl(
                &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&probe),
            );
            let stored: Value = serde_json::from_slice(&out.stdout).ok()?;
            let warned = text(&out)
                .1
                .contains("django-migrate: injected init container");
            let denied = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&bad));
            let injected = init_names(&stored)
                .iter()
                .any(|n| n == names::MIGRATE_CONTAINER);
            (injected && warned && !denied.status.success()).then_some(())
        },
    )
    .await;
}

/// The two namespaces and the two admission paths.
pub struct Parity {
    pub webhook_ns: Namespace,
    pub policy_ns: Namespace,
    _webhook: Serve,
    _policies: Policies,
    /// Deployments the API server itself refuses, where the two paths say different things.
    pub differences: std::cell::RefCell<Vec<String>>,
}

/// What a user sees of one `kubectl apply`.
#[derive(Debug, PartialEq)]
pub struct Seen {
    /// The denial or error, from `django-migrate: ` on when it is ours.
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// Labels, annotations (without kubectl's own) and pod template as stored.
    pub stored: Option<Value>,
}

impl Parity {
    /// Both paths with the code copied (`copy`) or as an image volume (`imageVolume`).
    pub async fn start(prefix: &str, delivery: &str) -> Parity {
        let webhook_ns = Namespace::new(&format!("{prefix}-webhook"));
        let policy_ns = Namespace::new(&format!("{prefix}-policy"));
        let webhook = Serve::start(&["--code-delivery", delivery]).await;
        register(&webhook_ns, &webhook, "Fail");
        super::kube::wait_until_effective(&webhook_ns).await;
        let policies = Policies::apply(&policy_ns, delivery).await;
        Parity {
            webhook_ns,
            policy_ns,
            _webhook: webhook,
            _policies: policies,
            differences: std::cell::RefCell::default(),
        }
    }

    /// Applies `manifest` (a workload, any namespace) in both namespaces, then a
    /// metadata-only update, an image update and an opt-out, and asserts that each step
    /// looks the same through both. Returns how many steps were compared.
    pub fn check(&self, case: &str, manifest: &Value) -> usize {
        let mut d = manifest.clone();
        prepare(&mut d, case);
        let mut steps = 0;
        let created = self.compare(case, "create", &d);
        steps += 1;
        let opted_in = d["metadata"]["labels"]["django-migrate.io/inject"] == "true";
        let has_template = d.pointer(template_pointer(&d)).is_some();
        if created.error.is_some() || !opted_in || !has_template {
            return steps;
        }
        let template = created.stored.as_ref().unwrap()["template"].clone();
        let pointer = template_pointer(&d);
        let carried = d
            .pointer(&format!("{pointer}/spec/initContainers"))
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c["name"]
                        .as_str()
                        .is_some_and(|n| names::RESERVED_CONTAINERS.contains(&n))
                })
            });
        if d["kind"] == "Job" && carried {
            // A manifest that carries an injection of its own: `kubectl apply` would set the
            // Job's (immutable) template back to it, which the API server refuses.
            return steps;
        }

        d["metadata"]["annotations"]["parity.example/touched"] = json!("yes");
        let touched = self.compare(case, "metadata-only update", &d);
        let Some(stored) = touched.stored.as_ref() else {
            panic!("{case}: a metadata-only update was refused: {touched:?}");
        };
        assert_eq!(
            stored["template"], template,
            "{case}: a metadata-only update changed the pod template"
        );
        if d["kind"] == "Job" {
            if d["metadata"]["ownerReferences"].is_array() {
                return steps + 1; // left alone: its template is its CronJob's
            }
            // A Job's pod template cannot change: its opt-out keeps the injection.
            d["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove("django-migrate.io/inject");
            let out = self.compare(case, "opt-out", &d);
            assert_eq!(
                out.stored.as_ref().unwrap()["template"],
                template,
                "{case}: a Job's opt-out leaves its template"
            );
            assert!(
                out.warnings.iter().any(|w| w.contains("cannot change")),
                "{case}: {:?}",
                out.warnings
            );
            return steps + 2;
        }
        for c in d
            .pointer_mut(&format!("{pointer}/spec/containers"))
            .and_then(Value::as_array_mut)
            .unwrap()
        {
            c["image"] = json!("registry.invalid/parity/next:2");
        }
        let updated = self.compare(case, "image update", &d);
        let init = &updated.stored.as_ref().unwrap()["template"]["spec"]["initContainers"];
        assert!(
            init.as_array()
                .unwrap()
                .iter()
                .any(|c| c["image"] == "registry.invalid/parity/next:2"),
            "{case}: the step follows the app's image: {init}"
        );
        d["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("django-migrate.io/inject");
        let out = self.compare(case, "opt-out", &d);
        let stored = out.stored.unwrap();
        assert!(
            !stored.to_string().contains("django-migrate-code"),
            "{case}: an opt-out removes the injection: {stored}"
        );
        steps + 3
    }

    /// One step through both paths; they must agree.
    fn compare(&self, case: &str, step: &str, d: &Value) -> Seen {
        let webhook = see(&self.webhook_ns.name, d);
        let policy = see(&self.policy_ns.name, d);
        // The API server's own validation runs after the mutation and before validating
        // policies: a Deployment it refuses gets the webhook's warnings, or its denial,
        // never a policy's. Both must refuse it; what each said is kept as a difference.
        let api_refused = |s: &Seen| {
            s.error
                .as_ref()
                .is_some_and(|e| !e.starts_with("django-migrate: "))
        };
        if api_refused(&webhook) || api_refused(&policy) {
            assert!(
                webhook.error.is_some() && policy.error.is_some(),
                "{case}, {step}: refused by one path only: {webhook:?} / {policy:?}"
            );
            if webhook != policy {
                self.differences.borrow_mut().push(format!(
                    "{case}, {step}: the webhook: {:?} {:?}; the policy: {:?}",
                    webhook.error, webhook.warnings, policy.error
                ));
            }
            return webhook;
        }
        assert_eq!(
            (&webhook.error, &webhook.warnings),
            (&policy.error, &policy.warnings),
            "{case}, {step}: the webhook (left) and the policy (right) answer differently"
        );
        let stored = |s: &Seen| s.stored.clone().unwrap_or_default();
        let diff = json_patch::diff(&stored(&webhook), &stored(&policy));
        assert!(
            diff.0.is_empty(),
            "{case}, {step}: the policy stores a different object; the patch from the webhook's: {}",
            serde_json::to_string_pretty(&diff).unwrap()
        );
        webhook
    }
}

/// Names the case, makes it a workload the API server accepts, and keeps its pods off any
/// real node: this tier has no kubelet.
fn prepare(d: &mut Value, case: &str) {
    let name: String = case
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let kind = d["kind"].as_str().unwrap_or("Deployment").to_owned();
    let meta = d["metadata"].as_object_mut().unwrap();
    for key in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "namespace",
    ] {
        meta.remove(key);
    }
    meta.insert("name".into(), json!(name.trim_matches('-')));
    if !meta.contains_key("annotations") {
        meta.insert("annotations".into(), json!({}));
    }
    if let Some(o) = d.as_object_mut() {
        o.remove("status");
    }
    let pointer = template_pointer(d);
    let Some(template) = d.pointer_mut(pointer) else {
        return; // a Rollout with a workloadRef
    };
    if kind_runs_to_completion(&kind) {
        // The Job controller's labels name the Job's UID: the API server sets them (and
        // the selector) on create; a fixture's would select nothing.
        if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
            labels.retain(|k, _| !JOB_LABELS.contains(&k.as_str()));
        }
        template["spec"]["restartPolicy"] = json!("Never");
        template["spec"]["nodeSelector"] = json!({"e2e.invalid/no-such-node": "true"});
        return;
    }
    // A fixture made for the engine alone may lack what the API server requires.
    if d["spec"]["selector"].is_null() {
        d["spec"]["selector"] =
            json!({"matchLabels": {"parity.example/case": name.trim_matches('-')}});
    }
    let selected = d["spec"]["selector"]["matchLabels"].clone();
    for (k, v) in selected.as_object().into_iter().flatten() {
        d["spec"]["template"]["metadata"]["labels"][k] = v.clone();
    }
    if d["spec"]["template"]["spec"].is_object() {
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"e2e.invalid/no-such-node": "true"});
    }
}

/// The labels the Job controller gives a Job's pod template and selector.
const JOB_LABELS: [&str; 4] = [
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
];

fn kind_runs_to_completion(kind: &str) -> bool {
    kind == "Job" || kind == "CronJob"
}

fn see(ns: &str, d: &Value) -> Seen {
    let mut d = d.clone();
    d["metadata"]["namespace"] = json!(ns);
    own_by_cronjob(ns, &mut d);
    let out = kubectl(&["apply", "-f", "-"], Some(&d.to_string()));
    let (_, stderr) = text(&out);
    let mut warnings = Vec::new();
    let mut error = None;
    for line in stderr.lines() {
        if let Some(w) = line.strip_prefix("Warning: ") {
            warnings.push(strip_policy_prefix(w).to_owned());
        } else if !line.trim().is_empty() {
            let ours = line.find("django-migrate: ").map(|i| &line[i..]);
            error = Some(ours.unwrap_or(line).replace(ns, "NS"));
        }
    }
    if !out.status.success() {
        assert!(
            error.is_some(),
            "kubectl failed without a message: {stderr}"
        );
        return Seen {
            error,
            warnings,
            stored: None,
        };
    }
    let name = d["metadata"]["name"].as_str().unwrap();
    let kind = d["kind"].as_str().unwrap_or("Deployment");
    let resource = match d["apiVersion"].as_str() {
        Some(v) if v.contains('/') => {
            format!("{}.{}", kind.to_lowercase(), v.split('/').next().unwrap())
        }
        _ => kind.to_lowercase(),
    };
    let get = kubectl(&["get", &resource, name, "-n", ns, "-o", "json"], None);
    assert!(get.status.success(), "{}", text(&get).1);
    let stored: Value = serde_json::from_slice(&get.stdout).unwrap();
    let mut template = stored
        .pointer(template_pointer(&stored))
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.retain(|k, _| !JOB_LABELS.contains(&k.as_str()));
    }
    let mut annotations = stored["metadata"]["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        a.remove("deployment.kubernetes.io/revision");
    }
    Seen {
        error,
        warnings,
        stored: Some(json!({
            "labels": stored["metadata"]["labels"],
            "annotations": annotations,
            "template": template,
        })),
    }
}

/// A Job owned by a CronJob gets a real (suspended, unlabelled) owner in `ns`: the garbage
/// collector deletes a Job whose owner does not exist.
fn own_by_cronjob(ns: &str, d: &mut Value) {
    let Some(owner) = d["metadata"]["ownerReferences"]
        .as_array_mut()
        .and_then(|o| o.iter_mut().find(|o| o["kind"] == "CronJob"))
    else {
        return;
    };
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": owner["name"], "namespace": ns},
        "spec": {"schedule": "0 0 1 1 *", "suspend": true, "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "registry.invalid/x:1"}]}}}}},
    });
    let out = kubectl(
        &["apply", "-o", "json", "-f", "-"],
        Some(&cronjob.to_string()),
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    owner["uid"] = created["metadata"]["uid"].clone();
}

/// A policy's warning without the API server's "Validation failed for
/// ValidatingAdmissionPolicy 'x' with binding 'y': ".
fn strip_policy_prefix(w: &str) -> &str {
    match w.strip_prefix("Validation failed for ValidatingAdmissionPolicy '") {
        Some(rest) => rest.split_once("': ").map_or(w, |(_, m)| m),
        None => w,
    }
}
