#!/usr/bin/env bash
# Build a current Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubectl) and etcd from Go modules, cached per version and recipe.
#
# Usage: build-current.sh [VERSION...]    default: $KUBE_VERSIONS, else scripts/lib.sh's list
# Writes: $KUBE_CACHE/v<VERSION>/bin/{kube-apiserver,kube-controller-manager,
#         kube-scheduler,kubelet,kubectl,etcd}, and prints each phase's time.
# Env:    KUBE_CACHE=~/.cache/django-migrate-webhook/kube-current
#         GO=<the machine's go>  (>= the go line of the release's go.mod; GOTOOLCHAIN=local)
#         ETCD_VERSION=3.6.16    KUBE_NICE=10    GO_BUILD_P=2
#
# k8s.io/kubernetes's own go.mod replaces its k8s.io/* staging modules with ./staging
# paths and requires them at v0.0.0, which is not published; a dependency's replace
# directives are ignored, so a tiny wrapper module requires k8s.io/kubernetes and re-pins
# every staging module to the published v0.MINOR.PATCH (generated from the release's own
# go.mod, fetched through the module proxy by the go client). etcd is built the same way
# from go.etcd.io/etcd/server/v3. Binaries are static (CGO_ENABLED=0) and version-stamped
# like upstream's hack/lib/version.sh, so `kubectl version` shows the real version.
#
# The components of a version are compiled by one `go build`, so that the links of the
# large binaries overlap with compiling, and without DWARF (the binaries are stripped
# anyway), which saves compile time; etcd, the same for every version, is built once.
#
# Idempotent: a version whose binaries and recipe stamp are in place is skipped. One build
# at a time per cache (a lock): a second caller, such as scripts/test.sh while .ci/run's
# early build runs, waits for the first and then finds the binaries in place.
set -euo pipefail
SCRIPT=build-current
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"

KUBE_CACHE="${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/kube-current}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KUBE_NICE="${KUBE_NICE:-10}"
GO_BUILD_P="${GO_BUILD_P:-2}"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
# Bump when the recipe changes, so cached binaries are rebuilt.
RECIPE="go-modules-wrapper-v2 nodwarf etcd-$ETCD_VERSION components-${COMPONENTS[*]// /,}"
GCFLAGS="all=-dwarf=false"


# The machine's Go: the first go on PATH that is new enough, else /usr/local/go.
if [[ -z "${GO:-}" ]]; then
  for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
    [[ -x "$candidate" ]] || continue
    minor=$("$candidate" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    if [[ -n "$minor" && "$minor" -ge 24 ]]; then GO=$candidate; break; fi
  done
fi
[[ -n "${GO:-}" && -x "$GO" ]] || die "no Go >= 1.24 found: install Go (https://go.dev/dl) or set GO=/path/to/go"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
log "using $("$GO" version) at $GO"

if (($#)); then versions=("$@"); else read -r -a versions <<<"${KUBE_VERSIONS:-$KUBE_VERSIONS_DEFAULT}"; fi

mkdir -p "$KUBE_CACHE"
exec 9>"$KUBE_CACHE/.lock"
if ! flock -n 9; then
  log "another build holds $KUBE_CACHE/.lock: waiting for it"
  flock 9
fi

stamp() { # VERSION -> ldflags
  local v=$1 minor ldf="" p
  minor=${v#1.}; minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldf+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldf"
}

# wrapper go.mod for k8s.io/kubernetes@vVERSION, from the release's own go.mod
wrapper_gomod() {
  local version=$1 gomod=$2 staging="v0.${1#1.}"
  echo "module example.invalid/kube-build"
  echo
  awk '/^go [0-9]/{print; exit}' "$gomod"
  awk '/^godebug \(/{b=1} b{print} b&&/^\)/{b=0;next} !b&&/^godebug /{print}' "$gomod"
  echo
  echo "require k8s.io/kubernetes v$version"
  echo
  echo "replace ("
  awk '/^replace \(/{r=1;next} r&&/^\)/{r=0;next} r{print;next} /^replace [^(]/{sub(/^replace /,"");print}' "$gomod" |
    sed 's/^[[:space:]]*//' | grep -v -e '^$' -e '^//' |
    while read -r line; do
      if [[ "$line" =~ ^([^[:space:]]+)[[:space:]]+=\>[[:space:]]+\./staging/src/ ]]; then
        echo "	${BASH_REMATCH[1]} => ${BASH_REMATCH[1]} $staging"
      else
        echo "	$line"
      fi
    done
  echo ")"
}

tidy() { # DIR: resolve and download every dependency of the wrapper module
  if ! (cd "$1" && "$GO" mod tidy) >"$1/tidy.log" 2>&1; then
    cat "$1/tidy.log" >&2
    die "go mod tidy failed in $1"
  fi
}

# etcd v$ETCD_VERSION into $KUBE_CACHE/etcd-v$ETCD_VERSION, once for every version.
build_etcd() {
  local dir="$KUBE_CACHE/etcd-v$ETCD_VERSION" t
  [[ -x "$dir/etcd" && "$(cat "$dir/.recipe" 2>/dev/null)" == "$RECIPE" ]] && return 0
  mkdir -p "$dir/work"
  t=$(date +%s)
  cat >"$dir/work/go.mod" <<EOF
module example.invalid/etcd-build

go 1.24.0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
EOF
  cat >"$dir/work/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
  tidy "$dir/work"
  (cd "$dir/work" && nice -n "$KUBE_NICE" "$GO" build -p "$GO_BUILD_P" -trimpath -gcflags "$GCFLAGS" \
    -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3)
  echo "$RECIPE" >"$dir/.recipe"
  log "etcd v$ETCD_VERSION in $(($(date +%s) - t))s"
}

build_version() {
  local version=${1#v} out work t0 t1 t2 t3 dl gomod c pkgs=()
  out="$KUBE_CACHE/v$version/bin"
  work="$KUBE_CACHE/v$version/work"
  local ok=1
  for c in "${COMPONENTS[@]}" etcd; do [[ -x "$out/$c" ]] || ok=0; done
  [[ "$(cat "$out/.recipe" 2>/dev/null)" == "$RECIPE" ]] || ok=0
  if ((ok)); then
    log "v$version already built in $out"
    return 0
  fi
  mkdir -p "$out" "$work/kube"
  t0=$(date +%s)

  log "v$version: fetching k8s.io/kubernetes's go.mod"
  dl=$(cd / && "$GO" mod download -json "k8s.io/kubernetes@v$version" 2>&1) || die "cannot download k8s.io/kubernetes@v$version: $dl"
  gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' <<<"$dl")
  [[ -f "$gomod" ]] || die "no go.mod for k8s.io/kubernetes@v$version: $dl"
  wrapper_gomod "$version" "$gomod" >"$work/kube/go.mod"
  cat >"$work/kube/tools.go" <<EOF
//go:build tools

package tools

import (
$(for c in "${COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done)
)
EOF
  tidy "$work/kube"
  t1=$(date +%s)
  log "v$version: modules resolved in $((t1 - t0))s; compiling ${COMPONENTS[*]} (nice $KUBE_NICE, -p $GO_BUILD_P)"
  for c in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$work/kube" && nice -n "$KUBE_NICE" "$GO" build -p "$GO_BUILD_P" -trimpath -gcflags "$GCFLAGS" \
    -ldflags "-s -w$(stamp "$version")" -o "$out/" "${pkgs[@]}")
  t2=$(date +%s)
  build_etcd
  ln -f "$KUBE_CACHE/etcd-v$ETCD_VERSION/etcd" "$out/etcd"
  t3=$(date +%s)
  echo "$RECIPE" >"$out/.recipe"
  log "v$version: done in $((t3 - t0))s (modules $((t1 - t0))s, kubernetes $((t2 - t1))s, etcd $((t3 - t2))s)"
  "$out/kube-apiserver" --version >&2
  # sed reads every line: `head -1` would close the pipe early, and a writer killed by
  # SIGPIPE fails the build under pipefail.
  "$out/kubectl" version --client 2>/dev/null | sed -n 1p >&2 || true
  "$out/etcd" --version | sed -n 1p >&2
}

for v in "${versions[@]}"; do
  build_version "$v"
done
