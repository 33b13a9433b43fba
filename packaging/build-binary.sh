#!/usr/bin/env bash
# Builds the release binary reproducibly and copies it to dist/netsy.
#
# Same commit + same toolchain => same bytes, wherever the checkout and the cargo home live:
#   - the toolchain is pinned (RUSTUP_TOOLCHAIN, default 1.95.0, the crate's rust-version);
#   - --locked: Cargo.lock decides every dependency version;
#   - paths of the checkout, the target dir and the cargo registry are remapped in Rust
#     (--remap-path-prefix) and in C code built by cc-rs (sqlite, zstd, ring: -ffile-prefix-map);
#   - cargo runs with SOURCE_DATE_EPOCH=0, a constant: nothing in the binary stamps a date, but
#     cc-rs reruns the C crates' build scripts (ring, sqlite, zstd) whenever the variable
#     changes, so the commit time would rebuild them and everything above them on every commit;
#   - the build id is a hash of the content (ld --build-id=sha1), not random.
# Usage: packaging/build-binary.sh            (prints the path of the binary on the last line)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

export RUSTUP_TOOLCHAIN=${NETSY_RUST_TOOLCHAIN:-1.95.0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}
COMMIT_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

maps=("$ROOT=/usr/src/netsy" "$CARGO_HOME_DIR=/usr/src/cargo")
case "$CARGO_TARGET_DIR" in "$ROOT"/*) ;; *) maps=("$CARGO_TARGET_DIR=/usr/src/netsy/target" "${maps[@]}");; esac
rf=() cf=()
for m in "${maps[@]}"; do rf+=("--remap-path-prefix=$m"); cf+=("-ffile-prefix-map=$m"); done
export RUSTFLAGS="${rf[*]} -C link-arg=-Wl,--build-id=sha1"
export CFLAGS="${cf[*]}" CXXFLAGS="${cf[*]}"
export CARGO_INCREMENTAL=0

SOURCE_DATE_EPOCH=0 timeout 3600 cargo build --release --locked --bin netsy >&2
mkdir -p dist
install -m 0755 "$CARGO_TARGET_DIR/release/netsy" dist/netsy
touch -d "@$COMMIT_EPOCH" dist/netsy
echo "$ROOT/dist/netsy"
