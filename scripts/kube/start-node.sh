#!/usr/bin/env bash
# Turn the control plane from `WITH_NODE=1 start-cluster.sh STATE_DIR` into a
# real single-node cluster: containerd and runc (Debian's 1.6, or the 2.x of
# build-containerd.sh), a CNI bridge, kube-scheduler and a kubelet of the control plane's
# version, with locally built images imported.
#
# Usage: start-node.sh [STATE_DIR]            (default /tmp/kube-e2e)
# Env:   KUBE_BIN (from STATE_DIR/env)        the kubelet and scheduler of the control plane
#        IMAGES_DIR=~/.cache/django-migrate-webhook/images   docker-archive tarballs (build-images.sh)
#        NODE_NAME=e2e-node NODE_IP=10.244.0.1  the node's address is the bridge's own: a
#                                             kubelet refuses a loopback node IP
#        POD_SUBNET=10.244.0.0/24 BRIDGE=kubebr0 BRIDGE_IP=10.244.0.1 BRIDGE_MAC=02:00:0a:f4:00:01
#        SERVICE_CIDR=10.0.0.0/24 KUBERNETES_SERVICE_IP=10.0.0.1 (start-cluster.sh's)
#        SNAPSHOTTER=overlayfs|native         RUNTIME=runc|crun (crun: Debian's containerd only)
#        CONTAINERD_BIN=<dir>                 containerd 2.x, its shim, ctr and runc from this
#                                             directory (build-containerd.sh's bin), with its
#                                             own root; default: Debian's containerd 1.6
#        KUBELET_FEATURE_GATES=Name=true,...  e.g. EventedPLEG=true
#        CGROUPS_PER_QOS=true|false
#        KUBELET_PORT=30250 KUBELET_HEALTHZ_PORT=30248 SCHEDULER_PORT=30259
#        KUBELET_ROOT=/var/lib/e2e-kubelet  CTR_ROOT=/var/lib/e2e-containerd[2]  CTR_STATE=/run/e2e-containerd
#        START_TIMEOUT=120
# Writes: STATE_DIR/{containerd.toml,kubelet-config.yaml,cni/net.d/,logs/,pids/,node-env}
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SCRIPT=start-node
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
WATCHED=(containerd kube-scheduler kubelet)
STATE_DIR="${1:-/tmp/kube-e2e}"
# shellcheck disable=SC1091
[[ -f "$STATE_DIR/env" ]] && source "$STATE_DIR/env"
KUBE_CACHE="${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/kube-current}"
KUBE_BIN="${KUBE_BIN:-$KUBE_CACHE/v${KUBE_VERSION:-1.37.2}/bin}"
IMAGES_DIR="${IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/images}"
NODE_NAME="${NODE_NAME:-e2e-node}"
NODE_IP="${NODE_IP:-10.244.0.1}"
BRIDGE_IP="${BRIDGE_IP:-10.244.0.1}"
POD_SUBNET="${POD_SUBNET:-10.244.0.0/24}"
BRIDGE="${BRIDGE:-kubebr0}"
BRIDGE_MAC="${BRIDGE_MAC:-02:00:0a:f4:00:01}"
SERVICE_CIDR="${SERVICE_CIDR:-10.0.0.0/24}"
KUBERNETES_SERVICE_IP="${KUBERNETES_SERVICE_IP:-10.0.0.1}"
SNAPSHOTTER="${SNAPSHOTTER:-overlayfs}"
RUNTIME="${RUNTIME:-runc}"
CGROUPS_PER_QOS="${CGROUPS_PER_QOS:-true}"
KUBELET_PORT="${KUBELET_PORT:-30250}"
KUBELET_HEALTHZ_PORT="${KUBELET_HEALTHZ_PORT:-30248}"
SCHEDULER_PORT="${SCHEDULER_PORT:-30259}"
KUBELET_ROOT="${KUBELET_ROOT:-/var/lib/e2e-kubelet}"
CONTAINERD_BIN="${CONTAINERD_BIN:-}"
KUBELET_FEATURE_GATES="${KUBELET_FEATURE_GATES:-}"
# containerd 2.x keeps its own content and metadata: the two never share a root.
CTR_ROOT="${CTR_ROOT:-/var/lib/e2e-containerd${CONTAINERD_BIN:+2}}"
CTR_STATE="${CTR_STATE:-/run/e2e-containerd}"
CTR_SOCK="$CTR_STATE/containerd.sock"
START_TIMEOUT="${START_TIMEOUT:-120}"

[[ -f "$STATE_DIR/kubelet.kubeconfig" ]] || die "no $STATE_DIR/kubelet.kubeconfig: run WITH_NODE=1 start-cluster.sh $STATE_DIR first"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
PKI="$STATE_DIR/pki"
for b in kubelet kube-scheduler; do [[ -x "$KUBE_BIN/$b" ]] || die "$KUBE_BIN/$b missing (KUBE_WHAT=... build.sh)"; done
if [[ -n "$CONTAINERD_BIN" ]]; then
  for b in containerd containerd-shim-runc-v2 ctr runc; do
    [[ -x "$CONTAINERD_BIN/$b" ]] || die "$CONTAINERD_BIN/$b missing (bash scripts/kube/build-containerd.sh builds it)"
  done
  [[ "$RUNTIME" == runc ]] || die "RUNTIME=$RUNTIME: with CONTAINERD_BIN the runtime is its runc"
  # containerd finds its shim on PATH; ctr is the one of the same release.
  export PATH="$CONTAINERD_BIN:$PATH"
  CTR_CONF="$HERE/conf/containerd2.toml.in"
  RUNC="$CONTAINERD_BIN/runc"
else
  command -v containerd >/dev/null || die "containerd missing (apt-get install containerd runc containernetworking-plugins)"
  CTR_CONF="$HERE/conf/containerd.toml.in"
  RUNC=/usr/sbin/runc
fi
command -v iptables >/dev/null || die "iptables missing (apt-get install iptables)"
export KUBECONFIG="$STATE_DIR/kubeconfig"
mkdir -p "$STATE_DIR"/{logs,pids,cni/net.d}

T0=$(date +%s.%N)
for c in containerd kube-scheduler kubelet; do
  running "$c" && die "$c already running (pid $(cat "$STATE_DIR/pids/$c.pid"))"
done
for p in "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$SCHEDULER_PORT"; do port_busy "$p" && die "port $p already in use"; done

# ---------------------------------------------------------------- kernel settings
# The kubelet sets these sysctls (unless protectKernelDefaults): remember the originals
# so stop-node.sh can put them back.
if [[ ! -f "$STATE_DIR/sysctl.orig" ]]; then
  sysctl -e vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes >"$STATE_DIR/sysctl.orig"
fi

# ---------------------------------------------------------------- network
# One bridge (address BRIDGE_IP, so the host can reach pod IPs for probes);
# pods get 10.244.0.x on it. No default route in pods, no masquerading,
# ip_forward untouched: pods reach each other and the host's bridge address (where the
# test databases also listen). Pods route only the Service range to the host, where one
# DNAT rule stands in for kube-proxy for the one Service pods use, `kubernetes`
# (KUBERNETES_SERVICE_IP:443 -> the API server on 127.0.0.1, hence route_localnet on the
# bridge alone). The API server itself reaches webhook Services at their endpoints
# (start-cluster.sh's --enable-aggregator-routing).
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  # A fixed (locally administered) address: a bridge without one takes the lowest address
  # of its ports and changes it when that pod goes away, and the other pods' ARP entries
  # for the node (the databases, the API server) then point nowhere for up to a minute.
  ip link add "$BRIDGE" address "$BRIDGE_MAC" type bridge
fi
ip addr show dev "$BRIDGE" | grep -q "inet $BRIDGE_IP/" || ip addr add "$BRIDGE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
api_port=${KUBE_APISERVER_URL##*:}
[[ "$api_port" =~ ^[0-9]+$ ]] || die "no API server port in KUBE_APISERVER_URL ($STATE_DIR/env)"
sysctl -q -w "net.ipv4.conf.$BRIDGE.route_localnet=1"
iptables -t nat -N DJANGO-MIGRATE-E2E 2>/dev/null || iptables -t nat -F DJANGO-MIGRATE-E2E
iptables -t nat -C PREROUTING -i "$BRIDGE" -j DJANGO-MIGRATE-E2E 2>/dev/null ||
  iptables -t nat -A PREROUTING -i "$BRIDGE" -j DJANGO-MIGRATE-E2E
iptables -t nat -A DJANGO-MIGRATE-E2E -d "$KUBERNETES_SERVICE_IP" -p tcp --dport 443 \
  -j DNAT --to-destination "127.0.0.1:$api_port"
cat >"$STATE_DIR/cni/net.d/10-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "e2e-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$BRIDGE_IP"}],
        "dataDir": "$CTR_STATE/cni-ipam"
      }
    }
  ]
}
EOF

# ---------------------------------------------------------------- containerd
mkdir -p "$CTR_ROOT" "$CTR_STATE"
sed -e "s#@CTR_ROOT@#$CTR_ROOT#g; s#@CTR_STATE@#$CTR_STATE#g; s#@CTR_SOCK@#$CTR_SOCK#g" \
    -e "s#@SNAPSHOTTER@#$SNAPSHOTTER#g; s#@RUNTIME@#$RUNTIME#g; s#@CNI_CONF_DIR@#$STATE_DIR/cni/net.d#g" \
    -e "s#@RUNC@#$RUNC#g" "$CTR_CONF" >"$STATE_DIR/containerd.toml"
printf 'export CTR_ROOT=%s\nexport CONTAINERD_BIN=%s\n' "$CTR_ROOT" "$CONTAINERD_BIN" >"$STATE_DIR/node-env.partial"
# Guard against image pulls leaving the machine: every registry request from
# containerd goes through a proxy address where nothing listens (loopback port 9),
# so a missing image fails fast ("proxyconnect tcp: ... connection refused")
# instead of reaching out. Test manifests should use imagePullPolicy: Never.
start_bg containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 \
  http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy= \
  containerd --config "$STATE_DIR/containerd.toml"
CTR=(ctr -a "$CTR_SOCK" -n k8s.io)
wait_for "containerd" "${CTR[@]}" version
for t in "$IMAGES_DIR"/*.tar; do
  [[ -f "$t" ]] || continue
  read -r ref config < <(tar -xOf "$t" manifest.json |
    python3 -c 'import json,sys; m=json.load(sys.stdin)[0]; print(m["RepoTags"][0], m["Config"])')
  # The image's config digest names its content: a rebuilt tarball is imported again.
  stamp="$CTR_ROOT/imported/${ref//[\/:]/_}"
  if [[ "$(cat "$stamp" 2>/dev/null)" == "$config" ]] && "${CTR[@]}" images check "name==$ref" 2>/dev/null | grep -q 'complete'; then
    # already there; make sure it is unpacked for this snapshotter
    "${CTR[@]}" images unpack --snapshotter "$SNAPSHOTTER" "$ref" >/dev/null 2>&1 || true
    continue
  fi
  "${CTR[@]}" images import --snapshotter "$SNAPSHOTTER" "$t" >/dev/null
  mkdir -p "$CTR_ROOT/imported" && echo "$config" >"$stamp"
  log "imported $ref"
done
log "images ready after $(elapsed)s"

# ---------------------------------------------------------------- scheduler
start_bg kube-scheduler "$KUBE_BIN/kube-scheduler" \
  --kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
  --cert-dir "$STATE_DIR/scheduler-certs" \
  --leader-elect=false --v 1
wait_for "kube-scheduler /healthz" curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"

# ---------------------------------------------------------------- kubelet
if [[ "$CGROUPS_PER_QOS" == true ]]; then ENFORCE='["pods"]'; else ENFORCE='[]'; fi
# Pods get this resolv.conf (no cluster DNS here): lookups go to loopback and fail
# fast instead of reaching the machine's real resolver.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$STATE_DIR/pod-resolv.conf"
cat >"$STATE_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 10s}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupsPerQOS: $CGROUPS_PER_QOS
enforceNodeAllocatable: $ENFORCE
failSwapOn: false
makeIPTablesUtilChains: false
clusterDomain: cluster.local
resolvConf: $STATE_DIR/pod-resolv.conf
serializeImagePulls: false
maxPods: 60
rotateCertificates: false
serverTLSBootstrap: false
# computed every 2s, PATCHed only on change (node leases carry the heartbeat):
# the node turns Ready ~2s after registration instead of ~10s
nodeStatusUpdateFrequency: 2s
syncFrequency: 20s
fileCheckFrequency: 20s
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
# These VMs run cgroup v1 (hybrid); kubelets from 1.35 refuse it unless told otherwise.
failCgroupV1: false
$(gates=${KUBELET_FEATURE_GATES//,/ }; [[ -z "$gates" ]] || { echo "featureGates:"; for g in $gates; do echo "  ${g%%=*}: ${g#*=}"; done; })
containerRuntimeEndpoint: unix://$CTR_SOCK
imageServiceEndpoint: unix://$CTR_SOCK
EOF
mkdir -p "$KUBELET_ROOT"
# Current kubelets carry no cloud credential provider; AWS_EC2_METADATA_DISABLED stays
# as a second guard against anything probing the instance metadata address.
start_bg kubelet env AWS_EC2_METADATA_DISABLED=true "$KUBE_BIN/kubelet" \
  --config "$STATE_DIR/kubelet-config.yaml" \
  --kubeconfig "$STATE_DIR/kubelet.kubeconfig" \
  --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
  --root-dir "$KUBELET_ROOT" \
  --cert-dir "$STATE_DIR/kubelet-certs" \
  --v 2
wait_for "kubelet /healthz" curl -sf "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
wait_for "node $NODE_NAME Ready" bash -c \
  "kubectl get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"

cat >"$STATE_DIR/node-env" <<EOF
export E2E_CTR_SOCK=$CTR_SOCK
export E2E_NODE_NAME=$NODE_NAME
export E2E_NODE_IP=$NODE_IP
export E2E_KUBELET_ROOT=$KUBELET_ROOT
export CTR_ROOT=$CTR_ROOT
export CONTAINERD_BIN=$CONTAINERD_BIN
export CONTAINER_RUNTIME_ENDPOINT=unix://$CTR_SOCK
export E2E_CONTAINERD_VERSION=$("${CTR[@]}" version 2>/dev/null | awk '/^Server:/{s=1} s && /Version:/{print $2; exit}')
export E2E_KUBELET_FEATURE_GATES=$KUBELET_FEATURE_GATES
EOF
log "node $NODE_NAME Ready after $(elapsed)s ($(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'), snapshotter=$SNAPSHOTTER runtime=$RUNTIME cgroupsPerQOS=$CGROUPS_PER_QOS${KUBELET_FEATURE_GATES:+ featureGates=$KUBELET_FEATURE_GATES})"
