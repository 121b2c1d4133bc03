//! The "callout" recipient source against real mailstores on loopback,
//! each started by the test from a config in its temp dir and stopped by
//! it: Dovecot's LMTP (users in a passwd-file) and Postfix's smtpd with
//! `relay_recipient_maps`. Known users are accepted, unknown ones get
//! Sluice's 550 5.1.1 in the dialogue, a mailstore that is down makes a
//! tempfail (451 4.4.3, or acceptance with `on_tempfail = "accept"`), a
//! cached answer makes no probe, and `sluice check` names the unreachable
//! next hop. One test measures RCPT validation throughput, cold and warm.
//!
//! A missing server binary fails the test (the packages are in .ci/run).
//! The tests run one at a time: they read process-wide metrics.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Wait (bounded) until something listens on the port.
fn wait_listening(port: u16, what: &str, log: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on 127.0.0.1:{port}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The servers run as their own unprivileged users (dovecot, postfix),
/// which must be able to read their files in the temp dir.
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn binary(path: &'static str, package: &str) -> &'static str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install {package} (see .ci/run)"
    );
    path
}

/// A private Dovecot LMTP server: `dovecot -F` as a child process.
struct Dovecot {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Dovecot {
    fn start(dir: &Path, users: &[String]) -> Dovecot {
        let bin = binary("/usr/sbin/dovecot", "dovecot-core");
        binary("/usr/lib/dovecot/lmtp", "dovecot-lmtpd");
        open_up(dir);
        let port = free_port();
        let d = dir.display();
        let passwd: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}secret:1000:1000::{d}/home/{u}\n"))
            .collect();
        std::fs::write(dir.join("users"), passwd).unwrap();
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
                 protocols = lmtp\nlisten = 127.0.0.1\nssl = no\n\
                 mail_location = maildir:{d}/mail/%u\n\
                 passdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let log = dir.join("dovecot.log");
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dovecot.stderr")).unwrap())
            .spawn()
            .expect("dovecot must be installed (dovecot-core, dovecot-lmtpd; see .ci/run)");
        let dc = Dovecot {
            child: Some(child),
            port,
            log,
        };
        wait_listening(port, "dovecot", &dc.log);
        dc
    }

    /// Connections the server saw (one log line each).
    fn connections(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Info: Connect from 127.0.0.1")
            .count()
    }

    /// SIGTERM, then wait (bounded) for the master; it takes its children.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private Postfix instance: its own config, queue and data directories,
/// only an smtpd (and the services it calls) in master.cf.
struct Postfix {
    conf: PathBuf,
    port: u16,
    running: bool,
}

impl Postfix {
    fn start(dir: &Path, recipients: &[&str]) -> Postfix {
        let bin = binary("/usr/sbin/postfix", "postfix");
        open_up(dir);
        let port = free_port();
        let d = dir.display();
        let conf = dir.join("conf");
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let st = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(st.success(), "chown postfix (is postfix installed?)");
        let map: String = recipients.iter().map(|r| format!("{r} ok\n")).collect();
        std::fs::write(conf.join("relay_recipients"), map).unwrap();
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
                 mail_owner = postfix\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 myhostname = postfix.test.example\nmydestination =\nlocal_recipient_maps =\n\
                 alias_maps =\nalias_database =\nrelay_domains = example.org\n\
                 relay_recipient_maps = texthash:{d}/conf/relay_recipients\n\
                 smtpd_relay_restrictions =\nsmtpd_recipient_restrictions = reject_unauth_destination\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\nsyslog_name = postfix-test\n"
            ),
        )
        .unwrap();
        // smtpd resolves addresses through trivial-rewrite, opens a queue
        // file through cleanup at MAIL, and asks anvil and proxymap.
        std::fs::write(
            conf.join("master.cf"),
            format!(
                "{port} inet n - n - - smtpd\n\
                 rewrite unix - - n - - trivial-rewrite\n\
                 cleanup unix n - n - 0 cleanup\n\
                 proxymap unix - - n - - proxymap\n\
                 anvil unix - - n - 1 anvil\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let out = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .output()
            .expect("postfix must be installed (see .ci/run)");
        let pf = Postfix {
            conf,
            port,
            running: true,
        };
        assert!(
            out.status.success(),
            "postfix start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
        );
        wait_listening(port, "postfix", &dir.join("maillog"));
        pf
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let _ = Command::new("/usr/sbin/postfix")
                .arg("-c")
                .arg(&self.conf)
                .arg("stop")
                .output();
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(port: u16, kind: &str, on_tempfail: &str) -> String {
    format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         [limits]\nrecipients = 1000\n\
         [recipients]\nsources = [\"callout\"]\non_tempfail = {on_tempfail:?}\ncallout_timeout = \"5s\"\n\
         [transport.default]\nhost = \"127.0.0.1:{port}\"\nkind = {kind:?}\ntls = \"none\"\nconnect_timeout = \"2s\"\n"
    )
}

fn metric(series: &str) -> f64 {
    sluice::metrics::sample(&sluice::metrics::render(None), series).unwrap_or(0.0)
}

fn probes() -> [f64; 3] {
    ["exists", "unknown", "tempfail"]
        .map(|r| metric(&format!("sluice_recipient_probes_total{{result=\"{r}\"}}")))
}

async fn rcpt<S>(c: &mut Client<S>, to: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    format!("{} {}", r.code, r.text)
}

async fn sluice_check(dir: &Path, cfg_text: &str) -> (bool, String) {
    let cfg = dir.join("check.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check")
        .arg("-c")
        .arg(&cfg)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("sluice check timed out")
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_lmtp_callout() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut dovecot = Dovecot::start(
        dir.path(),
        &["bob@example.org".into(), "carol@example.org".into()],
    );
    let mut srv = TestServer::start(&config(dovecot.port, "lmtp", "defer")).await;
    // The readiness check connected once.
    let seen0 = dovecot.connections();
    let (p0, conns0) = (probes(), metric("sluice_recipient_probe_connections_total"));
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert_eq!(
        rcpt(&mut c, "bob@example.org").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        rcpt(&mut c, "nobody@example.org").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    assert!(rcpt(&mut c, "Carol@Example.org").await.starts_with("250"));
    // postmaster is never probed; a relayed recipient is not validated.
    assert!(rcpt(&mut c, "postmaster@example.org")
        .await
        .starts_with("250"));
    assert!(rcpt(&mut c, "x@elsewhere.example").await.starts_with("250"));
    let p1 = probes();
    assert_eq!(
        [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]],
        [2.0, 1.0, 0.0]
    );
    // The three probes went over one connection (RSET between them).
    assert_eq!(
        metric("sluice_recipient_probe_connections_total") - conns0,
        1.0
    );
    assert_eq!(dovecot.connections() - seen0, 1);

    // Asked again: the cache answers, the mailstore is not asked.
    let cache0 = metric("sluice_recipient_checks_total{source=\"cache\",verdict=\"exists\"}");
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "nobody@example.org")
        .await
        .starts_with("550 5.1.1"));
    assert_eq!(probes(), p1);
    assert_eq!(
        metric("sluice_recipient_checks_total{source=\"cache\",verdict=\"exists\"}") - cache0,
        1.0
    );

    // `sluice check` reaches the mailstore.
    let cli = format!(
        "data_dir = {:?}\n{}",
        dir.path().join("cli-var"),
        config(dovecot.port, "lmtp", "defer")
    );
    let (ok, out) = sluice_check(dir.path(), &cli).await;
    assert!(ok && out.contains("config OK"), "{out}");

    // The mailstore goes down: a new address is a tempfail (the pooled
    // connection is found dead, a new one is refused); cached ones stand.
    dovecot.stop();
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "dave@example.org").await,
        "451 4.4.3 <dave@example.org>: Recipient address verification failed, try again later"
    );
    assert_eq!(probes()[2] - p1[2], 1.0);
    // Tempfails are not cached: asked again, probed again.
    assert!(rcpt(&mut c, "dave@example.org")
        .await
        .starts_with("451 4.4.3"));
    assert_eq!(probes()[2] - p1[2], 2.0);
    let (ok, out) = sluice_check(dir.path(), &cli).await;
    assert!(
        !ok && out.contains("[recipients] callout")
            && out.contains(&format!("127.0.0.1:{}", dovecot.port)),
        "{out}"
    );
    c.cmd("QUIT", "221").await;
    srv.stop().await;

    // With on_tempfail = "accept" the same failure lets the recipient in.
    let mut srv = TestServer::start(&config(dovecot.port, "lmtp", "accept")).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "dave@example.org").await.starts_with("250"));
    c.cmd("QUIT", "221").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relay_recipient_maps_callout() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut postfix = Postfix::start(dir.path(), &["bob@example.org", "carol@example.org"]);
    let mut srv = TestServer::start(&config(postfix.port, "smtp", "defer")).await;
    let p0 = probes();
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert_eq!(
        rcpt(&mut c, "bob@example.org").await,
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        rcpt(&mut c, "nobody@example.org").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    assert!(rcpt(&mut c, "carol@example.org").await.starts_with("250"));
    let p1 = probes();
    assert_eq!(
        [p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]],
        [2.0, 1.0, 0.0]
    );
    // Postfix refused the probe itself, from its relay recipient table.
    let log = std::fs::read_to_string(dir.path().join("maillog")).unwrap_or_default();
    assert!(
        log.contains("<nobody@example.org>: Recipient address rejected: User unknown in relay recipient table"),
        "{log}"
    );
    // Never DATA: no message reached Postfix's queue.
    assert!(!log.contains("message-id="), "{log}");
    c.cmd("QUIT", "221").await;
    srv.stop().await;
    postfix.stop();
}

/// RCPT validation throughput through Sluice against the Dovecot callout:
/// cold (every address new: one probe each) and warm (every address
/// cached). Debug build, 2 shared cores: the figures are a floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callout_throughput() {
    const SESSIONS: usize = 8;
    const PER_SESSION: usize = 100;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..SESSIONS * PER_SESSION)
        .map(|i| format!("u{i}@example.org"))
        .collect();
    let mut dovecot = Dovecot::start(dir.path(), &users);
    let mut srv = TestServer::start(&config(dovecot.port, "lmtp", "defer")).await;
    let addr = srv.addr();
    let p0 = probes();
    let mut figures = Vec::new();
    for round in ["cold", "warm"] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..SESSIONS {
            let users = users[s * PER_SESSION..(s + 1) * PER_SESSION].to_vec();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.greet().await;
                c.cmd("MAIL FROM:<a@sender.example>", "250").await;
                let mut lat = Vec::new();
                for u in &users {
                    let t = Instant::now();
                    let r = rcpt(&mut c, u).await;
                    lat.push(t.elapsed());
                    assert!(r.starts_with("250"), "{u}: {r}");
                }
                c.cmd("QUIT", "221").await;
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort();
        let p99 = lat[lat.len() * 99 / 100];
        let rate = lat.len() as f64 / secs;
        println!(
            "callout {round}: {} RCPT in {secs:.2}s over {SESSIONS} sessions = {rate:.0} RCPT/s, p50 {:.2} ms, p99 {:.2} ms (debug build)",
            lat.len(),
            lat[lat.len() / 2].as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        figures.push(rate);
    }
    let p1 = probes();
    // Cold made one probe per address; warm made none.
    assert_eq!(p1[0] - p0[0], (SESSIONS * PER_SESSION) as f64);
    assert!(figures[1] > figures[0], "{figures:?}");
    // At most connections_per_destination (10) connections to the mailstore.
    // (and the readiness check's one).
    assert!(dovecot.connections() <= 11, "{}", dovecot.connections());
    srv.stop().await;
    dovecot.stop();
}
