//! The docs cannot drift from the code:
//!
//! - every ```lua block in `docs/lua.md` runs as a hook script through the
//!   real policy engine and must end without a script error (and with the
//!   verdict its fence names, `verdict=X`);
//! - `docs/config.md` documents exactly the keys `Config` has: every key of
//!   the serialized defaults appears in its tables, and every key in its
//!   tables exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice::config::Config;
use sluice::policy::{test_input, Hook, PolicyEngine};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

const MESSAGE: &str = "From: Alice <alice@example.net>\r\nTo: bob@example.org\r\nSubject: Quarterly report\r\nMessage-ID: <q3@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"report.exe\"\r\n\r\nMZ\r\n--b1--\r\n";

struct Example {
    line: usize,
    hook: Hook,
    verdict: Option<String>,
    code: String,
}

/// ```lua [hook] [verdict=X] blocks, with the line they start on.
fn lua_blocks(md: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut cur: Option<Example> = None;
    for (i, line) in md.lines().enumerate() {
        match &mut cur {
            None => {
                if let Some(info) = line.strip_prefix("```lua") {
                    let mut hook = Hook::Eod;
                    let mut verdict = None;
                    for word in info.split_whitespace() {
                        if let Some(v) = word.strip_prefix("verdict=") {
                            verdict = Some(v.to_string());
                        } else {
                            hook = Hook::from_name(word)
                                .unwrap_or_else(|| panic!("line {}: unknown hook {word}", i + 1));
                        }
                    }
                    cur = Some(Example {
                        line: i + 1,
                        hook,
                        verdict,
                        code: String::new(),
                    });
                }
            }
            Some(ex) => {
                if line.starts_with("```") {
                    out.push(cur.take().unwrap());
                } else {
                    ex.code.push_str(line);
                    ex.code.push('\n');
                }
            }
        }
    }
    assert!(cur.is_none(), "unterminated ```lua block");
    out
}

/// A DNS server on loopback that answers NXDOMAIN to everything at once, so
/// examples that look things up run fast and the same everywhere.
fn nxdomain_server() -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            // Header + the question only: walk the QNAME labels, then QTYPE/QCLASS.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let end = (i + 5).min(n);
            let mut reply = buf[..end].to_vec();
            reply[2] = 0x80 | (buf[2] & 0x01); // QR, keep RD
            reply[3] = 0x80 | 3; // RA, NXDOMAIN
            reply[6..12].fill(0); // no answer, authority, additional records
            let _ = sock.send_to(&reply, peer);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_examples_run() {
    let md = std::fs::read_to_string(repo("docs/lua.md")).unwrap();
    let examples = lua_blocks(&md);
    assert!(examples.len() >= 30, "only {} examples", examples.len());
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        lib.join("doc_example.lua"),
        "return {greet = function(n) return \"hi \" .. n end}\n",
    )
    .unwrap();
    let envelope = json!({
        "connection": {"remoteip": "192.0.2.10", "helo": {"verb": "EHLO", "host": "client.example.net"}},
        "sender": "alice@example.net",
        "recipients": ["bob@example.org", "carol@example.org"],
        "arguments": {"verb": "EHLO", "host": "client.example.net"},
    });
    let dns = nxdomain_server();
    let mut failures = Vec::new();
    for ex in &examples {
        let script = dir.path().join(format!("example-{}.lua", ex.line));
        std::fs::write(&script, &ex.code).unwrap();
        let toml = format!(
            "[scripts]\nlib_path = [{lib:?}]\n{} = {script:?}\n[dns]\nnameservers = [\"{dns}\"]\ntimeout = \"2s\"\n[transport.lmtp]\nkind = \"lmtp\"\nhost = \"127.0.0.1:24\"\n",
            ex.hook.name()
        );
        let cfg = Config::from_toml_str(&toml).unwrap();
        let engine = match PolicyEngine::load(&cfg) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("docs/lua.md:{}: does not compile: {e}", ex.line));
                continue;
            }
        };
        let mut env = envelope.clone();
        if matches!(ex.hook, Hook::RcptTo | Hook::MailFrom) {
            let (key, addr) = if ex.hook == Hook::RcptTo {
                ("recipient", "bob@example.org")
            } else {
                ("sender", "alice@example.net")
            };
            env["arguments"][key] = Value::String(addr.into());
        }
        let message = matches!(ex.hook, Hook::Eod | Hook::Headers).then(|| MESSAGE.into());
        let input = test_input(ex.hook, &env, message).unwrap();
        let out = engine.run(ex.hook, input).await;
        if let Some(e) = &out.error {
            failures.push(format!("docs/lua.md:{}: script error: {e}", ex.line));
            continue;
        }
        if let Some(want) = &ex.verdict {
            let got = out.verdict.kind().function();
            if got != want {
                failures.push(format!(
                    "docs/lua.md:{}: verdict {got}, the fence says {want}",
                    ex.line
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Dotted key paths of a serialized config: `limits.message_size`,
/// `listener.address` (array items), `transport.<id>.kind` (named tables).
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let k = if prefix == "transport" { "<id>" } else { k };
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                if val.as_object().is_some_and(|m| !m.is_empty()) {
                    key_paths(val, &path, out);
                } else if let Value::Array(items) = val {
                    if let Some(first @ Value::Object(_)) = items.first() {
                        key_paths(first, &path, out);
                    } else {
                        out.insert(path);
                    }
                } else {
                    out.insert(path);
                }
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// Keys documented in docs/config.md: the first cell of table rows, in
/// backticks.
fn documented_keys(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn config_reference_matches_the_code() {
    let v = serde_json::to_value(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&v, "", &mut keys);
    let md = std::fs::read_to_string(repo("docs/config.md")).unwrap();
    let documented = documented_keys(&md);
    let missing: Vec<_> = keys.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/config.md is out of date.\nundocumented keys: {missing:?}\ndocumented but not in Config: {unknown:?}"
    );
}

/// The packaged production config must load (over the defaults) and keep
/// the paths the unit and the maintainer scripts rely on.
#[test]
fn packaged_config_is_valid() {
    let text = std::fs::read_to_string(repo("packaging/sluice.toml")).unwrap();
    let cfg = Config::from_toml_str(&text).unwrap();
    assert_eq!(cfg.data_dir, Path::new("/var/lib/sluice"));
    assert_eq!(cfg.control_socket, Path::new("/run/sluice/control.sock"));
    assert!(cfg.listener.iter().any(|l| l.address.ends_with(":25")));
    assert_eq!(
        cfg.scripts.lib_path,
        [Path::new("/usr/share/sluice/lib-lua")]
    );
    // The shipped defaults file keeps loading too.
    let text = std::fs::read_to_string(repo("conf/sluice.toml")).unwrap();
    Config::from_toml_str(&text).unwrap();
}
