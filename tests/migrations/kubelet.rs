//! Runs a pod's init containers as local processes, the way the kubelet would start
//! them: `$(VAR)` expansion of env values, command and args, the container's env only,
//! the container's workingDir, volumes as host directories (a path under a mount's
//! `mountPath` in the command is resolved into the directory that stands for the
//! volume), and the termination message read back from a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use django_migrate_webhook::names;
use django_migrate_webhook::summary::{Phase, StepResult, Summary};
use serde_json::Value;

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
/// anything else is left as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if env.contains_key(&inner[..end]) => {
                    out.push_str(&env[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One init container, ready to start.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    /// `(mountPath, volume name)` of the container's volumeMounts.
    pub mounts: Vec<(String, String)>,
    /// Host directory of each volume (by name) that a mount refers to.
    pub volumes: BTreeMap<String, PathBuf>,
}

/// The `pod-template-hash` label of the pods these containers stand for: one release.
pub const POD_TEMPLATE_HASH: &str = "5d8f7c9b6";

impl Container {
    /// Reads a container spec; `entrypoint` stands for the image's ENTRYPOINT when the
    /// spec sets only args.
    pub fn from_spec(spec: &Value, entrypoint: &[String]) -> Container {
        let mut env = BTreeMap::new();
        for var in spec["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                // The downward API, as the kubelet resolves it for a pod of the template
                // (a label the pod does not have is empty).
                Some(path) => match path.strip_prefix("metadata.labels['") {
                    Some("pod-template-hash']") => POD_TEMPLATE_HASH.to_owned(),
                    Some(_) => String::new(),
                    None => panic!("env {name}: only pod labels can be run locally, not {var}"),
                },
                None => {
                    let value = var["value"].as_str().unwrap_or_else(|| {
                        panic!("env {name}: only plain values can be run locally, not {var}")
                    });
                    expand(value, &env)
                }
            };
            env.insert(name, value);
        }
        let words = |key: &str| -> Vec<String> {
            spec[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| expand(w.as_str().unwrap(), &env))
                .collect()
        };
        let mut argv = words("command");
        if argv.is_empty() {
            argv = entrypoint.to_vec();
        }
        argv.extend(words("args"));
        let mounts = spec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap().to_owned(),
                    m["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        Container {
            name: spec["name"].as_str().unwrap().to_owned(),
            argv,
            env,
            working_dir: spec["workingDir"]
                .as_str()
                .map_or_else(std::env::temp_dir, PathBuf::from),
            mounts,
            volumes: BTreeMap::new(),
        }
    }

    /// `word` with a leading mount path replaced by the directory of its volume.
    fn resolve(&self, word: &str) -> String {
        for (path, volume) in &self.mounts {
            if let (Some(rest), Some(dir)) =
                (word.strip_prefix(path.as_str()), self.volumes.get(volume))
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", dir.display());
            }
        }
        word.to_owned()
    }

    /// Starts the container's processes in a process group of their own, which stands for
    /// the container: `kill_container` ends all of them, as the kubelet does.
    pub fn start(&self) -> Child {
        use std::os::unix::process::CommandExt;
        let argv: Vec<String> = self.argv.iter().map(|w| self.resolve(w)).collect();
        Command::new(&argv[0])
            .process_group(0)
            .args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .current_dir(&self.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]))
    }

    /// Runs to completion (bounded by `limit`) and returns the exit code and the logs. A
    /// Django step's summary is read as the controller reads it, so that a summary the
    /// Rust side cannot read fails the test that produced it.
    pub fn run(&self, limit: Duration) -> Exit {
        let child = self.start();
        let exit = wait(&self.name, child, limit);
        self.check_summary(&exit);
        exit
    }

    fn check_summary(&self, exit: &Exit) {
        let step = self.name == names::MIGRATE_CONTAINER || self.name == names::WAIT_CONTAINER;
        // Codes of the program itself; a signal's 128+n comes with no summary.
        if !step || !(0..=6).contains(&exit.code) {
            return;
        }
        let Some(path) = self.env.get(crate::TERMINATION_LOG_ENV) else {
            return;
        };
        let text = read_termination_message(Path::new(path));
        assert!(text.len() <= 4096, "{} bytes: {text}", text.len());
        let summary = Summary::parse(&text).unwrap_or_else(|| {
            panic!(
                "{} exited {} without a summary the controller can read: {text}\n{}",
                self.name, exit.code, exit.logs
            )
        });
        assert_eq!(summary.exit_code, exit.code, "{text}");
        assert!(
            summary.phase != Phase::Unknown && summary.result != StepResult::Unknown,
            "a phase or result the controller does not know: {text}"
        );
        let counts = summary
            .counts
            .unwrap_or_else(|| panic!("no counts: {text}"));
        assert!(
            counts.applied >= summary.applied.len() as u64
                && counts.pending >= summary.pending.len() as u64
                && counts.deferred >= summary.deferred.len() as u64,
            "counts smaller than the lists: {text}"
        );
        // The longest delay is never cut: no deferred migration shown waits longer.
        let longest = summary
            .deferred
            .iter()
            .filter_map(|d| d.delay)
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
        if let Some(longest) = longest {
            assert!(
                summary.contract_delay_seconds.is_some_and(|c| c >= longest),
                "contract_delay_seconds below a deferred migration's delay: {text}"
            );
        }
    }
}

pub struct Exit {
    pub code: i32,
    pub logs: String,
}

pub fn wait(name: &str, mut child: Child, limit: Duration) -> Exit {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            let logs = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            return Exit {
                code: status.code().unwrap_or(-1),
                logs,
            };
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{name} did not finish within {limit:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL to every process of a container started with `Container::start` (a pod deleted
/// with no grace period, a node that died).
pub fn kill_container(child: &Child) {
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -KILL -{} failed", child.id());
}

/// The termination message a container wrote (empty when none).
pub fn read_termination_message(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
