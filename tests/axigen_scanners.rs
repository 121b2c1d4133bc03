//! The Axigen runtime's seams to the real scanners: compiled policies run by
//! the real daemon (in-process), their checks answered by Sluice's own SPF,
//! DNSBL, reverse-DNS, sender-MX and GeoIP code against a loopback DNS
//! server (tests/authsupport/dns.rs) and a MaxMind database written for the
//! test (tests/authsupport/mmdb.rs). No stubs: what a client sees here is
//! what it sees in production.
//!
//! The corpus (tests/axigen/acceptance_basic.axigen, antispam.axigen) is
//! written the way Axigen WebAdmin writes smtpFilters.script; each file
//! passes `sluice check`, and its dialogues must not raise a single hook
//! error or policy runtime error (`sluice_hook_errors_total`,
//! `sluice_policy_runtime_errors_total`): what check accepts, the runtime
//! runs.
//!
//! Clients connect from several loopback addresses (127.0.0.1 … 127.0.2.1,
//! all local on Linux) so one daemon sees listed, unlisted, PTR-less and
//! banned clients.

mod authsupport;
mod common;

use std::path::{Path, PathBuf};

use authsupport::dns::{TestDns, Zone};
use authsupport::mmdb;
use common::*;
use tokio::net::TcpStream;

const LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/axigen")
        .join(name)
}

/// The DNS world of these tests.
fn zone() -> Zone {
    let mut z = Zone::new();
    // Reverse DNS (hickory answers loopback PTRs itself, as "localhost",
    // so these clients come through the PROXY-protocol listener):
    // 192.0.2.10 confirmed, 192.0.2.11 has no PTR, 192.0.2.12's reverse
    // zone is broken, 192.0.2.13's PTR name does not point back.
    z.ptr("192.0.2.10", "mail.client.test")
        .a("mail.client.test", "192.0.2.10")
        .ptr("192.0.2.13", "liar.client.test")
        .a("liar.client.test", "192.0.2.99")
        .servfail("12.2.0.192.in-addr.arpa")
        // DNSBL: 127.0.0.2 is listed in bl.test (the conventional test entry).
        .a("2.0.0.127.bl.test", "127.0.0.2")
        .txt("2.0.0.127.bl.test", "listed: see https://bl.test/127.0.0.2")
        .servfail("errbl.test")
        // Sender domains: SPF and MX.
        .txt("pass.test", "v=spf1 ip4:127.0.0.0/8 -all")
        .mx("pass.test", 10, "mx.pass.test")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all exp=why.fail.test")
        .txt("why.fail.test", "%{i} may not send mail for %{d}")
        .txt("fail2.test", "v=spf1 ip4:192.0.2.1 -all")
        .mx("fail2.test", 10, "mx.fail2.test")
        .mx("fail.test", 10, "mx.fail.test")
        .mx("none.test", 10, "mx.none.test")
        .txt("broken.test", "v=spf1 include:_spf.broken.test -all")
        .servfail("_spf.broken.test")
        .mx("broken.test", 10, "mx.broken.test")
        .txt(
            "perm.test",
            "v=spf1 ip4:127.0.0.0/8 redirect=a.perm.test redirect=b.perm.test",
        )
        .mx("perm.test", 10, "mx.perm.test")
        .txt("nullmx.test", "v=spf1 ?all")
        .mx("nullmx.test", 0, ".")
        .txt("nomx.test", "v=spf1 ?all")
        .txt("aonly.test", "v=spf1 ?all")
        .a("aonly.test", "192.0.2.20")
        .servfail("mxerr.test");
    z
}

/// Countries by client address: 127.0.0.0/24 DE, 127.0.1.0/24 CN,
/// 127.0.2.0/24 US.
fn write_country_db(dir: &Path) -> PathBuf {
    let db = mmdb::build(
        "GeoLite2-Country",
        vec![
            ("127.0.0.0", 24, mmdb::country("DE", "Germany", "EU")),
            ("127.0.1.0", 24, mmdb::country("CN", "China", "AS")),
            ("127.0.2.0", 24, mmdb::country("US", "United States", "NA")),
        ],
    );
    let p = dir.join("country.mmdb");
    std::fs::write(&p, db).unwrap();
    p
}

/// The daemon with `policy`, asking `dns`; `geoip`: the country database.
async fn server(policy: &Path, dns: &TestDns, geoip: Option<&Path>) -> TestServer {
    let listeners = "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
                     [[listener]]\nid = \"proxied\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n";
    let geo = match geoip {
        Some(p) => format!("[geoip]\ncountry_db = {p:?}\n"),
        None => String::new(),
    };
    TestServer::start(&format!(
        "{listeners}[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\n\
         [dns]\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n{geo}\
         [scripts]\nlib_path = [{LIB:?}]\naxigen = [{policy:?}]\n",
        dns.addr
    ))
    .await
}

/// A client whose address, as the daemon sees it, is `ip`: the PROXY
/// protocol listener "proxied" takes it from the PROXY line.
async fn client_as(srv: &TestServer, ip: &str) -> Client<TcpStream> {
    let mut c = Client::connect(srv.addr_of("proxied")).await;
    c.send_raw(format!("PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n").as_bytes())
        .await;
    c
}

/// A client connecting from the loopback address `src`.
async fn client_from(srv: &TestServer, src: &str) -> Client<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let s = tokio::time::timeout(STEP, sock.connect(srv.addr()))
        .await
        .unwrap()
        .unwrap();
    Client::new(s)
}

/// Hook errors and policy runtime errors (an event that failed and counted
/// as setting no action) of the whole process so far. Every test of this
/// file expects none, so a before/after comparison holds even with the
/// tests running in parallel.
fn hook_errors() -> f64 {
    let text = sluice::metrics::render(None);
    let runtime: f64 = text
        .lines()
        .filter(|l| l.starts_with("sluice_policy_runtime_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    runtime
        + sluice::policy::Hook::ALL
            .iter()
            .map(|h| {
                sluice::metrics::sample(
                    &text,
                    &format!("sluice_hook_errors_total{{hook=\"{}\"}}", h.name()),
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
}

/// `sluice check -c` on a config loading `policy`: (success, stderr+stdout).
fn sluice_check(dir: &Path, policy: &Path, geoip: Option<&Path>) -> (bool, String) {
    let cfg = dir.join("check.toml");
    let geo = match geoip {
        Some(p) => format!("[geoip]\ncountry_db = {p:?}\n"),
        None => String::new(),
    };
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n{geo}[scripts]\nlib_path = [{LIB:?}]\naxigen = [{policy:?}]\n",
            dir.join("var")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

/// The message queued by a 250 reply to the final dot.
fn queued(srv: &TestServer, reply: &Reply) -> String {
    let id = reply.text.rsplit(' ').next().unwrap();
    let e = srv.store().get_entry(id).unwrap().expect("queued");
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

fn big_message(bytes: usize) -> String {
    let mut m = String::from("From: <a@pass.test>\r\nTo: <b@example.org>\r\nSubject: big\r\n\r\n");
    while m.len() < bytes {
        m.push_str("0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    m
}

// ------------------------------------------------------------ the corpus

/// acceptance_basic.axigen: the banner (with GeoIPResult), maxDataSize and
/// maxRcptCount, GeoIP allow / ban with the configured action (tmpreject);
/// then the same policy on a server without a GeoIP database: nobody is
/// refused, GeoIPResult reads "", and `sluice check` says so once with the
/// policy's file:line.
#[tokio::test]
async fn acceptance_basic_corpus() {
    let before = hook_errors();
    let dns = zone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = write_country_db(dir.path());
    let policy = corpus("acceptance_basic.axigen");
    let (ok, out) = sluice_check(dir.path(), &policy, Some(&db));
    assert!(ok, "{out}");
    assert!(!out.contains("GeoIP has no"), "{out}");
    let srv = server(&policy, &dns, Some(&db)).await;

    // DE is allowed: the banner names the country; limits apply.
    let mut c = client_from(&srv, "127.0.0.1").await;
    let banner = c.expect("220").await;
    assert!(
        banner.text.contains("Welcome to 127.0.0.1 (country DE)"),
        "{banner:?}"
    );
    c.cmd("EHLO client.test", "250").await;
    c.cmd("MAIL FROM:<a@pass.test>", "250").await;
    c.cmd("RCPT TO:<one@example.org>", "250").await;
    c.cmd("RCPT TO:<two@example.org>", "250").await;
    c.cmd("RCPT TO:<three@example.org>", "452 4.5.3").await;
    c.cmd("DATA", "354").await;
    c.send_raw(big_message(3000).as_bytes()).await;
    c.cmd(".", "552 5.3.4").await;
    let r = c
        .send_message("a@pass.test", &["one@example.org"], MSG, "250")
        .await;
    assert!(queued(&srv, &r).contains("Subject: test"));
    c.cmd("QUIT", "221").await;

    // CN is banned, US is not in AllowedCountries: ActionGeoIPBan
    // (tmpreject) with the policy's explanation.
    for (ip, country) in [("127.0.1.1", "CN"), ("127.0.2.1", "US")] {
        let mut c = client_from(&srv, ip).await;
        let r = c.reply().await;
        assert_eq!(r.code / 100, 4, "{ip}: {r:?}");
        assert!(
            r.text
                .contains(&format!("Connections from {country} are not accepted here")),
            "{r:?}"
        );
    }
    assert_eq!(hook_errors(), before, "check passed, so no hook errors");

    // Without a database: the warning, once, at the first use (line 23,
    // %GeoIPResult% in the greeting); connections are not refused.
    let (ok, out) = sluice_check(dir.path(), &policy, None);
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("GeoIP has no country database").count(),
        1,
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:19:", policy.display())),
        "file:line of the first use: {out}"
    );
    let bare = server(&policy, &dns, None).await;
    for ip in ["127.0.0.1", "127.0.1.1"] {
        let mut c = client_from(&bare, ip).await;
        let banner = c.expect("220").await;
        assert!(
            banner.text.contains("Welcome to 127.0.0.1 (country )"),
            "GeoIPResult reads \"\": {banner:?}"
        );
        c.cmd("EHLO client.test", "250").await;
        c.send_message("a@pass.test", &["one@example.org"], MSG, "250")
            .await;
        c.cmd("QUIT", "221").await;
    }
    assert_eq!(hook_errors(), before, "no database is no error");
}

/// antispam.axigen: DNSBL at connect, reverse DNS at EHLO, sender MX and
/// SPF (read implicitly) at MAIL FROM, checkSPF at end of data.
#[tokio::test]
async fn antispam_corpus() {
    let before = hook_errors();
    let dns = zone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = corpus("antispam.axigen");
    let (ok, out) = sluice_check(dir.path(), &policy, None);
    assert!(ok, "{out}");
    assert!(!out.contains("warning"), "a clean policy: {out}");
    let srv = server(&policy, &dns, None).await;

    // Listed: refused at connect with the zone's A and TXT answers.
    let mut c = client_from(&srv, "127.0.0.2").await;
    let r = c.reply().await;
    assert_eq!(r.code / 100, 5, "{r:?}");
    assert!(
        r.text
            .contains("Blocked by bl.test (127.0.0.2): listed: see https://bl.test/127.0.0.2"),
        "{r:?}"
    );

    // PTR and A agree: Pass (the message is tagged). No PTR, or a PTR name
    // that does not point back: refused at EHLO. A broken reverse zone:
    // try later.
    let mut c = client_as(&srv, "192.0.2.10").await;
    c.expect("220").await;
    c.cmd("EHLO mail.client.test", "250").await;
    let r = c
        .send_message("a@none.test", &["b@example.org"], MSG, "250")
        .await;
    assert!(
        queued(&srv, &r).contains(" rdns=Pass "),
        "{}",
        queued(&srv, &r)
    );
    for ip in ["192.0.2.11", "192.0.2.13"] {
        let mut c = client_as(&srv, ip).await;
        c.expect("220").await;
        let r = c.cmd("EHLO nowhere.test", "550").await;
        assert!(
            r.text.contains(&format!("No reverse DNS for {ip}")),
            "{r:?}"
        );
    }
    let mut c = client_as(&srv, "192.0.2.12").await;
    c.expect("220").await;
    let r = c.cmd("EHLO nowhere.test", "4").await;
    assert!(
        r.text.contains("Reverse DNS lookup failed for 192.0.2.12"),
        "{r:?}"
    );

    // Not listed, PTR confirmed, MX and SPF pass: accepted and tagged.
    let mut c = client_from(&srv, "127.0.0.1").await;
    c.expect("220").await;
    c.cmd("EHLO client.test", "250").await;
    let r = c
        .send_message("a@pass.test", &["b@example.org"], MSG, "250")
        .await;
    let m = queued(&srv, &r);
    assert!(
        m.contains("X-Axigen-Antispam: spf=Pass rdns=Pass mx=Pass dnsbl=[]\r\n"),
        "{m}"
    );
    // SPF none (no record, MX present): accepted, tagged None.
    let r = c
        .send_message("a@none.test", &["b@example.org"], MSG, "250")
        .await;
    assert!(
        queued(&srv, &r).contains("X-Axigen-Antispam: spf=None rdns=Pass mx=Pass"),
        "{}",
        queued(&srv, &r)
    );
    // Implicit MX (an A record only): Pass. The null sender: Neutral.
    c.cmd("MAIL FROM:<a@aonly.test>", "250").await;
    c.cmd("RSET", "250").await;
    let r = c.send_message("", &["b@example.org"], MSG, "250").await;
    assert!(
        queued(&srv, &r).contains("mx=Neutral"),
        "{}",
        queued(&srv, &r)
    );
    // Null MX, no MX and no address: Fail. A failing MX lookup: Error.
    let r = c.cmd("MAIL FROM:<a@nullmx.test>", "550").await;
    assert!(
        r.text
            .contains("Sender domain <nullmx.test> has no valid MX"),
        "{r:?}"
    );
    c.cmd("MAIL FROM:<a@nomx.test>", "550").await;
    let r = c.cmd("MAIL FROM:<a@mxerr.test>", "4").await;
    assert!(
        r.text.contains("Cannot verify the MX of <mxerr.test>"),
        "{r:?}"
    );
    // SPF temperror (the include's zone answers SERVFAIL): try later.
    let r = c.cmd("MAIL FROM:<a@broken.test>", "4").await;
    assert!(r.text.contains("SPF error for <a@broken.test>: <"), "{r:?}");
    // SPF permerror (two redirect= modifiers, RFC 7208 §6): also 4xx here.
    let r = c.cmd("MAIL FROM:<a@perm.test>", "4").await;
    assert!(
        r.text.contains(
            "SPF error for <a@perm.test>: <the SPF record of perm.test cannot be evaluated>"
        ),
        "{r:?}"
    );
    // SPF fail: rejected with the policy's text and SPFExplanation — the
    // domain's exp= text, or (without one) what the result means.
    let r = c.cmd("MAIL FROM:<a@fail.test>", "550").await;
    assert!(
        r.text.contains(
            "SPF check failed for <a@fail.test>: <127.0.0.1 may not send mail for fail.test>"
        ),
        "{r:?}"
    );
    c.cmd("QUIT", "221").await;
    let mut c = client_from(&srv, "127.0.0.1").await;
    c.expect("220").await;
    c.cmd("EHLO client.test", "250").await;
    let r = c.cmd("MAIL FROM:<a@fail2.test>", "550").await;
    assert!(
        r.text.contains(
            "SPF check failed for <a@fail2.test>: <domain of a@fail2.test does not designate 127.0.0.1 as permitted sender>"
        ),
        "{r:?}"
    );
    // Axigen: after an SPF Fail the following MAIL FROMs fail too.
    c.cmd("MAIL FROM:<a@pass.test>", "550").await;
    c.cmd("QUIT", "221").await;
    assert_eq!(hook_errors(), before, "check passed, so no hook errors");
}

// ------------------------------------------------- seams beyond the corpus

/// checkDNSBL with several zones (spaces or commas): one answering
/// SERVFAIL is no listing, and its error is the explanation; a listing in
/// another zone still counts.
#[tokio::test]
async fn dnsbl_zone_lists_and_errors() {
    let before = hook_errors();
    let dns = zone().start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("dnsbl.axigen");
    std::fs::write(
        &policy,
        "event onConnect {\n\tset (DNSBLServer, \"errbl.test, bl.test\");\n\tcall (checkDNSBL);\n\tset (smtpGreeting, \"dnsbl=[%DNSBLResult%] %DNSBLExplanation%\");\n}\n",
    )
    .unwrap();
    let srv = server(&policy, &dns, None).await;
    let mut c = client_from(&srv, "127.0.0.1").await;
    let r = c.expect("220").await;
    assert!(
        r.text
            .starts_with("dnsbl=[] DNSBL lookup failed: errbl.test: "),
        "{r:?}"
    );
    let mut c = client_from(&srv, "127.0.0.2").await;
    let r = c.expect("220").await;
    assert!(
        r.text
            .contains("dnsbl=[127.0.0.2] listed: see https://bl.test/127.0.0.2"),
        "{r:?}"
    );
    assert_eq!(hook_errors(), before);
}

/// `sluice check` finds at load what would not work at run time: checkDNSBL
/// with no DNSBLServer, and onBodyChunk's single run — each with file:line.
/// A policy whose text merely mentions "geoip." loads without a database.
#[test]
fn check_reports_scanner_inputs_and_body_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.axigen");
    std::fs::write(
        &policy,
        "event onMailFrom {\n\tcall (checkDNSBL);\n}\n\nevent onBodyChunk {\n\tset (smtpExplanation, \"see geoip.example.org\");\n}\n",
    )
    .unwrap();
    let (ok, out) = sluice_check(dir.path(), &policy, None);
    assert!(ok, "warnings only: {out}");
    let p = policy.display();
    assert!(
        out.contains(&format!(
            "{p}:2:8: warning: checkDNSBL in onMailFrom but DNSBLServer is never set"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{p}:5:7: warning: onBodyChunk runs once, at end of data"
        )),
        "{out}"
    );
}

/// `sluice translate --explain` on a corpus file: per event the hook, the
/// methods, the session settings.
#[test]
fn translate_explain_corpus() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "translate",
            "--explain",
            corpus("acceptance_basic.axigen").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "onConnect (",
        "→ hook `connect`, when the client connects, before the 220 banner",
        "checkGeoIp (line 24, in method acceptance_basic_connect)",
        "maxDataSize (line 20, in method acceptance_basic_connect): message size limit in KB",
        "maxRcptCount (line 31, in method acceptance_basic_ehlo): recipients per message",
        "onDataReceived (",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
}
