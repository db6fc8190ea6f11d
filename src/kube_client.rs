//! The process's Kubernetes client: the in-cluster config or `KUBECONFIG`, with every
//! request counted by HTTP method and resource
//! (`django_migrate_controller_api_requests_total`), so that its cost to the API server
//! is known.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")]
pub struct ClientError(#[source] kube::Error);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    resource: &'static str,
}

/// Requests sent to the API server.
#[derive(Clone, Debug, Default)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl ApiMetrics {
    /// Registers under the controller's prefix: only the controller uses the client.
    pub fn register(registry: &mut Registry) -> ApiMetrics {
        let metrics = ApiMetrics::default();
        registry.register(
            "api_requests",
            "Requests the controller sent to the API server, by HTTP method and resource",
            metrics.requests.clone(),
        );
        metrics
    }

    #[cfg(test)]
    pub(crate) fn touch(&self) {
        self.request(&axum::http::Method::GET, "/api/v1/pods");
    }

    fn request(&self, method: &axum::http::Method, path: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.as_str().to_owned(),
                resource: resource_of(path),
            })
            .inc();
    }
}

/// Builds the client; every request it sends is counted in `metrics`.
pub async fn build(metrics: ApiMetrics) -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| ClientError(kube::Error::InferConfig(e)))?;
    let count = tower::util::MapRequestLayer::new(
        move |request: axum::http::Request<kube::client::Body>| {
            metrics.request(request.method(), request.uri().path());
            request
        },
    );
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ClientError)?
        .with_layer(&count)
        .build())
}

/// The resource of an API path, for the request counter's label: `pods`, `pods/status`,
/// `leases`, `events`, ... (bounded: the kinds the controller touches).
fn resource_of(path: &str) -> &'static str {
    const KNOWN: [&str; 6] = [
        "pods",
        "leases",
        "events",
        "replicasets",
        "deployments",
        "namespaces",
    ];
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut found = "other";
    for (i, segment) in segments.iter().enumerate() {
        if let Some(kind) = KNOWN.iter().find(|k| *k == segment) {
            found = kind;
            if *kind == "pods" && segments.get(i + 2) == Some(&"status") {
                return "pods/status";
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_the_resource_they_touch() {
        assert_eq!(
            resource_of("/api/v1/namespaces/n/pods/web-1/status"),
            "pods/status"
        );
        assert_eq!(resource_of("/api/v1/pods"), "pods");
        assert_eq!(
            resource_of("/apis/coordination.k8s.io/v1/namespaces/n/leases/l"),
            "leases"
        );
        assert_eq!(
            resource_of("/apis/events.k8s.io/v1/namespaces/n/events"),
            "events"
        );
        assert_eq!(resource_of("/version"), "other");
    }
}
