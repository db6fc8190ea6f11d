//! Any bytes as a POST /mutate body: the answer is always a 200 AdmissionReview or a 4xx
//! Status, never a panic. The checks are shared with the engine tier's corpus replay.
#![no_main]

/// The part of the tests' support layer (`tests/support/`) that the fuzz targets share.
#[allow(dead_code)]
#[path = "../../tests/support"]
mod support {
    pub mod fuzz_checks;
    pub mod review;
}
use support::fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_review_bytes(data));
