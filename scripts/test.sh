#!/usr/bin/env bash
# Runs every test tier. On a fresh Debian machine it first installs what the tiers need:
# PostgreSQL and MariaDB from Debian (scripts/databases.sh), Python venvs with Django
# 5.2 (.venv, tests/requirements.txt) and Django 4.2 (.venv-django42,
# tests/requirements-django42.txt), and Kubernetes control planes built from the
# k8s.io/kubernetes Go modules with the machine's Go (scripts/kube/build-current.sh: about
# 15 minutes per version on 2 cores once, then cached under ~/.cache/django-migrate-webhook).
# It builds the images of the node tier without a registry (scripts/kube/build-images.sh:
# pause, busybox, the webhook from the Dockerfile with buildah, a Django test image), starts
# a control plane with a real node (kubelet, containerd and runc from Debian, a CNI bridge:
# scripts/kube/start-node.sh) and both database servers (PostgreSQL also on the bridge's
# address, for the pods), runs every tier against the newest Kubernetes, then the tiers that
# talk to Kubernetes (cluster, chart, node) again against each older version in
# KUBE_VERSIONS, and stops everything it started (by PID; mounts, namespaces, the bridge
# and kernel settings restored) when it exits.
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
# The node tier: containerd, runc and CNI plugins from Debian; busybox and debootstrap
# for its images; gcc for the pause binary; iptables for the one Service route pods use;
# buildah builds the webhook image from the Dockerfile.
for pkg in containerd runc containernetworking-plugins busybox-static debootstrap gcc iproute2 iptables buildah; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    # Another install (unattended upgrades, say) may hold the package lock: wait for it.
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
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

# The newest Kubernetes the module proxy serves that builds and runs here, and an older
# supported one.
read -r -a kube_versions <<<"${KUBE_VERSIONS:-1.37.2 1.34.4}"
say "building (or reusing) Kubernetes ${kube_versions[*]}"
bash scripts/kube/build-current.sh "${kube_versions[@]}" >&2

say "building the node tier's images (the webhook's from the Dockerfile, with buildah)"
IMAGES="pause busybox webhook django" bash scripts/kube/build-images.sh >&2

databases=$(mktemp -d /tmp/django-migrate-databases.XXXXXX)
cluster=""
stop_cluster() {
    if [ -n "$cluster" ]; then
        bash scripts/kube/stop-node.sh "$cluster" >/dev/null 2>&1 || true
        bash scripts/kube/stop-cluster.sh "$cluster" --purge >/dev/null || true
        cluster=""
    fi
}
cleanup() {
    stop_cluster
    bash scripts/databases.sh stop "$databases" || true
}
trap cleanup EXIT

# start_cluster VERSION: a fresh control plane of that version with a real node; its env
# is sourced.
start_cluster() {
    stop_cluster
    cluster=$(mktemp -d /tmp/django-migrate-cluster.XXXXXX)
    WITH_NODE=1 KUBE_VERSION=$1 bash scripts/kube/start-cluster.sh "$cluster" >/dev/null
    bash scripts/kube/start-node.sh "$cluster" >/dev/null
    # shellcheck disable=SC1091
    source "$cluster/env"
}

start_cluster "${kube_versions[0]}"
# The pods reach PostgreSQL on the node's own address, the CNI bridge's (10.244.0.1).
DB_EXTRA_LISTEN=10.244.0.1 DB_EXTRA_CIDR=10.244.0.0/24 bash scripts/databases.sh start "$databases"
# shellcheck disable=SC1091
source "$databases/env"
say "cargo test (tiers: unit, engine, server, migrations, cluster on Kubernetes v$KUBE_VERSION)"
cargo test --locked "$@"

# Admission policies (policy mode) are served as v1 from Kubernetes 1.36: the newest only.
say "cargo test (tier: policy on Kubernetes v$KUBE_VERSION)"
cargo test --locked --test policy "$@"

if [ -n "${DJANGO_MIGRATE_REAL_WORLD_DIR:-}" ]; then
    say "cargo test (tier: real_world, from $DJANGO_MIGRATE_REAL_WORLD_DIR)"
    cargo test --locked --test real_world "$@"
fi

say "pytest (tier: chart on Kubernetes v$KUBE_VERSION)"
.venv/bin/python -m pytest -q tests/chart
say "cargo test (tier: node on Kubernetes v$KUBE_VERSION)"
cargo test --locked --test node "$@"

for version in "${kube_versions[@]:1}"; do
    start_cluster "$version"
    say "cargo test (tier: cluster on Kubernetes v$KUBE_VERSION)"
    cargo test --locked --test cluster "$@"
    say "pytest (tier: chart on Kubernetes v$KUBE_VERSION)"
    .venv/bin/python -m pytest -q tests/chart
    say "cargo test (tier: node on Kubernetes v$KUBE_VERSION)"
    cargo test --locked --test node "$@"
done
