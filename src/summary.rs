//! The Django step's machine-readable summary: one JSON object that
//! `django_migrate.py` writes to the termination log (at most 4 KiB), which the kubelet
//! puts into the pod's init container status, and which the controller and `status` read.

use serde::{Deserialize, Serialize};

use crate::names::{exit, phase, reason};

/// The result of a step that held back only operations that block traffic.
pub const LOCKING_BLOCKED_RESULT: &str = "locking-blocked";

/// What the step reported when it ended.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Summary {
    /// `migrate` or `wait`.
    pub mode: String,
    /// The phase it ended in (see [`crate::names::phase`]).
    pub phase: String,
    /// `nothing-pending`, `applied`, `applied-by-other-pod`, `timeout`, `failed`,
    /// `credentials-rejected`, `not-found`, `unsafe-blocked`, `locking-blocked`,
    /// `lock-unavailable` or `lock-lost`.
    pub result: String,
    pub exit_code: i32,
    /// One line for people: what happened, or the error.
    pub message: String,
    /// Migrations this pod applied, `app_label.name`.
    pub applied: Vec<String>,
    /// Migrations still pending when the step ended.
    pub pending: Vec<String>,
    /// The migration that failed, if one did.
    pub failed_migration: Option<String>,
    pub seconds: Seconds,
    /// Lock-timeout retries of `migrate`.
    pub retries: u32,
    /// Pending operations that break the release still serving.
    pub unsafe_operations: Vec<UnsafeOperation>,
}

/// Where the time went, in seconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Seconds {
    pub total: f64,
    /// Waiting for the database to accept a connection.
    pub database: f64,
    /// Waiting for the migration lock or for another pod's migrations.
    pub lock_wait: f64,
    /// Running `migrate`, retries included.
    pub migrate: f64,
}

/// A pending operation that breaks the release still serving.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct UnsafeOperation {
    /// `app_label.migration_name`.
    pub migration: String,
    /// The operation, e.g. `RemoveField(product.legacy_code)`.
    pub operation: String,
    /// `breaking` (the previous release's code fails against the migrated database) or
    /// `locking` (it holds a lock that blocks traffic for as long as it takes).
    pub kind: String,
    /// Why it hurts the running service.
    pub why: String,
    /// For `locking`: the lock, the table and its estimated size.
    pub lock: Option<String>,
    pub table: Option<String>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
    /// True when it was applied (allowed by name, or `warn`).
    pub applied: bool,
    /// True when `deny` held it back (and with it the whole plan).
    pub held_back: bool,
}

impl Summary {
    /// Parses a termination message; `None` when it is not a summary (the log tail the
    /// kubelet falls back to when the step died before writing one, or an older release's
    /// prose message).
    pub fn parse(message: &str) -> Option<Summary> {
        let message = message.trim();
        if !message.starts_with('{') {
            return None;
        }
        serde_json::from_str(message).ok()
    }
}

/// The condition reason for a step that exited with `code`, in `phase` with `result`
/// (when known).
pub fn failure_reason(code: i32, phase_name: Option<&str>, result: Option<&str>) -> &'static str {
    match code {
        exit::UNSAFE if result == Some(LOCKING_BLOCKED_RESULT) => reason::LOCKING_BLOCKED,
        exit::TIMEOUT if phase_name == Some(phase::DATABASE) => reason::DATABASE_UNREACHABLE,
        exit::TIMEOUT => reason::LOCK_TIMEOUT,
        exit::CREDENTIALS => reason::CREDENTIALS_REJECTED,
        exit::NOT_FOUND => reason::DJANGO_NOT_FOUND,
        exit::UNSAFE => reason::UNSAFE_BLOCKED,
        exit::LOCK if phase_name == Some(phase::MIGRATING) => reason::LOCK_LOST,
        exit::LOCK => reason::LOCK_UNAVAILABLE,
        _ => reason::FAILED,
    }
}

/// True for the reasons that mean the step ended in failure (an Event is sent).
pub fn is_failure(r: &str) -> bool {
    !matches!(r, reason::MIGRATED | reason::PENDING | reason::RUNNING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_program_writes_and_ignores_the_rest() {
        let s = Summary::parse(
            r#"{"mode":"migrate","phase":"done","result":"applied","exit_code":0,
                "message":"applied 1 migration","applied":["shop.0002_x"],
                "seconds":{"total":1.5,"database":0.1,"lock_wait":0.2,"migrate":1.0},
                "retries":2,"unsafe_operations":[],"future_field":1}"#,
        )
        .unwrap();
        assert_eq!(s.applied, ["shop.0002_x"]);
        assert_eq!(s.retries, 2);
        assert_eq!(s.seconds.lock_wait, 0.2);
        assert_eq!(Summary::parse("migrate: applied 2 migrations"), None);
        assert_eq!(Summary::parse("{not json"), None);
    }

    #[test]
    fn timeouts_are_told_apart_by_phase() {
        assert_eq!(
            failure_reason(1, Some("database"), None),
            reason::DATABASE_UNREACHABLE
        );
        assert_eq!(failure_reason(1, Some("lock"), None), reason::LOCK_TIMEOUT);
        assert_eq!(failure_reason(5, None, None), reason::UNSAFE_BLOCKED);
        assert_eq!(failure_reason(137, None, None), reason::FAILED);
        assert_eq!(
            failure_reason(6, Some("lock"), None),
            reason::LOCK_UNAVAILABLE
        );
        assert_eq!(
            failure_reason(6, Some("migrating"), None),
            reason::LOCK_LOST
        );
        assert_eq!(
            failure_reason(5, Some("migrating"), Some("locking-blocked")),
            reason::LOCKING_BLOCKED
        );
    }
}
