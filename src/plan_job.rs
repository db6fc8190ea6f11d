//! A plan's Job: the injected Django step in `plan` mode, built from an injected
//! Deployment's pod template (the pod `step_job` describes), optionally with the next
//! release's image.
//!
//! Plan mode is read-only: the step reports what the release's pending migrations would do
//! to the database and writes nothing, so the Job runs once (no retries) and cleans up
//! after itself. `plan` creates it with the caller's credentials, reads its report and
//! deletes it; `inject --plan-job` prints it. A Deployment whose step only waits
//! (`django-migrate.io/mode: wait`) plans the same way: its step is the same program with
//! the same settings.

use std::time::Duration;

use serde_json::{Value, json};
use thiserror::Error;

use crate::contract_job::release_hash;
use crate::names::{CONTROLLER_NAME, ENV_MODE, PLAN_FOR_LABEL};
use crate::step_job::{self, InjectedStep, NoStep};

/// How long a finished plan Job stays: a safety net for a caller that died before it
/// deleted the Job.
const TTL_AFTER_FINISHED: Duration = Duration::from_secs(600);

/// The default bound of a plan's run (`plan --timeout`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

/// Why a Deployment has no plan Job.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum NoPlanJob {
    #[error(
        "it carries no injected migration step (not opted in with the label django-migrate.io/inject: \"true\", or stored without the webhook)"
    )]
    NotInjected,
    #[error("it has no name")]
    NoName,
}

impl From<NoStep> for NoPlanJob {
    fn from(e: NoStep) -> NoPlanJob {
        match e {
            NoStep::NotInjected => NoPlanJob::NotInjected,
            NoStep::NoName => NoPlanJob::NoName,
        }
    }
}

/// What a plan Job is made with.
#[derive(Clone, Debug)]
pub struct PlanJobOptions<'a> {
    /// The step's image, to plan the next release (`--image`); default the template's.
    pub image: Option<&'a str>,
    /// What the Job's name ends with. Default a hash of the planning step's image and
    /// env, so a preview prints one name per release; a run passes a fresh one, so that
    /// two plans of one release do not collide.
    pub suffix: Option<&'a str>,
    /// The Job's `activeDeadlineSeconds`: it stops even if nobody deletes it.
    pub deadline: Duration,
}

impl Default for PlanJobOptions<'_> {
    fn default() -> Self {
        PlanJobOptions {
            image: None,
            suffix: None,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// The plan Job for an injected Deployment (apps/v1, as JSON). It has no owner: it
/// outlives nothing but its caller, and a Deployment deleted meanwhile must not take it
/// along before its report is read.
pub fn plan_job(deployment: &Value, options: &PlanJobOptions) -> Result<Value, NoPlanJob> {
    let found = InjectedStep::of(deployment)?;
    let name = found.deployment;
    let mut step = found.step.clone();
    step_job::set_env(&mut step, ENV_MODE, "plan");
    if let Some(image) = options.image {
        step.insert("image".into(), json!(image));
    }
    let suffix = options
        .suffix
        .map_or_else(|| release_hash(&step), str::to_owned);
    let template = found.pod_template(step, &json!({PLAN_FOR_LABEL: name}));

    let mut metadata = json!({
        "name": step_job::job_name(name, "plan", &suffix),
        "labels": {
            PLAN_FOR_LABEL: name,
            "app.kubernetes.io/managed-by": CONTROLLER_NAME,
        },
    });
    if let Some(ns) = found.namespace {
        metadata["namespace"] = ns.clone();
    }
    Ok(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": options.deadline.as_secs(),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED.as_secs(),
            "template": template,
        },
    }))
}

/// The name of the Job's only container: the step's, `django-migrate` or, for a
/// Deployment whose step waits, `django-wait-for-migrations`.
pub fn step_container(job: &Value) -> Option<&str> {
    job.pointer("/spec/template/spec/containers/0/name")
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{CODE_CONTAINER, MIGRATE_CONTAINER, WAIT_CONTAINER};
    use crate::step_job::fixture::injected;

    fn env(job: &Value) -> &Vec<Value> {
        job["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
    }

    #[test]
    fn the_job_runs_the_step_once_in_plan_mode_with_the_pods_settings() {
        let d = injected(&json!({"django-migrate.io/unsafe-migrations": "deny"}));
        let job = plan_job(&d, &PlanJobOptions::default()).unwrap();
        let name = job["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("shop-plan-"), "{name}");
        assert_eq!(job["metadata"]["namespace"], "prod");
        assert_eq!(
            job["metadata"]["labels"],
            json!({PLAN_FOR_LABEL: "shop", "app.kubernetes.io/managed-by": CONTROLLER_NAME})
        );
        assert!(job["metadata"].get("ownerReferences").is_none());
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 600);
        assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 600);
        let pod = &job["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"], json!({PLAN_FOR_LABEL: "shop"}));
        assert_eq!(
            pod["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"],
            "true"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["serviceAccountName"], "shop");
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "registry"}]));
        assert_eq!(spec["nodeSelector"], json!({"pool": "apps"}));
        assert_eq!(spec["volumes"][0]["name"], "certs");
        for gone in ["readinessGates", "hostname", "subdomain"] {
            assert!(spec.get(gone).is_none(), "{gone}");
        }
        let init: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["proxy", CODE_CONTAINER]);
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        assert_eq!(step_container(&job), Some(MIGRATE_CONTAINER));
        assert_eq!(spec["containers"][0]["image"], "shop:2");
        let env = env(&job);
        assert!(env.contains(&json!({"name": "DB", "value": "x"})));
        assert!(env.contains(&json!({"name": ENV_MODE, "value": "plan"})));
        assert_eq!(env.iter().filter(|e| e["name"] == ENV_MODE).count(), 1);
        assert!(
            env.contains(&json!({"name": "DJANGO_MIGRATE_UNSAFE_MIGRATIONS", "value": "deny"}))
        );
    }

    #[test]
    fn the_next_release_is_planned_with_its_image_under_another_name() {
        let d = injected(&json!({}));
        let current = plan_job(&d, &PlanJobOptions::default()).unwrap();
        assert_eq!(plan_job(&d, &PlanJobOptions::default()).unwrap(), current);
        let options = PlanJobOptions {
            image: Some("shop:3"),
            deadline: Duration::from_secs(90),
            ..PlanJobOptions::default()
        };
        let next = plan_job(&d, &options).unwrap();
        let step = &next["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(step["image"], "shop:3");
        assert_eq!(next["spec"]["activeDeadlineSeconds"], 90);
        assert_ne!(next["metadata"]["name"], current["metadata"]["name"]);
        // The code copy keeps the webhook's image.
        assert_eq!(
            next["spec"]["template"]["spec"]["initContainers"][1]["image"],
            current["spec"]["template"]["spec"]["initContainers"][1]["image"]
        );
        let run = PlanJobOptions {
            suffix: Some("a1b2c3d4"),
            ..PlanJobOptions::default()
        };
        assert_eq!(
            plan_job(&d, &run).unwrap()["metadata"]["name"],
            "shop-plan-a1b2c3d4"
        );
    }

    #[test]
    fn a_step_that_waits_plans_as_it_is() {
        let d = injected(&json!({"django-migrate.io/mode": "wait"}));
        let job = plan_job(&d, &PlanJobOptions::default()).unwrap();
        assert_eq!(step_container(&job), Some(WAIT_CONTAINER));
        let init = job["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap();
        assert!(init.iter().all(|c| c["name"] != WAIT_CONTAINER));
        assert!(env(&job).contains(&json!({"name": ENV_MODE, "value": "plan"})));
    }

    #[test]
    fn no_job_without_the_injection() {
        let mut plain = injected(&json!({}));
        plain["spec"]["template"]["metadata"]["labels"] = json!({"app": "shop"});
        plain["spec"]["template"]["spec"]["initContainers"] = json!([]);
        let options = PlanJobOptions::default();
        assert_eq!(plan_job(&plain, &options), Err(NoPlanJob::NotInjected));
        // An earlier release's injection: the step without the code copy.
        let mut legacy = injected(&json!({}));
        legacy["spec"]["template"]["spec"]["initContainers"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c["name"] != CODE_CONTAINER);
        assert_eq!(plan_job(&legacy, &options), Err(NoPlanJob::NotInjected));
        let mut nameless = injected(&json!({}));
        nameless["metadata"].as_object_mut().unwrap().remove("name");
        assert_eq!(plan_job(&nameless, &options), Err(NoPlanJob::NoName));
    }
}
