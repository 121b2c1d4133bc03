//! The relay rule is the server's, not the scripts': for every kind of policy
//! × {local domain, foreign domain} × {untrusted, trusted network,
//! authenticated}, the replies and what is queued are exactly the built-in
//! rule's — only an explicit `Accept()` relays, and only where the script
//! chose to. Real SMTP over loopback, STARTTLS + AUTH for the authenticated
//! client, the queue read back from the store.

mod common;
use common::*;
use tokio::io::{AsyncRead, AsyncWrite};

const LOCAL: &str = "u@bar.test";
const FOREIGN: &str = "victim@elsewhere.test";
const CHOSEN: &str = "chosen@elsewhere.test";
const MSG: &str = "Subject: relay test\r\n\r\nbody\r\n";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    Untrusted,
    Trusted,
    Authenticated,
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    NoScript,
    LoggingRcptto,
    PassOnly,
    ErroringRcptto,
    AxigenEmptyOnRcptTo,
    AxigenSomeAddresses,
    EodQueuesForeign,
    ProxyRewritesRcpt,
    ExplicitAccept,
}

const POLICIES: [Policy; 9] = [
    Policy::NoScript,
    Policy::LoggingRcptto,
    Policy::PassOnly,
    Policy::ErroringRcptto,
    Policy::AxigenEmptyOnRcptTo,
    Policy::AxigenSomeAddresses,
    Policy::EodQueuesForeign,
    Policy::ProxyRewritesRcpt,
    Policy::ExplicitAccept,
];

/// The built-in rule: local domains always, anything for trusted and
/// authenticated clients.
fn builtin(client: Client, rcpt: &str) -> bool {
    rcpt.ends_with("@bar.test") || client != Client::Untrusted
}

fn config(policy: Policy, client: Client, dir: &std::path::Path) -> String {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let trusted = if client == Client::Trusted {
        r#"["127.0.0.0/8"]"#
    } else {
        "[]"
    };
    let mut scripts = format!("[scripts]\nlib_path = [{lib:?}]\n");
    if client == Client::Authenticated {
        let auth = write(
            "auth.lua",
            r#"if arguments.username == "alice" and arguments.password == "s3cret" then Accept() end"#,
        );
        scripts.push_str(&format!("auth = {auth:?}\n"));
    }
    let mut extra = String::new();
    match policy {
        Policy::NoScript => {}
        Policy::LoggingRcptto => {
            let p = write(
                "rcptto.lua",
                r#"log.info("rcpt " .. tostring(arguments.recipient or arguments.address))"#,
            );
            scripts.push_str(&format!("rcptto = {p:?}\n"));
        }
        Policy::PassOnly => {
            let p = write("rcptto.lua", "Pass()");
            scripts.push_str(&format!("rcptto = {p:?}\n"));
        }
        Policy::ErroringRcptto => {
            let p = write("rcptto.lua", r#"error("broken policy")"#);
            scripts.push_str(&format!("rcptto = {p:?}\n"));
        }
        Policy::AxigenEmptyOnRcptTo => {
            let p = write(
                "empty.axigen",
                "event onConnect {\n}\nevent onRcptTo {\n}\n",
            );
            scripts.push_str(&format!("axigen = [{p:?}]\n"));
        }
        Policy::AxigenSomeAddresses => {
            // smtpAction for some addresses only: "accept" must not relay,
            // "reject" refuses.
            let p = write(
                "some.axigen",
                r#"event onRcptTo {
	if (isCase (currentRcpt, "victim@elsewhere.test")) {
		set (smtpAction, "accept");
	}
	if (isCase (currentRcpt, "blocked@bar.test")) {
		set (smtpAction, "reject");
	}
}
"#,
            );
            scripts.push_str(&format!("axigen = [{p:?}]\n"));
        }
        Policy::EodQueuesForeign => {
            let p = write(
                "eod.lua",
                r#"for _, r in ipairs(transaction.recipients) do
  arguments.mail:queue(transaction.sender, r.recipient, "default")
end
arguments.mail:queue(transaction.sender, "victim@elsewhere.test", "default")
Accept()"#,
            );
            scripts.push_str(&format!("eod = {p:?}\n"));
        }
        Policy::ProxyRewritesRcpt => {
            let p = write(
                "proxy.lua",
                r#"if arguments.command:upper():match("^RCPT TO:<U@BAR%.TEST>") then
  Pass({command = "RCPT TO:<victim@elsewhere.test>"})
end"#,
            );
            scripts.push_str(&format!("proxy = {p:?}\nproxy_commands = [\"RCPT\"]\n"));
        }
        Policy::ExplicitAccept => {
            let p = write(
                "rcptto.lua",
                r#"if (arguments.recipient or arguments.address) == "chosen@elsewhere.test" then Accept() end"#,
            );
            scripts.push_str(&format!("rcptto = {p:?}\n"));
        }
    }
    extra.push_str(&format!(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n[queue]\ndeliver = false\n[relay]\ndomains = [\"bar.test\"]\ntrusted_networks = {trusted}\n{scripts}"
    ));
    extra
}

async fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client_<S>, to: &str) -> String {
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    format!("{} {}", r.code, r.text)
}

type Client_<S> = common::Client<S>;

/// One dialogue; returns (rcpt replies, final DATA reply or None).
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client_<S>,
    rcpts: &[&str],
) -> (Vec<String>, Option<String>) {
    c.cmd("MAIL FROM:<s@sender.test>", "250").await;
    let mut replies = Vec::new();
    for r in rcpts {
        let reply = rcpt(c, r).await;
        let closing = reply.starts_with("421");
        replies.push(reply);
        if closing {
            return (replies, None);
        }
    }
    if !replies.iter().any(|r| r.starts_with('2')) {
        return (replies, None);
    }
    c.cmd("DATA", "354").await;
    c.send_raw(format!("{MSG}.\r\n").as_bytes()).await;
    let r = c.reply().await;
    (replies, Some(format!("{} {}", r.code, r.text)))
}

fn queued_recipients(srv: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = srv
        .store()
        .list_entries()
        .unwrap()
        .into_iter()
        .flat_map(|e| e.recipients.into_iter().map(|r| r.recipient))
        .collect();
    v.sort();
    v
}

async fn run_case(policy: Policy, client: Client) {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(&config(policy, client, dir.path())).await;
    let rcpts = [LOCAL, FOREIGN, CHOSEN];
    let mut c = srv.client().await;
    c.greet().await;
    let (replies, data) = if client == Client::Authenticated {
        let mut c = c.starttls(&srv.cert_path()).await;
        c.cmd("EHLO client.example.net", "250").await;
        // AUTH PLAIN \0alice\0s3cret
        c.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "235").await;
        dialogue(&mut c, &rcpts).await
    } else {
        dialogue(&mut c, &rcpts).await
    };
    let case = format!("{policy:?} × {client:?}: replies {replies:?}, data {data:?}");
    let queued = queued_recipients(&srv);
    let accepted = |i: usize| replies.get(i).is_some_and(|r| r.starts_with("250"));
    match policy {
        Policy::ErroringRcptto => {
            // A broken script answers 421 and closes: nothing gets through.
            assert!(replies[0].starts_with("421 4.3.0"), "{case}");
            assert!(queued.is_empty(), "{case}: queued {queued:?}");
        }
        Policy::ProxyRewritesRcpt => {
            // The proxy turned the local RCPT into a foreign one: the
            // rewritten line meets the relay rule.
            assert_eq!(accepted(0), builtin(client, FOREIGN), "{case}");
            assert_eq!(accepted(1), builtin(client, FOREIGN), "{case}");
            assert_eq!(accepted(2), builtin(client, CHOSEN), "{case}");
            if client == Client::Untrusted {
                assert!(queued.is_empty(), "{case}: queued {queued:?}");
                assert!(!replies[0].contains("Recipient OK"), "{case}");
                assert!(replies[0].starts_with("550 5.7.1"), "{case}");
            }
        }
        Policy::EodQueuesForeign => {
            for (i, r) in rcpts.iter().enumerate() {
                assert_eq!(accepted(i), builtin(client, r), "{case}");
            }
            if client == Client::Untrusted {
                // The eod script's extra foreign recipient is refused: the
                // whole message is deferred, nothing queued.
                assert!(
                    data.as_deref().unwrap_or("").starts_with("451 4.3.0"),
                    "{case}"
                );
                assert!(queued.is_empty(), "{case}: queued {queued:?}");
            } else {
                assert!(data.as_deref().unwrap_or("").starts_with("250"), "{case}");
                let mut want = vec![CHOSEN.to_string(), LOCAL.to_string(), FOREIGN.to_string()];
                want.sort();
                // FOREIGN twice: once from RCPT, once added by the script.
                let mut got = queued.clone();
                got.dedup();
                assert_eq!(got, want, "{case}");
            }
        }
        Policy::ExplicitAccept => {
            assert!(accepted(0), "{case}");
            assert_eq!(accepted(1), builtin(client, FOREIGN), "{case}");
            // The script's explicit choice relays even for an untrusted client.
            assert!(accepted(2), "{case}");
            let mut want: Vec<String> = vec![LOCAL.into(), CHOSEN.into()];
            if builtin(client, FOREIGN) {
                want.push(FOREIGN.into());
            }
            want.sort();
            assert_eq!(queued, want, "{case}");
        }
        _ => {
            // No script, a logging script, Pass(), Axigen that decides
            // nothing or "accept"s: exactly the built-in rule.
            let mut want = Vec::new();
            for (i, r) in rcpts.iter().enumerate() {
                assert_eq!(accepted(i), builtin(client, r), "{case}");
                if !builtin(client, r) {
                    assert!(replies[i].starts_with("550 5.7.1"), "{case}");
                } else {
                    want.push(r.to_string());
                }
            }
            want.sort();
            assert!(data.as_deref().unwrap_or("").starts_with("250"), "{case}");
            assert_eq!(queued, want, "{case}");
        }
    }
    // Every refusal is in the history with the reply the client got
    // (written off the reply path: wait for it).
    let mut want: Vec<(String, String)> = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        let refused = r.starts_with('5') || (r.starts_with('4') && !r.starts_with("421"));
        let rewritten = matches!(policy, Policy::ProxyRewritesRcpt) && i == 0;
        if refused {
            let rcpt = if rewritten { FOREIGN } else { rcpts[i] };
            want.push((rcpt.to_string(), format!("REJECT {r}")));
        }
    }
    let found = |want: &[(String, String)]| {
        let history = srv.store().history_all().unwrap();
        want.iter().all(|(rcpt, line)| {
            history
                .iter()
                .any(|h| &h.recipient == rcpt && &format!("{} {}", h.action, h.reason) == line)
        })
    };
    assert!(
        wait_until(|| found(&want)).await,
        "{case}: history lacks {want:?}: {:?}",
        srv.store().history_all().unwrap()
    );
}

#[tokio::test]
async fn relay_matrix() {
    for policy in POLICIES {
        for client in [Client::Untrusted, Client::Trusted, Client::Authenticated] {
            run_case(policy, client).await;
        }
    }
}

/// Axigen's own switch narrows relaying: `remoteDelivery = none` refuses a
/// foreign recipient even for a trusted client (and never widens it).
#[tokio::test]
async fn axigen_remote_delivery_no_narrows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.axigen");
    std::fs::write(
        &p,
        "event onMailFrom {\n\tset (remoteDelivery, \"none\");\n}\nevent onRcptTo {\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("axigen_local.lua"),
        "require(\"axigen\").local_domains = {\"bar.test\"}\n",
    )
    .unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let local = dir.path();
    let srv = TestServer::start(&format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"bar.test\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n[scripts]\nlib_path = [{local:?}, {lib:?}]\naxigen = [{p:?}]\n"
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@sender.test>", "250").await;
    c.cmd("RCPT TO:<u@bar.test>", "250").await;
    c.cmd(
        "RCPT TO:<victim@elsewhere.test>",
        "550 5.7.1 Relaying denied",
    )
    .await;
}
