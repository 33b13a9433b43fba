#!/usr/bin/env bash
# A real kube-apiserver (Kubernetes v1.37.2, built from Go modules) on netsy, driven through
# the API by cmd/check. See README.md beside this file.
#
#   NETSY_BIN=target/release/netsy tests/kube-apiserver/run.sh
#
# Environment:
#   NETSY_BIN              netsy binary (default: ${CARGO_TARGET_DIR:-<repo>/target}/release/netsy)
#   KUBE_APISERVER_BIN     use this kube-apiserver instead of building one
#   KUBE_COMPACTION        --etcd-compaction-interval (default 10s)
# Prints PASS/FAIL per assertion and ends with `N passed, M failed`; exits 1 on any failure.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # free_ports, wait_http, stop_pids

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$here/.work"        # git-ignored: binaries, logs, this run's files
run="$work/run"
NETSY_BIN="$(realpath "${NETSY_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/netsy}")"   # relative to the caller
if [ -n "${KUBE_APISERVER_BIN:-}" ]; then KUBE_APISERVER_BIN="$(realpath "$KUBE_APISERVER_BIN")"; fi
compaction="${KUBE_COMPACTION:-10s}"
passed=0
failed=0
pids=()

pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
step() { echo "== kube-apiserver: $*"; }
finish() {
  echo "${passed} passed, ${failed} failed"
  [ "$failed" -eq 0 ]
}

# Stops what this script started: SIGTERM, then SIGKILL after 15 s.
cleanup() { stop_pids -t 15 "${pids[@]}"; }
trap cleanup EXIT

command -v go >/dev/null || { echo "go is not installed (Go >= 1.26 needed)" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 2; }
[ -x "$NETSY_BIN" ] || { echo "NETSY_BIN=$NETSY_BIN is not an executable" >&2; exit 2; }
mkdir -p "$work/bin"
rm -rf "$run"; mkdir -p "$run"

# 1. Binaries: kube-apiserver from the pinned module graph (go.mod `tool` directive), and our client.
cd "$here"
if [ -n "${KUBE_APISERVER_BIN:-}" ]; then
  apiserver="$KUBE_APISERVER_BIN"
else
  kver="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[^ ]*\).*/\1/p' go.mod | head -1)"
  step "building kube-apiserver (k8s.io/kubernetes $kver)"
  start=$SECONDS
  # Kubernetes' own build stamps the version through -X; without it /version says v0.0.0-master.
  timeout 3600 go build -ldflags "-X k8s.io/component-base/version.gitVersion=$kver" \
    -o "$work/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  step "built in $((SECONDS - start))s"
  apiserver="$work/bin/kube-apiserver"
fi
timeout 1200 go build -o "$work/bin/check" ./cmd/check
step "$("$apiserver" --version) on $("$NETSY_BIN" --version)"

# 2. netsy: single node, no config, plaintext on loopback.
read -r nport npeer nhealth <<<"$(free_ports 3)"
NETSY_DATA_DIR="$run/netsy-data" NETSY_BIND_CLIENT="127.0.0.1:$nport" NETSY_BIND_PEER="127.0.0.1:$npeer" \
  NETSY_BIND_HEALTH="127.0.0.1:$nhealth" "$NETSY_BIN" > "$run/netsy.log" 2>&1 &
pids+=($!)
if wait_http "http://127.0.0.1:$nhealth/readyz" 30; then pass "netsy is ready"; else
  fail "netsy is ready (30 s)"; tail -20 "$run/netsy.log"; finish; exit 1; fi

# 3. Credentials, generated for this run only: service-account signing key and a bearer token
#    in system:masters. The apiserver makes its own self-signed serving certificate in --cert-dir.
openssl genrsa -out "$run/sa.key" 2048 2>/dev/null
openssl rsa -in "$run/sa.key" -pubout -out "$run/sa.pub" 2>/dev/null
token="$(openssl rand -hex 24)"
printf '%s' "$token" > "$run/token"
printf '%s,netsy-e2e,netsy-e2e-uid,system:masters\n' "$token" > "$run/tokens.csv"
chmod 600 "$run/sa.key" "$run/token" "$run/tokens.csv"

# 4. kube-apiserver on netsy. WatchList, ListFromCacheSnapshot and EtcdRangeStream are on by
#    default in 1.37 (ConsistentListFromCache is GA and no longer a gate); they are named here
#    so a change of default cannot silently turn them off. 192.0.2.10 (TEST-NET-1) is only
#    advertised: endpoint validation refuses loopback addresses for the `kubernetes` service.
aport=$(free_port)
"$apiserver" \
  --etcd-servers="http://127.0.0.1:$nport" \
  --etcd-compaction-interval="$compaction" \
  --feature-gates=WatchList=true,ListFromCacheSnapshot=true,EtcdRangeStream=true \
  --bind-address=127.0.0.1 --secure-port="$aport" --advertise-address=192.0.2.10 \
  --cert-dir="$run/certs" \
  --token-auth-file="$run/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$run/sa.pub" --service-account-signing-key-file="$run/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 \
  --v=2 > "$run/kube-apiserver.log" 2>&1 &
pids+=($!)
auth=(-H "Authorization: Bearer $token" --cacert "$run/certs/apiserver.crt")
start=$SECONDS
if wait_http "https://127.0.0.1:$aport/readyz" 180 "${auth[@]}"; then
  pass "kube-apiserver is ready ($((SECONDS - start)) s)"
else
  fail "kube-apiserver is ready (180 s)"; tail -40 "$run/kube-apiserver.log"; finish; exit 1
fi
readyz="$(curl -s --max-time 10 "${auth[@]}" "https://127.0.0.1:$aport/readyz?verbose")"
for c in etcd etcd-readiness poststarthook/rbac/bootstrap-roles poststarthook/crd-informer-synced; do
  if grep -qx "\[+\]$c ok" <<< "$readyz"; then pass "readyz: $c ok"; else fail "readyz: $c ok"; fi
done
version="$(curl -s --max-time 10 "${auth[@]}" "https://127.0.0.1:$aport/version")"
kver="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[^ ]*\).*/\1/p' go.mod | head -1)"
if grep -q "\"gitVersion\": \"$kver\"" <<< "$version"; then pass "/version is $kver"; else fail "/version is $kver: $version"; fi

# 5. The API exercise.
step "cmd/check"
set +e
timeout 900 "$work/bin/check" -server "https://127.0.0.1:$aport" -ca "$run/certs/apiserver.crt" \
  -token-file "$run/token" -etcd "127.0.0.1:$nport" | tee "$run/check.log"
rc=${PIPESTATUS[0]}
set -e
p=$(grep -c '^PASS ' "$run/check.log" || true)
f=$(grep -c '^FAIL ' "$run/check.log" || true)
passed=$((passed + p)); failed=$((failed + f))
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then fail "cmd/check exited $rc"; fi

# 6. What netsy and the apiserver say: the etcd RPCs the apiserver used, and compaction.
metrics="$(curl -s --max-time 5 "http://127.0.0.1:$nhealth/metrics")"
echo "   netsy requests by method: $(sed -n 's/^netsy_grpc_requests_total{method="\([A-Za-z]*\)",result="done"} \([0-9]*\)$/\1=\2/p' <<< "$metrics" | tr '\n' ' ')"
for m in Range RangeStream Txn LeaseGrant Compact Status; do
  n="$(sed -n "s/^netsy_grpc_requests_total{method=\"$m\",result=\"done\"} \([0-9]*\)$/\1/p" <<< "$metrics")"
  if [ "${n:-0}" -gt 0 ]; then pass "the apiserver called $m ($n times)"; else fail "the apiserver called $m"; fi
done
crev="$(sed -n 's/^netsy_compaction_revision \([0-9]*\)$/\1/p' <<< "$metrics")"
if [ "${crev:-0}" -gt 0 ]; then pass "netsy_compaction_revision = $crev"; else fail "netsy_compaction_revision > 0 (got '${crev}')"; fi
n=$(grep -c '"compaction_completed"' "$run/netsy.log" || true)
if [ "$n" -gt 0 ]; then pass "netsy logged $n compaction_completed"; else fail "netsy logged compaction_completed"; fi
if grep -q 'compact failed' "$run/kube-apiserver.log"; then
  fail "the apiserver's compactor never failed: $(grep -m1 'compact failed' "$run/kube-apiserver.log")"
else
  pass "the apiserver's compactor never failed"
fi
if grep -qE '^E[0-9]{4} .*(etcd|storage)' "$run/kube-apiserver.log"; then
  echo "   (apiserver error lines mentioning etcd/storage, for the record:)"
  grep -E '^E[0-9]{4} .*(etcd|storage)' "$run/kube-apiserver.log" | head -10 | cut -c1-300
fi

# 7. Both processes stop cleanly on SIGTERM.
for i in 1 0; do
  pid=${pids[$i]}; name=$([ "$i" = 1 ] && echo kube-apiserver || echo netsy)
  kill -TERM "$pid" 2>/dev/null || true
  if timeout 60 tail --pid="$pid" -f /dev/null; then pass "$name stopped on SIGTERM"; else fail "$name stopped on SIGTERM (60 s)"; fi
done
step "logs: $run"
finish
