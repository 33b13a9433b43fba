#!/usr/bin/env bash
# Soak: cycles every nemesis of tests/faults.rs with fresh seeds for HOURS (default 1), 60 s of
# faults per run, each history checked for linearizability and watch guarantees. A failing run
# prints its seed; replay it with NETSY_TEST_SEED=<seed> NETSY_NEMESIS=<name>
# cargo test --release --test faults fault_suite_fixed_seeds -- --nocapture.
# Usage: tests/faults/soak.sh [HOURS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/../.."
hours=${1:-1}
secs=$(python3 -c "print(int(float('$hours') * 3600))")
./tests/install.sh
if [ -n "${2:-}" ]; then export NETSY_TEST_SEED=$2; fi
NETSY_SOAK_SECS=$secs exec cargo test --locked --release --test faults soak -- --ignored --nocapture
