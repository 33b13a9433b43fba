#!/usr/bin/env bash
# Reproducibility check: builds the appliance image twice from the same commit, from scratch
# (no incremental cache; the package download cache and the tools tree are shared), and
# compares the sha256 of the disk images. If they differ, it lists which partitions and which
# files inside them differ.
#
#   mkosi/reproduce.sh                    image twice (binary built once, as packaging does)
#   NETSY_BINARY=path mkosi/reproduce.sh  image twice with that binary
#   NETSY_REPRO_BINARY=1 mkosi/reproduce.sh   also rebuild the binary in a second target dir
#                                          and checkout path and compare it (a full cargo build)
# Exit 0 when the images are bit-identical.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/mkosi.output/reproduce
rm -rf "$OUT" && mkdir -p "$OUT/a" "$OUT/b"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
rc=0

BIN=${NETSY_BINARY:-}
[ -n "$BIN" ] || BIN=$("$ROOT/packaging/build-binary.sh" | tail -1) || exit 1
cp "$BIN" "$OUT/netsy.a"
if [ "${NETSY_REPRO_BINARY:-0}" = 1 ]; then
  # Same commit, different checkout path and target directory.
  src=$(mktemp -d /var/tmp/netsy-repro-src.XXXXXX)
  git archive HEAD | tar -x -C "$src"
  (cd "$src" && CARGO_TARGET_DIR="$src/target" ./packaging/build-binary.sh >/dev/null) || exit 1
  cp "$src/dist/netsy" "$OUT/netsy.b"
  rm -rf "$src"
  if cmp -s "$OUT/netsy.a" "$OUT/netsy.b"; then echo "binary: identical $(sha256sum < "$OUT/netsy.a" | cut -c1-64)"
  else echo "binary: DIFFERENT"; sha256sum "$OUT"/netsy.?; rc=1; fi
fi

for run in a b; do
  echo "== build $run" >&2
  t=$(date +%s)
  NETSY_BINARY=$OUT/netsy.a NETSY_IMAGE_OUTPUT=$OUT/$run "$ROOT/mkosi/build.sh" > "$OUT/$run.path" 2> "$OUT/$run.log" \
    || { tail -30 "$OUT/$run.log"; echo "build $run failed"; exit 1; }
  echo "   $(( $(date +%s) - t )) s" >&2
done
IMG_A=$(tail -1 "$OUT/a.path") IMG_B=$(tail -1 "$OUT/b.path")
A=$(sha256sum < "$IMG_A" | cut -c1-64) B=$(sha256sum < "$IMG_B" | cut -c1-64)
echo "image a: $A  $(basename "$IMG_A")"
echo "image b: $B"
for f in "$OUT"/a/*; do
  [ -f "$f" ] || continue
  g=$OUT/b/$(basename "$f")
  if cmp -s "$f" "$g"; then echo "  same      $(basename "$f")"; else echo "  DIFFERENT $(basename "$f")"; fi
done
if [ "$A" = "$B" ]; then echo "REPRODUCIBLE: the two disk images are bit-identical"; exit $rc; fi

echo "NOT REPRODUCIBLE: looking for the differences"
# Partition by partition, then file by file inside each (mounted read-only through loop devices).
mapfile -t parts < <(sfdisk -J "$IMG_A" | python3 -c '
import json,sys
d=json.load(sys.stdin)["partitiontable"]; ss=d.get("sectorsize",512)
for p in d["partitions"]: print(p["start"]*ss, p["size"]*ss, p["type"])')
for p in "${parts[@]}"; do
  read -r off size type <<<"$p"
  if cmp -s <(dd if="$IMG_A" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none) \
            <(dd if="$IMG_B" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none); then
    echo "  partition at $off ($type): same"; continue
  fi
  echo "  partition at $off ($type): DIFFERENT"
  ma=$(mktemp -d) mb=$(mktemp -d)
  if mount -o ro,loop,offset="$off",sizelimit="$size" "$IMG_A" "$ma" 2>/dev/null &&
     mount -o ro,loop,offset="$off",sizelimit="$size" "$IMG_B" "$mb" 2>/dev/null; then
    diff -rq --no-dereference "$ma" "$mb" | sed 's/^/    /' | head -50
    (cd "$ma" && find . -printf '%p %m %U %G %s %T@ %l\n' | sort) > "$OUT/meta.a"
    (cd "$mb" && find . -printf '%p %m %U %G %s %T@ %l\n' | sort) > "$OUT/meta.b"
    diff "$OUT/meta.a" "$OUT/meta.b" | sed 's/^/    meta /' | head -20
    echo "    (no file differs: the difference is in filesystem metadata)" >&2
  else echo "    (cannot mount: compare with cmp -l)"; fi
  umount "$ma" "$mb" 2>/dev/null; rmdir "$ma" "$mb"
done
exit 1
