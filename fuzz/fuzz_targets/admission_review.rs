//! Any bytes as a POST /mutate body: the answer is always a 200 AdmissionReview or a 4xx
//! Status, never a panic. The checks are shared with the engine tier's corpus replay.
#![no_main]

#[path = "../../tests/engine/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::check_review_bytes(data));
