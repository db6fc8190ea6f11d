//! How many injected pods of each Deployment carry each condition reason, kept up to date
//! from the watch stream (deletions, re-lists) and the reconciler (the reason it
//! computed), so that the gauges cost O(1) per event instead of a scan of the whole cache
//! per reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::step::Reason;
use crate::watched::{WatchedPod, WorkloadKey};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    #[prometheus(flatten)]
    workload: WorkloadKey,
    reason: &'static str,
}

/// The leader's view of the injected pods. Only the leader keeps these: they are cleared
/// when its [`PodStates`] goes away, so no stale value of a former leader stays behind to
/// alert on.
#[derive(Clone, Debug, Default)]
pub struct PodMetrics {
    pods: Family<PodLabels, Gauge>,
    gated: Gauge,
}

impl PodMetrics {
    /// Registers under the controller's prefix.
    pub fn register(registry: &mut Registry) -> PodMetrics {
        let metrics = PodMetrics::default();
        registry.register(
            "pods_gated",
            "Injected pods whose migrated condition is not True (as seen by the leader)",
            metrics.gated.clone(),
        );
        registry.register(
            "pods",
            "Injected pods by Deployment and the reason of their migrated condition (as seen by the leader)",
            metrics.pods.clone(),
        );
        metrics
    }

    fn set(&self, state: &State, n: i64) {
        self.pods
            .get_or_create(&PodLabels {
                workload: (*state.0).clone(),
                reason: state.1.as_str(),
            })
            .set(n);
    }

    #[cfg(test)]
    pub(crate) fn touch(&self) {
        self.set(&(Arc::default(), Reason::Migrated), 0);
    }

    fn clear(&self) {
        self.pods.clear();
        self.gated.set(0);
    }
}

/// The pods the leader has seen, by `namespace/name`, with their Deployment and condition
/// reason.
pub struct PodStates {
    inner: Mutex<Inner>,
    metrics: PodMetrics,
}

impl Drop for PodStates {
    fn drop(&mut self) {
        self.metrics.clear();
    }
}

type State = (Arc<WorkloadKey>, Reason);

#[derive(Default)]
struct Inner {
    by_pod: HashMap<String, State>,
    counts: HashMap<State, i64>,
    /// Pods seen since a re-list started; the others were deleted meanwhile.
    relisted: Option<HashSet<String>>,
    /// One shared copy of the labels per Deployment, not one per pod.
    deployments: HashMap<WorkloadKey, Arc<WorkloadKey>>,
    /// Pods whose reason is [`Reason::Migrated`], so that the gated count is O(1) per
    /// change.
    migrated: i64,
}

pub fn key(pod: &WatchedPod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl PodStates {
    pub fn new(metrics: PodMetrics) -> PodStates {
        PodStates {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    /// Records the reason the reconciler computed for a pod of `deployment`.
    pub fn set(&self, key: String, deployment: WorkloadKey, reason: Reason) {
        let mut inner = self.lock();
        if inner
            .by_pod
            .get(&key)
            .is_some_and(|(d, r)| *r == reason && **d == deployment)
        {
            return;
        }
        let deployment = if let Some(shared) = inner.deployments.get(&deployment) {
            shared.clone()
        } else {
            let shared = Arc::new(deployment.clone());
            inner.deployments.insert(deployment, shared.clone());
            shared
        };
        let new = (deployment, reason);
        let old = inner.by_pod.insert(key, new.clone());
        inner.shift(old.as_ref(), Some(&new));
        self.publish(&inner, old.as_ref(), Some(&new));
    }

    /// Follows the watch stream: deletions and re-lists (after which pods deleted while
    /// the watch was down are forgotten).
    pub fn observe(&self, event: &watcher::Event<WatchedPod>) {
        let mut inner = self.lock();
        match event {
            watcher::Event::Delete(pod) => {
                if let Some(old) = inner.by_pod.remove(&key(pod)) {
                    inner.shift(Some(&old), None);
                    self.publish(&inner, Some(&old), None);
                }
            }
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(seen) = inner.relisted.as_mut() {
                    seen.insert(key(pod));
                }
            }
            watcher::Event::InitDone => {
                let Some(seen) = inner.relisted.take() else {
                    return;
                };
                let gone: Vec<String> = inner
                    .by_pod
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    if let Some(old) = inner.by_pod.remove(&k) {
                        inner.shift(Some(&old), None);
                        self.publish(&inner, Some(&old), None);
                    }
                }
            }
            watcher::Event::Apply(_) => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The counts stay consistent under a panic elsewhere: keep using them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner, old: Option<&State>, new: Option<&State>) {
        for state in [old, new].into_iter().flatten() {
            let n = inner.counts.get(state).copied().unwrap_or(0);
            self.metrics.set(state, n);
        }
        let total = i64::try_from(inner.by_pod.len()).unwrap_or(i64::MAX);
        self.metrics.gated.set(total - inner.migrated);
    }
}

impl Inner {
    fn shift(&mut self, old: Option<&State>, new: Option<&State>) {
        if let Some(old) = old {
            *self.counts.entry(old.clone()).or_default() -= 1;
            self.migrated -= i64::from(old.1 == Reason::Migrated);
        }
        if let Some(new) = new {
            *self.counts.entry(new.clone()).or_default() += 1;
            self.migrated += i64::from(new.1 == Reason::Migrated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> WatchedPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "n"},
            "spec": {"containers": []},
        }))
        .unwrap()
    }

    fn exported(registry: &Registry, line_start: &str) -> String {
        crate::telemetry::encode(registry)
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn counts_follow_reasons_deletions_and_relists() {
        let mut registry = crate::telemetry::registry();
        let metrics = PodMetrics::register(registry.sub_registry_with_prefix("controller"));
        let states = PodStates::new(metrics);
        let shop = || WorkloadKey {
            namespace: "n".into(),
            name: "shop".into(),
            ..WorkloadKey::default()
        };
        states.set("n/a".into(), shop(), Reason::Running);
        states.set("n/b".into(), shop(), Reason::Running);
        states.set("n/a".into(), shop(), Reason::Migrated);
        let gated = "django_migrate_controller_pods_gated ";
        assert_eq!(exported(&registry, gated), format!("{gated}1"));
        let migrated =
            r#"django_migrate_controller_pods{namespace="n",deployment="shop",reason="Migrated"}"#;
        assert_eq!(exported(&registry, migrated), format!("{migrated} 1"));
        // Another kind of workload says its kind; a Deployment's series keep their names.
        let web = WorkloadKey {
            namespace: "n".into(),
            name: "web".into(),
            kind: crate::workload::Kind::StatefulSet,
        };
        states.set("n/web-0".into(), web, Reason::Migrated);
        let stateful = r#"django_migrate_controller_pods{namespace="n",deployment="web",kind="StatefulSet",reason="Migrated"}"#;
        assert_eq!(exported(&registry, stateful), format!("{stateful} 1"));
        states.observe(&watcher::Event::Delete(pod("web-0")));
        states.observe(&watcher::Event::Delete(pod("b")));
        assert_eq!(exported(&registry, gated), format!("{gated}0"));
        // A re-list that no longer has `a`: it was deleted while the watch was down.
        states.observe(&watcher::Event::Init);
        states.observe(&watcher::Event::InitDone);
        assert_eq!(exported(&registry, migrated), format!("{migrated} 0"));
        // A leader that steps down leaves no series behind.
        states.set("n/c".into(), shop(), Reason::Failed);
        drop(states);
        assert_eq!(exported(&registry, migrated), "");
        assert_eq!(exported(&registry, gated), format!("{gated}0"));
    }
}
