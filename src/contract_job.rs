//! The contract run's Job: the injected Django step in `contract` mode, built from an
//! injected Deployment's pod template (the pod `step_job` describes).
//!
//! The controller creates it once the rollout is complete and no pod of an older release
//! is left; `inject --contract-job` prints the same object for review or for GitOps users
//! who apply it themselves.

use serde_json::{Value, json};
use thiserror::Error;

use crate::names::{
    CONTRACT_FOR_LABEL, CONTRACT_RELEASE_ANNOTATION, CONTROLLER_NAME, ENV_MODE, MIGRATE_CONTAINER,
    exit,
};
use crate::step_job::{self, InjectedStep, NoStep};
use crate::workload::{JsonMap, Kind};

/// Retries of the Job's pod after a failure that is not the step's own verdict (a node
/// lost, the database not reachable in time).
const BACKOFF_LIMIT: i32 = 2;

/// Why a Deployment has no contract Job.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NoContractJob {
    #[error("it carries no injected migration step (not opted in, or stored without the webhook)")]
    NotInjected,
    #[error(
        "its step only waits (django-migrate.io/mode: wait): the Deployment whose step migrates runs the contract"
    )]
    WaitMode,
    #[error("it has no name")]
    NoName,
    #[error("a {0} has no contract phase: its deferred migrations wait for a Deployment's")]
    NoContractPhase(Kind),
}

impl From<NoStep> for NoContractJob {
    fn from(e: NoStep) -> NoContractJob {
        match e {
            NoStep::NotInjected => NoContractJob::NotInjected,
            NoStep::NoName => NoContractJob::NoName,
        }
    }
}

/// A stable short hash of what makes a release for the migrations: the step's image, env
/// and envFrom (FNV-1a over their canonical JSON, object keys sorted). Fields the API
/// server fills in with defaults are left out, so a manifest and the stored object give
/// the same name; a rollout that changes only resources or probes is the same release.
pub fn release_hash(step: &JsonMap) -> String {
    let release = json!({
        "image": step.get("image"),
        "env": step.get("env"),
        "envFrom": step.get("envFrom"),
    });
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in release.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// `<deployment>-contract-<hash>`, the Deployment's name cut so that it fits; another
/// kind's says its kind (`<name>-statefulset-contract-<hash>`), so that a Deployment and a
/// StatefulSet of one name never share a Job.
pub fn job_name(kind: Kind, name: &str, hash: &str) -> String {
    match kind {
        Kind::Deployment => step_job::job_name(name, "contract", hash),
        _ => step_job::job_name(
            name,
            &format!("{}-contract", kind.as_str().to_lowercase()),
            hash,
        ),
    }
}

/// The contract Job for an injected Deployment, StatefulSet or Rollout (as JSON). `owner`
/// is the workload's UID when known; the controller sets it, a preview cannot.
pub fn contract_job(deployment: &Value, owner: Option<&str>) -> Result<Value, NoContractJob> {
    let kind = Kind::of_object(deployment);
    if kind.runs_to_completion() {
        return Err(NoContractJob::NoContractPhase(kind));
    }
    let found = InjectedStep::of(deployment)?;
    if found.waits() {
        return Err(NoContractJob::WaitMode);
    }
    let name = found.deployment;
    let hash = release_hash(&found.step);
    let mut step = found.step.clone();
    step_job::set_env(&mut step, ENV_MODE, "contract");
    let template = found.pod_template(step, &json!({CONTRACT_FOR_LABEL: name}));

    let mut metadata = json!({
        "name": job_name(kind, name, &hash),
        "labels": {
            CONTRACT_FOR_LABEL: name,
            "app.kubernetes.io/managed-by": CONTROLLER_NAME,
        },
        "annotations": {CONTRACT_RELEASE_ANNOTATION: hash},
    });
    if let Some(ns) = found.namespace {
        metadata["namespace"] = ns.clone();
    }
    if let Some(uid) = owner {
        metadata["ownerReferences"] = json!([{
            "apiVersion": kind.api_version(),
            "kind": kind.as_str(),
            "name": name,
            "uid": uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
    }
    Ok(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            // The step's own verdicts (a failed migration, credentials, a held-back plan,
            // the lock) are final; a lost node or a database not reachable in time is
            // tried again.
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {
                    "containerName": MIGRATE_CONTAINER,
                    "operator": "In",
                    "values": [exit::MIGRATE_FAILED, exit::CREDENTIALS, exit::NOT_FOUND, exit::UNSAFE, exit::LOCK],
                }},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": template,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injected::CodeImage;
    use crate::mutation::{Operation, mutate};
    use crate::names::CODE_CONTAINER;
    use crate::step_job::fixture::injected;
    use crate::workload::Workload;

    /// A StatefulSet's: named and owned after its kind, without the claims of its
    /// volumeClaimTemplates (the Job cannot share them); a Job's has no contract phase.
    #[test]
    fn a_statefulsets_job_says_its_kind_and_leaves_its_claims() {
        let manifest = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "n", "labels": {"django-migrate.io/inject": "true"}},
            "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                         {"name": "web", "image": "shop:1",
                          "volumeMounts": [{"name": "media", "mountPath": "/media"}]}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "media"}}]},
        });
        let out = crate::preview::inject(
            &manifest.to_string(),
            crate::preview::OutputFormat::Json,
            &CodeImage::default(),
        )
        .unwrap();
        let injected: Value = serde_json::from_str(&out.output).unwrap();
        let job = contract_job(&injected, Some("uid-1")).unwrap();
        assert!(
            job["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("web-statefulset-contract-"),
            "{job}"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
        let pod = &job["spec"]["template"]["spec"];
        let mounts = &pod["containers"][0]["volumeMounts"];
        assert_eq!(mounts.as_array().unwrap().len(), 1, "{mounts}");
        assert_eq!(mounts[0]["name"], crate::names::CODE_VOLUME);

        let mut job_kind = manifest.clone();
        job_kind["apiVersion"] = json!("batch/v1");
        job_kind["kind"] = json!("Job");
        assert_eq!(
            contract_job(&job_kind, None),
            Err(NoContractJob::NoContractPhase(Kind::Job))
        );
    }

    /// With the code as an image volume, the Job mounts the same volume and runs no copy.
    #[test]
    fn the_job_carries_the_code_image_volume() {
        let image = CodeImage {
            image: "registry.local/dmw:9".into(),
            delivery: crate::injected::CodeDelivery::ImageVolume,
            ..CodeImage::default()
        };
        let d = crate::step_job::fixture::injected_with(
            &json!({"django-migrate.io/unsafe-migrations": "defer"}),
            &image,
        );
        let job = contract_job(&d, Some("uid-1")).unwrap();
        let spec = &job["spec"]["template"]["spec"];
        let init: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["proxy"]);
        assert!(
            spec["volumes"].as_array().unwrap().contains(&json!({
                "name": crate::names::CODE_VOLUME,
                "image": {"reference": "registry.local/dmw:9", "pullPolicy": "IfNotPresent"},
            })),
            "{spec}"
        );
        assert_eq!(spec["containers"][0]["name"], MIGRATE_CONTAINER);
    }

    #[test]
    fn the_job_runs_the_step_in_contract_mode_with_the_pods_settings() {
        let d = injected(&json!({"django-migrate.io/unsafe-migrations": "defer"}));
        let job = contract_job(&d, Some("uid-1")).unwrap();
        let name = job["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("shop-contract-"), "{name}");
        assert_eq!(job["metadata"]["namespace"], "prod");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let pod = &job["spec"]["template"];
        assert_eq!(
            pod["metadata"]["labels"],
            json!({CONTRACT_FOR_LABEL: "shop"})
        );
        assert_eq!(
            pod["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"],
            "true"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["serviceAccountName"], "shop");
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
        assert_eq!(spec["nodeSelector"], json!({"pool": "apps"}));
        assert!(spec.get("readinessGates").is_none());
        let init: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["proxy", CODE_CONTAINER]);
        let step = &spec["containers"][0];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        assert_eq!(step["name"], MIGRATE_CONTAINER);
        assert_eq!(step["image"], "shop:2");
        let env = step["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "DB", "value": "x"})));
        assert!(env.contains(&json!({"name": ENV_MODE, "value": "contract"})));
        assert!(
            env.contains(&json!({"name": "DJANGO_MIGRATE_UNSAFE_MIGRATIONS", "value": "defer"}))
        );
    }

    #[test]
    fn one_name_per_template_and_none_without_a_migrating_step() {
        let a = injected(&json!({}));
        let b = contract_job(&a, None).unwrap();
        assert_eq!(contract_job(&a, None).unwrap(), b);
        assert!(b["metadata"].get("ownerReferences").is_none());
        let mut changed = a.clone();
        changed["spec"]["template"]["spec"]["initContainers"][2]["image"] = json!("shop:3");
        assert_ne!(
            contract_job(&changed, None).unwrap()["metadata"]["name"],
            b["metadata"]["name"]
        );
        // Defaults the API server fills in do not make another release.
        let mut stored = a.clone();
        stored["spec"]["template"]["spec"]["dnsPolicy"] = json!("ClusterFirst");
        stored["spec"]["template"]["spec"]["initContainers"][2]["terminationMessagePath"] =
            json!("/dev/termination-log");
        assert_eq!(
            contract_job(&stored, None).unwrap()["metadata"]["name"],
            b["metadata"]["name"]
        );
        let wait = injected(&json!({"django-migrate.io/mode": "wait"}));
        assert_eq!(contract_job(&wait, None), Err(NoContractJob::WaitMode));
        // An earlier release's injection: the step without the code copy.
        let mut legacy = a.clone();
        legacy["spec"]["template"]["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["name"] != CODE_CONTAINER);
        assert_eq!(contract_job(&legacy, None), Err(NoContractJob::NotInjected));
        let mut plain = a.clone();
        plain["spec"]["template"]["metadata"]["labels"] = json!({"app": "shop"});
        plain["spec"]["template"]["spec"]["initContainers"] = json!([]);
        assert_eq!(contract_job(&plain, None), Err(NoContractJob::NotInjected));
    }

    #[test]
    fn a_release_from_before_a_contract_run_is_warned_about() {
        let old = injected(&json!({}));
        let old_step = old["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == MIGRATE_CONTAINER)
            .unwrap()
            .as_object()
            .unwrap()
            .clone();
        let mut d = old.clone();
        d["metadata"]["annotations"] = json!({
            crate::names::CONTRACTED_RELEASES: format!("0000000000,{}", release_hash(&old_step))
        });
        let warned = |d: &Value| {
            let parsed: Workload = serde_json::from_value(d.clone()).unwrap();
            mutate(Operation::Update, &parsed, None, &CodeImage::default())
                .unwrap()
                .warnings
                .iter()
                .any(|w| w.contains("before an applied contract run"))
        };
        assert!(warned(&d), "the old release again");

        // `kubectl rollout undo` replaces the annotations: the stored object's record
        // counts, and the patch keeps it.
        let stored: Workload = serde_json::from_value(d.clone()).unwrap();
        let mut undone = old.clone();
        undone["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        let parsed: Workload = serde_json::from_value(undone.clone()).unwrap();
        let m = mutate(
            Operation::Update,
            &parsed,
            Some(&stored),
            &CodeImage::default(),
        )
        .unwrap();
        assert!(
            m.warnings
                .iter()
                .any(|w| w.contains("before an applied contract run"))
        );
        json_patch::patch(&mut undone, &m.patch).unwrap();
        assert_eq!(
            undone["metadata"]["annotations"][crate::names::CONTRACTED_RELEASES],
            d["metadata"]["annotations"][crate::names::CONTRACTED_RELEASES]
        );

        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop:3");
        assert!(!warned(&d), "a new release");
    }
}
