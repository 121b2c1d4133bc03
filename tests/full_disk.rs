//! Full disk: `[queue] min_free` keeps mail intake from ever filling the
//! data_dir filesystem (452 4.3.1 at MAIL FROM), intake resumes by itself
//! once space is back, and SIGTERM on a completely full disk still ends the
//! daemon. The data_dir is a small tmpfs (root only; CI runs as root). A
//! disk the kernel turns read-only (an ext4 loop mount, errors=remount-ro)
//! gets 451 4.3.0 for new mail and keeps every acknowledged message.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("full_disk: skipped, mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The daemon as a child process, its log (stderr) in a file; killed on drop.
struct Daemon {
    child: Option<tokio::process::Child>,
}

impl Daemon {
    fn spawn(cfg: &Path, log: &Path) -> Daemon {
        let f = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c"])
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Daemon { child: Some(child) }
    }
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id().unwrap() as i32
    }
    /// SIGTERM; the exit status if it ended within `within`.
    async fn term(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let child = self.child.as_mut().unwrap();
        let st = tokio::time::timeout(within, child.wait())
            .await
            .ok()?
            .ok()?;
        self.child = None;
        Some(st)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn write_config(dir: &Path, data: &Path, port: u16, min_free: &str) -> PathBuf {
    let cfg = dir.join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"mx.disk.example\"\ndata_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:{port}\"\n[relay]\ndomains = [\"example.org\"]\n[queue]\ndeliver = false\nmin_free = {min_free}\n[auth]\nresults = false\n",
            data.join("var"),
            dir.join("control.sock"),
        ),
    )
    .unwrap();
    cfg
}

fn body(n: usize, kib: usize) -> Vec<u8> {
    let mut b = format!("From: <a@example.net>\r\nSubject: disk {n}\r\n\r\n").into_bytes();
    let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n";
    for _ in 0..(kib * 1024 / line.len()) {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// One transaction on an open session: Ok(queue id) on 250, Err(first
/// non-2xx/3xx reply) otherwise.
async fn send_one(
    c: &mut Client<tokio::net::TcpStream>,
    n: usize,
    kib: usize,
    announce_size: bool,
) -> Result<String, Reply> {
    let size = if announce_size {
        format!(" SIZE={}", kib * 1024)
    } else {
        String::new()
    };
    c.send_raw(format!("MAIL FROM:<a@example.net>{size}\r\n").as_bytes())
        .await;
    let r = c.reply().await;
    if r.code != 250 {
        return Err(r);
    }
    c.send_raw(format!("RCPT TO:<r{n}@example.org>\r\n").as_bytes())
        .await;
    let r = c.reply().await;
    if r.code != 250 {
        return Err(r);
    }
    c.send_raw(b"DATA\r\n").await;
    let r = c.reply().await;
    if r.code != 354 {
        return Err(r);
    }
    c.send_raw(&body(n, kib)).await;
    let r = c.reply().await;
    if r.code != 250 {
        return Err(r);
    }
    Ok(r.text.rsplit(' ').next().unwrap().to_string())
}

async fn queue_cmd(cfg: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue"])
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .await
        .unwrap()
}

/// Fill the filesystem with one file until ENOSPC.
fn fill(path: &Path) -> std::fs::File {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..10_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last partial MiB too.
    for _ in 0..1024 {
        if f.write_all(&chunk[..1024]).is_err() {
            break;
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_free_refuses_before_the_disk_fills_and_intake_resumes() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), fs.path(), port, "\"16MiB\"");
    // Space the test gives back later (sled keeps what it freed for reuse
    // instead of returning it to the filesystem).
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 20 << 20]).unwrap();
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;

    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    c.cmd("EHLO disk.example", "250").await;
    let mut acked = Vec::new();
    let mut refusal = None;
    // Bounded: 64 MiB cannot hold 200 messages of 512 KiB.
    for n in 0..200 {
        match send_one(&mut c, n, 512, true).await {
            Ok(id) => acked.push(id),
            Err(r) => {
                refusal = Some(r);
                break;
            }
        }
    }
    let r = refusal.expect("intake never refused");
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.starts_with("4.3.1"), "{r:?}");
    assert!(acked.len() >= 3, "only {} accepted", acked.len());
    // A SIZE= larger than the space above the reserve: refused as well.
    c.cmd("MAIL FROM:<a@example.net> SIZE=40000000", "452 4.3.1")
        .await;
    c.cmd("QUIT", "221").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("No space left"), "{text}");
    assert!(
        text.contains("452 4.3.1") && text.contains("conn"),
        "{text}"
    );
    assert!(text.contains("min_free"), "{text}");

    // Restart: every acknowledged message is there.
    assert!(
        d.term(Duration::from_secs(10)).await.is_some(),
        "no exit on SIGTERM"
    );
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let out = queue_cmd(&cfg, &["list", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for id in &acked {
        assert!(ids.contains(&id.as_str()), "acknowledged {id} missing");
    }

    // `queue delete` works with the disk at the reserve.
    let out = queue_cmd(&cfg, &["delete", &acked[0]]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Give space back: intake resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    let mut resumed = false;
    for n in 1000..1050 {
        let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
        c.greet().await;
        c.cmd("EHLO disk.example", "250").await;
        if send_one(&mut c, n, 64, true).await.is_ok() {
            resumed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resumed, "intake did not resume after space was freed");
    assert!(d.term(Duration::from_secs(10)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_full_disk_exits_promptly() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // No reserve: this test is about what happens when the disk is full anyway.
    let cfg = write_config(dir.path(), fs.path(), port, "0");
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let _filler = fill(&fs.path().join("filler"));

    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    c.cmd("EHLO disk.example", "250").await;
    let r = tokio::time::timeout(Duration::from_secs(15), send_one(&mut c, 1, 700, false))
        .await
        .expect("no answer to a message on a full disk");
    // No SIZE=: the message reaches the queue write, which fails.
    let r = r.expect_err("a message was accepted on a full disk");
    assert_eq!(r.code, 451, "{r:?}");
    drop(c);

    let started = Instant::now();
    let st = d.term(Duration::from_secs(8)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "reply {r:?}, exit {st:?} after {:?}\n{text}",
        started.elapsed()
    );
    assert!(
        st.is_some(),
        "daemon still running 8 s after SIGTERM:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// An ext4 image on a loop device mounted `errors=remount-ro`: the kernel
/// turns it read-only at the first filesystem error, as on a failing disk
/// (`trigger_fs_error` makes one). Unmounted and detached on drop.
struct Ext4 {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Ext4 {
    fn mount(mib: u64) -> Option<Ext4> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("full_disk: skipped, a loop mount needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfs.ext4 failed");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let e = Ext4 { dir, mnt };
        e.attach();
        Some(e)
    }
    fn attach(&self) {
        let ok = std::process::Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(self.dir.path().join("fs.img"))
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -o loop failed");
    }
    fn detach(&self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
    /// The kernel's own "this filesystem is broken": it goes read-only.
    fn fail(&self) {
        let src = std::process::Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        let dev = String::from_utf8_lossy(&src.stdout).trim().to_string();
        let name = dev.rsplit('/').next().unwrap().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1\n").unwrap();
    }
    /// Unmount, repair (clears the error), mount read-write again.
    fn repair(&self) {
        self.detach();
        let _ = std::process::Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(self.dir.path().join("fs.img"))
            .output()
            .unwrap();
        self.attach();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.detach();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_turned_read_only_refuses_intake_and_loses_nothing() {
    let Some(fs) = Ext4::mount(64) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), &fs.mnt, port, "\"1MiB\"");
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    let mut acked = Vec::new();
    for n in 0..5 {
        acked.push(send_one(&mut c, n, 16, true).await.expect("accepted"));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    fs.fail();
    // Nothing more is acknowledged, and each refusal is temporary.
    for n in 100..103 {
        let r = tokio::time::timeout(Duration::from_secs(20), send_one(&mut c, n, 16, true))
            .await
            .expect("no answer on a read-only disk");
        let r = r.expect_err("acknowledged on a read-only disk");
        assert!(r.code / 100 == 4, "not a temporary refusal: {r:?}");
        println!("read-only disk, message {n}: {} {}", r.code, r.text);
    }
    // The daemon is still up and says why.
    let mut c2 = Client::connect(([127, 0, 0, 1], port).into()).await;
    c2.greet().await;
    c2.cmd("NOOP", "250").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.to_lowercase().contains("read-only") && text.contains("conn="),
        "no log line says the disk is read-only:\n{text}"
    );
    assert!(
        d.term(Duration::from_secs(20)).await.is_some(),
        "no exit on SIGTERM with the disk read-only"
    );

    // Repaired and restarted: every acknowledged message is there.
    fs.repair();
    let store = sluice::store::Store::open(&fs.mnt.join("var")).unwrap();
    let mut ids: Vec<String> = store
        .list_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "queue after repair != acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_a_full_disk_so_the_queue_can_be_managed() {
    let Some(fs) = Tmpfs::mount(48) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), fs.path(), port, "\"1MiB\"");
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let reserve = fs
        .path()
        .join("var")
        .join(sluice::store::space::RESERVE_FILE);
    assert!(
        wait_until(|| reserve.exists()).await,
        "no space reserve written"
    );
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    let mut acked = Vec::new();
    for n in 0..8 {
        acked.push(send_one(&mut c, n, 256, true).await.expect("accepted"));
    }
    c.cmd("QUIT", "221").await;
    // Something else fills the filesystem to the last byte; then a restart.
    let filler = fill(&fs.path().join("filler"));
    assert!(d.term(Duration::from_secs(15)).await.is_some());
    assert_eq!(sluice::store::space::statvfs(fs.path()).unwrap().avail, 0);

    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("released the space reserve"), "{text}");
    // The operator can look at the queue and act on it...
    let out = queue_cmd(&cfg, &["list", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    acked.sort();
    assert_eq!(ids, acked, "queue on the full disk");
    let out = queue_cmd(&cfg, &["delete", &acked[0]]).await;
    assert!(
        out.status.success(),
        "queue delete on a full disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...while intake refuses, temporarily.
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.net>", "452 4.3.1").await;
    c.cmd("QUIT", "221").await;
    // Space is back: the reserve is put back (checked every 5 s) and
    // intake resumes, without a restart.
    drop(filler);
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let started = Instant::now();
    let mut resumed = false;
    while started.elapsed() < Duration::from_secs(20) {
        let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
        c.greet().await;
        if send_one(&mut c, 99, 16, true).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(resumed, "intake did not resume after space was freed");
    assert!(reserve.exists(), "reserve not restored");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("space reserve restored"), "{text}");
    assert!(d.term(Duration::from_secs(15)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_without_a_reserve_says_what_to_do() {
    let Some(fs) = Tmpfs::mount(32) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), fs.path(), port, "\"1MiB\"");
    let log = dir.path().join("daemon.log");
    let mut d = Daemon::spawn(&cfg, &log);
    wait_listening(port).await;
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    send_one(&mut c, 1, 64, true).await.expect("accepted");
    c.cmd("QUIT", "221").await;
    assert!(d.term(Duration::from_secs(15)).await.is_some());
    // The reserve is gone (used up earlier, say) and the disk is full.
    let var = fs.path().join("var");
    let _ = std::fs::remove_file(var.join(sluice::store::space::RESERVE_FILE));
    let _filler = fill(&fs.path().join("filler"));
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c"])
            .arg(&cfg)
            .output(),
    )
    .await
    .expect("sluice run hung on a full disk")
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with no space at all: {err}");
    assert!(
        err.contains("no space left") && err.contains("history") && err.contains("free some space"),
        "the error does not say what to do: {err}"
    );
}
