//! An Axigen policy file loaded by the daemon (`[scripts] axigen`) and
//! exercised through real SMTP sessions, plus `sluice translate` and
//! `sluice check` diagnostics.

mod common;
use common::*;

const POLICY: &str = r#"
event onConnect {
	set (smtpGreeting, "Welcome to the Axigen-compatible gateway");
	set (allowStartTLS, "no");
}
event onEhlo {
	if (isCase (ehloHost, "bad.example")) {
		set (smtpAction, "reject");
		set (smtpExplanation, "Go away <%ehloHost%>");
	}
}
event onMailFrom {
	if (is (mailFromDomain, "spam.example")) {
		set (smtpAction, "tmpreject");
		set (smtpExplanation, "Try later, %mailFrom%");
	}
}
event onDataReceived {
	call (tag);
}
method tag {
	set (headerName, "X-Axigen-Policy");
	set (headerValue, "tagged");
	call (addHeader);
}
"#;

#[tokio::test]
async fn axigen_policy_runs_in_smtp_sessions() {
    let pdir = tempfile::tempdir().unwrap();
    let policy = pdir.path().join("smtpFilters.script");
    std::fs::write(&policy, POLICY).unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let srv = TestServer::start(&format!(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n[queue]\ndeliver = false\n[scripts]\nlib_path = [{lib:?}]\naxigen = [{policy:?}]\n"
    ))
    .await;
    let mut c = srv.client().await;
    let banner = c.expect("220").await;
    assert!(
        banner
            .text
            .contains("Welcome to the Axigen-compatible gateway"),
        "{banner:?}"
    );
    c.cmd("EHLO bad.example", "5").await;
    let ehlo = c.cmd("EHLO good.example", "250").await;
    assert!(
        !ehlo.text.contains("STARTTLS"),
        "allowStartTLS=no: {ehlo:?}"
    );
    c.cmd("STARTTLS", "502 5.5.1").await;
    let r = c.cmd("MAIL FROM:<x@spam.example>", "4").await;
    assert!(r.text.contains("Try later, x@spam.example"), "{r:?}");
    let r = c
        .send_message("ok@example.net", &["a@example.org"], MSG, "250")
        .await;
    let id = r.text.rsplit(' ').next().unwrap();
    let e = srv
        .store()
        .get_entry(id)
        .unwrap()
        .expect("queued by the Axigen eod");
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("X-Axigen-Policy: tagged\r\n"));
}

#[test]
fn translate_and_check_report_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.axigen");
    std::fs::write(&good, POLICY).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["translate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lua = String::from_utf8_lossy(&out.stdout);
    assert!(
        lua.contains("require(\"axigen\")")
            || lua.contains("require('axigen')")
            || lua.contains("require \"axigen\""),
        "{lua}"
    );
    assert!(
        lua.contains("good.axigen:"),
        "source lines are commented: {lua}"
    );

    let bad = dir.path().join("bad.axigen");
    std::fs::write(
        &bad,
        "event onConnect {\n\tcall (nosuch);\n}\nevent onNothing {\n}\n",
    )
    .unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(&cfg, format!("[scripts]\naxigen = [{bad:?}]\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Both errors, each with file:line:col.
    assert!(err.contains("bad.axigen:2:"), "{err}");
    assert!(err.contains("bad.axigen:4:"), "{err}");
}

const BLOCKING: &str = r#"
event onRcptTo {
	if (isCase (currentRcpt, "blocked@example.org")) {
		set (smtpAction, "reject");
		set (smtpExplanation, "blocked by the Axigen policy");
	}
}
event onMailFrom {
	if (is (mailFromDomain, "spam.example")) {
		set (smtpAction, "reject");
		set (smtpExplanation, "no mail from spam.example");
	}
}
"#;

/// `sluice reload` against the daemon's control socket (what an operator
/// runs): stdout on success, stderr on failure.
async fn sluice_reload(srv: &TestServer) -> Result<String, String> {
    let cfg = srv.dir.path().join("reload.toml");
    std::fs::write(
        &cfg,
        format!(
            "control_socket = {:?}\n",
            srv.dir.path().join("var/control.sock")
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["reload", "-c", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn blocking_rules_apply(srv: &TestServer) {
    let mut c = srv.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<x@spam.example>", "550").await;
    assert!(r.text.contains("no mail from spam.example"), "{r:?}");
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    let r = c.cmd("RCPT TO:<blocked@example.org>", "550").await;
    assert!(r.text.contains("blocked by the Axigen policy"), "{r:?}");
    c.cmd("RCPT TO:<ok@example.org>", "250").await;
    c.cmd("QUIT", "221").await;
}

/// The engine owns the Axigen policies it loaded: `sluice reload` compiles
/// them again (the rules keep applying), and a broken policy on reload keeps
/// the old rules and names file:line:col.
#[tokio::test]
async fn reload_keeps_axigen_policies() {
    let pdir = tempfile::tempdir().unwrap();
    let policy = pdir.path().join("smtpFilters.script");
    std::fs::write(&policy, BLOCKING).unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\n[scripts]\nlib_path = [{lib:?}]\naxigen = [{policy:?}]\n"
    ))
    .await;
    blocking_rules_apply(&srv).await;

    let msg = sluice_reload(&srv).await.unwrap();
    assert!(msg.contains("0 scripts, 1 axigen policy"), "{msg}");
    blocking_rules_apply(&srv).await;

    // Line 3 loses its closing parenthesis.
    std::fs::write(
        &policy,
        BLOCKING.replace(
            "(isCase (currentRcpt, \"blocked@example.org\")) {",
            "(isCase (currentRcpt, \"blocked@example.org\") {",
        ),
    )
    .unwrap();
    let err = sluice_reload(&srv).await.unwrap_err();
    let at = format!("{}:3:", policy.display());
    let pos = err.find(&at).unwrap_or_else(|| panic!("{err}"));
    let col: String = err[pos + at.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert!(!col.is_empty(), "file:line:col: {err}");
    blocking_rules_apply(&srv).await;
}
