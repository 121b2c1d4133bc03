#!/usr/bin/env bash
# The fuzz targets of tests/fuzz.rs for longer: each target gets SECONDS/8
# (default one hour in all), release build, one target per core. Prints the
# executions and findings per target; failing inputs are saved under
# $TMPDIR/sluice-fuzz/ and printed in hex (add them to fuzz/regressions/).
#
#   benches/fuzz-long.sh [SECONDS] [SEED]
#   FUZZ_THREADS=1 nice benches/fuzz-long.sh 3600   one core, out of the way
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-3600}
export FUZZ_SECONDS=$(( TOTAL / 8 ))
[ -n "${2:-}" ] && export FUZZ_SEED=$2
cargo test --release --test fuzz -- --nocapture --test-threads="${FUZZ_THREADS:-2}" 2>&1 \
  | grep -E '^fuzz |finding|saved|hex|test result' || true
