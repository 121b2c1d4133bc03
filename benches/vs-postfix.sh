#!/usr/bin/env bash
# Sluice vs Postfix intake, side by side on this machine, in one run.
#
#   benches/vs-postfix.sh [SESSIONS] [MESSAGES] [SIZE]     (defaults 50 20000 10240)
#
# Needs root (it installs and configures Debian's postfix on 127.0.0.1:2526,
# messages put on hold so only intake is measured) and a release build.
# Clients: Postfix's smtp-source and `sluice bench`. Ceiling: smtp-source
# against smtp-sink (the tool's own limit). Both servers fsync before 250.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
S=${1:-50}; M=${2:-20000}; L=${3:-10240}
SLUICE_PORT=2525; POSTFIX_PORT=2526; SINK_PORT=2527
USES_POSTFIX=1
bench_setup

timed() { # prints msg/s for "$@" sending $M messages
  local t0 t1
  sync; sleep 2 # let the previous run's writeback settle: both servers fsync
  t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
  echo "scale=0; $M / ($t1 - $t0)" | bc
}

# --- Postfix: intake only (HOLD), fsync as shipped ---
postconf -e "inet_interfaces = 127.0.0.1" "mydestination =" "relay_domains = example.org" \
  "mynetworks = 127.0.0.0/8" "smtpd_end_of_data_restrictions = check_client_access static:HOLD" \
  "default_process_limit = 200" "smtpd_client_connection_count_limit = 0" \
  "smtpd_client_connection_rate_limit = 0" "smtpd_banner = bench ESMTP"
postconf -Me "$POSTFIX_PORT/inet=$POSTFIX_PORT inet n - y - - smtpd"
postfix stop >/dev/null 2>&1 || true
postsuper -d ALL hold >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1
sleep 1

# --- smtp-sink: the client tool's ceiling ---
start_sink $SINK_PORT

# --- Sluice on its defaults (fsync on), data in a temp dir ---
start_sluice $SLUICE_PORT "[queue]
deliver = false   # intake only, like Postfix's HOLD here"

echo "== $M messages of $L bytes over $S sessions =="
printf "%-42s %10s\n" "run" "msg/s"
printf "%-42s %10s\n" "smtp-source -> smtp-sink (tool ceiling)" "$(timed smtp-source -s "$S" -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:$SINK_PORT)"
printf "%-42s %10s\n" "smtp-source -> postfix" "$(timed smtp-source -s "$S" -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:$POSTFIX_PORT)"
printf "%-42s %10s\n" "smtp-source -> sluice" "$(timed smtp-source -s "$S" -m "$M" -l "$L" -f a@example.net -t b@example.org 127.0.0.1:$SLUICE_PORT)"
echo
sync; sleep 2
echo "sluice bench -> postfix:"; $BIN bench --target 127.0.0.1:$POSTFIX_PORT -n "$S" -m "$M" -s "$L"
sync; sleep 2
echo "sluice bench -> sluice:";  $BIN bench --target 127.0.0.1:$SLUICE_PORT -n "$S" -m "$M" -s "$L"
echo
echo "idle connections held by sluice (5000) with load running:"
$BIN bench --target 127.0.0.1:$SLUICE_PORT -n 10 -m 1000 -s "$L" --idle 5000
echo "sluice RSS with 5000 idle + load done: $(rss)"
