#!/usr/bin/env bash
# Load benchmark: the webhook against the floor server (bench/floor_server.rs), same
# inputs, same TLS, same core, interleaved A B A B, driven by h2load from the other core.
# Installs what it needs (Debian's nghttp2-client for h2load), builds release binaries,
# and prints the table and the ratios. Options: see `bash bench/load.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ "$(nproc)" -lt 2 ]; then
    echo "bench/load.sh needs 2 cores: the server runs on core 1 and h2load on core 0" >&2
    exit 1
fi
cargo build --release --locked --bin django-migrate-webhook --example floor-server
exec python3 bench/load.py "$@"
