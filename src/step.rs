//! What the migration step of a pod is doing, decided once.
//!
//! The controller turns a [`StepState`] into the pod's condition and `status` into its
//! row, so the two cannot disagree: both read the same init container statuses (the
//! controller's lean cache or a full `Pod`, converted by [`StepStatus::from_container`])
//! through [`StepState::of`]. The condition's [`Reason`]s are an enum with the full list
//! for documentation and tests, as are the summary's phases and results.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};
use serde::{Deserialize, Serialize};

use crate::names::{
    CODE_CONTAINER, CODE_MOUNT_PATH, CODE_VOLUME, MIGRATE_CONTAINER, PROGRAM_FILE, WAIT_CONTAINER,
    exit,
};
use crate::summary::{Phase, StepResult, Summary, string_enum};

string_enum! {
    /// The reason of the `django-migrate.io/migrated` condition: each tells a different
    /// state apart.
    Reason {
        /// The step succeeded: migrations applied (here or by another pod) or nothing
        /// pending.
        Migrated = "Migrated",
        /// The step has not started yet (earlier init containers, image pull, scheduling).
        Pending = "MigrationStepPending",
        /// The step is running: waiting for the database, the lock, or migrating.
        Running = "MigrationStepRunning",
        /// Gave up waiting for the database.
        DatabaseUnreachable = "DatabaseUnreachable",
        /// The database rejected the credentials.
        CredentialsRejected = "DatabaseCredentialsRejected",
        /// Gave up waiting for the migration lock or for another pod's migrations.
        LockTimeout = "MigrationLockTimeout",
        /// A migration failed.
        Failed = "MigrationFailed",
        /// The settings or the management command were not found.
        DjangoNotFound = "DjangoNotFound",
        /// A pending migration is unsafe for the release still serving and was held back.
        UnsafeBlocked = "UnsafeMigrationBlocked",
        /// A pending migration would hold a lock that blocks traffic on a large table and
        /// was held back (`hold-back: locking`).
        LockingBlocked = "LockingMigrationBlocked",
        /// The code copy container failed.
        CodeCopyFailed = "MigrationCodeCopyFailed",
        /// The step cannot be created with the code as an image volume: the node's
        /// runtime does not mount image volumes (or the image cannot be read).
        CodeUnavailable = "MigrationCodeUnavailable",
        /// The migration lock cannot be held through the step's connection (a pooler in
        /// statement mode); nothing was applied.
        LockUnavailable = "MigrationLockUnavailable",
        /// The migration lock was lost while migrating (its connection was closed); the
        /// step stopped before applying anything more.
        LockLost = "MigrationLockLost",
        /// A migration must run after a deferred one (left for the contract run) and is
        /// not deferred itself; nothing was applied.
        DeferredBlocked = "MigrationBlockedByDeferred",
        /// Every migration was applied, then a `post_migrate` receiver raised; the next pod
        /// of the release runs `post_migrate` again.
        PostMigrateFailed = "PostMigrateFailed",
        /// A migration failed after some of its statements ran and stayed: every next pod
        /// fails the same way until the database is fixed by hand.
        HalfApplied = "MigrationHalfApplied",
    }
}

impl Reason {
    /// The reasons that mean the step ended in failure (an Event is sent, a failure is
    /// counted, `status` exits 1).
    pub fn is_failure(self) -> bool {
        !matches!(self, Reason::Migrated | Reason::Pending | Reason::Running)
    }

    /// The reason for a step that exited with `code`, in `phase` with `result` (when the
    /// termination message was a summary).
    pub fn of_exit(code: i32, phase: Option<Phase>, result: Option<StepResult>) -> Reason {
        match code {
            exit::OK => Reason::Migrated,
            exit::UNSAFE if result == Some(StepResult::LockingBlocked) => Reason::LockingBlocked,
            exit::UNSAFE if result == Some(StepResult::DeferredBlocked) => Reason::DeferredBlocked,
            exit::UNSAFE => Reason::UnsafeBlocked,
            exit::TIMEOUT if phase == Some(Phase::Database) => Reason::DatabaseUnreachable,
            exit::TIMEOUT => Reason::LockTimeout,
            exit::CREDENTIALS => Reason::CredentialsRejected,
            exit::NOT_FOUND => Reason::DjangoNotFound,
            exit::LOCK if phase == Some(Phase::Migrating) => Reason::LockLost,
            exit::LOCK => Reason::LockUnavailable,
            exit::MIGRATE_FAILED if result == Some(StepResult::PostMigrateFailed) => {
                Reason::PostMigrateFailed
            }
            exit::MIGRATE_FAILED if result == Some(StepResult::HalfApplied) => Reason::HalfApplied,
            _ => Reason::Failed,
        }
    }
}

/// The status of one injected init container, its termination message already read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStatus {
    /// One of the injected init container names.
    pub name: &'static str,
    pub running: bool,
    /// How the current run ended, if it did.
    pub terminated: Option<Exit>,
    /// How the previous run ended (kept by the kubelet across restarts).
    pub last_terminated: Option<Exit>,
    /// Why the kubelet cannot create or start it (`reason: message`), while it retries.
    pub cannot_start: Option<Box<str>>,
}

/// Waiting reasons of a container the kubelet fails to create or start, and retries
/// without end.
const CANNOT_START: [&str; 2] = ["CreateContainerError", "RunContainerError"];

/// How a run of an injected init container ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exit {
    pub code: i32,
    /// The summary's phase, when the message was a summary.
    pub phase: Option<Phase>,
    /// The summary's result, when the message was a summary.
    pub result: Option<StepResult>,
    /// The summary's message, else the raw termination message (log tail).
    pub message: Option<Box<str>>,
    /// This run applied migrations itself.
    pub applied: bool,
    /// This run applied operations that break the previous release.
    pub applied_unsafe: bool,
    /// The summary's numbers, for the controller's metrics.
    pub stats: StepStats,
}

/// The numbers of a step's summary that the metrics use (zero without a summary).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    pub seconds_total: f64,
    pub seconds_lock_wait: f64,
    /// Migrations this run applied itself.
    pub applied: u64,
    pub retries: u64,
    /// Unsafe operations held back (`unsafe-migrations: deny`).
    pub held_back: u64,
    /// It ended on the fast path, without starting Django.
    pub fast_path: bool,
}

impl Exit {
    /// Reads a terminated state: its code and, when the message is a summary, what the
    /// step reported.
    pub fn read(t: &ContainerStateTerminated) -> Exit {
        let raw = t
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let summary = raw.and_then(Summary::parse);
        let message = summary
            .as_ref()
            .map(|s| s.message.trim())
            .filter(|m| !m.is_empty())
            .or(raw)
            .map(Into::into);
        Exit {
            code: t.exit_code,
            phase: summary.as_ref().map(|s| s.phase),
            result: summary.as_ref().map(|s| s.result),
            message,
            applied: summary.as_ref().is_some_and(|s| s.applied_count() > 0),
            applied_unsafe: summary.as_ref().is_some_and(|s| {
                s.unsafe_operations
                    .iter()
                    .any(|u| u.applied && u.kind != "locking")
            }),
            stats: summary
                .as_ref()
                .map(|s| StepStats {
                    seconds_total: s.seconds.total,
                    seconds_lock_wait: s.seconds.lock_wait,
                    applied: s.applied_count(),
                    retries: u64::from(s.retries),
                    held_back: s.held_back_count(),
                    fast_path: s.fast_path.as_ref().is_some_and(|f| f.taken),
                })
                .unwrap_or_default(),
        }
    }

    /// For people: the summary's message (or the raw termination message), prefixed with
    /// the exit code on failure.
    fn describe(&self, container: &str) -> String {
        match (self.code, self.message.as_deref()) {
            (0, Some(m)) => m.to_owned(),
            (0, None) => format!("init container {container} exited 0"),
            (c, Some(m)) => format!("exit code {c}: {m}"),
            (c, None) => format!("init container {container} exited with code {c}"),
        }
    }
}

impl StepStatus {
    /// The injected init container's status, from a full container status; `None` for
    /// containers the webhook did not inject.
    pub fn from_container(s: &ContainerStatus) -> Option<StepStatus> {
        StepStatus::read(&s.name, s.state.as_ref(), s.last_state.as_ref())
    }

    /// The status of init container `name` from its current and last state; `None` when
    /// the webhook did not inject it.
    pub fn read(
        name: &str,
        state: Option<&ContainerState>,
        last_state: Option<&ContainerState>,
    ) -> Option<StepStatus> {
        let name = [CODE_CONTAINER, MIGRATE_CONTAINER, WAIT_CONTAINER]
            .into_iter()
            .find(|n| *n == name)?;
        let terminated =
            |state: Option<&ContainerState>| state?.terminated.as_ref().map(Exit::read);
        let cannot_start = state.and_then(|st| st.waiting.as_ref()).and_then(|w| {
            let reason = w.reason.as_deref().filter(|r| CANNOT_START.contains(r))?;
            Some(match w.message.as_deref() {
                Some(m) => format!("{reason}: {m}").into(),
                None => reason.into(),
            })
        });
        Some(StepStatus {
            name,
            running: state.is_some_and(|st| st.running.is_some()),
            terminated: terminated(state),
            last_terminated: terminated(last_state),
            cannot_start,
        })
    }
}

/// What a pod's migration step is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum StepState {
    /// Not started: earlier init containers, image pull, scheduling.
    Pending { container: Option<&'static str> },
    /// Running: waiting for the database, the lock, other pods, or migrating.
    Running { container: &'static str },
    /// Ended with exit 0.
    Succeeded { container: &'static str, exit: Exit },
    /// The code copy or the step failed; a restarted step keeps its last failure until it
    /// succeeds.
    Failed {
        container: &'static str,
        reason: Reason,
        exit: Exit,
    },
    /// The code comes from an image volume and the kubelet cannot create the step: what
    /// a node whose runtime does not mount image volumes reports, again and again.
    CodeUnavailable {
        container: &'static str,
        why: Box<str>,
    },
    /// The pod has the step but neither the code copy nor the code image volume: an API
    /// server that does not serve `volumes[].image` removed the volume and its mounts.
    CodeRemoved { container: &'static str },
}

/// True when a container's command or args run the step's program from the code volume
/// (an earlier release's step carried its code in an environment variable instead).
pub fn runs_program<'a>(command_and_args: impl IntoIterator<Item = &'a str>) -> bool {
    command_and_args.into_iter().any(|arg| {
        arg.strip_prefix(CODE_MOUNT_PATH)
            .and_then(|rest| rest.strip_prefix('/'))
            == Some(PROGRAM_FILE)
    })
}

/// The injected step of a pod whose spec has no code for it (see
/// [`StepState::CodeRemoved`]), from its init containers (each a name and whether it
/// [`runs_program`]) and the names of its volumes.
pub fn code_removed<'a>(
    init_containers: impl IntoIterator<Item = (&'a str, bool)>,
    volumes: impl IntoIterator<Item = &'a str>,
) -> Option<&'static str> {
    let mut step = None;
    for (name, runs_program) in init_containers {
        match name {
            CODE_CONTAINER => return None,
            MIGRATE_CONTAINER if runs_program => step = Some(MIGRATE_CONTAINER),
            WAIT_CONTAINER if runs_program => step = Some(WAIT_CONTAINER),
            _ => {}
        }
    }
    step.filter(|_| volumes.into_iter().all(|v| v != CODE_VOLUME))
}

impl StepState {
    /// The state of a pod whose step has no code (`code_removed`), else
    /// [`StepState::of`] its statuses.
    pub fn of_pod(statuses: &[StepStatus], code_removed: Option<&'static str>) -> StepState {
        match code_removed {
            Some(container) => StepState::CodeRemoved { container },
            None => StepState::of(statuses),
        }
    }

    /// The state, from the statuses of the injected init containers.
    pub fn of(statuses: &[StepStatus]) -> StepState {
        let find = |name: &str| statuses.iter().find(|s| s.name == name);
        // The code copy comes first; when it fails, the step never starts.
        if let Some(copy) = find(CODE_CONTAINER) {
            let ended = copy.terminated.as_ref().or(copy.last_terminated.as_ref());
            if let Some(exit) = ended.filter(|e| e.code != 0) {
                return StepState::Failed {
                    container: CODE_CONTAINER,
                    reason: Reason::CodeCopyFailed,
                    exit: exit.clone(),
                };
            }
        }
        let Some(step) = find(MIGRATE_CONTAINER).or_else(|| find(WAIT_CONTAINER)) else {
            return StepState::Pending { container: None };
        };
        let container = step.name;
        if let Some(exit) = &step.terminated {
            if exit.code == 0 {
                return StepState::Succeeded {
                    container,
                    exit: exit.clone(),
                };
            }
            return StepState::failed(container, exit);
        }
        if let Some(exit) = step.last_terminated.as_ref().filter(|e| e.code != 0) {
            return StepState::failed(container, exit);
        }
        // Without a code copy the program comes from the image volume.
        if let Some(why) = step
            .cannot_start
            .as_ref()
            .filter(|_| find(CODE_CONTAINER).is_none())
        {
            return StepState::CodeUnavailable {
                container,
                why: why.clone(),
            };
        }
        if step.running {
            StepState::Running { container }
        } else {
            StepState::Pending {
                container: Some(container),
            }
        }
    }

    fn failed(container: &'static str, exit: &Exit) -> StepState {
        StepState::Failed {
            container,
            reason: Reason::of_exit(exit.code, exit.phase, exit.result),
            exit: exit.clone(),
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            StepState::Pending { .. } => Reason::Pending,
            StepState::Running { .. } => Reason::Running,
            StepState::Succeeded { .. } => Reason::Migrated,
            StepState::Failed { reason, .. } => *reason,
            StepState::CodeUnavailable { .. } | StepState::CodeRemoved { .. } => {
                Reason::CodeUnavailable
            }
        }
    }

    /// The condition's status: `True` once the step succeeded.
    pub fn condition_status(&self) -> &'static str {
        if matches!(self, StepState::Succeeded { .. }) {
            "True"
        } else {
            "False"
        }
    }

    /// One line for people: the condition's message.
    pub fn message(&self) -> String {
        match self {
            StepState::Pending { container: None } => "waiting for the init containers".to_owned(),
            StepState::Pending {
                container: Some(name),
            } => format!("waiting for init container {name} to start"),
            StepState::Running { container } => format!(
                "init container {container} is running: waiting for the database, the migration lock, or migrating (see its log)"
            ),
            StepState::Failed {
                container, exit, ..
            } if *container == CODE_CONTAINER => {
                format!("{container} {}", exit.describe(container))
            }
            StepState::Succeeded { container, exit }
            | StepState::Failed {
                container, exit, ..
            } => exit.describe(container),
            StepState::CodeUnavailable { container, why } => format!(
                "init container {container} cannot be created with the code as image volume {CODE_VOLUME} ({why}): this node's container runtime may not mount image volumes (codeDelivery imageVolume needs containerd 2.1+ or CRI-O 1.31+ on every node; see django-migrate-webhook check), or use codeDelivery copy"
            ),
            StepState::CodeRemoved { container } => format!(
                "init container {container} has no code: the pod has neither init container {CODE_CONTAINER} nor volume {CODE_VOLUME}, so the API server removed the code image volume (it serves volumes[].image from Kubernetes 1.35, in 1.33 and 1.34 with the ImageVolume feature gate; see django-migrate-webhook check), or use codeDelivery copy"
            ),
        }
    }

    /// How the Django step's last run ended, if it did (not the code copy's).
    pub fn step_exit(&self) -> Option<&Exit> {
        match self {
            StepState::Succeeded { exit, .. } => Some(exit),
            StepState::Failed {
                container, exit, ..
            } if *container != CODE_CONTAINER => Some(exit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::exit;

    #[test]
    fn every_exit_code_and_phase_has_its_reason() {
        use Phase::{Database, Lock, Migrating};
        let cases = [
            (exit::OK, None, None, Reason::Migrated),
            (
                exit::TIMEOUT,
                Some(Database),
                None,
                Reason::DatabaseUnreachable,
            ),
            (exit::TIMEOUT, Some(Lock), None, Reason::LockTimeout),
            (exit::CREDENTIALS, None, None, Reason::CredentialsRejected),
            (exit::NOT_FOUND, None, None, Reason::DjangoNotFound),
            (exit::UNSAFE, None, None, Reason::UnsafeBlocked),
            (
                exit::UNSAFE,
                Some(Migrating),
                Some(StepResult::LockingBlocked),
                Reason::LockingBlocked,
            ),
            (exit::LOCK, Some(Lock), None, Reason::LockUnavailable),
            (exit::LOCK, Some(Migrating), None, Reason::LockLost),
            (exit::MIGRATE_FAILED, None, None, Reason::Failed),
            (
                exit::MIGRATE_FAILED,
                Some(Migrating),
                Some(StepResult::PostMigrateFailed),
                Reason::PostMigrateFailed,
            ),
            (
                exit::MIGRATE_FAILED,
                Some(Migrating),
                Some(StepResult::HalfApplied),
                Reason::HalfApplied,
            ),
            (137, None, None, Reason::Failed),
        ];
        for (code, phase, result, reason) in cases {
            assert_eq!(Reason::of_exit(code, phase, result), reason, "{code}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_values_are_kept_apart() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), *r);
        }
        let p: Phase = serde_json::from_str("\"contracting\"").unwrap();
        assert_eq!(p, Phase::Unknown);
        let r: StepResult = serde_json::from_str("\"applied-by-other-pod\"").unwrap();
        assert_eq!(r, StepResult::AppliedByOtherPod);
        assert_eq!(
            serde_json::to_string(&Reason::LockLost).unwrap(),
            "\"MigrationLockLost\""
        );
    }

    fn statuses(init: serde_json::Value) -> Vec<StepStatus> {
        let init: Vec<ContainerStatus> = serde_json::from_value(init).unwrap();
        init.iter().filter_map(StepStatus::from_container).collect()
    }

    #[allow(clippy::needless_pass_by_value, reason = "built inline by each case")]
    fn status(name: &str, state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "x", "imageID": "", "ready": false,
                           "restartCount": 0, "state": state, "lastState": last})
    }

    fn summary(code: i32, phase: &str, result: &str, message: &str) -> String {
        serde_json::json!({"mode": "migrate", "phase": phase, "result": result,
                           "exit_code": code, "message": message, "applied": ["a.0001"]})
        .to_string()
    }

    /// A step whose code image volume the API server removed is named at once, whatever
    /// its container does; a pod with either delivery is read from its statuses.
    #[test]
    fn a_step_without_its_code_in_the_spec_says_the_code_was_removed() {
        assert!(runs_program(["python3", "/django-migrate/step.pyz"]));
        assert!(!runs_program(["python3", "-c", "$(DJANGO_MIGRATE_CODE)"]));
        assert!(!runs_program(["python3", "/django-migrate/other.py"]));
        let step = (MIGRATE_CONTAINER, true);
        assert_eq!(
            code_removed([("setup", false), step], ["data"]),
            Some(MIGRATE_CONTAINER)
        );
        assert_eq!(
            code_removed([(WAIT_CONTAINER, true)], []),
            Some(WAIT_CONTAINER)
        );
        assert_eq!(code_removed([step], ["data", CODE_VOLUME]), None);
        assert_eq!(code_removed([(CODE_CONTAINER, false), step], []), None);
        assert_eq!(code_removed([("setup", false)], ["data"]), None);
        // An earlier release's step, its code in an environment variable: not removed.
        assert_eq!(code_removed([(MIGRATE_CONTAINER, false)], []), None);

        let failed = statuses(serde_json::json!([status(
            MIGRATE_CONTAINER,
            serde_json::json!({"terminated": {"exitCode": 2, "reason": "Error",
                "message": "python3: can't open file '/django-migrate/step.pyz'"}}),
            serde_json::json!({})
        )]));
        let state = StepState::of_pod(&failed, Some(MIGRATE_CONTAINER));
        assert_eq!(state.reason(), Reason::CodeUnavailable);
        assert_eq!(state.condition_status(), "False");
        let message = state.message();
        assert!(
            message.contains("removed the code image volume"),
            "{message}"
        );
        assert!(message.contains("ImageVolume feature gate"), "{message}");
        assert_eq!(state.step_exit(), None);
        assert_eq!(
            StepState::of_pod(&failed, None).reason(),
            Reason::of_exit(2, None, None)
        );
    }

    /// A step the kubelet cannot create: with the code as an image volume (no copy) it is
    /// named; with a code copy it stays pending, as before.
    #[test]
    fn a_step_that_cannot_be_created_without_a_copy_says_the_code_is_unavailable() {
        let waiting = serde_json::json!({"waiting": {"reason": "CreateContainerError",
            "message": "failed to generate spec: failed to mkdir \"\""}});
        let state = StepState::of(&statuses(serde_json::json!([status(
            MIGRATE_CONTAINER,
            waiting.clone(),
            serde_json::json!({})
        )])));
        assert_eq!(state.reason(), Reason::CodeUnavailable);
        assert!(state.reason().is_failure());
        assert_eq!(state.condition_status(), "False");
        let message = state.message();
        assert!(message.contains("failed to mkdir"), "{message}");
        assert!(message.contains("containerd 2.1+"), "{message}");
        assert_eq!(state.step_exit(), None);

        let copied = StepState::of(&statuses(serde_json::json!([
            status(
                CODE_CONTAINER,
                serde_json::json!({"terminated": {"exitCode": 0}}),
                serde_json::json!({})
            ),
            status(MIGRATE_CONTAINER, waiting, serde_json::json!({})),
        ])));
        assert_eq!(copied.reason(), Reason::Pending);
        let pulling = StepState::of(&statuses(serde_json::json!([status(
            MIGRATE_CONTAINER,
            serde_json::json!({"waiting": {"reason": "PodInitializing"}}),
            serde_json::json!({})
        )])));
        assert_eq!(pulling.reason(), Reason::Pending);
    }

    #[test]
    fn success_carries_the_summary_message() {
        let done = summary(0, "done", "applied", "applied 1 migrations in 1.0s");
        let state = StepState::of(&statuses(serde_json::json!([
            status(
                CODE_CONTAINER,
                serde_json::json!({"terminated": {"exitCode": 0}}),
                serde_json::json!({})
            ),
            status(
                MIGRATE_CONTAINER,
                serde_json::json!({"terminated": {"exitCode": 0, "message": done}}),
                serde_json::json!({})
            ),
        ])));
        assert_eq!(
            (state.condition_status(), state.reason()),
            ("True", Reason::Migrated)
        );
        assert_eq!(state.message(), "applied 1 migrations in 1.0s");
        assert!(state.step_exit().is_some_and(|e| e.applied));
    }

    #[test]
    fn failures_get_a_reason_per_cause_and_a_restarted_step_keeps_it() {
        let cases = [
            (
                summary(2, "migrating", "failed", "migration a.0002 failed: boom"),
                Reason::Failed,
            ),
            (
                summary(1, "database", "timeout", "gave up"),
                Reason::DatabaseUnreachable,
            ),
            (
                summary(1, "lock", "timeout", "gave up"),
                Reason::LockTimeout,
            ),
            (
                summary(3, "database", "credentials-rejected", "rejected"),
                Reason::CredentialsRejected,
            ),
            (
                summary(4, "setup", "not-found", "manage.py not found"),
                Reason::DjangoNotFound,
            ),
            (
                summary(5, "migrating", "unsafe-blocked", "held back"),
                Reason::UnsafeBlocked,
            ),
            (
                summary(5, "migrating", "locking-blocked", "held back"),
                Reason::LockingBlocked,
            ),
            (
                summary(6, "lock", "lock-unavailable", "statement pooling"),
                Reason::LockUnavailable,
            ),
            (
                "Traceback (most recent call last): ...".to_owned(),
                Reason::Failed,
            ),
        ];
        for (message, expected) in cases {
            let code = Summary::parse(&message).map_or(2, |s| s.exit_code);
            let failed = serde_json::json!({"terminated": {"exitCode": code, "message": message}});
            let state = StepState::of(&statuses(serde_json::json!([status(
                MIGRATE_CONTAINER,
                failed.clone(),
                serde_json::json!({})
            )])));
            assert_eq!(
                (state.condition_status(), state.reason()),
                ("False", expected),
                "{message}"
            );
            assert!(
                state.message().starts_with(&format!("exit code {code}: ")),
                "{}",
                state.message()
            );
            assert!(expected.is_failure());
            let restarted = StepState::of(&statuses(serde_json::json!([status(
                MIGRATE_CONTAINER,
                serde_json::json!({"running": {}}),
                failed
            )])));
            assert_eq!(restarted.reason(), expected);
        }
    }

    #[test]
    fn pending_running_and_a_failed_code_copy() {
        let of = |init| StepState::of(&statuses(init));
        let running = of(serde_json::json!([status(
            MIGRATE_CONTAINER,
            serde_json::json!({"running": {}}),
            serde_json::json!({})
        )]));
        assert_eq!(running.reason(), Reason::Running);
        let waiting = of(serde_json::json!([status(
            WAIT_CONTAINER,
            serde_json::json!({"waiting": {}}),
            serde_json::json!({})
        )]));
        assert_eq!(waiting.reason(), Reason::Pending);
        assert_eq!(of(serde_json::json!([])).reason(), Reason::Pending);
        // The copy's failure counts in its last state too: it restarts before the step.
        let copy = of(serde_json::json!([status(
            CODE_CONTAINER,
            serde_json::json!({"waiting": {}}),
            serde_json::json!({"terminated": {"exitCode": 1, "message": "error: cannot write"}})
        )]));
        assert_eq!(copy.reason(), Reason::CodeCopyFailed);
        assert!(
            copy.message().contains("cannot write"),
            "{}",
            copy.message()
        );
        assert!(copy.step_exit().is_none());
    }
}
