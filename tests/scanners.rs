//! ScanClam and ScanRspamd against clamd and rspamd from Debian, started by
//! the tests (tests/scanners_support): clamd's database holds only a hash
//! signature of the test attachment (no freshclam), rspamd only regexp
//! rules on test subjects. The shipped example scripts/examples/scanners.lua
//! rejects the virus naming the signature, rejects rspamd's "reject",
//! adds rspamd's verdict as headers (seen in the relayed message) and
//! queues a suspicious message on hold; a scanner that is down defers (451
//! 4.7.0) with a log line and a metric; clamav-milter in front of the same
//! clamd rejects the infected message at end of message.

mod common;
mod scanners_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use scanners_support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PAYLOAD: &[u8] = b"SLUICE TEST PAYLOAD: not a virus, a test signature\n";

fn md5_hex(data: &[u8]) -> String {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.md5(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `test.hdb`: the hash signature of the test attachment.
fn signatures() -> Vec<(&'static str, String)> {
    vec![(
        "test.hdb",
        format!(
            "{}:{}:Sluice.Test.Attachment\n",
            md5_hex(PAYLOAD),
            PAYLOAD.len()
        ),
    )]
}

fn infected(subject: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PAYLOAD);
    format!(
        "From: alice@sender.com\r\nTo: bob@example.org\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"payload.bin\"\r\n\r\n{b64}\r\n--b1--\r\n"
    )
}

fn plain(subject: &str) -> String {
    format!(
        "From: alice@sender.com\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\r\nHello Bob.\r\n"
    )
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/examples/scanners.lua")
}

fn config(clamd: &str, rspamd_port: u16, eod: &Path, sink: &Sink, extra: &str) -> String {
    format!(
        "[relay]\ndomains = [\"example.org\"]\n[scripts]\neod = {eod:?}\n[scanners.clamd]\naddress = \"{clamd}\"\ntimeout = \"10s\"\n[scanners.rspamd]\nurl = \"http://127.0.0.1:{rspamd_port}\"\ntimeout = \"10s\"\n{extra}\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
        sink.addr
    )
}

async fn start_both(dir: &Path) -> (Clamd, Rspamd) {
    let p = dir.to_path_buf();
    let clamd = tokio::task::spawn_blocking({
        let p = p.clone();
        move || start_clamd(&p, &signatures())
    });
    let rspamd = tokio::task::spawn_blocking(move || start_rspamd(&p));
    (clamd.await.unwrap(), rspamd.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_script_rejects_viruses_tags_and_quarantines_spam() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (clamd, rspamd) = start_both(dir.path()).await;
    let sink = Sink::start(false, false).await;
    let addr = format!("unix:{}", clamd.socket.display());
    let srv = TestServer::start(&config(&addr, rspamd.http_port, &example(), &sink, "")).await;
    let mut c = srv.client().await;
    c.greet().await;
    // The virus: rejected, the signature named.
    let r = c
        .send_message(
            "alice@sender.com",
            &["bob@example.org"],
            &infected("report"),
            "554 5.7.1",
        )
        .await;
    let text = format!("{r:?}");
    assert!(text.contains("Sluice.Test.Attachment"), "{text}");
    // rspamd's reject.
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("sluice-spam-test"),
        "554 5.7.1",
    )
    .await;
    assert!(srv.store().list_entries().unwrap().is_empty());
    // Score 8 (≥ 6): queued on hold, tagged.
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("sluice-header-test"),
        "250",
    )
    .await;
    let held = srv.store().list_entries().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(format!("{:?}", held[0].state), "Held");
    // Clean: relayed with rspamd's verdict in headers.
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("hello"),
        "250",
    )
    .await;
    let got = sink.wait_for(1).await;
    let t = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(t.contains("Subject: hello"), "{t}");
    assert!(t.contains("X-Spam-Score: 0.00 / 15.00"), "{t}");
    assert!(t.contains("X-Spam-Action: no action"), "{t}");
    assert!(!t.contains("X-Spam: Yes"), "{t}");
    // History: the rejections hold the replies sent.
    assert!(
        wait_until(|| srv
            .store()
            .history_all()
            .unwrap()
            .iter()
            .any(|h| format!("{:?}", h.action) == "Reject"
                && h.reason.contains("Sluice.Test.Attachment")))
        .await
    );
    drop(clamd);
    drop(rspamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_down_defer_and_limits_are_errors() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(false, false).await;
    // Nothing listens on either.
    let missing = format!("unix:{}", dir.path().join("none.sock").display());
    let srv = TestServer::start(&config(&missing, free_port(), &example(), &sink, "")).await;
    let before = sluice::metrics::sample(
        &sluice::metrics::render(None),
        "sluice_scanner_errors_total{scanner=\"clamd\",kind=\"connection\"}",
    )
    .unwrap_or(0.0);
    let mut c = srv.client().await;
    c.greet().await;
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("hello"),
        "451 4.7.0",
    )
    .await;
    assert!(srv.store().list_entries().unwrap().is_empty());
    let after = sluice::metrics::sample(
        &sluice::metrics::render(None),
        "sluice_scanner_errors_total{scanner=\"clamd\",kind=\"connection\"}",
    )
    .unwrap_or(0.0);
    assert!(after > before, "clamd error not counted");

    // A real clamd, but a size cap below the message: an error, not "clean";
    // and rspamd down after clamd passed: ScanRspamd's error.
    let clamd = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || start_clamd(&p, &signatures())
    })
    .await
    .unwrap();
    let script = dir.path().join("eod.lua");
    std::fs::write(
        &script,
        "local v, e = ScanClam({max_size = 64})\n\
         if v ~= nil or not e:find('exceeds') then Reject('no limit error: ' .. tostring(e)) end\n\
         local ok = ScanClam()\n\
         if ok == nil or #ok ~= 0 then Reject('clean message not clean') end\n\
         local s, se = ScanRspamd()\n\
         if s ~= nil then Reject('rspamd answered?') end\n\
         Defer('rspamd: ' .. se)\n",
    )
    .unwrap();
    let addr = format!("unix:{}", clamd.socket.display());
    let srv2 = TestServer::start(&config(&addr, free_port(), &script, &sink, "")).await;
    let mut c = srv2.client().await;
    c.greet().await;
    let r = c
        .send_message(
            "alice@sender.com",
            &["bob@example.org"],
            &plain("hello"),
            "451",
        )
        .await;
    assert!(format!("{r:?}").contains("rspamd:"), "{r:?}");
}

fn start_clamav_milter(dir: &Path, clamd: &Clamd) -> (Daemon, u16) {
    let bin = binary("/usr/sbin/clamav-milter", "clamav-milter");
    let port = free_port();
    let d = dir.join("clamav-milter");
    std::fs::create_dir_all(&d).unwrap();
    let conf = format!(
        "MilterSocket inet:{port}@127.0.0.1\nClamdSocket unix:{sock}\nForeground yes\nUser root\nPidFile {d}/milter.pid\nLogFile {d}/milter.log\nLogVerbose yes\nOnInfected Reject\nOnClean Accept\nOnFail Defer\nRejectMsg Virus found: %v\nAddHeader Replace\n",
        sock = clamd.socket.display(),
        d = d.display()
    );
    let cfg = d.join("clamav-milter.conf");
    std::fs::write(&cfg, conf).unwrap();
    let mut daemon = Daemon::spawn(
        "clamav-milter",
        Command::new(bin).arg("-c").arg(&cfg),
        d.join("out.log"),
    );
    daemon.wait_tcp(port, 30);
    (daemon, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamav_milter_rejects_at_end_of_message() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let clamd = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || start_clamd(&p, &signatures())
    })
    .await
    .unwrap();
    let (milter, port) = start_clamav_milter(dir.path(), &clamd);
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&format!(
        "[relay]\ndomains = [\"example.org\"]\n[[milter]]\nid = \"clamav\"\naddress = \"127.0.0.1:{port}\"\ntimeout = \"20s\"\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
        sink.addr
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message(
            "alice@sender.com",
            &["bob@example.org"],
            &infected("report"),
            "5",
        )
        .await;
    let text = format!("{r:?}");
    assert!(
        text.contains("Sluice.Test.Attachment"),
        "{text}\n{}",
        std::fs::read_to_string(dir.path().join("clamav-milter/milter.log")).unwrap_or_default()
    );
    assert!(srv.store().list_entries().unwrap().is_empty());
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("clean"),
        "250",
    )
    .await;
    let got = sink.wait_for(1).await;
    let t = String::from_utf8_lossy(&got[0].data).to_string();
    assert!(t.contains("X-Virus-Status: Clean"), "{t}");
    drop(milter);
}

/// Axigen's addFilter / executeFilters: a filter named after a configured
/// scanner scans at end of data (selected in onRcptTo), and one named after
/// a `[[milter]]` resolves (addFilterResult "ok"); an unknown name is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axigen_filters_map_onto_scanners_and_milters() {
    let _g = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let clamd = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || start_clamd(&p, &signatures())
    })
    .await
    .unwrap();
    let policy = dir.path().join("filters.axigen");
    std::fs::write(
        &policy,
        "event onRcptTo {\n\
         \tset (filterName, \"av\");\n\
         \tset (filterType, \"milter\");\n\
         \tset (filterAddress, \"clamav\");\n\
         \tcall (addFilter);\n\
         \tif (not (is (addFilterResult, \"ok\"))) {\n\
         \t\tset (smtpAction, \"tmpreject\");\n\
         \t\tset (smtpExplanation, \"av: %addFilterExplanation%\");\n\
         \t}\n\
         \tset (filterName, \"spam\");\n\
         \tset (filterAddress, \"spamd\");\n\
         \tcall (addFilter);\n\
         \tif (not (is (addFilterResult, \"ok\"))) {\n\
         \t\tset (smtpAction, \"tmpreject\");\n\
         \t\tset (smtpExplanation, \"spamd: %addFilterExplanation%\");\n\
         \t}\n\
         \tset (filterName, \"nosuch\");\n\
         \tset (filterAddress, \"inet:127.0.0.1:1\");\n\
         \tcall (addFilter);\n\
         \tif (is (addFilterResult, \"ok\")) {\n\
         \t\tset (smtpAction, \"reject\");\n\
         \t\tset (smtpExplanation, \"unknown filter resolved\");\n\
         \t}\n\
         \tset (filterNamePattern, \"*\");\n\
         \tcall (executeFilters);\n\
         }\n",
    )
    .unwrap();
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/lib-lua");
    let sink = Sink::start(false, false).await;
    let srv = TestServer::start(&format!(
        "[relay]\ndomains = [\"example.org\"]\n[scripts]\nlib_path = [{lib:?}]\naxigen = [{policy:?}]\n[scanners.clamd]\naddress = \"unix:{}\"\n[[milter]]\nid = \"spamd\"\naddress = \"127.0.0.1:{}\"\non_error = \"accept\"\n[transport.default]\nhost = \"{}\"\ntls = \"none\"\n",
        clamd.socket.display(),
        free_port(),
        sink.addr
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    let r = c
        .send_message(
            "alice@sender.com",
            &["bob@example.org"],
            &infected("report"),
            "550",
        )
        .await;
    assert!(
        format!("{r:?}").contains("Virus found: Sluice.Test.Attachment"),
        "{r:?}"
    );
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("clean"),
        "250",
    )
    .await;
    let got = sink.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: clean"));
    // clamd gone: the selected scan cannot run, the message is deferred.
    drop(clamd);
    c.send_message(
        "alice@sender.com",
        &["bob@example.org"],
        &plain("clean again"),
        "451",
    )
    .await;
}
