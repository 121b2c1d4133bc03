//! Shared state (issue 17) against a real redis-server and HAProxy from
//! Debian, which the tests start themselves in temp dirs (and fail without):
//! the Lua API on both backends with one test body, two Sluice nodes behind
//! HAProxy (round robin, PROXY v2) sharing rate limits and greylist entries,
//! counters surviving a restart, Redis killed or frozen mid-run under both
//! `on_error` settings, fleet-wide `connections_per_ip`, `http()` against a
//! local HTTP server, and `sluice state get|del|stats`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, wait_until, Client, TestServer};
use sluice::config::Config;
use sluice::policy::{Hook, HookVerdict, PolicyEngine, ScriptSource};
use sluice::state::StateStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- redis-server and haproxy ----------------------------------------------

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if r.ping() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer PING on {port}");
    }

    /// TLS only (rediss://), with `cert`/`key` from `common::make_cert`.
    fn start_tls(cert: &Path, key: &Path) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server --tls-port did not listen on {port}");
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) server must be continued to die promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        self.kill();
    }
}

struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Round robin over `backends`, PROXY protocol v2 to each.
    fn start(backends: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 100\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg.push_str(&format!("  server n{i} {b} send-proxy-v2\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy) must be installed");
        let h = Haproxy {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return h;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("haproxy did not listen on {port}");
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lib_lua() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lib-lua")
}

/// A TestServer whose rcptto hook runs `script`, with `[state]` `state`.
async fn node(id: &str, proxy: bool, state: &str, script: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rcptto.lua");
    std::fs::write(&path, script).unwrap();
    let path = dir.keep().join("rcptto.lua");
    TestServer::start(&format!(
        "[[listener]]\nid = {id:?}\naddress = \"127.0.0.1:0\"\nproxy_protocol = {proxy}\n\
         [relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n\
         [scripts]\nlib_path = [{:?}]\nrcptto = {path:?}\n\
         [state]\n{state}\n",
        lib_lua()
    ))
    .await
}

async fn rcpt(addr: SocketAddr, from: &str, to: &str) -> (common::Reply, Duration) {
    let mut c = Client::connect(addr).await;
    c.greet().await;
    c.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    let started = Instant::now();
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    let took = started.elapsed();
    c.send_raw(b"QUIT\r\n").await;
    (r, took)
}

fn metric(series: &str) -> f64 {
    sluice::metrics::sample(&sluice::metrics::render(None), series).unwrap_or(0.0)
}

// ---- the API, one body, two backends ---------------------------------------

const API_SCRIPT: &str = r#"
local p = context.prefix
-- rate: 3 per minute, the 4th denied with the count; peek does not count.
for i = 1, 3 do
  local ok, n = rate.check(p .. "r", 3, 60)
  assert(ok == true and n == i, "check " .. i .. ": " .. tostring(ok) .. " " .. tostring(n))
end
local ok, n = rate.check(p .. "r", 3, 60)
assert(ok == false and n == 3, "4th: " .. tostring(ok) .. " " .. tostring(n))
local pok, pn = rate.peek(p .. "r2", 3, 60)
assert(pok == true and pn == 0, "peek " .. tostring(pn))
assert(select(2, rate.check(p .. "r2", 3, 60, {cost = 2})) == 2, "cost")
assert(rate.check(p .. "r2", 3, 60) == true)
assert(rate.check(p .. "r2", 3, 60) == false)
assert(not pcall(rate.check, p .. "r3", 3, 60, {bogus = 1}), "unknown option")
-- memory: plain data round trips.
assert(memory.get(p .. "none") == nil)
assert(memory.set(p .. "t", {a = 1, b = {"x", "y"}, c = true, d = 1.5}) == true)
local t = memory.get(p .. "t")
assert(t.a == 1 and t.b[2] == "y" and t.c == true and t.d == 1.5, "table")
memory.set(p .. "s", "text")
assert(memory.get(p .. "s") == "text")
memory.set(p .. "short", 1, 1)
assert(memory.incr(p .. "n") == 1)
assert(memory.incr(p .. "n", 5, 100) == 6)
assert(not pcall(memory.incr, p .. "s"), "incr on a string")
assert(memory.delete(p .. "n") == true)
assert(memory.delete(p .. "n") == false)
assert(memory.get(p .. "n") == nil)
assert(not pcall(memory.set, p .. "f", function() end), "a function is not data")
-- cache: once per argument list; nil results are not cached.
local calls = 0
local f = cache(function(x) calls = calls + 1; return x * 2, "two" end, {ttl = 60, key = p .. "double"})
local a, b = f(21)
assert(a == 42 and b == "two", "cache result")
assert(f(21) == 42 and calls == 1, "cached: " .. calls)
assert(f(1) == 2 and calls == 2, "new args")
local misses = 0
local g = cache(function() misses = misses + 1; return nil, "err" end, {key = p .. "nil"})
g(); g()
assert(misses == 2, "nil not cached")
-- decided_by: the denied check above is noted; state.note adds one.
state.note("test note")
Accept()
"#;

async fn api_suite(store: Arc<StateStore>, prefix: &str) {
    let cfg = Config::default();
    let engine = PolicyEngine::load_with(
        &cfg,
        &[
            ScriptSource {
                hook: Hook::RcptTo,
                name: "api.lua".into(),
                source: API_SCRIPT.into(),
            },
            ScriptSource {
                hook: Hook::MailFrom,
                name: "later.lua".into(),
                source: r#"
                    local p = context.prefix
                    assert(memory.get(p .. "short") == nil, "ttl expired")
                    assert(memory.get(p .. "s") == "text", "kept")
                    Accept()"#
                    .into(),
            },
        ],
    )
    .unwrap();
    engine.set_state(store.clone());
    let mut input = sluice::policy::test_input(
        Hook::RcptTo,
        &serde_json::json!({"arguments": {"recipient": "a@example.org"}}),
        None,
    )
    .unwrap();
    input.context = serde_json::json!({"prefix": prefix});
    let out = engine.run(Hook::RcptTo, input.clone()).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(matches!(out.verdict, HookVerdict::Accept { .. }));
    assert_eq!(out.decided_by.len(), 3, "{:?}", out.decided_by);
    assert_eq!(out.decided_by[0], format!("rate {prefix}r: 3/3 per 60s"));
    assert_eq!(out.decided_by[1], format!("rate {prefix}r2: 3/3 per 60s"));
    assert_eq!(out.decided_by[2], "test note");
    // TTL expiry (1 s), seen by a later run in another hook.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let out = engine.run(Hook::MailFrom, input).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    // The operator's view.
    let v = store.inspect(&format!("{prefix}t")).await.unwrap();
    assert_eq!(v["memory"]["value"]["a"], 1, "{v}");
    let v = store.inspect(&format!("{prefix}r")).await.unwrap();
    assert!(v["rate"]["ttl_seconds"].as_f64().unwrap() > 30.0, "{v}");
    assert_eq!(store.delete_all(&format!("{prefix}r")).await.unwrap(), 1);
    let a = store
        .rate(&format!("{prefix}r"), 3, Duration::from_secs(60), 1, false)
        .await
        .unwrap();
    assert_eq!((a.allowed, a.count), (true, 1), "reset by delete");
    let s = store.stats().await.unwrap();
    assert!(s["keys"].as_u64().unwrap() >= 3, "{s}");
}

#[tokio::test]
async fn api_on_the_local_backend() {
    api_suite(StateStore::local(), "api:").await;
}

#[tokio::test]
async fn api_on_the_redis_backend() {
    let redis = Redis::start();
    let cfg = Config::from_toml_str(&format!(
        "[state]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    ))
    .unwrap();
    let store = StateStore::new(&cfg.state).unwrap();
    api_suite(store.clone(), "api:").await;
    // The keys really are in Redis, under the prefix.
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("sluice:m:api:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.contains(&"sluice:m:api:t".to_string()), "{keys:?}");
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::make_cert(dir.path());
    let redis = Redis::start_tls(&cert, &key);
    let cfg = Config::from_toml_str(&format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"rediss://localhost:{}/0\"\nredis_ca_file = {:?}\ntimeout = \"3s\"\n",
        redis.port, cert
    ))
    .unwrap();
    let store = StateStore::new(&cfg.state).unwrap();
    store.set("m", "tls", "1".into(), None).await.unwrap();
    assert_eq!(store.get("m", "tls").await.unwrap().as_deref(), Some("1"));
    let a = store
        .rate("tls", 2, Duration::from_secs(60), 1, false)
        .await
        .unwrap();
    assert!(a.allowed && a.count == 1);
    // Without the CA the certificate is refused (an error, not a hang).
    let cfg = Config::from_toml_str(&format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"rediss://localhost:{}/0\"\ntimeout = \"3s\"\n",
        redis.port
    ))
    .unwrap();
    let store = StateStore::new(&cfg.state).unwrap();
    let e = store.get("m", "tls").await.unwrap_err();
    assert!(e.is_backend(), "{e}");
}

// ---- two nodes behind HAProxy -----------------------------------------------

const FLEET_SCRIPT: &str = r#"
local greylist = require("greylist")
if arguments.address.localpart == "grey" then
  local v = greylist.check({ip = connection.remoteip, sender = transaction.sender,
    recipient = arguments.recipient, delay = 2, retry_window = 60})
  if v == "defer" then
    Defer("Greylisted by " .. connection.serverid, {reply_codes = {code = 451, enhanced = {4, 7, 1}}})
  end
else
  local ok, n = rate.check("rcpt:" .. connection.remoteip, 3, 60)
  if not ok then
    Defer("Rate limited by " .. connection.serverid, {reply_codes = {code = 451, enhanced = {4, 7, 1}}})
  end
end
Reply("Recipient ok via " .. connection.serverid)
"#;

#[tokio::test]
async fn two_nodes_behind_haproxy_share_limits_and_greylist() {
    let redis = Redis::start();
    let state = format!("backend = \"redis\"\nredis_url = {:?}\n", redis.url());
    let a = node("node-a", true, &state, FLEET_SCRIPT).await;
    let b = node("node-b", true, &state, FLEET_SCRIPT).await;
    let hap = Haproxy::start(&[a.addr_of("node-a"), b.addr_of("node-b")]);

    // Rate: 3 per minute per client IP, RCPTs alternating between nodes.
    let mut via = Vec::new();
    for i in 0..3 {
        let (r, _) = rcpt(hap.addr(), "s@sender.example", &format!("u{i}@example.org")).await;
        assert_eq!(r.code, 250, "{r:?}");
        via.push(r.text.rsplit(' ').next().unwrap().to_string());
    }
    assert!(
        via.contains(&"node-a".to_string()) && via.contains(&"node-b".to_string()),
        "round robin: {via:?}"
    );
    assert!(via.windows(2).all(|w| w[0] != w[1]), "alternating: {via:?}");
    let (r, _) = rcpt(hap.addr(), "s@sender.example", "u3@example.org").await;
    assert_eq!(r.code, 451, "4th RCPT within the window: {r:?}");
    assert!(r.text.starts_with("4.7.1 Rate limited by node-"), "{r:?}");
    // The refusal's history says which limit decided.
    let refused_on = if r.text.ends_with("node-a") { &a } else { &b };
    assert!(
        wait_until(
            || refused_on.store().history_all().unwrap().iter().any(|h| {
                h.recipient == "u3@example.org"
                    && h.metadata
                        .get("decided_by")
                        .is_some_and(|d| d.starts_with("rate rcpt:127.0.0.1: 3/3 per 60s"))
            })
        )
        .await,
        "decided_by in history: {:?}",
        refused_on.store().history_all().unwrap()
    );

    // Greylist: first seen on one node, passes on the other after the delay.
    let node_of = |r: &common::Reply| r.text.rsplit(' ').next().unwrap().to_string();
    let (r1, _) = rcpt(hap.addr(), "g@sender.example", "grey@example.org").await;
    assert_eq!(r1.code, 451, "{r1:?}");
    let first = node_of(&r1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (r2, _) = rcpt(hap.addr(), "g@sender.example", "grey@example.org").await;
    assert_eq!(r2.code, 250, "after the delay, on the other node: {r2:?}");
    let second = node_of(&r2);
    assert_ne!(first, second, "the retry went to the other node");
    let (r3, _) = rcpt(hap.addr(), "g@sender.example", "grey@example.org").await;
    assert_eq!(r3.code, 250, "a passed triplet keeps passing: {r3:?}");
    // Too early on the other node: it sees the first node's entry.
    let (r4, _) = rcpt(hap.addr(), "h@sender.example", "grey@example.org").await;
    assert_eq!(r4.code, 451, "{r4:?}");
    let (r5, _) = rcpt(hap.addr(), "h@sender.example", "grey@example.org").await;
    assert_eq!(r5.code, 451, "too early: {r5:?}");
    assert_ne!(node_of(&r4), node_of(&r5));
    let early_node = if node_of(&r5) == "node-a" { &a } else { &b };
    assert!(
        wait_until(
            || early_node.store().history_all().unwrap().iter().any(|h| {
                h.sender == "h@sender.example"
                    && h.metadata
                        .get("decided_by")
                        .is_some_and(|d| d.contains("|h@sender.example|grey@example.org: seen "))
            })
        )
        .await,
        "{:?}",
        early_node.store().history_all().unwrap()
    );
    let grey_node = if first == "node-a" { &a } else { &b };
    assert!(
        wait_until(|| grey_node.store().history_all().unwrap().iter().any(|h| {
            h.recipient == "grey@example.org"
                && h.metadata.get("decided_by").is_some_and(|d| {
                    d.starts_with("greylist greylist:t:127.0.0.0/24|g@sender.example|grey@example.org: first seen")
                })
        }))
        .await,
        "greylist decided_by: {:?}",
        grey_node.store().history_all().unwrap()
    );
    drop(hap);
}

#[tokio::test]
async fn counters_survive_a_restart_with_redis() {
    let redis = Redis::start();
    let state = format!("backend = \"redis\"\nredis_url = {:?}\n", redis.url());
    let mut a = node("inbound", false, &state, FLEET_SCRIPT).await;
    for i in 0..2 {
        let (r, _) = rcpt(a.addr(), "s@sender.example", &format!("u{i}@example.org")).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    a.stop().await;
    let a = node("inbound", false, &state, FLEET_SCRIPT).await;
    let (r, _) = rcpt(a.addr(), "s@sender.example", "u2@example.org").await;
    assert_eq!(r.code, 250, "3rd: {r:?}");
    let (r, _) = rcpt(a.addr(), "s@sender.example", "u3@example.org").await;
    assert_eq!(r.code, 451, "4th after the restart: {r:?}");
}

#[tokio::test]
async fn a_reload_keeps_local_counters() {
    let a = node("inbound", false, "", FLEET_SCRIPT).await;
    for i in 0..3 {
        let (r, _) = rcpt(a.addr(), "s@sender.example", &format!("u{i}@example.org")).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    a.daemon.as_ref().unwrap().reload().unwrap();
    let (r, _) = rcpt(a.addr(), "s@sender.example", "u3@example.org").await;
    assert_eq!(r.code, 451, "4th after a reload: {r:?}");
}

// ---- Redis failing mid-run ----------------------------------------------------

const RATE_ONLY: &str = r#"
local ok = rate.check("r:" .. arguments.recipient, 100, 60)
if not ok then Defer("limited") end
"#;

#[tokio::test]
async fn redis_killed_mid_run_on_error_open_lets_mail_through() {
    let mut redis = Redis::start();
    let state = format!(
        "backend = \"redis\"\nredis_url = {:?}\non_error = \"open\"\ntimeout = \"400ms\"\n",
        redis.url()
    );
    let a = node("inbound", false, &state, RATE_ONLY).await;
    let (r, _) = rcpt(a.addr(), "s@sender.example", "open1@example.org").await;
    assert_eq!(r.code, 250, "{r:?}");
    let before = metric("sluice_state_fail_open_total{op=\"rate\"}");
    let errors = metric("sluice_state_errors_total{op=\"rate\"}");
    redis.kill();
    let (r, took) = rcpt(a.addr(), "s@sender.example", "open2@example.org").await;
    assert_eq!(r.code, 250, "on_error = open: {r:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(metric("sluice_state_fail_open_total{op=\"rate\"}") > before);
    assert!(metric("sluice_state_errors_total{op=\"rate\"}") > errors);
}

#[tokio::test]
async fn redis_killed_mid_run_on_error_tempfail_answers_451() {
    let mut redis = Redis::start();
    let state = format!(
        "backend = \"redis\"\nredis_url = {:?}\non_error = \"tempfail\"\ntimeout = \"400ms\"\n",
        redis.url()
    );
    // Node b also counts connections across the fleet (the default).
    let b = node("inbound", false, &state, RATE_ONLY).await;
    let state = format!("{state}fleet_connections = false\n");
    let a = node("inbound", false, &state, RATE_ONLY).await;
    let (r, _) = rcpt(a.addr(), "s@sender.example", "t1@example.org").await;
    assert_eq!(r.code, 250, "{r:?}");
    redis.kill();
    let (r, took) = rcpt(a.addr(), "s@sender.example", "t2@example.org").await;
    assert_eq!(r.code, 451, "on_error = tempfail: {r:?}");
    assert!(r.text.starts_with("4.3.0 "), "{r:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        wait_until(|| a.store().history_all().unwrap().iter().any(|h| {
            h.recipient == "t2@example.org"
                && h.reason.starts_with("451 4.3.0")
                && h.metadata
                    .get("decided_by")
                    .is_some_and(|d| d.contains("state backend unavailable (rate)"))
        }))
        .await,
        "{:?}",
        a.store().history_all().unwrap()
    );
    // Without Redis the fleet connection count is unknown: 421 at connect.
    let mut c = Client::connect(b.addr()).await;
    c.expect("421 4.3.0").await;
}

#[tokio::test]
async fn a_frozen_redis_never_holds_a_session_past_the_timeout() {
    let redis = Redis::start();
    let state = format!(
        "backend = \"redis\"\nredis_url = {:?}\non_error = \"tempfail\"\ntimeout = \"300ms\"\nfleet_connections = false\n",
        redis.url()
    );
    let a = node("inbound", false, &state, RATE_ONLY).await;
    let (r, _) = rcpt(a.addr(), "s@sender.example", "f1@example.org").await;
    assert_eq!(r.code, 250, "{r:?}");
    // SIGSTOP: the socket stays open, nothing answers.
    redis.signal("-STOP");
    for i in 0..3 {
        let (r, took) = rcpt(a.addr(), "s@sender.example", &format!("f{i}x@example.org")).await;
        assert_eq!(r.code, 451, "{r:?}");
        assert!(took < Duration::from_millis(900), "took {took:?}");
    }
    redis.signal("-CONT");
    // Recovers by itself once Redis answers again.
    let mut ok = false;
    for _ in 0..40 {
        let (r, _) = rcpt(a.addr(), "s@sender.example", "f9@example.org").await;
        if r.code == 250 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "back to 250 after Redis resumed");
}

// ---- fleet-wide connections per IP ----------------------------------------------

#[tokio::test]
async fn connections_per_ip_count_across_nodes() {
    let redis = Redis::start();
    let state = format!("backend = \"redis\"\nredis_url = {:?}\n", redis.url());
    let extra = "[limits]\nconnections_per_ip = 2\n";
    let script = "Pass()";
    let a = node("inbound", false, &format!("{state}{extra}"), script).await;
    let b = node("inbound", false, &format!("{state}{extra}"), script).await;
    let mut c1 = Client::connect(a.addr()).await;
    c1.expect("220").await;
    let mut c2 = Client::connect(b.addr()).await;
    c2.expect("220").await;
    let mut c3 = Client::connect(a.addr()).await;
    c3.expect("421 4.7.0 Too many connections").await;
    let mut c4 = Client::connect(b.addr()).await;
    c4.expect("421 4.7.0").await;
    c1.cmd("QUIT", "221").await;
    drop(c1);
    // The slot is released in the background.
    let mut ok = false;
    for _ in 0..50 {
        let mut c = Client::connect(b.addr()).await;
        if c.reply().await.code == 220 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a slot came free after QUIT on the other node");
}

// ---- http() ---------------------------------------------------------------------------

/// A tiny HTTP/1.1 server: /ok, /echo, /big, /slow, /redirect.
async fn http_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = s.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = s.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                }
                let body_in = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let mut parts = head.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let (status, extra, body) = match path.as_str() {
                    "/ok" => (
                        "200 OK",
                        "X-Test: A\r\nX-Test: B\r\n".to_string(),
                        "hello".to_string(),
                    ),
                    "/echo" => {
                        let ct = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("x-sent: ")
                                    .map(|v| v.to_string())
                            })
                            .unwrap_or_else(|| "-".into())
                            .to_string();
                        (
                            "201 Created",
                            String::new(),
                            format!("{method} {ct} {body_in}"),
                        )
                    }
                    "/big" => ("200 OK", String::new(), "x".repeat(2 << 20)),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ("200 OK", String::new(), "late".into())
                    }
                    "/redirect" => ("302 Found", "Location: /ok\r\n".into(), String::new()),
                    _ => ("404 Not Found", String::new(), String::new()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_status_headers_body_cap_timeout_no_redirects() {
    let addr = http_server().await;
    let script = format!(
        r#"
local base = "http://{addr}"
local r, err = http(base .. "/ok")
assert(r, err)
assert(r.status == 200, "status " .. r.status)
assert(r.body == "hello", "body " .. r.body)
assert(r.headers["x-test"] == "A, B", "headers " .. tostring(r.headers["x-test"]))
assert(r.headers["content-length"] == "5")
local e = http(base .. "/echo", {{method = "post", headers = {{["X-Sent"] = "yes"}}, body = "payload"}})
assert(e.status == 201 and e.body == "POST yes payload", e.body)
local big, berr = http(base .. "/big", {{max_size = 1000}})
assert(big == nil and berr:find("max_size"), tostring(berr))
local ok = http(base .. "/big")
assert(ok == nil, "2 MiB is over the 1 MiB default")
local t0 = os.clock()
local slow, serr = http(base .. "/slow", {{timeout = 0.5}})
assert(slow == nil and serr:find("timed out"), tostring(serr))
local red = http(base .. "/redirect")
assert(red.status == 302 and red.headers.location == "/ok", "redirects are not followed")
local bad, uerr = http("ftp://{addr}/x")
assert(bad == nil and uerr:find("scheme"))
assert(not pcall(http, base, {{bogus = 1}}))
Accept()
"#
    );
    let engine = PolicyEngine::load_with(
        &Config::default(),
        &[ScriptSource {
            hook: Hook::RcptTo,
            name: "http.lua".into(),
            source: script,
        }],
    )
    .unwrap();
    let input = sluice::policy::test_input(Hook::RcptTo, &serde_json::json!({}), None).unwrap();
    let started = Instant::now();
    let out = engine.run(Hook::RcptTo, input).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(matches!(out.verdict, HookVerdict::Accept { .. }));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---- sluice state get|del|stats ------------------------------------------------------------

#[tokio::test]
async fn sluice_state_cli_reads_and_deletes_the_daemons_keys() {
    let a = node(
        "inbound",
        false,
        "",
        r#"memory.set("seen:" .. arguments.recipient, {n = 1}, 3600)
           rate.check("cli", 10, 60)
           if arguments.recipient == "limited@example.org" then
             state.note("cli rule")
             Defer("limited")
           end"#,
    )
    .await;
    let (r, _) = rcpt(a.addr(), "s@sender.example", "x@example.org").await;
    assert_eq!(r.code, 250, "{r:?}");
    let (r, _) = rcpt(a.addr(), "s@sender.example", "limited@example.org").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(
        wait_until(|| a
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.recipient == "limited@example.org"))
        .await
    );
    let tx = a
        .store()
        .history_all()
        .unwrap()
        .into_iter()
        .find(|h| h.recipient == "limited@example.org")
        .unwrap()
        .transaction;
    let cfg = a.dir.path().join("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n",
            a.dir.path().join("var"),
            a.dir.path().join("var/control.sock")
        ),
    )
    .unwrap();
    let cli = tokio::task::spawn_blocking(move || {
        let text = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("-c")
                .arg(&cfg)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let run = |args: &[&str]| serde_json::from_str::<serde_json::Value>(&text(args)).unwrap();
        // Which rule decided, in `sluice trace` and `sluice history --json`.
        let t = text(&["trace", &tx]);
        assert!(
            t.contains("DEFER") && t.contains("decided by: cli rule"),
            "{t}"
        );
        let v = run(&["history", "--json", "--id", &tx]);
        assert_eq!(v[0]["metadata"]["decided_by"], "cli rule", "{v}");
        let v = run(&["state", "get", "seen:x@example.org"]);
        assert_eq!(v["memory"]["value"]["n"], 1, "{v}");
        assert!(v["memory"]["ttl_seconds"].as_f64().unwrap() > 3000.0, "{v}");
        let v = run(&["state", "get", "cli"]);
        assert!(v["rate"].is_object(), "{v}");
        let v = run(&["state", "del", "seen:x@example.org"]);
        assert_eq!(v["deleted"], 1, "{v}");
        let v = run(&["state", "get", "seen:x@example.org"]);
        assert!(v.get("memory").is_none(), "{v}");
        let v = run(&["state", "stats"]);
        assert_eq!(v["backend"], "local", "{v}");
        assert!(v["keys"].as_u64().unwrap() >= 1, "{v}");
    });
    cli.await.unwrap();
}

// ---- the shipped examples ------------------------------------------------------------------

#[tokio::test]
async fn shipped_greylist_and_connect_rate_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/examples");
    let mut cfg = Config::default();
    cfg.scripts.lib_path = vec![lib_lua()];
    cfg.scripts.rcptto = Some(examples.join("greylist-rcptto.lua"));
    cfg.scripts.connect = Some(examples.join("connect-rate.lua"));
    let engine = PolicyEngine::load(&cfg).unwrap();
    let env = |ip: &str| {
        serde_json::json!({
            "connection": {"remoteip": ip},
            "sender": "a@sender.example",
            "arguments": {"recipient": "b@example.org"},
        })
    };
    // A stranger is greylisted, noted for the history; loopback is not.
    let out = engine
        .run(
            Hook::RcptTo,
            sluice::policy::test_input(Hook::RcptTo, &env("192.0.2.10"), None).unwrap(),
        )
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    match &out.verdict {
        HookVerdict::Defer { reply, .. } => assert_eq!(reply.code, 451),
        v => panic!("{v:?}"),
    }
    assert!(
        out.decided_by.iter().any(|d| d.contains("first seen")),
        "{:?}",
        out.decided_by
    );
    let out = engine
        .run(
            Hook::RcptTo,
            sluice::policy::test_input(Hook::RcptTo, &env("127.0.0.1"), None).unwrap(),
        )
        .await;
    assert!(
        matches!(out.verdict, HookVerdict::Pass { .. }),
        "{:?}",
        out.verdict
    );
    // 30 connections a minute from a /24, the 31st from a neighbour refused.
    for i in 0..31 {
        let ip = format!("198.51.100.{}", i + 1);
        let out = engine
            .run(
                Hook::Connect,
                sluice::policy::test_input(Hook::Connect, &env(&ip), None).unwrap(),
            )
            .await;
        assert!(out.error.is_none(), "{:?}", out.error);
        if i < 30 {
            assert!(
                matches!(out.verdict, HookVerdict::Pass { .. }),
                "{i}: {:?}",
                out.verdict
            );
        } else {
            assert!(out.verdict.disconnect(), "{:?}", out.verdict);
            assert_eq!(out.verdict.reply().unwrap().code, 421);
        }
    }
}
