//! Who may talk to the daemon: the control socket is 0600 and refuses other
//! users by SO_PEERCRED even when its mode would let them in; TLS listeners
//! refuse TLS 1.0/1.1 and client-initiated renegotiation (checked with
//! OpenSSL's own client, which still speaks the old protocols).

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const STARTTLS_LISTENER: &str =
    "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Connect to the Unix socket as uid/gid 65534 (nobody), send a request
/// line and print what happened: `EACCES`, `EOF` (accepted then closed
/// unanswered) or `ANSWER <bytes>`.
fn as_nobody(socket: &Path) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.settimeout(5)
try:
    s.sendall(b'{"cmd":"queue_stats"}\n')
    data = s.recv(4096)
except (BrokenPipeError, ConnectionResetError):
    data = b""
print("EOF" if not data else "ANSWER " + data.decode(errors="replace"))
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(socket)
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_refuses_other_users() {
    if !is_root() {
        eprintln!("access: skipped, connecting as another uid needs root (CI runs as root)");
        return;
    }
    let mut srv = TestServer::start("").await;
    let sock = srv.dir.path().join("var/control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    // Let the other user reach the socket itself: only its mode (and then
    // the peer check) stands in the way.
    for d in [srv.dir.path(), &srv.dir.path().join("var")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock2 = sock.clone();
    let by_mode = tokio::task::spawn_blocking(move || as_nobody(&sock2))
        .await
        .unwrap();
    assert_eq!(by_mode, "EACCES", "0600 socket let another uid connect");

    // A careless chmod: the daemon itself still refuses the peer.
    let before = metric("sluice_control_refused_total");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sock2 = sock.clone();
    let by_cred = tokio::task::spawn_blocking(move || as_nobody(&sock2))
        .await
        .unwrap();
    assert_eq!(by_cred, "EOF", "another uid was answered");
    assert!(
        wait_until(|| metric("sluice_control_refused_total") > before).await,
        "refusal not counted"
    );

    // The daemon's own user (root here) is still served.
    let stats = sluice::control::request(&sock, &sluice::control::Request::QueueStats)
        .await
        .expect("own uid refused");
    assert!(stats.get("entries").is_some(), "{stats}");
    srv.stop().await;
}

fn metric(name: &str) -> f64 {
    sluice::metrics::render(None)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `openssl s_client -starttls smtp` with `args`, feeding `stdin`; its
/// stdout and stderr interleaved as written (one file for both), since
/// "RENEGOTIATING" goes to stderr and the `-msg` trace to stdout.
fn s_client(port: u16, args: &[&str], stdin: &str, linger_secs: u64) -> String {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let out = out_file.reopen().unwrap();
    let err = out.try_clone().unwrap();
    let mut child = Command::new("timeout")
        .arg("15")
        .args([
            "openssl",
            "s_client",
            "-msg",
            "-starttls",
            "smtp",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("openssl");
    {
        use std::io::Write;
        let mut w = child.stdin.take().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        let _ = w.write_all(stdin.as_bytes());
        std::thread::sleep(std::time::Duration::from_secs(linger_secs));
    }
    child.wait().unwrap();
    std::fs::read_to_string(out_file.path()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_and_renegotiation_are_refused() {
    let mut srv = TestServer::start(STARTTLS_LISTENER).await;
    let port = srv.addr().port();

    // Control: TLS 1.2 itself works, so the refusals below are about the
    // protocol version and nothing else.
    let ok = tokio::task::spawn_blocking(move || s_client(port, &["-tls1_2"], "", 1))
        .await
        .unwrap();
    assert!(ok.contains("New, TLSv1.2"), "TLS 1.2 failed:\n{ok}");

    // OpenSSL 3 will not even offer 1.0/1.1 at its default security level:
    // SECLEVEL=0 makes the client really ask, so the refusal is the server's.
    for old in ["-tls1", "-tls1_1"] {
        let out = tokio::task::spawn_blocking(move || {
            s_client(port, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"], "", 1)
        })
        .await
        .unwrap();
        assert!(
            out.contains("<<< ") && out.contains("Alert") && out.contains("fatal"),
            "{old}: no fatal alert from the server:\n{out}"
        );
        assert!(
            !out.contains("ServerHello"),
            "{old}: the server answered with a ServerHello:\n{out}"
        );
        assert!(
            out.contains("Cipher is (NONE)"),
            "{old}: a session was set up:\n{out}"
        );
    }

    // Client-initiated renegotiation ("R" in s_client) on TLS 1.2: the new
    // ClientHello goes out, no second handshake comes back.
    let out = tokio::task::spawn_blocking(move || s_client(port, &["-tls1_2"], "R\n", 3))
        .await
        .unwrap();
    assert!(
        out.contains("RENEGOTIATING"),
        "no renegotiation tried:\n{out}"
    );
    let after = &out[out.find("RENEGOTIATING").unwrap()..];
    assert!(
        after.contains("ClientHello"),
        "the client did not send its ClientHello:\n{after}"
    );
    assert!(
        !after.contains("ServerHello"),
        "the server renegotiated:\n{after}"
    );
    assert_eq!(
        out.matches("<<< TLS 1.2, Handshake").count()
            - after.matches("<<< TLS 1.2, Handshake").count(),
        out.matches("<<< TLS 1.2, Handshake").count(),
        "handshake messages from the server after the renegotiation request:\n{after}"
    );
    srv.stop().await;
}
