#!/usr/bin/env bash
# Writes the chart's README (charts/django-migrate-webhook/README.md) from README.md.gotmpl
# and the `# --` comments of values.yaml with helm-docs, built once from its Go module into
# the cache. With --check it writes nothing and fails when the README is not current.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_DOCS_VERSION=v1.14.2
bin="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/bin"
helm_docs="$bin/helm-docs-$HELM_DOCS_VERSION"
if [ ! -x "$helm_docs" ]; then
    command -v go >/dev/null || { echo "go is not installed: helm-docs is built from its Go module" >&2; exit 1; }
    mkdir -p "$bin"
    GOBIN="$bin" go install "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION"
    mv "$bin/helm-docs" "$helm_docs"
fi
chart=charts/django-migrate-webhook
args=(--chart-search-root "$chart" --template-files README.md.gotmpl --sort-values-order file)
if [ "${1:-}" = "--check" ]; then
    if ! diff -u "$chart/README.md" <("$helm_docs" "${args[@]}" --dry-run 2>/dev/null); then
        echo "$chart/README.md is not current: run bash scripts/chart-readme.sh" >&2
        exit 1
    fi
else
    "$helm_docs" "${args[@]}"
fi
