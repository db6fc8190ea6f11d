//! The init containers the webhook injects and the Python code they run.
//!
//! The containers run the app container's own image with its env, envFrom, mounts,
//! workingDir, securityContext and resources, so they reach the database exactly as the
//! app does. They need no shell: the code travels in an env var and is passed to the
//! interpreter with Kubernetes' `$(VAR)` expansion.

use std::sync::LazyLock;

use serde_json::{Value, json};

use crate::deployment::JsonMap;
use crate::settings::{Mode, Settings};

/// Init container that waits until Django can open a database connection.
pub const WAIT_FOR_DB: &str = "django-wait-for-db";
/// Init container that applies pending migrations under a database lock.
pub const MIGRATE: &str = "django-migrate";
/// Init container that only waits until no migration is pending (`wait` mode).
pub const WAIT_FOR_MIGRATIONS: &str = "django-wait-for-migrations";
/// Init container names owned by the webhook: containers with these names are replaced.
pub const RESERVED_NAMES: [&str; 3] = [WAIT_FOR_DB, MIGRATE, WAIT_FOR_MIGRATIONS];

/// Pod condition set by the controller once the migration step of a pod succeeded.
pub const READINESS_GATE: &str = "django-migrate.io/migrated";
/// Pod-template label that marks injected pods, so the controller watches only those.
pub const INJECTED_LABEL: &str = "django-migrate.io/injected";

/// The source of the code both containers run, as kept in the repository.
pub const SOURCE: &str = include_str!("django_migrate.py");

/// [`SOURCE`] without comment-only and blank lines: it is stored twice in every injected
/// Deployment, so it is kept short; the first line says where the full source lives.
pub fn code() -> &'static str {
    static CODE: LazyLock<String> = LazyLock::new(|| {
        let mut code = String::from(
            "# django-migrate-webhook: src/injected/django_migrate.py, comments removed\n",
        );
        for line in SOURCE.lines() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            code.push_str(line);
            code.push('\n');
        }
        code
    });
    &CODE
}

/// Stands for [`code()`] in the engine's patch until the patch is written out.
///
/// The code is ~14 KB and the same in every request: copying, diffing and JSON-escaping
/// it twice per request was most of the webhook's CPU. The engine works with this short
/// marker instead and [`expand_code`] / [`code_json`] put the code in its place at the end.
pub const CODE_MARKER: &str = "\u{0}django-migrate-webhook: embedded code\u{0}";

/// [`code()`] as a JSON string, escaped once.
pub fn code_json() -> &'static str {
    static JSON: LazyLock<String> =
        LazyLock::new(|| serde_json::to_string(code()).unwrap_or_default());
    &JSON
}

/// [`CODE_MARKER`] as a JSON string.
pub fn marker_json() -> &'static str {
    static JSON: LazyLock<String> =
        LazyLock::new(|| serde_json::to_string(CODE_MARKER).unwrap_or_default());
    &JSON
}

/// Replaces every string equal to `from` with `to`, anywhere inside `value`.
fn replace_strings(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) if s == from => to.clone_into(s),
        Value::Array(items) => items.iter_mut().for_each(|v| replace_strings(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_strings(v, from, to)),
        _ => {}
    }
}

/// Puts the code where the engine left [`CODE_MARKER`].
pub fn expand_code(value: &mut Value) {
    replace_strings(value, CODE_MARKER, code());
}

/// Turns the code into [`CODE_MARKER`], so that an injected container read back from the
/// cluster compares equal to one the engine builds.
pub fn collapse_code(value: &mut Value) {
    replace_strings(value, code(), CODE_MARKER);
}

/// Env var that carries [`CODE`] into the container.
pub const CODE_ENV: &str = "DJANGO_MIGRATE_CODE";
const STEP_ENV: &str = "DJANGO_MIGRATE_STEP";
const DATABASE_ENV: &str = "DJANGO_MIGRATE_DATABASE";
const MANAGE_COMMAND_ENV: &str = "DJANGO_MIGRATE_MANAGE_COMMAND";
const TIMEOUT_ENV: &str = "DJANGO_MIGRATE_TIMEOUT";
/// Env vars set by the webhook; same-named vars of the app container are dropped.
pub const OWN_ENV: [&str; 5] = [
    STEP_ENV,
    DATABASE_ENV,
    MANAGE_COMMAND_ENV,
    TIMEOUT_ENV,
    CODE_ENV,
];

/// Fields copied verbatim from the app container.
const COPIED_FIELDS: [&str; 7] = [
    "image",
    "imagePullPolicy",
    "envFrom",
    "volumeMounts",
    "workingDir",
    "securityContext",
    "resources",
];

pub fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name)
}

/// Name of the second init container for a mode.
pub fn second_container_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Migrate => MIGRATE,
        Mode::Wait => WAIT_FOR_MIGRATIONS,
    }
}

/// The two init containers, in the order they must run.
pub fn init_containers(app: &JsonMap, settings: &Settings) -> [Value; 2] {
    let second = match settings.mode {
        Mode::Migrate => "migrate",
        Mode::Wait => "wait-for-migrations",
    };
    [
        Value::Object(container(
            app,
            settings,
            WAIT_FOR_DB,
            "wait-for-db",
            settings.wait_timeout,
        )),
        Value::Object(container(
            app,
            settings,
            second_container_name(settings.mode),
            second,
            settings.migrate_timeout,
        )),
    ]
}

fn container(app: &JsonMap, s: &Settings, name: &str, step: &str, timeout: u32) -> JsonMap {
    let mut c = JsonMap::new();
    c.insert("name".into(), name.into());
    for field in COPIED_FIELDS {
        if let Some(v) = app.get(field) {
            c.insert(field.into(), v.clone());
        }
    }
    let run = json!([s.python, "-c", format!("$({CODE_ENV})")]);
    if s.use_image_entrypoint {
        c.insert("args".into(), run);
    } else {
        c.insert("command".into(), run);
    }

    let mut env: Vec<Value> = match app.get("env") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|e| {
                !e.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| OWN_ENV.contains(&n))
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let mut set = |k: &str, v: String| env.push(json!({"name": k, "value": v}));
    set(STEP_ENV, step.into());
    set(DATABASE_ENV, s.database.clone());
    set(MANAGE_COMMAND_ENV, s.manage_command.join(" "));
    set(TIMEOUT_ENV, timeout.to_string());
    set(CODE_ENV, CODE_MARKER.into());
    c.insert("env".into(), Value::Array(env));

    c.insert(
        "terminationMessagePath".into(),
        "/dev/termination-log".into(),
    );
    c.insert(
        "terminationMessagePolicy".into(),
        "FallbackToLogsOnError".into(),
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_survives_kubernetes_env_expansion() {
        // The kubelet expands $(VAR) and turns $$ into $ inside env values.
        assert!(
            !SOURCE.contains("$("),
            "the Python code must not contain $("
        );
        assert!(
            !SOURCE.contains("$$"),
            "the Python code must not contain $$"
        );
    }

    #[test]
    fn copies_app_fields_and_drops_own_env_names() {
        let app: JsonMap = serde_json::from_value(json!({
            "name": "web", "image": "app:1", "imagePullPolicy": "IfNotPresent",
            "workingDir": "/app", "ports": [{"containerPort": 8000}],
            "env": [{"name": "A", "value": "1"}, {"name": "DJANGO_MIGRATE_CODE", "value": "x"}],
            "livenessProbe": {"httpGet": {"path": "/"}}
        }))
        .unwrap();
        let [wait, migrate] = init_containers(&app, &Settings::default());
        assert_eq!(wait["name"], WAIT_FOR_DB);
        assert_eq!(migrate["name"], MIGRATE);
        assert_eq!(migrate["image"], "app:1");
        assert_eq!(migrate["workingDir"], "/app");
        assert!(migrate.get("ports").is_none());
        assert!(migrate.get("livenessProbe").is_none());
        let env = migrate["env"].as_array().unwrap();
        assert_eq!(env[0]["name"], "A");
        let code: Vec<_> = env.iter().filter(|e| e["name"] == CODE_ENV).collect();
        assert_eq!(code.len(), 1);
        assert_eq!(code[0]["value"], CODE_MARKER);
        assert_eq!(
            migrate["command"],
            json!(["python3", "-c", "$(DJANGO_MIGRATE_CODE)"])
        );
        let mut expanded = migrate.clone();
        expand_code(&mut expanded);
        assert_eq!(expanded["env"][env.len() - 1]["value"], super::code());
        collapse_code(&mut expanded);
        assert_eq!(expanded, migrate);
    }

    #[test]
    fn the_marker_is_escaped_like_any_string() {
        let json: String = serde_json::to_string(&json!({"value": CODE_MARKER})).unwrap();
        assert!(json.contains(marker_json()));
        let spliced = json.replace(marker_json(), code_json());
        let back: Value = serde_json::from_str(&spliced).unwrap();
        assert_eq!(back["value"], super::code());
    }
}
