//! Opted-in workloads stored without the injection.
//!
//! With `failurePolicy: Ignore`, a workload applied while the webhook was unreachable is
//! stored as written: labelled, but its pods never migrate and nothing says so. The leader
//! watches the Deployments, StatefulSets, Jobs, CronJobs and Rollouts that carry the
//! opt-in label (filtered by the API server) and keeps only their identity and whether the
//! pod template carries the injection's label. Each one found without it gets a Warning
//! Event, one log line and a count in a gauge by namespace (and kind); with healing on,
//! the controller sends it through the webhook again by patching it (an empty merge
//! patch: admission runs, the webhook injects, nothing of the controller's stays behind).
//! A Job cannot be healed (its pod template is immutable): its Event says to re-create it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Deserializer};

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::names::{CONTROLLER_NAME, INJECT_LABEL, INJECTED_LABEL, event};
use crate::telemetry::Chain;
use crate::workload::Kind;

/// How long a heal waits before it is tried again while the webhook still does not inject.
const HEAL_RETRY: Duration = Duration::from_secs(60);

/// An opted-in workload as the missed-injection watch keeps it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedWorkload {
    #[serde(deserialize_with = "identity")]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "spec", deserialize_with = "template_state")]
    pub template: TemplateState,
}

/// What the workload's pod template says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TemplateState {
    /// It has one of its own (a Rollout with a `workloadRef` has none).
    pub own: bool,
    /// It carries the injection's label.
    pub injected: bool,
}

/// A dynamic resource: one lean type for every kind, told apart by its `ApiResource`.
impl Resource for WatchedWorkload {
    type DynamicType = ApiResource;
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
}

fn identity<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let i = Identity::deserialize(d)?;
    Ok(ObjectMeta {
        name: i.name,
        namespace: i.namespace,
        uid: i.uid,
        resource_version: i.resource_version,
        // Only a controlling owner matters: a CronJob's Job is its CronJob's.
        owner_references: i.owner_references.map(|o| {
            o.into_iter()
                .filter(|o| o.controller == Some(true))
                .collect()
        }),
        ..ObjectMeta::default()
    })
}

/// Whether `spec.template` (a CronJob's `spec.jobTemplate.spec.template`) exists and has
/// the injection's label.
fn template_state<'de, D: Deserializer<'de>>(d: D) -> Result<TemplateState, D::Error> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        template: Option<Template>,
        job_template: Option<JobTemplate>,
    }
    #[derive(Deserialize, Default)]
    struct JobTemplate {
        #[serde(default)]
        spec: JobSpec,
    }
    #[derive(Deserialize, Default)]
    struct JobSpec {
        template: Option<Template>,
    }
    #[derive(Deserialize, Default)]
    struct Template {
        #[serde(default)]
        metadata: Meta,
    }
    #[derive(Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        labels: Option<HashMap<String, serde::de::IgnoredAny>>,
    }
    let spec = Option::<Spec>::deserialize(d)?.unwrap_or_default();
    let template = spec
        .template
        .or(spec.job_template.and_then(|j| j.spec.template));
    Ok(TemplateState {
        own: template.is_some(),
        injected: template
            .and_then(|t| t.metadata.labels)
            .is_some_and(|l| l.contains_key(INJECTED_LABEL)),
    })
}

impl WatchedWorkload {
    /// True when the webhook leaves it as stored: a Rollout without a template of its own,
    /// a Job made by a CronJob.
    fn left_alone(&self, kind: Kind) -> bool {
        !self.template.own
            || (kind == Kind::Job
                && self
                    .owner_references()
                    .iter()
                    .any(|o| o.kind == Kind::CronJob.as_str()))
    }
}

/// The series of the gauge: by namespace, and by kind for every kind but Deployment (whose
/// series keep their names).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct NamespaceLabel {
    namespace: String,
    kind: Kind,
}

impl EncodeLabelSet for NamespaceLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("namespace", self.namespace.as_str()).encode(encoder.encode_label())?;
        if self.kind != Kind::Deployment {
            ("kind", self.kind.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Opted-in workloads stored without the injection, by namespace and kind; kept by the
/// leader only, so cleared when its watch stops.
#[derive(Clone, Debug, Default)]
pub struct MissedMetrics {
    not_injected: Family<NamespaceLabel, Gauge>,
}

impl MissedMetrics {
    pub fn register(registry: &mut Registry) -> MissedMetrics {
        let metrics = MissedMetrics::default();
        registry.register(
            "deployments_not_injected",
            "Workloads (Deployments unless kind says otherwise) labelled django-migrate.io/inject=true stored without the migration step",
            metrics.not_injected.clone(),
        );
        metrics
    }
}

impl MissedMetrics {
    #[cfg(test)]
    pub(crate) fn touch(&self) {
        let _ = self.not_injected.get_or_create(&NamespaceLabel {
            namespace: String::new(),
            kind: Kind::Deployment,
        });
    }
}

/// The opted-in workloads found without the injection, by `kind namespace/name`.
struct Missed {
    by_key: Mutex<HashMap<String, NamespaceLabel>>,
    metrics: MissedMetrics,
}

impl Drop for Missed {
    fn drop(&mut self) {
        self.metrics.not_injected.clear();
    }
}

fn key(kind: Kind, d: &WatchedWorkload) -> (String, NamespaceLabel) {
    let namespace = d.namespace().unwrap_or_default();
    (
        format!("{kind} {namespace}/{}", d.name_any()),
        NamespaceLabel { namespace, kind },
    )
}

impl Missed {
    /// Records whether `d` misses the injection; true when it was not known to before.
    fn set(&self, kind: Kind, d: &WatchedWorkload, missing: bool) -> bool {
        let (key, label) = key(kind, d);
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if missing {
            by_key.insert(key, label.clone()).is_none()
        } else {
            by_key.remove(&key).is_some()
        };
        if changed {
            self.publish(&by_key, &label);
        }
        changed && missing
    }

    fn forget(&self, kind: Kind, d: &WatchedWorkload) {
        let (key, label) = key(kind, d);
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_key.remove(&key).is_some() {
            self.publish(&by_key, &label);
        }
    }

    fn publish(&self, by_key: &HashMap<String, NamespaceLabel>, label: &NamespaceLabel) {
        let n = by_key.values().filter(|l| *l == label).count();
        self.metrics
            .not_injected
            .get_or_create(label)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// What the reconciler works with.
pub struct Context {
    client: Client,
    recorder: Recorder,
    missed: Missed,
    heal: bool,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: MissedMetrics, heal: bool) -> Context {
        Context {
            client,
            recorder,
            missed: Missed {
                by_key: Mutex::new(HashMap::new()),
                metrics,
            },
            heal,
        }
    }
}

/// The watch of one kind.
struct Watched {
    ctx: Arc<Context>,
    kind: Kind,
    resource: ApiResource,
}

async fn reconcile(d: Arc<WatchedWorkload>, w: Arc<Watched>) -> Result<Action, kube::Error> {
    let (ctx, kind) = (&w.ctx, w.kind);
    let missing = !d.template.injected && !d.left_alone(kind);
    let newly = ctx.missed.set(kind, &d, missing);
    if !missing {
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    // A Job's pod template cannot change: it can only be created again.
    let heal = ctx.heal && kind != Kind::Job;
    if newly {
        tracing::warn!(
            workload = %format!("{kind} {namespace}/{name}"),
            heal,
            "labelled {INJECT_LABEL}=true but stored without the migration step: it was applied while the webhook was unreachable or before the chart was installed, or its namespace is not selected by the webhook (or the policy binding)"
        );
        let note = if kind == Kind::Job {
            "labelled django-migrate.io/inject=true but stored without the migration step (applied while the webhook was unreachable?): a Job cannot change, delete it and create it again"
        } else if heal {
            "labelled django-migrate.io/inject=true but stored without the migration step (applied while the webhook was unreachable?): sending it through the webhook again"
        } else {
            "labelled django-migrate.io/inject=true but stored without the migration step (applied while the webhook was unreachable?): apply it again, or enable controller.healMissedInjections"
        };
        let event = Event {
            type_: EventType::Warning,
            reason: event::NOT_INJECTED.into(),
            note: Some(note.into()),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(e) = ctx
            .recorder
            .publish(&event, &d.object_ref(&w.resource))
            .await
        {
            tracing::warn!(error = %Chain(&e), "cannot publish an event on the {kind}");
        }
    }
    if !heal {
        return Ok(Action::await_change());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &namespace, &w.resource);
    let params = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&name, &params, &Patch::Merge(serde_json::json!({})))
        .await
    {
        Ok(_) => {
            tracing::info!(workload = %format!("{kind} {namespace}/{name}"), "sent through the webhook again");
        }
        Err(e) => {
            tracing::warn!(workload = %format!("{kind} {namespace}/{name}"), error = %Chain(&e), "cannot send it through the webhook again");
        }
    }
    // Checked again after a while: the webhook may still be down.
    Ok(Action::requeue(HEAL_RETRY))
}

fn error_policy(_d: Arc<WatchedWorkload>, error: &kube::Error, _w: Arc<Watched>) -> Action {
    tracing::warn!(error = %Chain(error), "missed-injection check failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// Watches opted-in workloads of each of `kinds`; runs until dropped (when the leader
/// steps down).
pub async fn run(ctx: Context, kinds: Vec<Kind>) {
    let ctx = Arc::new(ctx);
    let watches = kinds.into_iter().map(|kind| {
        let resource = kind.api_resource();
        let api: Api<WatchedWorkload> = Api::all_with(ctx.client.clone(), &resource);
        let config = watcher::Config::default().labels(&format!("{INJECT_LABEL}=true"));
        let writer = Writer::new(resource.clone());
        let store = writer.as_reader();
        let observer = ctx.clone();
        let stream = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if let Ok(watcher::Event::Delete(d)) = event {
                    observer.missed.forget(kind, d);
                }
            })
            .applied_objects();
        let watched = Arc::new(Watched {
            ctx: ctx.clone(),
            kind,
            resource: resource.clone(),
        });
        Controller::for_stream_with(stream, store, resource)
            .run(reconcile, error_policy, watched)
            .for_each(|_| futures_util::future::ready(()))
    });
    futures_util::future::join_all(watches).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_identity_and_whether_the_template_is_injected() {
        let d: WatchedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "n", "labels": {"django-migrate.io/inject": "true"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "shop"}},
                     "spec": {"containers": [{"name": "web", "image": "x"}]}}},
        }))
        .unwrap();
        assert_eq!(
            d.template,
            TemplateState {
                own: true,
                injected: false
            }
        );
        assert_eq!(d.metadata.labels, None);
        assert_eq!(d.metadata.managed_fields, None);
        let d: WatchedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "shop"},
            "spec": {"template": {"metadata": {"labels": {"django-migrate.io/injected": "true"}}}},
        }))
        .unwrap();
        assert!(d.template.injected);
    }

    #[test]
    fn a_cronjobs_template_counts_and_a_rollout_without_one_is_left_alone() {
        let cron: WatchedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": {"metadata": {"labels":
                {"django-migrate.io/injected": "true"}}}}}},
        }))
        .unwrap();
        assert_eq!(
            cron.template,
            TemplateState {
                own: true,
                injected: true
            }
        );
        let by_ref: WatchedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"workloadRef": {"kind": "Deployment", "name": "web"}},
        }))
        .unwrap();
        assert!(by_ref.left_alone(Kind::Rollout));
        let made_by_cron: WatchedWorkload = serde_json::from_value(json!({
            "metadata": {"name": "nightly-1", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "u", "controller": true}]},
            "spec": {"template": {"metadata": {}}},
        }))
        .unwrap();
        assert!(made_by_cron.left_alone(Kind::Job));
        assert!(!made_by_cron.left_alone(Kind::StatefulSet));
    }
}
