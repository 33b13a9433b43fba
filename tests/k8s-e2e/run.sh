#!/usr/bin/env bash
# A one-node Kubernetes assembled from upstream parts, its control plane storing its data in a
# netsy node (issue #16). See README.md beside this file.
#
#   NETSY_BIN=target/release/netsy tests/k8s-e2e/run.sh
#
# Environment:
#   NETSY_BIN     netsy binary (default: ${CARGO_TARGET_DIR:-<repo>/target}/release/netsy)
#   K8S_BIN_DIR   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#                 already built (default: build them into .work/bin from ../kube-apiserver's
#                 pinned module graph; ~4 min each on an empty build cache)
#   K8S_KEEP=1    leave everything running at the end (prints how to reach it)
# Prints "ok - …" / "FAIL - …" per assertion and ends with `N passed, M failed`.
# Needs root (containerd, runc, network namespaces), apt's containerd and runc, Debian's
# containernetworking-plugins (/usr/lib/cni), go >= 1.26, openssl, curl, python3.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # ok/ko, free_ports, wait_http, stop_pids

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$here/.work"          # git-ignored: binaries and the last run's files and logs
run="$work/run"
NETSY_BIN="$(realpath "${NETSY_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/netsy}")"
node=netsy-e2e
pod_cidr=10.244.0.0/24
bridge_ip=10.244.0.1
svc_cidr=10.96.0.0/16
pids=()

step() { echo "== k8s-e2e: $*"; }
die() { echo "k8s-e2e: $*" >&2; exit 2; }
finish() { summary; }

# Lazily unmounts whatever the kubelet and containerd left mounted under the run directory.
unmount_run() {
  local m
  { grep -o " $run/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  if [ "${K8S_KEEP:-}" = 1 ]; then
    echo "K8S_KEEP=1: left running; KUBECONFIG=$run/admin.kubeconfig"
    return
  fi
  # Pods first (the kubelet is still up to stop them cleanly), then everything this started.
  if [ -n "${kubectl:-}" ] && [ -f "$run/admin.kubeconfig" ]; then
    timeout 30 "$kubectl" --kubeconfig "$run/admin.kubeconfig" delete pods --all -A \
      --wait=false >/dev/null 2>&1 || true
  fi
  # Every container's processes (they and their shims outlive containerd by design), then
  # the shims, then everything this script started.
  if [ -S "$run/containerd/containerd.sock" ]; then
    local t
    for t in $(timeout 20 ctr --address "$run/containerd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      timeout 10 ctr --address "$run/containerd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pids -t 20 "${pids[@]}"
  pkill -f "containerd-shim-runc-v2 .*-address $run/containerd/containerd.sock" 2>/dev/null || true
  ip link del "$cni_bridge" 2>/dev/null || true
  # Mounts the kubelet and containerd left under the run directory.
  unmount_run
}
cni_bridge=netsye2e0
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || die "needs root (containerd, runc, network namespaces)"
mkdir -p "$work"
# The node's runtime, from Debian (installed here when missing: this suite is not in CI).
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || [ ! -x /usr/lib/cni/bridge ]; then
  step "installing containerd, runc and containernetworking-plugins (apt)"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y --no-install-recommends \
    containerd runc containernetworking-plugins > "$work/apt.log" 2>&1 || die "apt-get failed: $work/apt.log"
fi
for t in containerd containerd-shim-runc-v2 runc ctr go openssl curl python3 ip iptables; do
  command -v "$t" >/dev/null || die "$t is not installed (apt-get install containerd runc; see README.md)"
done
for p in bridge host-local loopback portmap; do
  [ -x "/usr/lib/cni/$p" ] || die "/usr/lib/cni/$p missing (apt-get install containernetworking-plugins)"
done
[ -x "$NETSY_BIN" ] || die "NETSY_BIN=$NETSY_BIN is not an executable"
# A previous run killed midway may have left its mounts; remove them before the directory.
if [ -d "$run" ]; then
  unmount_run
fi
rm -rf "$run"
mkdir -p "$work/bin" "$run"/{pki,manifests,cni/net.d,cni/ipam,containerd,kubelet,logs}

# ---------------------------------------------------------------------------------------------
# 1. Binaries: the Kubernetes components from ../kube-apiserver's pinned module graph (its
#    go.mod names each as a `tool`), and the pause (sandbox) program.
# ---------------------------------------------------------------------------------------------
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
kver="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[^ ]*\).*/\1/p' "$here/../kube-apiserver/go.mod" | head -1)"
if [ -n "${K8S_BIN_DIR:-}" ]; then
  bin="$(realpath "$K8S_BIN_DIR")"
else
  bin="$work/bin"
  for c in "${components[@]}"; do
    [ -x "$bin/$c" ] && [ "$bin/$c" -nt "$here/../kube-apiserver/go.sum" ] && continue
    step "building $c (k8s.io/kubernetes $kver)"
    start=$SECONDS
    (cd "$here/../kube-apiserver" && timeout 3600 go build \
      -ldflags "-X k8s.io/component-base/version.gitVersion=$kver" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c")
    step "built $c in $((SECONDS - start)) s"
  done
fi
for c in "${components[@]}"; do [ -x "$bin/$c" ] || die "$bin/$c missing"; done
kubectl="$bin/kubectl"
(cd "$here" && CGO_ENABLED=0 timeout 600 go build -o "$work/bin/pause" ./cmd/pause)
python3 "$here/image.py" --binary "$work/bin/pause" --name registry.k8s.io/pause:3.10 \
  --out "$run/pause.tar"
step "$("$bin/kube-apiserver" --version), $(containerd --version | cut -d' ' -f1,3), runc $(runc --version | sed -n 's/^runc version //p'), $(dpkg-query -W -f='containernetworking-plugins ${Version}' containernetworking-plugins), $("$NETSY_BIN" --version)"

# ---------------------------------------------------------------------------------------------
# 2. netsy: the control plane's store (the embedded default: one node, local-directory bucket,
#    plaintext on loopback).
# ---------------------------------------------------------------------------------------------
read -r nport npeer nhealth <<<"$(free_ports 3)"
NETSY_DATA_DIR="$run/netsy-data" NETSY_BIND_CLIENT="127.0.0.1:$nport" NETSY_BIND_PEER="127.0.0.1:$npeer" \
  NETSY_BIND_HEALTH="127.0.0.1:$nhealth" "$NETSY_BIN" > "$run/logs/netsy.log" 2>&1 &
pids+=($!)
if wait_http "http://127.0.0.1:$nhealth/readyz" 30; then ok "netsy (the cluster's store) is ready"; else
  ko "netsy is ready (30 s)"; tail -20 "$run/logs/netsy.log"; exit 1; fi

# ---------------------------------------------------------------------------------------------
# 3. PKI for this run: a CA, the apiserver's serving certificate (its names include the
#    `kubernetes` Service's first IP), the service-account key pair, and bearer tokens for the
#    components (the kubelet as system:node:<node> for the Node authorizer).
# ---------------------------------------------------------------------------------------------
host_ip="$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')"
[ -n "$host_ip" ] || host_ip=127.0.0.1
pki="$run/pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=netsy-e2e-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:%s\nextendedKeyUsage=serverAuth\n' \
  "$host_ip" > "$pki/apiserver.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
: > "$pki/tokens.csv"
declare -A token
add_token() {   # name user groups
  token[$1]="$(openssl rand -hex 24)"
  printf '%s,%s,%s,"%s"\n' "${token[$1]}" "$2" "$2" "$3" >> "$pki/tokens.csv"
}
add_token admin netsy-e2e-admin system:masters
add_token kubelet "system:node:$node" system:nodes
add_token controller-manager system:kube-controller-manager ""
add_token scheduler system:kube-scheduler ""
chmod 600 "$pki"/*.key "$pki/tokens.csv"

aport=$(free_port)
kubeconfig() {   # name -> $run/<name>.kubeconfig
  cat > "$run/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$aport", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {token: "${token[$1]}"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $1}
current-context: e2e
EOF
  chmod 600 "$run/$1.kubeconfig"
}
for n in admin kubelet controller-manager scheduler; do kubeconfig "$n"; done
k() { timeout 60 "$kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }

# ---------------------------------------------------------------------------------------------
# 4. The control plane: kube-apiserver on netsy, kube-controller-manager, kube-scheduler.
# ---------------------------------------------------------------------------------------------
"$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$nport" \
  --bind-address=127.0.0.1 --secure-port="$aport" --advertise-address="$host_ip" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" --token-auth-file="$pki/tokens.csv" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range="$svc_cidr" --allow-privileged=true \
  --v=1 > "$run/logs/kube-apiserver.log" 2>&1 &
pids+=($!)
start=$SECONDS
if wait_http "https://127.0.0.1:$aport/readyz" 180 -H "Authorization: Bearer ${token[admin]}" \
  --cacert "$pki/ca.crt"; then
  ok "kube-apiserver on netsy is ready ($((SECONDS - start)) s)"
else
  ko "kube-apiserver is ready (180 s)"; tail -30 "$run/logs/kube-apiserver.log"; exit 1
fi
"$bin/kube-controller-manager" --kubeconfig="$run/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$run/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$run/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --use-service-account-credentials=true --service-cluster-ip-range="$svc_cidr" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --v=1 > "$run/logs/kube-controller-manager.log" 2>&1 &
pids+=($!)
"$bin/kube-scheduler" --kubeconfig="$run/scheduler.kubeconfig" \
  --authentication-kubeconfig="$run/scheduler.kubeconfig" \
  --authorization-kubeconfig="$run/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$(free_port)" --leader-elect=false \
  --v=1 > "$run/logs/kube-scheduler.log" 2>&1 &
pids+=($!)

# ---------------------------------------------------------------------------------------------
# 5. The node: containerd (its root, state and socket in the run directory; the CRI plugin
#    may not set OOM scores here: root lacks CAP_SYS_RESOURCE), runc, Debian's CNI plugins
#    (a bridge with host-local addresses), and the kubelet (cgroup v1 hybrid, cgroupfs).
# ---------------------------------------------------------------------------------------------
ctrd="$run/containerd"
cat > "$ctrd/config.toml" <<EOF
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
[grpc]
  address = "$ctrd/containerd.sock"
[ttrpc]
  address = "$ctrd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
EOF
cat > "$run/cni/net.d/10-netsy-e2e.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "netsy-e2e", "plugins": [
  {"type": "bridge", "bridge": "$cni_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr", "gateway": "$bridge_ip"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$run/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
containerd --config "$ctrd/config.toml" > "$run/logs/containerd.log" 2>&1 &
pids+=($!)
ctr_() { timeout 120 ctr --address "$ctrd/containerd.sock" -n k8s.io "$@"; }
deadline=$((SECONDS + 30))
until ctr_ version >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { ko "containerd answers (30 s)"; tail -20 "$run/logs/containerd.log"; exit 1; }
  sleep 0.2
done
ok "containerd answers on its socket"
ctr_ images import "$run/pause.tar" >/dev/null
images="$(ctr_ images ls -q)"
if grep -qx registry.k8s.io/pause:3.10 <<< "$images"; then ok "the sandbox image is imported"; else
  ko "the sandbox image is imported"; fi

kport=$(free_port)
cat > "$run/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$ctrd/containerd.sock
staticPodPath: $run/manifests
address: 127.0.0.1
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(free_port)
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: ["$bridge_ip"]
resolvConf: /etc/resolv.conf
podCIDR: "$pod_cidr"
# A shared test machine: no evictions or image collection because its disk is busy.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
"$bin/kubelet" --config="$run/kubelet/config.yaml" --kubeconfig="$run/kubelet.kubeconfig" \
  --root-dir="$run/kubelet/root" --cert-dir="$run/kubelet/pki" \
  --hostname-override="$node" --node-ip="$host_ip" \
  --v=1 > "$run/logs/kubelet.log" 2>&1 &
pids+=($!)

# ---------------------------------------------------------------------------------------------
# 6. The node is Ready and runs a pod.
# ---------------------------------------------------------------------------------------------
start=$SECONDS
ready=""
while [ $((SECONDS - start)) -lt 180 ]; do
  ready="$(k get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  [ "$ready" = True ] && break
  sleep 1
done
if [ "$ready" = True ]; then ok "node $node is Ready ($((SECONDS - start)) s)"; else
  ko "node $node is Ready (180 s; last: '${ready}')"; tail -30 "$run/logs/kubelet.log"; exit 1; fi

# The controller-manager creates each namespace's `default` service account; pods wait for it.
start=$SECONDS
until k get serviceaccount default -n default >/dev/null 2>&1; do
  [ $((SECONDS - start)) -lt 60 ] || { ko "the default service account exists (60 s)"; tail -20 "$run/logs/kube-controller-manager.log"; exit 1; }
  sleep 1
done
cat <<EOF | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: sandbox-check, namespace: default}
spec:
  containers:
  - {name: pause, image: registry.k8s.io/pause:3.10, imagePullPolicy: Never}
EOF
start=$SECONDS
if k wait --for=condition=Ready pod/sandbox-check --timeout=120s >/dev/null 2>&1; then
  ip="$(k get pod sandbox-check -o jsonpath='{.status.podIP}')"
  ok "a pod is Ready ($((SECONDS - start)) s) with pod IP $ip"
  case "$ip" in 10.244.0.*) ok "its IP is from the node's pod range $pod_cidr" ;;
    *) ko "its IP ($ip) is from $pod_cidr" ;; esac
else
  ko "a pod is Ready (120 s)"; k describe pod sandbox-check | tail -20; tail -30 "$run/logs/kubelet.log"
fi
# The controllers work on netsy: a Deployment rolls out, and a deleted pod is replaced.
cat <<EOF | k apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: replicas-check, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: replicas-check}}
  template:
    metadata: {labels: {app: replicas-check}}
    spec:
      containers:
      - {name: pause, image: registry.k8s.io/pause:3.10, imagePullPolicy: Never}
EOF
start=$SECONDS
if k rollout status deployment/replicas-check --timeout=120s >/dev/null 2>&1; then
  ok "a Deployment of 3 pods rolled out ($((SECONDS - start)) s)"
  victim="$(k get pods -l app=replicas-check -o jsonpath='{.items[0].metadata.name}')"
  k delete pod "$victim" --wait=false >/dev/null
  start=$SECONDS
  replaced=""
  while [ $((SECONDS - start)) -lt 60 ]; do
    # Running pods without a deletion mark: three, none of them the deleted one.
    names="$(k get pods -l app=replicas-check --field-selector=status.phase=Running \
      -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.deletionTimestamp}{"\n"}{end}' 2>/dev/null || true)"
    if [ "$(awk 'NF == 1 { print $1 }' <<< "$names" | grep -cvx "$victim" || true)" -eq 3 ]; then
      replaced=yes; break
    fi
    sleep 1
  done
  if [ -n "$replaced" ]; then ok "a deleted pod was replaced ($((SECONDS - start)) s)"; else
    ko "a deleted pod was replaced (60 s)"; fi
else
  ko "a Deployment of 3 pods rolled out (120 s)"; k get pods -o wide | tail -5
fi
# What the cluster stored in netsy.
n="$(curl -s --max-time 5 "http://127.0.0.1:$nhealth/metrics" | sed -n 's/^netsy_grpc_requests_total{method="Txn",result="done"} \([0-9]*\)$/\1/p')"
if [ "${n:-0}" -gt 0 ]; then ok "the control plane wrote to netsy ($n Txn calls)"; else ko "the control plane wrote to netsy"; fi

finish
