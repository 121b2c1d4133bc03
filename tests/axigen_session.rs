//! Axigen session settings enforced by the SMTP session, through the real
//! daemon over loopback: limits and switches set in onConnect / onEhlo act
//! although the policy has no later event; localDelivery / remoteDelivery
//! narrow the relay rule; isRcptLocal knows relay.domains without a Lua
//! side file; a runtime error in an event refuses nothing.

mod common;
use common::*;

const LIB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");

/// A policy file in `dir`.
fn policy(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// WebAdmin style: the limits live in a method called from onEhlo, one
/// setting in onConnect; no onMailFrom, onRcptTo or onDataReceived event.
const LIMITS: &str = "event onConnect {\r\n\tset (maxRcptCount, \"2\");\r\n\tset (allowDSN, \"no\");\r\n}\r\n\r\nevent onEhlo {\r\n\tcall (acceptance_limits);\r\n}\r\n\r\nmethod acceptance_limits {\r\n\t# limits\r\n\tset (maxDataSize, \"2\");\r\n\tset (maxReceivedHeaders, \"3\");\r\n\tset (allowPipelining, \"no\");\r\n\tset (allow8BitMime, \"no\");\r\n\tset (allowBinaryData, \"no\");\r\n\tset (allowStartTLS, \"no\");\r\n}\r\n";

fn message(received: usize, body_bytes: usize) -> String {
    let mut m = String::new();
    for i in 0..received {
        m.push_str(&format!(
            "Received: from hop{i}.example by hop{}.example; Tue, 1 Dec 2026 10:00:00 +0000\r\n",
            i + 1
        ));
    }
    m.push_str("From: a@sender.example\r\nSubject: limits\r\n\r\n");
    while m.len() < body_bytes {
        m.push_str("0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    m
}

#[tokio::test]
async fn settings_from_early_events_are_enforced_without_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(dir.path(), "limits.axigen", LIMITS);
    let compiled = sluice::policy::axigen::compile_file(&p).unwrap();
    assert!(
        compiled.hooks.iter().all(|h| matches!(
            h.hook,
            sluice::policy::Hook::Connect | sluice::policy::Hook::Helo
        )),
        "the policy has no later hook: {:?}",
        compiled.hooks.iter().map(|h| h.hook).collect::<Vec<_>>()
    );
    let srv = TestServer::start(&format!(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n[queue]\ndeliver = false\n[scripts]\nlib_path = [{LIB:?}]\naxigen = [{p:?}]\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.expect("220").await;
    let ehlo = c.cmd("EHLO client.example.net", "250").await;
    let exts: Vec<&str> = ehlo.text.lines().skip(1).collect();
    assert!(exts.contains(&"SIZE 2048"), "maxDataSize 2 KB: {exts:?}");
    for off in ["PIPELINING", "8BITMIME", "CHUNKING", "DSN", "STARTTLS"] {
        assert!(!exts.contains(&off), "{off} switched off: {exts:?}");
    }
    c.cmd("STARTTLS", "502 5.5.1").await;
    // MAIL: SIZE above the policy's limit, parameters of switched-off extensions.
    c.cmd("MAIL FROM:<a@sender.example> SIZE=5000", "552 5.3.4")
        .await;
    c.cmd("MAIL FROM:<a@sender.example> BODY=8BITMIME", "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@sender.example> RET=HDRS", "555 5.5.4")
        .await;
    c.cmd("MAIL FROM:<a@sender.example> SIZE=1000", "250").await;
    // RCPT: DSN parameters refused, then maxRcptCount 2.
    c.cmd("RCPT TO:<one@example.org>", "250").await;
    c.cmd("RCPT TO:<two@example.org> NOTIFY=SUCCESS", "555 5.5.4")
        .await;
    c.cmd("RCPT TO:<two@example.org>", "250").await;
    c.cmd("RCPT TO:<three@example.org>", "452 4.5.3").await;
    // BDAT is not offered: refused, the chunk consumed, the session in sync.
    c.send_raw(b"BDAT 5 LAST\r\nHELLO").await;
    c.expect("502 5.5.1").await;
    // DATA over maxDataSize.
    c.cmd("DATA", "354").await;
    c.send_raw(message(0, 3000).as_bytes()).await;
    c.cmd(".", "552 5.3.4").await;
    // maxReceivedHeaders 3: four are a loop, three are not.
    let r = c
        .send_message(
            "a@sender.example",
            &["one@example.org"],
            &message(4, 0),
            "554 5.4.6",
        )
        .await;
    assert!(r.text.contains("Received"), "{r:?}");
    c.send_message(
        "a@sender.example",
        &["one@example.org"],
        &message(3, 0),
        "250",
    )
    .await;
    c.cmd("QUIT", "221").await;
    // The recipient over the limit is in the history with the reply it got.
    // History is written behind the replies: wait (bounded) for it.
    let refused = || {
        srv.store()
            .history_all()
            .unwrap()
            .into_iter()
            .find(|h| h.recipient == "three@example.org")
    };
    assert!(wait_until(|| refused().is_some()).await);
    let three = refused().expect("a history record for the refused recipient");
    assert!(three.reason.contains("452 4.5.3"), "{three:?}");
}

/// The AUTH PLAIN script every authenticated case uses.
const AUTH_LUA: &str =
    r#"if arguments.username == "alice" and arguments.password == "s3cret" then Accept() end"#;

async fn rcpt_reply(rd: &str, ld: &str, trusted: bool, authed: bool, rcpt: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(
        dir.path(),
        "delivery.axigen",
        &format!(
            "event onConnect {{\n\tset (remoteDelivery, \"{rd}\");\n\tset (localDelivery, \"{ld}\");\n}}\n"
        ),
    );
    let auth = policy(dir.path(), "auth.lua", AUTH_LUA);
    let nets = if trusted { r#"["127.0.0.0/8"]"# } else { "[]" };
    let srv = TestServer::start(&format!(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\ntrusted_networks = {nets}\n[scripts]\nlib_path = [{LIB:?}]\naxigen = [{p:?}]\nauth = {auth:?}\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let line = format!("RCPT TO:<{rcpt}>\r\n");
    let r = if authed {
        let mut c = c.starttls(&srv.cert_path()).await;
        c.cmd("EHLO client.example.net", "250").await;
        c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "235").await;
        c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        c.send_raw(line.as_bytes()).await;
        c.reply().await
    } else {
        c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        c.send_raw(line.as_bytes()).await;
        c.reply().await
    };
    format!("{} {}", r.code, r.text)
}

/// localDelivery / remoteDelivery set in onConnect narrow the built-in rule
/// at RCPT (the policy has no onRcptTo); they never widen it.
#[tokio::test]
async fn delivery_rules_narrow_the_relay_rule() {
    const REMOTE: &str = "victim@elsewhere.example";
    const LOCAL: &str = "bob@example.org";
    // (remoteDelivery, localDelivery, trusted client, authenticated, recipient, reply)
    let cases = [
        (
            "auth",
            "all",
            true,
            false,
            REMOTE,
            "550 5.7.1 Relaying denied",
        ),
        ("auth", "all", true, true, REMOTE, "250"),
        (
            "none",
            "all",
            true,
            true,
            REMOTE,
            "550 5.7.1 Relaying denied",
        ),
        ("all", "all", true, false, REMOTE, "250"),
        // "all" does not open the relay to an untrusted client.
        (
            "all",
            "all",
            false,
            false,
            REMOTE,
            "550 5.7.1 Relaying denied",
        ),
        (
            "all",
            "none",
            true,
            true,
            LOCAL,
            "550 5.7.1 Local delivery is not allowed",
        ),
        (
            "all",
            "auth",
            false,
            false,
            LOCAL,
            "550 5.7.1 Local delivery is not allowed",
        ),
        ("all", "auth", false, true, LOCAL, "250"),
        ("auth", "all", false, false, LOCAL, "250"),
    ];
    for (rd, ld, trusted, authed, rcpt, want) in cases {
        let got = rcpt_reply(rd, ld, trusted, authed, rcpt).await;
        assert!(
            got.starts_with(want),
            "remoteDelivery={rd} localDelivery={ld} trusted={trusted} auth={authed} {rcpt}: got {got:?}, want {want:?}"
        );
    }
}

/// isRcptLocal / isRcptDomainLocal come from relay.domains (subdomains with a
/// leading dot) with no axigen_local.lua on the lib path.
#[tokio::test]
async fn local_recipients_are_relay_domains() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(
        dir.path(),
        "local.axigen",
        "event onRcptTo {\n\tif (anyOf (is (isRcptLocal, \"no\"), not (isCase (isRcptDomainLocal, \"YES\")))) {\n\t\tset (smtpAction, \"reject\");\n\t\tset (smtpExplanation, \"Only local recipients here, not %currentRcpt%\");\n\t}\n}\n",
    );
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\", \".corp.example\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n[scripts]\nlib_path = [{LIB:?}]\naxigen = [{p:?}]\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@example.org>", "250").await;
    c.cmd("RCPT TO:<carol@mail.corp.example>", "250").await;
    let r = c.cmd("RCPT TO:<x@elsewhere.example>", "550").await;
    assert!(
        r.text
            .contains("Only local recipients here, not x@elsewhere.example"),
        "{r:?}"
    );
}

/// An error inside an event (here from a broken operator override in
/// axigen_local.lua) is logged and counted with the policy file; the event
/// counts as having set no action, so the relay rule decides and nothing
/// is refused with a local policy error.
#[tokio::test]
async fn a_runtime_error_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        lib.join("axigen_local.lua"),
        "require(\"axigen\").local_domains = 42\n",
    )
    .unwrap();
    let p = policy(
        dir.path(),
        "errors.axigen",
        "event onRcptTo {\n\tif (is (isRcptLocal, \"no\")) {\n\t\tset (smtpAction, \"reject\");\n\t}\n}\n",
    );
    let series = format!(
        "sluice_policy_runtime_errors_total{{policy=\"{}\",hook=\"rcptto\"}}",
        p.display()
    );
    let count = || sluice::metrics::sample(&sluice::metrics::render(None), &series).unwrap_or(0.0);
    assert_eq!(count(), 0.0);
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\ntrusted_networks = []\n[scripts]\nlib_path = [{lib:?}, {LIB:?}]\naxigen = [{p:?}]\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    c.cmd("RCPT TO:<bob@example.org>", "250").await;
    // The built-in rule still refuses what it refuses.
    c.cmd("RCPT TO:<x@elsewhere.example>", "550 5.7.1 Relaying denied")
        .await;
    assert_eq!(count(), 2.0, "one runtime error per RCPT");
    c.cmd("RSET", "250").await;
    c.send_message(
        "a@sender.example",
        &["bob@example.org"],
        &message(0, 0),
        "250",
    )
    .await;
}
