# Shared by the benchmark scripts (source it): build, a scratch directory
# removed on exit, Sluice on a bench config, smtp-sink as a next hop.
#
#   bench_setup                 release build (or $BENCH_BIN), $BIN, $WORK, the exit trap,
#                               a loopback DNS stub ($DNS_PORT) Sluice uses
#   start_sluice PORT [TOML]    run Sluice on 127.0.0.1:PORT with TOML appended
#                               (fresh data dir each time); sets $SLUICE_PID
#   stop_sluice                 SIGTERM it and wait
#   start_sink PORT             smtp-sink on 127.0.0.1:PORT; sets $SINK_PID
#   relay_to PORT               TOML: the default transport to 127.0.0.1:PORT
#   rss                         "VmRSS; peak VmHWM" of the running Sluice
#   postfix_save                keep /etc/postfix's config; the exit trap
#                               puts it back and stops Postfix
#
# Sluice logs at warn unless BENCH_DEFAULT_LOGGING=1 is set by the caller
# (compare.sh: the daemon's default, info, one line per event, to a file).

bench_setup() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  command -v smtp-source >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
  }
  # BENCH_BIN: another build (an older commit's, say) measured by the
  # same script, for before/after figures in one run.
  if [ -n "${BENCH_BIN:-}" ]; then
    BIN=$BENCH_BIN
  else
    cargo build --release -q
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/sluice
  fi
  WORK=$(mktemp -d)
  ulimit -n 65536 2>/dev/null || true
  trap bench_cleanup EXIT
  # This machine's network is closed: without a resolver that answers, each
  # SPF/DMARC lookup of the sender waits out the timeout (5 s a message).
  DNS_PORT=${DNS_PORT:-2553}
  python3 benches/dns-stub.py "$DNS_PORT" & DNS_PID=$!
}

bench_cleanup() {
  [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
  [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "${DNS_PID:-}" ] && kill "$DNS_PID" 2>/dev/null || true
  [ -n "${USES_POSTFIX:-}" ] && { postfix stop >/dev/null 2>&1 || true; }
  if [ -n "${POSTFIX_SAVED:-}" ]; then
    cp -p "$POSTFIX_SAVED/main.cf" "$POSTFIX_SAVED/master.cf" /etc/postfix/
    postsuper -d ALL >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}

start_sluice() {
  rm -rf "$WORK/var"
  cat > "$WORK/sluice.toml" <<TOML
hostname = "mx.bench.example"
data_dir = "$WORK/var"
control_socket = "$WORK/var/control.sock"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[[listener]]
id = "inbound"
address = "127.0.0.1:$1"
[limits]
connections_per_ip = 20000
connections = 20000
${2:-}
TOML
  if [ -n "${BENCH_DEFAULT_LOGGING:-}" ]; then
    env -u RUST_LOG $BIN run -c "$WORK/sluice.toml" 2>"$WORK/sluice.log" & SLUICE_PID=$!
  else
    RUST_LOG=warn $BIN run -c "$WORK/sluice.toml" 2>"$WORK/sluice.log" & SLUICE_PID=$!
  fi
  sleep 1
}

stop_sluice() {
  kill "$SLUICE_PID" 2>/dev/null || true
  wait "$SLUICE_PID" 2>/dev/null || true
  SLUICE_PID=
}

start_sink() {
  smtp-sink -u nobody -c "127.0.0.1:$1" 1000 >/dev/null 2>&1 & SINK_PID=$!
}

relay_to() {
  printf '[transport.default]\nhost = "127.0.0.1:%s"\ntls = "none"\nconcurrency = 100\nconnections_per_destination = 50\n' "$1"
}

postfix_save() {
  POSTFIX_SAVED="$WORK/postfix-etc"
  mkdir -p "$POSTFIX_SAVED"
  cp -p /etc/postfix/main.cf /etc/postfix/master.cf "$POSTFIX_SAVED/"
  USES_POSTFIX=1
}

rss() {
  echo "$(awk '/VmRSS/{print $2" "$3}' "/proc/$SLUICE_PID/status"); peak $(awk '/VmHWM/{print $2" "$3}' "/proc/$SLUICE_PID/status")"
}

# CPU time (user + system, in clock ticks) the running Sluice has used so
# far: `cpu_ticks` before and after a load gives its CPU per message, a
# steadier figure than throughput on a shared 2-core machine.
cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$SLUICE_PID/stat"
}

# "N µs CPU/message" for the ticks used between $1 and now over $2 messages.
cpu_per_message() {
  local now; now=$(cpu_ticks)
  awk -v a="$1" -v b="$now" -v n="$2" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.0f µs CPU/message (Sluice, user+system)\n", (b - a) * 1e6 / hz / n }'
}
