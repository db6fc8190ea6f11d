#!/usr/bin/env bash
# Build a current container runtime for the test node from its Go modules, cached per
# version: containerd 2.x (containerd, containerd-shim-runc-v2, ctr) and runc, the second
# node runtime beside Debian's containerd 1.6 (scripts/kube/start-node.sh NODE_RUNTIME=containerd2).
# containerd 2.1 is the first release whose CRI mounts image volumes (KEP 4639).
#
# Usage: build-containerd.sh      prints the install dir on stdout:
#          <dir>/bin/{containerd,containerd-shim-runc-v2,ctr,runc}
#        with <dir> = ~/.cache/django-migrate-webhook/tools/containerd-v$CONTAINERD_VERSION-runc-v$RUNC_VERSION
# Env:   CONTAINERD_VERSION=2.4.2  RUNC_VERSION=1.5.3  GO=<the machine's go> (>= the go line
#        of both go.mod files; GOTOOLCHAIN=local)  KUBE_NICE=10  GO_BUILD_P=2
#
# Both modules come through the Go module proxy by the go client (the Go module cache, as
# for every Go build here) and are built in place as their own main modules. containerd and
# its shim are pure Go (CGO_ENABLED=0, as containerd's Makefile builds the shim; btrfs, which
# needs cgo, is left out as it is from static builds). runc needs cgo (its nsenter is C) and
# libseccomp for seccomp profiles (Debian's libseccomp-dev, installed when missing); the
# tag libpathrs of runc's Makefile is left out (that library is not packaged in Debian 12),
# so runc uses its Go path resolution.
#
# Idempotent: what is in place with the stamp of this script and the versions is skipped.
# One build at a time per version (a lock).
set -euo pipefail
SCRIPT=build-containerd
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"

CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION#v}"
RUNC_VERSION="${RUNC_VERSION:-1.5.3}"
RUNC_VERSION="${RUNC_VERSION#v}"
KUBE_NICE="${KUBE_NICE:-10}"
GO_BUILD_P="${GO_BUILD_P:-2}"
root="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/tools/containerd-v$CONTAINERD_VERSION-runc-v$RUNC_VERSION"
STAMP="v$CONTAINERD_VERSION v$RUNC_VERSION $(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
BINARIES=(containerd containerd-shim-runc-v2 ctr runc)

done_all() {
  [[ "$(cat "$root/bin/.stamp" 2>/dev/null)" == "$STAMP" ]] || return 1
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$root/bin/$b" ]] || return 1; done
}
if done_all; then
  echo "$root"
  exit 0
fi

# The machine's Go: the first go on PATH that is new enough, else /usr/local/go.
if [[ -z "${GO:-}" ]]; then
  for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -x "$candidate" ]] || continue
    minor=$("$candidate" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    if [[ -n "$minor" && "$minor" -ge 26 ]]; then GO=$candidate; break; fi
  done
fi
[[ -n "${GO:-}" && -x "$GO" ]] || die "no Go >= 1.26 found (containerd v$CONTAINERD_VERSION's go.mod asks for it): install Go (https://go.dev/dl) or set GO=/path/to/go"
export GOTOOLCHAIN=local

mkdir -p "$root"
exec 9>"$root/.lock"
if ! flock -n 9; then
  log "another build holds $root/.lock: waiting for it"
  flock 9
fi
if done_all; then
  echo "$root"
  exit 0
fi

if ! pkg-config --exists libseccomp 2>/dev/null; then
  log "installing libseccomp-dev and pkg-config (runc's seccomp support)"
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    libseccomp-dev pkg-config >/dev/null || die "apt-get install libseccomp-dev pkg-config failed"
fi

module_dir() { # MODULE@VERSION
  local dl dir
  dl=$(cd / && "$GO" mod download -json "$1" 2>&1) || die "cannot download $1: $dl"
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")
  [[ -f "$dir/go.mod" ]] || die "no module directory for $1: $dl"
  echo "$dir"
}

t=$(date +%s)
rm -rf "$root/bin.tmp"
mkdir -p "$root/bin.tmp"
build() { # DIR OUT PKG [go build args...]
  local dir=$1 out=$2 pkg=$3; shift 3
  (cd "$dir" && GOFLAGS="-mod=mod -buildvcs=false" nice -n "$KUBE_NICE" "$GO" build -p "$GO_BUILD_P" \
    -trimpath -gcflags "all=-dwarf=false" "$@" -o "$root/bin.tmp/$out" "$pkg") ||
    die "go build of $out failed"
}

src=$(module_dir "github.com/containerd/containerd/v2@v$CONTAINERD_VERSION")
log "building containerd v$CONTAINERD_VERSION with $("$GO" version) (nice $KUBE_NICE, -p $GO_BUILD_P)"
pkgv=github.com/containerd/containerd/v2/version
ldflags="-s -w -X $pkgv.Version=v$CONTAINERD_VERSION -X $pkgv.Revision=module -X $pkgv.Package=github.com/containerd/containerd/v2"
for cmd in containerd ctr; do
  CGO_ENABLED=0 build "$src" "$cmd" "./cmd/$cmd" -tags "urfave_cli_no_docs no_btrfs" -ldflags "$ldflags"
done
CGO_ENABLED=0 build "$src" containerd-shim-runc-v2 ./cmd/containerd-shim-runc-v2 \
  -tags "urfave_cli_no_docs no_btrfs no_grpc" -ldflags "$ldflags"

src=$(module_dir "github.com/opencontainers/runc@v$RUNC_VERSION")
log "building runc v$RUNC_VERSION"
CGO_ENABLED=1 build "$src" runc . -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-s -w -X main.version=$RUNC_VERSION -X main.gitCommit=module"

echo "$STAMP" >"$root/bin.tmp/.stamp"
rm -rf "${root:?}/bin" && mv "$root/bin.tmp" "$root/bin"
log "$("$root/bin/containerd" --version) and runc $("$root/bin/runc" --version | head -1) built in $(($(date +%s) - t))s"
echo "$root"
