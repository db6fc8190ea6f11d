//! What the step's one-off Jobs share (the contract run's, `contract_job`, and a plan's,
//! `plan_job`): a pod built from an injected Deployment's pod template without the app.
//!
//! Its pod keeps the same service account, pull secrets, volumes, scheduling and pod
//! annotations (an agent injector that brings the database credentials reads those), the
//! user's own init containers (a native sidecar the database is reached through runs
//! beside the step), the code copy or the code image volume, and has the step as the only container. It carries
//! none of the template's labels, so no Service selects it and no ReplicaSet adopts it.

use serde_json::{Value, json};
use thiserror::Error;

use crate::names::{
    CODE_CONTAINER, CODE_VOLUME, INJECTED_LABEL, MIGRATE_CONTAINER, WAIT_CONTAINER,
};
use crate::workload::{JsonMap, Kind};

/// Longest Job name: the Job controller puts it into a label of its pods.
const MAX_NAME: usize = 63;

/// Why a Deployment gives no step to run in a Job.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum NoStep {
    #[error("it carries no injected migration step (not opted in, or stored without the webhook)")]
    NotInjected,
    #[error("it has no name")]
    NoName,
}

/// An injected Deployment's step, and what its Job keeps of the pod template.
#[derive(Debug)]
pub struct InjectedStep<'a> {
    /// The Deployment's name.
    pub deployment: &'a str,
    /// The Deployment's namespace, when the object names one (a manifest may not).
    pub namespace: Option<&'a Value>,
    /// The step as injected, in `migrate` or `wait` mode.
    pub step: JsonMap,
    template: &'a Value,
    /// The user's init containers (native sidecars too) and the code copy (if any), in order.
    init: Vec<Value>,
}

impl InjectedStep<'_> {
    /// The step of an injected workload (as JSON), in either mode. An earlier
    /// release's injection (no code copy) has none until it is applied again.
    pub fn of(deployment: &Value) -> Result<InjectedStep<'_>, NoStep> {
        let name = deployment
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or(NoStep::NoName)?;
        let template = deployment
            .pointer(Kind::of_object(deployment).template_pointer())
            .ok_or(NoStep::NotInjected)?;
        let injected = template
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .is_some_and(|l| l.contains_key(INJECTED_LABEL));
        let containers = template
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let named = |c: &Value, n: &str| c.get("name").and_then(Value::as_str) == Some(n);
        let is_step = |c: &Value| named(c, MIGRATE_CONTAINER) || named(c, WAIT_CONTAINER);
        // The program comes from the code copy, or from the code image volume.
        let delivered = containers.iter().any(|c| named(c, CODE_CONTAINER))
            || template
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .is_some_and(|v| {
                    v.iter()
                        .any(|v| named(v, CODE_VOLUME) && v.get("image").is_some())
                });
        let step = containers
            .iter()
            .find(|c| is_step(c))
            .and_then(Value::as_object)
            .filter(|_| injected && delivered)
            .ok_or(NoStep::NotInjected)?;
        Ok(InjectedStep {
            deployment: name,
            namespace: deployment.pointer("/metadata/namespace"),
            step: step.clone(),
            template,
            init: containers.iter().filter(|c| !is_step(c)).cloned().collect(),
        })
    }

    /// True when the step only waits for other pods' migrations
    /// (`django-migrate.io/mode: wait`).
    pub fn waits(&self) -> bool {
        self.step.get("name").and_then(Value::as_str) == Some(WAIT_CONTAINER)
    }

    /// The pod template of a Job that runs `step` (this step, changed by the caller) as its
    /// only container, once, with `labels` only.
    pub fn pod_template(&self, step: JsonMap, labels: &Value) -> Value {
        let mut spec = self
            .template
            .get("spec")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for field in ["readinessGates", "hostname", "subdomain"] {
            spec.remove(field);
        }
        // A StatefulSet's pods mount the claims of its volumeClaimTemplates, which are not
        // volumes of the template: the Job, which cannot share them, goes without.
        let declared: Vec<Value> = spec
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").cloned())
            .collect();
        let mut containers = self.init.clone();
        containers.push(Value::Object(step));
        for c in &mut containers {
            if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                mounts.retain(|m| m.get("name").is_some_and(|n| declared.contains(n)));
            }
        }
        let step = containers.pop().unwrap_or_default();
        spec.insert("initContainers".into(), Value::Array(containers));
        spec.insert("containers".into(), json!([step]));
        spec.insert("restartPolicy".into(), json!("Never"));

        let mut metadata = json!({"labels": labels});
        if let Some(a) = self.template.pointer("/metadata/annotations") {
            metadata["annotations"] = a.clone();
        }
        json!({"metadata": metadata, "spec": Value::Object(spec)})
    }
}

/// Sets the env var `name` of `container` to `value`, in place when it is there.
pub fn set_env(container: &mut JsonMap, name: &str, value: &str) {
    let env = container
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !env.is_array() {
        *env = Value::Array(Vec::new());
    }
    let Some(env) = env.as_array_mut() else {
        return;
    };
    match env
        .iter_mut()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
    {
        Some(e) => *e = json!({"name": name, "value": value}),
        None => env.push(json!({"name": name, "value": value})),
    }
}

/// `<deployment>-<kind>-<suffix>`, the Deployment's name cut so that it fits.
pub fn job_name(deployment: &str, kind: &str, suffix: &str) -> String {
    let suffix = format!("-{kind}-{suffix}");
    // Deployment names are DNS subdomains: ASCII, so any byte is a boundary.
    let keep = deployment.len().min(MAX_NAME.saturating_sub(suffix.len()));
    let name = deployment[..keep].trim_end_matches(['-', '.']);
    format!("{name}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_replaced_in_place_or_added() {
        let mut c = JsonMap::new();
        set_env(&mut c, "A", "1");
        c["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}));
        set_env(&mut c, "A", "2");
        set_env(&mut c, "B", "3");
        assert_eq!(
            c["env"],
            json!([{"name": "A", "value": "2"}, {"name": "B", "value": "3"}])
        );
    }

    #[test]
    fn long_names_are_cut_to_a_valid_job_name() {
        let long = "a".repeat(70);
        let name = job_name(&long, "plan", "0123abcd");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-plan-0123abcd"));
        assert_eq!(job_name("x-", "plan", "ab"), "x-plan-ab");
    }
}

/// An injected Deployment of the one-off Jobs' tests: a native sidecar, pull secrets,
/// scheduling, a volume, a host name and a pod annotation an agent injector reads.
#[cfg(test)]
pub(crate) mod fixture {
    use serde_json::{Value, json};

    use crate::injected::CodeImage;
    use crate::mutation::{Operation, mutate};
    use crate::workload::Workload;

    pub(crate) fn injected(annotations: &Value) -> Value {
        injected_with(annotations, &CodeImage::default())
    }

    pub(crate) fn injected_with(annotations: &Value, image: &CodeImage) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop", "namespace": "prod",
                         "labels": {"django-migrate.io/inject": "true"},
                         "annotations": annotations},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop"}},
              "template": {
                "metadata": {"labels": {"app": "shop"}, "annotations": {"vault.hashicorp.com/agent-inject": "true"}},
                "spec": {
                  "serviceAccountName": "shop",
                  "imagePullSecrets": [{"name": "registry"}],
                  "nodeSelector": {"pool": "apps"},
                  "hostname": "shop",
                  "initContainers": [{"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"}],
                  "containers": [{"name": "web", "image": "shop:2",
                                  "env": [{"name": "DB", "value": "x"}],
                                  "ports": [{"containerPort": 8000}]}],
                  "volumes": [{"name": "certs", "secret": {"secretName": "db-certs"}}]}}}
        });
        let parsed: Workload = serde_json::from_value(d.clone()).unwrap();
        let m = mutate(Operation::Create, &parsed, None, image).unwrap();
        json_patch::patch(&mut d, &m.patch).unwrap();
        d
    }
}
