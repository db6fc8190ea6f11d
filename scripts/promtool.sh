#!/usr/bin/env bash
# Prints the path of Debian's promtool, extracting it from Debian's prometheus package
# into a cache on first use: the package itself is not installed, so no Prometheus
# service is set up or started.
#
# Usage: scripts/promtool.sh        (prints e.g. ~/.cache/django-migrate-webhook/promtool/usr/bin/promtool)
set -euo pipefail
SCRIPT=promtool
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/promtool"
bin="$dir/usr/bin/promtool"
if [[ ! -x "$bin" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  } || die "cannot download Debian's prometheus package (apt-get download prometheus)"
  mkdir -p "$dir"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -D -m 0755 "$tmp/root/usr/bin/promtool" "$bin"
  log "promtool $("$bin" --version 2>&1 | awk 'NR==1{print $3}') extracted to $bin" >&2
fi
echo "$bin"
