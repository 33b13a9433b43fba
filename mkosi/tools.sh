#!/usr/bin/env bash
# Installs, idempotently, what building and booting the appliance image needs:
#   - mkosi 24.3 from bookworm-backports, unpacked into a tools folder (not installed:
#     the package wants systemd >= 254 on the host, which bookworm does not have);
#   - QEMU 10 (qemu-system-x86) from bookworm-backports, OVMF, umoci and skopeo.
# /etc/apt is never touched: backports come in through a private source list.
# Prints the mkosi tools folder on stdout (last line). Every network step is bounded.
set -euo pipefail

MKOSI_VERSION=24.3-1~bpo12+1
TOOLS=${NETSY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netsy-tools}
APTDIR=$TOOLS/apt
mkdir -p "$TOOLS" "$APTDIR/lists/partial" "$APTDIR/archives/partial"

MIRROR=${NETSY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${NETSY_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
cat > "$APTDIR/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main
SRC
APTO=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o Dir::Etc::SourceParts=/nonexistent
      -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache::Archives=$APTDIR/archives")

apt_updated=
apt_update() {
  if [ -z "$apt_updated" ]; then
    timeout 600 apt-get "${APTO[@]}" -qq update >&2
    apt_updated=1
  fi
}

# Package lists for the private sources (also used by packaging/release.sh).
ls "$APTDIR/lists/"*_Packages* >/dev/null 2>&1 || apt_update

# QEMU >= 10 (bookworm's 7.2 conflicts with newer qemu-utils), OVMF, umoci, skopeo, and the
# small host tools the scripts use.
need=()
qemu_ok() { command -v qemu-system-x86_64 >/dev/null &&
  qemu-system-x86_64 --version | grep -Eq 'version (1[0-9]|[2-9][0-9])\.'; }
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
command -v umoci >/dev/null || need+=(umoci)
command -v skopeo >/dev/null || need+=(skopeo)
command -v jq >/dev/null || need+=(jq)
command -v socat >/dev/null || need+=(socat)
command -v curl >/dev/null || need+=(curl)
if ! qemu_ok; then
  apt_update
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${APTO[@]}" install -y -qq \
    --no-install-recommends -t bookworm-backports qemu-system-x86 >&2
fi
if [ ${#need[@]} -gt 0 ]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${APTO[@]}" install -y -qq \
    --no-install-recommends "${need[@]}" >&2
fi

# mkosi 24.3, unpacked.
MK=$TOOLS/mkosi-$MKOSI_VERSION
if [ ! -x "$MK/usr/bin/mkosi" ]; then
  apt_update
  tmp=$(mktemp -d)
  (cd "$tmp" && timeout 300 apt-get "${APTO[@]}" -qq download "mkosi=$MKOSI_VERSION" >&2)
  rm -rf "$MK.partial" && mkdir -p "$MK.partial"
  dpkg-deb -x "$tmp"/mkosi_*.deb "$MK.partial"
  rm -rf "$tmp" "$MK" && mv "$MK.partial" "$MK"
fi
echo "$MK"
