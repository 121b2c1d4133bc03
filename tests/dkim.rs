//! DKIM signing for scripts, end to end: `mail:signDKIM` in an eod script,
//! then verification of exactly what `mail:queue` stored — with mail-auth
//! through a real DNS server on loopback (hickory-server serving the public
//! keys), and with dkimpy (Python, an implementation we did not write) on
//! what the real daemon queued after an SMTP dialogue.

mod authsupport;
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use authsupport::dns::{TestDns, Zone};
use authsupport::keys::{rsa_dns_record, Key, RSA_PKCS1_PEM, RSA_PKCS8_PEM};
use common::TestServer;
use sluice::config::Config;
use sluice::policy::{test_input, Hook, HookOutcome, PolicyEngine};

const DOMAIN: &str = "sender.com";

/// An Ed25519 key published as `ed`, a second one whose published record
/// (`wrong`) is a different key's, the RSA test key as `rsa`; `[dkim.keys]`
/// names them `ed`, `ed2` and `rsa` (PKCS#1 file).
struct Env {
    dir: tempfile::TempDir,
    cfg: Config,
    _dns: TestDns,
    ed: Key,
}

impl Env {
    async fn new() -> Env {
        let ed = Key::generate();
        let ed2 = Key::generate();
        let other = Key::generate();
        let mut z = Zone::new();
        z.txt(&format!("ed._domainkey.{DOMAIN}"), &ed.dns_record())
            .txt(&format!("wrong._domainkey.{DOMAIN}"), &other.dns_record())
            .txt(&format!("rsa._domainkey.{DOMAIN}"), &rsa_dns_record());
        let dns = z.start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            hostname: "mx.example.org".into(),
            ..Default::default()
        };
        cfg.dns.nameservers = vec![dns.addr.to_string()];
        cfg.dns.timeout = Some(Duration::from_millis(500));
        for (id, pem) in [
            ("ed", ed.pem()),
            ("ed2", ed2.pem()),
            ("rsa", RSA_PKCS1_PEM.to_string()),
        ] {
            let p = dir.path().join(format!("{id}.pem"));
            std::fs::write(&p, pem).unwrap();
            cfg.dkim.keys.insert(id.into(), p);
        }
        Env {
            dir,
            cfg,
            _dns: dns,
            ed,
        }
    }

    fn engine(&self, hook: Hook, src: &str) -> Arc<PolicyEngine> {
        let p = self.dir.path().join(format!("{}.lua", hook.name()));
        std::fs::write(&p, src).unwrap();
        let mut cfg = self.cfg.clone();
        match hook {
            Hook::Eod => cfg.scripts.eod = Some(p),
            Hook::Headers => cfg.scripts.headers = Some(p),
            other => panic!("hook {other:?} not used here"),
        }
        PolicyEngine::load(&cfg).unwrap()
    }
}

async fn run(e: &PolicyEngine, hook: Hook, msg: &[u8]) -> HookOutcome {
    let env = json!({
        "connection": {"remoteip": "192.0.2.10", "helo": {"verb": "EHLO", "host": "client.test"}},
        "sender": "a@sender.com",
        "recipients": ["rcpt@example.org"],
    });
    let o = e
        .run(hook, test_input(hook, &env, Some(msg.to_vec())).unwrap())
        .await;
    assert!(o.error.is_none(), "script error: {:?}", o.error);
    o
}

/// `dkim.verify` (mail-auth over the loopback DNS) of raw bytes.
async fn mail_auth_verify(env: &Env, raw: &[u8]) -> Vec<(String, String)> {
    let e = env.engine(
        Hook::Eod,
        "context.r = dkim.verify(arguments.mail) Accept()",
    );
    let o = run(&e, Hook::Eod, raw).await;
    o.context["r"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["selector"].as_str().unwrap_or("").to_string(),
                s["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn original() -> Vec<u8> {
    let mut m = String::from(
        "From: Sender <a@sender.com>\r\nTo: rcpt@example.org\r\nSubject: hello\r\n\
         X-Drop: internal\r\nDate: Mon, 13 Jan 2025 10:00:00 +0000\r\n\
         Message-ID: <t1@sender.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
    );
    for _ in 0..20 {
        m.push_str("The quick brown fox jumps over the lazy dog.  Twice   spaced.\r\n");
    }
    m.into_bytes()
}

/// The edits, then the signature, then queue: what is stored is what was signed.
fn sign_script(selector: &str, key: &str, opts: &str) -> String {
    format!(
        r#"local m = arguments.mail
m:setHeader("Subject", "[ext] " .. m:getHeader("Subject"))
m:addHeader("X-Gateway", "sluice")
m:delHeader("X-Drop")
local ok, err = m:signDKIM("{selector}", "{DOMAIN}", {key}, {opts})
context.ok = ok
context.err = err
context.self = m:verifyDKIM()
m:queue("a@sender.com", "rcpt@example.org", "default")
Accept()
"#
    )
}

fn replace(raw: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(raw.to_vec()).unwrap();
    assert!(s.contains(from), "{from:?} not in\n{s}");
    s.replacen(from, to, 1).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_then_verify_every_algorithm_and_canonicalization() {
    let env = Env::new().await;
    let pkcs8 = format!("[[{RSA_PKCS8_PEM}]]");
    let inline_ed = format!("[[{}]]", env.ed.pem());
    // (selector, key argument, algorithm)
    let keys = [
        ("rsa", "\"rsa\"", "rsa-sha256"),
        ("rsa", pkcs8.as_str(), "rsa-sha256"),
        ("ed", "\"ed\"", "ed25519-sha256"),
        ("ed", inline_ed.as_str(), "ed25519-sha256"),
    ];
    for (selector, key, alg) in keys {
        for canon in [
            "simple/simple",
            "relaxed/relaxed",
            "relaxed/simple",
            "simple/relaxed",
        ] {
            let what = format!("{alg} {canon} key {}", &key[..key.len().min(12)]);
            let opts = format!(
                "{{algorithm = \"{alg}\", canonicalization = \"{canon}\", expire = 3600, \
                 headers = {{\"From\", \"To\", \"Subject\", \"Date\", \"Message-ID\", \"X-Gateway\"}}}}"
            );
            let e = env.engine(Hook::Eod, &sign_script(selector, key, &opts));
            let o = run(&e, Hook::Eod, &original()).await;
            assert_eq!(o.context["ok"], json!(true), "{what}: {}", o.context["err"]);
            assert_eq!(
                o.context["self"][0]["result"], "pass",
                "{what}: {}",
                o.context
            );
            assert_eq!(o.queued.len(), 1, "{what}");
            let queued = o.queued[0].message.to_vec();
            let text = String::from_utf8(queued.clone()).unwrap();
            // The signature is on top and covers the edited header block.
            assert!(text.starts_with("DKIM-Signature: v=1; "), "{what}: {text}");
            assert!(text.contains(&format!("a={alg}")), "{what}");
            assert!(text.contains(&format!("c={canon}")), "{what}");
            assert!(text.contains("Subject: [ext] hello\r\n"), "{what}");
            assert!(text.contains("X-Gateway: sluice\r\n"), "{what}");
            assert!(!text.contains("X-Drop"), "{what}");
            assert!(text.contains(" x="), "{what}: no expiry in {text}");

            let pass = vec![(selector.to_string(), "pass".to_string())];
            let fail = vec![(selector.to_string(), "fail".to_string())];
            assert_eq!(mail_auth_verify(&env, &queued).await, pass, "{what}");
            // A signed header changed afterwards, or back to what it was
            // before the script's edit: fail.
            let t = replace(&queued, "Subject: [ext] hello", "Subject: [ext] hellp");
            assert_eq!(mail_auth_verify(&env, &t).await, fail, "{what}");
            let t = replace(&queued, "Subject: [ext] hello", "Subject: hello");
            assert_eq!(mail_auth_verify(&env, &t).await, fail, "{what}");
            let t = replace(&queued, "X-Gateway: sluice", "X-Gateway: other");
            assert_eq!(mail_auth_verify(&env, &t).await, fail, "{what}");
            // The body changed: fail (body hash).
            let t = replace(&queued, "lazy dog", "lazy cat");
            assert_eq!(mail_auth_verify(&env, &t).await, fail, "{what}");
            // Whitespace: relaxed canonicalization tolerates it, simple does not.
            let t = replace(&queued, "Subject: [ext] hello", "Subject:  [ext]   hello");
            let want = if canon.starts_with("relaxed") {
                &pass
            } else {
                &fail
            };
            assert_eq!(&mail_auth_verify(&env, &t).await, want, "{what} header ws");
            let t = replace(&queued, "Twice   spaced.", "Twice spaced.");
            let want = if canon.ends_with("/relaxed") {
                &pass
            } else {
                &fail
            };
            assert_eq!(&mail_auth_verify(&env, &t).await, want, "{what} body ws");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_headers_and_edits_after_signing() {
    let env = Env::new().await;
    // Default options: relaxed/relaxed, the default headers present, From.
    let src = r#"local m = arguments.mail
assert(m:signDKIM("ed", "sender.com", "ed"))
context.sig = m:getHeader("DKIM-Signature")
m:queue("a@sender.com", "rcpt@example.org", "default")
-- an edit after signing is what gets queued: it breaks the signature
m:setHeader("Subject", "changed after signing")
m:queue("a@sender.com", "rcpt@example.org", "default")
Accept()
"#;
    let e = env.engine(Hook::Eod, src);
    let o = run(&e, Hook::Eod, &original()).await;
    let sig = o.context["sig"].as_str().unwrap().replace(' ', "");
    assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
    // h= lists the fields bottom-up; X-Drop and the Received-like rest are out.
    assert!(
        sig.contains("h=Content-Type:MIME-Version:Message-ID:Date:Subject:To:From;"),
        "{sig}"
    );
    assert_eq!(o.queued.len(), 2);
    assert_eq!(
        mail_auth_verify(&env, &o.queued[0].message).await,
        [("ed".to_string(), "pass".to_string())]
    );
    assert_eq!(
        mail_auth_verify(&env, &o.queued[1].message).await,
        [("ed".to_string(), "fail".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_errors_are_values_not_script_errors() {
    let env = Env::new().await;
    let src = r#"local m = arguments.mail
local r = {}
local function try(name, ...)
  local ok, err = m:signDKIM(...)
  r[name] = {ok = ok, err = err}
end
try("unknown_id", "s", "sender.com", "nope")
try("bad_pem", "s", "sender.com", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
try("key_type", "s", "sender.com", 42)
try("mismatch", "s", "sender.com", "ed", {algorithm = "rsa-sha256"})
try("bad_algorithm", "s", "sender.com", "rsa", {algorithm = "rsa-sha1"})
try("bad_canon", "s", "sender.com", "ed", {canonicalization = "loose/simple"})
try("unknown_option", "s", "sender.com", "ed", {expiry = 5})
try("bad_expire", "s", "sender.com", "ed", {expire = -1})
try("bad_headers", "s", "sender.com", "ed", {headers = {"Bad:Name"}})
try("bad_selector", "a; h=x", "sender.com", "ed")
try("bad_domain", "s", "", "ed")
context.r = r
context.sigs = #m:getHeaders("DKIM-Signature")
Accept()
"#;
    let e = env.engine(Hook::Eod, src);
    let o = run(&e, Hook::Eod, &original()).await;
    let r = &o.context["r"];
    for (name, want) in [
        (
            "unknown_id",
            "key \"nope\" is neither a PEM private key nor an id in [dkim.keys]",
        ),
        ("bad_pem", "key: "),
        (
            "key_type",
            "key must be a PEM string or a [dkim.keys] id, not integer",
        ),
        (
            "mismatch",
            "algorithm rsa-sha256 does not match the key (ed25519-sha256)",
        ),
        ("bad_algorithm", "algorithm \"rsa-sha1\" is not"),
        ("bad_canon", "canonicalization \"loose/simple\""),
        ("unknown_option", "unknown option \"expiry\""),
        ("bad_expire", "expire must be a whole number"),
        ("bad_headers", "\"Bad:Name\" is not a header name"),
        ("bad_selector", "selector \"a; h=x\" is not valid"),
        ("bad_domain", "domain \"\" is not valid"),
    ] {
        assert_eq!(r[name]["ok"], Value::Null, "{name}: {r}");
        let err = r[name]["err"].as_str().unwrap_or_default();
        assert!(
            err.starts_with("signDKIM: ") && err.contains(want),
            "{name}: {err:?} should contain {want:?}"
        );
    }
    assert_eq!(o.context["sigs"], 0, "a failed signDKIM adds nothing");

    // The headers hook has no body yet: an error value too.
    let e = env.engine(
        Hook::Headers,
        "local ok, err = arguments.mail:signDKIM('ed', 'sender.com', 'ed')\ncontext.r = {ok = ok, err = err}",
    );
    let o = run(&e, Hook::Headers, &original()).await;
    assert_eq!(
        o.context["r"],
        json!({"err": "signDKIM: the body has not arrived yet in the headers hook"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_dkim_all_or_one_signature() {
    let env = Env::new().await;
    // Signed by `ed` (published), then by `ed2` under selector `wrong`
    // (the record there is another key's): top is `wrong`, then `ed`.
    let src = r#"local m = arguments.mail
assert(m:signDKIM("ed", "sender.com", "ed"))
assert(m:signDKIM("wrong", "sender.com", "ed2"))
context.all = m:verifyDKIM()
context.top = m:verifyDKIM(1)
context.second = m:verifyDKIM(2)
context.by_value = m:verifyDKIM(m:getHeader("DKIM-Signature", {index = 2}))
context.by_field = m:verifyDKIM(m:getHeader("DKIM-Signature", {index = 1, field = true}))
local none, err = m:verifyDKIM(3)
context.none = {none == nil, err}
local none2, err2 = m:verifyDKIM("v=1; nothing like it")
context.none2 = {none2 == nil, err2}
local none3, err3 = m:verifyDKIM({})
context.none3 = {none3 == nil, err3}
Accept()
"#;
    let e = env.engine(Hook::Eod, src);
    let o = run(&e, Hook::Eod, &original()).await;
    let c = &o.context;
    let sel_res = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(|s| {
                assert_eq!(s["domain"], DOMAIN);
                (
                    s["selector"].as_str().unwrap().to_string(),
                    s["result"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let p = |s: &str, r: &str| (s.to_string(), r.to_string());
    assert_eq!(sel_res(&c["all"]), [p("wrong", "fail"), p("ed", "pass")]);
    assert_eq!(c["all"][0]["error"], "signature verification failed");
    assert_eq!(sel_res(&c["top"]), [p("wrong", "fail")]);
    assert_eq!(sel_res(&c["second"]), [p("ed", "pass")]);
    assert_eq!(sel_res(&c["by_value"]), [p("ed", "pass")]);
    assert_eq!(sel_res(&c["by_field"]), [p("wrong", "fail")]);
    assert_eq!(
        c["none"],
        json!([
            true,
            "verifyDKIM: no DKIM-Signature number 3 (the message has 2)"
        ])
    );
    assert_eq!(
        c["none2"],
        json!([true, "verifyDKIM: no DKIM-Signature has that value"])
    );
    assert!(c["none3"][1]
        .as_str()
        .unwrap()
        .contains("header must be an index"));
}

// ------------------------------------------------ dkimpy on the real daemon

/// A python3 that has dkimpy: the one on PATH, else the system one (a
/// pyenv python3 on PATH does not see Debian's python3-dkim). Panics —
/// the test fails, it does not skip — when there is none.
fn python_with_dkimpy() -> &'static str {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(py)
            .args(["-c", "import dkim"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return py;
        }
    }
    panic!("python3 with dkimpy is required: apt-get install python3-dkim (see .ci/run)");
}

/// dkimpy's verdict on each DKIM-Signature of `raw`, top first.
fn dkimpy(dir: &Path, raw: &[u8], records: &[(String, String)]) -> Vec<Value> {
    let file = dir.join("queued.eml");
    std::fs::write(&file, raw).unwrap();
    let out = std::process::Command::new(python_with_dkimpy())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/dkim_verify.py"
        ))
        .arg(&file)
        .args(records.iter().map(|(n, v)| format!("{n}={v}")))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dkimpy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str::<Vec<Value>>(stdout.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkimpy_verifies_what_the_daemon_queued() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Key::generate();
    let ed_file = dir.path().join("ed.pem");
    std::fs::write(&ed_file, ed.pem()).unwrap();
    let rsa_file = dir.path().join("rsa.pem");
    std::fs::write(&rsa_file, RSA_PKCS8_PEM).unwrap();
    // The canonicalization comes from a header the script removes before
    // signing; the Subject is rewritten and a header added (and signed).
    let script = dir.path().join("eod.lua");
    std::fs::write(
        &script,
        r#"local m = arguments.mail
local canon = m:getHeader("X-Test-Canon")
m:delHeader("X-Test-Canon")
m:setHeader("Subject", "[signed] " .. (m:getHeader("Subject") or ""))
m:addHeader("X-Gateway", "sluice")
local hs = {"From", "To", "Subject", "Date", "Message-ID", "X-Gateway"}
local ok, err = m:signDKIM("rsa", "sender.com", "rsa", {canonicalization = canon, headers = hs})
if not ok then Reject(err) end
ok, err = m:signDKIM("ed", "sender.com", "ed", {canonicalization = canon, algorithm = "ed25519-sha256"})
if not ok then Reject(err) end
for _, r in ipairs(transaction.recipients) do
  m:queue(transaction.sender, r.recipient, "default", {hold = true})
end
Accept()
"#,
    )
    .unwrap();
    let srv = TestServer::start(&format!(
        "[scripts]\neod = {script:?}\n[dkim.keys]\nrsa = {rsa_file:?}\ned = {ed_file:?}\n"
    ))
    .await;
    let records = vec![
        (format!("rsa._domainkey.{DOMAIN}"), rsa_dns_record()),
        (format!("ed._domainkey.{DOMAIN}"), ed.dns_record()),
    ];
    let canons = [
        "simple/simple",
        "relaxed/relaxed",
        "relaxed/simple",
        "simple/relaxed",
    ];
    for (i, canon) in canons.iter().enumerate() {
        let body = format!(
            "From: Sender <a@sender.com>\r\nTo: <b@example.org>\r\nSubject: test {i}\r\n\
             X-Test-Canon: {canon}\r\nDate: Mon, 13 Jan 2025 10:00:00 +0000\r\n\
             Message-ID: <m{i}@sender.com>\r\n\r\nHello,\r\n\r\n.a line that starts with a dot\r\n\
             trailing   spaces   \r\n\r\n\r\n"
        );
        let mut c = srv.client().await;
        c.greet().await;
        c.send_message("a@sender.com", &["b@example.org"], &body, "250")
            .await;
        c.cmd("QUIT", "221").await;
    }
    let entries = srv.store().list_entries().unwrap();
    assert_eq!(entries.len(), canons.len(), "{entries:#?}");
    let mut seen = Vec::new();
    for e in &entries {
        let raw = srv.store().get_body(&e.body).unwrap().unwrap().to_vec();
        let text = String::from_utf8_lossy(&raw).to_string();
        let canon = canons
            .iter()
            .find(|c| text.contains(&format!("c={c};")))
            .unwrap_or_else(|| panic!("no known c= in\n{text}"));
        seen.push(*canon);
        assert!(!text.contains("X-Test-Canon"), "{text}");
        assert!(text.contains("Subject: [signed] test"), "{text}");
        // Both signatures pass in dkimpy.
        let v = dkimpy(dir.path(), &raw, &records);
        assert_eq!(
            v,
            [
                json!({"ok": true, "error": null}),
                json!({"ok": true, "error": null})
            ],
            "{canon}:\n{text}"
        );
        // Tampering a signed header makes both fail.
        let t = replace(&raw, "Subject: [signed] test", "Subject: [signed] best");
        let v = dkimpy(dir.path(), &t, &records);
        assert!(v.iter().all(|r| r["ok"] == false), "{canon}: {v:?}");
        // So does a changed body.
        let t = replace(&raw, "Hello,", "Hallo,");
        let v = dkimpy(dir.path(), &t, &records);
        assert!(v.iter().all(|r| r["ok"] == false), "{canon}: {v:?}");
    }
    seen.sort();
    let mut want = canons.to_vec();
    want.sort();
    assert_eq!(seen, want);
}

// ------------------------------------------------------------ sluice check

fn sluice_check(dir: &Path, keys: &str) -> (bool, String) {
    let cfg = dir.join("check.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {:?}\n[dkim.keys]\n{keys}", dir.join("var")),
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

#[test]
fn check_names_a_missing_or_invalid_dkim_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("nope.pem");
    let (ok, out) = sluice_check(dir.path(), &format!("main = {missing:?}\n"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("[dkim.keys] main = {}", missing.display())),
        "{out}"
    );

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let (ok, out) = sluice_check(dir.path(), &format!("junk = {junk:?}\n"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("[dkim.keys] junk = {}", junk.display())),
        "{out}"
    );
    assert!(out.contains("PEM private key"), "{out}");

    let good = dir.path().join("good.pem");
    std::fs::write(&good, RSA_PKCS1_PEM).unwrap();
    let (ok, out) = sluice_check(dir.path(), &format!("good = {good:?}\n"));
    assert!(ok, "{out}");
}
