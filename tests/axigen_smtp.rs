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
