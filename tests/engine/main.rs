//! The engine tier: golden AdmissionReview fixtures, property tests over generated
//! Deployments, and the fuzzers' corpus. (The real-world Deployments have a tier of
//! their own: `tests/real_world`.)
// Tests and benches unwrap and assert freely: the lints for the product are for `src/`.
#![allow(clippy::unwrap_used, clippy::pedantic)]

#[path = "../support/mod.rs"]
mod support;

mod docs;
mod fuzz_corpus;
mod golden;
mod plan;
mod properties;
mod uninject;
