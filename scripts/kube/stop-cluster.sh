#!/usr/bin/env bash
# Stop what start-cluster.sh started, by recorded PID only.
# Usage: stop-cluster.sh [STATE_DIR] [--purge]     (default /tmp/kube-e2e)
#   --purge  also delete STATE_DIR (etcd data, PKI, logs)
set -uo pipefail

STATE_DIR="${1:-/tmp/kube-e2e}"
PURGE=0; [[ "${2:-}" == "--purge" ]] && PURGE=1

# reverse start order
for name in kube-controller-manager kube-apiserver etcd; do
  f="$STATE_DIR/pids/$name.pid"
  [[ -f "$f" ]] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # guard against PID reuse: only signal if the command line still matches
    exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    case "$name:$exe" in
      kube-controller-manager:*kube-controller-manager*|kube-apiserver:*kube-apiserver*|etcd:*etcd*)
        kill -TERM "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped $name (pid $pid)";;
      *) echo "pid $pid no longer belongs to $name; not touching it";;
    esac
  fi
  rm -f "$f"
done
if ((PURGE)); then rm -rf "$STATE_DIR"; echo "removed $STATE_DIR"; fi
