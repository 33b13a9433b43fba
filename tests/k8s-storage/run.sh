#!/usr/bin/env bash
# Runs Kubernetes' own etcd3 storage tests (k8s.io/apiserver, pkg/storage/...) against netsy.
# See README.md beside this file. Idempotent; every step is bounded by a timeout.
#
#   tests/k8s-storage/run.sh                 # full run (default packages)
#   tests/k8s-storage/run.sh -run 'TestWatch' # extra arguments go to `go test`
#
# Environment:
#   NETSY_BIN             netsy binary to test; default: cargo build --release --locked, then
#                         ${CARGO_TARGET_DIR:-<repo>/target}/release/netsy
#   K8S_STORAGE_SUBSET    "ci" runs the bounded CI subset (see README.md); default: everything
#   K8S_STORAGE_PKGS      space-separated packages, overriding the default set
#   K8S_STORAGE_TIMEOUT   go test -timeout for one package binary (default 20m)
#   K8S_STORAGE_DEADLINE  seconds for the whole go test step (default 3000)
set -euo pipefail

if [ -n "${NETSY_BIN:-}" ]; then NETSY_BIN="$(realpath "$NETSY_BIN")"; fi   # relative to the caller
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="$here/.work"   # git-ignored: module copy, generated go.mod, logs, results
mkdir -p "$work"
cd "$here"

step() { echo "== k8s-storage: $*"; }

command -v go >/dev/null || { echo "go is not installed (Go >= 1.26 needed)" >&2; exit 2; }

# 1. The netsy binary.
if [ -z "${NETSY_BIN:-}" ]; then
  step "building netsy (cargo build --release --locked)"
  (cd "$repo" && timeout 3600 cargo build --release --locked)
  NETSY_BIN="${CARGO_TARGET_DIR:-$repo/target}/release/netsy"
fi
[ -x "$NETSY_BIN" ] || { echo "NETSY_BIN=$NETSY_BIN is not an executable" >&2; exit 2; }
export NETSY_BIN
step "netsy binary: $NETSY_BIN"

# 2. The pinned k8s.io/apiserver module, copied out of the module cache with the testserver
#    package swapped for ours. Go refuses -overlay for files beneath GOMODCACHE, so the copy is
#    wired in with a generated go.mod (-modfile) that adds one `replace`; the committed go.mod
#    and go.sum stay untouched.
version="$(sed -n 's/^[[:space:]]*k8s.io\/apiserver \(v[^ ]*\).*/\1/p' go.mod | head -1)"
[ -n "$version" ] || { echo "k8s.io/apiserver is not required in go.mod" >&2; exit 2; }
step "downloading modules (k8s.io/apiserver $version)"
timeout 1200 go mod download -json "k8s.io/apiserver@$version" > "$work/download.json"
timeout 1200 go mod download
src_dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$work/download.json")"
[ -d "$src_dir/pkg/storage/etcd3/testserver" ] || { echo "no module directory in go mod download output" >&2; exit 2; }

copy="$work/apiserver"
stamp="k8s.io/apiserver@$version $(sha256sum testserver/test_server.go | cut -c1-64)"
if [ "$(cat "$copy/.netsy-stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$copy"
  cp -r "$src_dir" "$copy"
  chmod -R u+w "$copy"
  rm -f "$copy"/pkg/storage/etcd3/testserver/*.go
  cp testserver/test_server.go "$copy/pkg/storage/etcd3/testserver/test_server.go"
  echo "$stamp" > "$copy/.netsy-stamp"
fi
cp go.mod "$work/go.mod"
cp go.sum "$work/go.sum"
printf '\nreplace k8s.io/apiserver => %s\n' "$copy" >> "$work/go.mod"

# 3. Which packages. Every package of the storage suite whose tests start a server through
#    etcd3/testserver (directly or via etcd3/testing), plus the rest of etcd3/... (cheap).
if [ -n "${K8S_STORAGE_PKGS:-}" ]; then
  read -r -a pkgs <<< "$K8S_STORAGE_PKGS"
elif [ "${K8S_STORAGE_SUBSET:-}" = "ci" ]; then
  pkgs=(k8s.io/apiserver/pkg/storage/etcd3/... k8s.io/apiserver/pkg/storage/storagebackend/factory)
else
  pkgs=(k8s.io/apiserver/pkg/storage/etcd3/... k8s.io/apiserver/pkg/storage/storagebackend/factory
        k8s.io/apiserver/pkg/storage/cacher/...)
fi

# 4. Run. t.TempDir() data directories live under $work/tmp, emptied on every run.
# Each netsy node's log is kept in $work/logs (one file per test), also emptied on every run.
rm -rf "$work/tmp" "$work/logs"; mkdir -p "$work/tmp" "$work/logs"
export NETSY_TEST_LOG_DIR="$work/logs"
step "go test ${pkgs[*]} $*"
start=$(date +%s)
set +e
TMPDIR="$work/tmp" timeout --kill-after=30 "${K8S_STORAGE_DEADLINE:-3000}" \
  go test -modfile="$work/go.mod" -json -count=1 -timeout "${K8S_STORAGE_TIMEOUT:-20m}" \
  "${pkgs[@]}" "$@" > "$work/test.json" 2> "$work/test.stderr"
rc=$?
set -e
step "go test exited $rc after $(( $(date +%s) - start ))s (raw output: $work/test.json)"
if [ -s "$work/test.stderr" ]; then
  grep -v '^go: downloading' "$work/test.stderr" | tail -40 || true
fi

# 5. Summary: the closing line counts failures that are not on known-failures.txt.
timeout 300 go build -o "$work/summary" ./cmd/summary
"$work/summary" -json "$work/test.json" -known known-failures.txt \
  -details "$work/failures.txt" | tee "$work/summary.txt"
