#!/usr/bin/env bash
# Build container images locally, without any registry, as docker-archive tarballs that
# `ctr -n k8s.io images import` reads (single layer, written with tar and sha256sum).
#
#   localhost/e2e/pause:3.2        a static C pause (images/pause.c): containerd's sandbox image
#   localhost/e2e/busybox:1.35     Debian's busybox-static with its applet links
#
# Usage: build-images.sh [OUT_DIR]     (default ~/.cache/django-migrate-webhook/images)
# Env:   IMAGES="pause busybox"
# Idempotent: an image whose tarball exists is skipped (delete it to rebuild).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/images}"
IMAGES="${IMAGES:-pause busybox}"
mkdir -p "$OUT"
log() { echo "+++ [build-images $(date +%H:%M:%S)] $*" >&2; }

# pack_image ROOTFS REF OUT_TAR CMD_JSON [WORKDIR] [ENV_JSON]
# Writes a single-layer docker-archive (manifest.json + config + layer.tar).
pack_image() {
  local rootfs=$1 ref=$2 out=$3 cmd=$4 workdir=${5:-/}
  local env=${6:-'["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'}
  local tmp; tmp=$(mktemp -d)
  tar --numeric-owner --xattrs --sort=name -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff; diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  cat >"$tmp/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "config":{"Env":$env,"Cmd":$cmd,"WorkingDir":"$workdir"},
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
  *) echo "unknown image $img" >&2; exit 1;;
  esac
done
