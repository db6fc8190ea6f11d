//! The Django step's machine-readable summary: one JSON object that the step (the
//! `summary` module of `src/injected/step`) writes to the termination log (at most 4 KiB),
//! which the kubelet puts into the pod's init container status, and which the controller
//! and `status` read.
//!
//! When the summary must shrink, the program cuts prose first, then lists, never the
//! counts: a step that applied 185 migrations says so even if it names only a few.

use serde::{Deserialize, Serialize};

use crate::names::LOG_PREFIX;

/// Declares a string enum: serde names, `as_str`, `ALL`, and `Unknown` for values a newer
/// program may write.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
            /// A value this release does not know (written by a newer program).
            #[serde(other)]
            Unknown,
        }

        impl $name {
            /// Every known value.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown => "unknown",
                }
            }

            /// The value named `s`, or [`Self::Unknown`].
            pub fn parse(s: &str) -> $name {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).unwrap_or($name::Unknown)
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::Unknown
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use string_enum;

string_enum! {
    /// The phase the step was in: the summary's `phase` when it ended, the `[phase]` of
    /// its log lines while it runs.
    Phase {
        Setup = "setup",
        Database = "database",
        Lock = "lock",
        Waiting = "waiting",
        Migrating = "migrating",
        Done = "done",
    }
}

string_enum! {
    /// How the step ended: the summary's `result`.
    StepResult {
        NothingPending = "nothing-pending",
        Applied = "applied",
        AppliedByOtherPod = "applied-by-other-pod",
        Timeout = "timeout",
        Failed = "failed",
        CredentialsRejected = "credentials-rejected",
        NotFound = "not-found",
        UnsafeBlocked = "unsafe-blocked",
        LockingBlocked = "locking-blocked",
        LockUnavailable = "lock-unavailable",
        LockLost = "lock-lost",
        /// A migration that is not deferred must run after one that is; nothing applied.
        DeferredBlocked = "deferred-blocked",
        /// Every migration was applied and recorded, then a `post_migrate` receiver raised;
        /// the release's run is not recorded, so the next pod runs it again.
        PostMigrateFailed = "post-migrate-failed",
        /// A migration failed after some of its statements ran and stayed (a backend
        /// without transactional DDL, or a non-atomic migration).
        HalfApplied = "half-applied",
        /// Plan mode: the plan was made, and the rollout would pass.
        Planned = "planned",
    }
}

impl Phase {
    /// The phase of one of the step's log lines (`django-migrate migrate [lock]: ...`).
    pub fn of_log_line(line: &str) -> Option<Phase> {
        let rest = line.trim_start().strip_prefix(LOG_PREFIX)?;
        let (_, rest) = rest.split_once('[')?;
        let (phase, _) = rest.split_once("]:")?;
        Some(Phase::parse(phase)).filter(|p| *p != Phase::Unknown)
    }
}

/// What the step reported when it ended.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Summary {
    /// `migrate`, `wait`, `contract` (the contract run's Job) or `plan`.
    pub mode: String,
    /// The phase it ended in.
    pub phase: Phase,
    pub result: StepResult,
    pub exit_code: i32,
    /// One line for people: what happened, or the error.
    pub message: String,
    /// Migrations this pod applied, `app_label.name` (the first ones, when cut).
    pub applied: Vec<String>,
    /// Migrations still pending when the step ended (the first ones, when cut).
    pub pending: Vec<String>,
    /// The migration that failed, if one did.
    pub failed_migration: Option<String>,
    pub seconds: Seconds,
    /// Lock-timeout retries of `migrate`.
    pub retries: u32,
    /// Pending operations that break the release still serving or block traffic (the
    /// first ones, when cut).
    pub unsafe_operations: Vec<UnsafeOperation>,
    /// Pending migrations left for the contract run (the first ones, when cut).
    pub deferred: Vec<Deferred>,
    /// The longest `delay` of the deferred migrations: the contract run waits at least this
    /// long after the rollout completed. Never cut.
    pub contract_delay_seconds: Option<f64>,
    /// The lengths of the lists, never cut; absent from summaries of earlier releases.
    pub counts: Option<Counts>,
    /// Whether the step ended without starting Django; absent when the fast path is off.
    pub fast_path: Option<FastPath>,
    /// Whether this pod gave its release the `pre_migrate`/`post_migrate` run; absent when
    /// the step did not get that far, or on the fast path (the release had it).
    pub post_migrate: Option<PostMigrate>,
    /// Plan mode's verdict and counts; the full report is a line of the step's log
    /// (`plan::Report`). Absent in every other mode.
    pub plan: Option<crate::plan::Outline>,
}

/// The release's `pre_migrate`/`post_migrate` run, which `migrate` gives every release once.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PostMigrate {
    /// Whether this pod ran it (and it succeeded).
    pub ran: bool,
    /// The pod's release (its `pod-template-hash`), when it has one.
    pub release: Option<String>,
    /// Why it did not run here: it ran already, in another pod, or is turned off.
    pub why: Option<String>,
    /// The signal whose receiver raised (`post_migrate` or `pre_migrate`).
    pub failed: Option<String>,
    /// That receiver, `module.function`, when the traceback names it.
    pub receiver: Option<String>,
}

/// The fast path: the step's record in the database proved that nothing is pending, or
/// the doubt that sent the step down the full path.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct FastPath {
    pub taken: bool,
    /// How it knew, or which doubt made it start Django.
    pub why: String,
    /// After a full run: whether the record for the next start was written, and if not why.
    pub recorded: Option<String>,
}

/// A pending migration the step left for the contract run.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Deferred {
    /// `app_label.migration_name`.
    pub migration: String,
    /// Why it waits: marked `Safe.after_deploy()`, named in `django-migrate.io/defer`, or
    /// breaking the release still serving under `unsafe-migrations: defer`.
    pub why: String,
    /// django-safemigrate's `delay`, in seconds.
    pub delay: Option<f64>,
}

/// How many of each the step saw.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct Counts {
    pub applied: u64,
    pub pending: u64,
    /// Unsafe operations found, both kinds.
    #[serde(rename = "unsafe")]
    pub unsafe_operations: u64,
    /// Unsafe operations held back by `deny`.
    pub held_back: u64,
    /// Pending migrations left for the contract run.
    pub deferred: u64,
}

/// Where the time went, in seconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Seconds {
    /// From the container's start to the end of the step.
    pub total: f64,
    /// Starting Django (the management command's `shell`); 0 on the fast path.
    pub django_setup: f64,
    /// Waiting for the database to accept a connection.
    pub database: f64,
    /// Waiting for the migration lock or for another pod's migrations.
    pub lock_wait: f64,
    /// Running `migrate`, retries included.
    pub migrate: f64,
    /// Running `migrate` with nothing to apply, for the release's `post_migrate`.
    pub post_migrate: f64,
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

fn len(items: usize) -> u64 {
    u64::try_from(items).unwrap_or(u64::MAX)
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

    /// Migrations this pod applied: the count, else the list's length.
    pub fn applied_count(&self) -> u64 {
        self.counts
            .map_or_else(|| len(self.applied.len()), |c| c.applied)
    }

    /// Migrations left for the contract run: the count, else the list's length.
    pub fn deferred_count(&self) -> u64 {
        self.counts
            .map_or_else(|| len(self.deferred.len()), |c| c.deferred)
    }

    /// Unsafe operations held back: the count, else the list's.
    pub fn held_back_count(&self) -> u64 {
        self.counts.map_or_else(
            || {
                len(self
                    .unsafe_operations
                    .iter()
                    .filter(|u| u.held_back)
                    .count())
            },
            |c| c.held_back,
        )
    }
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
        assert_eq!((s.phase, s.result), (Phase::Done, StepResult::Applied));
        assert_eq!(s.retries, 2);
        assert!((s.seconds.lock_wait - 0.2).abs() < f64::EPSILON);
        assert_eq!(s.applied_count(), 1);
        assert_eq!(Summary::parse("migrate: applied 2 migrations"), None);
        assert_eq!(Summary::parse("{not json"), None);
    }

    #[test]
    fn counts_win_over_cut_lists() {
        let s = Summary::parse(
            r#"{"phase":"done","result":"applied","applied":["a.0001"],
                "counts":{"applied":185,"pending":0,"unsafe":3,"held_back":2}}"#,
        )
        .unwrap();
        assert_eq!((s.applied_count(), s.held_back_count()), (185, 2));
    }

    #[test]
    fn the_phase_of_a_running_step_comes_from_its_log() {
        assert_eq!(
            Phase::of_log_line("django-migrate migrate [lock]: waiting for the migration lock"),
            Some(Phase::Lock)
        );
        assert_eq!(
            Phase::of_log_line("django-migrate wait [database]: attempt 2: not reachable"),
            Some(Phase::Database)
        );
        assert_eq!(Phase::of_log_line("Operations to perform: [x]: y"), None);
        assert_eq!(Phase::of_log_line(""), None);
    }
}
