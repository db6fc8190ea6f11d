//! The engine tier: golden AdmissionReview fixtures, property tests over generated
//! Deployments, and the fuzzers' corpus. (The real-world Deployments have a tier of
//! their own: `tests/real_world`.)

#[path = "../support/mod.rs"]
mod support;

mod fuzz_corpus;
mod golden;
mod properties;
