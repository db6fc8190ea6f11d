#!/usr/bin/env bash
# Start a real control plane on loopback: etcd + kube-apiserver (+ kube-controller-manager)
# of a current Kubernetes built by build-current.sh; no kubelet, no scheduler.
#
# Usage: start-cluster.sh [STATE_DIR]        (default /tmp/kube-e2e)
# Env:   KUBE_VERSION=1.37.2                 which build of build-current.sh to start
#        KUBE_BIN=$KUBE_CACHE/v$KUBE_VERSION/bin   kube-apiserver, kube-controller-manager, etcd, kubectl
#        ETCD_PORT ETCD_PEER_PORT APISERVER_PORT CM_PORT   default: free loopback ports
#        WITH_CONTROLLER_MANAGER=1           0 = apiserver only
#        WITH_NODE=0                         1 = also certs, kubeconfigs and apiserver flags for a
#                                            real kubelet and scheduler (start-node.sh):
#                                            Node,RBAC authorization, NodeRestriction, and the
#                                            apiserver calling webhooks at Service endpoints
#        NODE_NAME=e2e-node NODE_IP=10.244.0.1   the node of WITH_NODE=1 (the CNI bridge's address)
#        START_TIMEOUT=120                   seconds to wait for readiness
#        EXTRA_APISERVER_FLAGS / EXTRA_CM_FLAGS   word-split extra flags
#
# Writes under STATE_DIR:
#   kubeconfig          admin (client cert, group system:masters)
#   env                 shell snippet: PATH (the kubectl of the same version), KUBECONFIG,
#                       KUBE_APISERVER_URL, KUBE_CA_FILE, KUBE_ADMIN_TOKEN, KUBE_VERSION
#   pki/                CA, serving cert, client certs, service-account key pair, tokens.csv
#   logs/*.log          component logs
#   pids/*.pid          PIDs used by stop-cluster.sh
#
# Since 1.24 there is no --insecure-port on the apiserver and no --port on the
# controller-manager, and no service-account token Secrets: Pods are admitted once the
# namespace's default ServiceAccount exists. ValidatingAdmissionPolicy is on by default.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SCRIPT=start-cluster
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"
WATCHED=(etcd kube-apiserver kube-controller-manager)

STATE_DIR="${1:-/tmp/kube-e2e}"
KUBE_VERSION="${KUBE_VERSION:-1.37.2}"
KUBE_CACHE="${KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/django-migrate-webhook/kube-current}"
KUBE_BIN="${KUBE_BIN:-$KUBE_CACHE/v$KUBE_VERSION/bin}"
ETCD_BIN="${ETCD_BIN:-$KUBE_BIN/etcd}"
KUBECTL="${KUBECTL:-$KUBE_BIN/kubectl}"
ETCD_PORT="${ETCD_PORT:-$(free_port)}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-$(free_port)}"
APISERVER_PORT="${APISERVER_PORT:-$(free_port)}"
CM_PORT="${CM_PORT:-$(free_port)}"
WITH_CONTROLLER_MANAGER="${WITH_CONTROLLER_MANAGER:-1}"
WITH_NODE="${WITH_NODE:-0}"
NODE_NAME="${NODE_NAME:-e2e-node}"
NODE_IP="${NODE_IP:-10.244.0.1}"
START_TIMEOUT="${START_TIMEOUT:-120}"


[[ -x "$ETCD_BIN" ]] || die "etcd not found at $ETCD_BIN (run scripts/kube/build-current.sh $KUBE_VERSION)"
[[ -x "$KUBE_BIN/kube-apiserver" ]] || die "$KUBE_BIN/kube-apiserver not found (run scripts/kube/build-current.sh $KUBE_VERSION)"
[[ -x "$KUBECTL" ]] || die "kubectl not found at $KUBECTL (run scripts/kube/build-current.sh $KUBE_VERSION)"
command -v openssl >/dev/null || die "openssl not found"

mkdir -p "$STATE_DIR"/{pki,logs,pids,etcd}
chmod 700 "$STATE_DIR/etcd" "$STATE_DIR/pki"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
PKI="$STATE_DIR/pki"

for c in etcd kube-apiserver kube-controller-manager; do
  running "$c" && die "$c already running (pid $(cat "$STATE_DIR/pids/$c.pid")); stop it first"
done
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT"; do
  port_busy "$p" && die "port $p already in use"
done

T0=$(date +%s.%N)

# ------------------------------------------------------------------- PKI
# All certs via openssl; reused if present (so a restart keeps the same CA).
sign() { # name subj ext-lines...
  local name=$1 subj=$2; shift 2
  printf '%s\n' "$@" >"$PKI/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" \
    -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}
if [[ ! -f "$PKI/ca.crt" ]]; then
  log "generating PKI in $PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -days 3650 -sha256 -subj "/CN=kube-e2e-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:::1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=kube-admin" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  sign controller-manager "/O=system:masters/CN=system:kube-controller-manager" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  echo "$(openssl rand -hex 24),kube-admin-token,uid-admin-token,system:masters" >"$PKI/tokens.csv"
  chmod 600 "$PKI"/*.key "$PKI/tokens.csv"
fi
if [[ "$WITH_NODE" == 1 && ! -f "$PKI/kubelet-client.crt" ]]; then
  log "generating node certs (node $NODE_NAME at $NODE_IP)"
  # kubelet -> apiserver: the Node authorizer's identity
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  # the kubelet's serving certificate (apiserver -> kubelet for logs and exec)
  sign kubelet-serving "/CN=$NODE_NAME" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,DNS:$NODE_NAME,DNS:localhost"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  sign scheduler "/CN=system:kube-scheduler" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  chmod 600 "$PKI"/*.key
fi
ADMIN_TOKEN=$(cut -d, -f1 "$PKI/tokens.csv")
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"

write_kubeconfig() { # file user cert
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kube-e2e
  cluster:
    server: $APISERVER_URL
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$3.crt
    client-key: $PKI/$3.key
- name: token-admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: kube-e2e
  context: {cluster: kube-e2e, user: $2}
- name: kube-e2e-token
  context: {cluster: kube-e2e, user: token-admin}
current-context: kube-e2e
KC
  chmod 600 "$1"
}
write_kubeconfig "$STATE_DIR/kubeconfig" kube-admin admin
write_kubeconfig "$STATE_DIR/controller-manager.kubeconfig" kube-controller-manager controller-manager
node_args=()
authorization=RBAC
admission=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota
if [[ "$WITH_NODE" == 1 ]]; then
  write_kubeconfig "$STATE_DIR/kubelet.kubeconfig" kubelet kubelet-client
  write_kubeconfig "$STATE_DIR/scheduler.kubeconfig" kube-scheduler scheduler
  authorization=Node,RBAC
  admission+=,NodeRestriction
  # Webhooks behind a Service are called at its endpoints' pod IPs, which the host reaches
  # on the CNI bridge: no kube-proxy is needed.
  node_args=(--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt"
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key"
    --kubelet-certificate-authority "$PKI/ca.crt"
    --kubelet-preferred-address-types "InternalIP,Hostname"
    --enable-aggregator-routing=true)
fi
cat >"$STATE_DIR/env" <<ENV
export PATH=$KUBE_BIN:\$PATH
export KUBE_VERSION=$KUBE_VERSION
export KUBECONFIG=$STATE_DIR/kubeconfig
export KUBE_APISERVER_URL=$APISERVER_URL
export KUBE_CA_FILE=$PKI/ca.crt
export KUBE_ADMIN_TOKEN=$ADMIN_TOKEN
ENV


# Extra flags, split on whitespace on purpose.
read -r -a extra_apiserver <<<"${EXTRA_APISERVER_FLAGS:-}"
read -r -a extra_cm <<<"${EXTRA_CM_FLAGS:-}"

# ------------------------------------------------------------------- etcd
rm -f "$STATE_DIR"/pids/*.pid
start_bg etcd "$ETCD_BIN" \
  --name kube-e2e \
  --data-dir "$STATE_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "kube-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "" \
  --log-level warn --logger zap
wait_for "etcd" curl -sf "http://127.0.0.1:$ETCD_PORT/health"

# ------------------------------------------------------------------- apiserver (>= 1.24 flags)
start_bg kube-apiserver "$KUBE_BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --token-auth-file "$PKI/tokens.csv" \
  --authorization-mode "$authorization" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --enable-admission-plugins "$admission" \
  --allow-privileged=true \
  --profiling=false \
  --cert-dir "$STATE_DIR/apiserver-certs" \
  --v 1 "${node_args[@]}" "${extra_apiserver[@]}"
export KUBECONFIG="$STATE_DIR/kubeconfig"
wait_for "kube-apiserver /readyz" "$KUBECTL" get --raw /readyz
API_READY=$(elapsed)

# ------------------------------------------------------------------- controller-manager (>= 1.24 flags)
if [[ "$WITH_CONTROLLER_MANAGER" == 1 ]]; then
  [[ -x "$KUBE_BIN/kube-controller-manager" ]] || die "$KUBE_BIN/kube-controller-manager not found"
  port_busy "$CM_PORT" && die "port $CM_PORT already in use"
  start_bg kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$CM_PORT" \
    --cert-dir "$STATE_DIR/controller-manager-certs" \
    --leader-elect=false \
    --use-service-account-credentials=false \
    --service-account-private-key-file "$PKI/sa.key" \
    --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --controllers '*' \
    --v 1 "${extra_cm[@]}"
  wait_for "kube-controller-manager /healthz" curl -skf "https://127.0.0.1:$CM_PORT/healthz"
  # >= 1.24: Pods are admitted once the namespace's default SA exists (no token secret any more).
  wait_for "default service account" "$KUBECTL" -n default get sa default
fi

rss() { local f="$STATE_DIR/pids/$1.pid"; [[ -f "$f" ]] && awk '/VmRSS/{printf "%s=%d MB ", n, $2/1024}' n="$1" "/proc/$(cat "$f")/status"; }
log "v$KUBE_VERSION cluster up in $(elapsed)s (apiserver ready at ${API_READY}s); RSS: $(rss etcd)$(rss kube-apiserver)$(rss kube-controller-manager)"
echo "source $STATE_DIR/env"
