#!/usr/bin/env bash
# The cost of a greylist check at RCPT on `sluice bench` throughput: the
# same load against Sluice (a) without scripts, (b) with an rcptto script
# calling require("greylist").check (lib-lua/greylist.lua, [state] backend
# "local"), (c) the same on Redis (a redis-server this script starts).
# The triplet is warmed first (delay = 0), so every measured RCPT is the
# steady state of a known triplet: two memory.get calls.
#
#   benches/greylist-overhead.sh [CONNS] [MESSAGES] [SIZE]   (defaults 50 20000 10240)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
C=${1:-50}; M=${2:-20000}; L=${3:-10240}; PORT=2546; RPORT=6391
bench_setup
cat > "$WORK/rcptto.lua" <<'LUA'
local greylist = require("greylist")
local v = greylist.check({ip = connection.remoteip, sender = transaction.sender,
  recipient = arguments.recipient, delay = 0})
if v == "defer" then Defer("Greylisted, try again later") end
LUA
SCRIPT="[scripts]
lib_path = [\"$PWD/lib-lua\"]
rcptto = \"$WORK/rcptto.lua\""
# No DNS in the measurement: the built-in Authentication-Results is off.
start() { start_sluice $PORT "[queue]
deliver = false
[auth]
results = false
$1"; }
run() { $BIN bench --target 127.0.0.1:$PORT -n "$C" -m "$M" -s "$L"; }
start ""
echo "(a) no rcptto script:"; run
stop_sluice; sync; sleep 2
start "$SCRIPT"
$BIN bench --target 127.0.0.1:$PORT -n 1 -m 1 -s 1000 --timeout 10s >/dev/null 2>&1 || true   # first sight: deferred
echo "(b) greylist.check at RCPT, local state:"; run
stop_sluice; sync; sleep 2
if command -v redis-server >/dev/null; then
  redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null 2>&1 & REDIS_PID=$!
  trap 'kill $REDIS_PID 2>/dev/null; bench_cleanup' EXIT
  sleep 0.5
  start "$SCRIPT
[state]
backend = \"redis\"
redis_url = \"redis://127.0.0.1:$RPORT/0\""
  $BIN bench --target 127.0.0.1:$PORT -n 1 -m 1 -s 1000 --timeout 10s >/dev/null 2>&1 || true
  echo "(c) greylist.check at RCPT, Redis state:"; run
else
  echo "(c) skipped: no redis-server"
fi
