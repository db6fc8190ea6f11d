#!/usr/bin/env bash
# Soak: steady load on the webhook over HTTP/1.1 keep-alive for a long time, sampling the
# server's RSS and open file descriptors; fails on any error, on RSS growth over 1 MiB
# after the first minute, or on descriptor growth.
# Usage: bash bench/soak.sh [SECONDS (600)] [REQUESTS PER SECOND (2000)]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
rps=${2:-2000}
connections=16
command -v h2load >/dev/null || {
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client
}
cargo build --release --locked --bin django-migrate-webhook
bin=target/release/django-migrate-webhook
tmp=$(mktemp -d /tmp/django-migrate-soak.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); admin=$(free_port)
"$bin" certs --out "$tmp" --ip 127.0.0.1 >/dev/null
"$bin" serve --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$admin" \
    --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.05; done

echo "# $seconds s at $rps req/s over $connections HTTP/1.1 keep-alive connections (typical input)"
h2load --h1 -t 1 -c "$connections" -m 1 --rps $((rps / connections)) -D "$seconds" \
    -d tests/fixtures/bench/typical.json -H 'Content-Type: application/json' \
    "https://127.0.0.1:$port/mutate" >"$tmp/h2load.out" 2>&1 &
load=$!
printf '%6s %9s %9s %4s\n' second 'RSS MiB' 'HWM MiB' fds
samples=()
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
    now=$(( $(date +%s) - start ))
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    awk -v t="$now" -v r="$rss" -v h="$hwm" -v f="$fds" 'BEGIN { printf "%6d %9.2f %9.2f %4d\n", t, r / 1024, h / 1024, f }'
    samples+=("$now $rss $fds")
    sleep 30
done
wait "$load" || true
grep -E "^finished|^requests:|^status codes:" "$tmp/h2load.out"
python3 - "$tmp/h2load.out" "${samples[@]}" <<'PY'
import re, sys
out = open(sys.argv[1]).read()
m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
samples = [tuple(map(int, s.split())) for s in sys.argv[2:]]
after_warmup = [s for s in samples if s[0] >= 60] or samples
rss = [s[1] for s in after_warmup]
fds = [s[2] for s in after_warmup]
problems = []
if not m or int(m.group(4)) or m.group(2) != m.group(3):
    problems.append("failed requests")
if max(rss) - min(rss) > 1024:
    problems.append(f"RSS varied by {(max(rss) - min(rss)) / 1024:.2f} MiB after the first minute")
if fds[-1] > fds[0]:
    problems.append(f"open descriptors grew from {fds[0]} to {fds[-1]}")
print(f"RSS after the first minute: {min(rss) / 1024:.2f}-{max(rss) / 1024:.2f} MiB; fds {min(fds)}-{max(fds)}")
if problems:
    sys.exit("soak failed: " + "; ".join(problems))
print("soak passed: no error, RSS steady, no descriptor growth")
PY
