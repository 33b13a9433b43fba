#!/usr/bin/env bash
# Installs, idempotently, what building and booting the appliance image needs:
#   - mkosi 24.3 from bookworm-backports, unpacked into a tools folder (not installed:
#     the package wants systemd >= 254 on the host, which bookworm does not have);
#   - the host programs mkosi 24.3 itself runs (see HOST_TOOLS below), above all bubblewrap:
#     mkosi runs every tool through `bwrap`, and without it dies in cp_version with an
#     IndexError instead of naming what is missing;
#   - QEMU 10 (qemu-system-x86) from bookworm-backports, OVMF, umoci and skopeo.
# /etc/apt is never touched: backports come in through a private source list.
# Prints the mkosi tools folder on stdout (last line). Every network step is bounded.
# Anything missing that cannot be installed stops it at once with one line on stderr
# ("mkosi/tools.sh: ...") and exit status 1.
set -euo pipefail
die() { echo "mkosi/tools.sh: $*" >&2; exit 1; }

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
    timeout 600 apt-get "${APTO[@]}" -qq update >&2 || die "apt-get update (private sources in $APTDIR) failed"
    apt_updated=1
  fi
}
# apt_install [apt-get options...] -- packages...
apt_install() {
  local opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  apt_update
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${APTO[@]}" install -y -qq \
    --no-install-recommends "${opts[@]}" "$@" >&2 || die "cannot install $* (apt-get install failed)"
}

# Package lists for the private sources (also used by packaging/release.sh).
ls "$APTDIR/lists/"*_Packages* >/dev/null 2>&1 || apt_update

# What mkosi 24.3 runs on the host, as "command:package". From the Depends of the Debian package
# mkosi 24.3-1~bpo12+1 (`apt-cache show mkosi=24.3-1~bpo12+1` with the options above):
#   bubblewrap, python3, fdisk | util-linux, systemd (>= 254), systemd-container (>= 254)
# and from what its code runs for this project's configs: with no tools tree (while it builds
# mkosi/tools/) it runs the host's apt-get and dpkg, mount/umount and cp/stat, all inside bwrap.
# Not installed here, on purpose:
#   - systemd/systemd-container >= 254: bookworm has 252. The tools tree (mkosi/tools/, trixie)
#     brings systemd-repart, ukify and bootctl 257 for the image build; systemd-nspawn is
#     only needed by `mkosi boot`, which nothing here uses.
#   - Recommends: ovmf (installed below); e2fsprogs, dosfstools, xz-utils, zstd, python3-pefile
#     come from the tools tree; uidmap only matters when mkosi runs as non-root (apt-get here
#     needs root anyway); the rest (dnf, zypper, pacman, their keyrings, btrfs, erofs,
#     squashfs, cryptsetup, gnupg, openssh) serve features this image does not use.
HOST_TOOLS=(
  bwrap:bubblewrap
  python3:python3
  sfdisk:fdisk
  apt-get:apt
  dpkg:dpkg
  mount:mount
  cp:coreutils
  stat:coreutils
)
need=()
for t in "${HOST_TOOLS[@]}"; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ ${#need[@]} -gt 0 ]; then
  apt_install -- "${need[@]}"
fi
for t in "${HOST_TOOLS[@]}"; do
  command -v "${t%%:*}" >/dev/null || die "'${t%%:*}' (package ${t#*:}) is missing after the install"
done
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] ||
  die "/usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring) is missing"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
  die "mkosi 24.3 needs python3 >= 3.9, found $(python3 --version 2>&1)"
# mkosi reads the output of sandboxed commands (cp --version first): check that bwrap can make a
# sandbox here at all, so a broken one is named now instead of surfacing as an IndexError.
if ! out=$(bwrap --ro-bind / / --dev /dev --proc /proc --unshare-pid --die-with-parent cp --version 2>&1) ||
   [ -z "$out" ]; then
  die "bwrap cannot run a sandboxed command here: $(echo "$out" | head -1)"
fi

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
  apt_install -t bookworm-backports -- qemu-system-x86
  qemu_ok || die "qemu-system-x86_64 >= 10 is missing after the install"
fi
if [ ${#need[@]} -gt 0 ]; then
  apt_install -- "${need[@]}"
fi

# mkosi 24.3, unpacked.
MK=$TOOLS/mkosi-$MKOSI_VERSION
if [ ! -x "$MK/usr/bin/mkosi" ]; then
  apt_update
  tmp=$(mktemp -d)
  (cd "$tmp" && timeout 300 apt-get "${APTO[@]}" -qq download "mkosi=$MKOSI_VERSION" >&2) ||
    die "cannot download mkosi=$MKOSI_VERSION"
  rm -rf "$MK.partial" && mkdir -p "$MK.partial"
  dpkg-deb -x "$tmp"/mkosi_*.deb "$MK.partial"
  rm -rf "$tmp" "$MK" && mv "$MK.partial" "$MK"
fi
PYTHONPATH="$MK/usr/lib/python3/dist-packages" python3 -m mkosi --version >/dev/null 2>&1 ||
  die "mkosi in $MK does not run (python3 -m mkosi --version failed)"
echo "$MK"
