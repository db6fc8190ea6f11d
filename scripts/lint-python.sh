#!/usr/bin/env bash
# Lints and format-checks every Python file of the project with ruff (ruff.toml), from a
# venv of its own (.venv-tools) with a pinned ruff, created on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

RUFF_VERSION=0.17.6
venv=.venv-tools
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
fi
if [ "$("$venv/bin/ruff" --version 2>/dev/null)" != "ruff $RUFF_VERSION" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "ruff==$RUFF_VERSION"
fi
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
