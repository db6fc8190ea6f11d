//! Per-Deployment settings read from `django-migrate.io/*` annotations.
//!
//! Every value is validated here, so a bad annotation is denied at admission time with a
//! message naming the annotation, the value and what is allowed, instead of producing an
//! init container that fails later inside the pod.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::workload::Kind;

pub use crate::names::{
    ALLOW_UNSAFE, CONTAINER, CONTRACT_DELAY, CONTRACTED_RELEASES, DATABASE, DEFER, FAST_PATH,
    HOLD_BACK, INJECT_LABEL, KNOWN_ANNOTATIONS, LOCK_TIMEOUT, LOCKING_MIN_ROWS, MANAGE_COMMAND,
    MANAGE_PY, MIGRATE_TIMEOUT, MODE, POST_MIGRATE, PREFIX, PYTHON, READINESS_GATE_ANNOTATION,
    SETTINGS_MODULE, UNSAFE_MIGRATIONS, USE_IMAGE_ENTRYPOINT, WAIT_TIMEOUT,
};

/// Default for `lock-timeout`, in seconds: a query of the running release waits at most
/// this long behind a migration's table lock request (well under the 5 s that users and
/// load balancers notice), and a DDL statement still gets the lock when the tables are
/// only briefly busy.
pub const DEFAULT_LOCK_TIMEOUT_SECONDS: u32 = 3;
/// Longest `lock-timeout` accepted: longer stalls the service as if there were none.
pub const MAX_LOCK_TIMEOUT_SECONDS: u32 = 600;

/// What to do with pending operations that break the release still serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnsafeMigrations {
    /// Apply them and name them in the log, the summary, the condition and an Event.
    Warn,
    /// Apply nothing and exit 5, unless each is allowed by name.
    Deny,
    /// Leave the migrations they belong to for the contract run, once no pod of the
    /// previous release is left.
    Defer,
}

impl UnsafeMigrations {
    pub fn as_str(self) -> &'static str {
        match self {
            UnsafeMigrations::Warn => "warn",
            UnsafeMigrations::Deny => "deny",
            UnsafeMigrations::Defer => "defer",
        }
    }
}

/// The kinds of harm a pending operation is classified by; `hold-back` chooses which of
/// them `unsafe-migrations: deny` holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Harm {
    /// The previous release's code fails against the migrated database.
    Breaking,
    /// A lock that blocks reads or writes for as long as the operation takes.
    Locking,
}

impl Harm {
    pub fn as_str(self) -> &'static str {
        match self {
            Harm::Breaking => "breaking",
            Harm::Locking => "locking",
        }
    }
}

/// Default for `locking-min-rows`: a locking operation on a table estimated smaller than
/// this is reported but not held back (an index on 100,000 rows builds in well under a
/// second).
pub const DEFAULT_LOCKING_MIN_ROWS: u64 = 100_000;

/// Longest timeout accepted, in seconds (one day): longer is almost certainly a mistake.
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;

/// What the second init container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Take the database lock and run `migrate`.
    Migrate,
    /// Only wait until no migration is pending (workers that share the database).
    Wait,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Migrate => "migrate",
            Mode::Wait => "wait",
        }
    }
}

/// Settings of one Deployment, with the defaults of DESIGN.md applied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each is an independent true/false annotation"
)]
pub struct Settings {
    /// Explicitly chosen app container, if the annotation is set.
    pub container: Option<String>,
    pub mode: Mode,
    pub python: String,
    pub manage_py: String,
    pub database: String,
    /// The command that runs Django management commands, already split on spaces.
    pub manage_command: Vec<String>,
    pub wait_timeout: u32,
    pub migrate_timeout: u32,
    /// Seconds one DDL statement may wait for a table lock.
    pub lock_timeout: u32,
    pub unsafe_migrations: UnsafeMigrations,
    /// `app_label.migration_name` that may be applied under `deny`.
    pub allow_unsafe: Vec<String>,
    /// The kinds `deny` holds back, in order, without repeats.
    pub hold_back: Vec<Harm>,
    /// Estimated rows below which a locking operation is only reported.
    pub locking_min_rows: u64,
    pub readiness_gate: bool,
    pub use_image_entrypoint: bool,
    /// `app_label.migration_name` left for the contract run whatever the classifier says.
    pub defer: Vec<String>,
    /// Seconds the contract run waits after the rollout completed, at least.
    pub contract_delay: u32,
    /// Whether the step may end without starting Django when its record proves that
    /// nothing is pending.
    pub fast_path: bool,
    /// Whether a release with nothing to apply gets `migrate`'s `pre_migrate` and
    /// `post_migrate` run once (apps keep their rows up to date from them).
    pub post_migrate: bool,
    /// The settings module a wrapper management command loads (the fast path's check
    /// imports it; the step checks that the command loaded it).
    pub settings_module: Option<String>,
}

impl Settings {
    /// True when some pending migrations may be left for the contract run by these
    /// settings alone (django-safemigrate's marker defers whatever the settings).
    pub fn defers(&self) -> bool {
        self.unsafe_migrations == UnsafeMigrations::Defer || !self.defer.is_empty()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            container: None,
            mode: Mode::Migrate,
            python: "python3".into(),
            manage_py: "manage.py".into(),
            database: "default".into(),
            manage_command: vec!["python3".into(), "manage.py".into()],
            wait_timeout: 300,
            migrate_timeout: 1800,
            lock_timeout: DEFAULT_LOCK_TIMEOUT_SECONDS,
            unsafe_migrations: UnsafeMigrations::Warn,
            allow_unsafe: Vec::new(),
            hold_back: vec![Harm::Breaking],
            locking_min_rows: DEFAULT_LOCKING_MIN_ROWS,
            readiness_gate: true,
            use_image_entrypoint: false,
            defer: Vec::new(),
            contract_delay: 0,
            fast_path: true,
            post_migrate: true,
            settings_module: None,
        }
    }
}

/// An annotation that cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum InvalidAnnotation {
    #[error("annotation {annotation}: invalid value {value:?}; {allowed}")]
    Value {
        annotation: String,
        value: String,
        /// What would have been accepted.
        allowed: String,
    },
    #[error("unknown annotation {annotation}; known: {known}")]
    Unknown { annotation: String, known: String },
}

impl InvalidAnnotation {
    /// The annotation's full name.
    pub fn annotation(&self) -> &str {
        match self {
            InvalidAnnotation::Value { annotation, .. }
            | InvalidAnnotation::Unknown { annotation, .. } => annotation,
        }
    }
}

/// What an annotation accepts, as its denial says it: one text for the webhook and for the
/// admission policies of `policy` mode. `None` for names that are not settings.
pub fn allowed(annotation: &str) -> Option<String> {
    let word = |example: &str| {
        format!(
            "allowed: letters, digits and . _ - / + only (no spaces or shell characters), e.g. \"{example}\""
        )
    };
    let bool = || "allowed: \"true\" or \"false\"".to_owned();
    Some(match annotation {
        CONTAINER => "allowed: the name of a container".to_owned(),
        MODE => "allowed: \"migrate\" or \"wait\"".to_owned(),
        MANAGE_PY => word("src/manage.py"),
        PYTHON => word("python3"),
        DATABASE => {
            "allowed: a Django database alias (letters, digits, _ and -), e.g. \"default\"".to_owned()
        }
        MANAGE_COMMAND => "allowed: words of letters, digits and . _ - / + separated by spaces (no shell), e.g. \"./manage.py lms\"".to_owned(),
        WAIT_TIMEOUT | MIGRATE_TIMEOUT | CONTRACT_DELAY => format!(
            "allowed: a whole number of seconds from 1 to {MAX_TIMEOUT_SECONDS}, e.g. \"300\""
        ),
        LOCK_TIMEOUT => format!(
            "allowed: a whole number of seconds from 1 to {MAX_LOCK_TIMEOUT_SECONDS}, e.g. \"{DEFAULT_LOCK_TIMEOUT_SECONDS}\""
        ),
        UNSAFE_MIGRATIONS => "allowed: \"warn\", \"deny\" or \"defer\"".to_owned(),
        ALLOW_UNSAFE | DEFER => "allowed: comma-separated app_label.migration_name, e.g. \"shop.0042_remove_product_legacy_code\"".to_owned(),
        HOLD_BACK => {
            "allowed: \"breaking\", \"locking\" or \"breaking,locking\"".to_owned()
        }
        LOCKING_MIN_ROWS => "allowed: a whole number of rows (0 holds back every locking operation), e.g. \"100000\"".to_owned(),
        READINESS_GATE_ANNOTATION | USE_IMAGE_ENTRYPOINT | FAST_PATH | POST_MIGRATE => bool(),
        SETTINGS_MODULE => "allowed: the settings module the management command loads, by dotted name or .py file, of letters, digits and . _ - / + only, e.g. \"nautobot_config\" or \"/opt/nautobot/nautobot_config.py\"".to_owned(),
        _ => return None,
    })
}

/// The denial of `value` for `annotation`, with what it accepts.
fn invalid_value(annotation: &str, value: &str) -> InvalidAnnotation {
    invalid(annotation, value, allowed(annotation).unwrap_or_default())
}

fn invalid(annotation: &str, value: &str, allowed: impl Into<String>) -> InvalidAnnotation {
    // Bound the echoed value so a huge annotation cannot make a huge denial message.
    let mut value = value.to_owned();
    crate::text::cut(&mut value, 100);
    InvalidAnnotation::Value {
        annotation: annotation.to_owned(),
        value,
        allowed: allowed.into(),
    }
}

/// True for characters that are safe in a path or command word passed without a shell
/// and without Kubernetes `$(VAR)` expansion.
fn is_plain_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b'+'))
}

fn parse_bool(annotation: &str, value: &str) -> Result<bool, InvalidAnnotation> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid_value(annotation, value)),
    }
}

/// Whole seconds from 1 to `max`, plain digits only (`u32::parse` would take a `+`).
fn parse_seconds(annotation: &str, value: &str, max: u32) -> Result<u32, InvalidAnnotation> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_value(annotation, value));
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid_value(annotation, value)),
    }
}

fn parse_unsafe_migrations(
    annotation: &str,
    value: &str,
) -> Result<UnsafeMigrations, InvalidAnnotation> {
    match value {
        "warn" => Ok(UnsafeMigrations::Warn),
        "deny" => Ok(UnsafeMigrations::Deny),
        "defer" => Ok(UnsafeMigrations::Defer),
        _ => Err(invalid_value(annotation, value)),
    }
}

/// `breaking`, `locking` or both, comma-separated.
fn parse_harms(annotation: &str, value: &str) -> Result<Vec<Harm>, InvalidAnnotation> {
    let mut harms = Vec::new();
    for word in value.split(',').map(str::trim) {
        let harm = match word {
            "breaking" => Harm::Breaking,
            "locking" => Harm::Locking,
            _ => return Err(invalid_value(annotation, value)),
        };
        if !harms.contains(&harm) {
            harms.push(harm);
        }
    }
    harms.sort();
    Ok(harms)
}

/// `app_label.migration_name[,...]`: Python identifiers around one dot.
fn parse_migration_names(annotation: &str, value: &str) -> Result<Vec<String>, InvalidAnnotation> {
    let is_identifier = |s: &str| {
        s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let is_name = |s: &str| {
        s.split_once('.').is_some_and(|(app, migration)| {
            is_identifier(app)
                && !migration.is_empty()
                && migration
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() || !names.iter().all(|n| is_name(n)) {
        return Err(invalid_value(annotation, value));
    }
    Ok(names)
}

fn parse_word(annotation: &str, value: &str) -> Result<String, InvalidAnnotation> {
    if is_plain_word(value) {
        Ok(value.to_owned())
    } else {
        Err(invalid_value(annotation, value))
    }
}

impl Settings {
    /// Reads the settings from a Deployment's annotations.
    ///
    /// Unknown annotations under `django-migrate.io/` are rejected: a typo that silently
    /// falls back to a default is worse than a denial.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Settings, InvalidAnnotation> {
        Settings::parse(Settings::default(), annotations)
    }

    /// The settings of a workload of `kind`: a Job's or CronJob's pods wait for their
    /// release's migrations unless told to migrate, and never get a readiness gate
    /// (nothing routes traffic to them).
    pub fn for_kind(
        kind: Kind,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Settings, InvalidAnnotation> {
        let mut s = Settings::parse(Settings::defaults_for(kind), annotations)?;
        if kind.runs_to_completion() {
            s.readiness_gate = false;
        }
        Ok(s)
    }

    /// The defaults of a workload of `kind`.
    pub fn defaults_for(kind: Kind) -> Settings {
        let mut s = Settings::default();
        if kind.runs_to_completion() {
            s.mode = Mode::Wait;
        }
        s
    }

    fn parse(
        mut s: Settings,
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Settings, InvalidAnnotation> {
        let Some(annotations) = annotations else {
            return Ok(s);
        };
        let mut manage_command: Option<&str> = None;
        for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            let value = value.as_str();
            match key.as_str() {
                CONTAINER => {
                    if value.is_empty() {
                        return Err(invalid_value(key, value));
                    }
                    s.container = Some(value.to_owned());
                }
                MODE => {
                    s.mode = match value {
                        "migrate" => Mode::Migrate,
                        "wait" => Mode::Wait,
                        _ => return Err(invalid_value(key, value)),
                    }
                }
                MANAGE_PY => s.manage_py = parse_word(key, value)?,
                PYTHON => s.python = parse_word(key, value)?,
                DATABASE => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        return Err(invalid_value(key, value));
                    }
                    value.clone_into(&mut s.database);
                }
                MANAGE_COMMAND => manage_command = Some(value),
                WAIT_TIMEOUT => s.wait_timeout = parse_seconds(key, value, MAX_TIMEOUT_SECONDS)?,
                MIGRATE_TIMEOUT => {
                    s.migrate_timeout = parse_seconds(key, value, MAX_TIMEOUT_SECONDS)?;
                }
                LOCK_TIMEOUT => {
                    s.lock_timeout = parse_seconds(key, value, MAX_LOCK_TIMEOUT_SECONDS)?;
                }
                UNSAFE_MIGRATIONS => s.unsafe_migrations = parse_unsafe_migrations(key, value)?,
                ALLOW_UNSAFE => s.allow_unsafe = parse_migration_names(key, value)?,
                DEFER => s.defer = parse_migration_names(key, value)?,
                // The controller's record, read by the admission check for rollbacks.
                CONTRACTED_RELEASES => {}
                CONTRACT_DELAY if value == "0" => s.contract_delay = 0,
                CONTRACT_DELAY => {
                    s.contract_delay = parse_seconds(key, value, MAX_TIMEOUT_SECONDS)?;
                }
                HOLD_BACK => s.hold_back = parse_harms(key, value)?,
                LOCKING_MIN_ROWS => {
                    s.locking_min_rows = value
                        .parse()
                        .ok()
                        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| invalid_value(key, value))?;
                }
                READINESS_GATE_ANNOTATION => s.readiness_gate = parse_bool(key, value)?,
                USE_IMAGE_ENTRYPOINT => s.use_image_entrypoint = parse_bool(key, value)?,
                FAST_PATH => s.fast_path = parse_bool(key, value)?,
                POST_MIGRATE => s.post_migrate = parse_bool(key, value)?,
                SETTINGS_MODULE => s.settings_module = Some(parse_word(key, value)?),
                _ => {
                    return Err(InvalidAnnotation::Unknown {
                        annotation: key.clone(),
                        known: KNOWN_ANNOTATIONS
                            .iter()
                            .map(|a| a.trim_start_matches(PREFIX))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
        }
        s.manage_command = match manage_command {
            Some(value) => {
                let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
                if words.is_empty() || !words.iter().all(|w| is_plain_word(w)) {
                    return Err(invalid_value(MANAGE_COMMAND, value));
                }
                words
            }
            None => vec![s.python.clone(), s.manage_py.clone()],
        };
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, InvalidAnnotation> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_annotations(Some(&map))
    }

    #[test]
    fn defaults_without_annotations() {
        assert_eq!(
            Settings::from_annotations(None).unwrap(),
            Settings::default()
        );
        let s = parse(&[("other.io/x", "y")]).unwrap();
        assert_eq!(s.manage_command, ["python3", "manage.py"]);
    }

    #[test]
    fn manage_command_follows_python_and_manage_py() {
        let s = parse(&[(PYTHON, "/venv/bin/python"), (MANAGE_PY, "src/manage.py")]).unwrap();
        assert_eq!(s.manage_command, ["/venv/bin/python", "src/manage.py"]);
        let s = parse(&[(MANAGE_COMMAND, "  sentry   django ")]).unwrap();
        assert_eq!(s.manage_command, ["sentry", "django"]);
    }

    #[test]
    fn denials_name_annotation_value_and_allowed() {
        let e = parse(&[(WAIT_TIMEOUT, "-5")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("django-migrate.io/wait-timeout"), "{msg}");
        assert!(msg.contains("\"-5\""), "{msg}");
        assert!(msg.contains("from 1 to 86400"), "{msg}");
        for (k, v) in [
            (MODE, "fast"),
            (MANAGE_PY, "manage.py; rm -rf /"),
            (MANAGE_PY, "$(SECRET)"),
            (PYTHON, "python3 -X"),
            (DATABASE, "a b"),
            (MANAGE_COMMAND, "sh -c `id`"),
            (MANAGE_COMMAND, "   "),
            (MIGRATE_TIMEOUT, "0"),
            (MIGRATE_TIMEOUT, "+5"),
            (MIGRATE_TIMEOUT, "99999999999"),
            (LOCK_TIMEOUT, "0"),
            (LOCK_TIMEOUT, "601"),
            (LOCK_TIMEOUT, "2.5"),
            (UNSAFE_MIGRATIONS, "block"),
            (ALLOW_UNSAFE, "shop"),
            (ALLOW_UNSAFE, "shop.0042; rm"),
            (ALLOW_UNSAFE, ",,"),
            (HOLD_BACK, "all"),
            (HOLD_BACK, "breaking,"),
            (HOLD_BACK, ""),
            (LOCKING_MIN_ROWS, "-1"),
            (LOCKING_MIN_ROWS, "1e6"),
            (LOCKING_MIN_ROWS, "+5"),
            (READINESS_GATE_ANNOTATION, "yes"),
            (USE_IMAGE_ENTRYPOINT, "1"),
            (CONTAINER, ""),
            (DEFER, "shop"),
            (DEFER, ""),
            (CONTRACT_DELAY, "-1"),
            (CONTRACT_DELAY, "1h"),
            (FAST_PATH, "off"),
            (POST_MIGRATE, "no"),
            (SETTINGS_MODULE, "my settings"),
            (SETTINGS_MODULE, ""),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.annotation(), k);
        }
        let e = parse(&[("django-migrate.io/migrate-timeuot", "5")]).unwrap_err();
        assert!(e.to_string().contains("unknown annotation"), "{e}");
    }

    #[test]
    fn hold_back_and_locking_min_rows() {
        let s = parse(&[
            (HOLD_BACK, "locking, breaking,locking"),
            (LOCKING_MIN_ROWS, "0"),
        ])
        .unwrap();
        assert_eq!(s.hold_back, [Harm::Breaking, Harm::Locking]);
        assert_eq!(s.locking_min_rows, 0);
        let s = parse(&[(HOLD_BACK, "locking")]).unwrap();
        assert_eq!(s.hold_back, [Harm::Locking]);
        assert_eq!(s.locking_min_rows, DEFAULT_LOCKING_MIN_ROWS);
        let e = parse(&[(HOLD_BACK, "everything")]).unwrap_err().to_string();
        assert!(e.contains("\"breaking,locking\""), "{e}");
    }

    #[test]
    fn defer_names_migrations_and_the_contract_delay() {
        let s = parse(&[
            (UNSAFE_MIGRATIONS, "defer"),
            (DEFER, "shop.0042_drop_legacy, shop.0043_x"),
            (CONTRACT_DELAY, "600"),
        ])
        .unwrap();
        assert_eq!(s.unsafe_migrations, UnsafeMigrations::Defer);
        assert_eq!(s.defer, ["shop.0042_drop_legacy", "shop.0043_x"]);
        assert_eq!(s.contract_delay, 600);
        assert!(s.defers());
        assert_eq!(parse(&[(CONTRACT_DELAY, "0")]).unwrap().contract_delay, 0);
        assert!(!Settings::default().defers());
        assert!(Settings::default().fast_path);
        assert!(!parse(&[(FAST_PATH, "false")]).unwrap().fast_path);
        assert!(Settings::default().post_migrate);
        assert!(!parse(&[(POST_MIGRATE, "false")]).unwrap().post_migrate);
        let e = parse(&[(UNSAFE_MIGRATIONS, "later")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"defer\""), "{e}");
    }

    #[test]
    fn huge_values_are_truncated_in_messages() {
        let big = "x".repeat(100_000) + " ";
        let e = parse(&[(MODE, &big)]).unwrap_err();
        assert!(e.to_string().len() < 300);
    }
}
