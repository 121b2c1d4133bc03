#!/usr/bin/env bash
# Relay soak: ROUNDS rounds of smtp-source -> Sluice -> smtp-sink, waiting
# for the queue to drain after each; prints msg/s and the size of the queue
# and history databases after every round. Catches throughput that decays
# round after round and disk space that is never reused.
#
#   benches/relay-rounds.sh [ROUNDS] [MESSAGES] [SIZE]     (defaults 5 20000 10240)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; M=${2:-20000}; L=${3:-10240}
PORT=2545; SINK_PORT=2547
command -v smtp-source >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null; }
cargo build --release -q
BIN=$PWD/target/release/sluice
WORK=$(mktemp -d)
cleanup() {
  [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
  [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
smtp-sink -u nobody -c 127.0.0.1:$SINK_PORT 1000 >/dev/null 2>&1 & SINK_PID=$!
cat > "$WORK/sluice.toml" <<TOML
hostname = "mx.bench.example"
data_dir = "$WORK/var"
control_socket = "$WORK/var/control.sock"
[[listener]]
id = "inbound"
address = "127.0.0.1:$PORT"
[limits]
connections_per_ip = 20000
[transport.default]
host = "127.0.0.1:$SINK_PORT"
tls = "none"
concurrency = 100
connections_per_destination = 50
TOML
RUST_LOG=warn $BIN run -c "$WORK/sluice.toml" 2>"$WORK/sluice.log" & SLUICE_PID=$!
sleep 1
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
