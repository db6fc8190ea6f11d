#!/usr/bin/env bash
# Runs one fuzz target with cargo fuzz (libFuzzer) and keeps what it found.
# Usage: bash fuzz/run.sh admission_review|mutation [SECONDS (600)]
#
# cargo fuzz needs a nightly toolchain for the sanitizer flags; only this directory is
# built with it, the project itself stays on stable. The corpus grows in
# fuzz/corpus/TARGET (not committed); at the end it is minimised, and the inputs that add
# edge coverage (under 8 KiB) and past crashes are kept in tests/fixtures/fuzz/TARGET, which
# the engine tier replays on every test run (under 1 MB in all). A crash stops the run and
# leaves the input in fuzz/artifacts/TARGET.
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
# The whole corpus stays in fuzz/corpus/TARGET (minimised, not committed: re-running this
# script regrows it from the kept inputs). Committed, in tests/fixtures/fuzz/TARGET: the
# fewest inputs under 8 KiB that reach every edge the corpus reached (-use_counters=0: edge
# coverage, not hit counts), plus every crash libFuzzer left in artifacts/TARGET, which the
# engine tier replays as regressions once fixed.
cargo +nightly fuzz cmin "$target" "corpus/$target" -- -max_len=262144
binary=$(find target -path "*/release/$target" -type f | head -n 1)
rm -rf "$kept" && mkdir -p "$kept"
"$binary" -merge=1 -use_counters=0 -max_len=8192 "$kept" "corpus/$target" >/dev/null 2>&1
for crash in "artifacts/$target"/crash-*; do
    [ -f "$crash" ] && cp "$crash" "$kept/"
done
echo "kept $(find "$kept" -mindepth 1 -maxdepth 1 | wc -l) inputs ($(du -sh --apparent-size "$kept" | cut -f1)) in tests/fixtures/fuzz/$target"
