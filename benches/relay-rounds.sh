#!/usr/bin/env bash
# Relay soak: ROUNDS rounds of smtp-source -> Sluice -> smtp-sink, waiting
# for the queue to drain after each; prints msg/s and the size of the queue
# and history databases after every round. Catches throughput that decays
# round after round and disk space that is never reused.
#
#   benches/relay-rounds.sh [ROUNDS] [MESSAGES] [SIZE]     (defaults 5 20000 10240)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}; M=${2:-20000}; L=${3:-10240}
PORT=2545; SINK_PORT=2547
bench_setup
start_sink $SINK_PORT
start_sluice $PORT "$(relay_to $SINK_PORT)"
queued() { $BIN queue stats --json -c "$WORK/sluice.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["entries"])'; }
echo "== $ROUNDS rounds of $M messages of $L bytes, relayed to smtp-sink =="
for r in $(seq 1 "$ROUNDS"); do
  t0=$(date +%s.%N)
  smtp-source -s 50 -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:$PORT
  for _ in $(seq 1 3000); do [ "$(queued)" = 0 ] && break; sleep 0.1; done
  t1=$(date +%s.%N)
  printf "round %d: %6.0f msg/s  queue db %s  history db %s  still queued %s\n" "$r" \
    "$(echo "$M / ($t1 - $t0)" | bc -l)" "$(du -sh "$WORK/var/db" | cut -f1)" \
    "$(du -sh "$WORK/var/history" | cut -f1)" "$(queued)"
done
