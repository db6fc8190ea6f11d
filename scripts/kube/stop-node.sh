#!/usr/bin/env bash
# Stop what start-node.sh started (by recorded PID only) and clean up pods,
# mounts, network namespaces, the bridge and kernel settings.
# Run it BEFORE stop-cluster.sh (it uses the apiserver to drain the node).
#
# Usage: stop-node.sh [STATE_DIR] [--purge-containerd]   (default /tmp/kube-e2e)
#   --purge-containerd  also delete containerd's root (imported images)
set -uo pipefail
SCRIPT=stop-node
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")" && pwd)/../lib.sh"
STATE_DIR="${1:-/tmp/kube-e2e}"
PURGE_CTR=0; [[ "${2:-}" == "--purge-containerd" ]] && PURGE_CTR=1
BRIDGE="${BRIDGE:-kubebr0}"
# shellcheck disable=SC1091
[[ -f "$STATE_DIR/node-env" ]] && source "$STATE_DIR/node-env"
# shellcheck disable=SC1091
[[ -f "$STATE_DIR/node-env.partial" ]] && source "$STATE_DIR/node-env.partial"
# shellcheck disable=SC1091
[[ -f "$STATE_DIR/env" ]] && source "$STATE_DIR/env"
CTR_SOCK="${E2E_CTR_SOCK:-/run/e2e-containerd/containerd.sock}"
CTR_STATE=$(dirname "$CTR_SOCK")
CTR_ROOT="${CTR_ROOT:-/var/lib/e2e-containerd}"
KUBELET_ROOT="${E2E_KUBELET_ROOT:-/var/lib/e2e-kubelet}"
# containerd 2.x (start-node.sh's CONTAINERD_BIN) is stopped with its own ctr.
[[ -n "${CONTAINERD_BIN:-}" ]] && export PATH="$CONTAINERD_BIN:$PATH"
CTR=(ctr -a "$CTR_SOCK" -n k8s.io)

stop_pid() { # name pattern
  local name=$1 pat=$2 f="$STATE_DIR/pids/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    local exe; exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    if [[ "$exe" == *"$pat"* ]]; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      log "stopped $name (pid $pid)"
    else
      log "pid $pid no longer belongs to $name; not touching it"
    fi
  fi
  rm -f "$f"
}

# 1. Drain: stop the controller-manager (no more replacement pods), force-delete
#    every pod so the kubelet tears sandboxes down through CRI (CNI DEL, unmounts).
if [[ -f "$STATE_DIR/kubeconfig" ]] && [[ -f "$STATE_DIR/pids/kubelet.pid" ]] \
   && KUBECONFIG="$STATE_DIR/kubeconfig" kubectl get --raw /readyz >/dev/null 2>&1; then
  stop_pid kube-controller-manager kube-controller-manager
  export KUBECONFIG="$STATE_DIR/kubeconfig"
  kubectl delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    n=$("${CTR[@]}" tasks ls -q 2>/dev/null | grep -c . || true)
    [[ "$n" == 0 ]] && break
    sleep 0.5
  done
  log "drained (running tasks left: ${n:-?})"
fi

# 2. kubelet, scheduler (and demo-node.sh's webhook, if left behind)
stop_pid kubelet /kubelet
stop_pid kube-scheduler kube-scheduler

# 3. whatever is left in containerd's k8s.io namespace
if "${CTR[@]}" version >/dev/null 2>&1; then
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1; done
  sleep 0.5
  for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks rm -f "$t" >/dev/null 2>&1; done
  for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers rm "$c" >/dev/null 2>&1; done
fi
stop_pid containerd "containerd --config"

# 4. mounts (kubelet volumes, sandbox shm, netns), network namespaces, bridge
awk '{print $5}' /proc/self/mountinfo | sort -r | while IFS= read -r m; do
  # (image volumes of containerd 2.x are mounted under its root)
  case "$m" in "$KUBELET_ROOT"/*|"$CTR_STATE"/*|"$CTR_ROOT"/*) umount -l "$m" 2>/dev/null;; esac
done
mountpoint -q "$KUBELET_ROOT" && umount -l "$KUBELET_ROOT"
for ns in /run/netns/cni-*; do
  [[ -e "$ns" ]] || continue
  # only namespaces whose veth peer sits on our bridge were made by us; CRI names them cni-<uuid>
  umount "$ns" 2>/dev/null; rm -f "$ns"
done
for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$v" 2>/dev/null; done
ip link del "$BRIDGE" 2>/dev/null && log "removed bridge $BRIDGE"  # and its route_localnet
if iptables -t nat -L DJANGO-MIGRATE-E2E >/dev/null 2>&1; then
  while iptables -t nat -D PREROUTING -i "$BRIDGE" -j DJANGO-MIGRATE-E2E 2>/dev/null; do :; done
  iptables -t nat -F DJANGO-MIGRATE-E2E && iptables -t nat -X DJANGO-MIGRATE-E2E && log "removed the Service DNAT"
fi
rm -rf "$CTR_STATE"
# containerd 1.6 keeps shim sockets under /run/containerd/s whatever its state dir;
# remove the (empty) directories it created there
rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd 2>/dev/null
# the kubelet writes container logs to the fixed /var/log/pods (+ /var/log/containers links)
rm -rf /var/log/pods/* 2>/dev/null; find /var/log/containers -maxdepth 1 -type l -delete 2>/dev/null
# kubelet/containerd cgroups (cgroupfs driver): remove empty kubepods (QoS) and k8s.io (cgroupsPerQOS=false, ctr) hierarchies
for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
  [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 5. kernel settings the kubelet changed
if [[ -f "$STATE_DIR/sysctl.orig" ]]; then
  sed 's/ //g' "$STATE_DIR/sysctl.orig" | while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1; done
  rm -f "$STATE_DIR/sysctl.orig"
  log "restored sysctls"
fi
if ((PURGE_CTR)); then
  umount -R "$KUBELET_ROOT" 2>/dev/null; rm -rf "$KUBELET_ROOT" "$CTR_ROOT"
  log "purged $CTR_ROOT and $KUBELET_ROOT"
fi
exit 0
