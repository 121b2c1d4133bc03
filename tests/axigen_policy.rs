//! Axigen policies end to end: corpus files in tests/axigen/ compiled,
//! written as hook scripts, loaded by the policy engine (with lib-lua/ on
//! lib_path) and run hook after hook with the context carried along, as the
//! server would. Asserts the replies, header changes, queued recipients and
//! routing Axigen would produce.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value as Json};

use sluice::config::Config;
use sluice::envelope::{Address, ConnectionInfo, HeloInfo, RecipientInfo, TransactionInfo};
use sluice::policy::axigen;
use sluice::policy::{
    DeliveryInfo, DeliveryResult, Hook, HookArguments, HookInput, HookOutcome, HookVerdict,
    PolicyEngine,
};

struct Policy {
    _dir: tempfile::TempDir,
    engine: Arc<PolicyEngine>,
    compiled: axigen::CompiledPolicy,
}

fn slot(cfg: &mut Config, hook: Hook) -> &mut Option<PathBuf> {
    let s = &mut cfg.scripts;
    match hook {
        Hook::Connect => &mut s.connect,
        Hook::Helo => &mut s.helo,
        Hook::Auth => &mut s.auth,
        Hook::MailFrom => &mut s.mailfrom,
        Hook::RcptTo => &mut s.rcptto,
        Hook::Data => &mut s.data,
        Hook::Headers => &mut s.headers,
        Hook::Eod => &mut s.eod,
        Hook::Disconnect => &mut s.disconnect,
        Hook::Proxy => &mut s.proxy,
        Hook::PreDelivery => &mut s.predelivery,
        Hook::PostDelivery => &mut s.postdelivery,
    }
}

/// Compile `tests/axigen/NAME.axigen` and load its hooks as `[scripts]` files.
fn load(name: &str) -> Policy {
    let src = PathBuf::from(format!("tests/axigen/{name}.axigen"));
    let compiled = axigen::compile_file(&src).unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.scripts.lib_path = vec![PathBuf::from("lib-lua"), PathBuf::from("tests/axigen/lib")];
    for h in &compiled.hooks {
        let p = dir.path().join(format!("{}.lua", h.hook));
        std::fs::write(&p, &h.lua).unwrap();
        *slot(&mut cfg, h.hook) = Some(p);
    }
    let engine = PolicyEngine::load(&cfg).unwrap();
    Policy {
        _dir: dir,
        engine,
        compiled,
    }
}

fn conn(ip: &str) -> ConnectionInfo {
    ConnectionInfo {
        id: "conn1".into(),
        remoteip: ip.into(),
        remoteport: 40000,
        remoteptr: None,
        localip: "198.51.100.1".into(),
        localport: 25,
        serverid: "inbound".into(),
        helo: Some(HeloInfo {
            verb: "EHLO".into(),
            host: "client.example".into(),
        }),
        tls: None,
        auth: None,
    }
}

fn txn(sender: &str, rcpts: &[&str]) -> TransactionInfo {
    TransactionInfo {
        id: "txn1".into(),
        sender: sender.into(),
        senderaddress: Address::split(sender),
        recipients: rcpts
            .iter()
            .map(|r| RecipientInfo {
                recipient: r.to_string(),
                address: Address::split(r),
                transportid: "default".into(),
                ..Default::default()
            })
            .collect(),
        open: true,
        ..Default::default()
    }
}

/// A session: one connection, the context carried from hook to hook.
struct Session<'a> {
    p: &'a Policy,
    conn: ConnectionInfo,
    context: Json,
}

impl<'a> Session<'a> {
    fn new(p: &'a Policy, ip: &str) -> Self {
        let mut conn = conn(ip);
        conn.helo = None;
        Session {
            p,
            conn,
            context: Json::Null,
        }
    }

    async fn run(
        &mut self,
        hook: Hook,
        t: Option<TransactionInfo>,
        a: HookArguments,
    ) -> HookOutcome {
        let o = self
            .p
            .engine
            .run(
                hook,
                HookInput {
                    connection: self.conn.clone(),
                    transaction: t,
                    arguments: a,
                    context: self.context.clone(),
                },
            )
            .await;
        if let Some(e) = &o.error {
            panic!("{}", axigen::map_error(&self.p.compiled, hook, e));
        }
        self.context = o.context.clone();
        o
    }

    async fn connect(&mut self) -> HookOutcome {
        self.run(Hook::Connect, None, HookArguments::None).await
    }

    async fn helo(&mut self, host: &str) -> HookOutcome {
        self.conn.helo = None;
        let o = self
            .run(
                Hook::Helo,
                None,
                HookArguments::Helo {
                    verb: "EHLO".into(),
                    host: host.into(),
                },
            )
            .await;
        self.conn.helo = Some(HeloInfo {
            verb: "EHLO".into(),
            host: host.into(),
        });
        o
    }

    async fn mail_from(&mut self, addr: &str) -> HookOutcome {
        let t = txn(addr, &[]);
        self.run(
            Hook::MailFrom,
            Some(t),
            HookArguments::MailFrom {
                address: addr.into(),
                params: BTreeMap::new(),
            },
        )
        .await
    }

    async fn rcpt_to(&mut self, sender: &str, have: &[&str], addr: &str) -> HookOutcome {
        self.run(
            Hook::RcptTo,
            Some(txn(sender, have)),
            HookArguments::RcptTo {
                address: addr.into(),
                params: BTreeMap::new(),
            },
        )
        .await
    }

    async fn data(&mut self, hook: Hook, sender: &str, rcpts: &[&str], msg: &str) -> HookOutcome {
        self.run(
            hook,
            Some(txn(sender, rcpts)),
            HookArguments::Mail {
                message: Bytes::from(msg.to_string()),
                headers_only: hook == Hook::Headers,
            },
        )
        .await
    }
}

fn reply(o: &HookOutcome) -> (u16, String) {
    let r = o
        .verdict
        .reply()
        .unwrap_or_else(|| panic!("no reply: {:?}", o.verdict));
    (r.code, r.lines.join("\n"))
}

fn is_pass(o: &HookOutcome) -> bool {
    matches!(o.verdict, HookVerdict::Pass { .. })
}

const MSG: &str = "Received: from client.example\r\nX-Remove-Me: 1\r\nX-Dup: a\r\nX-Dup: b\r\nX-First: 1\r\nX-First: 2\r\nSubject: hello\r\n\r\nbody\r\n";

#[tokio::test]
async fn basic_policy_session() {
    let p = load("basic");
    // onConnect: the greeting, with %smtpIp%.
    let mut s = Session::new(&p, "192.0.2.7");
    assert_eq!(
        reply(&s.connect().await),
        (220, "Welcome to 198.51.100.1".into())
    );
    // ipRange with a netmask, inside a called method.
    let mut bad = Session::new(&p, "10.56.56.9");
    assert_eq!(
        reply(&bad.connect().await),
        (554, "SPF check failed for <>: <ok>".into())
    );
    // SPFResult from the spf scanner (isCase against "Fail").
    let mut spf = Session::new(&p, "192.0.2.66");
    assert_eq!(
        reply(&spf.connect().await),
        (
            554,
            "SPF check failed for <>: <192.0.2.66 is not allowed>".into()
        )
    );
    // onEhlo.
    assert_eq!(
        reply(&s.helo("BAD.example").await),
        (550, "Go away <BAD.example>".into())
    );
    assert!(is_pass(&s.helo("client.example").await));
    // onMailFrom: allOf + not + ipRange.
    assert_eq!(
        reply(&s.mail_from("x@spam.example").await),
        (451, "Try later, x@spam.example".into())
    );
    let mut inside = Session::new(&p, "10.1.2.3");
    assert!(is_pass(&inside.mail_from("x@spam.example").await));
    assert!(is_pass(&s.mail_from("alice@sender.example").await));
    // onRcptTo: switch; discardRcpt answers 250 without adding.
    let o = s
        .rcpt_to("alice@sender.example", &[], "blackhole@example.org")
        .await;
    assert!(
        matches!(o.verdict, HookVerdict::Reply { .. }),
        "{:?}",
        o.verdict
    );
    assert_eq!(reply(&o).0, 250);
    // 192.0.2.7 is in 192.0.2.1-192.0.2.20: a header for the message.
    let o = s
        .rcpt_to("alice@sender.example", &[], "a@example.org")
        .await;
    assert!(is_pass(&o));
    // onDataReceived: header added, smtpAction accept → queued for everyone.
    let o = s
        .data(
            Hook::Eod,
            "alice@sender.example",
            &["a@example.org", "b@example.org"],
            MSG,
        )
        .await;
    assert!(
        matches!(o.verdict, HookVerdict::Accept { .. }),
        "{:?}",
        o.verdict
    );
    let rcpts: Vec<&str> = o.queued.iter().map(|q| q.recipient.as_str()).collect();
    assert_eq!(rcpts, ["a@example.org", "b@example.org"]);
    let m = String::from_utf8_lossy(&o.queued[0].message).to_string();
    assert!(
        m.starts_with("X-Policy: checked by client.example\r\nX-Range: in range\r\nReceived:"),
        "{m}"
    );
    assert_eq!(o.queued[0].transportid, "default");
    assert_eq!(o.queued[0].sender, "alice@sender.example");
    // rcptCount > 5 → reject, nothing queued.
    let many = ["1@x", "2@x", "3@x", "4@x", "5@x", "6@x"];
    let o = s.data(Hook::Eod, "alice@sender.example", &many, MSG).await;
    assert_eq!(reply(&o), (550, "too many".into()));
    assert!(o.queued.is_empty());
    // maxDataSize (35840 KB, set at connect) is a session setting the SMTP
    // session enforces (tests/axigen_session.rs).
    let ctx = s.context.clone();
    assert_eq!(ctx["axigen"]["session"]["maxdatasize"], json!("35840"));
}

#[tokio::test]
async fn every_method_session() {
    let p = load("methods");
    // checkGeoIp with AllowedCountries: CN is banned, the default action rejects.
    let mut cn = Session::new(&p, "192.0.2.99");
    assert_eq!(
        reply(&cn.connect().await),
        (554, "Connections from CN are not accepted".into())
    );
    let mut s = Session::new(&p, "192.0.2.7");
    assert!(is_pass(&s.connect().await));
    assert_eq!(s.context["axigen"]["exports"]["tag"], json!("c-192.0.2.7"));
    assert_eq!(s.context["axigen"]["session"]["isgeoipbanned"], json!("no"));
    // onEhlo: abort closes with 421; else-if with %% in the text.
    let o = s.helo("abort.example").await;
    assert_eq!(reply(&o).0, 421);
    assert!(o.verdict.disconnect());
    assert_eq!(
        reply(&s.helo("tmp.example").await),
        (451, "later, tmp.example (100% sure)".into())
    );
    assert!(is_pass(&s.helo("client.example").await));
    assert_eq!(
        s.context["axigen"]["session"]["reversednsresult"],
        json!("Pass")
    );
    // onMailFrom: checkDNSBL / checkSenderMX / checkSPF.
    let mut listed = Session::new(&p, "192.0.2.50");
    assert_eq!(
        reply(&listed.mail_from("x@sender.example").await),
        (550, "listed: listed in zen.example.org".into())
    );
    assert!(is_pass(&s.mail_from("alice@sender.example").await));
    let sess = &s.context["axigen"]["session"];
    assert_eq!(sess["sendermxcheckresult"], json!("Pass"));
    assert_eq!(s.context["axigen"]["txn"]["spf"]["result"], json!("Pass"));
    assert_eq!(s.context["axigen"]["txn"]["delay"], json!("+1m 30s"));
    // onRcptTo: a Lua filter (module.function) rejects.
    let from = "alice@sender.example";
    assert_eq!(
        reply(&s.rcpt_to(from, &[], "bad@example.org").await),
        (550, "bad rcpt".into())
    );
    assert_eq!(s.context["axigen"]["filters"][0]["name"], json!("lua1"));
    // addRcpt, a rewrite with a relay host, discardRcpt.
    assert!(is_pass(&s.rcpt_to(from, &[], "copy@example.org").await));
    assert!(is_pass(&s.rcpt_to(from, &[], "old@example.org").await));
    let o = s
        .rcpt_to(from, &["copy@example.org"], "drop@example.org")
        .await;
    assert_eq!(reply(&o).0, 250);
    // maxRcptCount 2 (set at connect) is a session setting: the policy keeps
    // it in the context, the SMTP session enforces it (tests/axigen_session.rs).
    assert_eq!(s.context["axigen"]["session"]["maxrcptcount"], json!("2"));
    // ipRange with a range built at run time from an exported variable.
    let mut blocked = Session::new(&p, "203.0.113.9");
    blocked.connect().await;
    assert_eq!(
        reply(&blocked.rcpt_to(from, &[], "y@example.org").await).0,
        550
    );
    // onHeadersReceived: readHeader + match.
    let spam = MSG.replace("Subject: hello", "Subject: Buy VIAGRA now");
    assert_eq!(
        reply(
            &s.data(Hook::Headers, from, &["copy@example.org"], &spam)
                .await
        ),
        (550, "spam subject".into())
    );
    let o = s
        .data(Hook::Headers, from, &["copy@example.org"], MSG)
        .await;
    assert!(is_pass(&o));
    // Eod: header changes from onHeadersReceived replayed, then onDataReceived
    // and onProcessing; recipients as the policy left them.
    let o = s
        .data(
            Hook::Eod,
            from,
            &["copy@example.org", "old@example.org"],
            MSG,
        )
        .await;
    assert!(
        matches!(o.verdict, HookVerdict::Accept { .. }),
        "{:?}",
        o.verdict
    );
    let rcpts: Vec<&str> = o.queued.iter().map(|q| q.recipient.as_str()).collect();
    assert_eq!(
        rcpts,
        ["copy@example.org", "new@example.org", "archive@example.org"]
    );
    assert_eq!(
        o.queued[1].metadata.get("relayhost").map(|s| s.as_str()),
        Some("[172.30.150.10]")
    );
    assert_eq!(o.queued[0].delay, Some(std::time::Duration::from_secs(90)));
    let m = String::from_utf8_lossy(&o.queued[0].message).to_string();
    let headers = m.split("\r\n\r\n").next().unwrap();
    assert_eq!(
        headers,
        "X-Processed: yes\r\nX-Tagged: c-192.0.2.7\r\nX-Mod: modified\r\nX-Tag: c-192.0.2.7\r\n\
         Received: from client.example\r\nX-Dup: a\r\nX-First: 2\r\nSubject: hello"
    );
}

#[tokio::test]
async fn delivery_events() {
    let p = load("methods");
    let mut s = Session::new(&p, "192.0.2.7");
    let d = |code: Option<u16>| DeliveryInfo {
        queue_id: "q1".into(),
        sender: "alice@sender.example".into(),
        recipient: "bob@example.org".into(),
        transportid: "default".into(),
        attempt: 2,
        next_hop: Some("mx.example.org:25".into()),
        result: code.map(|c| DeliveryResult {
            code: c,
            enhanced: Some(format!("{}.0.0", c / 100)),
            text: "said".into(),
            local_error: false,
        }),
        ..Default::default()
    };
    // onRelay: routing for the delivery code.
    let o = s
        .run(Hook::PreDelivery, None, HookArguments::Delivery(d(None)))
        .await;
    assert!(is_pass(&o));
    // The delivery code's contract: the predelivery route.
    assert_eq!(
        o.route,
        Some(sluice::policy::Route {
            host: Some("[172.30.150.10]".into()),
            port: Some(2525),
            tls: Some(sluice::config::TransportTls::Required),
        })
    );
    assert_eq!(
        o.context["axigen"]["relay"],
        json!({"remotesmtphost": "[172.30.150.10]", "remotesmtpport": "2525", "sslenabled": "yes"})
    );
    // The result code picks the event.
    let o = s
        .run(
            Hook::PostDelivery,
            None,
            HookArguments::Delivery(d(Some(550))),
        )
        .await;
    assert_eq!(
        o.context["axigen"]["ndr"],
        json!({"ndrsubject": "Undeliverable: bob@example.org", "sendndr": "no"})
    );
    // … and the postdelivery report wording.
    let b = o.reports.bounce.clone().expect("bounce wording");
    assert_eq!(b.subject.as_deref(), Some("Undeliverable: bob@example.org"));
    assert_eq!(b.send, Some(false));
    assert!(o.reports.delay.is_none() && o.reports.success.is_none());
    let o = s
        .run(
            Hook::PostDelivery,
            None,
            HookArguments::Delivery(d(Some(250))),
        )
        .await;
    assert_eq!(
        o.context["axigen"]["dsn"],
        json!({"dsnsubject": "Delivered to bob@example.org"})
    );
    assert_eq!(
        o.reports
            .success
            .as_ref()
            .and_then(|w| w.subject.as_deref()),
        Some("Delivered to bob@example.org")
    );
    let o = s
        .run(
            Hook::PostDelivery,
            None,
            HookArguments::Delivery(d(Some(451))),
        )
        .await;
    assert_eq!(o.context["axigen"]["ndr"], json!({"ndrmessage": "retry 2"}));
    assert_eq!(
        o.reports.delay.as_ref().and_then(|w| w.text.as_deref()),
        Some("retry 2")
    );
}

/// A compiled policy and a Lua script of the same hook: the policy runs
/// first; when it decides nothing the script decides.
#[tokio::test]
async fn policy_then_lua_script() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.axigen");
    std::fs::write(
        &policy,
        "event onRcptTo {\n\tif (isCase (currentRcpt, \"vip@example.org\")) {\n\t\tset (smtpAction, \"accept\");\n\t}\n\tset (n, \"%nothing%\");\n}\n",
    )
    .unwrap();
    let c = axigen::compile_file(&policy).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let lua = dir.path().join("rcptto.lua");
    std::fs::write(&lua, "Reject('lua says no')").unwrap();
    let mut cfg = Config::default();
    cfg.scripts.lib_path = vec![PathBuf::from("lib-lua")];
    cfg.scripts.rcptto = Some(lua);
    cfg.scripts.axigen = vec![policy.clone()];
    let engine = PolicyEngine::load(&cfg).unwrap();
    let run = |addr: &str| {
        engine.run(
            Hook::RcptTo,
            HookInput {
                connection: conn("192.0.2.7"),
                transaction: Some(txn("a@b.example", &[])),
                arguments: HookArguments::RcptTo {
                    address: addr.into(),
                    params: BTreeMap::new(),
                },
                context: Json::Null,
            },
        )
    };
    assert!(is_pass(&run("vip@example.org").await));
    assert_eq!(
        reply(&run("other@example.org").await),
        (550, "lua says no".into())
    );
}

/// A runtime error inside an event is reported with the Axigen file:line
/// (log line and metric) and the event counts as having set no action: the
/// hook passes instead of answering with its error reply.
#[tokio::test]
async fn runtime_errors_name_the_policy_line_and_refuse_nothing() {
    let src = Path::new("tests/axigen/broken.axigen");
    let text = "event onConnect {\n\tset (smtpAction, \"reject\");\n\tcall (addFilter);\n}\nevent onEhlo {\n\tset (smtpAction, \"reject\");\n}\n";
    let mut c = axigen::compile_str(src, text).unwrap();
    // Make the runtime fail inside the generated code: a missing method.
    let h = &mut c.hooks[0];
    h.lua = h.lua.replace("ax:addFilter()", "ax:noSuchMethod()");
    let mut cfg = Config::default();
    cfg.scripts.lib_path = vec![PathBuf::from("lib-lua")];
    let engine = PolicyEngine::load_with(&cfg, &c.script_sources()).unwrap();
    let series = "sluice_policy_runtime_errors_total{policy=\"tests/axigen/broken.axigen\",hook=\"connect\"}";
    let before = sluice::metrics::sample(&sluice::metrics::render(None), series).unwrap_or(0.0);
    let logs = LogCapture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let input = |arguments| HookInput {
        connection: conn("192.0.2.7"),
        transaction: None,
        arguments,
        context: Json::Null,
    };
    let o = engine.run(Hook::Connect, input(HookArguments::None)).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(
        is_pass(&o),
        "the broken event set no action: {:?}",
        o.verdict
    );
    let after = sluice::metrics::sample(&sluice::metrics::render(None), series).unwrap_or(0.0);
    assert_eq!(after, before + 1.0);
    let text = logs.text();
    assert!(
        text.contains("policy=tests/axigen/broken.axigen:3") && text.contains("noSuchMethod"),
        "{text}"
    );
    // An event without an error still decides.
    let helo = HookArguments::Helo {
        verb: "EHLO".into(),
        host: "client.example".into(),
    };
    let o = engine.run(Hook::Helo, input(helo)).await;
    assert_eq!(reply(&o).0, 550);
}

/// Log lines written while a test runs (this thread's subscriber).
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// An inline policy loaded as `[scripts] axigen`, with the test settings
/// (local domain example.org) and a Lua filter module that accepts all.
fn load_inline(src: &str) -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inline.axigen");
    std::fs::write(&file, src).unwrap();
    std::fs::write(
        dir.path().join("accept_filters.lua"),
        "local M = {}\nfunction M.all() return \"accept\" end\nreturn M\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("drop_filters.lua"),
        "local M = {}\nfunction M.gone(f)\n  if f.get(\"currentRcpt\") == \"gone@example.org\" then return \"discard\" end\n  return \"continue\"\nend\nreturn M\n",
    )
    .unwrap();
    let compiled = axigen::compile_file(&file).unwrap_or_else(|d| panic!("{d:?}"));
    let mut cfg = Config::default();
    cfg.scripts.lib_path = vec![
        PathBuf::from("lib-lua"),
        PathBuf::from("tests/axigen/lib"),
        dir.path().to_path_buf(),
    ];
    cfg.scripts.axigen = vec![file];
    let engine = PolicyEngine::load(&cfg).unwrap();
    Policy {
        _dir: dir,
        engine,
        compiled,
    }
}

/// The relay rule belongs to the server: an Axigen onRcptTo never answers
/// with `Accept()` (the explicit relay decision of an rcptto script). An
/// "accept" — set by the policy or by a filter — is `Pass()`, so the
/// built-in rule still decides; the policy can only refuse more.
#[tokio::test]
async fn axigen_rcptto_never_opens_the_relay() {
    let accepting = [
        "event onRcptTo {\n\tset (smtpAction, \"accept\");\n}\n",
        "event onRcptTo {\n}\n",
        "event onRcptTo {\n\tset (remoteDelivery, \"all\");\n\tset (smtpAction, \"accept\");\n}\n",
        "event onRcptTo {\n\tset (currentRcpt, \"someone@elsewhere.example\");\n\tcall (addRcpt);\n\tset (smtpAction, \"accept\");\n}\n",
        "event onRcptTo {\n\tset (filterName, \"all\");\n\tset (filterType, \"lua\");\n\tset (filterAddress, \"accept_filters.all\");\n\tcall (addFilter);\n\tcall (executeFilters);\n}\n",
    ];
    for src in accepting {
        let p = load_inline(src);
        for rcpt in ["victim@elsewhere.example", "bob@example.org"] {
            for authed in [false, true] {
                let mut s = Session::new(&p, "203.0.113.9");
                if authed {
                    s.conn.auth = Some(sluice::envelope::AuthInfo {
                        mechanism: "PLAIN".into(),
                        username: "alice".into(),
                    });
                }
                let o = s.rcpt_to("a@sender.example", &[], rcpt).await;
                assert!(
                    is_pass(&o),
                    "{src}: {rcpt} (auth {authed}) gave {:?}, not Pass",
                    o.verdict
                );
            }
        }
    }

    // remoteDelivery / localDelivery only narrow, and the session does it
    // (tests/axigen_session.rs): the hook passes and leaves them in the context.
    let narrowing = "event onRcptTo {\n\tset (remoteDelivery, \"none\");\n\tset (localDelivery, \"auth\");\n\tset (smtpAction, \"accept\");\n}\n";
    let p = load_inline(narrowing);
    let mut s = Session::new(&p, "203.0.113.9");
    let o = s
        .rcpt_to("a@sender.example", &[], "victim@elsewhere.example")
        .await;
    assert!(is_pass(&o), "{:?}", o.verdict);
    assert_eq!(
        s.context["axigen"]["session"]["remotedelivery"],
        json!("none")
    );
    assert_eq!(
        s.context["axigen"]["session"]["localdelivery"],
        json!("auth")
    );
}

/// A policy that discards recipients in onRcptTo gets the generated eod even
/// without an onDataReceived event: the built-in eod would queue every
/// recipient the session took, the discarded one included.
#[tokio::test]
async fn discarded_recipients_are_not_queued_without_an_eod_event() {
    let p = load_inline(
        "event onRcptTo {\n\tif (isCase (currentRcpt, \"gone@elsewhere.example\")) {\n\t\tcall (discardRcpt);\n\t}\n}\n",
    );
    assert!(p.compiled.hook(Hook::Eod).is_some(), "an eod hook");
    let mut s = Session::new(&p, "203.0.113.9");
    let o = s
        .rcpt_to("a@sender.example", &[], "gone@elsewhere.example")
        .await;
    assert!(!is_pass(&o), "discard answers the client");
    let o = s
        .rcpt_to(
            "a@sender.example",
            &["gone@elsewhere.example"],
            "bob@example.org",
        )
        .await;
    assert!(is_pass(&o), "{:?}", o.verdict);
    let o = s
        .data(
            Hook::Eod,
            "a@sender.example",
            &["gone@elsewhere.example", "bob@example.org"],
            MSG,
        )
        .await;
    let rcpts: Vec<&str> = o.queued.iter().map(|q| q.recipient.as_str()).collect();
    assert_eq!(rcpts, vec!["bob@example.org"]);
}

/// A Lua filter that answers "discard" in onRcptTo drops the recipient the
/// same way: the policy gets the generated eod, which leaves it out.
#[tokio::test]
async fn a_filter_discard_is_not_queued() {
    let p = load_inline(
        "event onRcptTo {\n\tset (filterName, \"drop\");\n\tset (filterType, \"lua\");\n\tset (filterAddress, \"drop_filters.gone\");\n\tcall (addFilter);\n\tcall (executeFilters);\n}\n",
    );
    assert!(p.compiled.hook(Hook::Eod).is_some(), "an eod hook");
    let mut s = Session::new(&p, "203.0.113.9");
    let o = s.rcpt_to("a@sender.example", &[], "gone@example.org").await;
    assert_eq!(reply(&o).0, 250, "discard answers the client");
    let o = s
        .rcpt_to("a@sender.example", &["gone@example.org"], "bob@example.org")
        .await;
    assert!(is_pass(&o), "{:?}", o.verdict);
    let o = s
        .data(
            Hook::Eod,
            "a@sender.example",
            &["gone@example.org", "bob@example.org"],
            MSG,
        )
        .await;
    let rcpts: Vec<&str> = o.queued.iter().map(|q| q.recipient.as_str()).collect();
    assert_eq!(rcpts, vec!["bob@example.org"]);
}
