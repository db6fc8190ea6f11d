//! The engine tier: golden AdmissionReview fixtures, the nine real-world Django
//! Deployments, and property tests over generated Deployments.

#[path = "../support/mod.rs"]
mod support;

mod golden;
mod properties;
mod real_world;
