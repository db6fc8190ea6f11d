//! The plan's command line without a cluster: `inject --plan-job` prints the Job that
//! `plan` runs, and `plan` refuses what names no Deployment as bad arguments (exit 2; its
//! 5 means "held back").

use std::io::Write;
use std::process::{Command, Output, Stdio};

use django_migrate_webhook::names::{ENV_MODE, MIGRATE_CONTAINER, PLAN_FOR_LABEL};
use serde_json::Value;

use crate::support::BIN;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  namespace: prod
  labels: {django-migrate.io/inject: "true"}
  annotations: {django-migrate.io/unsafe-migrations: deny}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: web, image: "shop:2"}]
"#;

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inject_prints_the_plan_job_with_the_next_image() {
    let out = run(
        &["inject", "--plan-job", "--image", "shop:3", "-o", "json"],
        DEPLOYMENT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["namespace"], "prod");
    assert_eq!(job["metadata"]["labels"][PLAN_FOR_LABEL], "shop");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let step = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(step["name"], MIGRATE_CONTAINER);
    assert_eq!(step["image"], "shop:3");
    let env = step["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == ENV_MODE && e["value"] == "plan")
    );

    // The Deployment as stored (injected already) gives the same Job.
    let injected = run(&["inject"], DEPLOYMENT);
    assert!(injected.status.success(), "{}", stderr(&injected));
    let again = run(
        &["inject", "--plan-job", "--image", "shop:3", "-o", "json"],
        &String::from_utf8(injected.stdout).unwrap(),
    );
    let again: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again, job);
}

#[test]
fn inject_takes_one_kind_of_job_and_an_image_only_for_a_plan() {
    let both = run(&["inject", "--plan-job", "--contract-job"], DEPLOYMENT);
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    let image = run(&["inject", "--image", "shop:3"], DEPLOYMENT);
    assert!(!image.status.success());
    assert!(stderr(&image).contains("--plan-job"), "{}", stderr(&image));
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n";
    let none = run(&["inject", "--plan-job"], service);
    assert_eq!(none.status.code(), Some(1));
    assert!(stderr(&none).contains("no plan Job"), "{}", stderr(&none));
}

#[test]
fn plan_refuses_what_is_not_a_deployment_as_bad_arguments() {
    let out = run(&["plan", "statefulset/shop"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("give NAME or deployment/NAME"),
        "{}",
        stderr(&out)
    );
    let both = run(&["plan", "shop", "--image", "shop:3", "-f", "-"], "");
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    // Help is not an error.
    let help = run(&["plan", "--help"], "");
    assert_eq!(help.status.code(), Some(0));
}
