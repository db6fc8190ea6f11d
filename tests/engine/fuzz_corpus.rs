//! Replays the inputs the fuzzers found interesting (`tests/fixtures/fuzz/`, kept by
//! `fuzz/run.sh`) through the same checks as the fuzz targets.

use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};

use super::support::fuzz_checks;
use super::support::repo;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = repo().join("tests/fixtures/fuzz").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

#[test]
fn the_admission_review_corpus_gets_well_formed_answers() {
    for path in corpus("admission_review") {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| fuzz_checks::check_review_bytes(&data));
        assert!(result.is_ok(), "{}", path.display());
    }
}

#[test]
fn the_mutation_corpus_keeps_the_engine_rules() {
    let files = corpus("mutation");
    let mut checked = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        // Decoded the way libFuzzer's `fuzz_target!` decodes a structured input.
        let Ok(input) = fuzz_checks::Input::arbitrary_take_rest(Unstructured::new(&data)) else {
            continue;
        };
        let result = std::panic::catch_unwind(|| fuzz_checks::check_mutation(&input));
        assert!(result.is_ok(), "{}: {input:?}", path.display());
        checked += 1;
    }
    assert!(
        checked * 10 >= files.len() * 9,
        "only {checked} of {} inputs decode: has fuzz_checks::Input changed? Re-run fuzz/run.sh mutation",
        files.len()
    );
}
