#!/usr/bin/env bash
# Builds the appliance disk image: mkosi.output/netsy_<version>.raw (plus the manifest).
#
#   mkosi/build.sh                 build the binary (packaging/build-binary.sh) and the image
#   NETSY_BINARY=path mkosi/build.sh   use that binary instead of building one
#   NETSY_IMAGE_OUTPUT=dir             output directory (default: mkosi.output/ at the repo root)
#
# Steps: install mkosi 24.3/QEMU (mkosi/tools.sh); build the tools tree once (mkosi/tools/,
# cached under ${XDG_CACHE_HOME:-~/.cache}/netsy-tools, rebuilt when its config changes);
# stage the binary and the units from systemd/ as an extra tree; run mkosi from scratch
# (no incremental cache) with SOURCE_DATE_EPOCH = the commit time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MK=$("$ROOT/mkosi/tools.sh" | tail -1)
CACHE=${NETSY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools}
OUT=${NETSY_IMAGE_OUTPUT:-$ROOT/mkosi.output}
mkdir -p "$OUT" "$CACHE/packages" "$ROOT/mkosi.cache"

mkosi() {
  PYTHONPATH="$MK/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}" \
    timeout "${NETSY_MKOSI_TIMEOUT:-1800}" python3 -m mkosi "$@"
}

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# The tools tree: rebuilt only when its definition changes.
tools_hash=$(cat mkosi/tools/mkosi.conf mkosi/tools/mkosi.pkgmngr/etc/apt/sources.list.d/* \
  | sha256sum | cut -c1-16)
TT_DIR=$CACHE/tools-tree-$tools_hash
TT=$TT_DIR/netsy-tools
if [ ! -f "$TT_DIR/.complete" ]; then
  echo "== building the tools tree (once) in $TT_DIR" >&2
  rm -rf "$TT_DIR" && mkdir -p "$TT_DIR"
  mkosi -C mkosi/tools --output=netsy-tools --output-dir="$TT_DIR" \
    --package-cache-dir="$CACHE/packages" --workspace-dir=/var/tmp -f build >&2
  touch "$TT_DIR/.complete"
fi

BIN=${NETSY_BINARY:-}
[ -n "$BIN" ] || BIN=$("$ROOT/packaging/build-binary.sh" | tail -1)

# The extra tree: what this repository puts into the image on top of Debian's packages.
STAGE=$(mktemp -d /var/tmp/netsy-stage.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
install -D -m 0755 "$BIN" "$STAGE/usr/bin/netsy"
install -D -m 0644 systemd/netsy.service "$STAGE/usr/lib/systemd/system/netsy.service"
install -D -m 0644 systemd/credentials.conf \
  "$STAGE/usr/lib/systemd/system/netsy.service.d/10-credentials.conf"
install -D -m 0644 systemd/netsy.sysusers "$STAGE/usr/lib/sysusers.d/netsy.conf"
install -D -m 0644 systemd/netsy.tmpfiles "$STAGE/usr/lib/tmpfiles.d/netsy.conf"

echo "== building the image (mkosi $(mkosi --version 2>/dev/null | awk '{print $2}'), version $VERSION, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
mkosi -C mkosi \
  --tools-tree="$TT" \
  --output-dir="$OUT" \
  --cache-dir="$ROOT/mkosi.cache" \
  --package-cache-dir="$CACHE/packages" \
  --workspace-dir=/var/tmp \
  --image-version="$VERSION" \
  --source-date-epoch="$SOURCE_DATE_EPOCH" \
  --extra-tree="$STAGE" \
  -f build >&2
echo "$OUT/netsy_$VERSION.raw"
