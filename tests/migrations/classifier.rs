//! The classifier proven by behaviour: for every case of `tests/django/corpus/cases.py`
//! (one operation a team ships on top of a previous release), on real PostgreSQL and
//! MariaDB, the previous release is applied and seeded, the injected step applies the
//! case's migration under `unsafe-migrations: warn` and says what it found, and then the
//! previous release's model code runs against the migrated database
//! (`corpus_probe.py probe`). An operation is breaking exactly when that probe fails; the
//! step must say so exactly then.
//!
//! Locks are proven the same way, by a second connection that tries an ordinary read and
//! write while the operation runs (`corpus_probe.py locks`): on PostgreSQL inside the
//! operation's open transaction, where it also shows whether the operation did work that
//! grows with the table (a rewrite, an index build, a scan); on MariaDB, which has no
//! transactional DDL, against a table of 100,000 rows. An operation blocks traffic exactly
//! when that connection waits for it and the work grows with the table; the step must name
//! a lock exactly then.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;
use std::thread;

use serde_json::Value;

use crate::servers::{Engine, Server, run_pod, server};
use crate::{Pods, test_python};

fn django_dir() -> std::path::PathBuf {
    crate::repo().join("tests/django")
}

/// `corpus/cases.py`'s cases: name -> {breaking, engines}.
fn cases() -> BTreeMap<String, Value> {
    let out = Command::new(test_python())
        .args(["-m", "corpus.cases"])
        .current_dir(django_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "corpus/cases.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `corpus_probe.py COMMAND` for `case` with the pods' env; its stdout.
fn corpus_probe(pods: &Pods, case: &str, command: &str) -> String {
    pods.python(&["corpus_probe.py", command], &[("CORPUS_CASE", case)])
}

/// What one case showed on one engine.
struct Verdict {
    case: String,
    expected: bool,
    probe: Vec<String>,
    /// What the lock probe saw, when it ran.
    locks: Option<Value>,
    classifier: Vec<Value>,
}

impl Verdict {
    fn breaking(&self) -> bool {
        self.classifier.iter().any(|u| u["kind"] == "breaking")
    }

    fn locking(&self) -> bool {
        self.classifier.iter().any(|u| u["kind"] == "locking")
    }

    /// The lock probe's verdict: a read or write waited for work that grows with the table.
    fn probe_locking(&self) -> Option<bool> {
        let l = self.locks.as_ref()?;
        let waited = l["read waits"] == true || l["write waits"] == true;
        let grows = match l.get("seconds") {
            // MariaDB: measured against a large table.
            Some(_) => true,
            None => l["rewrote"] == true || l["built an index"] == true || l["scanned"] == true,
        };
        Some(waited && grows)
    }

    fn named_locks(&self) -> String {
        let locks: Vec<String> = self
            .classifier
            .iter()
            .filter(|u| u["kind"] == "locking")
            .map(|u| {
                format!(
                    "{} on {}",
                    u["lock"].as_str().unwrap_or("?"),
                    u["table"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if locks.is_empty() {
            "-".into()
        } else {
            locks.join(", ")
        }
    }
}

fn corpus_pods(s: &Server) -> Pods {
    let database = s.create_database("corpus");
    let mut pods = s.pods(test_python(), &database, s.port, &s.password);
    pods.env.retain(|(k, _)| k != "SLOW_MIGRATION_SECONDS");
    pods.env.push(("SLOW_MIGRATION_SECONDS".into(), "0".into()));
    pods
}

fn run_case(s: &Server, case: &str, expected: bool, lock_probe: bool) -> Result<Verdict, String> {
    let pods = corpus_pods(s);
    corpus_probe(&pods, case, "prepare");
    let locks = match s.engine {
        // Rolled back: the step then applies the migration for real.
        Engine::Postgresql => Some(corpus_probe(&pods, case, "locks")),
        // Applied for real: on a database of its own.
        Engine::Mysql if lock_probe => {
            let big = corpus_pods(s);
            corpus_probe(&big, case, "prepare");
            Some(corpus_probe(&big, case, "locks"))
        }
        Engine::Mysql => None,
    }
    .map(|out| serde_json::from_str::<Value>(out.trim()).unwrap());
    let exits = run_pod(&pods.containers(&[("CORPUS_CASE", case)], &[]));
    let (_, exit, _) = exits.last().unwrap();
    if exit.code != 0 {
        return Err(format!(
            "{case}: the step exited {}: {}",
            exit.code,
            pods.termination_message(None)
        ));
    }
    let summary = pods.summary(None);
    assert_eq!(
        summary["applied"],
        serde_json::json!(["corpus.0002_change"]),
        "{case}: {summary}"
    );
    let classifier: Vec<Value> = summary["unsafe_operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["migration"] == "corpus.0002_change")
        .cloned()
        .collect();
    let probe: BTreeMap<String, Option<String>> =
        serde_json::from_str(&corpus_probe(&pods, case, "probe")).unwrap();
    Ok(Verdict {
        case: case.to_owned(),
        expected,
        probe: probe
            .into_iter()
            .filter_map(|(action, error)| error.map(|e| format!("{action}: {e}")))
            .collect(),
        locks,
        classifier,
    })
}

fn corpus(engine: Engine) {
    let s = server(engine);
    let vendor = match engine {
        Engine::Postgresql => "postgresql",
        Engine::Mysql => "mysql",
    };
    let cases: Vec<(String, bool, bool)> = cases()
        .into_iter()
        .filter(|(_, c)| c["engines"].as_array().unwrap().iter().any(|e| e == vendor))
        .map(|(name, c)| {
            let probe = c["mysql_lock_probe"].as_bool().unwrap();
            (name, c["breaking"].as_bool().unwrap(), probe)
        })
        .collect();
    let queue = Mutex::new(cases.clone());
    let verdicts = Mutex::new(Vec::new());
    let failed = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some((case, expected, lock_probe)) = next else {
                        break;
                    };
                    match run_case(&s, &case, expected, lock_probe) {
                        Ok(verdict) => verdicts.lock().unwrap().push(verdict),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            });
        }
    });
    let mut verdicts = verdicts.into_inner().unwrap();
    verdicts.sort_by(|a, b| a.case.cmp(&b.case));
    let mut wrong = failed.into_inner().unwrap();
    eprintln!(
        "{engine:?}: case | previous release | classifier | traffic waits | classifier's locks | lock probe"
    );
    for v in &verdicts {
        let probe = !v.probe.is_empty();
        eprintln!(
            "{engine:?}: {} | {} | {} | {} | {} | {}",
            v.case,
            if probe { "breaks" } else { "works" },
            if v.breaking() { "breaking" } else { "-" },
            match v.probe_locking() {
                Some(true) => "waits",
                Some(false) => "no wait",
                None => "not measured",
            },
            v.named_locks(),
            v.locks.as_ref().map(Value::to_string).unwrap_or_default()
        );
        if let Some(waits) = v.probe_locking()
            && waits != v.locking()
        {
            wrong.push(format!(
                "{}: the classifier says {}, while a second connection {}: {} / {:?}",
                v.case,
                if v.locking() {
                    "locking"
                } else {
                    "no long lock"
                },
                if waits {
                    "waited for it"
                } else {
                    "did not wait for work that grows with the table"
                },
                v.locks.as_ref().unwrap(),
                v.classifier
            ));
        }
        if probe != v.expected {
            wrong.push(format!(
                "{}: the probe {} the previous release (expected {}): {:?}",
                v.case,
                if probe { "broke" } else { "did not break" },
                if v.expected { "a break" } else { "none" },
                v.probe
            ));
        }
        if v.breaking() != probe {
            wrong.push(format!(
                "{}: the classifier says {}, the previous release {}: {:?} / {:?}",
                v.case,
                if v.breaking() { "breaking" } else { "safe" },
                if probe { "broke" } else { "kept working" },
                v.classifier,
                v.probe
            ));
        }
    }
    assert!(wrong.is_empty(), "{engine:?}:\n{}", wrong.join("\n"));
    assert_eq!(verdicts.len(), cases.len(), "every case ran");
}

#[test]
fn the_classifier_agrees_with_the_previous_release_on_postgresql() {
    corpus(Engine::Postgresql);
}

#[test]
fn the_classifier_agrees_with_the_previous_release_on_mariadb() {
    corpus(Engine::Mysql);
}

/// `hold-back` chooses the kinds `deny` holds back, and `locking-min-rows` the table size
/// below which a locking operation is only reported: an index built without CONCURRENTLY
/// on a table of 3 rows.
#[test]
fn deny_holds_back_the_kinds_chosen_above_the_size_chosen() {
    let s = server(Engine::Postgresql);
    let step = |annotations: &[(&str, &str)]| {
        let pods = corpus_pods(&s);
        corpus_probe(&pods, "add_index", "prepare");
        let containers = pods.containers(&[("CORPUS_CASE", "add_index")], annotations);
        let exits = run_pod(&containers);
        let (_, exit, _) = exits.last().unwrap();
        (exit.code, exit.logs.clone(), pods.summary(None))
    };
    // Today's annotations: `deny` holds back what breaks the previous release only.
    let (code, logs, summary) = step(&[("unsafe-migrations", "deny")]);
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("blocks traffic (reported)"), "{logs}");
    assert_eq!(
        summary["unsafe_operations"][0]["kind"], "locking",
        "{summary}"
    );
    assert_eq!(summary["unsafe_operations"][0]["rows"], 3, "{summary}");
    // Locking too, but the table is below the default size.
    let (code, logs, _) = step(&[
        ("unsafe-migrations", "deny"),
        ("hold-back", "breaking,locking"),
    ]);
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.contains("blocks traffic (reported only: fewer than 100000 rows)"),
        "{logs}"
    );
    // Locking at any size.
    let (code, logs, summary) = step(&[
        ("unsafe-migrations", "deny"),
        ("hold-back", "locking"),
        ("locking-min-rows", "0"),
    ]);
    assert_eq!(code, 5, "{logs}");
    assert_eq!(summary["result"], "locking-blocked", "{summary}");
    let message = summary["message"].as_str().unwrap();
    assert!(
        message.contains("holds SHARE (blocks writes) on corpus_item (~3 rows")
            && message.contains("use a non-blocking form"),
        "{message}"
    );
    assert!(logs.contains("blocks traffic (held back)"), "{logs}");
    assert!(
        summary["applied"].as_array().unwrap().is_empty(),
        "{summary}"
    );
}
