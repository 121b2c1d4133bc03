#!/usr/bin/env bash
# 10,000 slow clients (one byte per second, a command line that never ends):
# the daemon's RSS with all of them connected, its VmHWM, and every one timed
# out with 421 4.4.2 by [limits] command_timeout (15 s here). The CI test
# tests/memory.rs two_thousand_slow_clients_cost_little_and_time_out runs 2,000.
#
#   benches/slow-clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --release --test memory ten_thousand_slow_clients -- --ignored --nocapture 2>&1 \
  | grep -E 'slow clients|test result|panicked'
