//! Structured Deployments (annotations, containers, init containers, gates) through the
//! webhook: every answer is an allowed patch that applies, leaves the rest of the object
//! alone and is empty on a second pass, or a denial with a message.
#![no_main]

#[path = "../../tests/engine/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|input: fuzz_checks::Input| fuzz_checks::check_mutation(&input));
