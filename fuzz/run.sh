#!/usr/bin/env bash
# Runs one fuzz target with cargo fuzz (libFuzzer) and keeps what it found.
# Usage: bash fuzz/run.sh admission_review|mutation [SECONDS (600)]
#
# cargo fuzz needs a nightly toolchain for the sanitizer flags; only this directory is
# built with it, the project itself stays on stable. The corpus grows in
# fuzz/corpus/TARGET (not committed); at the end it is minimised into
# tests/fixtures/fuzz/TARGET, which the engine tier replays on every test run.
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
# Keep the smallest set of inputs that covers everything the corpus reached.
cargo +nightly fuzz cmin "$target" "corpus/$target" -- -max_len=262144 2>/dev/null || true
rm -f "$kept"/*
cp "corpus/$target"/* "$kept"/
echo "kept $(ls "$kept" | wc -l) inputs ($(du -sh "$kept" | cut -f1)) in tests/fixtures/fuzz/$target"
