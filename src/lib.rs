//! django-migrate-webhook: a Kubernetes mutating admission webhook that injects safe
//! Django migration init containers and a readiness gate into opted-in Deployments.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod deployment;
pub mod injected;
pub mod mutation;
pub mod preview;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;
