#!/usr/bin/env bash
# Build container images locally, without any registry, as docker-archive tarballs that
# `ctr -n k8s.io images import` reads (single layer, written with tar and sha256sum).
#
#   localhost/e2e/pause:3.2        a static C pause (images/pause.c): containerd's sandbox image
#   localhost/e2e/busybox:1.35     Debian's busybox-static with its applet links
#   localhost/e2e/django:test      debootstrap'ed bookworm minbase + python3 + Django 5.2 and
#                                  psycopg2 (pip) + the test project of tests/django
#   localhost/e2e/django-migrate-webhook:VERSION
#                                  the webhook image assembled from this build's release binary
#                                  and the layout of the Dockerfile's runtime stage (glibc, CA
#                                  certificates, user 65532); WEBHOOK_BINARY names the binary
#
# Usage: build-images.sh [OUT_DIR]     (default ~/.cache/django-migrate-webhook/images)
# Env:   IMAGES="pause busybox"
# Idempotent: an image whose tarball exists is skipped (delete it to rebuild).
set -euo pipefail
SCRIPT=build-images
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/images}"
IMAGES="${IMAGES:-pause busybox}"
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$OUT"

# pack_image ROOTFS REF OUT_TAR CMD_JSON [WORKDIR] [ENV_JSON] [USER] [ENTRYPOINT_JSON]
# Writes a single-layer docker-archive (manifest.json + config + layer.tar).
pack_image() {
  local rootfs=$1 ref=$2 out=$3 cmd=$4 workdir=${5:-/}
  local env=${6:-'["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'} user=${7:-}
  local entrypoint=${8:-null}
  local tmp; tmp=$(mktemp -d)
  tar --numeric-owner --xattrs --sort=name -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff; diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  cat >"$tmp/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "config":{"Env":$env,"Entrypoint":$entrypoint,"Cmd":$cmd,"WorkingDir":"$workdir","User":"$user"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff"]},
 "history":[{"created_by":"e2e-node build-images.sh"}]}
EOF
  local cfg; cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
  mv "$tmp/config.json" "$tmp/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$cfg" "$ref" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.tmp" manifest.json "$cfg.json" layer.tar
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
  log "packed $ref -> $out ($(du -h "$out" | cut -f1))"
}

for img in $IMAGES; do
  case $img in
  pause)
    [[ -f "$OUT/pause.tar" ]] && { log "pause.tar exists"; continue; }
    r=$(mktemp -d)
    gcc -Os -static -s -o "$r/pause" "$HERE/images/pause.c"
    pack_image "$r" localhost/e2e/pause:3.2 "$OUT/pause.tar" '["/pause"]'
    rm -rf "$r";;
  busybox)
    [[ -f "$OUT/busybox.tar" ]] && { log "busybox.tar exists"; continue; }
    r=$(mktemp -d)
    mkdir -p "$r"/{bin,etc,tmp,proc,sys,dev,root,var/log}
    chmod 1777 "$r/tmp"
    cp /bin/busybox "$r/bin/busybox"
    for a in $(/bin/busybox --list); do [[ -e "$r/bin/$a" ]] || ln -s busybox "$r/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
    echo 'root:x:0:' >"$r/etc/group"
    echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$r/etc/passwd"
    pack_image "$r" localhost/e2e/busybox:1.35 "$OUT/busybox.tar" '["/bin/sh"]'
    rm -rf "$r";;
  webhook)
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)
    binary="${WEBHOOK_BINARY:-$ROOT/target/release/django-migrate-webhook}"
    [[ -x "$binary" ]] || { echo "build-images: $binary missing (cargo build --release)" >&2; exit 1; }
    r=$(mktemp -d)
    mkdir -p "$r"/{usr/local/bin,etc/ssl/certs,tmp,lib64,lib/x86_64-linux-gnu}
    chmod 1777 "$r/tmp"
    install -m 0755 "$binary" "$r/usr/local/bin/django-migrate-webhook"
    # the shared libraries the binary links (what distroless/cc provides)
    for lib in $(ldd "$binary" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
      cp -L "$lib" "$r$lib"
    done
    cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
    # ENTRYPOINT and CMD as the Dockerfile's
    pack_image "$r" "localhost/e2e/django-migrate-webhook:$version" "$OUT/webhook.tar" \
      '["serve","--tls-cert=/etc/django-migrate-webhook/tls/tls.crt","--tls-key=/etc/django-migrate-webhook/tls/tls.key"]' / \
      '["PATH=/usr/local/bin:/usr/bin:/bin"]' 65532:65532 '["/usr/local/bin/django-migrate-webhook"]'
    rm -rf "$r";;
  django)
    ROOTFS="$OUT/rootfs-django"
    if [[ ! -x "$ROOTFS/usr/bin/python3" ]]; then
      uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
      command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
      log "debootstrap bookworm minbase + python3 into $ROOTFS"
      rm -rf "$ROOTFS"
      t=$(date +%s)
      debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
        bookworm "$ROOTFS" "$uri" >"$OUT/debootstrap.log" 2>&1 || { tail -20 "$OUT/debootstrap.log"; exit 1; }
      log "debootstrap took $(( $(date +%s) - t ))s"
    fi
    if ! chroot "$ROOTFS" python3 -c 'import django, psycopg' 2>/dev/null; then
      t=$(date +%s)
      cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
      cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
      [[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
      cp "$ROOT/tests/requirements-image.txt" "$ROOTFS/tmp/requirements.txt"
      chroot "$ROOTFS" env HOME=/root python3 -m pip install --quiet --no-cache-dir --break-system-packages \
        -r /tmp/requirements.txt
      rm -f "$ROOTFS/tmp/requirements.txt"
      log "pip took $(( $(date +%s) - t ))s"
    fi
    rm -rf "$ROOTFS/app" && mkdir -p "$ROOTFS/app"
    cp -r "$ROOT/tests/django/." "$ROOTFS/app/"
    find "$ROOTFS/app" -name __pycache__ -prune -exec rm -rf {} +
    pack_image "$ROOTFS" localhost/e2e/django:test "$OUT/django.tar" '["python3","manage.py","runserver","--noreload","0.0.0.0:8000"]' /app \
      '["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PYTHONUNBUFFERED=1","DJANGO_SETTINGS_MODULE=testsite.settings"]';;
  *) echo "unknown image $img" >&2; exit 1;;
  esac
done
