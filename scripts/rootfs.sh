#!/usr/bin/env bash
# rootfs.sh RELEASE: builds (once) and prints the path of a Debian root filesystem that the
# tests run a newer stack in (scripts/in-rootfs.sh), cached under
# ~/.cache/django-migrate-webhook/rootfs/RELEASE and rebuilt when this script or the
# release's requirements file changes.
#
#   trixie  Debian 13: Python 3.13, PostgreSQL 17, MariaDB 11.8, PgBouncer from Debian, and a
#           venv /opt/venv with tests/requirements-trixie.txt (Django 6.1, psycopg 3,
#           mysqlclient built against Debian 13's libmariadb)
#   sid     Debian unstable: Python 3.14 and the PostgreSQL client, and a venv /opt/venv
#           with tests/requirements-sid.txt (Django 6.1, psycopg 3, mysqlclient)
#
# Packages come from the Debian mirror this machine's apt uses; no service is started
# (policy-rc.d), and PostgreSQL creates no cluster of its own.
set -euo pipefail

release=${1:?usage: rootfs.sh trixie|sid}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

case "$release" in
    trixie)
        packages=(python3 python3-venv python3-dev gcc pkg-config libmariadb-dev
                  postgresql-17 postgresql-client-17 mariadb-server mariadb-client pgbouncer);;
    sid)
        packages=(python3 python3-venv python3-dev gcc pkg-config libmariadb-dev postgresql-client);;
    *) die "unknown release $release (allowed: trixie, sid)";;
esac
requirements=$ROOT/tests/requirements-$release.txt
cache=${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/rootfs
dir=$cache/$release
wanted=$(cat "$0" "$requirements" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$dir/.built" 2>/dev/null)" = "$wanted" ]; then
    echo "$dir"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the $release root filesystem needs root (debootstrap, chroot)"
if ! command -v debootstrap >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null
fi
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
      awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
[ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"

mkdir -p "$cache"
exec 9>"$cache/.$release.lock"
flock 9
if [ "$(cat "$dir/.built" 2>/dev/null)" = "$wanted" ]; then
    echo "$dir"
    exit 0
fi

t0=$(date +%s)
rm -rf "$dir.partial"
log "debootstrap $release minbase into $dir"
debootstrap --variant=minbase --include=ca-certificates,procps "$release" "$dir.partial" "$uri" \
    >"$cache/$release-debootstrap.log" 2>&1 ||
    { tail -20 "$cache/$release-debootstrap.log" >&2; die "debootstrap $release failed"; }
r=$dir.partial
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
chmod +x "$r/usr/sbin/policy-rc.d"
mkdir -p "$r/etc/postgresql-common"
echo "create_main_cluster = false" >"$r/etc/postgresql-common/createcluster.conf"
cp /etc/resolv.conf "$r/etc/resolv.conf"
# This machine's certificate authorities and pip configuration (for a mirror).
cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$r/etc/pip.conf"; fi

log "apt-get install ${packages[*]}"
"$ROOT/scripts/in-rootfs.sh" "$r" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >"$cache/$release-apt.log" 2>&1 ||
    { tail -20 "$cache/$release-apt.log" >&2; die "apt-get install in the $release root filesystem failed"; }
"$ROOT/scripts/in-rootfs.sh" "$r" apt-get clean

log "venv /opt/venv from $(basename "$requirements")"
"$ROOT/scripts/in-rootfs.sh" "$r" python3 -m venv /opt/venv
"$ROOT/scripts/in-rootfs.sh" "$r" env HOME=/root /opt/venv/bin/pip install --quiet --no-cache-dir \
    --disable-pip-version-check -r "$requirements" ||
    die "pip install -r tests/requirements-$release.txt in the $release root filesystem failed"

echo "$wanted" >"$r/.built"
rm -rf "$dir"
mv "$r" "$dir"
log "$release root filesystem ready in $(($(date +%s) - t0))s: $("$ROOT/scripts/in-rootfs.sh" "$dir" /opt/venv/bin/python -c \
    'import sys, django; print("Python %d.%d.%d, Django %s" % (sys.version_info[:3] + (django.get_version(),)))')"
echo "$dir"
