#!/usr/bin/env bash
# Install Argo Rollouts from its Go module, cached per version: its CRDs (manifests/crds),
# and, unless only the CRDs are asked for, the controller built from cmd/rollouts-controller,
# to run outside the cluster against a control plane of start-cluster.sh.
#
# Usage: build-argo-rollouts.sh [all|crds]    default all; prints the install dir on stdout:
#          <dir>/crds/{rollout,analysis-run,analysis-template,cluster-analysis-template,experiment}-crd.yaml
#          <dir>/bin/rollouts-controller      (all only)
#        with <dir> = ~/.cache/django-migrate-webhook/tools/argo-rollouts-v$ARGO_ROLLOUTS_VERSION
# Env:   ARGO_ROLLOUTS_VERSION=1.8.5  GO=<the machine's go>  (>= the go line of the release's
#        go.mod; GOTOOLCHAIN=local)  KUBE_NICE=10  GO_BUILD_P=2
#
# `go install github.com/argoproj/argo-rollouts/cmd/rollouts-controller@vX` refuses the module
# for the replace directives in its go.mod, so the module, fetched through the module proxy
# by the go client (the Go module cache as for every Go build here), is copied to a writable
# directory and built there as its own main module, with its own go.mod and go.sum.
#
# Idempotent: what is in place with the stamp of this script and version is skipped; a
# change of either installs it anew. One install at a time per version (a lock).
set -euo pipefail
SCRIPT=build-argo-rollouts
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"

MODE="${1:-all}"
[[ "$MODE" == all || "$MODE" == crds ]] || die "usage: $0 [all|crds]"
ARGO_ROLLOUTS_VERSION="${ARGO_ROLLOUTS_VERSION:-1.8.5}"
ARGO_ROLLOUTS_VERSION="${ARGO_ROLLOUTS_VERSION#v}"
KUBE_NICE="${KUBE_NICE:-10}"
GO_BUILD_P="${GO_BUILD_P:-2}"
MODULE=github.com/argoproj/argo-rollouts
root="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/tools/argo-rollouts-v$ARGO_ROLLOUTS_VERSION"
STAMP="v$ARGO_ROLLOUTS_VERSION $(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"

stamped() { [[ "$(cat "$1/.stamp" 2>/dev/null)" == "$STAMP" ]]; }
done_crds() { stamped "$root/crds" && [[ -f "$root/crds/rollout-crd.yaml" ]]; }
done_bin() { stamped "$root/bin" && [[ -x "$root/bin/rollouts-controller" ]]; }
if done_crds && { [[ "$MODE" == crds ]] || done_bin; }; then
  echo "$root"
  exit 0
fi

# The machine's Go: the first go on PATH that is new enough, else /usr/local/go.
if [[ -z "${GO:-}" ]]; then
  for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -x "$candidate" ]] || continue
    minor=$("$candidate" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    if [[ -n "$minor" && "$minor" -ge 23 ]]; then GO=$candidate; break; fi
  done
fi
[[ -n "${GO:-}" && -x "$GO" ]] || die "no Go >= 1.23 found: install Go (https://go.dev/dl) or set GO=/path/to/go"
export GOTOOLCHAIN=local CGO_ENABLED=0

mkdir -p "$root"
exec 9>"$root/.lock"
if ! flock -n 9; then
  log "another install holds $root/.lock: waiting for it"
  flock 9
fi

log "fetching $MODULE@v$ARGO_ROLLOUTS_VERSION"
dl=$(cd / && "$GO" mod download -json "$MODULE@v$ARGO_ROLLOUTS_VERSION" 2>&1) ||
  die "cannot download $MODULE@v$ARGO_ROLLOUTS_VERSION: $dl"
src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")
[[ -f "$src/go.mod" ]] || die "no module directory for $MODULE@v$ARGO_ROLLOUTS_VERSION: $dl"

if ! done_crds; then
  rm -rf "$root/crds.tmp"
  mkdir -p "$root/crds.tmp"
  cp "$src"/manifests/crds/*-crd.yaml "$root/crds.tmp/"
  chmod 0644 "$root"/crds.tmp/*.yaml
  [[ -f "$root/crds.tmp/rollout-crd.yaml" ]] || die "no manifests/crds/rollout-crd.yaml in $src"
  echo "$STAMP" >"$root/crds.tmp/.stamp"
  rm -rf "${root:?}/crds" && mv "$root/crds.tmp" "$root/crds"
  log "CRDs of v$ARGO_ROLLOUTS_VERSION in $root/crds: $(cd "$root/crds" && echo *.yaml)"
fi

if [[ "$MODE" == all ]] && ! done_bin; then
  log "building rollouts-controller v$ARGO_ROLLOUTS_VERSION with $("$GO" version) (nice $KUBE_NICE, -p $GO_BUILD_P)"
  t=$(date +%s)
  work=$(mktemp -d "$root/build.XXXXXX")
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  cp -r "$src/." "$work/src"
  chmod -R u+w "$work/src"
  rm -rf "$root/bin.tmp"
  mkdir -p "$root/bin.tmp"
  ver="$MODULE/utils/version"
  (cd "$work/src" && GOFLAGS="-mod=mod -buildvcs=false" nice -n "$KUBE_NICE" "$GO" build -p "$GO_BUILD_P" \
    -trimpath -gcflags "all=-dwarf=false" \
    -ldflags "-s -w -X $ver.version=$ARGO_ROLLOUTS_VERSION -X $ver.buildDate=1970-01-01T00:00:00Z -X $ver.gitTreeState=clean" \
    -o "$root/bin.tmp/rollouts-controller" ./cmd/rollouts-controller) ||
    die "go build of rollouts-controller v$ARGO_ROLLOUTS_VERSION failed"
  echo "$STAMP" >"$root/bin.tmp/.stamp"
  rm -rf "${root:?}/bin" && mv "$root/bin.tmp" "$root/bin"
  log "rollouts-controller $("$root/bin/rollouts-controller" --version 2>/dev/null | head -1) done in $(($(date +%s) - t))s"
fi
echo "$root"
