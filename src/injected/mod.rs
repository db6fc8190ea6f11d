//! The init containers the webhook injects, and the program the Django step runs.
//!
//! The program is not carried in the pod spec. It is a Python package (`step/`), embedded
//! at build time file by file ([`SOURCES`]) and written as one zip archive that Python runs
//! ([`artifact`]). A small init container of the webhook's own image writes it
//! (`install-code`) into an `emptyDir`; the Django step then runs it with the app
//! container's own image, env, envFrom, mounts, workingDir, securityContext and resources,
//! so it reaches the database exactly as the app does. Neither needs a shell.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

mod zipapp;

use crate::names::{
    CODE_CONTAINER, CODE_MOUNT_PATH, CODE_VOLUME, ENV_ALLOW_UNSAFE, ENV_DATABASE, ENV_DEFER,
    ENV_FAST_PATH, ENV_HOLD_BACK, ENV_LOCK_TIMEOUT, ENV_LOCKING_MIN_ROWS, ENV_MANAGE_COMMAND,
    ENV_MIGRATE_TIMEOUT, ENV_MODE, ENV_POST_MIGRATE, ENV_RELEASE, ENV_SETTINGS_MODULE,
    ENV_UNSAFE_MIGRATIONS, ENV_WAIT_TIMEOUT, LEGACY_ENV, MIGRATE_CONTAINER, PROGRAM_FILE,
    RESERVED_CONTAINERS, STEP_ENV, TERMINATION_LOG, WAIT_CONTAINER,
};
use crate::settings::{DEFAULT_LOCKING_MIN_ROWS, Mode, Settings};
use crate::workload::{JsonMap, Kind};

/// `(path, text)` of a file of the step, embedded from `step/<path>`.
macro_rules! source {
    ($path:literal) => {
        ($path, include_str!(concat!("step/", $path)))
    };
}

/// The migration program's sources, as embedded at build time: `(path in the artifact,
/// text)`, every `.py` file under `src/injected/step` (a unit test checks), sorted by path.
/// `__main__.py` starts it; the package `django_migrate_step` is the step.
pub const SOURCES: &[(&str, &str)] = &[
    source!("__main__.py"),
    source!("django_migrate_step/__init__.py"),
    source!("django_migrate_step/classifier.py"),
    source!("django_migrate_step/columns.py"),
    source!("django_migrate_step/config.py"),
    source!("django_migrate_step/contract.py"),
    source!("django_migrate_step/database.py"),
    source!("django_migrate_step/fast_path.py"),
    source!("django_migrate_step/fingerprint.py"),
    source!("django_migrate_step/lock.py"),
    source!("django_migrate_step/migrate.py"),
    source!("django_migrate_step/plan.py"),
    source!("django_migrate_step/plan_report.py"),
    source!("django_migrate_step/progress.py"),
    source!("django_migrate_step/record.py"),
    source!("django_migrate_step/release.py"),
    source!("django_migrate_step/runner.py"),
    source!("django_migrate_step/settings_module.py"),
    source!("django_migrate_step/summary.py"),
    source!("django_migrate_step/waits.py"),
    source!("django_migrate_step/watchdog.py"),
];

/// The artifact the Django step runs: a zip archive of [`SOURCES`] (`python3 step.pyz`
/// runs its `__main__.py`), the same bytes for the same sources.
pub fn artifact() -> Vec<u8> {
    let entries: Vec<(&str, &[u8])> = SOURCES
        .iter()
        .map(|(path, text)| (*path, text.as_bytes()))
        .collect();
    zipapp::stored(&entries)
}

/// Path of the binary in the webhook's image (see the Dockerfile).
pub const BINARY_IN_IMAGE: &str = "/usr/local/bin/django-migrate-webhook";

/// The user the webhook image runs as (distroless `nonroot`).
const IMAGE_USER: i64 = 65532;

/// The image that carries the program: the webhook's own, so the program a pod runs is
/// always the one of the webhook that injected it, and how it reaches the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeImage {
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub pull_policy: String,
    pub delivery: CodeDelivery,
}

impl Default for CodeImage {
    fn default() -> Self {
        CodeImage {
            image: default_image().to_owned(),
            pull_policy: "IfNotPresent".to_owned(),
            delivery: CodeDelivery::Copy,
        }
    }
}

/// How the program reaches the Django step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CodeDelivery {
    /// An init container of the webhook's image copies it into an `emptyDir`: works on
    /// every cluster.
    #[default]
    Copy,
    /// The webhook's image is mounted read-only as an image volume (`volumes[].image`,
    /// Kubernetes 1.35+ by default, containerd 2.1+ or CRI-O 1.31+): one init container
    /// fewer, so a pod is Ready sooner.
    #[value(name = "imageVolume", alias = "image-volume")]
    ImageVolume,
}

impl CodeDelivery {
    /// The name in the chart's `codeDelivery` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeDelivery::Copy => "copy",
            CodeDelivery::ImageVolume => "imageVolume",
        }
    }
}

/// `django-migrate-webhook:<this version>`, for local runs; the chart sets its own image.
pub const fn default_image() -> &'static str {
    concat!("django-migrate-webhook:", env!("CARGO_PKG_VERSION"))
}

pub fn is_reserved(name: &str) -> bool {
    RESERVED_CONTAINERS.contains(&name)
}

/// Name of the Django step for a mode.
pub fn step_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Migrate => MIGRATE_CONTAINER,
        Mode::Wait => WAIT_CONTAINER,
    }
}

/// Fields copied verbatim from the app container to the Django step.
const COPIED_FIELDS: [&str; 7] = [
    "image",
    "imagePullPolicy",
    "envFrom",
    "volumeMounts",
    "workingDir",
    "securityContext",
    "resources",
];

/// The volume the step reads the program from: the `emptyDir` it is copied into, or the
/// webhook's image itself, whose root holds [`PROGRAM_FILE`] (see the Dockerfile).
pub fn code_volume(image: &CodeImage) -> Value {
    match image.delivery {
        CodeDelivery::Copy => json!({"name": CODE_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}}),
        CodeDelivery::ImageVolume => json!({
            "name": CODE_VOLUME,
            "image": {"reference": image.image, "pullPolicy": image.pull_policy},
        }),
    }
}

/// The image a stored pod spec's program comes from: its code copy container's, or its
/// code image volume's.
pub fn code_image_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> Option<CodeImage> {
    let copy = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == CODE_CONTAINER);
    if let Some(copy) = copy {
        return Some(CodeImage {
            image: copy.image.clone()?,
            pull_policy: copy
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".to_owned()),
            delivery: CodeDelivery::Copy,
        });
    }
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == CODE_VOLUME)?
        .image
        .as_ref()?;
    Some(CodeImage {
        image: volume.reference.clone()?,
        pull_policy: volume
            .pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".to_owned()),
        delivery: CodeDelivery::ImageVolume,
    })
}

/// The init containers that go before the app's own: the code copy (in copy mode), then
/// the Django step.
pub fn init_containers(
    image: &CodeImage,
    pod_security: Option<&JsonMap>,
    step: Value,
) -> Vec<Value> {
    match image.delivery {
        CodeDelivery::Copy => vec![code_container(image, pod_security), step],
        CodeDelivery::ImageVolume => vec![step],
    }
}

/// The init container that copies the program into [`code_volume`].
///
/// Restricted whatever the pod says: non-root, no privilege escalation, read-only root
/// filesystem, no capabilities, RuntimeDefault seccomp. A pod that runs as root
/// (`runAsUser: 0` at pod level) would contradict `runAsNonRoot`, so then the image's
/// own non-root user is named. The file it writes is readable by any UID.
pub fn code_container(image: &CodeImage, pod_security: Option<&JsonMap>) -> Value {
    let mut security = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if pod_security
        .and_then(|s| s.get("runAsUser"))
        .and_then(Value::as_i64)
        == Some(0)
    {
        security["runAsUser"] = json!(IMAGE_USER);
    }
    json!({
        "name": CODE_CONTAINER,
        "image": image.image,
        "imagePullPolicy": image.pull_policy,
        "command": [BINARY_IN_IMAGE, "install-code", CODE_MOUNT_PATH],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": security,
        "volumeMounts": [{"name": CODE_VOLUME, "mountPath": CODE_MOUNT_PATH}],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The Django step: the app container's image and settings, plus the code volume, running
/// `<python> /django-migrate/step.pyz`; its release is the label in which `kind`'s
/// controller names a pod's template.
pub fn step_container(app: &JsonMap, s: &Settings, kind: Kind) -> Value {
    let mut c = JsonMap::new();
    c.insert("name".into(), step_name(s.mode).into());
    for field in COPIED_FIELDS {
        if let Some(v) = app.get(field) {
            c.insert(field.into(), v.clone());
        }
    }
    let run = json!([s.python, format!("{CODE_MOUNT_PATH}/{PROGRAM_FILE}")]);
    c.insert(
        if s.use_image_entrypoint {
            "args"
        } else {
            "command"
        }
        .into(),
        run,
    );

    let mut env: Vec<Value> = match app.get("env") {
        Some(Value::Array(items)) => items
            .iter()
            .filter(|e| {
                !e.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| STEP_ENV.contains(&n) || LEGACY_ENV.contains(&n))
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let mut set = |k: &str, v: String| env.push(json!({"name": k, "value": v}));
    set(ENV_MODE, s.mode.as_str().into());
    set(ENV_DATABASE, s.database.clone());
    set(ENV_MANAGE_COMMAND, s.manage_command.join(" "));
    set(ENV_WAIT_TIMEOUT, s.wait_timeout.to_string());
    set(ENV_MIGRATE_TIMEOUT, s.migrate_timeout.to_string());
    set(ENV_LOCK_TIMEOUT, s.lock_timeout.to_string());
    set(ENV_UNSAFE_MIGRATIONS, s.unsafe_migrations.as_str().into());
    if !s.allow_unsafe.is_empty() {
        set(ENV_ALLOW_UNSAFE, s.allow_unsafe.join(","));
    }
    if !s.defer.is_empty() {
        set(ENV_DEFER, s.defer.join(","));
    }
    if !s.fast_path {
        set(ENV_FAST_PATH, "false".into());
    }
    if !s.post_migrate {
        set(ENV_POST_MIGRATE, "false".into());
    }
    if let Some(module) = &s.settings_module {
        set(ENV_SETTINGS_MODULE, module.clone());
    }
    if s.hold_back != Settings::default().hold_back {
        let kinds: Vec<&str> = s.hold_back.iter().map(|h| h.as_str()).collect();
        set(ENV_HOLD_BACK, kinds.join(","));
    }
    if s.locking_min_rows != DEFAULT_LOCKING_MIN_ROWS {
        set(ENV_LOCKING_MIN_ROWS, s.locking_min_rows.to_string());
    }
    env.push(release_env(kind));
    c.insert("env".into(), Value::Array(env));

    let mut mounts = match app.get("volumeMounts") {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    mounts.push(json!({"name": CODE_VOLUME, "mountPath": CODE_MOUNT_PATH, "readOnly": true}));
    c.insert("volumeMounts".into(), Value::Array(mounts));

    c.insert("terminationMessagePath".into(), TERMINATION_LOG.into());
    c.insert(
        "terminationMessagePolicy".into(),
        "FallbackToLogsOnError".into(),
    );
    Value::Object(c)
}

/// The step's release, from the downward API (`apiVersion` as the API server defaults it,
/// so that the stored template is what the webhook wrote).
pub fn release_env(kind: Kind) -> Value {
    let field = format!("metadata.labels['{}']", kind.release_label());
    json!({
        "name": ENV_RELEASE,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field}},
    })
}

/// Writes the [`artifact`] into `dir` (created if missing) as `step.pyz`, readable by any
/// user: the Django step may run as another UID than this copy (OpenShift's random UIDs,
/// the app's `runAsUser`). Written to a temporary name first, then renamed, so a reader
/// never sees half a file.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    std::fs::create_dir_all(dir)?;
    let target = dir.join(PROGRAM_FILE);
    let partial = dir.join(format!(".{PROGRAM_FILE}.partial"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)?;
    file.write_all(&artifact())?;
    file.sync_all()?;
    // The umask may have narrowed the mode given to open.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    drop(file);
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::RELEASE_FIELD;

    fn app() -> JsonMap {
        serde_json::from_value(json!({
            "name": "web", "image": "app:1", "imagePullPolicy": "IfNotPresent",
            "workingDir": "/app", "ports": [{"containerPort": 8000}],
            "volumeMounts": [{"name": "media", "mountPath": "/media"}],
            "env": [{"name": "A", "value": "1"}, {"name": "DJANGO_MIGRATE_CODE", "value": "x"},
                    {"name": "DJANGO_MIGRATE_MODE", "value": "y"}],
            "livenessProbe": {"httpGet": {"path": "/"}}
        }))
        .unwrap()
    }

    #[test]
    fn the_step_copies_app_fields_and_mounts_the_code() {
        let step = step_container(&app(), &Settings::default(), Kind::Deployment);
        assert_eq!(step["name"], MIGRATE_CONTAINER);
        assert_eq!(step["image"], "app:1");
        assert_eq!(step["workingDir"], "/app");
        assert!(step.get("ports").is_none());
        assert!(step.get("livenessProbe").is_none());
        assert_eq!(
            step["command"],
            json!(["python3", "/django-migrate/step.pyz"])
        );
        let env = step["env"].as_array().unwrap();
        assert_eq!(env[0]["name"], "A");
        let names: Vec<&str> = env.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "A",
                ENV_MODE,
                ENV_DATABASE,
                ENV_MANAGE_COMMAND,
                ENV_WAIT_TIMEOUT,
                ENV_MIGRATE_TIMEOUT,
                ENV_LOCK_TIMEOUT,
                ENV_UNSAFE_MIGRATIONS,
                ENV_RELEASE
            ]
        );
        assert_eq!(
            env.last().unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            RELEASE_FIELD
        );
        assert_eq!(
            step["volumeMounts"],
            json!([{"name": "media", "mountPath": "/media"},
                   {"name": CODE_VOLUME, "mountPath": CODE_MOUNT_PATH, "readOnly": true}])
        );
    }

    /// The fast path is on unless turned off, and a default adds nothing to the template
    /// (an upgrade starts no rollout).
    #[test]
    fn the_fast_path_env_is_set_only_when_it_is_off() {
        let on = step_container(&app(), &Settings::default(), Kind::Deployment);
        assert!(!on.to_string().contains(ENV_FAST_PATH));
        let off = Settings {
            fast_path: false,
            ..Settings::default()
        };
        let step = step_container(&app(), &off, Kind::Deployment);
        let env = step["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": ENV_FAST_PATH, "value": "false"})));
    }

    #[test]
    fn the_copy_container_is_restricted_and_names_a_user_only_under_root_pods() {
        let c = code_container(&CodeImage::default(), None);
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
        assert!(c["securityContext"].get("runAsUser").is_none());
        let root: JsonMap = serde_json::from_value(json!({"runAsUser": 0})).unwrap();
        let c = code_container(&CodeImage::default(), Some(&root));
        assert_eq!(c["securityContext"]["runAsUser"], IMAGE_USER);
    }

    /// The paths of the sources that contain `needle`.
    fn sources_with(needle: &str) -> Vec<&'static str> {
        SOURCES
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .map(|(path, _)| *path)
            .collect()
    }

    /// One vocabulary: the program reads every env var the engine sets, and writes the
    /// log prefix and exit codes of `names` and the phases and results of `summary`, each
    /// defined once in the package's sources.
    #[test]
    fn the_program_uses_the_names_the_engine_sets() {
        use crate::names::{LOG_PREFIX, exit};
        use crate::summary::{Phase, StepResult};
        for name in STEP_ENV {
            let read = format!("os.environ.get(\"{name}\"");
            assert_eq!(sources_with(&read).len(), 1, "{name}");
        }
        for (constant, code) in [
            ("EXIT_OK", exit::OK),
            ("EXIT_TIMEOUT", exit::TIMEOUT),
            ("EXIT_MIGRATE_FAILED", exit::MIGRATE_FAILED),
            ("EXIT_CREDENTIALS", exit::CREDENTIALS),
            ("EXIT_NOT_FOUND", exit::NOT_FOUND),
            ("EXIT_UNSAFE", exit::UNSAFE),
            ("EXIT_LOCK", exit::LOCK),
        ] {
            let line = format!("\n{constant} = {code}\n");
            assert_eq!(sources_with(&line).len(), 1, "{constant}");
        }
        for p in Phase::ALL {
            let line = format!("\nPHASE_{} = \"{p}\"\n", p.as_str().to_uppercase());
            assert_eq!(sources_with(&line).len(), 1, "{line}");
        }
        for r in StepResult::ALL {
            let line = format!(
                "\nRESULT_{} = \"{r}\"\n",
                r.as_str().to_uppercase().replace('-', "_")
            );
            assert_eq!(sources_with(&line).len(), 1, "{line}");
        }
        // And writes no result the controller does not know.
        let written: usize = SOURCES
            .iter()
            .map(|(_, text)| text.matches("\nRESULT_").count())
            .sum();
        assert_eq!(written, StepResult::ALL.len());
        let prefix = format!("\nLOG_PREFIX = \"{LOG_PREFIX}\"\n");
        assert_eq!(sources_with(&prefix).len(), 1);
        assert!(!sources_with(&format!("\"{TERMINATION_LOG}\"")).is_empty());
    }

    /// Every Python file of the step's directory is embedded, and nothing else: a module
    /// left out would fail the step's imports in the pod.
    #[test]
    fn the_sources_are_every_python_file_of_the_step() {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "__pycache__") {
                        walk(&path, root, out);
                    }
                } else if path.extension().is_some_and(|e| e == "py") {
                    let relative = path.strip_prefix(root).unwrap();
                    out.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/injected/step");
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.sort();
        let embedded: Vec<&str> = SOURCES.iter().map(|(path, _)| *path).collect();
        assert_eq!(embedded, files);
        for (path, text) in SOURCES {
            let on_disk = std::fs::read_to_string(root.join(path)).unwrap();
            assert_eq!(*text, on_disk, "{path}");
        }
        assert!(embedded.contains(&"__main__.py"));
    }

    /// The artifact is the same bytes whenever it is made, and holds each source.
    #[test]
    fn the_artifact_holds_every_source_and_is_reproducible() {
        let zip = artifact();
        assert_eq!(zip, artifact());
        for (path, text) in SOURCES {
            let header = [path.as_bytes(), text.as_bytes()].concat();
            assert!(
                zip.windows(header.len()).any(|w| w == header),
                "{path} is not stored as it is"
            );
        }
    }

    #[test]
    fn install_writes_a_file_any_user_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = install(&dir.join("code")).unwrap();
        assert_eq!(path.file_name().unwrap(), PROGRAM_FILE);
        assert_eq!(std::fs::read(&path).unwrap(), artifact());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // Twice is fine (a restarted init container), and leaves no partial file.
        install(&dir.join("code")).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.join("code")).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("django-migrate-install-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
