#!/usr/bin/env bash
# Interleaved A/B of two netsy binaries on this machine: for each round and each client count,
# a fresh single node (local-directory bucket) per binary, then `netsy-bench k8s --workload crud`
# (create, update, delete; 5 s each). Run-to-run spread here is 10-25 %: compare medians of
# several rounds, never one pair.
#
#   bench/ab.sh BEFORE_BIN AFTER_BIN [ROUNDS] [CLIENTS...]
#   e.g. bench/ab.sh /tmp/netsy-old target/release/netsy 3 1 16 100
#
# AB_STORAGE=s3 puts the bucket on seaweedfs instead (weed mini, started once; a fresh key
# prefix per run), and AB_DELAY_MS=N adds N ms to every object-store response
# (`netsy-bench delay-proxy`), e.g. 100 for an S3 Standard-like bucket.
#
# Prints one line per cell and run, then a table of medians. Needs target/release/netsy-bench.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"   # start_seaweedfs
before=$1 after=$2 rounds=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
clients=("$@"); [ ${#clients[@]} -gt 0 ] || clients=(1 16 100)
root=$(cd "$(dirname "$0")/.." && pwd)
bench="$root/target/release/netsy-bench"
work=$(mktemp -d)
aux=()
trap '[ ${#aux[@]} -eq 0 ] || kill "${aux[@]}" 2>/dev/null; rm -rf "$work"' EXIT
port=$(( 24000 + RANDOM % 4000 ))
config=()
if [ "${AB_STORAGE:-local}" = s3 ]; then
  start_seaweedfs "$work/weed" abtest
  aux+=("$SEAWEEDFS_PID")
  if [ "${AB_DELAY_MS:-0}" -gt 0 ]; then
    proxy=$(( port + 10 ))
    "$bench" delay-proxy --listen "127.0.0.1:$proxy" --upstream "127.0.0.1:$SEAWEEDFS_PORT" \
      --delay "${AB_DELAY_MS}ms" 2>"$work/proxy.log" &
    aux+=($!)
    export AWS_ENDPOINT_URL="http://127.0.0.1:$proxy"
  fi
  "$bench" wait-s3 abtest --timeout 60s
fi
runs=0

one() { # $1 = label, $2 = binary, $3 = clients
  rm -rf "$work/data"
  runs=$((runs + 1))
  if [ "${AB_STORAGE:-local}" = s3 ]; then
    printf '{"cluster_id": "ab", "storage": {"provider": "s3", "bucket_name": "abtest", "key_prefix": "run%d"}, "replication": {"quorum": 0}}\n' \
      "$runs" >"$work/config.jsonc"
    config=(--config "$work/config.jsonc")
  fi
  NETSY_INSECURE_PLAINTEXT=true "$2" "${config[@]}" --data-dir "$work/data" --bind-client "127.0.0.1:$port" \
    --bind-health "127.0.0.1:$((port+1))" --bind-peer "127.0.0.1:$((port+2))" >"$work/log" 2>&1 &
  local pid=$! i
  for i in $(seq 300); do
    curl -sf "http://127.0.0.1:$((port+1))/readyz" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "node exited: $(tail -3 "$work/log")" >&2; exit 1; }
    sleep 0.1
  done
  "$bench" k8s --endpoint "http://127.0.0.1:$port" --system "$1" --workload crud --clients "$3" \
    --duration 5s --pid "$pid" --metrics-url "http://127.0.0.1:$((port+1))/metrics" | tee -a "$work/results.jsonl"
  kill "$pid"; wait "$pid" || true
}

for r in $(seq "$rounds"); do
  for c in "${clients[@]}"; do
    one before "$before" "$c"
    one after "$after" "$c"
  done
done >/dev/null

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
cells = {}
for r in rows:
    cells.setdefault((r["clients"], r["workload"]), {}).setdefault(r["system"], []).append(r)
print("| cell | before ops/s | after ops/s | after / before (medians) | p50 ms before -> after | CPU us/op before -> after | object writes/op before -> after |")
print("|---|---|---|---:|---|---|---|")
for (c, w), by in sorted(cells.items()):
    b, a = by.get("before", []), by.get("after", [])
    if not b or not a:
        continue
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    wr = lambda xs: (f"{statistics.median(x['objstore_writes_per_op'] for x in xs):.3f}"
                     if all(x.get("objstore_writes_per_op") is not None for x in xs) else "-")
    print(f"| {w} x{c} | {', '.join(str(round(x['ops_per_sec'])) for x in b)} "
          f"| {', '.join(str(round(x['ops_per_sec'])) for x in a)} "
          f"| {med(a, 'ops_per_sec') / med(b, 'ops_per_sec'):.2f} "
          f"| {med(b, 'p50_ms'):.3f} -> {med(a, 'p50_ms'):.3f} "
          f"| {med(b, 'cpu_us_per_op'):.0f} -> {med(a, 'cpu_us_per_op'):.0f} "
          f"| {wr(b)} -> {wr(a)} |")
PY
