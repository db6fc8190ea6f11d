//! Structured Deployments (annotations, containers, init containers, gates) through the
//! webhook: every answer is an allowed patch that applies, leaves the rest of the object
//! alone and is empty on a second pass, or a denial with a message.
#![no_main]

/// The part of the tests' support layer (`tests/support/`) that the fuzz targets share.
#[allow(dead_code)]
#[path = "../../tests/support"]
mod support {
    pub mod fuzz_checks;
    pub mod review;
}
use support::fuzz_checks;

libfuzzer_sys::fuzz_target!(|input: fuzz_checks::Input| fuzz_checks::check_mutation(&input));
