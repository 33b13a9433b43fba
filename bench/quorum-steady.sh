#!/usr/bin/env bash
# Object-store writes per client write at a steady rate on the quorum write path (issue #15):
# three netsy nodes on seaweedfs (replication.quorum -1, chunk buffer flushed at 4 MB or
# after one minute, the default heartbeat), one client creating RATE keys per second for
# DURATION, and every node's netsy_object_storage_writes_total read before and after, by kind.
#
#   bench/quorum-steady.sh [RATE=100] [DURATION=150s]
#
# Needs a release build (cargo build --release) and weed (tests/install.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh" # free_ports, stop_pids, start_seaweedfs
rate=${1:-100} duration=${2:-150s}
netsy=$root/target/release/netsy bench=$root/target/release/netsy-bench
for b in "$netsy" "$bench"; do [ -x "$b" ] || { echo "missing $b: cargo build --release" >&2; exit 1; }; done
work=$(mktemp -d)
pids=()
trap 'stop_pids "${pids[@]}" >/dev/null 2>&1; rm -rf "$work"' EXIT
start_seaweedfs "$work/weed" bench >/dev/null
pids+=("$SEAWEEDFS_PID")
cat >"$work/config.jsonc" <<JSON
{"cluster_id": "steady", "storage": {"provider": "s3", "bucket_name": "bench", "key_prefix": "steady"},
 "replication": {"quorum": -1, "chunk_buffer": {"threshold_size_mb": 4, "threshold_age_minutes": 1}}}
JSON
read -ra ports <<<"$(free_ports 9)"
endpoints="" metrics=()
for i in 0 1 2; do
  c=${ports[$((3 * i))]} h=${ports[$((3 * i + 1))]} p=${ports[$((3 * i + 2))]}
  AWS_ENDPOINT_URL=$SEAWEEDFS_ENDPOINT NETSY_INSECURE_PLAINTEXT=true NETSY_LOG_FORMAT=json \
    "$netsy" --config "$work/config.jsonc" \
    --node-id "steady-$i" --data-dir "$work/n$i" \
    --bind-client "127.0.0.1:$c" --advertise-client "127.0.0.1:$c" \
    --bind-peer "127.0.0.1:$p" --advertise-peer "127.0.0.1:$p" \
    --bind-health "127.0.0.1:$h" >"$work/n$i.log" 2>&1 &
  pids+=($!)
  "$bench" wait-http "http://127.0.0.1:$h/readyz" --timeout 120s >/dev/null
  endpoints+="${endpoints:+,}http://127.0.0.1:$c"
  metrics+=("http://127.0.0.1:$h/metrics")
done

# Object-store writes by kind, summed over the nodes.
writes_by_kind() {
  for m in "${metrics[@]}"; do curl -fsS "$m"; done |
    awk '/^netsy_object_storage_writes_total\{/ {
      match($0, /kind="[^"]*"/); k = substr($0, RSTART + 6, RLENGTH - 7)
      match($0, /mode="[^"]*"/); k = k "/" substr($0, RSTART + 6, RLENGTH - 7); n[k] += $NF }
      END { for (k in n) printf "%s %d\n", k, n[k] }' | sort
}
# Warm-up: the Primary learns the other registrations within a heartbeat or two; until then it
# counts itself alone and writes every group to the bucket.
"$bench" k8s --endpoint "$endpoints" --workload watch --watchers 1 --write-rate "$rate" \
  --duration 5s --system warmup --label warmup >/dev/null
metrics_snapshot() {
  for m in "${metrics[@]}"; do curl -fsS "$m"; done |
    grep -E '^netsy_primary_(write_transactions_total|quorum_rollbacks_total|chunk_buffer_flushes_total)' |
    awk '$NF != 0'
}
metrics_snapshot >"$work/primary-before"
writes_by_kind >"$work/before"
echo "# $(date -u '+%F %H:%M') UTC; commit $(git -C "$root" rev-parse --short HEAD); rate $rate/s for $duration"
"$bench" k8s --endpoint "$endpoints" --workload watch --watchers 1 --write-rate "$rate" \
  --duration "$duration" --system "netsy-ha3 q=-1" --label steady | tee "$work/run.json"
writes_by_kind >"$work/after"
echo "# the Primary's write paths, rollbacks and buffer flushes (nonzero), before and after the run"
sed 's/^/before: /' "$work/primary-before"
metrics_snapshot | sed 's/^/after:  /'
python3 - "$work/before" "$work/after" "$work/run.json" <<'PY'
import json, sys
def load(p):
    return {k: int(v) for k, v in (l.split() for l in open(p) if l.strip())}
before, after = load(sys.argv[1]), load(sys.argv[2])
run = json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
writes = run["writes"]
print(f"client writes: {writes} in {run['seconds']:.0f} s ({writes / run['seconds']:.1f}/s), write p50 {run['write_p50_ms']} ms")
total = 0
for kind in sorted(set(before) | set(after)):
    d = after.get(kind, 0) - before.get(kind, 0)
    total += d
    print(f"object-store writes, {kind} (kind/mode): {d} ({d / max(writes, 1):.4f} per client write)")
print(f"object-store writes, all kinds: {total} ({total / max(writes, 1):.4f} per client write)")
PY
