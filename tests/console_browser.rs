//! The console in a real browser: headless Chromium driven by Python
//! selenium (`tests/py/console_browser.py`; Debian's chromium,
//! chromium-driver and python3-selenium, which `.ci/run` installs) against
//! `sluice run` with mail flowing through it — some over STARTTLS, one
//! refusal, all deferred by an unreachable next hop so they stay queued.
//!
//! The script logs in (after a wrong password), searches by recipient,
//! opens a timeline, holds and releases a queued message with confirmation,
//! checks the charts' SVG, watches a message it sends stream into the live
//! tail, is refused on POSTs without or with a forged CSRF token, and finds
//! its idle session expired. Every step saves a screenshot in the test's
//! temp dir (or in `$CONSOLE_SCREENSHOTS`, to look at them; not `SLUICE_…`,
//! which the daemon would read as config) and asserts on the
//! page's content. Afterwards the CLI confirms what the browser did.

mod common;
mod console_support;

use std::path::{Path, PathBuf};

use console_support::*;

const SESSION_TIMEOUT_SECS: u64 = 8;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver python3-selenium (.ci/run does)"
        );
    }
    let gw = Gateway::start(&format!("session_timeout = \"{SESSION_TIMEOUT_SECS}s\"")).await;
    gw.send(
        "sender@example.net",
        &["alice@example.org"],
        "for alice",
        true,
    )
    .await;
    gw.send("sender@example.net", &["bob@example.org"], "for bob", false)
        .await;
    gw.send(
        "other@example.net",
        &["carol@example.org"],
        "for carol",
        true,
    )
    .await;
    gw.send_with_refusal("mixed@example.net", "dave@example.org")
        .await;
    gw.wait_deferred(4).await;
    let bob = gw.entry_for("bob@example.org").unwrap();
    let bob_id = bob["id"].as_str().unwrap().to_string();
    assert_eq!(bob["state"], "queued");

    let keep = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let shots = keep.unwrap_or_else(|| tmp.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(repo("tests/py/console_browser.py"))
        .args(["--base", &format!("http://{}", gw.http)])
        .args(["--token", TOKEN])
        .arg("--shots")
        .arg(&shots)
        .args(["--search", "alice@example.org"])
        .args(["--queued", &bob_id])
        .args(["--smtp", &gw.smtp.port().to_string()])
        .args(["--session-timeout", &SESSION_TIMEOUT_SECS.to_string()])
        .env("HOME", tmp.path())
        .output()
        .await
        .expect("running /usr/bin/python3 (python3-selenium)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ok: all steps"),
        "browser script failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    // A screenshot per step, each a real PNG.
    for step in [
        "login-page",
        "wrong-password",
        "history",
        "search-recipient",
        "timeline",
        "confirm-hold",
        "held",
        "confirm-release",
        "released",
        "charts",
        "charts-day",
        "live-tail",
        "csrf-missing",
        "csrf-wrong",
        "session-expired",
    ] {
        let shot = std::fs::read_dir(&shots)
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("-{step}.png"))
            })
            .unwrap_or_else(|| panic!("no screenshot of {step}\n{stdout}"));
        let png = std::fs::read(shot.path()).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "{step}");
    }

    // What the browser did, as the CLI sees it: bob held, then released by
    // the console; still queued; the refused POSTs deleted nothing; the
    // live tail's message arrived.
    let bob = gw
        .entry_for("bob@example.org")
        .expect("bob's entry is gone");
    assert_eq!(bob["state"], "queued");
    let h = gw.history(&["--recipient", "bob@example.org"]);
    let ops: Vec<(&str, &str)> = h
        .iter()
        .filter_map(|r| Some((r["action"].as_str()?, r["actor"].as_str()?)))
        .collect();
    assert_eq!(ops, [("HOLD", "console"), ("RELEASE", "console")], "{h:?}");
    assert!(gw.history(&["--action", "DELETE"]).is_empty());
    assert!(!gw.history(&["--recipient", "tail@example.org"]).is_empty());
}
