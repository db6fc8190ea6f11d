//! Every name of the contract, in one place: labels, annotations, the condition type,
//! Event reasons, container, volume and env names, the log prefix and exit codes (the
//! condition's reasons are the enum `step::Reason`, the summary's phases and results the
//! enums of `summary`).
//!
//! The engine, the controller, the CLI and the tests use these; the step
//! (`src/injected/step`) reads the env names and writes the log prefix and exit codes below
//! (a unit test checks that the two sides agree).

/// Prefix of every label and annotation the webhook reads or writes.
pub const PREFIX: &str = "django-migrate.io/";

// ---------------------------------------------------------------- labels

/// The opt-in label on the Deployment.
pub const INJECT_LABEL: &str = "django-migrate.io/inject";
/// Pod-template label that marks injected pods, so the controller watches only those.
pub const INJECTED_LABEL: &str = "django-migrate.io/injected";
/// On the admission policies of `policy` mode and their bindings: what each does
/// (`inject`, `settings` or `warnings`); `status` finds the injecting binding by it.
pub const POLICY_LABEL: &str = "django-migrate.io/policy";
/// On a contract Job and its pod: the Deployment it contracts.
pub const CONTRACT_FOR_LABEL: &str = "django-migrate.io/contract-for";
/// On a plan Job and its pod (`plan`, `inject --plan-job`): the Deployment it plans for.
pub const PLAN_FOR_LABEL: &str = "django-migrate.io/plan-for";
/// On a contract Job: the hash of the pod template it was built from.
pub const CONTRACT_RELEASE_ANNOTATION: &str = "django-migrate.io/contract-release";

// ---------------------------------------------------------------- annotations

pub const CONTAINER: &str = "django-migrate.io/container";
pub const MODE: &str = "django-migrate.io/mode";
pub const MANAGE_PY: &str = "django-migrate.io/manage-py";
pub const PYTHON: &str = "django-migrate.io/python";
pub const DATABASE: &str = "django-migrate.io/database";
pub const MANAGE_COMMAND: &str = "django-migrate.io/manage-command";
pub const WAIT_TIMEOUT: &str = "django-migrate.io/wait-timeout";
pub const MIGRATE_TIMEOUT: &str = "django-migrate.io/migrate-timeout";
pub const LOCK_TIMEOUT: &str = "django-migrate.io/lock-timeout";
pub const UNSAFE_MIGRATIONS: &str = "django-migrate.io/unsafe-migrations";
pub const ALLOW_UNSAFE: &str = "django-migrate.io/allow-unsafe";
pub const HOLD_BACK: &str = "django-migrate.io/hold-back";
pub const LOCKING_MIN_ROWS: &str = "django-migrate.io/locking-min-rows";
pub const READINESS_GATE_ANNOTATION: &str = "django-migrate.io/readiness-gate";
pub const USE_IMAGE_ENTRYPOINT: &str = "django-migrate.io/use-image-entrypoint";
/// Migrations left for the contract run, by name.
pub const DEFER: &str = "django-migrate.io/defer";
/// Seconds the contract run waits after the rollout completed (at least).
pub const CONTRACT_DELAY: &str = "django-migrate.io/contract-delay";
/// `"false"` turns off the step's fast path (and its record table).
pub const FAST_PATH: &str = "django-migrate.io/fast-path";
/// `"false"`: a release with nothing to apply gets no `pre_migrate`/`post_migrate` run.
pub const POST_MIGRATE: &str = "django-migrate.io/post-migrate";
/// The settings module a wrapper management command (`nautobot-server`) loads, by dotted
/// name or file: with it, the fast path serves that command too.
pub const SETTINGS_MODULE: &str = "django-migrate.io/settings-module";

/// Written by the controller once a contract run succeeded: the releases (hashes of their
/// steps, see `contract_job::release_hash`) of the Deployment's older ReplicaSets, which may
/// read what the contract dropped. A template of one of them is warned about at admission
/// (`kubectl rollout undo`).
pub const CONTRACTED_RELEASES: &str = "django-migrate.io/contracted-releases";

/// Every annotation the webhook understands; anything else under the prefix is a typo.
pub const KNOWN_ANNOTATIONS: [&str; 21] = [
    CONTAINER,
    MODE,
    MANAGE_PY,
    PYTHON,
    DATABASE,
    MANAGE_COMMAND,
    WAIT_TIMEOUT,
    MIGRATE_TIMEOUT,
    LOCK_TIMEOUT,
    UNSAFE_MIGRATIONS,
    ALLOW_UNSAFE,
    HOLD_BACK,
    LOCKING_MIN_ROWS,
    READINESS_GATE_ANNOTATION,
    USE_IMAGE_ENTRYPOINT,
    DEFER,
    CONTRACT_DELAY,
    CONTRACTED_RELEASES,
    FAST_PATH,
    POST_MIGRATE,
    SETTINGS_MODULE,
];

// ---------------------------------------------------------------- readiness gate

/// Pod condition set by the controller once the migration step of a pod succeeded; the
/// injected readiness gate names it. Its reasons are `step::Reason`.
pub const MIGRATED_CONDITION: &str = "django-migrate.io/migrated";

// ---------------------------------------------------------------- controller and webhook

/// Name the controller reports in Events and uses as its field manager.
pub const CONTROLLER_NAME: &str = "django-migrate-webhook";
/// The name of the webhook in the chart's MutatingWebhookConfiguration.
pub const WEBHOOK_NAME: &str = "inject.django-migrate.io";

/// Reasons of the Events the controller sends besides the condition's failure reasons.
pub mod event {
    /// A pod's step applied migrations.
    pub const MIGRATIONS_APPLIED: &str = "MigrationsApplied";
    /// A pod's step applied operations that break the previous release
    /// (`unsafe-migrations: warn`).
    pub const UNSAFE_MIGRATIONS_APPLIED: &str = "UnsafeMigrationsApplied";
    /// An opted-in Deployment was stored without the injection.
    pub const NOT_INJECTED: &str = "MigrationStepNotInjected";
    /// Migrations were deferred; when and how the contract run applies them.
    pub const CONTRACT_PENDING: &str = "ContractMigrationsPending";
    /// The contract Job applied the deferred migrations.
    pub const CONTRACT_APPLIED: &str = "ContractMigrationsApplied";
    /// The contract Job failed.
    pub const CONTRACT_FAILED: &str = "ContractMigrationsFailed";
}

// ---------------------------------------------------------------- containers and volume

/// Init container of the webhook's own image that copies the program into [`CODE_VOLUME`].
pub const CODE_CONTAINER: &str = "django-migrate-code";
/// The Django step in `migrate` mode.
pub const MIGRATE_CONTAINER: &str = "django-migrate";
/// The Django step in `wait` mode.
pub const WAIT_CONTAINER: &str = "django-wait-for-migrations";
/// The separate database wait of earlier releases: removed when found.
pub const LEGACY_WAIT_FOR_DB_CONTAINER: &str = "django-wait-for-db";
/// Init container names owned by the webhook: containers with these names are replaced.
pub const RESERVED_CONTAINERS: [&str; 4] = [
    CODE_CONTAINER,
    MIGRATE_CONTAINER,
    WAIT_CONTAINER,
    LEGACY_WAIT_FOR_DB_CONTAINER,
];

/// The `emptyDir` volume the program is copied into.
pub const CODE_VOLUME: &str = "django-migrate-code";
/// Where [`CODE_VOLUME`] is mounted in both init containers.
pub const CODE_MOUNT_PATH: &str = "/django-migrate";
/// File name of the program inside [`CODE_MOUNT_PATH`]: a zip archive Python runs.
pub const PROGRAM_FILE: &str = "step.pyz";

/// Path the kubelet reads the termination message from.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

// ---------------------------------------------------------------- env of the Django step

/// `migrate`, `wait`, `contract` (the contract run's Job) or `plan` (a plan's Job).
pub const ENV_MODE: &str = "DJANGO_MIGRATE_MODE";
/// Django database alias.
pub const ENV_DATABASE: &str = "DJANGO_MIGRATE_DATABASE";
/// The management command, words separated by spaces.
pub const ENV_MANAGE_COMMAND: &str = "DJANGO_MIGRATE_MANAGE_COMMAND";
/// Seconds to wait for the database.
pub const ENV_WAIT_TIMEOUT: &str = "DJANGO_MIGRATE_WAIT_TIMEOUT";
/// Seconds to wait for the lock, other pods' migrations and lock-timeout retries.
pub const ENV_MIGRATE_TIMEOUT: &str = "DJANGO_MIGRATE_MIGRATE_TIMEOUT";
/// Seconds one DDL statement may wait for a table lock.
pub const ENV_LOCK_TIMEOUT: &str = "DJANGO_MIGRATE_LOCK_TIMEOUT";
/// `warn`, `deny` or `defer`.
pub const ENV_UNSAFE_MIGRATIONS: &str = "DJANGO_MIGRATE_UNSAFE_MIGRATIONS";
/// Comma-separated `app_label.migration_name` allowed under `deny`.
pub const ENV_ALLOW_UNSAFE: &str = "DJANGO_MIGRATE_ALLOW_UNSAFE";
/// Comma-separated kinds that `deny` holds back: `breaking`, `locking`.
pub const ENV_HOLD_BACK: &str = "DJANGO_MIGRATE_HOLD_BACK";
/// Estimated rows below which a locking operation is only reported.
pub const ENV_LOCKING_MIN_ROWS: &str = "DJANGO_MIGRATE_LOCKING_MIN_ROWS";
/// Comma-separated `app_label.migration_name` left for the contract run.
pub const ENV_DEFER: &str = "DJANGO_MIGRATE_DEFER";
/// `false` when the fast path is off; unset means on.
pub const ENV_FAST_PATH: &str = "DJANGO_MIGRATE_FAST_PATH";
/// `false` when a release with nothing to apply gets no `pre_migrate`/`post_migrate` run;
/// unset means it gets one.
pub const ENV_POST_MIGRATE: &str = "DJANGO_MIGRATE_POST_MIGRATE";
/// The settings module of a wrapper management command: [`SETTINGS_MODULE`].
pub const ENV_SETTINGS_MODULE: &str = "DJANGO_MIGRATE_SETTINGS_MODULE";
/// The release a pod belongs to, from the downward API: [`RELEASE_FIELD`].
pub const ENV_RELEASE: &str = "DJANGO_MIGRATE_RELEASE";
/// A CronJob's pod template label naming the CronJob, so that its Jobs' pods name it
/// (for the controller's metrics) without a read of their Job.
pub const CRONJOB_LABEL: &str = "django-migrate.io/cronjob";
/// A Deployment's pod's label that names its release: the Deployment controller gives
/// every pod of one pod template the same value (other kinds: `Kind::release_label`).
pub const RELEASE_FIELD: &str = "metadata.labels['pod-template-hash']";
/// Env vars set by the webhook on the Django step; same-named vars of the app are dropped.
pub const STEP_ENV: [&str; 15] = [
    ENV_MODE,
    ENV_DATABASE,
    ENV_MANAGE_COMMAND,
    ENV_WAIT_TIMEOUT,
    ENV_MIGRATE_TIMEOUT,
    ENV_LOCK_TIMEOUT,
    ENV_UNSAFE_MIGRATIONS,
    ENV_ALLOW_UNSAFE,
    ENV_HOLD_BACK,
    ENV_LOCKING_MIN_ROWS,
    ENV_DEFER,
    ENV_FAST_PATH,
    ENV_POST_MIGRATE,
    ENV_SETTINGS_MODULE,
    ENV_RELEASE,
];
/// Env vars of earlier releases that carried the program and the step; dropped when found.
pub const LEGACY_ENV: [&str; 3] = [
    "DJANGO_MIGRATE_CODE",
    "DJANGO_MIGRATE_STEP",
    "DJANGO_MIGRATE_TIMEOUT",
];

// ---------------------------------------------------------------- log and exit codes

/// Every log line of the step starts with this, then `<mode> [<phase>]: `; `status` reads
/// the phase of a running step from its last line (`summary::Phase::of_log_line`).
pub const LOG_PREFIX: &str = "django-migrate";

/// Exit codes of the Django step.
pub mod exit {
    pub const OK: i32 = 0;
    pub const TIMEOUT: i32 = 1;
    pub const MIGRATE_FAILED: i32 = 2;
    pub const CREDENTIALS: i32 = 3;
    pub const NOT_FOUND: i32 = 4;
    pub const UNSAFE: i32 = 5;
    /// The lock cannot be held through this connection, or was lost while migrating.
    pub const LOCK: i32 = 6;
}
