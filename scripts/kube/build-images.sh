#!/usr/bin/env bash
# Build container images locally, without any registry, as docker-archive tarballs that
# `ctr -n k8s.io images import` reads (single layer, written with tar and sha256sum).
#
#   localhost/e2e/pause:3.2        a static C pause (images/pause.c): containerd's sandbox image
#   localhost/e2e/busybox:1.35     Debian's busybox-static with its applet links
#   localhost/e2e/django:test      debootstrap'ed trixie minbase + python3 (3.13) + Django 6.1 and
#                                  psycopg 3 (pip) + the test project of tests/django
#   localhost/e2e/django:ledger-1, :ledger-2
#                                  the same, with the ledger app's release 1 or 2 in the image's env
#   localhost/e2e/django-migrate-webhook:VERSION
#                                  the webhook image built from the project's Dockerfile by
#                                  buildah, on local stand-ins for its base images (below),
#                                  then checked: its OCI labels and its CycloneDX SBOM
#                                  (check_webhook_image.py)
#
# Usage: build-images.sh [OUT_DIR]     (default ~/.cache/django-migrate-webhook/images)
# Env:   IMAGES="pause busybox"
# Idempotent: each image is rebuilt only when what it is made of changed (a key or stamp
# beside it; the busybox image, of the machine's busybox, once).
set -euo pipefail
SCRIPT=build-images
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
OUT="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/images}"
IMAGES="${IMAGES:-pause busybox}"
ROOT=$(cd "$HERE/../.." && pwd)
mkdir -p "$OUT"

# pack_image ROOTFS REF OUT_TAR CMD_JSON [WORKDIR] [ENV_JSON] [USER] [ENTRYPOINT_JSON] [VARIANTS]
# Writes a single-layer docker-archive (manifest.json + config + layer.tar). VARIANTS, one
# "REF ENV_JSON" per line, are more images of the same layer that differ in their env only
# (releases of one app, for the tests), in the same archive.
pack_image() {
  local rootfs=$1 ref=$2 out=$3 cmd=$4 workdir=${5:-/}
  local env=${6:-'["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'} user=${7:-}
  local entrypoint=${8:-null} variants=${9:-}
  local tmp; tmp=$(mktemp -d)
  tar --numeric-owner --xattrs --sort=name -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff; diff=$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)
  local created; created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local manifests="" one_ref one_env cfg files=()
  while read -r one_ref one_env; do
    [[ -n "$one_ref" ]] || continue
    cat >"$tmp/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"$created",
 "config":{"Env":$one_env,"Entrypoint":$entrypoint,"Cmd":$cmd,"WorkingDir":"$workdir","User":"$user"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff"]},
 "history":[{"created_by":"e2e-node build-images.sh"}]}
EOF
    cfg=$(sha256sum "$tmp/config.json" | cut -d' ' -f1)
    mv "$tmp/config.json" "$tmp/$cfg.json"
    files+=("$cfg.json")
    manifests+="${manifests:+,}$(printf '{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}' "$cfg" "$one_ref")"
  done <<<"$ref $env
$variants"
  echo "[$manifests]" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out.tmp" manifest.json "${files[@]}" layer.tar
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
  log "packed $ref${variants:+ and its variants} -> $out ($(du -h "$out" | cut -f1))"
}

# The webhook image, built from the project's Dockerfile by buildah (Debian's, daemonless,
# with its own storage under OUT/buildah) with `--pull=never --network=none`: its two base
# images are local stand-ins made here, under the names the Dockerfile asks for.
#   rust:X.Y-bookworm                 debootstrap'ed bookworm minbase + gcc + this machine's
#                                     Rust toolchain (cargo, rustc, the std library), and
#                                     cargo-cyclonedx (the SBOM generator, at the Dockerfile's
#                                     CARGO_CYCLONEDX_VERSION), installed from crates.io once
#                                     into OUT/cargo-cyclonedx-VERSION
# The build runs offline and hermetic: its crates come from a cargo home of its own
# (OUT/cargo-home) that `cargo fetch --locked` fills with every package of Cargo.lock (all
# targets and platforms, as the SBOM step resolves them), mounted read-only. It never sees
# this machine's own cargo registry, so what a warm machine has downloaded for other builds
# cannot make it pass where a fresh machine would fail.
# The binary is built in the test-image profile (PROFILE build argument): the shipped
# image's release profile takes several times longer and tests nothing more.
#   gcr.io/distroless/cc-debian12:nonroot
#                                     glibc and libgcc from this machine, CA certificates, the
#                                     users root and nonroot (65532), no shell
# Rebuilt when this script, the Dockerfile, Cargo.toml, Cargo.lock or src/ change; checked
# (check_webhook_image) every time.
build_webhook_image() {
  local version rust_tag toolchain key buildah_root ref cdx_version cdx revision
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | sed -n 1p)
  ref="localhost/e2e/django-migrate-webhook:$version"
  key=$(cd "$ROOT" && { cat "$HERE/build-images.sh" Dockerfile .dockerignore Cargo.toml Cargo.lock
    find src -type f -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1)
  if [[ -f "$OUT/webhook.tar" && "$(cat "$OUT/webhook.key" 2>/dev/null)" == "$key" ]]; then
    log "webhook.tar is up to date"
    check_webhook_image "$OUT/webhook.tar"
    return
  fi
  command -v buildah >/dev/null || die "buildah missing (apt-get install buildah)"
  rust_tag=$(sed -n 's/^FROM rust:\([^ ]*\) .*/\1/p' "$ROOT/Dockerfile")
  toolchain=$(rustc --print sysroot)
  [[ "$(rustc --version)" == "rustc ${rust_tag%%-*}"* ]] ||
    die "the Dockerfile builds with rust:$rust_tag but this machine has $(rustc --version): install that toolchain (rustup toolchain install ${rust_tag%%-*})"
  cdx_version=$(sed -n 's/^ARG CARGO_CYCLONEDX_VERSION=\([^ ]*\)$/\1/p' "$ROOT/Dockerfile")
  [[ -n "$cdx_version" ]] || die "no ARG CARGO_CYCLONEDX_VERSION= in the Dockerfile"
  cdx="$OUT/cargo-cyclonedx-$cdx_version/bin/cargo-cyclonedx"
  if [[ ! -x "$cdx" ]]; then
    local t; t=$(date +%s)
    log "cargo install cargo-cyclonedx@$cdx_version into $OUT/cargo-cyclonedx-$cdx_version (a few minutes)"
    # Unoptimised: it reads one `cargo metadata` per build, and compiles in half the time.
    cargo install --quiet --locked --debug --root "$OUT/cargo-cyclonedx-$cdx_version" "cargo-cyclonedx@$cdx_version"
    log "cargo install cargo-cyclonedx took $(( $(date +%s) - t ))s"
  fi

  # Every crate of Cargo.lock, into the build's own cargo home (with this machine's cargo
  # configuration, for a mirror).
  local cargo_home="$OUT/cargo-home" t
  mkdir -p "$cargo_home"
  for f in config.toml config; do
    if [[ -f "${CARGO_HOME:-$HOME/.cargo}/$f" ]]; then cp "${CARGO_HOME:-$HOME/.cargo}/$f" "$cargo_home/$f"; fi
  done
  t=$(date +%s)
  CARGO_HOME="$cargo_home" cargo fetch --locked --quiet --manifest-path "$ROOT/Cargo.toml" ||
    die "cargo fetch --locked failed: the image build needs every crate of Cargo.lock"
  log "cargo fetch into $cargo_home took $(( $(date +%s) - t ))s"

  local rust_root="$OUT/rootfs-rust"
  if [[ ! -x "$rust_root/usr/bin/gcc" ]]; then
    local uri t
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    log "debootstrap bookworm minbase + gcc into $rust_root"
    rm -rf "$rust_root"
    t=$(date +%s)
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
      bookworm "$rust_root" "$uri" >"$OUT/debootstrap-rust.log" 2>&1 || { tail -20 "$OUT/debootstrap-rust.log"; exit 1; }
    log "debootstrap took $(( $(date +%s) - t ))s"
  fi
  rm -rf "$rust_root/usr/local/lib/rustlib" "$rust_root/usr/local/cargo"
  mkdir -p "$rust_root/usr/local/cargo/registry" "$rust_root/usr/local/cargo/bin" "$rust_root/usr/local/lib"
  install -m 0755 "$toolchain/bin/cargo" "$toolchain/bin/rustc" "$rust_root/usr/local/bin/"
  install -m 0755 "$cdx" "$rust_root/usr/local/cargo/bin/"
  cp -a "$toolchain"/lib/*.so* "$rust_root/usr/local/lib/"
  cp -a "$toolchain/lib/rustlib" "$rust_root/usr/local/lib/"
  pack_image "$rust_root" "docker.io/library/rust:$rust_tag" "$OUT/base-rust.tar" '["bash"]' / \
    '["PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","CARGO_HOME=/usr/local/cargo","CARGO_NET_OFFLINE=true"]'

  local r; r=$(mktemp -d)
  mkdir -p "$r"/{etc/ssl/certs,tmp,lib64,lib/x86_64-linux-gnu,home/nonroot}
  chmod 1777 "$r/tmp"
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$r/lib/x86_64-linux-gnu/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
  cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
  chown 65532:65532 "$r/home/nonroot"
  pack_image "$r" gcr.io/distroless/cc-debian12:nonroot "$OUT/base-distroless.tar" 'null' /home/nonroot \
    '["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]' 65532:65532
  rm -rf "$r"

  # Guards: no registry is asked for anything (--pull=never, a proxy where nothing
  # listens), and the build steps run without a network.
  buildah_root="$OUT/buildah"
  local b=(env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=
    buildah --root "$buildah_root/storage" --runroot "$buildah_root/run" --storage-driver overlay)
  "${b[@]}" pull --quiet "docker-archive:$OUT/base-rust.tar" >/dev/null
  "${b[@]}" pull --quiet "docker-archive:$OUT/base-distroless.tar" >/dev/null
  # The labels' revision: the commit, marked -dirty when the tree has changes (VERSION is
  # left to the Dockerfile's default, which the check compares with Cargo.toml).
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null) || revision=unknown
  if [[ $revision != unknown ]] && ! git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null; then
    revision+=-dirty
  fi
  t=$(date +%s)
  log "buildah bud $ROOT/Dockerfile (the test-image build runs inside; a few minutes)"
  "${b[@]}" bud --pull=never --network=none --layers=false \
    --volume "$cargo_home/registry:/usr/local/cargo/registry:ro" \
    --build-arg "REVISION=$revision" --build-arg PROFILE=test-image \
    -f "$ROOT/Dockerfile" -t "$ref" "$ROOT" >"$OUT/buildah-bud.log" 2>&1 ||
    { tail -30 "$OUT/buildah-bud.log"; die "buildah bud failed: $OUT/buildah-bud.log"; }
  log "buildah bud took $(( $(date +%s) - t ))s"
  rm -f "$OUT/webhook.tar"
  "${b[@]}" push --quiet "$ref" "docker-archive:$OUT/webhook.tar:$ref" >/dev/null
  # Keep the base images, drop the rest (the build stage's container and layers).
  "${b[@]}" rmi "$ref" >/dev/null 2>&1 || true
  "${b[@]}" rmi --prune >/dev/null 2>&1 || true
  check_webhook_image "$OUT/webhook.tar" "$revision"
  echo "$key" >"$OUT/webhook.key"
  log "built $ref from the Dockerfile -> $OUT/webhook.tar ($(du -h "$OUT/webhook.tar" | cut -f1))"
}

# check_webhook_image TAR [REVISION]: the labels, the binary and the SBOM of the webhook
# image (check_webhook_image.py, with the CycloneDX schemas of cyclonedx-python-lib from a
# venv of its own under OUT, created on first use); fails the script otherwise.
check_webhook_image() {
  local venv="$OUT/sbom-check-venv" lib="cyclonedx-python-lib[json-validation]==11.12.*"
  if [[ "$(cat "$venv/stamp" 2>/dev/null)" != "$lib" ]]; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || {
      apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
    }
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$lib"
    echo "$lib" >"$venv/stamp"
  fi
  "$venv/bin/python" "$HERE/check_webhook_image.py" "$1" --root "$ROOT" ${2:+--revision "$2"} ||
    die "the webhook image $1 failed its checks (labels, SBOM): see above (delete it to rebuild)"
}

for img in $IMAGES; do
  case $img in
  pause)
    key=$(sha256sum "$HERE/images/pause.c" | cut -d' ' -f1)
    [[ -f "$OUT/pause.tar" && "$(cat "$OUT/pause.key" 2>/dev/null)" == "$key" ]] && { log "pause.tar is up to date"; continue; }
    r=$(mktemp -d)
    gcc -Os -static -s -o "$r/pause" "$HERE/images/pause.c"
    pack_image "$r" localhost/e2e/pause:3.2 "$OUT/pause.tar" '["/pause"]'
    echo "$key" >"$OUT/pause.key"
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
    build_webhook_image;;
  django)
    ROOTFS="$OUT/rootfs-django-trixie"
    if [[ ! -x "$ROOTFS/usr/bin/python3" ]]; then
      uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
      command -v debootstrap >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null
      log "debootstrap trixie minbase + python3 into $ROOTFS"
      rm -rf "$ROOTFS"
      t=$(date +%s)
      debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
        trixie "$ROOTFS" "$uri" >"$OUT/debootstrap.log" 2>&1 || { tail -20 "$OUT/debootstrap.log"; exit 1; }
      log "debootstrap took $(( $(date +%s) - t ))s"
    fi
    wanted=$(sha256sum "$ROOT/tests/requirements-image.txt" | cut -d' ' -f1)
    if [[ "$(cat "$ROOTFS/.requirements.sha256" 2>/dev/null)" != "$wanted" ]]; then
      t=$(date +%s)
      cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
      cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
      [[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$ROOTFS/etc/pip.conf"
      cp "$ROOT/tests/requirements-image.txt" "$ROOTFS/tmp/requirements.txt"
      chroot "$ROOTFS" env HOME=/root python3 -m pip install --quiet --no-cache-dir --break-system-packages \
        -r /tmp/requirements.txt
      rm -f "$ROOTFS/tmp/requirements.txt"
      echo "$wanted" >"$ROOTFS/.requirements.sha256"
      log "pip took $(( $(date +%s) - t ))s"
    fi
    rm -rf "$ROOTFS/app" && mkdir -p "$ROOTFS/app"
    # Without __pycache__: tests running meanwhile write (and rename) bytecode there.
    tar -C "$ROOT/tests/django" --exclude=__pycache__ -cf - . | tar -C "$ROOTFS/app" -xf -
    # Two releases of the ledger app as images of their own (for `plan --image`): the
    # release is in the image, not in the pod spec.
    base='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PYTHONUNBUFFERED=1","DJANGO_SETTINGS_MODULE=testsite.settings"'
    pack_image "$ROOTFS" localhost/e2e/django:test "$OUT/django.tar" '["python3","manage.py","runserver","--noreload","0.0.0.0:8000"]' /app \
      "[$base]" "" null "localhost/e2e/django:ledger-1 [$base,\"LEDGER_APP=1\",\"LEDGER_RELEASE=1\"]
localhost/e2e/django:ledger-2 [$base,\"LEDGER_APP=1\",\"LEDGER_RELEASE=2\"]";;
  *) echo "unknown image $img" >&2; exit 1;;
  esac
done
