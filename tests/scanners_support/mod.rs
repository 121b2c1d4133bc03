//! Real content-scanning daemons from Debian, each started by a test in its
//! own temp dir with a local config (no network, no freshclam, nothing on
//! the default ports) and killed when the guard drops. A missing binary
//! fails the test: the packages are in .ci/run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn binary(path: &'static str, package: &str) -> &'static str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install {package} (see .ci/run)"
    );
    path
}

/// A child daemon; killed (and reaped) on drop.
pub struct Daemon {
    pub name: &'static str,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        Daemon {
            name,
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until `ready` holds, failing with the daemon's log.
    pub fn wait(&mut self, what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if ready() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "{} exited ({st}) before {what}; its log:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} not ready ({what}) after {secs}s; its log:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn wait_tcp(&mut self, port: u16, secs: u64) {
        self.wait(&format!("listening on {port}"), secs, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn wait_unix(&mut self, path: &Path, secs: u64) {
        let p = path.to_path_buf();
        self.wait(&format!("listening on {}", path.display()), secs, || {
            std::os::unix::net::UnixStream::connect(&p).is_ok()
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first so forked workers go with the parent.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let until = Instant::now() + Duration::from_secs(5);
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// rspamd with a config from scratch: only the regexp module, two rules on
/// test subjects (`sluice-spam-test` scores 20 → reject;
/// `sluice-header-test` scores 8 → add header), no DNS, no Redis.
pub struct Rspamd {
    pub daemon: Daemon,
    /// The normal worker (HTTP /checkv2).
    pub http_port: u16,
    /// The proxy worker in milter mode.
    pub milter_port: u16,
}

pub fn start_rspamd(dir: &Path) -> Rspamd {
    let bin = binary("/usr/bin/rspamd", "rspamd");
    let http_port = free_port();
    let milter_port = free_port();
    let d = dir.join("rspamd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tld.dat"), "org\nnet\ncom\nexample\n").unwrap();
    let conf = format!(
        r#"options {{
  pidfile = "{d}/rspamd.pid";
  dns {{ nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }}
  filters = "regexp";
  hs_cache_dir = "{d}";
  url_tld = "{d}/tld.dat";
  tempdir = "{d}";
}}
logging {{ type = "console"; level = "info"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{http_port}"; count = 1; }}
worker "rspamd_proxy" {{
  bind_socket = "127.0.0.1:{milter_port}";
  count = 1;
  milter = yes;
  timeout = 30s;
  upstream "local" {{ default = yes; self_scan = yes; }}
}}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
regexp {{
  SLUICE_TEST_SPAM {{ re = "Subject=/sluice-spam-test/H"; score = 20.0; description = "test spam subject"; }}
  SLUICE_TEST_HEADER {{ re = "Subject=/sluice-header-test/H"; score = 8.0; description = "test header subject"; }}
}}
"#,
        d = d.display()
    );
    let cfg = d.join("rspamd.conf");
    std::fs::write(&cfg, conf).unwrap();
    let mut daemon = Daemon::spawn(
        "rspamd",
        Command::new(bin)
            .args(["-f", "-i", "-u", "root", "-g", "root", "-c"])
            .arg(&cfg),
        d.join("rspamd.log"),
    );
    daemon.wait_tcp(http_port, 60);
    daemon.wait_tcp(milter_port, 60);
    // The workers answer once the regexp database is loaded.
    daemon.wait("hyperscan ready", 60, || {
        std::fs::read_to_string(d.join("rspamd.log"))
            .map(|l| l.matches("has been loaded").count() >= 2 || l.contains("hyperscan is not"))
            .unwrap_or(false)
    });
    Rspamd {
        daemon,
        http_port,
        milter_port,
    }
}

/// clamd with a database holding only the given signature files (name,
/// contents), on a unix socket in the temp dir; no freshclam.
pub struct Clamd {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

pub fn start_clamd(dir: &Path, sigs: &[(&str, String)]) -> Clamd {
    let bin = binary("/usr/sbin/clamd", "clamav-daemon");
    let d = dir.join("clamd");
    let db = d.join("db");
    std::fs::create_dir_all(&db).unwrap();
    for (name, body) in sigs {
        std::fs::write(db.join(name), body).unwrap();
    }
    let socket = d.join("clamd.sock");
    let conf = format!(
        "Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {db}\nPidFile {d}/clamd.pid\nTemporaryDirectory {d}\nLogFile {d}/clamd.log\nLogVerbose yes\nUser root\nStreamMaxLength 10M\nMaxThreads 4\nSelfCheck 0\nOfficialDatabaseOnly no\nBytecode no\n",
        sock = socket.display(),
        db = db.display(),
        d = d.display()
    );
    let cfg = d.join("clamd.conf");
    std::fs::write(&cfg, conf).unwrap();
    let mut daemon = Daemon::spawn(
        "clamd",
        Command::new(bin).arg("-c").arg(&cfg),
        d.join("clamd.out"),
    );
    daemon.wait_unix(&socket, 90);
    Clamd {
        daemon,
        socket,
        dir: d,
    }
}
