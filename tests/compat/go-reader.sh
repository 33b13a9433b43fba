#!/usr/bin/env bash
# Go compatibility check of our `.netsy` test vectors (tests/vectors/*.netsy).
#
# 1. The ORIGINAL reader, `go run github.com/netsy-dev/netsy/cmd/read-netsy-file@latest FILE`,
#    when the Go module proxy serves that module. (As of writing it does not: proxy.golang.org
#    answers 403 "This module version is not available", and direct git access is not possible
#    here.) Set NETSY_GO_ORIGINAL=require to make its absence a failure.
#    Note: the original tool validates the footer but ignores that verdict in its exit code, so
#    step 2 is the stricter check either way.
# 2. Our Go checker (tests/compat/go-reader): the documented reader algorithm on Go's protobuf
#    runtime — code generated for the ORIGINAL schema (our proto minus `sub_revision`, so field 16
#    is an unknown field, as on deployed Go nodes) — with klauspost/compress zstd, exactly the
#    libraries the original uses. It must accept every vector, reject corrupted copies, and
#    rewrite every vector with a Go writer; `--regenerate` stores those rewrites as
#    tests/vectors/go-*.netsy, which the Rust test `go_written_vectors_are_read` reads back.
#
# Needs: go (module proxy), protoc. Usage: tests/compat/go-reader.sh [--regenerate]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
regenerate=${1:-}
vectors=(tests/vectors/chunk-small.netsy tests/vectors/chunk-batch-zstd.netsy tests/vectors/snapshot.netsy)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== original reader (github.com/netsy-dev/netsy/cmd/read-netsy-file@latest)"
if (cd "$work" && timeout 300 go run github.com/netsy-dev/netsy/cmd/read-netsy-file@latest "$root/${vectors[0]}" >"$work/orig.out" 2>"$work/orig.err"); then
  for v in "${vectors[@]}"; do
    (cd "$work" && go run github.com/netsy-dev/netsy/cmd/read-netsy-file@latest "$root/$v") >/dev/null
    echo "original reader accepted $v"
  done
else
  echo "original reader unavailable: $(head -c 300 "$work/orig.err" | tr '\n' ' ')"
  if [ "${NETSY_GO_ORIGINAL:-}" = require ]; then exit 1; fi
fi

echo "== our Go checker (Go protobuf, original schema, klauspost zstd)"
src=tests/compat/go-reader
cp "$src/go.mod" "$src/go.sum" "$src/main.go" "$work/"
mkdir -p "$work/proto/netsy" "$work/pb"
# The original schema: our proto without the sub_revision extension.
grep -v 'int64 sub_revision = 16;' proto/netsy/datafile.proto >"$work/proto/netsy/datafile.proto"
(cd "$work" && go build -o protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go)
protoc --plugin=protoc-gen-go="$work/protoc-gen-go" -I "$work/proto" \
  --go_out="$work" --go_opt=module=netsycompat --go_opt=Mnetsy/datafile.proto=netsycompat/pb \
  netsy/datafile.proto
(cd "$work" && go build -o go-reader .)

for v in "${vectors[@]}"; do
  "$work/go-reader" check "$v" | tail -n 1
  out="$work/go-$(basename "$v")"
  "$work/go-reader" rewrite "$v" "$out"
  "$work/go-reader" check "$out" >/dev/null
  if [ "$regenerate" = --regenerate ]; then
    cp "$out" "tests/vectors/go-$(basename "$v")"
  elif ! cmp -s "$out" "tests/vectors/go-$(basename "$v")"; then
    # zstd output may legitimately differ between klauspost versions; records must not.
    echo "note: Go rewrite of $v differs from the committed go-$(basename "$v") (zstd version?)"
  fi
done
if ! cmp -s "$work/go-chunk-small.netsy" tests/vectors/chunk-small.netsy; then
  echo "FAIL: Go's encoding of the uncompressed chunk differs from ours" >&2
  exit 1
fi
echo "Go rewrite of the uncompressed chunk is byte-identical to ours"

# Corrupted copies must be rejected.
python3 - "$work" "${vectors[@]}" <<'PY'
import sys
work, files = sys.argv[1], sys.argv[2:]
for f in files:
    data = bytearray(open(f, 'rb').read())
    for name, mutate in [("flip", lambda d: d.__setitem__(len(d) // 2, d[len(d) // 2] ^ 0x40)),
                         ("trunc", lambda d: d.__delitem__(slice(len(d) - 5, None)))]:
        d = bytearray(data)
        mutate(d)
        open(f"{work}/bad-{name}-{f.split('/')[-1]}", 'wb').write(d)
PY
for bad in "$work"/bad-*; do
  "$work/go-reader" expect-invalid "$bad" >/dev/null
done
echo "Go checker rejected $(ls "$work"/bad-* | wc -l) corrupted copies"
echo "PASS"
