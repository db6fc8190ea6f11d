#!/usr/bin/env bash
# Runs one fuzz target with cargo fuzz (libFuzzer) and keeps what it found.
# Usage: bash fuzz/run.sh admission_review|mutation [SECONDS (600)]
#
# cargo fuzz needs a nightly toolchain for the sanitizer flags; only this directory is
# built with it, the project itself stays on stable. The corpus grows in
# fuzz/corpus/TARGET (not committed); at the end it is minimised, and its inputs under
# 8 KiB are kept in tests/fixtures/fuzz/TARGET, which the engine tier replays on every
# test run. A crash stops the run and leaves the input in fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh admission_review|mutation [SECONDS]}
seconds=${2:-600}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
kept=../tests/fixtures/fuzz/$target
mkdir -p "corpus/$target" "$kept"
# Seed with what was kept before and, for the request parser, the golden requests.
cp -n "$kept"/* "corpus/$target"/ 2>/dev/null || true
if [ "$target" = admission_review ]; then
    for f in ../tests/fixtures/admission/*.request.json ../tests/fixtures/bench/*.json; do
        cp -n "$f" "corpus/$target/seed-$(basename "$f")"
    done
fi
cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=262144 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
# Keep the smallest set of inputs that covers everything the corpus reached, without the
# large ones: those are variations of the seed fixtures, which the tests run anyway.
cargo +nightly fuzz cmin "$target" "corpus/$target" -- -max_len=262144
rm -f "$kept"/*
find "corpus/$target" -type f -size -8k -exec cp {} "$kept"/ \;
echo "kept $(find "$kept" -mindepth 1 -maxdepth 1 | wc -l) inputs ($(du -sh "$kept" | cut -f1)) in tests/fixtures/fuzz/$target"
