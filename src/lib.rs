//! django-migrate-webhook: a Kubernetes mutating admission webhook that injects a safe
//! Django migration step and a readiness gate into opted-in Deployments and the other workloads Django teams ship.

pub mod admission;
pub mod certs;
pub mod check;
pub mod cli;
pub mod contract;
pub mod contract_job;
pub mod controller;
pub mod gate;
pub mod injected;
pub mod kube_client;
pub mod leader;
pub mod missed;
pub mod mutation;
pub mod names;
pub mod plan;
pub mod plan_job;
pub mod plan_run;
pub mod pod_states;
pub mod policy;
pub mod preview;
pub mod process;
pub mod removal;
pub mod server;
pub mod settings;
pub mod status;
pub mod step;
pub mod step_job;
pub mod summary;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod watched;
pub mod workload;
