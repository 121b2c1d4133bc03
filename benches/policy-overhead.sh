#!/usr/bin/env bash
# Policy engine overhead: the same load against Sluice (a) with no scripts and
# (b) with scripts on every stage doing typical work (benches/scripts/*.lua),
# then memory with 10,000 connections that ran the connect and helo hooks.
#
#   benches/policy-overhead.sh [CONNS] [MESSAGES] [SIZE]   (defaults 50 20000 10240)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-50}; M=${2:-20000}; L=${3:-10240}; PORT=2545
cargo build --release -q
BIN=$PWD/target/release/sluice
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
start() { # $1 = extra toml
  rm -rf "$WORK/var"
  cat > "$WORK/s.toml" <<TOML
hostname = "mx.bench.example"
data_dir = "$WORK/var"
control_socket = "$WORK/var/control.sock"
[[listener]]
id = "inbound"
address = "127.0.0.1:$PORT"
[limits]
connections_per_ip = 20000
connections = 20000
[queue]
deliver = false
$1
TOML
  RUST_LOG=warn $BIN run -c "$WORK/s.toml" 2>"$WORK/log" & PID=$!
  sleep 1
}
S=$PWD/benches/scripts
SCRIPTS="[scripts]
connect = \"$S/connect.lua\"
helo = \"$S/helo.lua\"
mailfrom = \"$S/mailfrom.lua\"
rcptto = \"$S/rcptto.lua\"
eod = \"$S/eod.lua\""
start ""
echo "(a) no scripts:";  $BIN bench --target 127.0.0.1:$PORT -n "$C" -m "$M" -s "$L"
kill $PID; wait $PID 2>/dev/null || true
sync; sleep 2
start "$SCRIPTS"
echo "(b) scripts on every stage:"; $BIN bench --target 127.0.0.1:$PORT -n "$C" -m "$M" -s "$L"
echo "(c) 10,000 connections after connect+helo hooks, held while 1,000 messages flow:"
$BIN bench --target 127.0.0.1:$PORT -n 10 -m 1000 -s "$L" --idle 10000 --idle-ehlo
echo "RSS now: $(awk '/VmRSS/{print $2" "$3}' /proc/$PID/status); peak $(awk '/VmHWM/{print $2" "$3}' /proc/$PID/status)"
