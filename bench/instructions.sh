#!/usr/bin/env bash
# Instructions per answer, webhook and floor, for every benchmark input, counted by
# callgrind: unlike time, the count is the same on a busy machine.
# Usage: bash bench/instructions.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200}
command -v valgrind >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo; $sudo apt-get install -y valgrind; }
bin=$(cargo bench --bench engine --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine" and m.get("executable"):
        print(m["executable"])')
count() { # INPUT SIDE ITERATIONS -> total instructions
    ENGINE_ITERATIONS=$3 ENGINE_INPUT=$1 ENGINE_SIDE=$2 valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null "$bin" 2>&1 | sed -n 's/.*Collected : //p'
}
printf '%-8s %14s %14s %7s\n' input webhook floor ratio
for input in small typical large update rollout; do
    row=()
    for side in webhook floor; do
        # The difference between N and 2N iterations leaves out start-up and loading.
        a=$(count "$input" "$side" "$n"); b=$(count "$input" "$side" $((2 * n)))
        row+=($(((b - a) / n)))
    done
    printf '%-8s %14d %14d %7.2f\n' "$input" "${row[0]}" "${row[1]}" \
        "$(python3 -c "print(${row[0]} / ${row[1]})")"
done
