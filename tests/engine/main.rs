//! The engine tier: golden AdmissionReview fixtures, the nine real-world Django
//! Deployments, property tests over generated Deployments, and the fuzzers' corpus.

#[path = "../support/mod.rs"]
mod support;

mod fuzz_checks;
mod fuzz_corpus;
mod golden;
mod properties;
mod real_world;
