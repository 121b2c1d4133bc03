#!/usr/bin/env bash
# End-to end relay, Sluice vs Postfix, in one run on this machine:
#   smtp-source -> {sluice | postfix} -> smtp-sink
# fsync on for both, Sluice's history on. The figure is messages per second
# from the first connection until the queue is empty again.
#
#   benches/relay-vs-postfix.sh [SESSIONS] [MESSAGES] [SIZE]   (defaults 50 20000 10240)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
S=${1:-50}; M=${2:-20000}; L=${3:-10240}
SLUICE_PORT=2535; POSTFIX_PORT=2536; SINK_PORT=2537
USES_POSTFIX=1
bench_setup
start_sink $SINK_PORT

postconf -e "inet_interfaces = 127.0.0.1" "mydestination =" "relay_domains = example.org" \
  "mynetworks = 127.0.0.0/8" "smtpd_end_of_data_restrictions =" "relayhost = [127.0.0.1]:$SINK_PORT" \
  "default_process_limit = 200" "smtpd_client_connection_count_limit = 0" \
  "smtpd_client_connection_rate_limit = 0" "smtp_tls_security_level = none"
postconf -Me "$POSTFIX_PORT/inet=$POSTFIX_PORT inet n - y - - smtpd"
postfix stop >/dev/null 2>&1 || true
postsuper -d ALL >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1; sleep 1

start_sluice $SLUICE_PORT "$(relay_to $SINK_PORT)"

run() { # name port drained-check
  local name=$1 port=$2 check=$3 t0 t1 i
  sync; sleep 2
  t0=$(date +%s.%N)
  smtp-source -s "$S" -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:"$port" >/dev/null
  for i in $(seq 1 1200); do eval "$check" && break; sleep 0.1; done
  t1=$(date +%s.%N)
  printf "%-28s %8.0f msg/s (%d messages in %.1fs)\n" "$name" "$(echo "$M / ($t1 - $t0)" | bc -l)" "$M" "$(echo "$t1 - $t0" | bc -l)"
}
echo "== relay of $M messages of $L bytes over $S sessions, to smtp-sink =="
run "postfix -> smtp-sink" $POSTFIX_PORT 'mailq 2>/dev/null | grep -q "Mail queue is empty"'
run "sluice -> smtp-sink" $SLUICE_PORT '[ "$($BIN queue stats --json -c "$WORK/sluice.toml" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"entries\"])")" = 0 ]'
echo "sluice history records: $($BIN history --limit 100000000 --json -c "$WORK/sluice.toml" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
