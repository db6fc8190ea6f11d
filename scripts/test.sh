#!/usr/bin/env bash
# Runs every test tier. On a fresh Debian machine it first installs what the tiers need:
# a Python venv in .venv with the packages of tests/requirements.txt (Django plays the
# app image in the migrations tier). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install Rust (https://rustup.rs) and run this again"
    exit 1
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null
    fi
fi

stamp=.venv/.requirements.sha256
wanted=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "creating .venv with tests/requirements.txt"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    echo "$wanted" > "$stamp"
fi
export DJANGO_MIGRATE_TEST_PYTHON="$PWD/.venv/bin/python"

say "cargo test (tiers: unit, engine, server, migrations)"
cargo test --locked "$@"
