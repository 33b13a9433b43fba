#!/usr/bin/env bash
# Builds the release artefacts twice (packaging/release.sh) and checks them:
#   - both builds are byte-identical (checksums file equal);
#   - sha256 checksums verify; the tarball holds the binary and the systemd units;
#   - the SBOM is CycloneDX JSON naming every non-dev crate that Cargo.lock resolves;
#   - the OCI layout is valid for skopeo and umoci, its config has user 65532, entrypoint
#     /usr/bin/netsy and ports 2378/2381/8080, and its /usr/bin/netsy is the built binary,
#     which runs inside the unpacked root filesystem (so the C runtime in the layer is complete).
# NETSY_BINARY=path skips the cargo build. Prints "N passed, N failed".
set -uo pipefail
# shellcheck source=SCRIPTDIR/../../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"   # ok, ko, check, summary
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

"$ROOT/mkosi/tools.sh" >/dev/null || { echo "tool install failed"; echo "0 passed, 1 failed"; exit 1; }
BIN=${NETSY_BINARY:-}
[ -n "$BIN" ] || BIN=$("$ROOT/packaging/build-binary.sh" | tail -1)
export NETSY_BINARY=$BIN
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
R=dist/release NAME=netsy_${VERSION}_linux_amd64
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== release artefacts, version $VERSION"
if ! timeout 900 packaging/release.sh > "$work/first.txt" 2> "$work/first.log"; then
  cat "$work/first.log"; ko "packaging/release.sh"; summary; exit 1
fi
cp -a dist/oci "$work/oci-first"
timeout 900 packaging/release.sh > "$work/second.txt" 2>/dev/null
if cmp -s "$work/first.txt" "$work/second.txt"; then ok "two builds give identical artefacts"
else ko "builds differ:"; diff "$work/first.txt" "$work/second.txt"; fi
sed 's/^/     /' "$work/second.txt"

check "sha256 checksums verify" sh -c "cd $R && sha256sum -c netsy_${VERSION}_checksums.txt"
list=$(tar -tzvf "$R/$NAME.tar.gz")
for f in netsy systemd/netsy.service systemd/credentials.conf systemd/netsy.sysusers systemd/netsy.tmpfiles README.md; do
  grep -q " $NAME/$f\$" <<<"$list" || { ko "tarball lacks $NAME/$f"; continue; }
done
grep -q "^-rwxr-xr-x 0/0 .* $NAME/netsy\$" <<<"$list" && ok "tarball: binary 0755 root, units, README" \
  || ko "tarball binary entry: $(grep "/netsy\$" <<<"$list")"
tar -xzf "$R/$NAME.tar.gz" -C "$work" && cmp -s "$work/$NAME/netsy" "$BIN" \
  && ok "tarball binary is the built binary" || ko "tarball binary differs"

want=$(cargo metadata --format-version 1 --locked --offline --filter-platform x86_64-unknown-linux-gnu \
  | python3 -c '
import json,sys
m=json.load(sys.stdin); n={x["id"]:x for x in m["resolve"]["nodes"]}; seen=set(); st=[m["resolve"]["root"]]
while st:
  c=st.pop()
  if c in seen: continue
  seen.add(c); st+= [d["pkg"] for d in n[c]["deps"] if {k["kind"] for k in d["dep_kinds"]}-{"dev"}]
print(len(seen)-1)')
got=$(jq '[.components[] | select(.purl | startswith("pkg:cargo/"))] | length' "$R/$NAME.sbom.cdx.json")
fmt=$(jq -r '.bomFormat + " " + .specVersion + " " + .metadata.component.name' "$R/$NAME.sbom.cdx.json")
if [ "$fmt" = "CycloneDX 1.5 netsy" ] && [ "$got" = "$want" ] && [ "$got" -gt 50 ]; then
  ok "SBOM: $fmt, $got crates (cargo metadata: $want)"
else ko "SBOM: '$fmt' $got crates, expected $want"; fi
check "SBOM: every crate has a license and a checksum" \
  test "$(jq '[.components[] | select((.licenses|length)==0 or (.hashes|length)==0)] | length' "$R/$NAME.sbom.cdx.json")" = 0

check "OCI: skopeo inspect oci:dist/oci:$VERSION" skopeo inspect "oci:dist/oci:$VERSION"
cfg=$(skopeo inspect --config "oci:dist/oci:$VERSION" 2>/dev/null)
check "OCI: user 65532:65532" test "$(jq -r .config.User <<<"$cfg")" = "65532:65532"
check "OCI: entrypoint [/usr/bin/netsy]" test "$(jq -c .config.Entrypoint <<<"$cfg")" = '["/usr/bin/netsy"]'
check "OCI: exposed ports 2378 2381 8080" \
  test "$(jq -r '.config.ExposedPorts|keys|join(" ")' <<<"$cfg")" = "2378/tcp 2381/tcp 8080/tcp"
check "OCI: os/arch linux/amd64" test "$(jq -r '.os+"/"+.architecture' <<<"$cfg")" = "linux/amd64"
check "OCI: identical layout when rebuilt" diff -r "$work/oci-first" dist/oci
rootfs=$work/rootfs
if timeout 300 umoci raw unpack --rootless --image "dist/oci:$VERSION" "$rootfs" >/dev/null 2>&1; then
  ok "OCI: umoci unpacks the layer"
  check "OCI: /usr/bin/netsy is the built binary, mode 0755" \
    sh -c "cmp -s '$rootfs/usr/bin/netsy' '$BIN' && test \$(stat -c %a '$rootfs/usr/bin/netsy') = 755"
  check "OCI: /etc/passwd has nonroot 65532, no shell in the image" \
    sh -c "grep -q '^nonroot:x:65532:65532:' '$rootfs/etc/passwd' && ! test -e '$rootfs/usr/bin/sh'"
  check "OCI: CA bundle present" test -s "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # The binary runs in the image's root (dynamic loader, glibc, libgcc_s all there), as 65532.
  if out=$(timeout 30 chroot --userspec=65532:65532 "$rootfs" /usr/bin/netsy --version 2>&1); then
    ok "OCI: /usr/bin/netsy --version runs inside the image root as 65532 (${out:-no output})"
  else ko "OCI: netsy does not run inside the image root: $out"; fi
else ko "OCI: umoci unpack"; fi

summary
