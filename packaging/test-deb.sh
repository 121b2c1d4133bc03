#!/usr/bin/env bash
# Build the Debian package, check its contents, install it on this machine
# and run the packaged binary the way the unit does (as the `sluice` user,
# with /etc/sluice/sluice.toml), on loopback ports given by environment
# overrides; send a message over SMTP with STARTTLS (python3 smtplib) and
# read /metrics and /api/history back.
#
# Needs root (dpkg -i), python3, and network access to crates.io the first
# time (cargo install cargo-deb). Every step is bounded by `timeout`.
#
#   packaging/test-deb.sh              # build, install, test, purge
#   KEEP_INSTALLED=1 packaging/test-deb.sh
#   NO_BUILD=1 packaging/test-deb.sh   # reuse the last .deb
#   DEB_PROFILE=dev packaging/test-deb.sh
#       package the debug binary `cargo test` already built (about a minute
#       instead of a release build; cargo-deb warns that dev is unusual) —
#       for CI, where the packaging is under test, not the optimiser.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
step() { printf '\n== [%3ds] %s\n' $((SECONDS - started)) "$*"; }
die() { echo "FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (dpkg -i, setpriv)"
command -v python3 >/dev/null || die "python3 is needed (smtplib)"

target=${CARGO_TARGET_DIR:-target}
debdir="$target/debian"

if [ -z "${NO_BUILD:-}" ]; then
    if ! cargo deb --version >/dev/null 2>&1; then
        step "cargo install cargo-deb"
        timeout 900 cargo install cargo-deb --locked --version '^3'
    fi
    rm -f "$debdir"/sluice_*.deb
    if [ "${DEB_PROFILE:-release}" = dev ]; then
        step "cargo build (dev) + cargo deb --profile dev"
        timeout 1500 cargo build --locked --bin sluice
        timeout 600 cargo deb --locked --no-build --profile dev --fast
    else
        step "cargo deb (release build)"
        timeout 1500 cargo deb --locked
    fi
fi
deb=$(ls -t "$debdir"/sluice_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "no package in $debdir"
echo "package: $deb ($(du -h "$deb" | cut -f1))"

step "package contents"
contents=$(dpkg -c "$deb")
for path in \
    ./usr/bin/sluice \
    ./etc/sluice/sluice.toml \
    ./usr/share/sluice/scripts/eod.lua \
    ./usr/share/sluice/scripts/examples/rcptto.lua \
    ./usr/share/sluice/lib-lua/axigen.lua \
    ./usr/share/doc/sluice/README.md \
    ./usr/share/doc/sluice/API.md \
    ./usr/share/doc/sluice/config.md \
    ./usr/share/doc/sluice/operations.md \
    ./usr/share/doc/sluice/lua.md; do
    grep -q " $path\$" <<<"$contents" || die "$path missing from the package"
done
# The unit: /usr/lib/systemd/system (the same directory as /lib/systemd/system
# on merged-/usr systems, Debian 12 and later).
grep -Eq ' \./(usr/)?lib/systemd/system/sluice\.service$' <<<"$contents" || die "unit missing"
grep -Eq -- '^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/sluice$' <<<"$contents" || die "sluice not 0755 root"
grep -Eq -- '^-rw-r----- (root/root|0/0) .* \./etc/sluice/sluice\.toml$' <<<"$contents" || die "config not 0640"
ctl=$(mktemp -d)
dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/sluice/sluice.toml "$ctl/conffiles" || die "sluice.toml is not a conffile"
grep -q '^Depends:.*openssl' "$ctl/control" || die "Depends lacks openssl"
grep -q '^Section: mail' "$ctl/control" || die "Section is not mail"
grep -q 'useradd --system' "$ctl/postinst" || die "postinst does not create the user"
rm -rf "$ctl"
echo "contents OK"

step "dpkg -i"
if ! timeout 300 dpkg -i "$deb"; then
    echo "dpkg -i failed (missing dependencies?); trying apt-get -f install"
    timeout 600 apt-get update -qq
    timeout 600 apt-get -f install -y -qq
fi
dpkg -s sluice | grep -q '^Status: install ok installed' || die "not installed"
getent passwd sluice >/dev/null || die "no sluice user"
[ "$(stat -c %U:%a /var/lib/sluice)" = "sluice:750" ] || die "/var/lib/sluice: $(stat -c %U:%a /var/lib/sluice)"
[ "$(stat -c %G:%a /etc/sluice/sluice.toml)" = "sluice:640" ] || die "config mode $(stat -c %G:%a /etc/sluice/sluice.toml)"
[ -s /etc/sluice/tls/cert.pem ] && [ -s /etc/sluice/tls/key.pem ] || die "no certificate generated"
[ "$(stat -c %U:%G:%a /etc/sluice/tls/key.pem)" = "root:sluice:640" ] || die "key mode"

unit=$(ls /usr/lib/systemd/system/sluice.service /lib/systemd/system/sluice.service 2>/dev/null | head -1)
[ -n "$unit" ] || die "unit not installed"
if command -v systemd-analyze >/dev/null; then
    step "systemd-analyze verify"
    out=$(timeout 60 systemd-analyze verify "$unit" 2>&1) || die "systemd-analyze verify: $out"
    # Warnings about the host (no running systemd in a container) are not ours.
    if grep -i 'sluice.service' <<<"$out"; then die "unit warnings: $out"; fi
    echo "unit OK"
fi

as_sluice=(setpriv --reuid=sluice --regid=sluice --init-groups --inh-caps=-all)

step "sluice check -c /etc/sluice/sluice.toml (as sluice)"
timeout 60 "${as_sluice[@]}" /usr/bin/sluice check -c /etc/sluice/sluice.toml

step "start the packaged binary on loopback"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
smtp_port=$(free_port)
http_port=$(free_port)
dead_port=$(free_port)   # nothing listens: deliveries are deferred
work=$(mktemp -d)
chown sluice:sluice "$work"
token=test-$RANDOM$RANDOM
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        sleep 2
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
env_overrides=(
    "SLUICE_LISTENER=[{id=\"inbound\", address=\"127.0.0.1:$smtp_port\", tls=\"starttls\"}]"
    "SLUICE_DATA_DIR=$work/data"
    "SLUICE_CONTROL_SOCKET=$work/control.sock"
    "SLUICE_HTTP__ADDRESS=127.0.0.1:$http_port"
    "SLUICE_HTTP__TOKEN=$token"
    "SLUICE_SMTP__REVERSE_DNS=false"
    "SLUICE_TRANSPORT__DEFAULT__HOST=127.0.0.1:$dead_port"
    "SLUICE_QUEUE__MIN_RETRY_DELAY=1h"
)
(cd "$work" && exec "${as_sluice[@]}" env "${env_overrides[@]}" /usr/bin/sluice run -c /etc/sluice/sluice.toml) \
    >"$work/sluice.log" 2>&1 &
daemon_pid=$!

export SMTP_PORT=$smtp_port HTTP_PORT=$http_port TOKEN=$token
timeout 120 python3 - <<'EOF' || { cat "$work/sluice.log"; die "end-to-end check"; }
import json, os, smtplib, socket, time, urllib.request, urllib.error

smtp_port, http_port, token = int(os.environ["SMTP_PORT"]), int(os.environ["HTTP_PORT"]), os.environ["TOKEN"]
deadline = time.time() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()
        break
    except OSError:
        if time.time() > deadline:
            raise SystemExit("sluice did not start listening")
        time.sleep(0.2)

def get(path, auth=None):
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}")
    if auth:
        req.add_header("Authorization", f"Bearer {auth}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()

def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0

with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
    s.ehlo("client.example.net")
    assert s.has_extn("starttls"), "STARTTLS not offered with the generated certificate"
    s.starttls()
    s.ehlo("client.example.net")
    s.sendmail("sender@example.net", ["user@example.org"],
               b"From: sender@example.net\r\nTo: user@example.org\r\nSubject: package test\r\n\r\nhello\r\n")
print("message accepted")

status, text = get("/metrics")
assert status == 200, status
checks = {
    "sluice_connections_total": 1,
    'sluice_smtp_replies_total{command="DATA",class="2xx"}': 1,
    'sluice_smtp_replies_total{command="STARTTLS",class="2xx"}': 1,
    "sluice_fsync_batches_total": 1,
}
for series, least in checks.items():
    v = metric(text, series)
    assert v >= least, f"{series} = {v}\n{text}"
    print(f"{series} = {v}")
assert "sluice_queue_messages{" in text

status, _ = get("/api/history")
assert status == 401, status
deadline = time.time() + 30
while True:
    status, body = get("/api/history?recipient=user@example.org", token)
    assert status == 200, (status, body)
    rows = json.loads(body)
    if any(r["action"] == "DEFER" for r in rows):
        break
    if time.time() > deadline:
        raise SystemExit(f"no DEFER record: {rows}")
    time.sleep(0.5)
print("history:", [r["action"] for r in rows])
status, text = get("/metrics")
v = metric(text, 'sluice_delivery_attempts_total{result="defer",transport="default"}')
assert v >= 1, text
print("delivery attempts (defer) =", v)
EOF

step "sluice queue stats over the control socket (as sluice)"
stats=$(timeout 30 "${as_sluice[@]}" env "SLUICE_CONTROL_SOCKET=$work/control.sock" "SLUICE_DATA_DIR=$work/data" \
    /usr/bin/sluice queue stats --json -c /etc/sluice/sluice.toml)
echo "$stats"
grep -q '"entries": 1' <<<"$stats" || die "expected one queued entry"

step "SIGTERM: graceful stop"
kill -TERM "$daemon_pid"
for _ in $(seq 1 400); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$daemon_pid" 2>/dev/null; then die "still running 40 s after SIGTERM"; fi
wait "$daemon_pid" || die "exit status $? after SIGTERM"
daemon_pid=
grep -q 'server stopped' "$work/sluice.log" || { cat "$work/sluice.log"; die "no clean stop in the log"; }

if [ -z "${KEEP_INSTALLED:-}" ]; then
    step "dpkg --purge"
    timeout 120 dpkg --purge sluice
    [ ! -e /usr/bin/sluice ] || die "/usr/bin/sluice left behind"
fi

step "package test passed"
