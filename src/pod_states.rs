//! How many injected pods of each Deployment carry each condition reason, kept up to date
//! from the watch
//! stream (deletions, re-lists) and the reconciler (the reason it computed), so that the
//! gauges cost O(1) per event instead of a scan of the whole cache per reconcile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::runtime::watcher;

use crate::names::reason;
use crate::telemetry::{DeploymentLabels, Metrics};
use crate::watched::WatchedPod;

/// The pods the leader has seen, by `namespace/name`, with their Deployment and condition
/// reason.
pub struct PodStates {
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

type State = (Arc<DeploymentLabels>, &'static str);

#[derive(Default)]
struct Inner {
    by_pod: HashMap<String, State>,
    counts: HashMap<State, i64>,
    /// Pods seen since a re-list started; the others were deleted meanwhile.
    relisted: Option<HashSet<String>>,
    /// One shared copy of the labels per Deployment, not one per pod.
    deployments: HashMap<DeploymentLabels, Arc<DeploymentLabels>>,
    /// Pods whose reason is `Migrated`, so that the gated count is O(1) per change.
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
    pub fn new(metrics: Arc<Metrics>) -> PodStates {
        PodStates {
            inner: Mutex::new(Inner::default()),
            metrics,
        }
    }

    /// Records the reason the reconciler computed for a pod of `deployment`.
    pub fn set(&self, key: String, deployment: DeploymentLabels, reason: &'static str) {
        let mut inner = self.lock();
        if inner
            .by_pod
            .get(&key)
            .is_some_and(|(d, r)| *r == reason && **d == deployment)
        {
            return;
        }
        let deployment = match inner.deployments.get(&deployment) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(deployment.clone());
                inner.deployments.insert(deployment, shared.clone());
                shared
            }
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
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &Inner, old: Option<&State>, new: Option<&State>) {
        for state in [old, new].into_iter().flatten() {
            let n = inner.counts.get(state).copied().unwrap_or(0);
            self.metrics.set_pods(&state.0, state.1, n);
        }
        inner.gated_changed(&self.metrics);
    }
}

impl Inner {
    fn shift(&mut self, old: Option<&State>, new: Option<&State>) {
        if let Some(old) = old {
            *self.counts.entry(old.clone()).or_default() -= 1;
            self.migrated -= i64::from(old.1 == reason::MIGRATED);
        }
        if let Some(new) = new {
            *self.counts.entry(new.clone()).or_default() += 1;
            self.migrated += i64::from(new.1 == reason::MIGRATED);
        }
    }

    fn gated_changed(&self, metrics: &Metrics) {
        let total = i64::try_from(self.by_pod.len()).unwrap_or(i64::MAX);
        metrics.set_pods_gated(total - self.migrated);
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

    fn gauge(metrics: &Metrics, line_start: &str) -> String {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn counts_follow_reasons_deletions_and_relists() {
        let metrics = Metrics::new();
        let states = PodStates::new(metrics.clone());
        let shop = || DeploymentLabels {
            namespace: "n".into(),
            deployment: "shop".into(),
        };
        states.set("n/a".into(), shop(), reason::RUNNING);
        states.set("n/b".into(), shop(), reason::RUNNING);
        states.set("n/a".into(), shop(), reason::MIGRATED);
        assert_eq!(
            gauge(&metrics, "django_migrate_controller_pods_gated "),
            "django_migrate_controller_pods_gated 1"
        );
        assert!(metrics.encode().contains(
            r#"django_migrate_controller_pods{namespace="n",deployment="shop",reason="Migrated"} 1"#
        ));
        states.observe(&watcher::Event::Delete(pod("b")));
        assert_eq!(
            gauge(&metrics, "django_migrate_controller_pods_gated "),
            "django_migrate_controller_pods_gated 0"
        );
        // A re-list that no longer has `a`: it was deleted while the watch was down.
        states.observe(&watcher::Event::Init);
        states.observe(&watcher::Event::InitDone);
        assert!(metrics.encode().contains(
            r#"django_migrate_controller_pods{namespace="n",deployment="shop",reason="Migrated"} 0"#
        ));
    }
}
