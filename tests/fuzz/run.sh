#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for a bounded time and reports, per target, how many
# inputs were executed; ends with "N passed, M failed". A target fails when libFuzzer finds a
# crash, a hang or a leak (the input is saved under fuzz/artifacts/<target>/; make it a
# regression test in the normal suite, then fix).
#
#   FUZZ_SECONDS  time per target (default 60)
#   FUZZ_JOBS     cargo build jobs (default: all cores)
#   FUZZ_TARGET_DIR  build directory, kept between runs (default ~/.cache/netsy-fuzz/target)
#   FUZZ_TARGETS  space-separated subset (default: all)
#
# cargo-fuzz needs the nightly toolchain (sanitizer flags); without it this fails, saying so.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
secs=${FUZZ_SECONDS:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-datafile api config}"

fail_all() {
  echo "fuzz: $1"
  echo "0 passed, ${#targets[@]} failed"
  exit 1
}

cargo +nightly --version >/dev/null 2>&1 ||
  fail_all "the nightly Rust toolchain is not installed; cargo-fuzz needs it (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 ||
  fail_all "cargo-fuzz is not installed (tests/install.sh installs it)"

# -a: debug assertions, so integer overflow panics and is found too. No sanitizer: the code
# under test is safe Rust, and an ASan build of the whole dependency tree costs ~4x the time.
flags=(-a -s none)
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/netsy-fuzz/target}
jobs=${FUZZ_JOBS:-$(nproc)}
start=$(date +%s)
echo "fuzz: building ${targets[*]} ($(cargo +nightly --version))"
CARGO_BUILD_JOBS=$jobs cargo +nightly fuzz build "${flags[@]}" 2>&1 | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || fail_all "building the fuzz targets failed"
echo "fuzz: built in $(($(date +%s) - start)) s"

seeds_of() {
  case $1 in
    datafile) echo "$root/tests/vectors" ;;
    *) echo "$root/fuzz/seeds/$1" ;;
  esac
}

passed=0
failed=0
for t in "${targets[@]}"; do
  corpus="$root/fuzz/corpus/$t"
  mkdir -p "$corpus"
  log=$(mktemp)
  CARGO_BUILD_JOBS=$jobs cargo +nightly fuzz run "${flags[@]}" "$t" "$corpus" "$(seeds_of "$t")" -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -1)
  [ -n "$execs" ] || execs=$(grep -oE 'Done [0-9]+ runs' "$log" | awk '{print $2}' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $t: ok, ${execs:-?} executions in ${secs} s (${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) inputs)"
  else
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc) after ${execs:-?} executions; libFuzzer's report:"
    grep -vE '^(#[0-9]+|INFO:)' "$log" | tail -40 | sed 's/^/    /'
    ls "$root/fuzz/artifacts/$t/" 2>/dev/null | sed "s|^|    artifact: fuzz/artifacts/$t/|"
  fi
  rm -f "$log"
done
echo "fuzz: total $(($(date +%s) - start)) s"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
