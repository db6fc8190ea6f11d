//! The floor of `bench/controller.py`: a bare client that sets the `django-migrate.io/migrated`
//! condition on every injected pod of a namespace itself, with 8 requests in flight (the
//! controller's own limit), as fast as the API server accepts them. It lists once and
//! patches; it does no watching, no caching and no deciding.
//!
//! Usage: `gate-floor NAMESPACE MESSAGE` (KUBECONFIG as for kubectl). Prints the number of
//! pods patched and the seconds it took.
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const IN_FLIGHT: usize = 8;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namespace, message] = args.as_slice() else {
        eprintln!("usage: gate-floor NAMESPACE MESSAGE");
        std::process::exit(2);
    };
    let client = Client::try_default().await.expect("a kubeconfig");
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let started = std::time::Instant::now();
    let names: Vec<String> = pods
        .list_metadata(&ListParams::default().labels("django-migrate.io/injected=true"))
        .await
        .expect("list pods")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patched = futures_util::stream::iter(names)
        .map(|name| {
            let pods = pods.clone();
            let patch = json!({"status": {"conditions": [{
                "type": "django-migrate.io/migrated", "status": "True", "reason": "Migrated",
                "message": message, "lastTransitionTime": now, "lastProbeTime": null,
            }]}});
            async move {
                pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                    .expect("patch pods/status");
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .count()
        .await;
    println!("{patched} {:.3}", started.elapsed().as_secs_f64());
}
