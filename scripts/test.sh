#!/usr/bin/env bash
# Runs every test tier. On a fresh Debian machine it first installs what the tiers need:
# PostgreSQL and MariaDB from Debian (scripts/databases.sh), Python venvs with Django
# 5.2 (.venv, tests/requirements.txt) and Django 4.2 (.venv-django42,
# tests/requirements-django42.txt), and a Kubernetes v1.20.2 control plane built from
# Debian's sources (scripts/kube/build.sh: ~7 minutes once, then cached under
# ~/.cache/django-migrate-webhook). It starts both database servers and the control plane
# on free loopback ports under temporary directories and stops them (by PID) when it exits.
# Extra arguments go to `cargo test`. Opt-in: with DJANGO_MIGRATE_REAL_WORLD_DIR set to
# the folder of the real-world Deployments (shared/real-world-deployments beside this
# checkout), the real-world tier runs too.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install Rust (https://rustup.rs) and run this again"
    exit 1
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# python3-venv for the test venvs; openssl and curl for the server tier's TLS checks.
need=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash scripts/databases.sh install

# venv DIR REQUIREMENTS: (re)creates DIR when REQUIREMENTS changed.
venv() {
    local dir=$1 requirements=$2 stamp wanted
    stamp=$dir/.requirements.sha256
    wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        say "creating $dir from $requirements"
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" > "$stamp"
    fi
}
venv .venv tests/requirements.txt
venv .venv-django42 tests/requirements-django42.txt
export DJANGO_MIGRATE_TEST_PYTHON="$PWD/.venv/bin/python"
export DJANGO_MIGRATE_TEST_PYTHON_DJANGO42="$PWD/.venv-django42/bin/python"

say "building (or reusing) the Kubernetes test control plane"
bash scripts/kube/build.sh >&2

databases=$(mktemp -d /tmp/django-migrate-databases.XXXXXX)
cluster=$(mktemp -d /tmp/django-migrate-cluster.XXXXXX)
cleanup() {
    bash scripts/kube/stop-cluster.sh "$cluster" --purge >/dev/null || true
    bash scripts/databases.sh stop "$databases" || true
}
trap cleanup EXIT
bash scripts/databases.sh start "$databases"
# shellcheck disable=SC1091
source "$databases/env"
bash scripts/kube/start-cluster.sh "$cluster" >/dev/null
# shellcheck disable=SC1091
source "$cluster/env"

say "cargo test (tiers: unit, engine, server, migrations, cluster)"
cargo test --locked "$@"

if [ -n "${DJANGO_MIGRATE_REAL_WORLD_DIR:-}" ]; then
    say "cargo test (tier: real_world, from $DJANGO_MIGRATE_REAL_WORLD_DIR)"
    cargo test --locked --test real_world "$@"
fi

say "pytest (tier: chart)"
.venv/bin/python -m pytest -q tests/chart
