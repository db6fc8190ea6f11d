#!/usr/bin/env bash
# in-rootfs.sh ROOTFS COMMAND [ARG...]: runs COMMAND inside ROOTFS (a Debian tree made by
# scripts/rootfs.sh) as if this machine ran that Debian release: chrooted, in a mount
# namespace of its own, with this machine's /proc, /dev and /tmp, the project directory
# and the cargo target directory mounted at the same paths, in the current directory.
#
# Every step execs the next, so COMMAND keeps this script's PID: signals sent to it reach
# COMMAND, and its exit code is this one's. The mounts vanish with the last process of the
# namespace; nothing is mounted on this machine. Needs root (unshare, chroot).
#
# Also usable as cargo's runner: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="scripts/in-rootfs.sh ROOTFS"
# runs a test binary (linked against this machine's older glibc) inside ROOTFS.
set -euo pipefail

root=${1:?usage: in-rootfs.sh ROOTFS COMMAND [ARG...]}
shift
[ $# -gt 0 ] || { echo "usage: in-rootfs.sh ROOTFS COMMAND [ARG...]" >&2; exit 2; }
[ -x "$root/usr/bin/env" ] || { echo "error: $root is not a root filesystem: build it with scripts/rootfs.sh" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: in-rootfs.sh needs root (unshare --mount, chroot)" >&2; exit 2; }

project=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$root" && pwd)
binds=(/proc /dev /tmp "$project")
if [ -n "${CARGO_TARGET_DIR:-}" ]; then binds+=("$CARGO_TARGET_DIR"); fi

# shellcheck disable=SC2016 # expanded by the inner shell
exec unshare --mount --propagation private -- bash -c '
    set -euo pipefail
    root=$1 cwd=$2 count=$3
    shift 3
    for dir in "${@:1:$count}"; do
        [ -d "$dir" ] || continue
        mkdir -p "$root$dir"
        mount --rbind "$dir" "$root$dir"
    done
    shift "$count"
    exec chroot "$root" /usr/bin/env -C "$cwd" "$@"
' in-rootfs "$root" "$PWD" "${#binds[@]}" "${binds[@]}" "$@"
