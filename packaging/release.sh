#!/usr/bin/env bash
# Builds the release artefacts into dist/release/ (reproducibly: same commit => same bytes):
#   netsy_<v>_linux_amd64.tar.gz        binary + systemd units + README
#   netsy_<v>_linux_amd64.sbom.cdx.json CycloneDX SBOM from Cargo.lock (packaging/sbom.py)
#   netsy_<v>_oci.tar                   OCI image layout (packaging/oci.py), tag <v>
#   netsy_<v>_checksums.txt             sha256 of the three
# and the unpacked OCI layout dist/oci/ (skopeo: oci:dist/oci:<v>).
# Publishing (not done here):
#   skopeo copy oci:dist/oci:<v> docker://ghcr.io/netsy-dev/netsy:<v>
# NETSY_BINARY=path skips the cargo build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
REV=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
NAME=netsy_${VERSION}_linux_amd64
OUT=dist/release
rm -rf "$OUT" && mkdir -p "$OUT"

"$ROOT/mkosi/tools.sh" >/dev/null   # private bookworm package lists (and umoci/skopeo/jq)
BIN=${NETSY_BINARY:-}
[ -n "$BIN" ] || BIN=$("$ROOT/packaging/build-binary.sh" | tail -1)

# 1. Binary tarball.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$NAME/systemd"
install -m 0755 "$BIN" "$stage/$NAME/netsy"
install -m 0644 README.md "$stage/$NAME/README.md"
install -m 0644 systemd/netsy.service systemd/credentials.conf systemd/netsy.sysusers \
  systemd/netsy.tmpfiles "$stage/$NAME/systemd/"
tar -C "$stage" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -cf - "$NAME" | gzip -9n > "$OUT/$NAME.tar.gz"

# 2. SBOM.
python3 packaging/sbom.py --binary "$BIN" --out "$OUT/$NAME.sbom.cdx.json" >&2

# 3. OCI image: Debian's libc6, libgcc-s1 and ca-certificates (bookworm, what the binary
#    was linked against) plus the binary.
TOOLS=${NETSY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools}
APTO=(-o "Dir::Etc::SourceList=$TOOLS/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
      -o "Dir::State::Lists=$TOOLS/apt/lists" -o "Dir::Cache::Archives=$TOOLS/apt/archives")
mkdir -p "$stage/debs"
(cd "$stage/debs" && timeout 300 apt-get "${APTO[@]}" -qq download libc6 libgcc-s1 ca-certificates 2>/dev/null)
ls "$stage/debs"/*.deb | xargs -n1 basename | sed 's/^/  deb: /' >&2
python3 packaging/oci.py --binary "$BIN" --version "$VERSION" --revision "$REV" \
  --debs "$stage/debs" --out dist/oci >&2
tar -C dist/oci --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -cf "$OUT/netsy_${VERSION}_oci.tar" .

# 4. Checksums.
(cd "$OUT" && sha256sum "$NAME.tar.gz" "$NAME.sbom.cdx.json" "netsy_${VERSION}_oci.tar" \
  > "netsy_${VERSION}_checksums.txt")
cat "$OUT/netsy_${VERSION}_checksums.txt"
