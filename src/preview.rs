//! `inject`: the offline preview. Reads YAML or JSON documents, runs every opted-in
//! workload (Deployment, StatefulSet, Job, CronJob, Argo Rollout) through the same engine and JSON Patch as the webhook, and writes
//! every document back. Documents that do not change are written exactly as they were
//! read (comments included) when the output is YAML.

use serde_json::Value;
use thiserror::Error;

use crate::contract_job::{self, NoContractJob};
use crate::injected::CodeImage;
use crate::mutation::{self, Denial, Operation};
use crate::names::INJECTED_LABEL;
use crate::plan_job::{self, PlanJobOptions};
use crate::workload::{Kind, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

#[derive(Debug, Error)]
pub enum PreviewError {
    #[error("document {doc}: not valid YAML")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("input is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("document {doc} ({name}): not a valid {api_version} {kind}: {message}")]
    Workload {
        doc: usize,
        name: String,
        api_version: String,
        kind: Kind,
        message: String,
    },
    #[error("document {doc} ({name}): {denial}")]
    Denied {
        doc: usize,
        name: String,
        denial: Denial,
    },
    #[error("document {doc}: cannot apply the patch: {message}")]
    Patch { doc: usize, message: String },
    #[error("cannot write the output: {0}")]
    Output(String),
    #[error(
        "no contract Job: no opted-in Deployment, StatefulSet or Rollout in the input has a step that migrates"
    )]
    NoContractJob,
    #[error("no plan Job: no apps/v1 Deployment in the input is opted in")]
    NoPlanJob,
}

/// The preview's result: the text to print and the warnings the webhook would return.
#[derive(Debug, Default)]
pub struct Preview {
    pub output: String,
    pub warnings: Vec<String>,
    /// How many Deployments were changed.
    pub mutated: usize,
}

struct Doc {
    /// The document's original text (YAML input only).
    text: Option<String>,
    value: Value,
    changed: bool,
}

/// Runs the preview over a whole input stream.
pub fn inject(
    input: &str,
    format: OutputFormat,
    image: &CodeImage,
) -> Result<Preview, PreviewError> {
    let mut docs = parse(input)?;
    let mut preview = Preview::default();
    change_each(&mut docs, |n, value| {
        inject_one(n, value, image, &mut preview)
    })?;

    preview.output = render(&docs, format)?;
    Ok(preview)
}

/// The documents as text: unchanged YAML documents exactly as read.
fn render(docs: &[Doc], format: OutputFormat) -> Result<String, PreviewError> {
    let mut out = String::new();
    match format {
        OutputFormat::Json => {
            for doc in docs.iter().filter(|d| !d.value.is_null()) {
                let text = serde_json::to_string_pretty(&doc.value)
                    .map_err(|e| PreviewError::Output(e.to_string()))?;
                out.push_str(&text);
                out.push('\n');
            }
        }
        OutputFormat::Yaml => {
            for doc in docs {
                if let (Some(text), false) = (&doc.text, doc.changed) {
                    out.push_str(text);
                    if !text.is_empty() && !text.ends_with('\n') {
                        out.push('\n');
                    }
                } else {
                    if doc.value.is_null() {
                        continue;
                    }
                    let text = serde_yaml_ng::to_string(&doc.value)
                        .map_err(|e| PreviewError::Output(e.to_string()))?;
                    if !out.is_empty() || doc.text.as_deref().is_some_and(starts_with_marker) {
                        out.push_str("---\n");
                    }
                    out.push_str(&text);
                }
            }
        }
    }
    Ok(out)
}

/// The documents of a YAML or JSON stream.
fn parse(input: &str) -> Result<Vec<Doc>, PreviewError> {
    let trimmed = input.trim_start();
    let is_json = trimmed.starts_with('{') || trimmed.starts_with('[');
    let docs = if is_json {
        serde_json::Deserializer::from_str(input)
            .into_iter::<Value>()
            .map(|v| {
                v.map(|value| Doc {
                    text: None,
                    value,
                    changed: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(PreviewError::Json)?
    } else {
        split_yaml(input)
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                serde_yaml_ng::from_str::<Value>(&text)
                    .map(|value| Doc {
                        text: Some(text),
                        value,
                        changed: false,
                    })
                    .map_err(|source| PreviewError::Yaml { doc: i + 1, source })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(docs)
}

/// `inject --contract-job`: the contract Job of each opted-in Deployment whose step
/// migrates, built from the injected Deployment as the controller builds it (without the
/// owner reference, which needs the stored Deployment's UID). A Deployment that carries
/// the injection already (read from the cluster) is used as it is.
pub fn contract_jobs(
    input: &str,
    format: OutputFormat,
    image: &CodeImage,
) -> Result<Preview, PreviewError> {
    jobs(
        input,
        format,
        image,
        &[Kind::Deployment, Kind::StatefulSet, Kind::Rollout],
        PreviewError::NoContractJob,
        |d, preview| match contract_job::contract_job(d, None) {
            Ok(job) => Some(job),
            Err(e @ (NoContractJob::WaitMode | NoContractJob::NoContractPhase(_))) => {
                let name = d.pointer("/metadata/name").and_then(Value::as_str);
                preview.warnings.push(format!(
                    "{} {}: {e}",
                    Kind::of_object(d),
                    name.unwrap_or("?"),
                ));
                None
            }
            Err(NoContractJob::NotInjected | NoContractJob::NoName) => None,
        },
    )
}

/// `inject --plan-job`: the plan Job of each opted-in Deployment, as `plan` creates it
/// (named after the release it plans rather than uniquely). A Deployment that carries the
/// injection already is used as it is.
pub fn plan_jobs(
    input: &str,
    format: OutputFormat,
    image: &CodeImage,
    options: &PlanJobOptions,
) -> Result<Preview, PreviewError> {
    jobs(
        input,
        format,
        image,
        &[Kind::Deployment],
        PreviewError::NoPlanJob,
        |d, _| plan_job::plan_job(d, options).ok(),
    )
}

/// The Jobs `job_of` builds from the Deployments of the input, each injected first unless
/// it carries the injection already (read from the cluster, with the code image its
/// webhook chose); `none` when it builds none.
fn jobs(
    input: &str,
    format: OutputFormat,
    image: &CodeImage,
    kinds: &[Kind],
    none: PreviewError,
    mut job_of: impl FnMut(&Value, &mut Preview) -> Option<Value>,
) -> Result<Preview, PreviewError> {
    let mut preview = Preview::default();
    let mut jobs = Vec::new();
    for (i, doc) in parse(input)?.into_iter().enumerate() {
        let items = if is_list(&doc.value) {
            doc.value["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![doc.value]
        };
        for mut item in items {
            if !carries_injection(&item) {
                inject_one(i + 1, &mut item, image, &mut preview)?;
            }
            let kind = item.get("kind").and_then(Value::as_str);
            if !kinds.iter().any(|k| Some(k.as_str()) == kind) {
                continue;
            }
            jobs.extend(job_of(&item, &mut preview));
        }
    }
    if jobs.is_empty() {
        return Err(none);
    }
    let mut out = String::new();
    for (i, job) in jobs.iter().enumerate() {
        let text = match format {
            OutputFormat::Json => serde_json::to_string_pretty(job).map(|t| t + "\n"),
            OutputFormat::Yaml => serde_yaml_ng::to_string(job)
                .map(|t| if i > 0 { format!("---\n{t}") } else { t })
                .map_err(serde::ser::Error::custom),
        }
        .map_err(|e| PreviewError::Output(e.to_string()))?;
        out.push_str(&text);
    }
    preview.mutated = jobs.len();
    preview.output = out;
    Ok(preview)
}

/// The pod template carries the injection's label (the object was read from the cluster,
/// or injected before).
fn carries_injection(object: &Value) -> bool {
    object
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object)
        .is_some_and(|l| l.contains_key(INJECTED_LABEL))
}

/// The apps/v1 Deployment named `name` in a YAML or JSON stream (the items of a List too),
/// in `namespace` or naming none.
pub fn find_deployment(
    input: &str,
    name: &str,
    namespace: &str,
) -> Result<Option<Value>, PreviewError> {
    let found = parse(input)?
        .into_iter()
        .flat_map(|doc| {
            if is_list(&doc.value) {
                doc.value["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![doc.value]
            }
        })
        .find(|v| {
            let text = |pointer: &str| v.pointer(pointer).and_then(Value::as_str);
            text("/apiVersion") == Some("apps/v1")
                && text("/kind") == Some("Deployment")
                && text("/metadata/name") == Some(name)
                && text("/metadata/namespace").is_none_or(|ns| ns == namespace)
        });
    Ok(found)
}

/// Injects one object in place, as the webhook would when it is created: one stored
/// while the webhook was unreachable, or one of an earlier release's injection, brought up
/// to date. Returns the webhook's warnings.
pub fn inject_object(value: &mut Value, image: &CodeImage) -> Result<Vec<String>, PreviewError> {
    let mut preview = Preview::default();
    inject_one(1, value, image, &mut preview)?;
    Ok(preview.warnings)
}

fn is_list(v: &Value) -> bool {
    v.get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && v.get("items").is_some_and(Value::is_array)
}

/// The object as a workload of one of the kinds the webhook injects, with its name for
/// messages; `None` for any other kind of object.
fn read_workload(doc: usize, value: &Value) -> Result<Option<(String, Workload)>, PreviewError> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
    let (group, version) = text("apiVersion").split_once('/').unwrap_or(("", ""));
    let Some(kind) = Kind::from_gvk(group, version, text("kind")) else {
        return Ok(None);
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map_or_else(|| kind.to_string(), |n| format!("{kind} {n}"));
    let mut workload: Workload =
        serde_path_to_error::deserialize(value).map_err(|e| PreviewError::Workload {
            doc,
            name: name.clone(),
            api_version: kind.api_version(),
            kind,
            message: e.to_string(),
        })?;
    workload.kind = kind;
    Ok(Some((name, workload)))
}

/// Runs `change` on every object of the documents (the items of a List too), and marks
/// the documents it changed.
fn change_each(
    docs: &mut [Doc],
    mut change: impl FnMut(usize, &mut Value) -> Result<bool, PreviewError>,
) -> Result<(), PreviewError> {
    for (i, doc) in docs.iter_mut().enumerate() {
        let n = i + 1;
        if is_list(&doc.value) {
            if let Some(Value::Array(items)) = doc.value.get_mut("items") {
                for item in items {
                    doc.changed |= change(n, item)?;
                }
            }
        } else {
            doc.changed = change(n, &mut doc.value)?;
        }
    }
    Ok(())
}

/// Mutates one object in place if it is an opted-in apps/v1 Deployment.
fn inject_one(
    doc: usize,
    value: &mut Value,
    image: &CodeImage,
    preview: &mut Preview,
) -> Result<bool, PreviewError> {
    let Some((name, deployment)) = read_workload(doc, value)? else {
        return Ok(false);
    };
    let m = mutation::mutate(Operation::Create, &deployment, None, image).map_err(|denial| {
        PreviewError::Denied {
            doc,
            name: name.clone(),
            denial,
        }
    })?;
    preview.warnings.extend(m.warnings.iter().cloned());
    if m.is_empty() {
        return Ok(false);
    }
    json_patch::patch(value, &m.patch).map_err(|e| PreviewError::Patch {
        doc,
        message: e.to_string(),
    })?;
    preview.mutated += 1;
    Ok(true)
}

/// `uninject`: every apps/v1 Deployment that is opted in or carries the injection, given
/// back its own pod template with the opt-in label set to `"false"` (the change a GitOps
/// user commits before uninstalling); every other document is written back as it was
/// read. Manifests from Git and `kubectl get -o yaml` output both work.
pub fn uninject(input: &str, format: OutputFormat) -> Result<Preview, PreviewError> {
    let mut docs = parse(input)?;
    let mut preview = Preview::default();
    change_each(&mut docs, |n, value| uninject_one(n, value, &mut preview))?;
    preview.output = render(&docs, format)?;
    Ok(preview)
}

/// One object, uninjected in place when it is an apps/v1 Deployment that is opted in or
/// carries the injection (what the chart's uninstall hook applies to the cluster's).
pub fn uninject_object(value: &mut Value) -> Result<bool, PreviewError> {
    uninject_one(1, value, &mut Preview::default())
}

fn uninject_one(
    doc: usize,
    value: &mut Value,
    preview: &mut Preview,
) -> Result<bool, PreviewError> {
    let Some((_, workload)) = read_workload(doc, value)? else {
        return Ok(false);
    };
    let Some(patch) = mutation::uninject(&workload) else {
        return Ok(false);
    };
    json_patch::patch(value, &patch).map_err(|e| PreviewError::Patch {
        doc,
        message: e.to_string(),
    })?;
    // A template whose only label was the injection's had no labels (or metadata) of its
    // own: leave none, rather than empty maps.
    if let Some(template) = value
        .pointer_mut(workload.kind.template_pointer())
        .and_then(Value::as_object_mut)
    {
        let empty = |v: Option<&Value>| {
            v.and_then(Value::as_object)
                .is_some_and(serde_json::Map::is_empty)
        };
        if let Some(meta) = template.get_mut("metadata").and_then(Value::as_object_mut)
            && empty(meta.get("labels"))
        {
            meta.remove("labels");
        }
        if empty(template.get("metadata")) {
            template.remove("metadata");
        }
    }
    preview.mutated += 1;
    Ok(true)
}

fn starts_with_marker(text: &str) -> bool {
    text.lines().any(is_marker)
}

/// A YAML document start marker: `---` alone or followed by whitespace.
fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Splits a YAML stream into the text of each document; each piece after the first
/// starts with its `---` line, so joining the pieces gives back the input.
fn split_yaml(input: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut has_content = false;
    for line in input.split_inclusive('\n') {
        if is_marker(line) && has_content {
            docs.push(std::mem::take(&mut current));
            has_content = false;
        }
        if is_marker(line) || (!line.trim().is_empty() && !line.trim_start().starts_with('#')) {
            has_content = true;
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        docs.push(current);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_keeps_every_byte() {
        let input = "# c\n---\na: 1\n--- \nb: 2\n---\n";
        let docs = split_yaml(input);
        assert_eq!(docs.concat(), input);
        assert_eq!(docs.len(), 3);
    }

    #[test]
    fn the_contract_job_of_each_migrating_deployment() {
        let input = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: {django-migrate.io/inject: "true"}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: web, image: "shop:2"}]
---
apiVersion: v1
kind: Service
metadata: {name: shop}
"#;
        let p = contract_jobs(input, OutputFormat::Yaml, &CodeImage::default()).unwrap();
        let job: Value = serde_yaml_ng::from_str(&p.output).unwrap();
        assert_eq!(job["kind"], "Job");
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["image"],
            "shop:2"
        );
        // From the cluster: injected already, with the code image its webhook chose.
        let chosen = CodeImage {
            image: "registry.local/django-migrate-webhook:9".into(),
            pull_policy: "Always".into(),
            ..CodeImage::default()
        };
        let stored = inject(input, OutputFormat::Yaml, &chosen).unwrap().output;
        let p = contract_jobs(&stored, OutputFormat::Json, &CodeImage::default()).unwrap();
        let from_cluster: Value = serde_json::from_str(&p.output).unwrap();
        assert_eq!(
            from_cluster["spec"]["template"]["spec"]["initContainers"][0]["image"],
            "registry.local/django-migrate-webhook:9"
        );
        assert_eq!(from_cluster["metadata"]["name"], job["metadata"]["name"]);
        let plain = "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n";
        let e = contract_jobs(plain, OutputFormat::Yaml, &CodeImage::default()).unwrap_err();
        assert!(matches!(e, PreviewError::NoContractJob), "{e}");
    }

    #[test]
    fn the_plan_job_of_each_opted_in_deployment() {
        let input = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "apps/v1", "kind": "Deployment",
   "metadata": {"name": "shop", "labels": {"django-migrate.io/inject": "true"}},
   "spec": {"selector": {"matchLabels": {"app": "shop"}},
            "template": {"metadata": {"labels": {"app": "shop"}},
                         "spec": {"containers": [{"name": "web", "image": "shop:2"}]}}}},
  {"apiVersion": "apps/v1", "kind": "Deployment",
   "metadata": {"name": "worker", "labels": {"django-migrate.io/inject": "true"},
                "annotations": {"django-migrate.io/mode": "wait"}},
   "spec": {"selector": {"matchLabels": {"app": "worker"}},
            "template": {"metadata": {"labels": {"app": "worker"}},
                         "spec": {"containers": [{"name": "w", "image": "shop:2"}]}}}},
  {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "other"},
   "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x", "image": "x"}]}}}}
]}"#;
        let options = PlanJobOptions {
            image: Some("shop:3"),
            ..PlanJobOptions::default()
        };
        let p = plan_jobs(input, OutputFormat::Yaml, &CodeImage::default(), &options).unwrap();
        assert_eq!(p.mutated, 2);
        let jobs: Vec<Value> = p
            .output
            .split("---\n")
            .map(|t| serde_yaml_ng::from_str(t).unwrap())
            .collect();
        assert_eq!(jobs.len(), 2);
        for job in &jobs {
            assert_eq!(job["kind"], "Job");
            assert_eq!(
                job["spec"]["template"]["spec"]["containers"][0]["image"],
                "shop:3"
            );
        }
        assert!(
            jobs[1]["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("worker-plan-")
        );
        let plain = "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n";
        let e = plan_jobs(plain, OutputFormat::Yaml, &CodeImage::default(), &options).unwrap_err();
        assert!(matches!(e, PreviewError::NoPlanJob), "{e}");
    }

    #[test]
    fn a_deployment_is_found_by_name_in_its_namespace() {
        let input = "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop, namespace: staging}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: shop}\nspec: {replicas: 2}\n";
        let found = find_deployment(input, "shop", "prod").unwrap().unwrap();
        assert_eq!(found["spec"]["replicas"], 2);
        let staging = find_deployment(input, "shop", "staging").unwrap().unwrap();
        assert_eq!(staging["metadata"]["namespace"], "staging");
        assert_eq!(find_deployment(input, "web", "prod").unwrap(), None);
    }

    #[test]
    fn other_documents_pass_through_verbatim() {
        let input = "# comment\napiVersion: v1\nkind: ConfigMap # inline\nmetadata: {name: x}\n---\nkind: Service\n";
        let p = inject(input, OutputFormat::Yaml, &CodeImage::default()).unwrap();
        assert_eq!(p.output, input);
        assert_eq!(p.mutated, 0);
    }
}
