#!/usr/bin/env bash
# Every row of the performance table, Sluice and Postfix side by side in one
# run on this machine, with ratios. Both fsync before they say 250; Sluice
# runs on its defaults (only the listener, the next hop where there is one,
# and connection limits high enough for the idle row), with its default
# logging (info, one line per event) to a file.
#
#   benches/compare.sh [SESSIONS] [MESSAGES] [SIZE]     (defaults 50 20000 10240)
#
# Rows:
#   intake   smtp-source -> server, delivery off (Postfix: HOLD)
#   relay    smtp-source -> server -> smtp-sink until the queue is empty,
#            history on, default transport settings
#   reject   smtp-source -A, every RCPT refused (Sluice: a Lua rcptto
#            script's Reject(), history on; Postfix: reject_unauth_destination)
#   idle     19,000 connections after EHLO held while load runs: RSS each
# "ceiling" is the load tool against smtp-sink: the most it can measure.
#
# Needs root: it configures Debian's postfix on 127.0.0.1 and puts
# /etc/postfix back as it was when it exits.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
S=${1:-50}; M=${2:-20000}; L=${3:-10240}
IDLE=${IDLE:-19000}
SLUICE_PORT=2555; POSTFIX_PORT=2556; SINK_PORT=2557; RSINK_PORT=2558
BENCH_DEFAULT_LOGGING=1
bench_setup
postfix_save
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rate() { echo "scale=0; $1 / ($2 - $3)" | bc; }
ratio() { echo "scale=2; $1 / $2" | bc; }
source_to() { # port [extra smtp-source flags] -> msg/s for $M messages
  local port=$1 t0 t1; shift
  sync; sleep 2 # let the previous run's writeback settle: both servers fsync
  t0=$(date +%s.%N)
  timeout 600 smtp-source "$@" -s "$S" -m "$M" -l "$L" -f a@example.net -t "${RCPT:-b@example.org}" 127.0.0.1:"$port" >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  rate "$M" "$t1" "$t0"
}
until_drained() { # port check -> msg/s from first connection to empty queue
  local port=$1 check=$2 t0 t1 i
  sync; sleep 2
  t0=$(date +%s.%N)
  timeout 600 smtp-source -s "$S" -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:"$port" >/dev/null
  for i in $(seq 1 3000); do eval "$check" && break; sleep 0.1; done
  t1=$(date +%s.%N)
  rate "$M" "$t1" "$t0"
}
postfix_with() { # postconf -e settings for this row, then (re)start
  postfix stop >/dev/null 2>&1 || true
  cp -p "$POSTFIX_SAVED/main.cf" "$POSTFIX_SAVED/master.cf" /etc/postfix/
  postconf -e "inet_interfaces = 127.0.0.1" "mydestination =" "relay_domains = example.org" \
    "mynetworks = 127.0.0.0/8" "default_process_limit = 200" \
    "smtpd_client_connection_count_limit = 0" "smtpd_client_connection_rate_limit = 0" \
    "smtpd_banner = bench ESMTP" "smtp_tls_security_level = none" "$@"
  postconf -Me "$POSTFIX_PORT/inet=$POSTFIX_PORT inet n - y - - smtpd"
  postsuper -d ALL >/dev/null 2>&1 || true
  postfix start >/dev/null 2>&1
  sleep 1
}
queue_empty='[ "$($BIN queue stats --json -c "$WORK/sluice.toml" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"entries\"])")" = 0 ]'
declare -A R

start_sink $SINK_PORT
echo "== $M messages of $L bytes over $S sessions; $(nproc) cores; $(date -u +%FT%TZ) =="

# --- intake ---
R[intake_ceiling]=$(source_to $SINK_PORT)
postfix_with "smtpd_end_of_data_restrictions = check_client_access static:HOLD"
R[intake_postfix]=$(source_to $POSTFIX_PORT)
start_sluice $SLUICE_PORT "[queue]
deliver = false"
R[intake_sluice]=$(source_to $SLUICE_PORT)
stop_sluice

# --- relay ---
postfix_with "relayhost = [127.0.0.1]:$SINK_PORT"
R[relay_postfix]=$(until_drained $POSTFIX_PORT 'mailq 2>/dev/null | grep -q "Mail queue is empty"')
start_sluice $SLUICE_PORT "[transport.default]
host = \"127.0.0.1:$SINK_PORT\""
R[relay_sluice]=$(until_drained $SLUICE_PORT "$queue_empty")
R[relay_history]=$($BIN history --limit 100000000 --json -c "$WORK/sluice.toml" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
stop_sluice

# --- reject at RCPT ---
# A domain nobody here serves: every RCPT is refused (read by source_to).
RCPT=b@example.com
smtp-sink -u nobody -r RCPT -c "127.0.0.1:$RSINK_PORT" 1000 >/dev/null 2>&1 & RSINK_PID=$!
R[reject_ceiling]=$(source_to $RSINK_PORT -A)
kill $RSINK_PID 2>/dev/null || true
postfix_with "mynetworks = 192.0.2.1/32" "smtpd_relay_restrictions = reject_unauth_destination"
R[reject_postfix]=$(source_to $POSTFIX_PORT -A)
cat > "$WORK/rcptto.lua" <<'LUA'
-- Recipients of domains we do not serve: refused by the script itself.
local local_domains = { ["example.org"] = "default" }
local t = local_domains[arguments.address.domain]
if t then Pass({transportid = t}) end
Reject("relay access denied")
LUA
start_sluice $SLUICE_PORT "[scripts]
rcptto = \"$WORK/rcptto.lua\"
[queue]
deliver = false"
R[reject_sluice]=$(source_to $SLUICE_PORT -A)
R[reject_history]=$($BIN history --limit 100000000 --json -c "$WORK/sluice.toml" | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["action"]=="REJECT"))')
stop_sluice

# --- idle connections ---
# Their cost is what holding them adds while load runs: the same load
# first without them (the base: queue cache, allocator warmed), then with.
start_sluice $SLUICE_PORT "[queue]
deliver = false"
$BIN bench --target 127.0.0.1:$SLUICE_PORT -n 10 -m 2000 -s "$L" >/dev/null 2>&1 || true
base_kb=$(awk '/VmHWM/{print $2}' "/proc/$SLUICE_PID/status")
$BIN bench --target 127.0.0.1:$SLUICE_PORT -n 10 -m 2000 -s "$L" --idle "$IDLE" --idle-ehlo >"$WORK/idle.txt" 2>&1 || true
rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$SLUICE_PID/status")
R[idle_held]=$(grep -o 'idle held [0-9]*' "$WORK/idle.txt" | awk '{print $3}')
stop_sluice

echo
printf "%-34s %10s %10s %10s %8s %8s\n" "row" "sluice" "postfix" "ceiling" "×postfix" "×ceiling"
row() { printf "%-34s %10s %10s %10s %8s %8s\n" "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")" "${4:+$(ratio "$2" "$4")}"; }
row "intake (msg/s)" "${R[intake_sluice]}" "${R[intake_postfix]}" "${R[intake_ceiling]}"
row "relay to smtp-sink (msg/s)" "${R[relay_sluice]}" "${R[relay_postfix]}" ""
row "reject at RCPT by Lua (/s)" "${R[reject_sluice]}" "${R[reject_postfix]}" "${R[reject_ceiling]}"
echo "relay: $M messages, ${R[relay_history]} history records; reject: ${R[reject_history]} REJECT records"
held=${R[idle_held]:-0}
echo "idle: $held connections after EHLO held while 2,000 messages flow: peak RSS $((rss_kb / 1024)) MiB, $((base_kb / 1024)) MiB with the load alone = $(( (rss_kb - base_kb) * 1024 / (held > 0 ? held : 1) )) bytes each"
