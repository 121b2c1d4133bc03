#!/usr/bin/env bash
# kill -9 under load, many times: tests/crash.rs with CRASH_TRIALS trials
# (default 100). Each trial starts a fresh daemon, sends mail over 25
# connections, kills it with SIGKILL at a different point of the load,
# restarts it and checks every acknowledged message is queued byte-identical
# and nothing is half-present. Prints acknowledged vs found per trial and
# the total; any loss fails the run.
#
#   benches/kill9.sh [TRIALS]            release build
#   PROFILE=dev benches/kill9.sh 100     the debug build the tests use
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-100}
PROFILE=${PROFILE:-release}
flags=()
[ "$PROFILE" = release ] && flags=(--release)
CRASH_TRIALS=$TRIALS cargo test "${flags[@]}" --test crash -- --nocapture --test-threads=1 2>&1 \
  | grep -E '^crash trial|^test |panicked|^test result'
