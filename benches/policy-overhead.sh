#!/usr/bin/env bash
# Policy engine overhead: the same load against Sluice (a) with no scripts and
# (b) with scripts on every stage doing typical work (benches/scripts/*.lua),
# then memory with 10,000 connections that ran the connect and helo hooks.
#
#   benches/policy-overhead.sh [CONNS] [MESSAGES] [SIZE]   (defaults 50 20000 10240)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
C=${1:-50}; M=${2:-20000}; L=${3:-10240}; PORT=2545
bench_setup
start() { # $1 = extra toml
  start_sluice $PORT "[queue]
deliver = false
$1"
}
S=$PWD/benches/scripts
SCRIPTS="[scripts]
connect = \"$S/connect.lua\"
helo = \"$S/helo.lua\"
mailfrom = \"$S/mailfrom.lua\"
rcptto = \"$S/rcptto.lua\"
eod = \"$S/eod.lua\""
start ""
echo "(a) no scripts:"
T0=$(cpu_ticks)
$BIN bench --target 127.0.0.1:$PORT -n "$C" -m "$M" -s "$L"
cpu_per_message "$T0" "$M"
stop_sluice
sync; sleep 2
start "$SCRIPTS"
echo "(b) scripts on every stage:"
T0=$(cpu_ticks)
$BIN bench --target 127.0.0.1:$PORT -n "$C" -m "$M" -s "$L"
cpu_per_message "$T0" "$M"
echo "(c) 10,000 connections after connect+helo hooks, held while 1,000 messages flow:"
$BIN bench --target 127.0.0.1:$PORT -n 10 -m 1000 -s "$L" --idle 10000 --idle-ehlo
echo "RSS now: $(rss)"
