//! The Lua policy engine through real SMTP sessions: each hook's verdicts and
//! reply options, proxy, context, eod queueing, errors, limits, AUTH, reload.

mod common;
use common::*;

use std::path::Path;

/// Write scripts into the server's dir and return the `[scripts]` TOML.
fn scripts(dir: &Path, hooks: &[(&str, &str)]) -> String {
    let mut toml = String::from("[scripts]\n");
    for (hook, code) in hooks {
        let p = dir.join(format!("{hook}.lua"));
        std::fs::write(&p, code).unwrap();
        toml.push_str(&format!("{hook} = {:?}\n", p));
    }
    toml
}

async fn start_with(hooks: &[(&str, &str)], extra: &str) -> (TestServer, tempfile::TempDir) {
    let sdir = tempfile::tempdir().unwrap();
    let toml = format!("{extra}\n{}", scripts(sdir.path(), hooks));
    (TestServer::start(&toml).await, sdir)
}

#[tokio::test]
async fn connect_hook_can_refuse_or_rewrite_the_banner() {
    let (srv, _d) = start_with(
        &[("connect", r#"if connection.remoteport % 2 == 0 then Reject("go away", {reply_codes = {code = 554, enhanced = {5,7,1}}}) end Reply("custom greeting")"#)],
        "",
    )
    .await;
    for _ in 0..4 {
        let mut c = srv.client().await;
        let r = c.reply().await;
        if r.code == 554 {
            assert!(r.text.contains("go away"));
            assert!(c.closed().await);
        } else {
            assert_eq!(r.code, 220, "{r:?}");
            assert!(r.text.contains("custom greeting"));
            c.cmd("EHLO x.example", "250").await;
        }
    }
}

#[tokio::test]
async fn stage_verdicts_reply_codes_and_multiline_reasons() {
    let (srv, _d) = start_with(
        &[
            ("helo", r#"if arguments.host == "bad.example" then Reject("bad helo") end"#),
            ("mailfrom", r#"
                if arguments.sender == "spam@example.net" then
                  Reject({"line one", "line two"}, {reply_codes = {code = 553, enhanced = {5,7,26}}})
                elseif arguments.sender == "later@example.net" then
                  Defer("try later")
                elseif arguments.params.SIZE == "42" then
                  Reply("size 42 is nice", {reply_codes = {code = 250, enhanced = {2,1,0}}})
                end"#),
            ("rcptto", r#"
                local a = arguments.recipient
                if a:match("@lmtp%.example$") then Pass({transportid = "mailstore"}) end
                if a:match("@example%.org$") then Pass() end
                Reject("not here")"#),
        ],
        "[transport.mailstore]\nkind = \"lmtp\"\nhost = \"127.0.0.1:24\"\n",
    )
    .await;
    let mut c = srv.client().await;
    c.expect("220").await;
    c.cmd("EHLO bad.example", "550 5.7.1 bad helo").await;
    c.cmd("MAIL FROM:<a@example.net>", "503 5.5.1").await; // the refused EHLO did not count
    c.cmd("EHLO good.example", "250").await;
    c.send_raw(b"MAIL FROM:<spam@example.net>\r\n").await;
    let r = c.expect("553 5.7.26 line one").await;
    assert_eq!(r.text, "5.7.26 line one\n5.7.26 line two");
    c.cmd("MAIL FROM:<later@example.net>", "451 4.7.1 try later")
        .await;
    c.cmd(
        "MAIL FROM:<ok@example.net> SIZE=42",
        "250 2.1.0 size 42 is nice",
    )
    .await;
    c.cmd("RCPT TO:<x@elsewhere.example>", "550 5.7.1 not here")
        .await;
    c.cmd("RCPT TO:<u@lmtp.example>", "250").await;
    c.cmd("RCPT TO:<v@example.org>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(MSG.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    c.expect("250 2.0.0 Ok: queued as").await;
    // Built-in eod: one entry per transport.
    let entries = srv.store().list_entries().unwrap();
    let mut transports: Vec<_> = entries.iter().map(|e| e.transportid.as_str()).collect();
    transports.sort();
    assert_eq!(transports, ["default", "mailstore"]);
    // REJECT history was recorded for the refused recipient (written in the background).
    let found = wait_until(|| {
        srv.store()
            .history_all()
            .unwrap()
            .iter()
            .any(|r| r.action == "REJECT" && r.recipient == "x@elsewhere.example")
    })
    .await;
    assert!(found, "{:?}", srv.store().history_all().unwrap());
}

#[tokio::test]
async fn verdicts_cannot_be_caught_by_pcall_and_errors_answer_421() {
    let (srv, _d) = start_with(
        &[
            (
                "mailfrom",
                r#"
                local ok = pcall(function() Reject("caught?") end)
                local ok2 = xpcall(function() Reject("caught?") end, function(e) return e end)
                Reply("pcall swallowed the verdict")"#,
            ),
            (
                "rcptto",
                r#"if arguments.recipient == "boom@example.org" then error("kaboom") end
                if arguments.recipient == "loop@example.org" then while true do end end"#,
            ),
        ],
        "",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "550 5.7.1 caught?")
        .await;
    // Errors and endless loops in stage hooks: 421 4.3.0 and disconnect.
    let (srv2, _d2) = start_with(
        &[(
            "rcptto",
            r#"if arguments.recipient == "boom@example.org" then error("kaboom") end
                if arguments.recipient == "loop@example.org" then while true do end end"#,
        )],
        "",
    )
    .await;
    let mut c = srv2.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<ok@example.org>", "250").await;
    c.cmd("RCPT TO:<boom@example.org>", "421 4.3.0").await;
    assert!(c.closed().await);
    // An endless loop is stopped by the instruction budget, not a hang.
    let mut c = srv2.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<loop@example.org>", "421 4.3.0").await;
    drop(srv);
}

#[tokio::test]
async fn eod_queues_per_recipient_with_header_changes_context_and_history() {
    let (srv, _d) = start_with(
        &[
            (
                "connect",
                r#"context.seen_at_connect = connection.remoteip"#,
            ),
            (
                "eod",
                r#"
                local mail = arguments.mail
                mail:addHeader("X-Policy", "checked " .. context.seen_at_connect)
                for i, r in ipairs(transaction.recipients) do
                  if r.recipient == "drop@example.org" then
                    History("REJECT", r.recipient, {reason = "dropped by policy"})
                  else
                    mail:queue(transaction.sender, r.recipient, i == 1 and "default" or "archive",
                      {metadata = {rule = "r" .. i}, hold = (i == 2)})
                  end
                end
                Accept()"#,
            ),
        ],
        "[transport.archive]\nhost = \"127.0.0.1:2626\"\n",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message(
            "s@example.net",
            &["a@example.org", "b@example.org", "drop@example.org"],
            MSG,
            "250 2.0.0",
        )
        .await;
    assert!(r.text.contains("queued as"), "{r:?}");
    let entries = srv.store().list_entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].recipients[0].recipient, "a@example.org");
    assert_eq!(entries[0].transportid, "default");
    assert_eq!(entries[0].metadata["rule"], "r1");
    assert_eq!(entries[1].transportid, "archive");
    assert_eq!(entries[1].state, sluice::store::queue::QueueState::Held);
    let raw = srv.store().get_body(&entries[0].body).unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("X-Policy: checked 127.0.0.1\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nHello.\r\n"));
    assert_eq!(
        entries[0].body, entries[1].body,
        "same bytes share one body"
    );
    let h = srv.store().history_all().unwrap();
    assert!(h.iter().any(|r| r.action == "REJECT"
        && r.recipient == "drop@example.org"
        && r.reason == "dropped by policy"));
}

#[tokio::test]
async fn eod_error_or_fallthrough_defers_and_rolls_back() {
    let (srv, _d) = start_with(
        &[(
            "eod",
            r#"
            for _, r in ipairs(transaction.recipients) do
              arguments.mail:queue(transaction.sender, r.recipient, "default")
            end
            if transaction.sender == "err@example.net" then error("oops") end
            if transaction.sender == "rej@example.net" then Reject("content refused") end
            -- falls off the end otherwise"#,
        )],
        "",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message("err@example.net", &["a@example.org"], MSG, "451 4.3.0")
        .await;
    c.send_message(
        "rej@example.net",
        &["a@example.org"],
        MSG,
        "550 5.7.1 content refused",
    )
    .await;
    c.send_message("fall@example.net", &["a@example.org"], MSG, "451 4.3.0")
        .await;
    assert_eq!(srv.store().queue_len(), 0);
}

#[tokio::test]
async fn proxy_hook_implements_and_rewrites_commands() {
    let (srv, _d) = start_with(
        &[("proxy", r#"
            local cmd = arguments.command
            if cmd:upper():match("^XHELLO") then
              Reply({"hello from the proxy", "second line"}, {reply_codes = {code = 250, enhanced = {2,0,0}}, next = true})
            end
            if context.after_xhello then
              context.after_xhello = nil
            end
            if cmd:upper():match("^XQUIT") then Reply("bye", {reply_codes = {code = 221, enhanced = {2,0,0}}, disconnect = true}) end
            if cmd:upper():match("^NOOP") then Pass({command = "HELP"}) end
            Pass()"#)],
        "",
    )
    .await;
    let _ = srv.dir.path();
    let mut c = srv.client().await;
    c.greet().await;
    let r = c.cmd("XHELLO", "250 2.0.0 hello from the proxy").await;
    assert!(r.text.contains("second line"));
    // next = true: the proxy sees the next command even though the server knows NOOP.
    c.cmd("NOOP", "214").await;
    // Without next, a known command goes straight to the server.
    c.cmd("NOOP", "250 2.0.0").await;
    c.cmd("XQUIT", "221 2.0.0 bye").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn auth_hook_over_starttls() {
    let (srv, _d) = start_with(
        &[
            (
                "auth",
                r#"
            if arguments.username == "alice" and arguments.password == "s3cret" then Accept() end
            Reject()"#,
            ),
            (
                "rcptto",
                r#"if connection.auth and connection.auth.username == "alice" then Pass() end
            Reject("relay only for alice")"#,
            ),
        ],
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n",
    )
    .await;
    let mut c = srv.client().await;
    c.expect("220").await;
    let e = c.cmd("EHLO x.example", "250").await;
    assert!(
        !e.text.contains("AUTH"),
        "AUTH must not be offered before TLS"
    );
    c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "503 5.5.1").await;
    let mut c = c.starttls(&srv.cert_path()).await;
    let e = c.cmd("EHLO x.example", "250").await;
    assert!(e.text.lines().any(|l| l == "AUTH PLAIN LOGIN"), "{e:?}");
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
    c.cmd("RCPT TO:<b@example.org>", "550 5.7.1 relay only for alice")
        .await;
    c.cmd("RSET", "250").await;
    // Wrong password: 535 5.7.8.
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    // LOGIN with challenges.
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    c.cmd("czNjcmV0", "235 2.7.0").await;
    c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "503 5.5.1").await;
    let r = c
        .send_message("a@example.net", &["b@example.org"], MSG, "250")
        .await;
    let e = srv
        .store()
        .get_entry(r.text.rsplit(' ').next().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(e.client.auth.as_deref(), Some("alice"));
    let raw = srv.store().get_body(&e.body).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("with ESMTPSA id"));
}

#[tokio::test]
async fn reload_with_a_broken_script_keeps_serving_the_old_one() {
    let (srv, d) = start_with(&[("mailfrom", r#"Reject("version one")"#)], "").await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "550 5.7.1 version one")
        .await;
    std::fs::write(d.path().join("mailfrom.lua"), "Reject(\"version two\"").unwrap();
    let err = srv.daemon.as_ref().unwrap().reload().unwrap_err();
    assert!(err.contains("mailfrom.lua:1"), "{err}");
    c.cmd("MAIL FROM:<a@example.net>", "550 5.7.1 version one")
        .await;
    std::fs::write(d.path().join("mailfrom.lua"), "Reject(\"version two\")").unwrap();
    srv.daemon.as_ref().unwrap().reload().unwrap();
    c.cmd("MAIL FROM:<a@example.net>", "550 5.7.1 version two")
        .await;
}

#[tokio::test]
async fn trace_shows_client_hooks_queueing_and_attempts() {
    let (srv, _d) = start_with(
        &[
            ("helo", "Pass()"),
            ("rcptto", "Pass()"),
            ("mailfrom", "Pass()"),
        ],
        "[queue]\nmin_retry_delay = \"30s\"\n",
    )
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message("s@example.net", &["a@example.org"], MSG, "250")
        .await;
    let qid = r.text.rsplit(' ').next().unwrap().to_string();
    // The closed next hop defers the first attempt.
    for _ in 0..200 {
        if srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| h.action == "DEFER")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cfg = srv.dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n",
            srv.dir.path().join("var"),
            srv.dir.path().join("var/control.sock")
        ),
    )
    .unwrap();
    // Asynchronously: the daemon answering the CLI runs on this test's runtime.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["trace", &qid, "-c", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let received = text.find("RECEIVED").expect(&text);
    let hooks = text
        .find("hooks: helo: Pass; mailfrom: Pass; rcptto: Pass")
        .expect(&text);
    let defer = text.find("DEFER").expect(&text);
    assert!(received < hooks && hooks < defer, "{text}");
    assert!(
        text.contains("in queue, state queued, attempts 1"),
        "{text}"
    );
}
