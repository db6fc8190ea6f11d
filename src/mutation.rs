//! The mutation engine: a pure function from a workload (and the old one on UPDATE) to a
//! JSON Patch and warning lines, or a denial.
//!
//! The engine rebuilds only the parts of the pod template it owns (init containers,
//! readiness gates, template labels) as a small document, before and after, and diffs
//! the two with `json-patch`: the patch creates missing parents, escapes `~` and `/` in
//! keys, is deterministic, and is empty when the stored template already matches.

use serde_json::{Value, json};
use thiserror::Error;

use crate::injected::{self, CodeDelivery, CodeImage};
use crate::names::{
    CODE_CONTAINER, CODE_VOLUME, CONTRACTED_RELEASES, CRONJOB_LABEL, INJECTED_LABEL,
    MIGRATED_CONDITION,
};
use crate::settings::{self, InvalidAnnotation, Settings};
use crate::workload::{JsonMap, Kind, Workload, container_name};

/// Pod-template annotation kubectl uses to pick a pod's main container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Kubernetes asks webhooks to keep warnings short; kubectl prints each on one line.
pub const MAX_WARNING_LEN: usize = 120;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What the webhook answers for an allowed request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mutation {
    /// The JSON Patch operations; empty when the object needs no change.
    pub patch: json_patch::Patch,
    /// Lines for the AdmissionResponse `warnings`, each under [`MAX_WARNING_LEN`].
    pub warnings: Vec<String>,
}

impl Mutation {
    /// True when the object needs no change.
    pub fn is_empty(&self) -> bool {
        self.patch.0.is_empty()
    }
}

/// Why an opted-in workload cannot be injected; the message is shown by kubectl.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Denial {
    /// The annotation's own error is the whole message (not a cause behind it).
    #[error("django-migrate: {0}")]
    Annotation(InvalidAnnotation),
    #[error(
        "django-migrate: annotation {}: no container named {name:?} in the pod template; allowed: one of {}",
        settings::CONTAINER,
        .choices.join(", ")
    )]
    NoSuchContainer { name: String, choices: Vec<String> },
    #[error(
        "django-migrate: the pod template has no containers: there is no app container to copy image and env from"
    )]
    NoContainers,
}

impl From<InvalidAnnotation> for Denial {
    fn from(e: InvalidAnnotation) -> Denial {
        Denial::Annotation(e)
    }
}

/// Runs the engine. `old` is the stored object on UPDATE; `image` is the webhook's own
/// image, which the code-copy container runs.
pub fn mutate(
    op: Operation,
    new: &Workload,
    old: Option<&Workload>,
    image: &CodeImage,
) -> Result<Mutation, Denial> {
    if let Some(m) = left_alone(op, new, old) {
        return Ok(m);
    }
    if !new.is_opted_in() {
        let was_injected = old.is_some_and(Workload::is_opted_in)
            || new
                .template_labels()
                .is_some_and(|l| l.contains_key(INJECTED_LABEL));
        if op == Operation::Update && was_injected {
            return Ok(opt_out(new, old));
        }
        return Ok(Mutation::default());
    }
    // `kubectl rollout undo` replaces the annotations with the old ReplicaSet's, which
    // never carried the controller's record of contracted releases: read it from the
    // stored object, and keep it.
    let dropped = recorded(new)
        .is_none()
        .then(|| old.and_then(recorded))
        .flatten();
    let mut m = inject(new, old, recorded(new).or(dropped), image)?;
    if let Some(releases) = dropped {
        let annotations = new.annotations().cloned().unwrap_or_default();
        let mut kept = annotations.clone();
        kept.insert(CONTRACTED_RELEASES.to_owned(), releases.clone());
        let before = match new.annotations() {
            Some(_) => json!({"metadata": {"annotations": annotations}}),
            None => json!({"metadata": {}}),
        };
        let after = json!({"metadata": {"annotations": kept}});
        m.patch.0.extend(json_patch::diff(&before, &after).0);
    }
    Ok(m)
}

/// Workloads whose pod template the engine never changes, whatever their labels: a Job
/// made by a CronJob (its template is the CronJob's, injected with the CronJob's
/// settings), a Job's update (its pod template is immutable), a Rollout that takes its
/// pod template from another object.
fn left_alone(op: Operation, new: &Workload, old: Option<&Workload>) -> Option<Mutation> {
    let warn = |w: String| {
        Some(Mutation {
            patch: json_patch::Patch(Vec::new()),
            warnings: vec![w],
        })
    };
    if new.kind == Kind::Job {
        if new.controller().is_some_and(|(kind, _)| kind == "CronJob") {
            return Some(Mutation::default());
        }
        if op == Operation::Update {
            let opted_out = !new.is_opted_in() && old.is_some_and(Workload::is_opted_in);
            if opted_out && carries_injection(new) {
                return warn(job_keeps_injection(new.kind));
            }
            return Some(Mutation::default());
        }
    }
    if new.kind == Kind::Rollout && new.template().is_none() {
        return match new.workload_ref() {
            Some((kind, name)) if new.is_opted_in() => warn(workload_ref_warning(kind, name)),
            _ => Some(Mutation::default()),
        };
    }
    None
}

/// The warning for a Job whose opt-in label was removed.
pub fn job_keeps_injection(kind: Kind) -> String {
    format!(
        "django-migrate: a {kind}'s pod template cannot change: the injection stays until the {kind} is deleted"
    )
}

/// The warning for an opted-in Rollout with a `workloadRef`.
pub fn workload_ref_warning(kind: &str, name: &str) -> String {
    let mut w = format!(
        "django-migrate: this Rollout takes its pod template from {kind} {name:?} (workloadRef): not injected"
    );
    crate::text::cut(&mut w, MAX_WARNING_LEN);
    w
}

/// The summary line of a workload without a readiness gate.
pub fn no_gate_warning(kind: Kind) -> String {
    if kind.runs_to_completion() {
        format!("django-migrate: no readiness gate (a {kind}'s pods serve no traffic)")
    } else {
        format!(
            "django-migrate: no readiness gate ({}: \"false\")",
            settings::READINESS_GATE_ANNOTATION
        )
    }
}

/// The warning for a Job or CronJob that defers migrations: only a Deployment,
/// StatefulSet or Rollout has a contract phase.
pub fn no_contract_warning(kind: Kind) -> String {
    format!(
        "django-migrate: a {kind} has no contract phase: deferred migrations are left to a Deployment's contract run"
    )
}

/// A warning when the template is a release from before an applied contract run (the
/// controller records those releases on the Deployment): it may read what was dropped.
fn rollback_warning(releases: &str, step: &Value) -> Option<String> {
    let hash = crate::contract_job::release_hash(step.as_object()?);
    releases
        .split(',')
        .any(|r| r.trim() == hash)
        .then(|| {
            "django-migrate: this is a release from before an applied contract run: it may read what that run dropped or changed".to_owned()
        })
}

/// The owned parts of a pod template, as they will be diffed.
struct Owned {
    kind: Kind,
    has_metadata: bool,
    labels: Option<JsonMap>,
    has_spec: bool,
    init_containers: Option<Vec<Value>>,
    readiness_gates: Option<Vec<Value>>,
    volumes: Option<Vec<Value>>,
}

impl Owned {
    fn of(d: &Workload) -> Owned {
        let template = d.template();
        let meta = template.and_then(|t| t.metadata.as_ref());
        let spec = template.and_then(|t| t.spec.as_ref());
        let to_values = |v: &Vec<JsonMap>| v.iter().cloned().map(Value::Object).collect();
        Owned {
            kind: d.kind,
            has_metadata: meta.is_some(),
            labels: meta.and_then(|m| m.labels.as_ref()).map(|l| {
                l.iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect()
            }),
            has_spec: spec.is_some(),
            init_containers: spec.and_then(|s| s.init_containers.as_ref()).map(to_values),
            readiness_gates: spec.and_then(|s| s.readiness_gates.as_ref()).map(to_values),
            volumes: spec.and_then(|s| s.volumes.as_ref()).map(to_values),
        }
    }

    /// `{"spec":{"template":{...}}}` (a CronJob's under `jobTemplate`) with only the keys
    /// that exist.
    fn into_document(self) -> Value {
        let mut template = JsonMap::new();
        if self.has_metadata || self.labels.is_some() {
            let mut meta = JsonMap::new();
            if let Some(labels) = self.labels {
                meta.insert("labels".into(), Value::Object(labels));
            }
            template.insert("metadata".into(), Value::Object(meta));
        }
        if self.has_spec
            || self.init_containers.is_some()
            || self.readiness_gates.is_some()
            || self.volumes.is_some()
        {
            let mut spec = JsonMap::new();
            if let Some(c) = self.init_containers {
                spec.insert("initContainers".into(), Value::Array(c));
            }
            if let Some(g) = self.readiness_gates {
                spec.insert("readinessGates".into(), Value::Array(g));
            }
            if let Some(v) = self.volumes {
                spec.insert("volumes".into(), Value::Array(v));
            }
            template.insert("spec".into(), Value::Object(spec));
        }
        // Built by hand, inside out: `json!` would serialise `template` into a copy.
        let mut doc = Value::Object(template);
        for key in self.kind.template_path().iter().rev() {
            let mut parent = JsonMap::new();
            parent.insert((*key).into(), doc);
            doc = Value::Object(parent);
        }
        doc
    }

    /// Removes everything the webhook injects.
    fn strip(&mut self) {
        if let Some(labels) = &mut self.labels {
            labels.remove(INJECTED_LABEL);
            labels.remove(CRONJOB_LABEL);
        }
        if let Some(c) = &mut self.init_containers {
            c.retain(|c| !value_name(c).is_some_and(injected::is_reserved));
            if c.is_empty() {
                self.init_containers = None;
            }
        }
        if let Some(g) = &mut self.readiness_gates {
            g.retain(|g| {
                g.get("conditionType").and_then(Value::as_str) != Some(MIGRATED_CONDITION)
            });
            if g.is_empty() {
                self.readiness_gates = None;
            }
        }
        if let Some(v) = &mut self.volumes {
            v.retain(|v| value_name(v) != Some(CODE_VOLUME));
            if v.is_empty() {
                self.volumes = None;
            }
        }
    }
}

fn value_name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn diff(before: Owned, after: Owned) -> json_patch::Patch {
    json_patch::diff(&before.into_document(), &after.into_document())
}

/// The injection as the stored object `old` carries it, against `d`'s after the change:
/// whether it differs (the webhook and the admission policies report the same changes,
/// and a policy sees only the stored object and the result).
fn injection_changed(old: &Workload, after: &Owned) -> bool {
    let view = |o: &Owned| {
        let list = |l: &Option<Vec<Value>>| l.clone().unwrap_or_default();
        (
            list(&o.init_containers),
            list(&o.readiness_gates),
            list(&o.volumes),
            o.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(INJECTED_LABEL)),
        )
    };
    view(&Owned::of(old)) != view(after)
}

fn opt_out(d: &Workload, old: Option<&Workload>) -> Mutation {
    let before = Owned::of(d);
    let mut after = Owned::of(d);
    after.strip();
    let removed = old.is_some_and(|o| injection_changed(o, &after));
    let patch = diff(before, after);
    let warnings = if removed {
        vec![format!(
            "django-migrate: label {} removed: removed the injected init containers, volume and readiness gate",
            settings::INJECT_LABEL
        )]
    } else {
        Vec::new()
    };
    Mutation { patch, warnings }
}

/// Whether the pod template carries anything the webhook or the policies inject (the
/// shapes of earlier releases included): what an opt-out would remove.
pub fn carries_injection(d: &Workload) -> bool {
    let mut stripped = Owned::of(d);
    stripped.strip();
    let owned = Owned::of(d);
    owned.labels != stripped.labels
        || owned.init_containers != stripped.init_containers
        || owned.readiness_gates != stripped.readiness_gates
        || owned.volumes != stripped.volumes
}

/// `uninject`: the patch that gives a workload back its own pod template (everything
/// the webhook or the admission policies injected removed, the shapes of earlier releases
/// included), drops the controller's record of contracted releases, and sets the opt-in
/// label to `"false"`, so that a later install does not inject it again unasked. `None`
/// when the Deployment carries nothing of ours and is not opted in.
pub fn uninject(d: &Workload) -> Option<json_patch::Patch> {
    let before = Owned::of(d);
    let mut after = Owned::of(d);
    after.strip();
    let carries = carries_injection(d);
    let labels = d.labels().cloned().unwrap_or_default();
    let opted_in = d.is_opted_in();
    let recorded = recorded(d).is_some();
    if !carries && !opted_in && !recorded {
        return None;
    }
    let mut patch = diff(before, after);
    if opted_in || carries {
        let mut set = labels.clone();
        set.insert(settings::INJECT_LABEL.to_owned(), "false".to_owned());
        let before = match d.labels() {
            Some(_) => json!({"metadata": {"labels": labels}}),
            None => json!({"metadata": {}}),
        };
        patch
            .0
            .extend(json_patch::diff(&before, &json!({"metadata": {"labels": set}})).0);
    }
    if recorded {
        let annotations = d.annotations().cloned().unwrap_or_default();
        let mut kept = annotations.clone();
        kept.remove(CONTRACTED_RELEASES);
        let after = if kept.is_empty() {
            json!({"metadata": {}})
        } else {
            json!({"metadata": {"annotations": kept}})
        };
        patch
            .0
            .extend(json_patch::diff(&json!({"metadata": {"annotations": annotations}}), &after).0);
    }
    Some(patch)
}

/// The controller's record of releases older than an applied contract run.
fn recorded(d: &Workload) -> Option<&String> {
    d.annotations()?.get(CONTRACTED_RELEASES)
}

/// `old`: the stored object on UPDATE. `contracted`: the controller's record of releases
/// older than an applied contract run.
fn inject(
    d: &Workload,
    old: Option<&Workload>,
    contracted: Option<&String>,
    image: &CodeImage,
) -> Result<Mutation, Denial> {
    let settings = Settings::for_kind(d.kind, d.annotations())?;
    let containers = d
        .pod_spec()
        .and_then(|s| s.containers.as_deref())
        .unwrap_or_default();
    if containers.is_empty() {
        return Err(Denial::NoContainers);
    }
    let mut warnings = Vec::new();
    let app = choose_app_container(d, containers, &settings, &mut warnings)?;
    let app_name = container_name(app).unwrap_or("<unnamed>");

    let before = Owned::of(d);
    let mut after = Owned::of(d);
    after.strip();

    for c in after.init_containers.iter().flatten() {
        if let Some(w) = existing_migrate_warning(c) {
            warnings.push(w);
        }
    }
    if let Some(w) = sqlite_warning(d, app) {
        warnings.push(w);
    }
    if d.kind.runs_to_completion()
        && (!settings.defer.is_empty()
            || settings.unsafe_migrations == settings::UnsafeMigrations::Defer)
    {
        warnings.push(no_contract_warning(d.kind));
    }

    let pod_security = d.pod_spec().and_then(|s| s.security_context.as_ref());
    let step = injected::step_container(app, &settings, d.kind);
    if let Some(w) = contracted.and_then(|releases| rollback_warning(releases, &step)) {
        warnings.push(w);
    }
    after
        .init_containers
        .get_or_insert_with(Vec::new)
        .extend(injected::init_containers(image, pod_security, step));
    after
        .volumes
        .get_or_insert_with(Vec::new)
        .push(injected::code_volume(image));
    if settings.readiness_gate {
        after
            .readiness_gates
            .get_or_insert_with(Vec::new)
            .push(json!({ "conditionType": MIGRATED_CONDITION }));
    }
    let labels = after.labels.get_or_insert_with(JsonMap::new);
    labels.insert(INJECTED_LABEL.into(), "true".into());
    if d.kind == Kind::CronJob {
        labels.insert(CRONJOB_LABEL.into(), d.name().into());
    }

    // "updated" when the stored object was injected: what a user applied before, not
    // what the request happens to carry (admission policies see only the stored object).
    let was_injected = old.is_some_and(|o| {
        Owned::of(o)
            .init_containers
            .iter()
            .flatten()
            .any(|c| value_name(c).is_some_and(injected::is_reserved))
    });
    let verb = if was_injected { "updated" } else { "injected" };
    let changed = old.is_none_or(|o| injection_changed(o, &after));
    let patch = diff(before, after);
    if changed {
        // Say what changed in the stored object; an update that leaves the injection as
        // it was only gets the problems.
        let step = injected::step_name(settings.mode);
        let summary = [
            match image.delivery {
                CodeDelivery::Copy => format!(
                    "django-migrate: {verb} init containers {CODE_CONTAINER} and {step} (copied from {app_name:?})"
                ),
                CodeDelivery::ImageVolume => format!(
                    "django-migrate: {verb} init container {step} (copied from {app_name:?}) and image volume {CODE_VOLUME}"
                ),
            },
            if settings.readiness_gate {
                format!(
                    "django-migrate: readiness gate {MIGRATED_CONDITION}: a pod is Ready once its migration step succeeded"
                )
            } else {
                no_gate_warning(d.kind)
            },
        ];
        warnings.splice(0..0, summary);
    }
    for w in &mut warnings {
        crate::text::cut(w, MAX_WARNING_LEN);
    }
    Ok(Mutation { patch, warnings })
}

fn choose_app_container<'a>(
    d: &Workload,
    containers: &'a [JsonMap],
    settings: &Settings,
    warnings: &mut Vec<String>,
) -> Result<&'a JsonMap, Denial> {
    let find = |name: &str| containers.iter().find(|c| container_name(c) == Some(name));
    if let Some(name) = &settings.container {
        return find(name).ok_or_else(|| Denial::NoSuchContainer {
            name: name.clone(),
            choices: containers
                .iter()
                .map(|c| format!("{:?}", container_name(c).unwrap_or_default()))
                .collect(),
        });
    }
    let first = &containers[0];
    let default = d
        .template_annotations()
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION));
    if let Some(name) = default {
        if let Some(c) = find(name) {
            if containers.len() > 1 {
                warnings.push(format!(
                    "django-migrate: {} containers, using {name:?} from {DEFAULT_CONTAINER_ANNOTATION}",
                    containers.len()
                ));
            }
            return Ok(c);
        }
        warnings.push(format!(
            "django-migrate: {DEFAULT_CONTAINER_ANNOTATION} names no container ({name:?}); using the first"
        ));
    } else if containers.len() > 1 {
        warnings.push(format!(
            "django-migrate: {} containers, using the first, {:?}; set {} to choose",
            containers.len(),
            container_name(first).unwrap_or_default(),
            settings::CONTAINER
        ));
    }
    Ok(first)
}

/// Many public charts ship an init container that runs or polls `migrate`.
fn existing_migrate_warning(c: &Value) -> Option<String> {
    let name = value_name(c).unwrap_or("<unnamed>");
    let text: Vec<&str> = ["command", "args"]
        .iter()
        .filter_map(|k| c.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let text = text.join(" ");
    if !text.contains("migrate") {
        return None;
    }
    Some(if text.contains("--check") {
        format!(
            "django-migrate: init container {name:?} polls migrate --check; django-migrate makes it redundant"
        )
    } else {
        format!(
            "django-migrate: init container {name:?} already runs migrations; remove it so only the locked migrate runs"
        )
    })
}

/// SQLite has no server, so there is no cross-pod lock and each pod has its own file.
fn sqlite_warning(d: &Workload, app: &JsonMap) -> Option<String> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if replicas <= 1 {
        return None;
    }
    let env = app.get("env")?.as_array()?;
    let url = env
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("DATABASE_URL"))?
        .get("value")?
        .as_str()?;
    url.starts_with("sqlite").then(|| {
        format!(
            "django-migrate: DATABASE_URL is SQLite with {replicas} replicas: no shared database, no cross-pod lock"
        )
    })
}
