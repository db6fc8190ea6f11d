#!/usr/bin/env bash
# Build a real kube-apiserver + kube-controller-manager from Debian's
# `kubernetes` source package (bookworm: 1.20.5+really1.20.2, full upstream
# source with vendor/), using Debian's Go (1.19), and install etcd from Debian.
#
# Usage: build.sh [BIN_DIR]          (default BIN_DIR=$KUBE_WORK/bin)
# Env:   KUBE_WORK=~/.cache/django-migrate-webhook/kube   work dir (source tree, Go build cache)
#        KUBE_WHAT="kube-apiserver kube-controller-manager"  components to build
#        KUBE_NICE=10                 niceness for the compile
#        KUBE_CLEAN=0                 1 = delete _output (build cache, ~2.3 GB) afterwards
#
# kubectl comes from Debian's kubernetes-client package (the same 1.20.2 source),
# unpacked into BIN_DIR rather than installed, so it cannot clash with another kubectl.
#
# Idempotent: skips apt work, source download/extract and compilation when the
# result is already there. Needs root (apt) and access to the Debian archive.
set -euo pipefail

KUBE_WORK="${KUBE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/kube}"
BIN_DIR="${1:-$KUBE_WORK/bin}"
KUBE_WHAT="${KUBE_WHAT:-kube-apiserver kube-controller-manager}"
KUBE_NICE="${KUBE_NICE:-10}"
SRC_SUITE=bookworm
SRC_VERSION_PREFIX="1.20"
SRC_DIR_NAME=kubernetes-1.20.2
# Bump when the recipe changes, so existing binaries get rebuilt.
RECIPE_ID="k8s-v1.20.2 debian-go1.19 vendor-reflect2-1.0.2"

log() { echo "+++ [build.sh $(date +%H:%M:%S)] $*" >&2; }

# The 1.20 tree builds with Debian's Go 1.19 (package golang-1.19-go), called by path:
# whatever `go` comes first on PATH may be much newer, and 1.20 is not known to build
# with it. hack/ calls plain `go`, so that directory goes first on PATH for the compile.
GO119_DIR=/usr/lib/go-1.19/bin

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
for p in golang-1.19-go etcd-server etcd-client rsync openssl python3 dpkg-dev make curl \
         golang-github-modern-go-reflect2-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done

# deb-src entry for the source package (deb822 format, same mirror as the
# machine's existing debian.sources entry).
SRC_LIST=/etc/apt/sources.list.d/kube-build-src.sources
have_src() { local v; v=$(apt-cache showsrc kubernetes 2>/dev/null || true); grep -q "^Version: ${SRC_VERSION_PREFIX}" <<<"$v"; }
if ! have_src; then
  if [[ ! -f "$SRC_LIST" ]]; then
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [[ -z "$uri" ]]; then
      uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [[ -n "$uri" ]] || { echo "cannot find the Debian mirror URI" >&2; exit 1; }
    log "adding deb-src ($SRC_SUITE) in $SRC_LIST"
    cat >"$SRC_LIST" <<EOF
Types: deb-src
URIs: $uri
Suites: $SRC_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  log "apt-get update"
  apt-get update -qq
  have_src || { echo "kubernetes ${SRC_VERSION_PREFIX} source package not found" >&2; exit 1; }
  # an update was needed anyway: install packages against fresh lists
fi
if ((${#need_pkgs[@]})); then
  log "apt-get install ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; }
fi

mkdir -p "$BIN_DIR"
# etcd comes from Debian: link it next to the kube binaries for convenience.
ln -sf /usr/bin/etcd "$BIN_DIR/etcd"
ln -sf /usr/bin/etcdctl "$BIN_DIR/etcdctl"

# ---------------------------------------------------------------- kubectl
if [[ ! -x "$BIN_DIR/kubectl" ]]; then
  log "unpacking kubectl from Debian's kubernetes-client into $BIN_DIR"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download kubernetes-client >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$tmp" && apt-get download kubernetes-client >/dev/null); }
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/kubectl" "$BIN_DIR/kubectl"
  rm -rf "$tmp"
fi

# ---------------------------------------------------------------- done already?
all_built=1
for c in $KUBE_WHAT; do [[ -x "$BIN_DIR/$c" ]] || all_built=0; done
[[ "$(cat "$BIN_DIR/.recipe" 2>/dev/null)" == "$RECIPE_ID" ]] || all_built=0
if ((all_built)); then
  log "already built: $(for c in $KUBE_WHAT; do printf '%s ' "$BIN_DIR/$c"; done)"
  "$BIN_DIR/kube-apiserver" --version 2>/dev/null || true
  exit 0
fi

# ---------------------------------------------------------------- source
SRC_ROOT="$KUBE_WORK/src"
mkdir -p "$SRC_ROOT"
cd "$SRC_ROOT"
if [[ ! -f "$SRC_DIR_NAME/go.mod" ]]; then
  if ! ls kubernetes_*really1.20.2*.orig.tar.gz >/dev/null 2>&1; then
    log "apt-get source kubernetes/$SRC_SUITE (download only, ~34 MB)"
    apt-get source --download-only "kubernetes/$SRC_SUITE" >/dev/null 2>&1 \
      || apt-get source --download-only kubernetes="$(apt-cache showsrc kubernetes | awk '/^Version: 1\.20/{print $2}' | head -n1)"
  fi
  log "extracting upstream tarball"
  rm -rf "$SRC_DIR_NAME.tmp" && mkdir "$SRC_DIR_NAME.tmp"
  tar xzf kubernetes_*really1.20.2*.orig.tar.gz -C "$SRC_DIR_NAME.tmp" --strip-components=1
  mv "$SRC_DIR_NAME.tmp" "$SRC_DIR_NAME"
fi

# ---------------------------------------------------------------- vendor fix
# Kubernetes 1.20 vendors github.com/modern-go/reflect2 v1.0.1, which is broken
# with Go >= 1.18 (mapiterinit/hiter layout changed): kube-apiserver then
# panics (nil pointer in reflect.mapiterinit) whenever json-iterator encodes a
# map with sorted keys - e.g. when applying a mutating webhook's JSONPatch.
# Debian's golang-github-modern-go-reflect2-dev is v1.0.2 (the upstream fix,
# API-compatible): swap it in.
cd "$SRC_ROOT/$SRC_DIR_NAME"
R2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
R2_DST=vendor/github.com/modern-go/reflect2
if [[ ! -f "$R2_DST/go_above_118.go" ]]; then
  log "replacing vendored reflect2 v1.0.1 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  rm -f "$R2_DST"/*.go "$R2_DST"/*.s
  cp "$R2_SRC"/*.go "$R2_SRC"/*.s "$R2_DST"/
fi

# ---------------------------------------------------------------- compile
what=""
for c in $KUBE_WHAT; do what+="cmd/$c "; done
log "make WHAT=\"$what\" ($("$GO119_DIR/go" version | awk '{print $3}'), nice $KUBE_NICE) - ~5 min on 2 cores from scratch"
start=$(date +%s)
# hack/ builds in GOPATH mode under _output/local/go with the vendor/ tree (its
# Go build cache is _output/local/go/cache, ~1.8 GB; keep it for fast rebuilds);
# the tarball carries git-archive version stamps, so the binaries report v1.20.2.
env -u GOFLAGS CGO_ENABLED=0 GOTOOLCHAIN=local HOME="${HOME:-/root}" PATH="$GO119_DIR:$PATH" \
  nice -n "$KUBE_NICE" make WHAT="$what"
log "compile took $(( $(date +%s) - start ))s"

for c in $KUBE_WHAT; do
  install -m 0755 "_output/bin/$c" "$BIN_DIR/$c"
done
echo "$RECIPE_ID" >"$BIN_DIR/.recipe"
if [[ "${KUBE_CLEAN:-0}" == 1 ]]; then log "removing _output (build cache)"; rm -rf _output; fi
ls -la "$BIN_DIR"
"$BIN_DIR/kube-apiserver" --version
