#!/usr/bin/env bash
# The book (docs/): builds it with mdBook and checks every link and anchor with
# mdbook-linkcheck2, both pinned and installed once into the cache.
#   bash scripts/docs.sh           build into docs/book and check the links
#   bash scripts/docs.sh --install only install the tools (CI starts this early)
#   bash scripts/docs.sh --serve   serve the book on http://127.0.0.1:3000 while editing
set -euo pipefail
cd "$(dirname "$0")/.."
SCRIPT=docs
source scripts/lib.sh

mdbook_version=0.5.4
linkcheck_version=0.13.0
tools="${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/tools"
mdbook_root="$tools/mdbook-$mdbook_version"
linkcheck_root="$tools/mdbook-linkcheck2-$linkcheck_version"

install_tool() { # ROOT CRATE VERSION [cargo install flags...]
  local root=$1 crate=$2 version=$3; shift 3
  [ -x "$root/bin/$crate" ] && return
  log "installing $crate $version into $root"
  # A lock, so that CI's early install and a build started beside it never install twice.
  mkdir -p "$tools"
  (
    flock 9
    [ -x "$root/bin/$crate" ] || cargo install --quiet --locked --root "$root" "$@" "$crate@$version"
  ) 9>"$tools/.$crate.lock"
}

install_tool "$mdbook_root" mdbook "$mdbook_version" --no-default-features --features search,serve
install_tool "$linkcheck_root" mdbook-linkcheck2 "$linkcheck_version"
export PATH="$mdbook_root/bin:$linkcheck_root/bin:$PATH"

case "${1:-}" in
  --install) exit 0 ;;
  --serve) exec mdbook serve docs ;;
  "") ;;
  *) die "unknown argument '$1'; allowed: --install, --serve, or nothing (build and check)" ;;
esac

# The reference pages generated from the code are checked against it by the tests
# (tests/engine/docs.rs); here the book is built and every link checked.
mdbook build docs
log "book built into docs/book/html; links checked"
