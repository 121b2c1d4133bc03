//! The "ldap" and "sql" recipient sources against real servers on
//! loopback, started by each test in its temp dir (OpenLDAP's slapd with a
//! mdb database, PostgreSQL by initdb + pg_ctl), through the real daemon:
//! existing recipients (by the configured filter / query), unknown ones
//! (550 5.1.1), injection attempts that must not widen the look-up, the
//! rewrite to the address to deliver to (what is queued), the server
//! stopped (451 4.4.3) and restarted (works again), `sluice check` naming
//! the failure, `ldap.search` / `sql.query` from a script, and a cold-cache
//! RCPT rate (a debug build: the figure is a floor, not a benchmark).
//!
//! The server binaries come from Debian's slapd, ldap-utils and postgresql
//! packages (.ci/run installs them); a missing binary fails the test.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The binary, from PATH or the Debian locations; a missing one fails the
/// test (it must not pass by skipping).
fn binary(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(
        ["/usr/sbin", "/usr/bin", "/usr/lib/postgresql/15/bin"]
            .iter()
            .map(PathBuf::from),
    );
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(rd.flatten().map(|e| e.path().join("bin")));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed (apt-get install slapd ldap-utils postgresql)")
        })
}

async fn run(cmd: &mut Command, what: &str) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no end within 60s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {}\n{text}", out.status);
    text
}

async fn wait_port(port: u16, up: bool) {
    let t0 = Instant::now();
    loop {
        let ok = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ok == up {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "port {port} not {} within 20s",
            if up { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rcpt(c: &mut Client<tokio::net::TcpStream>, to: &str) -> String {
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes()).await;
    let r = c.reply().await;
    format!("{} {}", r.code, r.text)
}

/// `n` RCPTs of `to` (the cache off: each asks the source), in
/// transactions of 50: RCPT/s and the 99th percentile.
async fn rcpt_rate(c: &mut Client<tokio::net::TcpStream>, to: &str, n: usize) -> (f64, Duration) {
    let mut times = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        if i % 50 == 0 {
            c.cmd("RSET", "250").await;
            c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        }
        let t = Instant::now();
        let r = rcpt(c, to).await;
        times.push(t.elapsed());
        assert!(r.starts_with("250"), "{r}");
    }
    let total = t0.elapsed();
    times.sort();
    (n as f64 / total.as_secs_f64(), times[n * 99 / 100])
}

/// Queue the message of one transaction; its recipients as queued.
async fn queued(srv: &TestServer, c: &mut Client<tokio::net::TcpStream>) -> Vec<String> {
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: v\r\n\r\nhi\r\n.\r\n").await;
    let r = c.expect("250").await;
    let id = r.text.rsplit(' ').next().unwrap().to_string();
    let e = srv.store().get_entry(&id).unwrap().unwrap();
    let mut got: Vec<String> = e.recipients.iter().map(|r| r.recipient.clone()).collect();
    got.sort();
    got
}

async fn sluice_check(dir: &Path, cfg_text: &str) -> (bool, String) {
    let cfg = dir.join("check.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("check")
            .arg("-c")
            .arg(&cfg)
            .output(),
    )
    .await
    .expect("sluice check within 60s")
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

fn base_config(sources: &str, extra: &str) -> String {
    format!(
        "[queue]\ndeliver = false\n[relay]\ndomains = [\"example.org\"]\n\
         [recipients]\nsources = [{sources:?}]\npositive_ttl = \"0s\"\nnegative_ttl = \"0s\"\n\
         on_tempfail = \"defer\"\n{extra}"
    )
}

// ---------------------------------------------------------------- LDAP

const LDIF: &str = "\
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob Example
sn: Example
mail: bob@example.org

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: carol
cn: Carol Example
sn: Example
mail: carol@example.org
mailLocalAddress: c.alias@example.org

dn: uid=sales,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: sales
cn: Sales
sn: Sales
mail: sales@example.org
mailRoutingAddress: dave@example.org
";

/// slapd on 127.0.0.1:port with its config and database in `dir`; killed
/// when dropped.
struct Slapd {
    dir: PathBuf,
    port: u16,
    /// ldaps:// (with the certificate `start_tls` was given).
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl Slapd {
    async fn start(dir: &Path) -> Slapd {
        Slapd::start_tls(dir, None).await
    }

    /// With `tls` (certificate, key): StartTLS on the ldap:// port and an
    /// ldaps:// port.
    async fn start_tls(dir: &Path, tls: Option<(&Path, &Path)>) -> Slapd {
        let tls_conf = match tls {
            Some((cert, key)) => format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let dir = dir.join("slapd");
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(
            dir.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include /etc/ldap/schema/misc.schema\n\
                 {tls_conf}pidfile {dir}/slapd.pid\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 database mdb\nmaxsize 10485760\n\
                 suffix \"dc=example,dc=org\"\n\
                 rootdn \"cn=admin,dc=example,dc=org\"\nrootpw secret\n\
                 directory {dir}/db\n\
                 index mail,mailLocalAddress eq\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut s = Slapd {
            dir,
            port: free_port(),
            tls_port: tls.map(|_| free_port()),
            child: None,
        };
        s.run().await;
        std::fs::write(s.dir.join("entries.ldif"), LDIF).unwrap();
        run(
            Command::new(binary("ldapadd"))
                .args(["-x", "-H", &s.url(), "-D", "cn=admin,dc=example,dc=org"])
                .args(["-w", "secret", "-f"])
                .arg(s.dir.join("entries.ldif")),
            "ldapadd",
        )
        .await;
        s
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}/", self.port)
    }

    async fn run(&mut self) {
        let mut urls = self.url();
        if let Some(p) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = Command::new(binary("slapd"))
            .args(["-h", &urls, "-f"])
            .arg(self.dir.join("slapd.conf"))
            // -d: in the foreground (the test owns the process).
            .args(["-d", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start slapd");
        self.child = Some(child);
        wait_port(self.port, true).await;
        if let Some(p) = self.tls_port {
            wait_port(p, true).await;
        }
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        wait_port(self.port, false).await;
    }
}

fn ldap_config(slapd: &Slapd, extra: &str) -> String {
    base_config(
        "ldap",
        &format!(
            "[recipients.ldap]\nurl = {:?}\nbind_dn = \"cn=admin,dc=example,dc=org\"\n\
             bind_password = \"secret\"\nbase = \"ou=people,dc=example,dc=org\"\n\
             filter = \"(|(mail=%s)(mailLocalAddress=%s))\"\n\
             rewrite_attribute = \"mailRoutingAddress\"\ntimeout = \"2s\"\n{extra}",
            slapd.url()
        ),
    )
}

const LDAP_SCRIPT: &str = r#"local a = arguments.recipient
if a == "probe-search@example.org" then
  local r, e = ldap.search("(mail=" .. ldap.escape("bob@example.org") .. ")", {attributes = {"cn", "mail"}})
  if not r then Reject("search failed: " .. e) end
  Reject("found " .. #r .. " " .. r[1].dn .. " " .. r[1].attrs.cn[1] .. " " .. r[1].attrs.mail[1])
end
if a == "probe-inject@example.org" then
  -- The same filter unescaped matches every entry with a mail.
  local raw = ldap.search("(|(mail=*)(mail=*@example.org)(mailLocalAddress=*)(mail=*@example.org))")
  local v, source = recipient.verify("*)(mail=*@example.org")
  Reject("verify " .. v .. " from " .. source .. ", unescaped " .. #raw)
end
if a == "probe-bad@example.org" then
  local r, e = ldap.search("(mail=bob@example.org", {base = "dc=example,dc=org"})
  Reject("bad filter: " .. tostring(r) .. " " .. tostring(e ~= nil))
end"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_source_against_slapd() {
    let dir = tempfile::tempdir().unwrap();
    let mut slapd = Slapd::start(dir.path()).await;
    let script = dir.path().join("rcptto.lua");
    std::fs::write(&script, LDAP_SCRIPT).unwrap();
    let cfg = ldap_config(&slapd, &format!("[scripts]\nrcptto = {script:?}\n"));
    let srv = TestServer::start(&cfg).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    // By mail, by the filter's second attribute (an alias), case-insensitive.
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "C.Alias@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "sales@example.org").await.starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    // `*` is allowed in a local part: unescaped, (mail=*@example.org)
    // would match every mailbox of the domain.
    assert!(rcpt(&mut c, "*@example.org").await.starts_with("550 5.1.1"));
    assert!(rcpt(&mut c, "\"*)(mail=*\"@example.org")
        .await
        .starts_with("550 5.1.1"));
    // The rewrite: sales@ is queued as its mailRoutingAddress.
    assert_eq!(
        queued(&srv, &mut c).await,
        ["bob@example.org", "c.alias@example.org", "dave@example.org"]
    );

    // Scripts: ldap.search, and an injection through recipient.verify.
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert_eq!(
        rcpt(&mut c, "probe-search@example.org").await,
        "550 5.7.1 found 1 uid=bob,ou=people,dc=example,dc=org Bob Example bob@example.org"
    );
    assert_eq!(
        rcpt(&mut c, "probe-inject@example.org").await,
        "550 5.7.1 verify unknown from ldap, unescaped 3"
    );
    assert_eq!(
        rcpt(&mut c, "probe-bad@example.org").await,
        "550 5.7.1 bad filter: nil true"
    );

    // Cold cache (ttl 0): every RCPT is a search.
    let (rate, p99) = rcpt_rate(&mut c, "bob@example.org", 300).await;
    println!("ldap: {rate:.0} RCPT/s, p99 {p99:?} (debug build, cold cache, one connection)");

    // slapd stopped: a tempfail, 451 with on_tempfail = defer; `sluice
    // check` names the source and the failure.
    slapd.stop().await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    let r = rcpt(&mut c, "bob@example.org").await;
    assert_eq!(
        r,
        "451 4.4.3 <bob@example.org>: Recipient address verification failed, try again later"
    );
    let check_cfg = format!(
        "hostname = \"mx.test.example\"\ndata_dir = {:?}\n{}",
        dir.path().join("check-var"),
        ldap_config(&slapd, "")
    );
    let (ok, out) = sluice_check(dir.path(), &check_cfg).await;
    assert!(!ok && out.contains("[recipients] ldap:"), "{out}");
    // Restarted (same port, same database): the next RCPT reconnects.
    slapd.run().await;
    let r = rcpt(&mut c, "bob@example.org").await;
    assert!(r.starts_with("250"), "{r}");
    assert!(rcpt(&mut c, "nobody@example.org")
        .await
        .starts_with("550 5.1.1"));
    let (ok, out) = sluice_check(dir.path(), &check_cfg).await;
    assert!(!out.contains("[recipients] ldap:"), "{ok} {out}");
    slapd.stop().await;
}

/// A wrong password is a tempfail at RCPT (the directory is not asked) and
/// `sluice check` says the bind failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_failure_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut slapd = Slapd::start(dir.path()).await;
    let cfg = ldap_config(&slapd, "").replace("\"secret\"", "\"wrong\"");
    let srv = TestServer::start(&cfg).await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "bob@example.org")
        .await
        .starts_with("451 4.4.3"));
    let check_cfg = format!(
        "hostname = \"mx.test.example\"\ndata_dir = {:?}\n{cfg}",
        dir.path().join("check-var"),
    );
    let (ok, out) = sluice_check(dir.path(), &check_cfg).await;
    assert!(
        !ok && out.contains("[recipients] ldap:") && out.contains("bind as cn=admin"),
        "{out}"
    );
    slapd.stop().await;
}

/// ldaps:// and StartTLS, verified against `ca_file`; without it the
/// self-signed certificate is not trusted (a tempfail, not a clear-text
/// fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_over_tls_and_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let mut slapd = Slapd::start_tls(dir.path(), Some((&cert, &key))).await;
    let ldaps = format!("ldaps://127.0.0.1:{}/", slapd.tls_port.unwrap());
    let plain = ldap_config(&slapd, "");
    let ca = format!("ca_file = {cert:?}\n");
    let cases = [
        (plain.replace(&slapd.url(), &ldaps) + &ca, "250"),
        (
            plain.replace("timeout =", "starttls = true\ntimeout =") + &ca,
            "250",
        ),
        (plain.replace(&slapd.url(), &ldaps), "451 4.4.3"),
        (
            plain.replace("timeout =", "starttls = true\ntimeout ="),
            "451 4.4.3",
        ),
    ];
    for (cfg, want) in cases {
        let srv = TestServer::start(&cfg).await;
        let mut c = srv.client().await;
        c.greet().await;
        c.cmd("MAIL FROM:<a@sender.example>", "250").await;
        let r = rcpt(&mut c, "bob@example.org").await;
        assert!(r.starts_with(want), "{r}\n{cfg}");
        if want == "250" {
            assert!(rcpt(&mut c, "nobody@example.org")
                .await
                .starts_with("550 5.1.1"));
        }
    }
    slapd.stop().await;
}

// ---------------------------------------------------------- PostgreSQL

/// A PostgreSQL cluster in `dir` on 127.0.0.1:port (socket in `dir` too),
/// trust authentication; run as the `postgres` user when the test is root
/// (initdb refuses root). Stopped (immediate) when dropped.
struct Postgres {
    data: PathBuf,
    sock: PathBuf,
    port: u16,
}

fn as_postgres(bin: &str) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new(binary("runuser"));
        c.args(["-u", "postgres", "--"]).arg(binary(bin));
        c
    } else {
        Command::new(binary(bin))
    }
}

impl Postgres {
    async fn start(dir: &Path) -> Postgres {
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::PermissionsExt;
            let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
            assert!(!pw.is_null(), "no postgres user (install postgresql)");
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        }
        let pg = Postgres {
            data: root.join("data"),
            sock: root.clone(),
            port: free_port(),
        };
        run(
            as_postgres("initdb").arg("-D").arg(&pg.data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        )
        .await;
        pg.run().await;
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE mailbox (address text PRIMARY KEY, deliver_to text);
                 INSERT INTO mailbox VALUES ('bob@example.org', NULL),
                   ('carol@example.org', ''), ('sales@example.org', 'dave@example.org');",
            )
            .await
            .unwrap();
        pg
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn run(&self) {
        run(
            as_postgres("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.sock.join("log"))
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    self.port,
                    self.sock.display()
                ))
                .arg("start"),
            "pg_ctl start",
        )
        .await;
        wait_port(self.port, true).await;
    }

    async fn stop(&self) {
        run(
            as_postgres("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        )
        .await;
        wait_port(self.port, false).await;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A failed assertion must not leave the server running.
        if self.data.join("postmaster.pid").exists() {
            let mut cmd = if unsafe { libc::geteuid() } == 0 {
                let mut c = std::process::Command::new(binary("runuser"));
                c.args(["-u", "postgres", "--"]).arg(binary("pg_ctl"));
                c
            } else {
                std::process::Command::new(binary("pg_ctl"))
            };
            let _ = cmd
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
    }
}

fn sql_config(pg: &Postgres, extra: &str) -> String {
    base_config(
        "sql",
        &format!(
            "[recipients.sql]\nurl = {:?}\n\
             query = \"SELECT deliver_to FROM mailbox WHERE address = $1\"\ntimeout = \"2s\"\n{extra}",
            pg.url()
        ),
    )
}

const SQL_SCRIPT: &str = r#"local a = arguments.recipient
if a == "probe-query@example.org" then
  local r, e = sql.query("SELECT address, deliver_to, length(address) AS n FROM mailbox WHERE address = $1 OR address = $2 ORDER BY address",
    {"bob@example.org", "sales@example.org"})
  if not r then Reject("query failed: " .. e) end
  Reject("rows " .. #r .. " " .. r[1].address .. " " .. tostring(r[1].deliver_to) .. " " .. r[1].n .. " " .. r[2].deliver_to)
end
if a == "probe-inject@example.org" then
  local r = sql.query("SELECT address FROM mailbox WHERE address = $1", {"x' OR '1'='1"})
  local v, source = recipient.verify("x' OR '1'='1")
  Reject("rows " .. #r .. ", verify " .. v .. " from " .. source)
end
if a == "probe-write@example.org" then
  local r, e = sql.query("DELETE FROM mailbox")
  Reject("write: " .. tostring(r) .. " " .. e)
end
if a == "probe-many@example.org" then
  local r, e = sql.query("SELECT g FROM generate_series(1, 1001) g")
  Reject("many: " .. tostring(r) .. " " .. e)
end"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_source_against_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path()).await;
    let script = dir.path().join("rcptto.lua");
    std::fs::write(&script, SQL_SCRIPT).unwrap();
    let srv = TestServer::start(&sql_config(
        &pg,
        &format!("[scripts]\nrcptto = {script:?}\n"),
    ))
    .await;
    let mut c = srv.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert!(rcpt(&mut c, "bob@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "Carol@example.org").await.starts_with("250"));
    assert!(rcpt(&mut c, "sales@example.org").await.starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org").await,
        "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    // `'`, `=` and `-` are allowed in a local part: formatted into the
    // query this would match every row.
    assert!(rcpt(&mut c, "x'OR'1'='1'--@example.org")
        .await
        .starts_with("550 5.1.1"));
    // NULL and '' are no rewrite; sales@ is queued as its deliver_to.
    assert_eq!(
        queued(&srv, &mut c).await,
        ["bob@example.org", "carol@example.org", "dave@example.org"]
    );

    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert_eq!(
        rcpt(&mut c, "probe-query@example.org").await,
        "550 5.7.1 rows 2 bob@example.org nil 15 dave@example.org"
    );
    assert_eq!(
        rcpt(&mut c, "probe-inject@example.org").await,
        "550 5.7.1 rows 0, verify unknown from sql"
    );
    let r = rcpt(&mut c, "probe-write@example.org").await;
    assert!(
        r.starts_with("550 5.7.1 write: nil") && r.contains("read-only"),
        "{r}"
    );
    assert_eq!(
        rcpt(&mut c, "probe-many@example.org").await,
        "550 5.7.1 many: nil more than 1000 rows (narrow the query)"
    );

    let (rate, p99) = rcpt_rate(&mut c, "bob@example.org", 300).await;
    println!("sql: {rate:.0} RCPT/s, p99 {p99:?} (debug build, cold cache, one SMTP connection)");
    // 10 clients at once share the pool: at most 4 connections (and ours).
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(srv.addr()).await;
        tasks.push(tokio::spawn(async move {
            c.greet().await;
            c.cmd("MAIL FROM:<a@sender.example>", "250").await;
            for _ in 0..20 {
                let r = rcpt(&mut c, "bob@example.org").await;
                assert!(r.starts_with("250"), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((2..=5).contains(&n), "{n} client connections");
    drop(client);
    let _ = conn.await;

    // Stopped: tempfail; `sluice check` names it. Restarted: works again.
    pg.stop().await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@sender.example>", "250").await;
    assert_eq!(
        rcpt(&mut c, "bob@example.org").await,
        "451 4.4.3 <bob@example.org>: Recipient address verification failed, try again later"
    );
    let check_cfg = format!(
        "hostname = \"mx.test.example\"\ndata_dir = {:?}\n{}",
        dir.path().join("check-var"),
        sql_config(&pg, "")
    );
    let (ok, out) = sluice_check(dir.path(), &check_cfg).await;
    assert!(!ok && out.contains("[recipients] sql:"), "{out}");
    pg.run().await;
    let r = rcpt(&mut c, "bob@example.org").await;
    assert!(r.starts_with("250"), "{r}");
    assert!(rcpt(&mut c, "nobody@example.org")
        .await
        .starts_with("550 5.1.1"));
    // A query naming a missing table: check says so.
    let bad = check_cfg.replace("FROM mailbox", "FROM mailboxes");
    let (ok, out) = sluice_check(dir.path(), &bad).await;
    assert!(
        !ok && out.contains("[recipients] sql:") && out.contains("mailboxes"),
        "{out}"
    );
    pg.stop().await;
}
