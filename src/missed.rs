//! Opted-in Deployments stored without the injection.
//!
//! With `failurePolicy: Ignore`, a Deployment applied while the webhook was unreachable is
//! stored as written: labelled, but its pods never migrate and nothing says so. The leader
//! watches the Deployments that carry the opt-in label (filtered by the API server) and
//! keeps only their identity and whether the pod template carries the injection's label.
//! Each one found without it gets a Warning Event, one log line and a count in a gauge by
//! namespace; with healing on, the controller sends it through the webhook again by
//! patching it (an empty merge patch: admission runs, the webhook injects, nothing of the
//! controller's stays behind).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Deserializer};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::names::{CONTROLLER_NAME, INJECT_LABEL, INJECTED_LABEL, event};
use crate::telemetry::Chain;
use crate::watched::lean_resource;

/// How long a heal waits before it is tried again while the webhook still does not inject.
const HEAL_RETRY: Duration = Duration::from_secs(60);

/// An opted-in Deployment as the missed-injection watch keeps it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WatchedDeployment {
    #[serde(deserialize_with = "identity")]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "spec", deserialize_with = "template_injected")]
    pub injected: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn identity<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let i = Identity::deserialize(d)?;
    Ok(ObjectMeta {
        name: i.name,
        namespace: i.namespace,
        uid: i.uid,
        resource_version: i.resource_version,
        ..ObjectMeta::default()
    })
}

/// True when `spec.template.metadata.labels` has the injection's label.
fn template_injected<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize, Default)]
    struct Spec {
        #[serde(default)]
        template: Template,
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
    Ok(spec
        .template
        .metadata
        .labels
        .is_some_and(|l| l.contains_key(INJECTED_LABEL)))
}

lean_resource!(WatchedDeployment, "Deployment", "apps", "v1", "deployments");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// Opted-in Deployments stored without the injection, by namespace; kept by the leader
/// only, so cleared when its watch stops.
#[derive(Clone, Debug, Default)]
pub struct MissedMetrics {
    not_injected: Family<NamespaceLabel, Gauge>,
}

impl MissedMetrics {
    pub fn register(registry: &mut Registry) -> MissedMetrics {
        let metrics = MissedMetrics::default();
        registry.register(
            "deployments_not_injected",
            "Deployments labelled django-migrate.io/inject=true stored without the migration step",
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
        });
    }
}

/// The opted-in Deployments found without the injection, by `namespace/name`.
struct Missed {
    by_key: Mutex<HashMap<String, String>>,
    metrics: MissedMetrics,
}

impl Drop for Missed {
    fn drop(&mut self) {
        self.metrics.not_injected.clear();
    }
}

impl Missed {
    /// Records whether `d` misses the injection; true when it was not known to before.
    fn set(&self, d: &WatchedDeployment, missing: bool) -> bool {
        let namespace = d.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", d.name_any());
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = if missing {
            by_key.insert(key, namespace.clone()).is_none()
        } else {
            by_key.remove(&key).is_some()
        };
        if changed {
            self.publish(&by_key, &namespace);
        }
        changed && missing
    }

    fn forget(&self, d: &WatchedDeployment) {
        let namespace = d.namespace().unwrap_or_default();
        let mut by_key = self
            .by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if by_key
            .remove(&format!("{namespace}/{}", d.name_any()))
            .is_some()
        {
            self.publish(&by_key, &namespace);
        }
    }

    fn publish(&self, by_key: &HashMap<String, String>, namespace: &str) {
        let n = by_key.values().filter(|ns| *ns == namespace).count();
        self.metrics
            .not_injected
            .get_or_create(&NamespaceLabel {
                namespace: namespace.to_owned(),
            })
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

async fn reconcile(d: Arc<WatchedDeployment>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let newly = ctx.missed.set(&d, !d.injected);
    if d.injected {
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or_default();
    let name = d.name_any();
    if newly {
        tracing::warn!(
            deployment = %format!("{namespace}/{name}"),
            heal = ctx.heal,
            "labelled {INJECT_LABEL}=true but stored without the migration step: it was applied while the webhook was unreachable or before the chart was installed, or its namespace is not selected by the webhook (or the policy binding)"
        );
        let note = if ctx.heal {
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
        if let Err(e) = ctx.recorder.publish(&event, &d.object_ref(&())).await {
            tracing::warn!(error = %Chain(&e), "cannot publish an event on the Deployment");
        }
    }
    if !ctx.heal {
        return Ok(Action::await_change());
    }
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(CONTROLLER_NAME.into()),
        ..PatchParams::default()
    };
    match api
        .patch(&name, &params, &Patch::Merge(serde_json::json!({})))
        .await
    {
        Ok(_) => {
            tracing::info!(deployment = %format!("{namespace}/{name}"), "sent through the webhook again");
        }
        Err(e) => {
            tracing::warn!(deployment = %format!("{namespace}/{name}"), error = %Chain(&e), "cannot send the Deployment through the webhook again");
        }
    }
    // Checked again after a while: the webhook may still be down.
    Ok(Action::requeue(HEAL_RETRY))
}

fn error_policy(_d: Arc<WatchedDeployment>, error: &kube::Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %Chain(error), "missed-injection check failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// Watches opted-in Deployments; runs until dropped (when the leader steps down).
pub async fn run(ctx: Context) {
    let api: Api<WatchedDeployment> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().labels(&format!("{INJECT_LABEL}=true"));
    let (store, writer) = reflector::store();
    let ctx = Arc::new(ctx);
    let observer = ctx.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::Delete(d)) = event {
                observer.missed.forget(d);
            }
        })
        .applied_objects();
    Controller::for_stream(stream, store)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_identity_and_whether_the_template_is_injected() {
        let d: WatchedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "n", "labels": {"django-migrate.io/inject": "true"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "shop"}},
                     "spec": {"containers": [{"name": "web", "image": "x"}]}}},
        }))
        .unwrap();
        assert!(!d.injected);
        assert_eq!(d.metadata.labels, None);
        assert_eq!(d.metadata.managed_fields, None);
        let d: WatchedDeployment = serde_json::from_value(json!({
            "metadata": {"name": "shop"},
            "spec": {"template": {"metadata": {"labels": {"django-migrate.io/injected": "true"}}}},
        }))
        .unwrap();
        assert!(d.injected);
    }
}
