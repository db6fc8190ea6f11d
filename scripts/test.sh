#!/usr/bin/env bash
# Runs every test tier. On a fresh Debian machine it first installs what the tiers need:
# PostgreSQL and MariaDB from Debian (scripts/databases.sh), Python venvs with Django
# 5.2 (.venv, tests/requirements.txt) and Django 4.2 (.venv-django42,
# tests/requirements-django42.txt), and Kubernetes control planes built from the
# k8s.io/kubernetes Go modules with the machine's Go (scripts/kube/build-current.sh, cached
# under ~/.cache/django-migrate-webhook). Kubernetes builds in the background, at a lower
# priority, from the first second: meanwhile the prerequisites are installed, then the images
# of the node tier are built without a registry, also in the background
# (scripts/kube/build-images.sh: pause, busybox, the webhook from the Dockerfile with
# buildah, a Django test image), and the tiers that need no cluster run (step, unit, engine,
# server, migrations). Then it starts a control plane
# with a real node (kubelet, containerd and runc from Debian, a CNI bridge:
# scripts/kube/start-node.sh) and the database servers (PostgreSQL also on the bridge's
# address, for the pods), runs the cluster tiers (cluster, policy, chart, node) against the
# newest Kubernetes, then the ones that differ by version (cluster, chart, node) against
# each older version in KUBE_VERSIONS, prints every stage's time, and stops everything it
# started (by PID; mounts, namespaces, the bridge and kernel settings restored) when it
# exits.
# Extra arguments go to `cargo test`. Opt-in: with DJANGO_MIGRATE_REAL_WORLD_DIR set to
# the folder of the real-world Deployments (shared/real-world-deployments beside this
# checkout), the real-world tier runs too.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
# shellcheck source=lib.sh
source scripts/lib.sh
cache="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook"

# timed DESCRIPTION CMD...: runs CMD and records how long it took; `report` prints every
# stage's time (on exit, also after a failure).
t_start=$(date +%s)
stages=()
timed() {
    local desc=$1 t rc=0
    shift
    say "$desc"
    t=$(date +%s)
    "$@" || rc=$?
    stages+=("$(printf '%6ss  %s' "$(($(date +%s) - t))" "$desc")")
    return "$rc"
}
report() {
    ((${#stages[@]})) || return 0
    say "stage times (total $(($(date +%s) - t_start))s):"
    printf '%s\n' "${stages[@]}" >&2
}

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is not installed: install Rust (https://rustup.rs) and run this again"
    exit 1
fi

# Kubernetes is the longest part of a first run (scripts/kube/build-current.sh, cached per
# version): it builds in the background, at a lower priority, while the images are built
# and the tiers that need no cluster run, followed by the Helm CLI the tutorial's commands
# run (scripts/kube/build-helm.sh); the cluster tiers wait for both.
read -r -a kube_versions <<<"${KUBE_VERSIONS:-$KUBE_VERSIONS_DEFAULT}"
mkdir -p "$cache/logs"
kube_log=$cache/logs/build-current.log
say "building (or reusing) Kubernetes ${kube_versions[*]} in the background: $kube_log"
jobs_dir=$(mktemp -d /tmp/django-migrate-test-jobs.XXXXXX)
job_start "$jobs_dir/kube" bash -c 'bash scripts/kube/build-current.sh "$@" && bash scripts/kube/build-helm.sh' \
    build "${kube_versions[@]}" >"$kube_log" 2>&1 </dev/null
kube_pid=$!
kube_t0=$(date +%s)
# The newer stacks' root filesystems (scripts/rootfs.sh: Debian 13 and unstable), then Argo
# Rollouts' controller and CRDs from its Go module (scripts/kube/build-argo-rollouts.sh,
# for the node tier's canary) and containerd 2.x with runc from theirs
# (scripts/kube/build-containerd.sh, the node's second runtime), also in the background;
# the tiers that run in the root filesystems wait for them, long before any cluster tier.
rootfs_log=$cache/logs/rootfs.log
say "building (or reusing) the Debian 13 and unstable root filesystems, Argo Rollouts and containerd 2.x in the background: $rootfs_log"
job_start "$jobs_dir/rootfs" nice bash -c 'bash scripts/rootfs.sh trixie && bash scripts/rootfs.sh sid && bash scripts/kube/build-argo-rollouts.sh && bash scripts/kube/build-containerd.sh' \
    >"$rootfs_log" 2>&1 </dev/null
rootfs_pid=$!

databases=""
cluster=""
images_pid=""
stop_cluster() {
    if [ -n "$cluster" ]; then
        bash scripts/kube/stop-node.sh "$cluster" >/dev/null 2>&1 || true
        bash scripts/kube/stop-cluster.sh "$cluster" --purge >/dev/null || true
        cluster=""
    fi
}
stop_databases() {
    if [ -n "$databases" ]; then
        bash scripts/databases.sh stop "$databases" || true
        databases=""
    fi
}
# start_databases [EXTRA_LISTEN EXTRA_CIDR]: PostgreSQL, MariaDB and PgBouncer on loopback
# (and on EXTRA_LISTEN, for the pods); their env is sourced. With DB_ROOTFS set, the
# servers of that root filesystem (scripts/rootfs.sh), run in it (scripts/databases.sh).
start_databases() {
    stop_databases
    databases=$(mktemp -d /tmp/django-migrate-databases.XXXXXX)
    DB_EXTRA_LISTEN=${1:-} DB_EXTRA_CIDR=${2:-} bash scripts/databases.sh start "$databases"
    # shellcheck disable=SC1091
    source "$databases/env"
}
cleanup() {
    local rc=$?
    job_stop "$kube_pid" "$jobs_dir/kube"
    job_stop "$rootfs_pid" "$jobs_dir/rootfs"
    if [ -n "$images_pid" ]; then job_stop "$images_pid" "$jobs_dir/images"; fi
    stop_cluster
    stop_databases
    rm -rf "$jobs_dir"
    report
    exit "$rc"
}
trap cleanup EXIT

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
# prerequisites: Debian packages, the database servers' binaries, the venvs.
prerequisites() {
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

    venv .venv tests/requirements.txt
    venv .venv-django42 tests/requirements-django42.txt
}
timed "prerequisites: Debian packages, databases, Python venvs" prerequisites
export DJANGO_MIGRATE_TEST_PYTHON="$PWD/.venv/bin/python"
export DJANGO_MIGRATE_TEST_PYTHON_DJANGO42="$PWD/.venv-django42/bin/python"

# The node tier's images (scripts/kube/build-images.sh: the webhook's compiles the project
# in buildah, minutes on a first run) build in the background too, at a lower priority,
# beside the tiers that need no cluster; the cluster tiers wait for them.
images_log=$cache/logs/build-images.log
say "building (or reusing) the node tier's images in the background: $images_log"
job_start "$jobs_dir/images" nice env IMAGES="pause busybox webhook django" bash scripts/kube/build-images.sh \
    >"$images_log" 2>&1 </dev/null
images_pid=$!
images_t0=$(date +%s)

# The tiers without a cluster: the step's unit tests (pytest, no database), then every
# default `cargo test` target but the cluster tier.
timed "pytest (tier: step on Python 3.11, Django 5.2)" .venv/bin/python -m pytest -q tests/step
start_databases
timed "cargo test (tiers: unit, engine, server, migrations on Debian 12: Python 3.11, Django 5.2 and 4.2, PostgreSQL 15, MariaDB 10.11, PgBouncer 1.18)" \
    cargo test --locked --lib --bins --examples --test engine --test server --test migrations "$@"
timed "cargo test (doc tests)" cargo test --locked --doc "$@"
stop_databases
# Today's stacks: the migrations tier on Debian 13 (Python 3.13, Django 6.1, PostgreSQL 17,
# MariaDB 11.8, PgBouncer from Debian 13; its tests of Django 4.2 are the default leg's),
# and a race on Debian unstable's Python 3.14 against that PostgreSQL. The test binaries
# are this machine's, run inside each root filesystem (scripts/in-rootfs.sh as cargo's
# runner).
timed "waiting for the root filesystems, Argo Rollouts and containerd 2.x (started $(($(date +%s) - kube_t0))s ago)" job_wait "$rootfs_pid" "$jobs_dir/rootfs" || {
    tail -n 30 "$rootfs_log" >&2
    say "building the root filesystems, Argo Rollouts or containerd 2.x failed: $rootfs_log"
    exit 1
}
rootfs_trixie=$(bash scripts/rootfs.sh trixie)
rootfs_sid=$(bash scripts/rootfs.sh sid)
# in_stack ROOTFS CMD...: CMD with cargo's test binaries and the tiers' Python in ROOTFS.
in_stack() {
    local root=$1
    shift
    DJANGO_MIGRATE_TEST_PYTHON=/opt/venv/bin/python \
        CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/in-rootfs.sh $root" "$@"
}
timed "pytest (tier: step on Debian 13: Python 3.13, Django 6.1)" \
    scripts/in-rootfs.sh "$rootfs_trixie" /opt/venv/bin/python -m pytest -q -p no:cacheprovider tests/step
timed "pytest (tier: step on Debian unstable: Python 3.14, Django 6.1)" \
    scripts/in-rootfs.sh "$rootfs_sid" /opt/venv/bin/python -m pytest -q -p no:cacheprovider tests/step
DB_ROOTFS=$rootfs_trixie start_databases
timed "cargo test (tier: migrations on Debian 13: Python 3.13, Django 6.1, PostgreSQL 17, MariaDB 11.8, PgBouncer 1.24)" \
    in_stack "$rootfs_trixie" cargo test --locked --test migrations "$@" -- --skip django42
# exactly_one CMD...: CMD, a `cargo test` filtered to one test, ran that test and it passed.
exactly_one() {
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out" >&2
    [ "$rc" = 0 ] || return "$rc"
    grep -q '^test result: ok\. 1 passed' <<<"$out" || { say "the filter matched no test"; return 1; }
}
timed "cargo test (a race on Debian unstable: Python 3.14, Django 6.1, against PostgreSQL 17)" \
    exactly_one in_stack "$rootfs_sid" cargo test --locked --test migrations "$@" -- --exact servers::ten_pods_postgresql
stop_databases
timed "cargo test --no-run (the cluster tiers' binaries)" \
    cargo test --locked --no-run --test cluster --test policy --test node

timed "waiting for Kubernetes ${kube_versions[*]} (started $(($(date +%s) - kube_t0))s ago)" \
    job_wait "$kube_pid" "$jobs_dir/kube" || {
    tail -n 30 "$kube_log" >&2
    say "building Kubernetes failed: $kube_log"
    exit 1
}
grep -E 'done in|etcd v|helm v' "$kube_log" >&2 || true
timed "waiting for the images: pause, busybox, django, the webhook's from the Dockerfile (started $(($(date +%s) - images_t0))s ago)" \
    job_wait "$images_pid" "$jobs_dir/images" || {
    tail -n 30 "$images_log" >&2
    say "building the images failed: $images_log"
    exit 1
}

# start_cluster VERSION [containerd2]: a fresh control plane of that version with a real
# node, on Debian's containerd 1.6 or on containerd 2.x (scripts/kube/build-containerd.sh);
# its env is sourced.
start_cluster() {
    stop_cluster
    cluster=$(mktemp -d /tmp/django-migrate-cluster.XXXXXX)
    WITH_NODE=1 KUBE_VERSION=$1 bash scripts/kube/start-cluster.sh "$cluster" >/dev/null
    if [ "${2:-}" = containerd2 ]; then
        CONTAINERD_BIN="$containerd2/bin" bash scripts/kube/start-node.sh "$cluster" >/dev/null
    else
        bash scripts/kube/start-node.sh "$cluster" >/dev/null
    fi
    # shellcheck disable=SC1091
    source "$cluster/env"
}
containerd2=$(bash scripts/kube/build-containerd.sh)

# The node tier runs on both runtimes: the newest Kubernetes on Debian's containerd 1.6
# (where the code as an image volume fails visibly), the oldest on containerd 2.x; the
# image-volume tests (code_image_volume) on the newest with containerd 2.x.
timed "control plane and node v${kube_versions[0]} (containerd 1.6)" start_cluster "${kube_versions[0]}"
# The pods reach PostgreSQL on the node's own address, the CNI bridge's (10.244.0.1).
DB_ROOTFS=$rootfs_trixie start_databases 10.244.0.1 10.244.0.0/24
timed "cargo test (tier: cluster on Kubernetes v$KUBE_VERSION)" cargo test --locked --test cluster "$@"
# Admission policies (policy mode) are served as v1 from Kubernetes 1.36: the newest only.
timed "cargo test (tier: policy on Kubernetes v$KUBE_VERSION)" cargo test --locked --test policy "$@"
if [ -n "${DJANGO_MIGRATE_REAL_WORLD_DIR:-}" ]; then
    timed "cargo test (tier: real_world, from $DJANGO_MIGRATE_REAL_WORLD_DIR)" \
        cargo test --locked --test real_world "$@"
fi
timed "pytest (tier: chart on Kubernetes v$KUBE_VERSION)" .venv/bin/python -m pytest -q tests/chart
timed "cargo test (tier: node on Kubernetes v$KUBE_VERSION, containerd 1.6)" \
    cargo test --locked --test node "$@" -- --skip code_image_volume
timed "control plane and node v${kube_versions[0]} (containerd 2.x)" start_cluster "${kube_versions[0]}" containerd2
timed "cargo test (tier: node on Kubernetes v$KUBE_VERSION, containerd 2.x: the code as an image volume)" \
    cargo test --locked --test node "$@" -- code_image_volume

for version in "${kube_versions[@]:1}"; do
    timed "control plane and node v$version (containerd 2.x)" start_cluster "$version" containerd2
    timed "cargo test (tier: cluster on Kubernetes v$KUBE_VERSION)" cargo test --locked --test cluster "$@"
    timed "pytest (tier: chart on Kubernetes v$KUBE_VERSION)" .venv/bin/python -m pytest -q tests/chart
    # Image volumes are on by default from Kubernetes 1.35.
    timed "cargo test (tier: node on Kubernetes v$KUBE_VERSION, containerd 2.x)" \
        cargo test --locked --test node "$@" -- --skip image_volume
done
