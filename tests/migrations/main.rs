//! The migrations tier: the init containers taken from `inject` output for a Deployment
//! of the real Django project in `tests/django`, run as the kubelet would run them,
//! against SQLite and against real PostgreSQL and MariaDB servers.
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

mod classifier;
mod contract;
mod fast_path;
mod kubelet;
mod plan;
mod poolers;
mod post_migrate;
mod safety;
mod servers;
mod sqlite;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use django_migrate_webhook::{injected, names};

use serde_json::{Value, json};

use kubelet::Container;
use support::repo;

/// Env vars or annotations, as name/value pairs.
pub type Pairs<'a> = &'a [(&'a str, &'a str)];

/// A Python with Django that plays the app image, from the env var `var` (set by
/// `scripts/test.sh`), else from `fallback` under the repository.
pub fn python_from(var: &str, fallback: &str) -> PathBuf {
    let python = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(fallback));
    let ok = Command::new(&python)
        .args(["-c", "import django"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "no Python with Django at {}: run scripts/test.sh (it creates the venvs from \
         tests/requirements*.txt) or set {var}",
        python.display()
    );
    python
}

/// The Python and Django the tier runs on (Django 5.2, the current LTS, unless set).
pub fn test_python() -> PathBuf {
    python_from("DJANGO_MIGRATE_TEST_PYTHON", ".venv/bin/python")
}

/// The version of Django that `python` imports, for messages.
pub fn django_version(python: &Path) -> String {
    let out = Command::new(python)
        .args(["-c", "import django; print(django.get_version())"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Django 4.2 (the previous LTS); tests that need it have `django42` in their names.
pub fn test_python_django42() -> PathBuf {
    python_from(
        "DJANGO_MIGRATE_TEST_PYTHON_DJANGO42",
        ".venv-django42/bin/python",
    )
}

/// A Deployment of the test project, opted in, with the given env and annotations.
pub fn deployment(python: &Path, env: &[(String, String)], annotations: Pairs) -> Value {
    let mut all: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (format!("django-migrate.io/{k}"), json!(v)))
        .collect();
    all.entry("django-migrate.io/python")
        .or_insert_with(|| json!(python.to_string_lossy()));
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "shop",
            "labels": {"django-migrate.io/inject": "true"},
            "annotations": all,
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{
                    "name": "web",
                    "image": "shop:test",
                    "workingDir": repo().join("tests/django").to_string_lossy(),
                    "env": env,
                }]},
            },
        },
    })
}

/// The init containers of `deployment` after `django-migrate-webhook inject`: the code
/// copy, then the Django step.
pub fn injected_init_containers(deployment: &Value) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_django-migrate-webhook"))
        .args(["inject", "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(deployment.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mutated: Value = serde_json::from_slice(&out.stdout).unwrap();
    mutated["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) const TERMINATION_LOG_ENV: &str = "DJANGO_MIGRATE_TERMINATION_LOG";

/// Pods of one Deployment of the test project: a scratch directory for their
/// termination logs, the Python (Django version) and the env of the app container.
pub struct Pods {
    pub dir: tempfile::TempDir,
    pub python: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Pods {
    pub fn new(python: PathBuf, env: &[(&str, &str)]) -> Pods {
        let dir = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push((
            TERMINATION_LOG_ENV.into(),
            dir.path().join("termination-log").to_string_lossy().into(),
        ));
        Pods { dir, python, env }
    }

    /// The injected init containers for this Deployment plus extra env and annotations:
    /// `[code copy, Django step]`. The code volume is a directory of this scratch space,
    /// and the copy has run into it once, so the step can also be run on its own.
    pub fn containers(&self, extra_env: Pairs, annotations: Pairs) -> Vec<Container> {
        let mut env = self.env.clone();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let containers: Vec<Container> =
            injected_init_containers(&deployment(&self.python, &env, annotations))
                .iter()
                .map(|spec| {
                    let mut c = Container::from_spec(spec, &[]);
                    if c.name == names::CODE_CONTAINER {
                        // The webhook's image: this build of the binary.
                        assert_eq!(c.argv[0], injected::BINARY_IN_IMAGE);
                        c.argv[0] = env!("CARGO_BIN_EXE_django-migrate-webhook").into();
                    }
                    c.volumes
                        .insert(names::CODE_VOLUME.into(), self.code_dir(None));
                    c
                })
                .collect();
        let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], names::CODE_CONTAINER, "{names:?}");
        assert_eq!(names.len(), 2, "{names:?}");
        let copy = containers[0].run(Duration::from_secs(20));
        assert_eq!(copy.code, 0, "{}", copy.logs);
        containers
    }

    /// The directory that stands for pod `pod`'s code volume (an emptyDir).
    fn code_dir(&self, pod: Option<usize>) -> PathBuf {
        match pod {
            Some(i) => self.dir.path().join(format!("pod-{i}-code")),
            None => self.dir.path().join("code"),
        }
    }

    /// The step's summary (the termination message as JSON).
    pub fn summary(&self, pod: Option<usize>) -> Value {
        let text = self.termination_message(pod);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("the termination message is not a JSON summary ({e}): {text}")
        })
    }

    fn log_path(&self, pod: Option<usize>) -> PathBuf {
        match pod {
            Some(i) => self.dir.path().join(format!("pod-{i}.termination-log")),
            None => self.dir.path().join("termination-log"),
        }
    }

    /// The containers of pod number `pod`: same spec, its own termination log.
    pub fn pod(&self, containers: &[Container], pod: usize) -> Vec<Container> {
        containers
            .iter()
            .cloned()
            .map(|mut c| {
                c.env.insert(
                    TERMINATION_LOG_ENV.into(),
                    self.log_path(Some(pod)).to_string_lossy().into(),
                );
                c.volumes
                    .insert(names::CODE_VOLUME.into(), self.code_dir(Some(pod)));
                c
            })
            .collect()
    }

    /// Runs `python ARGS` in `tests/django` with the pods' env plus `extra_env`, as the
    /// previous release or a helper of the tests would; its stdout, after it succeeded.
    pub fn python(&self, args: &[&str], extra_env: Pairs) -> String {
        let out = Command::new(&self.python)
            .args(args)
            .current_dir(repo().join("tests/django"))
            .envs(self.env.iter().cloned())
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python {args:?} with {extra_env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last termination message written (by pod number `pod`, or by an unnumbered run).
    pub fn termination_message(&self, pod: Option<usize>) -> String {
        kubelet::read_termination_message(&self.log_path(pod))
    }
}
