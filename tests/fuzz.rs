//! Fuzz targets on the stable toolchain: a small mutation fuzzer (no nightly,
//! no external engine) driven by the seed corpora under `fuzz/corpus/<target>/`.
//! Each target runs for `FUZZ_SECONDS` (default 2 s) as an ordinary test and
//! asserts properties beyond "no panic": round trips, split feeding equals
//! whole feeding, output bounded by input, differential against Lua's C
//! matcher. A failing input is written to `$TMPDIR/sluice-fuzz/<target>-N`
//! and printed in hex; it then belongs in `fuzz/regressions/<target>/`,
//! which every run replays first. `benches/fuzz-long.sh SECONDS` runs them
//! all longer and prints executions and findings per target.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::smtp::data::{DataProgress, DotDecoder, MessageBuilder};

// ---- the engine ------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fuzz_dir(sub: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(sub)
        .join(target)
}

fn load_dir(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// One mutation of `input`: bit flips, byte edits, block copies, dictionary
/// tokens, splices with another corpus entry; capped at `max` bytes.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>], dict: &[&[u8]], max: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                const BYTES: &[u8] = b"\r\n.:<>@ \t\0=-0\xff";
                v.insert(i, BYTES[rng.below(BYTES.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a block (repetition finds length bugs).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let block = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                for _ in 0..1 + rng.below(8) {
                    v.splice(at..at, block.iter().copied());
                }
            }
            5 | 6 if !dict.is_empty() => {
                let t = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, t.iter().copied());
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let cut = rng.below(len);
                v.truncate(cut);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(max);
    v
}

struct Stats {
    execs: u64,
    findings: usize,
}

impl Stats {
    /// It ran mutations, not just the seeds, and found nothing.
    fn check(&self) {
        assert_eq!(self.findings, 0);
        assert!(self.execs >= 100, "only {} executions", self.execs);
    }
}

/// Run `check` on the regressions, the seeds, then mutations until the time
/// is up. Panics (after saving every finding) if any input failed.
fn fuzz(target: &str, dict: &[&[u8]], max: usize, mut check: impl FnMut(&[u8])) -> Stats {
    let secs: f64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    let regressions = load_dir(&fuzz_dir("regressions", target));
    let corpus = load_dir(&fuzz_dir("corpus", target));
    assert!(
        !corpus.is_empty(),
        "no seed corpus in fuzz/corpus/{target}/"
    );
    let mut rng = Rng(seed);
    let mut findings: Vec<(Vec<u8>, String)> = Vec::new();
    let mut execs = 0u64;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut run = |input: &[u8], findings: &mut Vec<(Vec<u8>, String)>| {
        execs += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(input))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if findings.len() < 20 {
                findings.push((input.to_vec(), msg));
            }
        }
    };
    for input in regressions.iter().chain(corpus.iter()) {
        run(input, &mut findings);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    // Bounded in count as well as time.
    for _ in 0..50_000_000u64 {
        if Instant::now() >= deadline || findings.len() >= 20 {
            break;
        }
        for _ in 0..64 {
            let base = &corpus[rng.below(corpus.len())];
            let input = catch_unwind(AssertUnwindSafe(|| {
                mutate(&mut rng, base, &corpus, dict, max)
            }));
            let Ok(input) = input else {
                std::panic::set_hook(prev);
                panic!("the mutator itself panicked");
            };
            run(&input, &mut findings);
        }
    }
    std::panic::set_hook(prev);
    println!(
        "fuzz {target}: {execs} executions in {secs} s (seed {seed}), {} findings",
        findings.len()
    );
    if !findings.is_empty() {
        let dir = std::env::temp_dir().join("sluice-fuzz");
        let _ = std::fs::create_dir_all(&dir);
        for (i, (input, msg)) in findings.iter().enumerate() {
            let path = dir.join(format!("{target}-{i}"));
            let _ = std::fs::write(&path, input);
            println!(
                "  finding {i}: {msg}\n    saved {}\n    hex {}",
                path.display(),
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
        panic!("fuzz {target}: {} failing inputs", findings.len());
    }
    Stats {
        execs,
        findings: findings.len(),
    }
}

fn block_on<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

// ---- targets ---------------------------------------------------------------

/// `proto::command::parse`: never panics, deterministic, and the verb it
/// reports is the line's first word.
#[test]
fn fuzz_command_parser() {
    let dict: &[&[u8]] = &[
        b"MAIL FROM:",
        b"RCPT TO:",
        b"EHLO ",
        b"BDAT ",
        b" LAST",
        b"AUTH PLAIN ",
        b" SIZE=",
        b" BODY=8BITMIME",
        b" SMTPUTF8",
        b" NOTIFY=SUCCESS,FAILURE",
        b" ORCPT=rfc822;",
        b" RET=HDRS",
        b" ENVID=",
        b"<@a,@b:x@y>",
        b"\"quoted local\"@",
        b"[IPv6:::1]",
        b"+2B",
        b"\xc3\xa9",
    ];
    let s = fuzz("command", dict, 2048, |input| {
        let line = String::from_utf8_lossy(input);
        let a = sluice::proto::command::parse(&line);
        let b = sluice::proto::command::parse(&line);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let _ = sluice::proto::command::verb_of(&line);
    });
    s.check();
}

/// DotDecoder + MessageBuilder (DATA) and BDAT's push_slice: the same
/// content whether fed whole or split anywhere; output never larger than
/// the input (twice it when bare LFs are normalized); the limits hold.
#[test]
fn fuzz_data_decoder_and_bdat() {
    let dict: &[&[u8]] = &[
        b"\r\n.\r\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"..",
        b"\r\n\r\n",
        b"Received: x\r\n",
        b"\0",
        b"\r\n\t folded\r\n",
    ];
    let s = fuzz("data", dict, 64 * 1024, |input| {
        let (mode, input) = input.split_first().unwrap_or((&0, &[]));
        let reject = mode & 1 == 0;
        let cut = if input.is_empty() {
            0
        } else {
            (*mode as usize * 7919) % (input.len() + 1)
        };
        let new = || MessageBuilder::new(b"P\r\n", 4096, 200, !reject).with_header_limits(1024, 20);
        let decode = |parts: &[&[u8]]| {
            let mut b = new();
            let mut d = DotDecoder::new(reject);
            let mut used = 0;
            let mut progress = DataProgress::More;
            for p in parts {
                let (n, pr) = d.feed(p, &mut b);
                used += n;
                progress = pr;
                if pr != DataProgress::More {
                    break;
                }
                assert_eq!(n, p.len(), "More consumes all its input");
            }
            (progress, used, b.take_body(), b.flags, b.size, b.header_end)
        };
        let whole = decode(&[input]);
        let split = decode(&[&input[..cut], &input[cut..]]);
        assert_eq!(whole, split, "split at {cut}");
        let (_, used, body, flags, size, header_end) = whole;
        assert!(used <= input.len());
        let bound = if reject { used } else { 2 * used };
        assert!(size as usize <= bound, "size {size} from {used} bytes");
        assert!(
            body.len() <= 3 + 4096,
            "stored {} past message_size",
            body.len()
        );
        if flags.discarding() && (flags.header_too_big || flags.too_many_header_lines) {
            assert!(body.is_empty() && header_end.is_none());
        }
        if let Some(h) = header_end {
            assert!(h <= body.len());
        }
        // BDAT: the chunks go to the builder as they come.
        let mut a = new();
        a.push_slice(input);
        a.finish();
        let mut b = new();
        b.push_slice(&input[..cut]);
        b.push_slice(&input[cut..]);
        b.finish();
        assert_eq!(
            (&a.body, a.flags, a.size, a.header_end, a.received),
            (&b.body, b.flags, b.size, b.header_end, b.received)
        );
        assert_eq!(
            a.size,
            input.len() as u64 + a.size.saturating_sub(input.len() as u64)
        );
    });
    s.check();
}

/// PROXY v1 and v2 headers: no panic, no hang, the addresses are what a
/// v1 line says.
#[test]
fn fuzz_proxy_protocol() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dict: &[&[u8]] = &[
        b"PROXY TCP4 ",
        b"PROXY TCP6 ",
        b"PROXY UNKNOWN",
        b"\r\n\r\n\0\r\nQUIT\n",
        b"\x21\x11",
        b"\x21\x21",
        b"\x20\x00",
        b"\x00\x0c",
        b"\xff\xff",
        b"65535",
        b"::ffff:1.2.3.4",
    ];
    let s = fuzz("proxy", dict, 1024, |input| {
        let mut r = input;
        let out = block_on(&rt, async {
            tokio::time::timeout(
                Duration::from_secs(1),
                sluice::smtp::proxy_protocol::read_header(&mut r),
            )
            .await
        })
        .expect("a parser over a byte slice never waits");
        if let (Ok(Some((src, _))), true) = (&out, input.starts_with(b"PROXY TCP4 ")) {
            assert!(src.is_ipv4(), "TCP4 gave {src}");
        }
    });
    s.check();
}

/// MIME walk + ScanDLP with the built-in rules: no panic, results name
/// only known rules, stop_on_match finds no more than a full scan.
#[test]
fn fuzz_mime_walk_and_dlp() {
    use sluice::scan::dlp::{DlpEngine, ScanOptions, Selection};
    let engine = DlpEngine::from_config(&BTreeMap::new()).unwrap();
    let names: Vec<String> = engine.rules().names().map(str::to_string).collect();
    let dict: &[&[u8]] = &[
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n",
        b"\r\n--b\r\n",
        b"\r\n--b--\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename=\"a.zip\"\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"PK\x03\x04",
        b"4111 1111 1111 1111",
        b"=?utf-8?b?w6k=?=",
        b"=3D=\r\n",
    ];
    let s = fuzz("dlp", dict, 32 * 1024, |input| {
        let scanned = catch_unwind(AssertUnwindSafe(|| {
            engine.scan(input, &Selection::default(), &ScanOptions::default())
        }));
        let full = match scanned {
            Ok(r) => r,
            Err(e) => {
                // mail-parser 0.11.9 message.rs:485 has a debug_assert!(false)
                // for a multipart nested in a message/rfc822 part that ends
                // early; release builds go on. Known upstream, not ours:
                // fuzz/known/dlp/ holds an input.
                let msg = e.downcast_ref::<&str>().copied().unwrap_or_default();
                if cfg!(debug_assertions) && msg.contains("could not find multipart") {
                    return;
                }
                std::panic::resume_unwind(e);
            }
        };
        for r in full.rules() {
            assert!(
                names.iter().any(|n| n == r) || r.starts_with("ERR_"),
                "unknown rule {r}"
            );
        }
        let opts = ScanOptions {
            stop_on_match: true,
            ..ScanOptions::default()
        };
        let first = engine.scan(input, &Selection::default(), &opts);
        assert!(first.rules().len() <= full.rules().len().max(1));
    });
    s.check();
}

/// The Axigen policy compiler (lexer, parser with recovery, checks, codegen):
/// no panic; what compiles yields Lua that Lua itself loads.
#[test]
fn fuzz_axigen_compiler() {
    let dict: &[&[u8]] = &[
        b"event onRcptTo {",
        b"method m {",
        b"}",
        b"set (",
        b"call (",
        b"if (",
        b") {",
        b"} else {",
        b"allOf(",
        b"anyOf(",
        b"is (\"",
        b"\"",
        b"match",
        b";",
        b"//",
        b"/*",
        b"*/",
        b"\\",
        b"event",
        b"method",
        b"onConnect",
        b"onRcptTo",
        b"onDataReceived",
        b"export",
        b"return",
        b"switch",
        b"case",
        b"default",
        b"isCase",
        b"lessThan",
        b"ipRange",
        b"not",
        b"\"%smtpIp%\"",
        b"\"%\"",
        b"\"(\"",
        b"\"10.0.0.0/8\"",
        b"\"1-2\"",
        b"#c\n",
        b"smtpAction",
        b"remoteSmtpIp",
        b"addHeader",
        b"42",
        b"-7",
        b"%",
        "\u{e9}".as_bytes(),
        b"\r\n",
    ];
    let lua = mlua::Lua::new();
    let path = Path::new("fuzz.axigen");
    let s = fuzz("axigen", dict, 8 * 1024, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = sluice::policy::axigen::lexer::lex(&text);
        if let Ok(policy) = sluice::policy::axigen::compile_str(path, &text) {
            for hook in &policy.hooks {
                assert!(hook.lua.contains("ax:finish()"), "{}", hook.lua);
                if let Err(e) = lua.load(&hook.lua).into_function() {
                    panic!("generated Lua does not load: {e}\n{}", hook.lua);
                }
            }
        }
    });
    s.check();
}

/// History and queue filters: `--since/--until` times and the JSON query
/// (`/api/v1/history`, the control socket) parse or refuse, never panic;
/// a parsed query runs against a store.
#[test]
fn fuzz_history_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = sluice::store::Store::open(dir.path()).unwrap();
    let dict: &[&[u8]] = &[
        b"{\"since\":",
        b"\"until\":",
        b"\"sender\":\"",
        b"\"limit\":",
        b"\"after\":\"",
        b"\"action\":\"REJECT\"",
        b"1e308",
        b"-1",
        b"NaN",
        b"2026-12-02T04:00:00Z",
        b"5m",
        b"3d",
        b"}",
    ];
    let s = fuzz("history", dict, 4096, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = sluice::cli::parse_when(&text);
        if let Ok(mut q) = serde_json::from_slice::<sluice::store::history::HistoryQuery>(input) {
            q.limit = q.limit.map(|l| l.min(100));
            let got = store.query_history(&q).unwrap();
            assert!(got.len() <= q.limit.unwrap_or(usize::MAX));
        }
        let _ = serde_json::from_slice::<sluice::control::QueueFilter>(input);
    });
    s.check();
}

/// Milter replies: packet framing, option negotiation, SMFIR_REPLYCODE and
/// NUL-separated strings; a reply code that parses is 4xx or 5xx and
/// renders back to something that parses the same.
#[test]
fn fuzz_milter_replies() {
    use sluice::scan::milter::protocol::{encode, parse_optneg, read_packet, split_cstrings};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dict: &[&[u8]] = &[
        b"\x00\x00\x00\x0d",
        b"O\x00\x00\x00\x06",
        b"y",
        b"550 5.7.1 no\x00",
        b"451-4.7.1 a\r\n451 4.7.1 b\x00",
        b"\x00",
        b"\xff\xff\xff\xff",
        b"h",
        b"m",
        b"+",
    ];
    let s = fuzz("milter", dict, 4096, |input| {
        let mut r = input;
        let deadline = Instant::now() + Duration::from_secs(1);
        for _ in 0..16 {
            let Ok(p) = block_on(&rt, read_packet(&mut r, deadline)) else {
                break;
            };
            let again = encode(p.code, &p.data);
            assert_eq!(again[4], p.code);
            let _ = parse_optneg(&p);
            let _ = split_cstrings(&p.data);
            if let Ok(reply) = sluice::scan::milter::parse_replycode(&p.data) {
                assert!((400..600).contains(&reply.code), "{reply:?}");
            }
        }
        let _ = sluice::scan::milter::parse_replycode(input);
    });
    s.check();
}

/// Lua patterns: our budgeted matcher against Lua's own C `string.find`
/// (in a plain state, no budget) on short subjects — same match, same
/// position; the budget ends any search.
#[test]
fn fuzz_lua_patterns_against_c_lua() {
    use sluice::policy::pattern::{search, Matcher};
    let lua = mlua::Lua::new();
    let find: mlua::Function = lua
        .load("return function(s, p) return pcall(string.find, s, p) end")
        .eval()
        .unwrap();
    let dict: &[&[u8]] = &[
        b"%a", b"%d+", b".-", b"(.)", b"%1", b"[^%s]", b"%b()", b"%f[%w]", b"^", b"$", b"*", b"?",
        b"[a-z]", b"%", b"()",
    ];
    let s = fuzz("pattern", dict, 96, |input| {
        // Pattern and subject split at the first 0xff byte (or the middle).
        let at = input
            .iter()
            .position(|&b| b == 0xff)
            .unwrap_or(input.len() / 2);
        let (pat, src) = (&input[..at], input.get(at + 1..).unwrap_or(&[]));
        let pat = &pat[..pat.len().min(24)];
        let mut m = Matcher::new(src, pat, 200_000);
        let ours = search(&mut m, 0);
        assert!(m.steps <= m.limit + 1024, "budget overrun: {}", m.steps);
        let Ok(ours) = ours else {
            return; // malformed or over budget: an error, which is the point
        };
        let (ok, start, end): (bool, mlua::Value, mlua::Value) = find
            .call((
                lua.create_string(src).unwrap(),
                lua.create_string(pat).unwrap(),
            ))
            .unwrap();
        if !ok {
            return;
        }
        let theirs = match (start, end) {
            (mlua::Value::Integer(s), mlua::Value::Integer(e)) => {
                Some((s as usize - 1, e as usize))
            }
            _ => None,
        };
        assert_eq!(
            ours,
            theirs,
            "pattern {:?} on {:?}",
            String::from_utf8_lossy(pat),
            String::from_utf8_lossy(src)
        );
    });
    s.check();
}
