#!/usr/bin/env bash
# Build the Helm CLI from its Go module, cached per version: what the tutorial's commands
# (docs/src/tutorial.md) run, as a platform engineer would. The chart tier itself drives
# Helm through its Go SDK (helm-python-sdk).
#
# Usage: build-helm.sh            prints the path of the helm binary on stdout
# Env:   HELM_VERSION=4.3.2  GO=<the machine's go>  KUBE_NICE=10
set -euo pipefail
SCRIPT=build-helm
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"

HELM_VERSION="${HELM_VERSION:-4.3.2}"
root="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/tools/helm-v$HELM_VERSION"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || die "no Go found: install Go (https://go.dev/dl) or set GO=/path/to/go"

mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [[ ! -x "$root/bin/helm" ]]; then
  log "building helm v$HELM_VERSION with $("$GO" version)"
  t=$(date +%s)
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$root/bin.tmp" nice -n "${KUBE_NICE:-10}" \
    "$GO" install -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION"
  rm -rf "${root:?}/bin" && mv "$root/bin.tmp" "$root/bin"
  log "helm v$HELM_VERSION done in $(($(date +%s) - t))s"
fi
echo "$root/bin/helm"
