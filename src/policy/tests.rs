//! Engine tests: real scripts written to a temp dir, run through
//! `PolicyEngine::run`, asserting on the outcome the server would act on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::sandbox;
use super::*;
use crate::config::{Config, ScriptsConfig, TransportConfig};
use crate::envelope::{
    Address, ConnectionInfo, HeloInfo, RecipientDsn, RecipientInfo, TransactionInfo,
};
use crate::proto::reply::EnhancedCode;

struct T {
    dir: tempfile::TempDir,
    cfg: Config,
}

fn slot(s: &mut ScriptsConfig, hook: Hook) -> &mut Option<PathBuf> {
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

impl T {
    fn new() -> T {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        for t in ["lmtp", "quarantine"] {
            cfg.transport.insert(t.into(), TransportConfig::default());
        }
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        cfg.scripts.lib_path = vec![lib];
        cfg.scripts.instruction_limit = 2_000_000;
        T { dir, cfg }
    }

    fn with(hook: Hook, src: &str) -> T {
        let mut t = T::new();
        t.script(hook, src);
        t
    }

    fn script(&mut self, hook: Hook, src: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{}.lua", hook.name()));
        std::fs::write(&p, src).unwrap();
        *slot(&mut self.cfg.scripts, hook) = Some(p.clone());
        p
    }

    fn file(&self, rel: &str, src: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, src).unwrap();
        p
    }

    fn engine(&self) -> Arc<PolicyEngine> {
        PolicyEngine::load(&self.cfg).unwrap()
    }
}

fn conn() -> ConnectionInfo {
    ConnectionInfo {
        id: "c0ffee".into(),
        remoteip: "192.0.2.7".into(),
        remoteport: 40123,
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

fn rcpt(addr: &str, transport: &str) -> RecipientInfo {
    RecipientInfo {
        recipient: addr.into(),
        address: Address::split(addr),
        params: BTreeMap::new(),
        transportid: transport.into(),
        dsn: RecipientDsn::default(),
    }
}

fn txn(rcpts: &[(&str, &str)]) -> TransactionInfo {
    let mut senderparams = BTreeMap::new();
    senderparams.insert("SIZE".to_string(), "1234".to_string());
    TransactionInfo {
        id: "txn1".into(),
        sender: "alice@example.com".into(),
        senderaddress: Address::split("alice@example.com"),
        senderparams,
        recipients: rcpts.iter().map(|(a, t)| rcpt(a, t)).collect(),
        ts: 1_700_000_000.5,
        open: true,
        ..Default::default()
    }
}

fn input(arguments: HookArguments) -> HookInput {
    HookInput {
        connection: conn(),
        transaction: None,
        arguments,
        context: serde_json::Value::Null,
    }
}

fn helo() -> HookArguments {
    HookArguments::Helo {
        verb: "EHLO".into(),
        host: "client.example".into(),
    }
}

const MSG: &[u8] = b"Received: from client.example by mx.example.org\r\n\
From: Alice <alice@example.com>\r\n\
To: bob@example.org\r\n\
Subject: =?utf-8?q?h=C3=A9llo?=\r\n\
X-Spam: old1\r\n\
X-Spam: old2\r\n\
\r\n\
Hello Bob.\r\n";

fn mail_input(rcpts: &[(&str, &str)]) -> HookInput {
    HookInput {
        connection: conn(),
        transaction: Some(txn(rcpts)),
        arguments: HookArguments::Mail {
            message: Bytes::from_static(MSG),
            headers_only: false,
        },
        context: serde_json::Value::Null,
    }
}

async fn run1(hook: Hook, src: &str, args: HookArguments) -> HookOutcome {
    T::with(hook, src).engine().run(hook, input(args)).await
}

fn reply_of(o: &HookOutcome) -> &SmtpReply {
    o.verdict.reply().expect("verdict has a reply")
}

fn enh(a: u8, b: u16, c: u16) -> Option<EnhancedCode> {
    Some(EnhancedCode(a, b, c))
}

// ---------------------------------------------------------------- verdicts

#[tokio::test]
async fn stage_fallthrough_is_pass() {
    let o = run1(Hook::Helo, "local x = 1", helo()).await;
    assert_eq!(o.verdict, HookVerdict::pass());
    assert!(o.error.is_none());
}

#[tokio::test]
async fn stage_verdicts_and_defaults() {
    let o = run1(Hook::Helo, "Pass()", helo()).await;
    assert_eq!(o.verdict, HookVerdict::pass());

    let o = run1(Hook::Helo, "Reply()", helo()).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reply {
            reply: SmtpReply::with(250, "2.0.0", "OK"),
            disconnect: false,
            next: false
        }
    );

    let o = run1(Hook::MailFrom, "Reject()", HookArguments::None).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reject {
            reply: SmtpReply::with(550, "5.7.1", "Rejected by policy"),
            disconnect: false
        }
    );

    let o = run1(Hook::RcptTo, "Defer()", HookArguments::None).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Defer {
            reply: SmtpReply::with(451, "4.7.1", "Deferred by policy, try again later"),
            disconnect: false
        }
    );
}

#[tokio::test]
async fn reply_options() {
    let o = run1(
        Hook::Helo,
        r#"Reply("go away", {disconnect = true, reply_codes = {code = 554, enhanced = {5, 7, 0}}})"#,
        helo(),
    )
    .await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reply {
            reply: SmtpReply::with(554, "5.7.0", "go away"),
            disconnect: true,
            next: false
        }
    );
    assert_eq!(reply_of(&o).render(true), "554 5.7.0 go away\r\n");
}

#[tokio::test]
async fn multi_line_reasons() {
    let o = run1(
        Hook::Helo,
        r#"Reject({"first line", "second line", "third"})"#,
        helo(),
    )
    .await;
    assert_eq!(
        reply_of(&o).render(true),
        "550-5.7.1 first line\r\n550-5.7.1 second line\r\n550 5.7.1 third\r\n"
    );
    let o = run1(Hook::Helo, "Defer(\"a\\nb\")", helo()).await;
    assert_eq!(reply_of(&o).lines, vec!["a", "b"]);
    // An injected CRLF cannot create a reply line of its own.
    assert_eq!(reply_of(&o).render(true), "451-4.7.1 a\r\n451 4.7.1 b\r\n");
}

#[tokio::test]
async fn enhanced_code_rules() {
    // code only: the default enhanced code follows the code's class.
    let o = run1(
        Hook::Helo,
        "Reject('x', {reply_codes = {code = 554}})",
        helo(),
    )
    .await;
    assert_eq!(reply_of(&o).code, 554);
    assert_eq!(reply_of(&o).enhanced, enh(5, 7, 1));
    // enhanced as a string, or switched off.
    let o = run1(
        Hook::Helo,
        "Defer('x', {reply_codes = {code = 450, enhanced = '4.2.0'}})",
        helo(),
    )
    .await;
    assert_eq!(reply_of(&o).enhanced, enh(4, 2, 0));
    let o = run1(
        Hook::Helo,
        "Reject('x', {reply_codes = {enhanced = false}})",
        helo(),
    )
    .await;
    assert_eq!(reply_of(&o).render(true), "550 x\r\n");
    // 421 always closes the connection.
    let o = run1(
        Hook::Helo,
        "Defer('bye', {reply_codes = {code = 421}})",
        helo(),
    )
    .await;
    assert!(o.verdict.disconnect());
    assert_eq!(reply_of(&o).enhanced, enh(4, 7, 1));
}

#[tokio::test]
async fn reply_codes_that_contradict_the_verdict_are_errors() {
    for src in [
        "Reject('x', {reply_codes = {code = 250}})",
        "Defer('x', {reply_codes = {code = 550}})",
        "Reject('x', {reply_codes = {code = 550, enhanced = {4, 7, 1}}})",
        "Reject('x', {reply_codes = {code = 999}})",
        "Reject('x', {disconect = true})",
    ] {
        let o = run1(Hook::Helo, src, helo()).await;
        assert_eq!(reply_of(&o).code, 421, "{src}");
        assert!(o.error.is_some(), "{src}");
    }
}

#[tokio::test]
async fn verdict_not_allowed_in_hook_is_an_error() {
    let o = run1(Hook::Data, "Accept()", HookArguments::None).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Defer {
            reply: SmtpReply::with(421, "4.3.0", "Local policy error, try again later"),
            disconnect: true
        }
    );
    let e = o.error.unwrap();
    assert!(
        e.contains("Accept() is not a verdict of the data hook"),
        "{e}"
    );
}

#[tokio::test]
async fn arguments_and_envelope_are_visible() {
    let o = run1(
        Hook::Helo,
        "Reply(arguments.verb .. ' ' .. arguments.host .. ' ' .. connection.remoteip .. ' ' .. connection.helo.host .. ' ' .. tostring(connection.remoteptr) .. ' ' .. tostring(connection.tls))",
        helo(),
    )
    .await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["EHLO client.example 192.0.2.7 client.example nil nil"]
    );

    let mut params = BTreeMap::new();
    params.insert("SIZE".to_string(), "99".to_string());
    let o = run1(
        Hook::MailFrom,
        "Reply(arguments.sender .. ' ' .. arguments.address.localpart .. ' ' .. arguments.address.domain .. ' ' .. arguments.params.SIZE)",
        HookArguments::MailFrom {
            address: "A@B.c".into(),
            params,
        },
    )
    .await;
    assert_eq!(reply_of(&o).lines, vec!["a@b.c a b.c 99"]);
    // The null sender: "" and no address.
    let o = run1(
        Hook::MailFrom,
        "Reply('[' .. arguments.sender .. '] ' .. tostring(arguments.address))",
        HookArguments::MailFrom {
            address: String::new(),
            params: BTreeMap::new(),
        },
    )
    .await;
    assert_eq!(reply_of(&o).lines, vec!["[] nil"]);
    // A recipient without a domain (postmaster).
    let o = run1(
        Hook::RcptTo,
        "Reply(arguments.recipient .. ' [' .. arguments.address.localpart .. '] [' .. arguments.address.domain .. ']')",
        HookArguments::RcptTo {
            address: "PostMaster".into(),
            params: BTreeMap::new(),
        },
    )
    .await;
    assert_eq!(reply_of(&o).lines, vec!["postmaster [postmaster] []"]);

    let t = T::with(
        Hook::RcptTo,
        "Reply(transaction.sender .. ' ' .. transaction.senderaddress.domain .. ' ' .. transaction.senderparams.SIZE .. ' ' .. #transaction.recipients .. ' ' .. transaction.recipients[1].address.localpart .. ' ' .. arguments.recipient .. ' ' .. arguments.address.localpart .. ' ' .. arguments.address.domain)",
    );
    let mut i = input(HookArguments::RcptTo {
        address: "carol@example.org".into(),
        params: BTreeMap::new(),
    });
    i.transaction = Some(txn(&[("bob@example.org", "default")]));
    let o = t.engine().run(Hook::RcptTo, i).await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["alice@example.com example.com 1234 1 bob carol@example.org carol example.org"]
    );
}

#[tokio::test]
async fn tls_peercert_is_a_table() {
    let t = T::with(
        Hook::Helo,
        "Reply(connection.tls.protocol .. ' ' .. connection.tls.keysize .. ' ' .. connection.tls.peercert.x509)",
    );
    let mut i = input(helo());
    i.connection.tls = Some(crate::envelope::TlsInfo {
        protocol: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        keysize: 128,
        sni: None,
        peercert: Some("PEM".into()),
    });
    let o = t.engine().run(Hook::Helo, i).await;
    assert_eq!(reply_of(&o).lines, vec!["TLSv1.3 128 PEM"]);
}

#[tokio::test]
async fn auth_hook() {
    let args = || HookArguments::Auth {
        mechanism: "PLAIN".into(),
        username: "u".into(),
        password: "secret".into(),
    };
    let src =
        "if arguments.password == 'secret' and arguments.mechanism == 'PLAIN' then Accept() end";
    let o = run1(Hook::Auth, src, args()).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Accept {
            reply: SmtpReply::with(235, "2.7.0", "Authentication successful"),
            custom: false,
            rewrite: Default::default(),
        }
    );
    // Falling off the end refuses the credentials.
    let o = run1(Hook::Auth, "local _ = 1", args()).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reject {
            reply: SmtpReply::with(535, "5.7.8", "Authentication credentials invalid"),
            disconnect: false
        }
    );
    let o = run1(Hook::Auth, "Reject()", args()).await;
    assert_eq!(reply_of(&o).code, 535);
    let o = run1(Hook::Auth, "Defer()", args()).await;
    assert_eq!(reply_of(&o).code, 454);
    assert_eq!(reply_of(&o).enhanced, enh(4, 7, 0));
    let o = run1(Hook::Auth, "Pass()", args()).await;
    assert_eq!(reply_of(&o).code, 421);
}

#[tokio::test]
async fn connect_hook_defaults() {
    let o = run1(Hook::Connect, "Reject()", HookArguments::None).await;
    assert_eq!(reply_of(&o).code, 554);
    let o = run1(Hook::Connect, "Defer()", HookArguments::None).await;
    assert_eq!(reply_of(&o).code, 421);
    assert!(o.verdict.disconnect());
    let o = run1(
        Hook::Connect,
        "Reply('busy', {disconnect = true, reply_codes = {code = 421}})",
        HookArguments::None,
    )
    .await;
    assert!(o.verdict.disconnect());
    assert_eq!(reply_of(&o).render(true), "421 4.0.0 busy\r\n");
}

#[tokio::test]
async fn data_and_headers_verdicts() {
    let o = run1(Hook::Data, "Reply('x')", HookArguments::None).await;
    assert_eq!(reply_of(&o).code, 421, "Reply is not a data verdict");
    let o = run1(Hook::Data, "Defer()", HookArguments::None).await;
    assert_eq!(reply_of(&o).code, 451);
    let t = T::with(
        Hook::Headers,
        "if arguments.mail:getHeader('x-spam') == 'old1' then Reject('spam') end",
    );
    let mut i = mail_input(&[("bob@example.org", "default")]);
    i.arguments = HookArguments::Mail {
        message: Bytes::from_static(&MSG[..MSG.len() - 12]),
        headers_only: true,
    };
    let o = t.engine().run(Hook::Headers, i).await;
    assert_eq!(reply_of(&o).lines, vec!["spam"]);
}

#[tokio::test]
async fn disconnect_hook_has_no_verdicts() {
    let o = run1(Hook::Disconnect, "context.x = 1", HookArguments::None).await;
    assert_eq!(o.verdict, HookVerdict::pass());
    assert_eq!(o.context, json!({"x": 1}));
    let o = run1(Hook::Disconnect, "Reject()", HookArguments::None).await;
    assert_eq!(o.verdict, HookVerdict::pass());
    assert!(o.error.is_some());
}

// ---------------------------------------------------------------- proxy

fn proxy(cmd: &str) -> HookArguments {
    HookArguments::Proxy {
        command: cmd.into(),
    }
}

#[tokio::test]
async fn proxy_rewrites_and_next() {
    let src = r#"
        local cmd = arguments.command
        if cmd:upper() == "XHELLO" then
            Reply({"hello " .. connection.remoteip, "custom command"}, {next = true})
        elseif cmd:match("^XCLIENT") then
            Pass({command = "NOOP", next = true})
        elseif cmd == "QUIT NOW" then
            Reply("bye", {disconnect = true, reply_codes = {code = 221, enhanced = {2, 0, 0}}})
        end
    "#;
    let t = T::with(Hook::Proxy, src);
    let e = t.engine();
    let o = e.run(Hook::Proxy, input(proxy("XHELLO"))).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reply {
            reply: SmtpReply {
                code: 250,
                enhanced: enh(2, 0, 0),
                lines: vec!["hello 192.0.2.7".into(), "custom command".into()]
            },
            disconnect: false,
            next: true
        }
    );
    let o = e
        .run(Hook::Proxy, input(proxy("XCLIENT ADDR=1.2.3.4")))
        .await;
    assert_eq!(
        o.verdict,
        HookVerdict::Pass {
            command: Some("NOOP".into()),
            next: true
        }
    );
    let o = e.run(Hook::Proxy, input(proxy("QUIT NOW"))).await;
    assert!(o.verdict.disconnect());
    assert_eq!(reply_of(&o).code, 221);
    let o = e.run(Hook::Proxy, input(proxy("HELP"))).await;
    assert_eq!(o.verdict, HookVerdict::pass());
}

#[tokio::test]
async fn proxy_error_is_421_reply() {
    let o = run1(Hook::Proxy, "error('nope')", proxy("X")).await;
    assert_eq!(
        o.verdict,
        HookVerdict::Reply {
            reply: SmtpReply::with(421, "4.3.0", "Local policy error, try again later"),
            disconnect: true,
            next: false
        }
    );
    let o = run1(Hook::Proxy, "Pass({command = 'A\\r\\nB'})", proxy("X")).await;
    assert!(o.error.is_some(), "command injection refused");
}

#[test]
fn proxy_wants() {
    let mut t = T::with(Hook::Proxy, "Pass()");
    let e = t.engine();
    assert!(e.proxy_wants("XFOO", false));
    assert!(!e.proxy_wants("MAIL", true));
    t.cfg.scripts.proxy_commands = vec!["mail".into(), "XCLIENT".into()];
    let e = t.engine();
    assert!(e.proxy_wants("MAIL", true));
    assert!(e.proxy_wants("XCLIENT", false));
    assert!(!e.proxy_wants("XFOO", false));
    let e = T::new().engine();
    assert!(!e.proxy_wants("XFOO", false));
    assert!(!e.has_hook(Hook::Proxy));
    assert!(!e.has_hook(Hook::Eod));
}

// ---------------------------------------------------------------- context

#[tokio::test]
async fn context_persists_across_hooks() {
    let mut t = T::new();
    t.script(
        Hook::Connect,
        "context.count = (context.count or 0) + 1\ncontext.ip = connection.remoteip\ncontext.list = {'a', 'b'}\ncontext.nested = {deep = {n = 1.5}}",
    );
    t.script(
        Hook::Helo,
        "context.count = context.count + 1\nif context.list[2] ~= 'b' or context.nested.deep.n ~= 1.5 then error('lost') end\nReply(context.ip .. ' ' .. context.count)",
    );
    let e = t.engine();
    let o = e.run(Hook::Connect, input(HookArguments::None)).await;
    assert_eq!(
        o.context,
        json!({"count": 1, "ip": "192.0.2.7", "list": ["a", "b"], "nested": {"deep": {"n": 1.5}}})
    );
    let mut i = input(helo());
    i.context = o.context;
    let o = e.run(Hook::Helo, i).await;
    assert_eq!(reply_of(&o).lines, vec!["192.0.2.7 2"], "{:?}", o.error);
    assert_eq!(o.context["count"], json!(2));
}

#[tokio::test]
async fn context_kept_on_verdict_and_error() {
    let o = run1(Hook::Helo, "context.seen = true\nReject()", helo()).await;
    assert_eq!(o.context, json!({"seen": true}));
    let o = run1(Hook::Helo, "context.seen = true\nerror('x')", helo()).await;
    assert_eq!(o.context, json!({"seen": true}));
    // Not plain data: the previous context is kept.
    let t = T::with(Hook::Helo, "context.f = function() end");
    let mut i = input(helo());
    i.context = json!({"old": 1});
    let o = t.engine().run(Hook::Helo, i).await;
    assert_eq!(o.context, json!({"old": 1}));
}

/// `connection`, `transaction` and `context` are built on first read: a
/// script that never touches `context` keeps it, one that assigns it without
/// reading replaces it, one that reads and clears it clears it.
#[tokio::test]
async fn context_untouched_replaced_or_cleared() {
    for (src, want) in [
        ("Reply('x')", json!({"old": 1})),
        ("context = {new = 2}", json!({"new": 2})),
        (
            "if context.old ~= 1 then error('lost') end context = nil",
            json!(null),
        ),
        (
            "local connection = 'shadow' context.ip = _ENV.connection.remoteip",
            json!({"old": 1, "ip": "192.0.2.7"}),
        ),
    ] {
        let t = T::with(Hook::Helo, src);
        let mut i = input(helo());
        i.context = json!({"old": 1});
        let o = t.engine().run(Hook::Helo, i).await;
        assert!(o.error.is_none(), "{src}: {:?}", o.error);
        assert_eq!(o.context, want, "{src}");
    }
}

#[tokio::test]
async fn globals_do_not_leak_between_runs() {
    let t = T::with(
        Hook::Helo,
        "counter = (counter or 0) + 1\nload('loaded = (loaded or 0) + 1')()\nassert(getmetatable(_ENV) == false)\nReply(tostring(counter) .. loaded)",
    );
    let e = t.engine();
    for _ in 0..3 {
        let o = e.run(Hook::Helo, input(helo())).await;
        assert_eq!(reply_of(&o).lines, vec!["11"], "{:?}", o.error);
    }
    assert_eq!(e.idle_states(), 1, "one pooled state reused");
}

// ---------------------------------------------------------------- termination

#[tokio::test]
async fn pcall_cannot_catch_verdicts() {
    let cases = [
        "local ok, err = pcall(Reject, 'caught?')\nPass()",
        "pcall(function() pcall(function() Reject('caught?') end) end)\nPass()",
        "xpcall(function() Reject('caught?') end, function(e) Pass() end)\nPass()",
        "local co = coroutine.create(function() Reject('caught?') end)\ncoroutine.resume(co)\nPass()",
        "local f = coroutine.wrap(function() Reject('caught?') end)\npcall(f)\nPass()",
        "local ok = pcall(error, 'plain errors are catchable')\nif ok then Pass() end\nReject('caught?')",
        "do local x <close> = setmetatable({}, {__close = function() Pass() end}) Reject('caught?') end",
        "local ok = pcall(string.gsub, 'abc', '%w', function() Reject('caught?') end) Pass()",
        "pcall(table.sort, {3, 1, 2}, function(a, b) Reject('caught?') end) Pass()",
        "setmetatable({}, {__newindex = function() Reject('caught?') end}).x = 1 Pass()",
        "local t = setmetatable({}, {__index = function() Reject('caught?') end}) local _ = t.x Pass()",
    ];
    for src in cases {
        let o = run1(Hook::Helo, src, helo()).await;
        assert_eq!(reply_of(&o).lines, vec!["caught?"], "{src}: {:?}", o.error);
        assert_eq!(reply_of(&o).code, 550);
        assert!(o.error.is_none(), "{src}: {:?}", o.error);
    }
}

/// A verdict suspends the script for good: nothing after it runs, neither
/// when the engine finishes the run nor when the pooled state is reused.
#[tokio::test]
async fn nothing_runs_after_a_verdict() {
    let t = T::with(
        Hook::Helo,
        "context.n = (context.n or 0) + 1
         local co = coroutine.wrap(function() Reject('no') context.inner = true end)
         if context.n == 2 then co() end
         if context.n == 1 then Reject('first') end
         context.after = true",
    );
    let e = t.engine();
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).lines, vec!["first"]);
    assert_eq!(o.context, json!({"n": 1}));
    let mut i = input(helo());
    i.context = o.context;
    let o = e.run(Hook::Helo, i).await;
    assert_eq!(reply_of(&o).lines, vec!["no"]);
    assert_eq!(o.context, json!({"n": 2}));
    assert_eq!(e.idle_states(), 1, "the state was reused");
}

#[tokio::test]
async fn script_errors_answer_421_with_traceback() {
    let t = T::with(
        Hook::MailFrom,
        "local x = 1\nlocal t = nil\nlocal y = t.field\n",
    );
    let o = t
        .engine()
        .run(Hook::MailFrom, input(HookArguments::None))
        .await;
    assert_eq!(
        o.verdict,
        HookVerdict::Defer {
            reply: SmtpReply::with(421, "4.3.0", "Local policy error, try again later"),
            disconnect: true
        }
    );
    let e = o.error.unwrap();
    assert!(e.contains("mailfrom.lua:3:"), "{e}");
    assert!(e.contains("stack traceback"), "{e}");
    // Errors raised from Rust helpers too.
    let o = run1(Hook::Helo, "re.match('(', 'x')", helo()).await;
    assert!(o.error.unwrap().contains("bad pattern"));
}

#[tokio::test]
async fn infinite_loops_are_stopped() {
    for src in [
        "while true do end",
        "while true do pcall(function() while true do end end) end",
        "local function f() return f() end f()",
        "xpcall(function() while true do end end, function() while true do end end)",
        "local co = coroutine.create(function() while true do end end) coroutine.resume(co) Pass()",
        "local f = coroutine.wrap(function() while true do coroutine.yield() end end) while true do f() end",
    ] {
        let started = std::time::Instant::now();
        let o = run1(Hook::Helo, src, helo()).await;
        assert_eq!(reply_of(&o).code, 421, "{src}");
        let e = o.error.unwrap();
        assert!(e.contains("instruction limit exceeded"), "{src}: {e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
    // Unbounded recursion through a metamethod hits Lua's C stack limit.
    let o = run1(
        Hook::Helo,
        "local s = setmetatable({}, {__index = function(t, k) return t[k] end}) local _ = s.x",
        helo(),
    )
    .await;
    assert!(o.error.unwrap().contains("stack overflow"));
}

#[tokio::test]
async fn instruction_budget_is_per_run() {
    // ~60% of the budget each run: fine every time in the same state.
    let t = T::with(
        Hook::Helo,
        "local n = 0 for i = 1, 300000 do n = n + i end Reply(tostring(n))",
    );
    let e = t.engine();
    for _ in 0..3 {
        let o = e.run(Hook::Helo, input(helo())).await;
        assert_eq!(reply_of(&o).code, 250, "{:?}", o.error);
    }
}

#[tokio::test]
async fn memory_hogs_are_stopped() {
    for src in [
        "local t = {} for i = 1, 1e8 do t[i] = string.rep('x', 100) .. i end",
        "local s = string.rep('x', 1 << 30)",
        "local t = {} while true do pcall(function() for i = 1, 1e8 do t[#t + 1] = {i} end end) end",
        // User code the host runs while it reads a verdict's options: metered too.
        "local t = {} Reject('x', setmetatable({}, {__index = function() for i = 1, 1e8 do t[i] = string.rep('x', 100) .. i end end}))",
    ] {
        let mut t = T::with(Hook::Helo, src);
        t.cfg.scripts.memory_limit = 16 << 20;
        t.cfg.scripts.instruction_limit = 500_000_000;
        let e = t.engine();
        let o = e.run(Hook::Helo, input(helo())).await;
        assert_eq!(reply_of(&o).code, 421, "{src}");
        assert!(o.error.as_deref().unwrap_or("").contains("memory"), "{src}: {:?}", o.error);
        assert_eq!(e.idle_states(), 0, "a state that hit its limit is not reused");
        // The engine still serves.
        let o = e.run(Hook::Helo, input(helo())).await;
        assert_eq!(reply_of(&o).code, 421);
    }
}

// ---------------------------------------------------------------- sandbox

#[tokio::test]
async fn sandbox_has_no_escape_hatches() {
    let src = r#"
        local missing = {}
        for _, name in ipairs({"io", "debug", "dofile", "loadfile"}) do
            if _G[name] ~= nil then missing[#missing + 1] = name end
        end
        for _, name in ipairs({"execute", "exit", "remove", "rename", "getenv", "tmpname"}) do
            if os[name] ~= nil then missing[#missing + 1] = "os." .. name end
        end
        if string.dump ~= nil then missing[#missing + 1] = "string.dump" end
        if package.loadlib ~= nil or package.cpath ~= nil then missing[#missing + 1] = "package" end
        if os.time() == nil then missing[#missing + 1] = "os.time gone" end
        Reply(#missing == 0 and "clean" or table.concat(missing, ","))
    "#;
    let o = run1(Hook::Helo, src, helo()).await;
    assert_eq!(reply_of(&o).lines, vec!["clean"], "{:?}", o.error);
}

#[tokio::test]
async fn bytecode_cannot_be_loaded() {
    let src = r#"
        local f, err = load("\27Lua\84\0\25\147\13\10\26\10")
        if f then Reply("loaded") end
        local g, err2 = load("return 1", "x", "b")
        Reply(tostring(err))
    "#;
    let o = run1(Hook::Helo, src, helo()).await;
    // load with mode "b" raises; the first load must have returned nil.
    let text = o.error.clone().unwrap_or_else(|| reply_of(&o).text());
    assert!(text.contains("only text chunks"), "{text}");
    let o = run1(
        Hook::Helo,
        r#"local f, err = load("\27Lua\84\0") Reply(tostring(f) .. " " .. tostring(err))"#,
        helo(),
    )
    .await;
    let t = reply_of(&o).text();
    assert!(t.starts_with("nil ") && t.contains("binary"), "{t}");
    // Text chunks work and see the running hook's globals.
    let o = run1(
        Hook::Helo,
        r#"Reply(load("return 'x' .. connection.remoteip")())"#,
        helo(),
    )
    .await;
    assert_eq!(reply_of(&o).lines, vec!["x192.0.2.7"], "{:?}", o.error);
}

#[tokio::test]
async fn require_only_from_lib_path() {
    let mut t = T::new();
    t.file(
        "lib/util.lua",
        "local M = {} function M.greet(n) return 'hi ' .. n end return M",
    );
    t.file("lib/pkg/init.lua", "return {v = 'pkg'}");
    t.file("lib/pkg/sub.lua", "return {v = 'sub'}");
    t.file("outside.lua", "return {v = 'outside'}");
    t.script(
        Hook::Helo,
        r#"
        assert(require("json") == json and require("re") == re)
        local u = require("util")
        local again = require("util")
        assert(u == again)
        local results = {u.greet("bob"), require("pkg").v, require("pkg.sub").v}
        for _, bad in ipairs({"../outside", "/etc/passwd", "outside", "pkg/../../outside", ""}) do
            local ok, err = pcall(require, bad)
            results[#results + 1] = ok and ("LOADED " .. bad) or "refused"
        end
        Reply(table.concat(results, ","))
    "#,
    );
    let o = t.engine().run(Hook::Helo, input(helo())).await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["hi bob,pkg,sub,refused,refused,refused,refused,refused"],
        "{:?}",
        o.error
    );
}

// ---------------------------------------------------------------- reload

#[tokio::test]
async fn reload_keeps_old_scripts_on_error() {
    let mut t = T::with(Hook::Helo, "Reply('v1')");
    let e = t.engine();
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).lines, vec!["v1"]);
    assert_eq!(e.idle_states(), 1);

    let path = t.script(Hook::Helo, "Reply('v2'\nlocal = 3\n");
    let err = e.reload(&t.cfg).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:", path.display())), "{msg}");
    match &err {
        PolicyError::Compile { line, .. } => assert!(line.is_some(), "{msg}"),
        other => panic!("{other:?}"),
    }
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).lines, vec!["v1"], "old script still serves");

    t.script(Hook::Helo, "Reply('v2')");
    e.reload(&t.cfg).unwrap();
    assert_eq!(e.idle_states(), 0, "states of the old epoch dropped");
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).lines, vec!["v2"]);

    // A hook removed by reload falls back to Pass.
    t.cfg.scripts.helo = None;
    e.reload(&t.cfg).unwrap();
    assert!(!e.has_hook(Hook::Helo));
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(o.verdict, HookVerdict::pass());
}

#[test]
fn check_reports_file_and_line() {
    let mut t = T::new();
    let p = t.script(Hook::Eod, "\n\nif then\n");
    let err = PolicyEngine::check(&t.cfg).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}:3:", p.display())), "{msg}");
    t.script(Hook::Eod, "Accept()");
    PolicyEngine::check(&t.cfg).unwrap();
    t.file("lib/broken.lua", "return {");
    let msg = PolicyEngine::check(&t.cfg).unwrap_err().to_string();
    assert!(msg.contains("broken.lua:1:"), "{msg}");
    // A missing script file is named.
    t.cfg.scripts.helo = Some(t.dir.path().join("nope.lua"));
    let msg = PolicyEngine::load(&t.cfg).err().unwrap().to_string();
    assert!(msg.contains("nope.lua"), "{msg}");
}

// ---------------------------------------------------------------- eod

/// There is one built-in eod, the session's (it queues every recipient to
/// its transport natively): without an eod script the engine has no eod
/// hook, and running one anyway gives the hook's fall-through, never a
/// second default that queues.
#[tokio::test]
async fn no_eod_script_means_no_eod_hook() {
    let e = T::new().engine();
    assert!(!e.has_hook(Hook::Eod));
    let o = e
        .run(Hook::Eod, mail_input(&[("bob@example.org", "default")]))
        .await;
    assert!(o.queued.is_empty());
    assert!(
        matches!(o.verdict, HookVerdict::Defer { .. }),
        "{:?}",
        o.verdict
    );
}

const EOD_SCRIPT: &str = r#"
    local mail = arguments.mail
    mail:addHeader("X-Scanned", "yes")
    local ids = {}
    for _, r in ipairs(transaction.recipients) do
        if r.address.domain == "quarantine.example" then
            local id = mail:queue(transaction.sender, r.address, "quarantine",
                {metadata = {reason = "policy", score = 7.5}, hold = true, jobid = "job-1", delay = 30})
            ids[#ids + 1] = id.queue
        else
            mail:setHeader("X-Rcpt", r.recipient)
            local id = mail:queue(transaction.senderaddress, r.recipient, r.transportid,
                {dsn = {notify = "NEVER"}})
            assert(id.transaction == transaction.id)
            ids[#ids + 1] = id.queue
        end
    end
    context.ids = ids
    Accept()
"#;

#[tokio::test]
async fn eod_queue_per_recipient() {
    let t = T::with(Hook::Eod, EOD_SCRIPT);
    let i = mail_input(&[
        ("bob@example.org", "default"),
        ("carol@example.org", "lmtp"),
        ("eve@quarantine.example", "default"),
    ]);
    let o = t.engine().run(Hook::Eod, i).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        reply_of(&o).render(true),
        "250 2.0.0 Ok: queued as txn1\r\n"
    );
    assert_eq!(o.queued.len(), 3);
    let (b, c, q) = (&o.queued[0], &o.queued[1], &o.queued[2]);
    assert_eq!(
        (b.recipient.as_str(), b.transportid.as_str()),
        ("bob@example.org", "default")
    );
    assert_eq!(
        (c.recipient.as_str(), c.transportid.as_str()),
        ("carol@example.org", "lmtp")
    );
    assert_eq!(
        (q.recipient.as_str(), q.transportid.as_str()),
        ("eve@quarantine.example", "quarantine")
    );
    assert_eq!(b.sender, "alice@example.com");
    assert_eq!(b.dsn.notify.as_deref(), Some("NEVER"));
    assert!(!b.hold && b.delay.is_none() && b.metadata.is_empty());
    assert!(q.hold);
    assert_eq!(q.jobid.as_deref(), Some("job-1"));
    assert_eq!(q.delay, Some(std::time::Duration::from_secs(30)));
    assert_eq!(q.metadata.get("reason").map(String::as_str), Some("policy"));
    assert_eq!(q.metadata.get("score").map(String::as_str), Some("7.5"));
    // Header changes at queue time are in each queued copy.
    let text = |m: &Bytes| String::from_utf8(m.to_vec()).unwrap();
    assert!(
        text(&b.message).starts_with("X-Rcpt: bob@example.org\r\nX-Scanned: yes\r\nReceived:"),
        "{}",
        text(&b.message)
    );
    assert!(text(&c.message).starts_with("X-Rcpt: carol@example.org\r\nX-Scanned: yes\r\n"));
    assert!(text(&q.message).contains("X-Rcpt: carol@example.org\r\n"));
    assert!(text(&b.message).ends_with("\r\n\r\nHello Bob.\r\n"));
    // The ids handed to the script are the ids queued.
    let ids: Vec<String> = o.queued.iter().map(|q| q.queue_id.clone()).collect();
    assert_eq!(o.context["ids"], json!(ids));
}

#[tokio::test]
async fn eod_rolls_back_unless_accepted() {
    let prefix = "for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, 'default') end\n";
    for (tail, code) in [
        ("", 451),
        ("error('late failure')", 451),
        ("Reject('no')", 550),
        ("Defer('later')", 451),
        ("arguments.mail:queue('', 'x@y', 'nonexistent')", 451),
    ] {
        let t = T::with(Hook::Eod, &format!("{prefix}{tail}"));
        let o = t
            .engine()
            .run(Hook::Eod, mail_input(&[("bob@example.org", "default")]))
            .await;
        assert_eq!(reply_of(&o).code, code, "{tail}");
        assert!(o.queued.is_empty(), "{tail}: nothing survives");
        if code == 451 && !tail.starts_with("Defer") {
            assert_eq!(reply_of(&o).enhanced, enh(4, 3, 0), "{tail}");
            assert!(!o.verdict.disconnect());
        }
    }
}

#[tokio::test]
async fn queue_outside_eod_is_an_error() {
    let t = T::with(Hook::Headers, "arguments.mail:queue('', 'x@y', 'default')");
    let mut i = mail_input(&[("bob@example.org", "default")]);
    i.arguments = HookArguments::Mail {
        message: Bytes::from_static(MSG),
        headers_only: true,
    };
    let o = t.engine().run(Hook::Headers, i).await;
    assert!(o.error.unwrap().contains("only available in the eod hook"));
}

#[tokio::test]
async fn history_requests_are_kept_on_reject() {
    let src = r#"
        for _, r in ipairs(transaction.recipients) do
            History("reject", r.recipient, {metadata = {rule = "R1"}, reason = "spam", transportid = r.transportid})
        end
        History("DELIVER", {localpart = "x", domain = "y.example"}, {sender = "s@example.net"})
        local ok = pcall(History, "BOGUS", "a@b")
        if ok then error("bogus action accepted") end
        Reject("spam")
    "#;
    let t = T::with(Hook::Eod, src);
    let o = t
        .engine()
        .run(Hook::Eod, mail_input(&[("bob@example.org", "lmtp")]))
        .await;
    assert_eq!(reply_of(&o).lines, vec!["spam"], "{:?}", o.error);
    assert_eq!(o.history.len(), 2);
    let h = &o.history[0];
    assert_eq!(h.action, "REJECT");
    assert_eq!(h.recipient, "bob@example.org");
    assert_eq!(h.sender.as_deref(), Some("alice@example.com"));
    assert_eq!(h.metadata.get("rule").map(String::as_str), Some("R1"));
    assert_eq!(h.reason.as_deref(), Some("spam"));
    assert_eq!(h.transportid.as_deref(), Some("lmtp"));
    assert_eq!(o.history[1].recipient, "x@y.example");
    assert_eq!(o.history[1].sender.as_deref(), Some("s@example.net"));
}

/// Halon's stage `Accept` in connect, helo, mailfrom and rcptto, with the
/// rewrites each hook takes; a rewrite another hook owns is an error that
/// names the hook.
#[tokio::test]
async fn stage_accept_rewrites() {
    let o = run1(Hook::Connect, "Accept()", HookArguments::None).await;
    assert!(
        matches!(o.verdict, HookVerdict::Accept { custom: false, .. }),
        "{:?}",
        o.verdict
    );
    assert!(o.error.is_none());

    let o = run1(Hook::Helo, "Accept({host = 'new.example'})", helo()).await;
    match &o.verdict {
        HookVerdict::Accept {
            rewrite, custom, ..
        } => {
            assert_eq!(rewrite.host.as_deref(), Some("new.example"));
            assert!(!custom);
        }
        v => panic!("{v:?}"),
    }

    let mail = || HookArguments::MailFrom {
        address: "a@example.com".into(),
        params: BTreeMap::new(),
    };
    let o = run1(
        Hook::MailFrom,
        "Accept({sender = 'Bounce@Example.NET'})",
        mail(),
    )
    .await;
    match &o.verdict {
        HookVerdict::Accept { rewrite, .. } => {
            assert_eq!(rewrite.sender.as_deref(), Some("bounce@example.net"))
        }
        v => panic!("{v:?}"),
    }
    // The null sender is a valid rewrite; a bare word is not.
    let o = run1(Hook::MailFrom, "Accept({sender = ''})", mail()).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    let o = run1(Hook::MailFrom, "Accept({sender = 'nobody'})", mail()).await;
    assert!(
        o.error
            .as_deref()
            .unwrap_or("")
            .contains("is not an address"),
        "{:?}",
        o.error
    );

    let rcpt = || HookArguments::RcptTo {
        address: "u@example.org".into(),
        params: BTreeMap::new(),
    };
    let o = run1(
        Hook::RcptTo,
        "Accept({recipient = {localpart = 'v', domain = 'lmtp.example'}, transportid = 'lmtp', reason = 'taken'})",
        rcpt(),
    )
    .await;
    match &o.verdict {
        HookVerdict::Accept {
            rewrite,
            custom,
            reply,
        } => {
            assert_eq!(rewrite.recipient.as_deref(), Some("v@lmtp.example"));
            assert_eq!(rewrite.transportid.as_deref(), Some("lmtp"));
            assert!(custom);
            assert_eq!(reply.render(true), "250 2.1.5 taken\r\n");
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(o.transportid.as_deref(), Some("lmtp"));

    // Options belong to their hook.
    let o = run1(Hook::Connect, "Accept({host = 'x'})", HookArguments::None).await;
    let e = o.error.unwrap_or_default();
    assert!(
        e.contains("unknown option \"host\" in the connect hook"),
        "{e}"
    );
    let o = run1(Hook::RcptTo, "Accept({transportid = 'nope'})", rcpt()).await;
    assert!(o.error.unwrap_or_default().contains("unknown transportid"));
}

#[tokio::test]
async fn rcptto_sets_transport() {
    let t = T::with(
        Hook::RcptTo,
        "if arguments.address.domain == 'lmtp.example' then Pass({transportid = 'lmtp'}) end",
    );
    let e = t.engine();
    let o = e
        .run(
            Hook::RcptTo,
            input(HookArguments::RcptTo {
                address: "u@lmtp.example".into(),
                params: BTreeMap::new(),
            }),
        )
        .await;
    assert_eq!(o.transportid.as_deref(), Some("lmtp"));
    assert_eq!(o.verdict, HookVerdict::pass());
    let o = run1(
        Hook::RcptTo,
        "Pass({transportid = 'nope'})",
        HookArguments::None,
    )
    .await;
    assert!(o.error.unwrap().contains("unknown transportid"));
}

// ---------------------------------------------------------------- MailMessage

#[tokio::test]
async fn mail_header_api() {
    let src = r#"
        local m = arguments.mail
        local out = {}
        local function add(v) out[#out + 1] = tostring(v) end
        add(m:getHeader("subject"))
        add(m:getHeader("SUBJECT", {decode = true}))
        add(m:getHeader("x-spam", {index = 2}))
        add(m:getHeader("x-spam", {field = true}))
        add(#m:getHeaders("X-Spam"))
        add(m:getHeader("missing"))
        add(table.concat(m:getHeaderNames(), "|"))
        add(m:delHeader("x-spam", {index = 1}))
        add(m:getHeader("x-spam"))
        add(m:setHeader("To", "carol@example.org"))
        add(m:setHeader("X-New", "v"))
        add(m:delHeader("x-spam"))
        m:addHeader("X-Bottom", "b", {bottom = true})
        add(m:getBody())
        add(m:getSize() == #m:toString())
        add(m:getID())
        Reply(out)
    "#;
    let t = T::with(
        Hook::Eod,
        &src.replace("Reply(out)", "context.out = out Reject('x')"),
    );
    let o = t
        .engine()
        .run(Hook::Eod, mail_input(&[("bob@example.org", "default")]))
        .await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.context["out"],
        json!([
            "=?utf-8?q?h=C3=A9llo?=",
            "héllo",
            "old2",
            "X-Spam: old1",
            "2",
            "nil",
            "Received|From|To|Subject|X-Spam|X-Spam",
            "1",
            "old2",
            "1",
            "1",
            "1",
            "Hello Bob.\r\n",
            "true",
            "txn1"
        ])
    );
}

#[tokio::test]
async fn mail_body_and_serialization() {
    let src = r#"
        local m = arguments.mail
        m:delHeader("Received")
        m:setHeader("Subject", "new subject")
        m:setBody("Replaced.\r\n")
        m:queue(transaction.sender, "bob@example.org", "default")
        Accept({reason = "thanks", reply_codes = {code = 250, enhanced = {2, 6, 0}}})
    "#;
    let t = T::with(Hook::Eod, src);
    let o = t
        .engine()
        .run(Hook::Eod, mail_input(&[("bob@example.org", "default")]))
        .await;
    assert_eq!(
        reply_of(&o).render(true),
        "250 2.6.0 thanks\r\n",
        "{:?}",
        o.error
    );
    let m = String::from_utf8(o.queued[0].message.to_vec()).unwrap();
    assert_eq!(
        m,
        "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: new subject\r\nX-Spam: old1\r\nX-Spam: old2\r\n\r\nReplaced.\r\n"
    );
}

const MIME: &[u8] = b"From: a@example.com\r\n\
Subject: parts\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
plain text\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"doc.pdf\"\r\n\
Content-Disposition: attachment; filename=\"doc.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQ=\r\n\
--b1--\r\n";

#[tokio::test]
async fn mail_parts() {
    let src = r#"
        local m = arguments.mail
        local parts = m:getParts()
        local out = {#parts}
        for _, p in ipairs(parts) do
            out[#out + 1] = p.id .. ":" .. p.type .. ":" .. tostring(p.filename) .. ":" .. p.size .. ":" .. tostring(p.parent)
        end
        local pdf = m:findByType("^application/pdf$")
        out[#out + 1] = #pdf
        out[#out + 1] = pdf[1].body
        out[#out + 1] = pdf[1].headers[1].name .. "=" .. pdf[1].headers[1].value
        out[#out + 1] = sha256(pdf[1].body)
        out[#out + 1] = #m:findByType("text/")
        context.out = out
        Reject("done")
    "#;
    let t = T::with(Hook::Eod, src);
    let mut i = mail_input(&[("bob@example.org", "default")]);
    i.arguments = HookArguments::Mail {
        message: Bytes::from_static(MIME),
        headers_only: false,
    };
    let o = t.engine().run(Hook::Eod, i).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.context["out"],
        json!([
            3,
            "0:multipart/mixed:nil:0:nil",
            "1:text/plain:nil:10:0",
            "2:application/pdf:doc.pdf:8:0",
            1,
            "%PDF-1.4",
            "Content-Type=application/pdf; name=\"doc.pdf\"",
            crate::policy::api::sha256::hex(b"%PDF-1.4"),
            1
        ])
    );
}

// ---------------------------------------------------------------- helpers

#[tokio::test]
async fn helper_functions() {
    let src = r#"
        local out = {}
        local function add(v) out[#out + 1] = v end
        local j = json.decode('{"a": [1, 2, {"b": null}], "s": "x"}')
        add(j.a[2])
        add(j.a[3].b == json.null)
        add(json.encode({1, 2, 3}))
        add(json.encode({k = "v"}))
        add(json.encode(json.decode("[]")))
        add(select(2, pcall(json.decode, "{bad")) ~= nil)
        add(re.match("^[a-z]+@example\\.org$", "bob@example.org"))
        add(re.match("^x", "bob"))
        local m = re.find("(?P<user>[^@]+)@(.+)", "bob@example.org")
        add(m[0] .. " " .. m[1] .. " " .. m[2] .. " " .. m.user)
        add(re.find("z", "abc") == nil)
        add(re.replace("o", "foo", "0"))
        add(#re.find_all("[0-9]+", "a1b22c333"))
        add(ip.in_network("192.0.2.7", "192.0.2.0/24"))
        add(ip.in_network("192.0.2.7", {"10.0.0.0/8", "2001:db8::/32"}))
        add(ip.in_network("::ffff:192.0.2.7", "192.0.2.0/24"))
        add(ip.in_network("not an ip", "192.0.2.0/24"))
        add(select(2, pcall(ip.in_network, "1.2.3.4", "bogus")) ~= nil)
        add(sha256("abc"))
        add(base64.encode("hello"))
        add(base64.decode("aGVs bG8="))
        add(base64.decode("!!") == nil)
        add(type(os.time()))
        log.info("from a script", 1, true)
        print("print works")
        context.out = out
    "#;
    let o = run1(Hook::Helo, src, helo()).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.context["out"],
        json!([
            2,
            true,
            "[1,2,3]",
            "{\"k\":\"v\"}",
            "[]",
            true,
            true,
            false,
            "bob@example.org bob example.org bob",
            true,
            "f00",
            3,
            true,
            false,
            true,
            false,
            true,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "aGVsbG8=",
            "hello",
            true,
            "number"
        ])
    );
}

// ---------------------------------------------------------------- DNS

/// A UDP responder: A host.* → 192.0.2.53; PTR 192.0.2.53 → host.example.test
/// (confirmed), PTR 192.0.2.7 → liar.example.test (not confirmed); else NXDOMAIN.
async fn fake_dns() -> std::net::SocketAddr {
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::{
        rdata::{A, PTR},
        Name, RData, Record, RecordType,
    };
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id());
            r.set_message_type(MessageType::Response);
            r.set_recursion_desired(q.recursion_desired());
            r.set_recursion_available(true);
            r.set_authoritative(true);
            r.add_queries(q.queries().to_vec());
            let query = &q.queries()[0];
            let name = query.name().to_ascii();
            if query.query_type() == RecordType::A && name.starts_with("host.") {
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 53)),
                ));
            } else if query.query_type() == RecordType::PTR && name.starts_with("53.2.0.192.") {
                let target = Name::from_ascii("host.example.test.").unwrap();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::PTR(PTR(target)),
                ));
            } else if query.query_type() == RecordType::PTR && name.starts_with("7.2.0.192.") {
                let target = Name::from_ascii("liar.example.test.").unwrap();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::PTR(PTR(target)),
                ));
            } else {
                r.set_response_code(ResponseCode::NXDomain);
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn fcrdns() {
    let ns = fake_dns().await;
    let mut t = T::with(
        Hook::Connect,
        "Reply({tostring(dns.fcrdns('192.0.2.53')), tostring(dns.fcrdns(connection.remoteip)), dns.query('192.0.2.7', 'PTR')[1]})",
    );
    t.cfg.dns.nameservers = vec![ns.to_string()];
    let e = t.engine();
    let o = e.run(Hook::Connect, input(HookArguments::None)).await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["host.example.test", "nil", "liar.example.test"],
        "{:?}",
        o.error
    );
    assert_eq!(
        e.fcrdns("::ffff:192.0.2.53".parse().unwrap())
            .await
            .as_deref(),
        Some("host.example.test")
    );
    assert_eq!(e.fcrdns("192.0.2.7".parse().unwrap()).await, None);
}

#[tokio::test]
async fn dns_query_yields_and_answers() {
    let ns = fake_dns().await;
    let mut t = T::with(
        Hook::Helo,
        r#"
        local a, err = dns.query("host.example.test", "A")
        local b, err2 = dns.query("missing.example.test")
        local c, err3 = dns.query("host.example.test", "BOGUSTYPE")
        Reply({a and a[1] or tostring(err), tostring(b) .. " " .. tostring(err2), tostring(c) .. " " .. tostring(err3)})
    "#,
    );
    t.cfg.dns.nameservers = vec![ns.to_string()];
    t.cfg.dns.timeout = Some(std::time::Duration::from_secs(2));
    let o = t.engine().run(Hook::Helo, input(helo())).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    let lines = &reply_of(&o).lines;
    assert_eq!(lines[0], "192.0.2.53");
    assert_eq!(lines[1], "nil NXDOMAIN");
    assert!(lines[2].starts_with("nil unknown record type"), "{lines:?}");
}

// ---------------------------------------------------------------- concurrency, test_script

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_share_the_pool() {
    let ns = fake_dns().await;
    let mut t = T::with(
        Hook::Helo,
        "local a = dns.query('host.example.test') context.n = (context.n or 0) + 1 Reply(a[1] .. ' ' .. connection.id)",
    );
    t.cfg.dns.nameservers = vec![ns.to_string()];
    let e = t.engine();
    let mut tasks = Vec::new();
    for n in 0..64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = input(helo());
            i.connection.id = format!("c{n}");
            let o = e.run(Hook::Helo, i).await;
            (n, o)
        }));
    }
    for task in tasks {
        let (n, o) = task.await.unwrap();
        assert_eq!(
            reply_of(&o).lines,
            vec![format!("192.0.2.53 c{n}")],
            "{:?}",
            o.error
        );
        assert_eq!(o.context, json!({"n": 1}));
    }
    assert!(e.idle_states() >= 1 && e.idle_states() <= 64);
}

#[tokio::test]
async fn test_script_helper() {
    let mut t = T::new();
    t.script(
        Hook::Eod,
        "for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, r.transportid) end Accept()",
    );
    let env = json!({
        "connection": {"remoteip": "203.0.113.9"},
        "sender": "Alice@Example.com",
        "recipients": ["bob@example.org", {"recipient": "carol@example.org", "transportid": "lmtp"}],
    });
    let o = test_script(&t.cfg, Hook::Eod, Some(MSG.to_vec()), &env)
        .await
        .unwrap();
    assert_eq!(o.queued.len(), 2);
    assert_eq!(o.queued[0].sender, "alice@example.com");
    assert_eq!(o.queued[1].transportid, "lmtp");
    let j = outcome_json(&o);
    assert_eq!(j["verdict"], "Accept");
    assert_eq!(j["queued"][1]["recipient"], "carol@example.org");
    assert_eq!(j["queued"][0]["size"], MSG.len());

    t.script(
        Hook::Helo,
        "Reply(arguments.host .. ' ' .. connection.remoteip)",
    );
    let o = test_script(
        &t.cfg,
        Hook::Helo,
        None,
        &json!({"arguments": {"host": "h.example"}}),
    )
    .await
    .unwrap();
    assert_eq!(reply_of(&o).lines, vec!["h.example 127.0.0.1"]);
    assert!(test_script(&t.cfg, Hook::Proxy, None, &json!({}))
        .await
        .is_err());
}

#[tokio::test]
async fn delivery_hooks_see_the_entry() {
    let src = "if arguments.result and arguments.result.code >= 500 then Reject(arguments.recipient .. ' ' .. arguments.attempt) end";
    let t = T::with(Hook::PostDelivery, src);
    let d = DeliveryInfo {
        queue_id: "q1".into(),
        recipient: "bob@example.org".into(),
        attempt: 3,
        result: Some(DeliveryResult {
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "no such user".into(),
            local_error: false,
        }),
        ..Default::default()
    };
    let o = t
        .engine()
        .run(Hook::PostDelivery, input(HookArguments::Delivery(d)))
        .await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["bob@example.org 3"],
        "{:?}",
        o.error
    );
}

#[tokio::test]
async fn shebang_and_line_numbers() {
    let t = T::with(
        Hook::Helo,
        "#!/usr/bin/env lua\nlocal x = 1\nerror('on line 3')\n",
    );
    let o = t.engine().run(Hook::Helo, input(helo())).await;
    let e = o.error.unwrap();
    assert!(e.contains("helo.lua:3: on line 3"), "{e}");
}

#[test]
fn finalizers_are_refused() {
    // Lua runs __gc with debug hooks off, so a looping finalizer would escape
    // the instruction budget (and hang when the state is closed).
    let t = T::with(
        Hook::Helo,
        "string.keep = setmetatable({}, {__gc = function() while true do end end}) Reply('ok')",
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let cfg = t.cfg.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = PolicyEngine::load(&cfg).unwrap();
        let o = rt.block_on(e.run(Hook::Helo, input(helo())));
        e.reload(&cfg).unwrap(); // drops the idle states
        tx.send(o).unwrap();
    });
    let o = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("no hang");
    assert!(o
        .error
        .unwrap()
        .contains("__gc metamethods are not allowed"));
    // Other metatables still work.
    let t = T::with(
        Hook::Helo,
        "local v = setmetatable({}, {__index = function(_, k) return k .. '!' end}) Reply(v.hi)",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let o = rt.block_on(t.engine().run(Hook::Helo, input(helo())));
    assert_eq!(reply_of(&o).lines, vec!["hi!"]);
}

#[tokio::test]
async fn async_calls_work_inside_user_coroutines() {
    let ns = fake_dns().await;
    let mut t = T::with(
        Hook::Helo,
        r#"
        local out = {}
        local co = coroutine.wrap(function() return dns.query("host.example.test") end)
        local ok, r = pcall(co)
        out[#out + 1] = tostring(ok) .. " " .. type(r) .. " " .. tostring(r and r[1])
        local c2 = coroutine.create(function(name)
            local a = dns.query(name)
            local got = coroutine.yield(a[1])
            local inner = coroutine.wrap(function() return dns.query("missing.example.test") end)
            local _, err = inner()
            return got .. " " .. err
        end)
        local ok1, first = coroutine.resume(c2, "host.example.test")
        local ok2, second = coroutine.resume(c2, "resumed")
        out[#out + 1] = tostring(ok1) .. " " .. first .. " " .. tostring(ok2) .. " " .. second
        out[#out + 1] = coroutine.status(c2)
        Reply(out)
    "#,
    );
    t.cfg.dns.nameservers = vec![ns.to_string()];
    let o = t.engine().run(Hook::Helo, input(helo())).await;
    assert_eq!(
        reply_of(&o).lines,
        vec![
            "true table 192.0.2.53",
            "true 192.0.2.53 true resumed NXDOMAIN",
            "dead"
        ],
        "{:?}",
        o.error
    );
}

/// Rough per-run cost (run with `--ignored --nocapture`; debug builds are slow).
#[tokio::test]
#[ignore]
async fn bench_runs() {
    let mut t = T::new();
    t.script(
        Hook::Helo,
        "if arguments.host == 'x' then Reject() end context.h = arguments.host",
    );
    t.script(
        Hook::Eod,
        "arguments.mail:addHeader('X-Policy', 'ok') for _, r in ipairs(transaction.recipients) do arguments.mail:queue(transaction.sender, r.recipient, r.transportid) end Accept()",
    );
    let e = t.engine();
    for (hook, n) in [(Hook::Helo, 20_000), (Hook::Eod, 20_000)] {
        let started = std::time::Instant::now();
        for _ in 0..n {
            let i = match hook {
                Hook::Eod => mail_input(&[
                    ("bob@example.org", "default"),
                    ("carol@example.org", "lmtp"),
                ]),
                _ => input(helo()),
            };
            let o = e.run(hook, i).await;
            assert!(o.error.is_none());
        }
        let el = started.elapsed();
        eprintln!("{hook}: {:.1} µs/run", el.as_secs_f64() * 1e6 / n as f64);
    }
    let started = std::time::Instant::now();
    for _ in 0..200 {
        PolicyEngine::check(&t.cfg).unwrap();
    }
    eprintln!(
        "state creation + compile: {:.1} µs",
        started.elapsed().as_secs_f64() * 1e6 / 200.0
    );
    let lua = sandbox::new_state(
        &sandbox::Limits {
            memory: 64 << 20,
            instructions: 1_000_000,
        },
        &[],
        api::Shared {
            transports: Default::default(),
            dns: Arc::new(api::dns::Dns::new(&Default::default())),
            scan: Arc::new(crate::scan::ScanContext::minimal("localhost")),
            hostname: "localhost".into(),
            relay: Default::default(),
            recipients: None,
            state: crate::state::StateStore::local(),
        },
    )
    .unwrap();
    lua.gc_collect().unwrap();
    eprintln!("fresh state: {} KiB", lua.used_memory() / 1024);
}

// ---------------------------------------------------------------- shipped scripts

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn shipped_scripts_compile() {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "lua") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo("scripts"), &mut files);
    walk(&repo("lib-lua"), &mut files);
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        sandbox::compile_file(&f).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn with_file(hook: Hook, rel: &str) -> T {
    let mut t = T::new();
    *slot(&mut t.cfg.scripts, hook) = Some(repo(rel));
    t
}

/// scripts/eod.lua does what the session's built-in eod does: our
/// Authentication-Results on top of the message as received, every
/// recipient to its transport (none = "default"), then Accept with the
/// default reply.
#[tokio::test]
async fn shipped_eod_matches_the_builtin() {
    let rcpts = [
        ("bob@example.org", "default"),
        ("carol@example.org", "lmtp"),
        ("d@example.org", ""),
    ];
    let a = with_file(Hook::Eod, "scripts/eod.lua")
        .engine()
        .run(Hook::Eod, mail_input(&rcpts))
        .await;
    assert!(
        matches!(&a.verdict, HookVerdict::Accept { custom: false, .. }),
        "{:?} {:?}",
        a.verdict,
        a.error
    );
    let got: Vec<(String, String, bool)> = a
        .queued
        .iter()
        .map(|q| {
            let stamped =
                q.message.starts_with(b"Authentication-Results: ") && q.message.ends_with(MSG);
            (q.recipient.clone(), q.transportid.clone(), stamped)
        })
        .collect();
    let want: Vec<(String, String, bool)> = [
        ("bob@example.org", "default"),
        ("carol@example.org", "lmtp"),
        ("d@example.org", "default"),
    ]
    .iter()
    .map(|(r, t)| (r.to_string(), t.to_string(), true))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn shipped_examples_behave() {
    // rcptto: routing and refusal.
    let e = with_file(Hook::RcptTo, "scripts/examples/rcptto.lua").engine();
    let rcpt = |a: &str| {
        input(HookArguments::RcptTo {
            address: a.into(),
            params: BTreeMap::new(),
        })
    };
    let o = e.run(Hook::RcptTo, rcpt("x@lists.example.org")).await;
    assert_eq!(o.transportid.as_deref(), Some("lmtp"), "{:?}", o.error);
    let o = e.run(Hook::RcptTo, rcpt("x@elsewhere.example")).await;
    assert_eq!(reply_of(&o).render(true), "550 5.7.1 Relaying denied\r\n");

    // helo: bare IP refused.
    let e = with_file(Hook::Helo, "scripts/examples/helo.lua").engine();
    let o = e
        .run(
            Hook::Helo,
            input(HookArguments::Helo {
                verb: "EHLO".into(),
                host: "192.0.2.1".into(),
            }),
        )
        .await;
    assert_eq!(reply_of(&o).enhanced, enh(5, 5, 2), "{:?}", o.error);
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(o.verdict, HookVerdict::pass());
    assert_eq!(o.context, json!({"helo_checked": true}));

    // proxy: a custom command.
    let e = with_file(Hook::Proxy, "scripts/examples/proxy.lua").engine();
    let o = e.run(Hook::Proxy, input(proxy("xstatus"))).await;
    assert_eq!(reply_of(&o).lines.len(), 3, "{:?}", o.error);
    assert_eq!(reply_of(&o).lines[1], "client 192.0.2.7");
    let o = e.run(Hook::Proxy, input(proxy("NOOP"))).await;
    assert_eq!(o.verdict, HookVerdict::pass());

    // eod-tag: accepted with a header, or rejected for an executable.
    let t = with_file(Hook::Eod, "scripts/examples/eod-tag.lua");
    let e = t.engine();
    let mut i = mail_input(&[("bob@example.org", "default")]);
    i.arguments = HookArguments::Mail {
        message: Bytes::from_static(MIME),
        headers_only: false,
    };
    let o = e.run(Hook::Eod, i.clone()).await;
    assert!(
        matches!(o.verdict, HookVerdict::Accept { .. }),
        "{:?}",
        o.error
    );
    assert!(o.queued[0].message.starts_with(b"X-Sluice-Checked: "));
    let exe = String::from_utf8_lossy(MIME).replace("doc.pdf", "run.exe");
    i.arguments = HookArguments::Mail {
        message: Bytes::from(exe.into_bytes()),
        headers_only: false,
    };
    let o = e.run(Hook::Eod, i).await;
    assert_eq!(reply_of(&o).code, 554, "{:?}", o.error);
    assert!(o.queued.is_empty());
    assert_eq!(o.history.len(), 1);
    assert_eq!(
        o.history[0].reason.as_deref(),
        Some("executable attachment run.exe")
    );
}

#[tokio::test]
async fn extra_sources_run_before_the_file() {
    let t = T::with(
        Hook::RcptTo,
        "context.order = (context.order or '') .. 'file' Pass()",
    );
    let extra = |src: &str| {
        vec![ScriptSource {
            hook: Hook::RcptTo,
            name: "policy.axigen".into(),
            source: src.into(),
        }]
    };
    let args = || HookArguments::RcptTo {
        address: "x@spam.example".into(),
        params: BTreeMap::new(),
    };
    // Falls through: the file runs next, in the same run and context.
    let e = PolicyEngine::load_with(&t.cfg, &extra("context.order = 'axigen,'")).unwrap();
    assert_eq!(e.scripts(Hook::RcptTo).len(), 2);
    let o = e.run(Hook::RcptTo, input(args())).await;
    assert_eq!(o.context, json!({"order": "axigen,file"}), "{:?}", o.error);
    // A verdict ends the chain.
    let src = "if arguments.recipient:find('spam') then Reject('axigen says no') end";
    let e = PolicyEngine::load_with(&t.cfg, &extra(src)).unwrap();
    let o = e.run(Hook::RcptTo, input(args())).await;
    assert_eq!(reply_of(&o).lines, vec!["axigen says no"]);
    // The file never ran, and the Axigen source never read `context`.
    assert_eq!(o.context, json!(null));
    // Errors name the source.
    let o = PolicyEngine::load_with(&t.cfg, &extra("\nerror('x')"))
        .unwrap()
        .run(Hook::RcptTo, input(args()))
        .await;
    assert!(o.error.unwrap().contains("policy.axigen:2: x"));
    let err = PolicyEngine::load_with(&t.cfg, &extra("if")).err().unwrap();
    assert_eq!(
        err.to_string(),
        "policy.axigen:1: unexpected symbol near <eof>"
    );
    // A reload compiles the configured files only.
    let e = PolicyEngine::load_with(&t.cfg, &extra("Reject('now')")).unwrap();
    let o = e.run(Hook::RcptTo, input(args())).await;
    assert_eq!(reply_of(&o).lines, vec!["now"]);
    e.reload(&t.cfg).unwrap();
    assert_eq!(e.scripts(Hook::RcptTo).len(), 1);
}

/// `[scripts] axigen` policies belong to the engine: load and reload compile
/// them with the Lua files, and a broken file keeps the whole old set.
#[tokio::test]
async fn reload_recompiles_axigen_policies() {
    let mut t = T::with(Hook::Helo, "Reply('lua v1')");
    t.cfg.scripts.lib_path.push(repo("lib-lua"));
    let rule = |text: &str| {
        format!(
            "event onMailFrom {{\n\tif (is (mailFromDomain, \"spam.example\")) {{\n\t\tset (smtpAction, \"reject\");\n\t\tset (smtpExplanation, \"{text}\");\n\t}}\n}}\n"
        )
    };
    let policy = t.file("p.axigen", &rule("v1"));
    t.cfg.scripts.axigen = vec![policy.clone()];
    let e = t.engine();
    assert_eq!(
        e.sources(),
        LoadedSources {
            lua: vec![(Hook::Helo, t.dir.path().join("helo.lua"))],
            axigen: vec![policy.clone()],
        }
    );
    assert_eq!(e.sources().summary(), "1 script, 1 axigen policy");
    let mail = || {
        input(HookArguments::MailFrom {
            address: "x@spam.example".into(),
            params: BTreeMap::new(),
        })
    };
    let o = e.run(Hook::MailFrom, mail()).await;
    assert_eq!(reply_of(&o).lines, vec!["v1"], "{:?}", o.error);

    // Reload compiles the policy again (and picks up its changes).
    std::fs::write(&policy, rule("v2")).unwrap();
    e.reload(&t.cfg).unwrap();
    let o = e.run(Hook::MailFrom, mail()).await;
    assert_eq!(reply_of(&o).lines, vec!["v2"], "{:?}", o.error);

    // A broken policy and a broken Lua file: both named, nothing swapped.
    std::fs::write(&policy, "event onMailFrom {\n\tset (smtpAction\n}\n").unwrap();
    let lua = t.script(Hook::Helo, "Reply('lua v2'");
    let msg = e.reload(&t.cfg).unwrap_err().to_string();
    assert!(msg.contains(&format!("{}:3:1:", policy.display())), "{msg}");
    assert!(msg.contains(&format!("{}:1:", lua.display())), "{msg}");
    let o = e.run(Hook::MailFrom, mail()).await;
    assert_eq!(reply_of(&o).lines, vec!["v2"], "old policy still serves");
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(
        reply_of(&o).lines,
        vec!["lua v1"],
        "old script still serves"
    );
    assert!(PolicyEngine::check(&t.cfg).is_err());

    // Warnings do not fail a load; check returns them.
    std::fs::write(
        &policy,
        "event onMailFrom {\n\tset (n, \"%nothing%\");\n}\n",
    )
    .unwrap();
    t.script(Hook::Helo, "Reply('lua v2')");
    let warnings = PolicyEngine::check(&t.cfg).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    e.reload(&t.cfg).unwrap();
    assert!(e.has_hook(Hook::MailFrom));
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).lines, vec!["lua v2"]);
    // Policies removed from the config are gone after a reload.
    t.cfg.scripts.axigen.clear();
    e.reload(&t.cfg).unwrap();
    assert!(!e.has_hook(Hook::MailFrom));
    assert_eq!(e.sources().summary(), "1 script, 0 axigen policies");
}

/// scripts/API.md carries the hook table generated from `HOOKS`
/// (`BLESS_API_DOC=1` rewrites it).
#[test]
fn api_doc_has_the_hook_table() {
    let path = repo("scripts/API.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (start, end) = ("<!-- hooks: generated -->\n", "<!-- /hooks -->");
    let a = doc.find(start).expect("start marker") + start.len();
    let b = doc.find(end).expect("end marker");
    let table = reference_markdown();
    if std::env::var_os("BLESS_API_DOC").is_some() {
        let new = format!("{}{}{}", &doc[..a], table, &doc[b..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert_eq!(&doc[a..b], table, "run with BLESS_API_DOC=1 to update");
}

#[tokio::test]
async fn queue_refuses_smuggled_addresses() {
    for bad in [
        "'a@b>\\r\\nRCPT TO:<x@y'",
        "'a b@c'",
        "string.rep('a', 400) .. '@b'",
    ] {
        let t = T::with(
            Hook::Eod,
            &format!("arguments.mail:queue({bad}, 'x@y', 'default') Accept()"),
        );
        let o = t
            .engine()
            .run(Hook::Eod, mail_input(&[("x@y", "default")]))
            .await;
        assert!(o.queued.is_empty(), "{bad}");
        assert!(
            o.error.unwrap().contains("is not an envelope address"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn long_reasons_are_split() {
    let o = run1(Hook::Helo, "Reject(string.rep('é', 600))", helo()).await;
    let r = reply_of(&o);
    assert_eq!(r.lines.len(), 3);
    assert!(r.render(true).lines().all(|l| l.len() <= 512));
    assert_eq!(r.lines.concat(), "é".repeat(600));
    let o = run1(
        Hook::Helo,
        "local t = {} for i = 1, 500 do t[i] = 'x' end Reject(t)",
        helo(),
    )
    .await;
    assert_eq!(reply_of(&o).lines.len(), 64);
}

#[tokio::test]
async fn absurd_option_values_are_errors_not_panics() {
    for src in [
        "arguments.mail:queue('', 'x@y', 'default', {delay = 1e300}) Accept()",
        "arguments.mail:queue('', 'x@y', 'default', {delay = -1}) Accept()",
        "arguments.mail:getHeader('x', {index = -5})",
        "arguments.mail:getHeader('x', {index = math.maxinteger})",
        "Reject('x', {reply_codes = {code = 1e300}})",
        "Reject('x', {reply_codes = {enhanced = {5, 1e9, 1}}})",
    ] {
        let t = T::with(Hook::Eod, src);
        let o = t
            .engine()
            .run(Hook::Eod, mail_input(&[("x@y", "default")]))
            .await;
        assert_eq!(reply_of(&o).code, 451, "{src}");
        assert!(o.queued.is_empty());
    }
}

#[tokio::test]
async fn a_panicking_host_function_is_a_script_error() {
    let t = T::with(Hook::Helo, "pcall(__test_panic) Reply('after')");
    let e = t.engine();
    let o = e.run(Hook::Helo, input(helo())).await;
    assert_eq!(reply_of(&o).code, 421);
    assert!(o.error.unwrap().contains("test panic"));
    assert_eq!(e.idle_states(), 0, "the state is not reused");
}

// ------------------------------------------------- delivery Pass options

fn delivery_args() -> HookArguments {
    HookArguments::Delivery(crate::policy::DeliveryInfo {
        queue_id: "q1".into(),
        sender: "s@example.net".into(),
        recipient: "r@example.org".into(),
        transportid: "default".into(),
        attempt: 1,
        ..Default::default()
    })
}

#[tokio::test]
async fn predelivery_pass_names_the_route() {
    let o = run1(
        Hook::PreDelivery,
        r#"Pass({host = "[192.0.2.1]", port = "2525", tls = "required"})"#,
        delivery_args(),
    )
    .await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(
        o.route,
        Some(crate::policy::Route {
            host: Some("[192.0.2.1]".into()),
            port: Some(2525),
            tls: Some(crate::config::TransportTls::Required),
        })
    );
    for (src, want) in [
        (
            r#"Pass({tls = "implicit"})"#,
            "tls \"implicit\" is not a transport TLS mode",
        ),
        (r#"Pass({port = 70000})"#, "port must be 1-65535"),
        (r#"Pass({host = "a b"})"#, "is not a next hop"),
        (
            r#"Pass({bounce = {}})"#,
            "unknown option \"bounce\" in the predelivery hook",
        ),
    ] {
        let o = run1(Hook::PreDelivery, src, delivery_args()).await;
        let e = o.error.clone().unwrap_or_default();
        assert!(e.contains(want), "{src}: {e}");
        assert!(o.route.is_none());
    }
    // Stage hooks do not take route options.
    let o = run1(Hook::Helo, r#"Pass({host = "x"})"#, helo()).await;
    assert!(o
        .error
        .unwrap_or_default()
        .contains("unknown option \"host\" in the helo hook"));
}

#[tokio::test]
async fn postdelivery_pass_words_the_reports() {
    let o = run1(
        Hook::PostDelivery,
        r#"Pass({bounce = {send = true, subject = "S", from = "pm@example.org", text = "T",
                recipient_text = "{recipient}: {diagnostic}", footer = "F", attach = "headers"},
               success = {subject = "OK"}})"#,
        delivery_args(),
    )
    .await;
    assert!(o.error.is_none(), "{:?}", o.error);
    let b = o.reports.bounce.expect("bounce");
    assert_eq!(b.send, Some(true));
    assert_eq!(b.subject.as_deref(), Some("S"));
    assert_eq!(b.from.as_deref(), Some("pm@example.org"));
    assert_eq!(
        b.recipient_text.as_deref(),
        Some("{recipient}: {diagnostic}")
    );
    assert_eq!(b.attach, Some(crate::policy::AttachSource::Headers));
    assert_eq!(
        o.reports.success.and_then(|w| w.subject).as_deref(),
        Some("OK")
    );
    assert!(o.reports.delay.is_none());
    for (src, want) in [
        (
            r#"Pass({bounce = {colour = "red"}})"#,
            "unknown option bounce.\"colour\"",
        ),
        (
            r#"Pass({delay = {attach = "some"}})"#,
            "delay.attach \"some\" is not full, headers or none",
        ),
        (
            "Pass({success = {subject = \"a\\nBcc: x\"}})",
            "success.subject must be one line",
        ),
        (r#"Pass({bounce = "x"})"#, "bounce must be a table"),
    ] {
        let o = run1(Hook::PostDelivery, src, delivery_args()).await;
        let e = o.error.clone().unwrap_or_default();
        assert!(e.contains(want), "{src}: {e}");
    }
}

// ------------------------------------------------ fast paths = slow paths

/// The verdict, its rewrites and the error of one run, as text to compare.
fn verdict_of(o: &HookOutcome) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?}",
        o.verdict, o.transportid, o.route, o.reports, o.error
    )
}

#[tokio::test]
async fn verdict_options_read_only_when_present_same_as_all() {
    // A metatable (even an empty one) makes parse read every option with
    // `get`, as before the fast path: both must give the same outcome.
    // `O{...}` is the options table.
    let cases: &[(Hook, &str)] = &[
        (Hook::RcptTo, "Pass(O{transportid = 'lmtp'})"),
        (Hook::RcptTo, "Pass(O{transportid = 'nope'})"),
        (Hook::RcptTo, "Pass(O{})"),
        (Hook::RcptTo, "Pass(O{bogus = 1})"),
        (Hook::RcptTo, "Pass(O{[1] = 'x'})"),
        (
            Hook::RcptTo,
            "Accept(O{recipient = 'x@example.org', transportid = 'lmtp'})",
        ),
        (Hook::RcptTo, "Accept(O{recipient = 'bad addr'})"),
        (
            Hook::RcptTo,
            "Reject('no', O{disconnect = true, reply_codes = {code = 554, enhanced = {5, 7, 1}}})",
        ),
        (
            Hook::RcptTo,
            "Defer('later', O{reply_codes = {code = 'x'}})",
        ),
        (Hook::RcptTo, "Reply('hi', O{next = true})"),
        (Hook::Helo, "Accept(O{host = 'renamed.example'})"),
        (Hook::Helo, "Accept(O{host = ''})"),
        (Hook::MailFrom, "Accept(O{sender = ''})"),
        (Hook::MailFrom, "Pass(O{next = 'yes'})"),
        (Hook::Proxy, "Pass(O{command = 'NOOP', next = true})"),
        (Hook::Proxy, "Pass(O{command = 'A\\r\\nB'})"),
        (
            Hook::Eod,
            "Accept(O{reason = 'ok', reply_codes = {code = 250}})",
        ),
        (
            Hook::PreDelivery,
            "Pass(O{host = '[192.0.2.1]', port = 2525, tls = 'none'})",
        ),
        (Hook::PreDelivery, "Pass(O{port = 0})"),
        (Hook::PostDelivery, "Pass(O{bounce = {subject = 'x'}})"),
    ];
    for (hook, call) in cases {
        let args = || match hook {
            Hook::Helo => helo(),
            Hook::Proxy => proxy("XCMD"),
            Hook::Eod => HookArguments::Mail {
                message: Bytes::from_static(MSG),
                headers_only: false,
            },
            Hook::PreDelivery | Hook::PostDelivery => {
                HookArguments::Delivery(DeliveryInfo::default())
            }
            _ => HookArguments::None,
        };
        // Same script path both times: error messages name it. `O`
        // gives the options table an (empty) metatable the second time.
        let mut t = T::with(*hook, &format!("local function O(t) return t end {call}"));
        let plain = t.engine().run(*hook, input(args())).await;
        let with_mt = format!("local function O(t) return setmetatable(t, {{}}) end {call}");
        t.script(*hook, &with_mt);
        let slow = t.engine().run(*hook, input(args())).await;
        assert_eq!(verdict_of(&plain), verdict_of(&slow), "{call} vs {with_mt}");
        if call.contains("'lmtp'") {
            assert_eq!(plain.transportid.as_deref(), Some("lmtp"), "{call}");
        }
    }
}

#[tokio::test]
async fn queue_options_read_only_when_present_same_as_all() {
    let cases = [
        "{metadata = {policy = 'bench', n = 1}}",
        "{}",
        "{hold = true, jobid = 'j1', delay = 30, overquota = 'tmpreject'}",
        "{hold = 0, dsn = {notify = 'NEVER', ret = 'HDRS', envid = 'e1', orcpt = 'rfc822;x@y'}}",
        "{delay = -1}",
        "{overquota = 'maybe'}",
        "{metadata = {x = {}}}",
        "{jobid = {}}",
        "{[1] = true, other = 'ignored'}",
    ];
    // Same script path both times: error messages name it.
    let mut t = T::new();
    let mut engine = |opts: &str| {
        t.script(
            Hook::Eod,
            &format!(
                "local r = arguments.mail:queue(transaction.sender, 'bob@example.org', 'default', {opts})\n\
                 Accept({{reason = r.transaction}})"
            ),
        );
        t.engine()
    };
    let summary = |o: &HookOutcome| {
        let q: Vec<String> = o
            .queued
            .iter()
            .map(|q| {
                format!(
                    "{} {} {} {:?} {} {:?} {:?} {:?} {:?} {}",
                    q.sender,
                    q.recipient,
                    q.transportid,
                    q.metadata,
                    q.hold,
                    q.jobid,
                    q.delay,
                    q.dsn,
                    q.overquota,
                    q.message.len()
                )
            })
            .collect();
        format!("{} {q:?}", verdict_of(o))
    };
    for opts in cases {
        let with_mt = format!("setmetatable({opts}, {{}})");
        let input = || mail_input(&[("bob@example.org", "default")]);
        let fast = engine(opts);
        let fast = fast.run(Hook::Eod, input()).await;
        let slow = engine(&with_mt);
        let slow = slow.run(Hook::Eod, input()).await;
        assert_eq!(summary(&fast), summary(&slow), "{opts}");
        if opts.contains("bench") {
            assert_eq!(fast.queued[0].metadata["policy"], "bench");
        }
    }
}

#[tokio::test]
async fn envelope_tables_are_built_again_after_being_cleared() {
    // The run state lends its data to each build and gets it back: a
    // second read (after the script set the name to nil) sees it again.
    let src = r#"
        local t1, a1, c1, x1 = transaction.id, #arguments.mail:getHeaders("X-Spam"),
          connection.remoteip, context.n
        transaction, arguments, connection, context = nil, nil, nil, nil
        assert(transaction.id == t1 and transaction.recipients[1].recipient == "bob@example.org")
        assert(#arguments.mail:getHeaders("X-Spam") == a1)
        assert(connection.remoteip == c1 and connection.remoteip == "192.0.2.7")
        assert(context.n == x1 and x1 == 7)
        context.n = 8
        Accept()
    "#;
    let mut i = mail_input(&[("bob@example.org", "default")]);
    i.context = json!({"n": 7});
    let o = T::with(Hook::Eod, src).engine().run(Hook::Eod, i).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert!(matches!(o.verdict, HookVerdict::Accept { .. }));
    assert_eq!(o.context, json!({"n": 8}));
}
