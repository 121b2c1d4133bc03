//! Compiler tests: diagnostics for every error class with exact positions,
//! golden Lua for corpus files, deep nesting refused (random input: tests/fuzz.rs).

use std::path::{Path, PathBuf};

use crate::policy::Hook;

use super::*;

fn diags(src: &str) -> Vec<String> {
    match compile_str(Path::new("p.axigen"), src) {
        Ok(c) => c.warnings.iter().map(|d| d.to_string()).collect(),
        Err(d) => d.iter().map(|d| d.to_string()).collect(),
    }
}

fn nested_ifs(n: usize) -> String {
    let mut s = String::from("event onConnect {\n");
    for i in 0..n {
        s.push_str(&format!(
            "{}if (is (smtpPort, \"25\")) {{\n",
            "\t".repeat(i + 1)
        ));
    }
    for i in (0..n).rev() {
        s.push_str(&format!("{}}}\n", "\t".repeat(i + 1)));
    }
    s.push_str("}\n");
    s
}

fn nested_nots(n: usize) -> String {
    format!(
        "event onConnect {{\n\tif ({}is (smtpPort, \"25\"){}) {{ }}\n}}\n",
        "not (".repeat(n),
        ")".repeat(n)
    )
}

const CASES: &[(&str, &str)] = &[
    ("syntax", "event onConnect {\n\tset (smtpAction \"reject\");\n\tcall (foo;\n}\nevent onEhlo {\n\tiff (is (ehloHost, \"b\")) { }\n\tset (smtpExplanation, \"x\")\n}\nbogus\nevent onMailFrom { set (smtpAction, \"unterminated); }\n"),
    ("unknown event", "event onConect {\n}\n"),
    ("undefined method", "event onConnect {\n\tcall (nothere);\n}\n"),
    ("recursion", "event onConnect { call (a); }\nmethod a {\n\tcall (b);\n}\nmethod b {\n\tif (is (smtpPort, \"25\")) {\n\t\tcall (A);\n\t}\n}\nmethod self { call (self); }\n"),
    ("read-only", "event onConnect {\n\tset (remoteSmtpIp, \"1.2.3.4\");\n}\nevent onRcptTo { call (m); }\nevent onDataReceived { call (m); }\nmethod m {\n\tset (maxRcptCount, \"5\");\n}\n"),
    ("unknown in event", "event onConnect {\n\tif (is (mailFrom, \"x\")) { set (a, \"%currentRcpt%\"); }\n\tif (is (neverSet, \"\")) { }\n}\n"),
    ("bad regex", "event onRcptTo {\n\tif (match (currentRcpt, \"^(a|b\")) { }\n}\n"),
    ("bad ip range", "event onConnect {\n\tif (anyOf (ipRange (remoteSmtpIp, \"10.0.0.0/33\"),\n\t\tipRange (remoteSmtpIp, \"10.0.0.9-10.0.0.1\"),\n\t\tiprange (remoteSmtpIp, \"10.0.0.0/255.0.255.0\"), ipRange (remoteSmtpIp, \"bogus\"))) { }\n}\n"),
    ("arg count", "event onConnect {\n\tif (is (smtpPort)) { }\n\tset (smtpAction);\n\tif (not (is (smtpPort, \"1\"), is (smtpPort, \"2\"))) { }\n\tcall (a, b);\n\tif (allOf ()) { }\n}\n"),
    ("misc", "event onConnect { export (nobody); }\nevent onconnect { }\nmethod addHeader { }\n"),
];

/// Every error class, with the exact `file:line:col` of each diagnostic.
#[test]
fn diagnostics_every_class() {
    let expected: &[&[&str]] = &[
        // syntax
        &[
            "p.axigen:2:18: error: expected `,` or `)` in argument list, found a string",
            "p.axigen:3:11: error: expected `,` or `)` in argument list, found `;`",
            "p.axigen:6:2: error: unknown statement `iff`: expected set, call, export, return, if or switch",
            "p.axigen:8:1: error: expected `;` after `set (…)`, found `}`",
            "p.axigen:9:1: error: expected `event` or `method`, found `bogus`",
            "p.axigen:10:37: error: unterminated string (missing closing `\"`)",
            "p.axigen:11:1: error: expected `,` or `)` in argument list, found end of file",
            "p.axigen:11:1: error: expected `}` to close the block, found end of file",
        ],
        // unknown event
        &[
            "p.axigen:1:7: error: unknown event `onConect` (events: onConnect, onEhlo, onMailFrom, onRcptTo, onHeadersReceived, onBodyChunk, onDataReceived, onProcessing, onRelay, onDeliverySuccess, onDeliveryFailure, onTemporaryDeliveryFailure)",
        ],
        // undefined method
        &[
            "p.axigen:2:8: error: call of undefined method `nothere` (define `method nothere { … }` in this file, or call a predefined method)",
        ],
        // recursion
        &[
            "p.axigen:7:9: error: recursive call of method `A` (a → b → a); methods cannot call themselves",
            "p.axigen:10:21: error: recursive call of method `self` (self → self); methods cannot call themselves",
        ],
        // read-only
        &[
            "p.axigen:2:7: error: `remoteSmtpIp` is read-only in onConnect; it cannot be set",
            "p.axigen:7:7: error: `maxRcptCount` is read-only in onDataReceived; it cannot be set (method m is called from onDataReceived)",
        ],
        // unknown in event
        &[
            "p.axigen:2:10: warning: `mailFrom` is never known in onConnect; it reads as \"\"",
            "p.axigen:2:38: warning: `currentRcpt` is never known in onConnect; it reads as \"\"",
            "p.axigen:3:10: warning: `neverSet` is not an Axigen variable and is never set in this file; it reads as \"\"",
        ],
        // bad regex
        &[
            "p.axigen:2:26: error: bad regular expression \"^(a|b\": unclosed group",
        ],
        // bad ip range
        &[
            "p.axigen:2:36: error: bad IP range \"10.0.0.0/33\": prefix length 33 is more than 32",
            "p.axigen:3:26: error: bad IP range \"10.0.0.9-10.0.0.1\": the first address is greater than the second",
            "p.axigen:4:26: error: bad IP range \"10.0.0.0/255.0.255.0\": \"255.0.255.0\" is not a valid netmask",
            "p.axigen:4:74: error: bad IP range \"bogus\": \"bogus\" is not an IP address",
        ],
        // arg count
        &[
            "p.axigen:2:6: error: `is` takes 2 arguments (variable, value), found 1",
            "p.axigen:3:2: error: `set` takes 2 arguments, found 1: set (variable, value)",
            "p.axigen:4:6: error: `not` takes 1 condition, found 2",
            "p.axigen:5:2: error: `call` takes 1 argument, found 2: call (method)",
            "p.axigen:6:6: error: `allOf` needs at least 1 condition",
        ],
        // misc
        &[
            "p.axigen:1:27: error: export of `nobody`, which is never set in this file",
            "p.axigen:2:7: error: event onConnect is defined twice (first at line 1)",
            "p.axigen:3:8: error: method `addHeader` redefines the predefined method addHeader",
        ],
        // nested ifs
        &[
            "p.axigen:18:18: error: `if` nested more than 16 levels deep",
        ],
        // nested nots
        &[
            "p.axigen:2:86: error: `not` nested more than 16 levels deep",
        ],
        // ok16
        &[
        ],
    ];
    let mut sources: Vec<String> = CASES.iter().map(|(_, s)| s.to_string()).collect();
    sources.push(nested_ifs(17));
    sources.push(nested_nots(17));
    sources.push(nested_ifs(16));
    assert_eq!(sources.len(), expected.len());
    for (src, want) in sources.iter().zip(expected) {
        assert_eq!(diags(src), *want, "source:\n{src}");
    }
}

/// The generated Lua of the corpus files, compared with `tests/axigen/*.lua`.
/// `UPDATE_GOLDEN=1 cargo test` rewrites the expected files.
#[test]
fn golden_lua() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for name in [
        "basic",
        "methods",
        "routing_smarthost",
        "routing_rcpt",
        "processing",
    ] {
        let src = PathBuf::from(format!("tests/axigen/{name}.axigen"));
        let golden = PathBuf::from(format!("tests/axigen/{name}.lua"));
        let got = translate(&src).unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
        assert!(
            got == want,
            "{} differs from {} (UPDATE_GOLDEN=1 regenerates):\n{got}",
            src.display(),
            golden.display()
        );
    }
}

#[test]
fn map_error_points_at_the_policy() {
    let src = "event onConnect {\n\tset (a, \"1\");\n\n\tset (b, \"2\");\n}\n";
    let c = compile_str(Path::new("x.axigen"), src).unwrap();
    let h = c.hook(Hook::Connect).unwrap();
    let lua_line = h
        .lua
        .lines()
        .position(|l| l.contains("ax:set(\"b\""))
        .unwrap() as u32
        + 1;
    let msg = format!(
        "x.axigen:{lua_line}: boom\nstack traceback:\n\t[C]: in ?\n\tlib-lua/axigen.lua:10: in function 'get'\n\tx.axigen:{lua_line}: in function <x.axigen:1>"
    );
    let mapped = map_error(&c, Hook::Connect, &msg);
    assert!(mapped.starts_with("x.axigen:4: boom"), "{mapped}");
    assert!(mapped.contains("lib-lua/axigen.lua:10:"), "{mapped}");
    assert!(mapped.contains("\tx.axigen:4: in function"), "{mapped}");
    // Every generated line with a source says where it came from.
    for (lua, ax) in &h.source_map {
        let line = h.lua.lines().nth(*lua as usize - 1).unwrap();
        assert!(line.ends_with(&format!("-- x.axigen:{ax}")), "{line}");
    }
}

#[test]
fn case_insensitive_names_and_literals() {
    let src = "EVENT OnConnect {\n\tIF (IpRange (REMOTESMTPIP, \"2001:db8::/32\")) { SET (SmtpAction, \"reject\"); }\n\tif (is (smtpPort, 25)) { Call (M1); }\n}\nmethod m1 { set (x, \"multi\r\nline \\\"q\\\" \\\\\"); }\n";
    let c = compile_str(Path::new("c.axigen"), src).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let lua = &c.hook(Hook::Connect).unwrap().lua;
    assert!(
        lua.contains("ax:ipRange(\"remoteSmtpIp\", {\"2001:db8::/32\"})"),
        "{lua}"
    );
    assert!(lua.contains("ax:set(\"smtpAction\", \"reject\")"), "{lua}");
    assert!(lua.contains("M.m1()"), "{lua}");
    assert!(lua.contains("\"multi\\r\\nline \\\"q\\\" \\\\\""), "{lua}");
}

/// Deep nesting is refused, not a stack overflow. (Random input is
/// `tests/fuzz.rs`'s `axigen` target, seeded from the corpus under
/// `fuzz/corpus/axigen/`.)
#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!(
        "event onConnect {{ if ({}) {{ }} }}",
        "not (".repeat(100_000)
    );
    assert!(compile_str(Path::new("d.axigen"), &deep).is_err());
    let deep = format!("event onConnect {}", "{ if (is (a, \"b\")) ".repeat(50_000));
    assert!(compile_str(Path::new("d.axigen"), &deep).is_err());
}

// ------------------------------------------------ scanners and the server

fn diags_in(src: &str, env: CompileEnv) -> Vec<String> {
    match compile_str_in(Path::new("p.axigen"), src, env) {
        Ok(c) => c.warnings.iter().map(|d| d.to_string()).collect(),
        Err(d) => d.iter().map(|d| d.to_string()).collect(),
    }
}

/// GeoIP without a country database: one warning, at the first use in the
/// file, only when the environment says there is no database.
#[test]
fn geoip_without_database_warns_once_at_the_first_use() {
    let src = "method geo {\n\tcall (checkGeoIp);\n}\nevent onConnect {\n\tif (is (GeoIPResult, \"\")) { }\n\tcall (geo);\n}\nevent onEhlo {\n\tif (is (isGeoIPBanned, \"yes\")) { }\n}\n";
    let d = diags_in(
        src,
        CompileEnv {
            geoip: false,
            ..Default::default()
        },
    );
    let geo: Vec<&String> = d.iter().filter(|d| d.contains("GeoIP")).collect();
    assert_eq!(geo.len(), 1, "{d:?}");
    assert!(
        geo[0].starts_with("p.axigen:2:8: warning: GeoIP has no country database"),
        "{d:?}"
    );
    assert!(geo[0].contains("GeoIPResult reads \"\" and isGeoIPBanned \"no\""));
    assert!(diags_in(
        src,
        CompileEnv {
            geoip: true,
            ..Default::default()
        }
    )
    .is_empty());
    assert!(diags(src).is_empty(), "no config: everything is assumed");
    // A method no event calls never runs: no warning.
    let unused = "method geo {\n\tcall (checkGeoIp);\n}\nevent onConnect { }\n";
    assert!(diags_in(
        unused,
        CompileEnv {
            geoip: false,
            ..Default::default()
        }
    )
    .is_empty());
}

#[test]
fn checkdnsbl_without_dnsblserver_warns() {
    let d = diags("event onMailFrom {\n\tcall (checkDNSBL);\n}\n");
    assert_eq!(
        d,
        ["p.axigen:2:8: warning: checkDNSBL in onMailFrom but DNSBLServer is never set there or in an earlier event; DNSBLResult is always \"\" (set (DNSBLServer, \"zone\") before the call)"]
    );
    // Set in an earlier event (a session setting) or through a method: fine.
    assert!(diags("event onConnect {\n\tset (DNSBLServer, \"bl.test\");\n}\nevent onMailFrom {\n\tcall (checkDNSBL);\n}\n").is_empty());
    assert!(diags("method z {\n\tset (DNSBLServer, \"bl.test\");\n}\nevent onRcptTo {\n\tcall (z);\n\tcall (checkDNSBL);\n}\n").is_empty());
    // Set only in a later event: the earlier call finds nothing.
    let d = diags("event onConnect {\n\tcall (checkDNSBL);\n}\nevent onRcptTo {\n\tset (DNSBLServer, \"bl.test\");\n}\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("checkDNSBL in onConnect"), "{d:?}");
}

#[test]
fn unknown_actions_and_body_chunk_warn() {
    let d = diags("event onConnect {\n\tset (smtpAction, \"drop\");\n\tset (ActionGeoIPBan, \"Reject\");\n\tset (smtpAction, \"\");\n}\nevent onBodyChunk {\n}\n");
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].starts_with("p.axigen:2:19: warning: `smtpAction` \"drop\" is not an action (accept, reject, tmpreject, abort)"),
        "{d:?}"
    );
    assert!(
        d[1].starts_with(
            "p.axigen:6:7: warning: onBodyChunk runs once, at end of data, over the whole body"
        ),
        "{d:?}"
    );
}

fn explained(src: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.axigen");
    std::fs::write(&p, src).unwrap();
    let out = explain_file(&p).unwrap_or_else(|d| panic!("{d:?}"));
    out.replace(&p.display().to_string(), "e.axigen")
}

/// Each event: its hook and stage; the methods it reaches (through custom
/// methods too); what its sets do, session settings apart; and the
/// approximations.
#[test]
fn explain_lists_hooks_effects_and_approximations() {
    let out = explained(
        "event onConnect {\n\tset (smtpGreeting, \"hi\");\n\tcall (limits);\n\tcall (checkGeoIp);\n}\n\
         method limits {\n\tset (maxDataSize, \"100\");\n\tset (x, \"1\");\n}\n\
         event onRcptTo {\n\tif (is (isOverquota, \"yes\")) { set (smtpAction, \"reject\"); }\n\tcall (executeFilters);\n}\n\
         event onBodyChunk {\n\tset (HeaderName, \"X-A\");\n\tcall (addHeader);\n}\n\
         event onRelay {\n\tset (remoteSmtpHost, \"[192.0.2.1]\");\n\tset (localInterface, \"192.0.2.9\");\n}\n",
    );
    let expect = [
        "onConnect (e.axigen:1) → hook `connect`, when the client connects, before the 220 banner",
        "    limits (line 3): custom method (line 6), its statements are listed here",
        "    checkGeoIp (line 4): the client's country ([geoip] country_db)",
        "  sets (take effect):\n    smtpGreeting (line 2): the 220 banner",
        "  session settings:\n    maxDataSize (line 7, in method limits): message size limit in KB: EHLO's SIZE, MAIL FROM SIZE=",
        "  custom variables (this event only, unless exported): x (line 8, in method limits)",
        "onRcptTo (e.axigen:10) → hook `rcptto`, at each RCPT TO",
        "    smtpAction (line 11): the verdict of this command",
        "    isOverquota is always \"no\" (Sluice has no mailbox quotas) (line 11)",
        "    executeFilters (line 12) runs Lua filters only",
        "onBodyChunk (e.axigen:14) → hook `eod`, at end of data, before onDataReceived (once over the whole body, not per chunk)",
        "    addHeader (line 16): header change (HeaderName / HeaderValue) of the queued message",
        "    onBodyChunk runs once, at end of data, over the whole body — not once per chunk",
        "onRelay (e.axigen:18) → hook `predelivery`, before each delivery attempt",
        "    remoteSmtpHost (line 19): onRelay setting, applied to this delivery",
        "    localInterface (line 20) is not applied",
        "Warnings:\n  e.axigen:14:7: warning: onBodyChunk runs once",
    ];
    for e in expect {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
    // Events in the order they run, whatever the file order.
    let c = out.find("\nonConnect").unwrap();
    let r = out.find("\nonRcptTo").unwrap();
    let b = out.find("\nonBodyChunk").unwrap();
    assert!(c < r && r < b, "{out}");
}

#[test]
fn explain_a_method_with_no_effect_and_errors() {
    let out =
        explained("event onConnect {\n\tcall (checkSenderMX);\n\tset (HeaderValue, \"v\");\n}\n");
    assert!(
        out.contains("    checkSenderMX (line 2): no effect in onConnect"),
        "{out}"
    );
    assert!(
        out.contains("sets with no effect in onConnect: HeaderValue (line 3)"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.axigen");
    std::fs::write(&p, "event onConnect {\n\tcall (nosuch);\n}\n").unwrap();
    let e = explain_file(&p).unwrap_err();
    assert!(e[0].to_string().contains(":2:"), "{e:?}");
}

/// A variable set in several places is one line with every place; check
/// results read without their method are said to be computed on demand.
#[test]
fn explain_groups_sets_and_names_implicit_checks() {
    let out = explained(
        "event onMailFrom {\n\tif (isCase (SPFResult, \"fail\")) { set (smtpAction, \"reject\"); }\n\tif (is (SPFResult, \"x\")) { set (smtpAction, \"tmpreject\"); }\n}\n",
    );
    assert!(
        out.contains("    smtpAction (line 2; line 3): the verdict of this command"),
        "{out}"
    );
    assert!(
        out.contains("  reads (computed on demand):\n    SPFResult (line 2; line 3): runs the SPF check (spf.check) on the first read"),
        "{out}"
    );
    let called = explained(
        "event onMailFrom {\n\tcall (checkSPF);\n\tif (isCase (SPFResult, \"fail\")) { }\n}\n",
    );
    assert!(!called.contains("computed on demand"), "{called}");
}
