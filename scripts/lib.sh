# shellcheck shell=bash
# Shell helpers shared by the test and benchmark scripts (tests/**/run.sh, bench/*.sh).
#
# Where: scripts/ rather than tests/, because bench/ uses it as much as tests/ does, and
# scripts/ already holds what several parts of the tree share (bootstrap.sh). Not a program:
# source it, by a path relative to the sourcing script, so it works from any directory:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"       # from bench/
#   . "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"    # from tests/<suite>/
#
# It defines functions and three counters (pass, fail, skipped, all 0); it runs nothing, sets
# no shell options and installs no trap. Needs bash, python3 and curl (tests/tools.txt).
#
#   ok MSG / ko MSG / skip MSG   count a result and print "ok   - MSG", "FAIL - MSG", "skip - MSG"
#   check MSG CMD [ARGS...]      ok MSG when CMD succeeds (its output discarded), else ko MSG
#   summary [--skipped]          the closing line tests/run parses: "N passed, N failed", then
#                                ", N skipped" when any were skipped (always with --skipped);
#                                returns 0 when nothing failed
#   free_ports N / free_port     N distinct free loopback TCP ports, space-separated / one port
#   wait_http URL SECONDS [CURL ARGS...]
#                                polls URL until it answers 200; 1 when SECONDS pass first
#   stop_pids [-t SECONDS] PID...
#                                SIGTERM, then SIGKILL what is still running after SECONDS
#                                (default 30) for all of them together; reaps its children
#   start_seaweedfs DIR BUCKET   a single-process seaweedfs (`weed mini`, 11 ports, loopback
#                                only, log in DIR.log) holding BUCKET, with static keys k / s;
#                                see the function for what it sets and exports

pass=0 fail=0 skipped=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
ko() { fail=$((fail + 1)); echo "FAIL - $*"; }
skip() { skipped=$((skipped + 1)); echo "skip - $*"; }
check() { local msg=$1; shift; if "$@" >/dev/null 2>&1; then ok "$msg"; else ko "$msg"; fi; }

# shellcheck disable=SC2120  # (its only argument is optional)
summary() {
  local line="$pass passed, $fail failed"
  if [ "${1:-}" = --skipped ] || [ "$skipped" -gt 0 ]; then line+=", $skipped skipped"; fi
  echo "$line"
  [ "$fail" -eq 0 ]
}

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}
free_port() { free_ports 1; }

wait_http() {
  local url=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url" || true)" = 200 ]; then
      return 0
    fi
    sleep 0.5   # polling interval: the loop checks a condition with a deadline
  done
  return 1
}

stop_pids() {
  local secs=30 p
  if [ "${1:-}" = -t ]; then secs=$2; shift 2; fi
  local deadline=$(( $(date +%s) + secs ))
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# start_seaweedfs DIR BUCKET: starts `${NETSY_WEED:-weed} mini` with its data in DIR (created)
# and its output in DIR.log, every port free and on 127.0.0.1, telemetry, the admin UI, WebDAV
# and the Iceberg/Lance endpoints off, a fixed budget of 64 sparse 128 MB volumes (by default
# the count is free disk space / volume size, which on a nearly full disk leaves no room for a
# bucket), and BUCKET created. Sets SEAWEEDFS_PID, SEAWEEDFS_PORT
# (the S3 port) and SEAWEEDFS_ENDPOINT (http://127.0.0.1:PORT), and exports what an S3 client
# (netsy's `s3` provider, the AWS SDKs) needs to reach it: AWS_ACCESS_KEY_ID=k,
# AWS_SECRET_ACCESS_KEY=s, AWS_REGION=us-east-1, AWS_ENDPOINT_URL, AWS_S3_USE_PATH_STYLE=true.
# Returns once the S3 port answers HTTP (any status); after SEAWEEDFS_WAIT seconds (default 60)
# without an answer it stops the process, prints the log's tail and returns 1. Whether BUCKET
# exists yet is the caller's to check (bench: `netsy-bench wait-s3 BUCKET`). The caller stops it
# (stop_pids "$SEAWEEDFS_PID"), and should register the PID for its cleanup.
start_seaweedfs() {
  local dir=$1 bucket=$2 ports
  read -ra ports <<<"$(free_ports 12)"
  SEAWEEDFS_PORT=${ports[0]}
  SEAWEEDFS_ENDPOINT=http://127.0.0.1:$SEAWEEDFS_PORT
  mkdir -p "$dir"
  AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s "${NETSY_WEED:-weed}" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.telemetry=false -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.volumeSizeLimitMB=128 -volume.max=64 \
    -s3.port="$SEAWEEDFS_PORT" -bucket="$bucket" \
    -master.port="${ports[1]}" -master.port.grpc="${ports[2]}" -volume.port="${ports[3]}" \
    -volume.port.grpc="${ports[4]}" -filer.port="${ports[5]}" -filer.port.grpc="${ports[6]}" \
    -admin.port="${ports[7]}" -admin.port.grpc="${ports[8]}" -debug.port="${ports[9]}" \
    -webdav.port="${ports[10]}" -s3.port.grpc="${ports[11]}" >"$dir.log" 2>&1 &
  SEAWEEDFS_PID=$!
  export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL=$SEAWEEDFS_ENDPOINT AWS_S3_USE_PATH_STYLE=true
  local deadline=$((SECONDS + ${SEAWEEDFS_WAIT:-60}))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$SEAWEEDFS_PID" 2>/dev/null; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$SEAWEEDFS_ENDPOINT/" || true)" != 000 ]; then
      return 0
    fi
    sleep 0.5   # polling interval: the loop checks a condition with a deadline
  done
  echo "seaweedfs did not answer on $SEAWEEDFS_ENDPOINT within ${SEAWEEDFS_WAIT:-60} s; $dir.log:" >&2
  tail -20 "$dir.log" >&2
  stop_pids "$SEAWEEDFS_PID"
  return 1
}
