//! Sender authentication and reputation, end to end: scripts run through
//! `PolicyEngine::run` against a real DNS server on 127.0.0.1 (hickory-server,
//! in-memory zone) with keys generated and messages signed in the test.

mod authsupport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use authsupport::dns::TestDns;
use authsupport::keys::{message, Key};
use authsupport::{mmdb, standard_zone, BAD_IP, GOOD_IP};
use sluice::config::Config;
use sluice::envelope::{Address, ConnectionInfo, HeloInfo, RecipientInfo, TransactionInfo};
use sluice::policy::{Hook, HookArguments, HookInput, HookOutcome, HookVerdict, PolicyEngine};

struct Env {
    dir: tempfile::TempDir,
    cfg: Config,
    _dns: TestDns,
    dkim: Key,
}

impl Env {
    async fn new() -> Env {
        let dkim = Key::generate();
        let arc = Key::generate();
        let dns = standard_zone(&dkim, &arc).start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        cfg.dns.nameservers = vec![dns.addr.to_string()];
        cfg.dns.timeout = Some(Duration::from_millis(300));
        cfg.scripts.lib_path = vec![dir.path().join("lib")];
        let key = dir.path().join("arc.pem");
        std::fs::write(&key, arc.pem()).unwrap();
        cfg.auth.arc_key = Some(key);
        cfg.auth.arc_domain = "gw.example".into();
        cfg.auth.arc_selector = "arc".into();
        Env {
            dir,
            cfg,
            _dns: dns,
            dkim,
        }
    }

    fn script(&mut self, hook: Hook, src: &str) {
        let p = self.dir.path().join(format!("{}.lua", hook.name()));
        std::fs::write(&p, src).unwrap();
        self.set(hook, p);
    }

    fn set(&mut self, hook: Hook, p: PathBuf) {
        let s = &mut self.cfg.scripts;
        match hook {
            Hook::Connect => s.connect = Some(p),
            Hook::RcptTo => s.rcptto = Some(p),
            Hook::Eod => s.eod = Some(p),
            other => panic!("hook {other:?} not used here"),
        }
    }

    fn engine(&self) -> Arc<PolicyEngine> {
        PolicyEngine::load(&self.cfg).unwrap()
    }
}

fn conn(ip: &str, helo: &str) -> ConnectionInfo {
    ConnectionInfo {
        id: "conn1".into(),
        remoteip: ip.into(),
        remoteport: 40000,
        localip: "127.0.0.1".into(),
        localport: 25,
        serverid: "inbound".into(),
        helo: Some(HeloInfo {
            verb: "EHLO".into(),
            host: helo.into(),
        }),
        ..Default::default()
    }
}

fn eod_input(ip: &str, helo: &str, sender: &str, msg: &[u8]) -> HookInput {
    HookInput {
        connection: conn(ip, helo),
        transaction: Some(TransactionInfo {
            id: "txn1".into(),
            sender: sender.into(),
            senderaddress: Address::split(sender),
            recipients: vec![RecipientInfo {
                recipient: "rcpt@example.org".into(),
                address: Address::split("rcpt@example.org"),
                transportid: "default".into(),
                ..Default::default()
            }],
            open: true,
            ..Default::default()
        }),
        arguments: HookArguments::Mail {
            message: Bytes::copy_from_slice(msg),
            headers_only: false,
        },
        context: Value::Null,
    }
}

fn connect_input(ip: &str) -> HookInput {
    HookInput {
        connection: conn(ip, "client.test"),
        transaction: None,
        arguments: HookArguments::None,
        context: Value::Null,
    }
}

/// `context.r` after the run; panics with the script error if there was one.
fn r(o: &HookOutcome) -> Value {
    assert!(o.error.is_none(), "script error: {:?}", o.error);
    o.context.get("r").cloned().unwrap_or(Value::Null)
}

fn reply_text(o: &HookOutcome) -> String {
    o.verdict
        .reply()
        .map(|r| r.lines.join("\n"))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- ScanDMARC

const SCAN: &str = "context.r = ScanDMARC() Accept()";

async fn dmarc(e: &PolicyEngine, ip: &str, sender: &str, msg: &[u8]) -> Value {
    r(&e.run(Hook::Eod, eod_input(ip, "client.test", sender, msg))
        .await)
}

#[tokio::test]
async fn scan_dmarc_every_outcome() {
    let mut env = Env::new().await;
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    let k = &env.dkim;

    // pass: SPF aligned (same domain), unsigned
    let m = message("a@sender.com", "hi", 100);
    assert_eq!(
        dmarc(&e, GOOD_IP, "b@sender.com", &m).await,
        json!({"sender.com": "pass"})
    );
    // pass: DKIM aligned only (SPF of other.com is none)
    let signed = k.sign("sender.com", "sel", &m);
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &signed).await,
        json!({"sender.com": "pass"})
    );
    // pass: relaxed SPF alignment (bounce.sender.com ~ sender.com)
    assert_eq!(
        dmarc(&e, GOOD_IP, "b@bounce.sender.com", &m).await,
        json!({"sender.com": "pass"})
    );
    // reject: SPF fails, no signature
    assert_eq!(
        dmarc(&e, BAD_IP, "a@sender.com", &m).await,
        json!({"sender.com": "reject"})
    );
    // quarantine and none
    let q = message("a@quar.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@quar.com", &q).await,
        json!({"quar.com": "quarantine"})
    );
    let n = message("a@nonepol.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@nonepol.com", &n).await,
        json!({"nonepol.com": "none"})
    );
    // policy_absent
    let a = message("a@nodmarc.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@nodmarc.com", &a).await,
        json!({"nodmarc.com": "policy_absent"})
    );
    // temperror: the DMARC record lookup answers SERVFAIL …
    let b = message("a@broken.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@broken.com", &b).await,
        json!({"broken.com": "temperror"})
    );
    // … or never answers
    let s = message("a@slow.com", "hi", 10);
    let started = std::time::Instant::now();
    assert_eq!(
        dmarc(&e, BAD_IP, "a@slow.com", &s).await,
        json!({"slow.com": "temperror"})
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // … or SPF (the only authentication) had a temporary error
    let f = message("a@spffail.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@spfbroken.com", &f).await,
        json!({"spffail.com": "temperror"})
    );
}

#[tokio::test]
async fn scan_dmarc_permerror() {
    let mut env = Env::new().await;
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    let no_from = b"To: a@example.org\r\nSubject: x\r\n\r\nbody\r\n";
    assert_eq!(
        dmarc(&e, GOOD_IP, "a@sender.com", no_from).await,
        json!("permerror")
    );
    let two = b"From: a@sender.com, b@quar.com\r\nSubject: x\r\n\r\nbody\r\n";
    assert_eq!(
        dmarc(&e, GOOD_IP, "a@sender.com", two).await,
        json!("permerror")
    );
    let fields = b"From: a@sender.com\r\nFrom: a@sender.com\r\n\r\nbody\r\n";
    assert_eq!(
        dmarc(&e, GOOD_IP, "a@sender.com", fields).await,
        json!("permerror")
    );
    let junk = b"From: nobody here\r\n\r\nbody\r\n";
    assert_eq!(
        dmarc(&e, GOOD_IP, "a@sender.com", junk).await,
        json!("permerror")
    );
}

#[tokio::test]
async fn scan_dmarc_alignment_modes() {
    let mut env = Env::new().await;
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    let k = &env.dkim;
    let m = message("a@strict.com", "hi", 10);
    // aspf=s: SPF passes for mail.strict.com, which is not strict.com
    assert_eq!(
        dmarc(&e, GOOD_IP, "x@mail.strict.com", &m).await,
        json!({"strict.com": "reject"})
    );
    // adkim=s: d=mail.strict.com is not aligned, d=strict.com is
    let sub = k.sign("mail.strict.com", "sel", &m);
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &sub).await,
        json!({"strict.com": "reject"})
    );
    let exact = k.sign("strict.com", "sel", &m);
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &exact).await,
        json!({"strict.com": "pass"})
    );
    // relaxed DKIM: d=sender.com signs for From news.sender.com
    let news = message("a@news.sender.com", "hi", 10);
    let signed = k.sign("sender.com", "sel", &news);
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &signed).await,
        json!({"news.sender.com": "pass"})
    );
    // a signature that does not verify does not count
    let mut tampered = signed.clone();
    let at = tampered.len() - 5;
    tampered[at] = b'X';
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &tampered).await,
        json!({"news.sender.com": "reject"})
    );
}

#[tokio::test]
async fn scan_dmarc_subdomain_policy_pct_and_psl() {
    let mut env = Env::new().await;
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    // sp applies to subdomains that have no record of their own
    let sub = message("a@news.parent.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@news.parent.com", &sub).await,
        json!({"news.parent.com": "quarantine"})
    );
    let top = message("a@parent.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@parent.com", &top).await,
        json!({"parent.com": "reject"})
    );
    // pct=0: never applied, the next weaker policy instead (bounded loop)
    for _ in 0..5 {
        let m = message("a@pct0.com", "hi", 10);
        assert_eq!(
            dmarc(&e, BAD_IP, "a@pct0.com", &m).await,
            json!({"pct0.com": "quarantine"})
        );
        let m = message("a@pctq.com", "hi", 10);
        assert_eq!(
            dmarc(&e, BAD_IP, "a@pctq.com", &m).await,
            json!({"pctq.com": "none"})
        );
    }
    // the organisational domain comes from the public suffix list:
    // shop.example.co.uk → example.co.uk (sp=none), not co.uk
    let uk = message("a@shop.example.co.uk", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@shop.example.co.uk", &uk).await,
        json!({"shop.example.co.uk": "none"})
    );
    let uk_signed = env.dkim.sign("example.co.uk", "sel", &uk);
    assert_eq!(
        dmarc(&e, BAD_IP, "x@other.com", &uk_signed).await,
        json!({"shop.example.co.uk": "pass"})
    );
}

/// RFC 9091: `np` applies to a From subdomain that does not exist (no A,
/// AAAA or MX), `sp` to one that does; a public suffix's record applies
/// when it says `psd=y`, and is ignored otherwise.
#[tokio::test]
async fn scan_dmarc_np_and_psd() {
    let mut env = Env::new().await;
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    let ghost = message("a@ghost.npdom.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@ghost.npdom.com", &ghost).await,
        json!({"ghost.npdom.com": "reject"}),
        "np for a subdomain that does not exist"
    );
    let real = message("a@real.npdom.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@real.npdom.com", &real).await,
        json!({"real.npdom.com": "quarantine"}),
        "sp for one that exists"
    );
    let top = message("a@npdom.com", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@npdom.com", &top).await,
        json!({"npdom.com": "none"}),
        "p for the domain itself"
    );
    let bank = message("a@example.bank", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@example.bank", &bank).await,
        json!({"example.bank": "reject"}),
        "the PSD record (psd=y) of .bank"
    );
    let museum = message("a@art.museum", "hi", 10);
    assert_eq!(
        dmarc(&e, BAD_IP, "a@art.museum", &museum).await,
        json!({"art.museum": "policy_absent"}),
        "a suffix record without psd=y is not a policy"
    );
}

#[tokio::test]
async fn scan_dmarc_overrides_and_hook_check() {
    let mut env = Env::new().await;
    env.script(
        Hook::Eod,
        r#"context.r = {
             ip = ScanDMARC({ip = "192.0.2.10"}),
             domain = ScanDMARC({domain = "sender.com", ip = "192.0.2.10"}),
             other = ScanDMARC({domain = "other.com", ip = "192.0.2.10"}),
             default = ScanDMARC(),
           } Accept()"#,
    );
    let e = env.engine();
    let m = message("a@sender.com", "hi", 10);
    let got = r(&e
        .run(Hook::Eod, eod_input(BAD_IP, "x.test", "a@sender.com", &m))
        .await);
    assert_eq!(
        got,
        json!({"ip": {"sender.com": "pass"}, "domain": {"sender.com": "pass"},
               "other": {"sender.com": "reject"}, "default": {"sender.com": "reject"}})
    );
    // null sender: the HELO identity is checked and aligned (relaxed)
    env.script(Hook::Eod, SCAN);
    let e = env.engine();
    let o = e
        .run(Hook::Eod, eod_input(GOOD_IP, "mail.sender.com", "", &m))
        .await;
    assert_eq!(r(&o), json!({"sender.com": "pass"}));
    // only in eod
    env.script(Hook::RcptTo, "ScanDMARC()");
    let e = env.engine();
    let mut input = eod_input(GOOD_IP, "x", "a@sender.com", &m);
    input.arguments = HookArguments::RcptTo {
        address: "rcpt@example.org".into(),
        params: Default::default(),
    };
    let o = e.run(Hook::RcptTo, input).await;
    assert!(o.error.unwrap().contains("only available in the eod hook"));
}

// ---------------------------------------------------------------- SPF

#[tokio::test]
async fn spf_results_and_limits() {
    let mut env = Env::new().await;
    env.script(
        Hook::Eod,
        r#"
        local function c(ip, sender, helo)
          local r = spf.check({ip = ip, sender = sender, helo = helo or "client.test"})
          return r.result .. " " .. r.domain .. " " .. r.identity
        end
        context.r = {
          pass = c("192.0.2.10", "a@sender.com"),
          pass6 = c("2001:db8::10", "a@sender.com"),
          fail = c("198.51.100.9", "a@sender.com"),
          softfail = c("198.51.100.9", "a@softfail.com"),
          neutral = c("198.51.100.9", "a@neutral.com"),
          none = c("198.51.100.9", "a@nodmarc.com"),
          temperror = c("198.51.100.9", "a@spfbroken.com"),
          include_timeout = c("198.51.100.9", "a@spfslow.com"),
          limit = c("198.51.100.9", "a@loop.com"),
          helo = c("192.0.2.10", "", "mail.sender.com"),
          default = spf.check().result,
        }
        Accept()"#,
    );
    let e = env.engine();
    let m = message("a@sender.com", "hi", 10);
    let got = r(&e
        .run(Hook::Eod, eod_input(GOOD_IP, "x.test", "a@sender.com", &m))
        .await);
    assert_eq!(
        got,
        json!({
            "pass": "pass sender.com mailfrom",
            "pass6": "pass sender.com mailfrom",
            "fail": "fail sender.com mailfrom",
            "softfail": "softfail softfail.com mailfrom",
            "neutral": "neutral neutral.com mailfrom",
            "none": "none nodmarc.com mailfrom",
            "temperror": "temperror spfbroken.com mailfrom",
            "include_timeout": "temperror spfslow.com mailfrom",
            "limit": "permerror loop.com mailfrom",
            "helo": "pass mail.sender.com helo",
            "default": "pass",
        })
    );
}

// ---------------------------------------------------------------- DKIM

#[tokio::test]
async fn dkim_verify_and_tampering() {
    let mut env = Env::new().await;
    env.script(
        Hook::Eod,
        r#"
        local function one(m)
          local s = dkim.verify(m)[1]
          return s.result .. " " .. s.domain .. " " .. s.selector .. " " .. tostring(s.error)
        end
        local mail = arguments.mail
        local out = {}
        out.original = one(mail)
        mail:addHeader("X-Added", "unsigned headers do not matter")
        out.added = one(mail)
        local raw = mail:toString()
        mail:setHeader("Subject", "changed")
        out.header = one(mail)
        mail:setHeader("Subject", "hi")
        out.restored = one(mail)
        mail:setBody("a different body\r\n")
        out.body = one(mail)
        out.string = one(raw)
        out.unsigned = #dkim.verify("From: a@b.test\r\n\r\nx\r\n")
        context.r = out
        Accept()"#,
    );
    let e = env.engine();
    let m = env
        .dkim
        .sign("sender.com", "sel", &message("a@sender.com", "hi", 200));
    let got = r(&e
        .run(Hook::Eod, eod_input(GOOD_IP, "x", "a@sender.com", &m))
        .await);
    assert_eq!(
        got,
        json!({
            "original": "pass sender.com sel nil",
            "added": "pass sender.com sel nil",
            "header": "fail sender.com sel signature verification failed",
            "restored": "pass sender.com sel nil",
            "body": "fail sender.com sel body hash mismatch",
            "string": "pass sender.com sel nil",
            "unsigned": 0,
        })
    );
}

// ---------------------------------------------------------------- ARC and Authentication-Results

#[tokio::test]
async fn arc_seal_then_verify() {
    let mut env = Env::new().await;
    env.script(
        Hook::Eod,
        r#"
        local mail = arguments.mail
        local out = {}
        out.before = arc.verify(mail).result
        out.seal1 = arc.seal(mail)
        local v = arc.verify(mail)
        out.after = v.result .. " " .. v.instances
        out.aar = mail:getHeader("ARC-Authentication-Results")
        out.seal2 = arc.seal(mail)
        v = arc.verify(mail)
        out.twice = v.result .. " " .. v.instances
        out.results = auth.results(mail)
        out.id = auth.authserv_id()
        mail:setBody("changed in transit\r\n")
        out.broken = arc.verify(mail).result
        -- a failed chain may be sealed once more, with cv=fail …
        out.reseal = arc.seal(mail)
        out.cv = mail:getHeader("ARC-Seal"):match("cv=(%a+)")
        -- … and then never again
        local ok, err = arc.seal(mail)
        out.closed = tostring(ok) .. " " .. tostring(err)
        context.r = out
        Accept()"#,
    );
    let e = env.engine();
    let m = env
        .dkim
        .sign("sender.com", "sel", &message("a@sender.com", "hi", 200));
    let got = r(&e
        .run(
            Hook::Eod,
            eod_input(GOOD_IP, "client.test", "a@sender.com", &m),
        )
        .await);
    assert_eq!(got["before"], "none");
    assert_eq!(got["seal1"], true);
    assert_eq!(got["after"], "pass 1");
    assert_eq!(got["seal2"], true);
    assert_eq!(got["twice"], "pass 2");
    assert_eq!(got["broken"], "fail");
    assert_eq!(got["id"], "mx.example.org");
    let aar = got["aar"].as_str().unwrap();
    assert!(aar.starts_with("i=1; mx.example.org;"), "{aar}");
    assert!(
        aar.contains("dkim=pass") && aar.contains("spf=pass"),
        "{aar}"
    );
    let results = got["results"].as_str().unwrap();
    for want in [
        "mx.example.org",
        "dkim=pass",
        "spf=pass",
        "arc=pass",
        "dmarc=pass",
    ] {
        assert!(results.contains(want), "{want} missing in {results}");
    }
    assert_eq!(got["reseal"], true);
    assert_eq!(got["cv"], "fail");
    assert!(
        got["closed"].as_str().unwrap().starts_with("nil "),
        "{}",
        got["closed"]
    );
}

#[tokio::test]
async fn arc_seal_needs_a_key() {
    let mut env = Env::new().await;
    env.cfg.auth.arc_key = None;
    env.script(
        Hook::Eod,
        "local ok, err = arc.seal(arguments.mail) context.r = err Accept()",
    );
    let m = message("a@sender.com", "hi", 10);
    let got = r(&env
        .engine()
        .run(Hook::Eod, eod_input(GOOD_IP, "x", "a@sender.com", &m))
        .await);
    assert!(got.as_str().unwrap().contains("not configured"), "{got}");
    // a key file that is not a key fails at load
    let bad = env.dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    env.cfg.auth.arc_key = Some(bad);
    let err = PolicyEngine::load(&env.cfg).err().unwrap().to_string();
    assert!(err.contains("arc_key"), "{err}");
}

// ---------------------------------------------------------------- DNSBL, FCrDNS, MX

#[tokio::test]
async fn dnsbl_rhsbl_dnswl() {
    let mut env = Env::new().await;
    env.script(
        Hook::Connect,
        r#"
        local zones = {"bl.test", "clean.test", "slow.test", "refuse.test"}
        local listed, errors = dnsbl.check("192.0.2.66", zones)
        local clean, clean_err = dnsbl.check("192.0.2.99", {"bl.test", "clean.test"})
        local v6 = dnsbl.check("2001:db8::66", {"bl.test"})
        local v6clean = dnsbl.check("2001:db8::67", {"bl.test"})
        local test = dnsbl.check("127.0.0.2", "bl.test")
        local rhs = rhsbl.check("user@Spammer.COM", {"dbl.test"})
        local rhs_clean = rhsbl.check("sender.com", {"dbl.test"})
        local wl = dnswl.check(connection.remoteip, {"wl.test"})
        context.r = {
          listed = listed, errors = errors, clean_next = next(clean) == nil,
          clean_err = clean_err == nil, v6 = v6["bl.test"].a[1],
          v6clean = next(v6clean) == nil, test = test["bl.test"].txt[1],
          rhs = rhs["dbl.test"].txt[1], rhs_clean = next(rhs_clean) == nil,
          wl = wl["wl.test"].a[1],
        }
        Pass()"#,
    );
    let e = env.engine();
    let got = r(&e.run(Hook::Connect, connect_input(GOOD_IP)).await);
    assert_eq!(
        got["listed"],
        json!({"bl.test": {"a": ["127.0.0.2", "127.0.0.4"],
                           "txt": ["listed: see https://bl.test/192.0.2.66"]}})
    );
    let errors = got["errors"].as_object().unwrap();
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        vec!["refuse.test", "slow.test"]
    );
    assert!(errors["refuse.test"]
        .as_str()
        .unwrap()
        .contains("127.255.255.254"));
    assert_eq!(got["clean_next"], true);
    assert_eq!(got["clean_err"], true);
    assert_eq!(got["v6"], "127.0.0.3");
    assert_eq!(got["v6clean"], true);
    assert_eq!(got["test"], "test listing");
    assert_eq!(got["rhs"], "spam domain");
    assert_eq!(got["rhs_clean"], true);
    assert_eq!(got["wl"], "127.0.10.2");
}

#[tokio::test]
async fn reverse_dns_and_sender_mx() {
    let mut env = Env::new().await;
    env.script(
        Hook::Connect,
        r#"
        local function mx(d)
          local r, err = sender_mx(d)
          if not r then return "error " .. err end
          local hosts = {}
          for _, m in ipairs(r.mx) do hosts[#hosts + 1] = m.preference .. " " .. m.exchange end
          return tostring(r.ok) .. " null=" .. tostring(r.null_mx) .. " implicit="
                 .. tostring(r.implicit) .. " " .. table.concat(hosts, ",")
        end
        context.r = {
          v4 = reverse_dns("192.0.2.10"),
          v6 = reverse_dns("2001:db8::10"),
          liar = tostring(reverse_dns("192.0.2.11")),
          none = tostring(reverse_dns("192.0.2.99")),
          mx = mx("Sender.com"),
          null = mx("nullmx.com"),
          aonly = mx("aonly.com"),
          txtonly = mx("txtonly.com"),
          missing = mx("nxdomain.test"),
        }
        Pass()"#,
    );
    let got = r(&env
        .engine()
        .run(Hook::Connect, connect_input(GOOD_IP))
        .await);
    assert_eq!(
        got,
        json!({
            "v4": "mail.sender.com",
            "v6": "mail.sender.com",
            "liar": "nil",
            "none": "nil",
            "mx": "true null=false implicit=false 10 mx.sender.com,20 mx2.sender.com",
            "null": "false null=true implicit=false 0 .",
            "aonly": "true null=false implicit=true ",
            "txtonly": "false null=false implicit=false ",
            "missing": "false null=false implicit=false ",
        })
    );
}

// ---------------------------------------------------------------- GeoIP

fn write_geo_dbs(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let country = mmdb::build(
        "GeoLite2-Country",
        vec![
            ("192.0.2.0", 24, mmdb::country("DE", "Germany", "EU")),
            (
                "198.51.100.0",
                24,
                mmdb::country("US", "United States", "NA"),
            ),
            ("2001:db8::", 32, mmdb::country("FR", "France", "EU")),
        ],
    );
    let asn = mmdb::build(
        "GeoLite2-ASN",
        vec![
            ("192.0.2.0", 24, mmdb::asn(64500, "Example Networks")),
            ("2001:db8::", 32, mmdb::asn(64501, "Example v6")),
        ],
    );
    let c = dir.join("country.mmdb");
    let a = dir.join("asn.mmdb");
    std::fs::write(&c, country).unwrap();
    std::fs::write(&a, asn).unwrap();
    (c, a)
}

#[tokio::test]
async fn geoip_lookup() {
    let mut env = Env::new().await;
    let (c, a) = write_geo_dbs(env.dir.path());
    env.cfg.geoip.country_db = Some(c);
    env.cfg.geoip.asn_db = Some(a);
    env.script(
        Hook::Connect,
        r#"
        local g = geoip.lookup(connection.remoteip)
        local v6 = geoip.lookup("2001:db8::1")
        local us = geoip.lookup("::ffff:198.51.100.7")
        local unknown = geoip.lookup("203.0.113.1")
        context.r = {g = g, v6 = v6.country .. " " .. v6.asn, us = us.country .. " " .. tostring(us.asn),
                     unknown = next(unknown) == nil}
        Pass()"#,
    );
    let got = r(&env
        .engine()
        .run(Hook::Connect, connect_input(GOOD_IP))
        .await);
    assert_eq!(
        got,
        json!({
            "g": {"country": "DE", "country_name": "Germany", "continent": "EU",
                  "asn": 64500, "as_org": "Example Networks"},
            "v6": "FR 64501",
            "us": "US nil",
            "unknown": true,
        })
    );
}

#[tokio::test]
async fn geoip_missing_database_is_a_load_error() {
    let mut env = Env::new().await;
    env.script(Hook::Connect, "local g = geoip.lookup(connection.remoteip)");
    let err = PolicyEngine::load(&env.cfg).err().unwrap().to_string();
    assert!(
        err.contains("geoip") && err.contains("connect.lua"),
        "{err}"
    );
    env.cfg.geoip.country_db = Some(env.dir.path().join("nope.mmdb"));
    let err = PolicyEngine::load(&env.cfg).err().unwrap().to_string();
    assert!(err.contains("nope.mmdb"), "{err}");
    // a script that does not use geoip loads without a database
    env.cfg.geoip.country_db = None;
    env.script(Hook::Connect, "Pass()");
    PolicyEngine::load(&env.cfg).unwrap();
}

// ---------------------------------------------------------------- ScanDLP

#[tokio::test]
async fn scan_dlp_in_eod() {
    let mut env = Env::new().await;
    env.cfg
        .dlp
        .rules
        .insert("SECRET".into(), json!({"content": ["/top secret/i"]}));
    env.script(
        Hook::Eod,
        r#"context.r = {all = ScanDLP(), named = ScanDLP({"CREDITCARD"}),
                         custom = ScanDLP({X = {content = {"/fox/"}}})} Accept()"#,
    );
    let mut m = message("a@sender.com", "Top Secret", 10);
    m.extend_from_slice(b"card 4111 1111 1111 1111 and TOP SECRET plans\r\n");
    let got = r(&env
        .engine()
        .run(Hook::Eod, eod_input(GOOD_IP, "x", "a@sender.com", &m))
        .await);
    assert_eq!(
        got,
        json!({"all": ["CREDITCARD", "SECRET"], "named": ["CREDITCARD"], "custom": ["X"]})
    );
    // a bad configured rule is a load error
    env.cfg
        .dlp
        .rules
        .insert("BAD".into(), json!({"content": ["/(/"]}));
    assert!(PolicyEngine::load(&env.cfg).is_err());
}

// ---------------------------------------------------------------- shipped example scripts

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/examples")
        .join(name)
}

/// The example and the shipped default eod (scripts/eod.lua) stamp our
/// Authentication-Results the way the built-in eod does.
#[tokio::test]
async fn example_auth_results() {
    for script in [
        example("auth-results.lua"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/eod.lua"),
    ] {
        stamps_results(script).await;
    }
}

async fn stamps_results(script: PathBuf) {
    let mut env = Env::new().await;
    env.set(Hook::Eod, script);
    let mut m = b"Authentication-Results: mx.example.org; dkim=pass (forged)\r\n\
                  Authentication-Results: other.example; spf=fail\r\n"
        .to_vec();
    m.extend(
        env.dkim
            .sign("sender.com", "sel", &message("a@sender.com", "hi", 50)),
    );
    let o = env
        .engine()
        .run(
            Hook::Eod,
            eod_input(GOOD_IP, "client.test", "a@sender.com", &m),
        )
        .await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(matches!(o.verdict, HookVerdict::Accept { .. }));
    assert_eq!(o.queued.len(), 1);
    let out = String::from_utf8_lossy(&o.queued[0].message).to_string();
    assert!(!out.contains("(forged)"), "{out}");
    assert!(out.contains("Authentication-Results: other.example; spf=fail"));
    let ours = out
        .lines()
        .find(|l| l.starts_with("Authentication-Results: mx.example.org"))
        .unwrap_or_else(|| panic!("no header in {out}"));
    assert!(ours.contains("dkim=pass"), "{ours}");
    assert!(out.contains("dmarc=pass"), "{out}");
}

#[tokio::test]
async fn example_dmarc_reject_and_quarantine() {
    let mut env = Env::new().await;
    env.set(Hook::Eod, example("dmarc-reject.lua"));
    let e = env.engine();
    let bad = message("a@sender.com", "hi", 10);
    let o = e
        .run(Hook::Eod, eod_input(BAD_IP, "x", "a@sender.com", &bad))
        .await;
    assert!(matches!(o.verdict, HookVerdict::Reject { .. }), "{:?}", o);
    assert!(reply_text(&o).contains("DMARC"), "{}", reply_text(&o));
    let good = message("a@sender.com", "hi", 10);
    let o = e
        .run(Hook::Eod, eod_input(GOOD_IP, "x", "a@sender.com", &good))
        .await;
    assert!(matches!(o.verdict, HookVerdict::Accept { .. }), "{:?}", o);

    env.set(Hook::Eod, example("dmarc-quarantine.lua"));
    let e = env.engine();
    let q = message("a@quar.com", "hi", 10);
    let o = e
        .run(Hook::Eod, eod_input(BAD_IP, "x", "a@quar.com", &q))
        .await;
    assert!(matches!(o.verdict, HookVerdict::Accept { .. }), "{:?}", o);
    let out = String::from_utf8_lossy(&o.queued[0].message).to_string();
    assert!(
        out.starts_with("X-Sluice-Quarantine: dmarc=quarantine"),
        "{out}"
    );
}

#[tokio::test]
async fn example_dnsbl_connect_and_country_ban() {
    let mut env = Env::new().await;
    env.set(Hook::Connect, example("dnsbl-connect.lua"));
    let e = env.engine();
    let o = e.run(Hook::Connect, connect_input("192.0.2.66")).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(
        matches!(o.verdict, HookVerdict::Reject { ref reply, .. } if reply.code == 554),
        "{:?}",
        o.verdict
    );
    let o = e.run(Hook::Connect, connect_input("192.0.2.99")).await;
    assert_eq!(o.verdict, HookVerdict::pass());

    let (c, a) = write_geo_dbs(env.dir.path());
    env.cfg.geoip.country_db = Some(c);
    env.cfg.geoip.asn_db = Some(a);
    env.set(Hook::Connect, example("country-ban.lua"));
    let e = env.engine();
    let o = e.run(Hook::Connect, connect_input("198.51.100.7")).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(
        matches!(o.verdict, HookVerdict::Reject { ref reply, .. } if reply.code == 554),
        "{:?}",
        o.verdict
    );
    let o = e.run(Hook::Connect, connect_input("192.0.2.7")).await;
    assert_eq!(o.verdict, HookVerdict::pass());
}
