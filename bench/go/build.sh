#!/usr/bin/env bash
# Builds the Go competitors of bench/run-all.sh from the pinned modules beside this script and
# prints the directory that holds them. Idempotent: the binaries are cached under
# ${XDG_CACHE_HOME:-~/.cache}/netsy-bench/go/<hash of the go.mod/go.sum files>/, so a second run
# only checks the cache.
#
#   benchmark   etcd's own benchmark tool (etcd-benchmark/: go.etcd.io/etcd/v3/tools/benchmark)
#   kine        kine with its SQLite backend (kine/: github.com/k3s-io/kine, CGO)
#   netsy-go    the original Go Netsy, github.com/netsy-dev/netsy/cmd/netsy, IF the Go module
#               proxy serves it; otherwise netsy-go.unavailable holds the proxy's exact answer.
#
# Needs: go >= 1.26 (module proxy), gcc (CGO SQLite). GOFLAGS=-p=1 keeps it to one job.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
key=$(cat "$here"/etcd-benchmark/go.{mod,sum} "$here"/kine/go.{mod,sum} "$here/build.sh" | sha256sum | cut -c1-16)
out=${XDG_CACHE_HOME:-$HOME/.cache}/netsy-bench/go/$key
mkdir -p "$out"
export GOFLAGS="${GOFLAGS:--p=1}"

if [ ! -x "$out/benchmark" ]; then
  echo "== building etcd benchmark tool into $out" >&2
  (cd "$here/etcd-benchmark" && timeout 1200 go build -trimpath -o "$out/benchmark.tmp" go.etcd.io/etcd/v3/tools/benchmark)
  mv "$out/benchmark.tmp" "$out/benchmark"
fi
if [ ! -x "$out/kine" ]; then
  echo "== building kine (CGO SQLite) into $out" >&2
  (cd "$here/kine" && CGO_ENABLED=1 timeout 1800 go build -trimpath -o "$out/kine.tmp" github.com/k3s-io/kine)
  mv "$out/kine.tmp" "$out/kine"
fi
# The original Netsy: one bounded attempt per cache key (the answer is recorded either way).
if [ ! -x "$out/netsy-go" ] && [ ! -f "$out/netsy-go.unavailable" ]; then
  echo "== trying the original Netsy (github.com/netsy-dev/netsy) through the Go module proxy" >&2
  tmp=$(mktemp -d)
  if versions=$(cd "$tmp" && timeout 120 go list -m -versions github.com/netsy-dev/netsy 2>&1) &&
     tag=$(echo "$versions" | awk '{print $NF}') && [ "$tag" != github.com/netsy-dev/netsy ] &&
     (cd "$tmp" && CGO_ENABLED=1 GOBIN="$tmp/bin" timeout 1800 go install "github.com/netsy-dev/netsy/cmd/netsy@$tag" 2>"$tmp/err"); then
    mv "$tmp/bin/netsy" "$out/netsy-go"
    echo "$tag" >"$out/netsy-go.version"
  else
    { echo "$versions"; cat "$tmp/err" 2>/dev/null || true; } | grep -v '^$' | head -5 >"$out/netsy-go.unavailable"
  fi
  rm -rf "$tmp"
fi
echo "$out"
