//! Engine tests: messages, archives and bombs are built here, in memory.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use super::*;

// ---------- builders ----------

static BOUNDARY: AtomicUsize = AtomicUsize::new(0);

fn b64(data: &[u8]) -> String {
    let s = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(s.len() + s.len() / 38);
    for chunk in s.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

fn text_part(ctype: &str, body: &str) -> String {
    format!("Content-Type: {ctype}; charset=utf-8\r\n\r\n{body}\r\n")
}

fn attachment(ctype: &str, name: &str, data: &[u8]) -> String {
    format!(
        "Content-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; \
         filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64(data)
    )
}

fn rfc822_part(raw: &[u8]) -> String {
    format!(
        "Content-Type: message/rfc822\r\n\r\n{}\r\n",
        String::from_utf8_lossy(raw)
    )
}

fn multipart_body(parts: &[String]) -> (String, String) {
    let b = format!("=_b{}", BOUNDARY.fetch_add(1, Ordering::Relaxed));
    let mut body = String::from("This is a MIME message.\r\n");
    for p in parts {
        body.push_str(&format!("--{b}\r\n{p}"));
    }
    body.push_str(&format!("--{b}--\r\n"));
    (b, body)
}

/// A multipart/mixed message with these parts (each: headers, blank line, body).
fn message(parts: &[String]) -> Vec<u8> {
    let (b, body) = multipart_body(parts);
    format!(
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: test\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n{body}"
    )
    .into_bytes()
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn stored_zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn tar_gz_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, name, *data).unwrap();
    }
    let tar = t.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn engine() -> DlpEngine {
    DlpEngine::from_config(&BTreeMap::new()).unwrap()
}

fn custom(rules: serde_json::Value) -> Selection {
    let mut m = BTreeMap::new();
    for (name, v) in rules.as_object().unwrap() {
        m.insert(name.clone(), RuleSpec::from_json(name, v).unwrap());
    }
    Selection::Custom(m)
}

fn scan(raw: &[u8], sel: &Selection) -> ScanResult {
    engine().scan(raw, sel, &ScanOptions::default())
}

fn scan_partid(raw: &[u8], sel: &Selection) -> ScanResult {
    let opts = ScanOptions {
        partid: true,
        ..ScanOptions::default()
    };
    engine().scan(raw, sel, &opts)
}

fn places(r: &ScanResult, rule: &str) -> Vec<String> {
    r.matches
        .get(rule)
        .map(|v| v.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default()
}

const ELF: &[u8] = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00";
const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n";

// ---------- rule types ----------

#[test]
fn filename_matches_and_not() {
    let raw = message(&[
        text_part("text/plain", "hello"),
        attachment("application/octet-stream", "setup.EXE", b"plain bytes"),
    ]);
    let r = scan_partid(&raw, &custom(json!({"EXE": {"filename": ["/\\.exe$/i"]}})));
    assert_eq!(places(&r, "EXE"), ["2"]);
    let r = scan(&raw, &custom(json!({"EXE": {"filename": "/\\.exe$/"}})));
    assert!(
        r.matches.is_empty(),
        "case-sensitive pattern must not match: {r:?}"
    );
}

#[test]
fn hashes_match_parts_and_members() {
    let payload = b"known bad payload";
    let real1 = hex(&<sha1::Sha1 as sha1::Digest>::digest(payload));
    let real256 = hex(&<sha2::Sha256 as sha2::Digest>::digest(payload));
    let raw = message(&[
        attachment("application/octet-stream", "a.bin", payload),
        attachment(
            "application/zip",
            "b.zip",
            &zip_of(&[("dir/x.bin", payload)]),
        ),
    ]);
    let sel = custom(
        json!({"H1": {"sha1hash": [real1.to_uppercase()]}, "H256": {"sha256hash": real256}}),
    );
    let r = scan_partid(&raw, &sel);
    assert_eq!(places(&r, "H1"), ["1", "2:dir/x.bin"]);
    assert_eq!(places(&r, "H256"), ["1", "2:dir/x.bin"]);
    let other = "0".repeat(40);
    let r = scan(&raw, &custom(json!({"H1": {"sha1hash": other}})));
    assert!(r.matches.is_empty());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn contenttype_exact_wildcard_regex() {
    let raw = message(&[
        text_part("text/plain", "hi"),
        attachment("image/png", "p.png", b"\x89PNG\r\n\x1a\n...."),
    ]);
    for pat in ["image/png", "IMAGE/*", "/^image\\/p/"] {
        let r = scan_partid(&raw, &custom(json!({"CT": {"contenttype": pat}})));
        assert_eq!(places(&r, "CT"), ["2"], "pattern {pat}");
    }
    let r = scan(
        &raw,
        &custom(json!({"CT": {"contenttype": "application/pdf"}})),
    );
    assert!(r.matches.is_empty());
    // The container's declared type counts too.
    let r = scan_partid(
        &raw,
        &custom(json!({"CT": {"contenttype": "multipart/mixed"}})),
    );
    assert_eq!(places(&r, "CT"), ["0"]);
}

#[test]
fn filetype_uses_magic_not_declared_type() {
    // An ELF executable declared as a harmless PNG named .png, and a PDF as text/plain.
    let raw = message(&[
        attachment("image/png", "cat.png", ELF),
        attachment("application/octet-stream", "notes.txt", PDF),
    ]);
    let r = scan_partid(&raw, &Selection::Named(vec!["EXECUTABLE".into()]));
    assert_eq!(places(&r, "EXECUTABLE"), ["1"]);
    let r = scan_partid(
        &raw,
        &custom(
            json!({"PNG": {"filetype": "png"}, "PDF": {"filetype": ["pdf"]}, "IMG": {"contenttype": "image/*"}}),
        ),
    );
    assert!(!r.matched("PNG"), "declared png is not a png: {r:?}");
    assert_eq!(places(&r, "PDF"), ["2"]);
    assert_eq!(places(&r, "IMG"), ["1"]);
    let r = scan(
        &message(&[text_part("text/plain", "MZ is not an exe in text")]),
        &Selection::All,
    );
    assert!(!r.matched("EXECUTABLE"));
}

#[test]
fn content_regex_on_text_parts_and_text_members_only() {
    let raw = message(&[
        text_part("text/html", "<p>Project <b>Bluebird</b> launch</p>"),
        attachment(
            "application/zip",
            "d.zip",
            &zip_of(&[
                ("notes.md", b"bluebird again"),
                ("img.png", b"\x89PNG\r\n\x1a\n\x00bluebird"),
            ]),
        ),
    ]);
    let r = scan_partid(&raw, &custom(json!({"BB": {"content": "/bluebird/i"}})));
    assert_eq!(places(&r, "BB"), ["1", "2:notes.md"]);
    let r = scan(&raw, &custom(json!({"BB": {"content": "/redbird/i"}})));
    assert!(r.matches.is_empty());
}

#[test]
fn quoted_printable_and_charset_are_decoded() {
    let part = "Content-Type: text/plain; charset=iso-8859-1\r\n\
                Content-Transfer-Encoding: quoted-printable\r\n\r\n\
                Caf=E9 card 4111=20\r\n1111 1111 1111 end\r\n";
    let raw = message(&[part.to_string()]);
    let r = scan(&raw, &custom(json!({"CAFE": {"content": "/Café/"}})));
    assert!(r.matched("CAFE"), "{r:?}");
}

#[test]
fn size_rules() {
    let raw = message(&[attachment(
        "application/octet-stream",
        "big.bin",
        &[7u8; 5000],
    )]);
    let hit =
        custom(json!({"BIG": {"size": ">1000"}, "RANGE": {"size": {"min": 4000, "max": "5k"}}}));
    let r = scan(&raw, &hit);
    assert!(r.matched("BIG") && r.matched("RANGE"), "{r:?}");
    let r = scan(&raw, &custom(json!({"BIG": {"size": [">1M", "<10"]}})));
    assert!(!r.matched("BIG"), "{r:?}");
}

// ---------- built-in rules ----------

#[test]
fn creditcard_luhn_checked() {
    let yes = message(&[text_part(
        "text/plain",
        "Pay with 4111 1111 1111 1111 please",
    )]);
    let no = message(&[text_part(
        "text/plain",
        "Order 4111 1111 1111 1112, phone 0046701234567, id 1234567890123",
    )]);
    let sel = Selection::Named(vec!["CREDITCARD".into()]);
    assert_eq!(scan(&yes, &sel).rules(), ["CREDITCARD"]);
    assert!(scan(&no, &sel).matches.is_empty());
    let amex = message(&[text_part("text/plain", "amex 3782-822463-10005.")]);
    assert!(scan(&amex, &sel).matched("CREDITCARD"));
}

#[test]
fn iban_mod97_checked() {
    let sel = Selection::Named(vec!["IBAN".into()]);
    let yes = message(&[text_part(
        "text/plain",
        "IBAN: GB82 WEST 1234 5698 7654 32 THANKS",
    )]);
    assert!(scan(&yes, &sel).matched("IBAN"));
    let yes2 = message(&[text_part("text/plain", "to DE89370400440532013000.")]);
    assert!(scan(&yes2, &sel).matched("IBAN"));
    let no = message(&[text_part("text/plain", "IBAN: GB82 WEST 1234 5698 7654 33")]);
    assert!(!scan(&no, &sel).matched("IBAN"));
}

#[test]
fn private_keys_and_api_keys() {
    let raw = message(&[
        text_part("text/plain", "nothing here"),
        attachment(
            "application/octet-stream",
            "id_ed25519",
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        ),
        text_part("text/plain", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"),
    ]);
    let r = scan_partid(&raw, &Selection::All);
    assert_eq!(places(&r, "PRIVATEKEY"), ["2"]);
    assert_eq!(places(&r, "APIKEY"), ["3"]);
    assert_eq!(r.rules(), ["APIKEY", "PRIVATEKEY"]);
    let clean = message(&[text_part("text/plain", "BEGIN PUBLIC KEY; AKIA short")]);
    assert!(scan(&clean, &Selection::All).matches.is_empty());
}

#[test]
fn builtin_can_be_replaced_by_config() {
    let mut cfg = BTreeMap::new();
    cfg.insert("EXECUTABLE".to_string(), json!({"filename": "/\\.exe$/i"}));
    cfg.insert(
        "SECRET".to_string(),
        json!({"content": ["/top secret/i"], "description": "x"}),
    );
    let e = DlpEngine::from_config(&cfg).unwrap();
    let names: Vec<_> = e.rules().names().collect();
    assert_eq!(
        names,
        [
            "APIKEY",
            "CREDITCARD",
            "EXECUTABLE",
            "IBAN",
            "PRIVATEKEY",
            "SECRET"
        ]
    );
    let raw = message(&[attachment("application/octet-stream", "a.bin", ELF)]);
    let r = e.scan(&raw, &Selection::All, &ScanOptions::default());
    assert!(
        !r.matched("EXECUTABLE"),
        "replaced rule matches by name only"
    );
}

// ---------- archives, nesting, hostile input ----------

/// top (0) → message/rfc822 (1) → its multipart (2) → outer.zip (3) →
/// inner.zip (4) → secret.txt (5).
fn deep_message() -> Vec<u8> {
    let inner = zip_of(&[("secret.txt", b"TOPSECRET payload")]);
    let outer = zip_of(&[("readme.txt", b"hello"), ("inner.zip", &inner)]);
    let (b, body) = multipart_body(&[
        text_part("text/plain", "forwarded"),
        attachment("application/zip", "outer.zip", &outer),
    ]);
    let attached = format!(
        "From: x@example.com\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n{body}"
    );
    message(&[
        text_part("text/plain", "see attached"),
        rfc822_part(attached.as_bytes()),
    ])
}

#[test]
fn recursion_limit_at_and_past() {
    let raw = deep_message();
    let sel = custom(json!({"SECRET": {"content": "/TOPSECRET/"}}));
    let at = |limit| {
        let o = ScanOptions {
            recursion_limit: limit,
            partid: true,
            ..ScanOptions::default()
        };
        engine().scan(&raw, &sel, &o)
    };
    let r = at(5);
    assert_eq!(places(&r, "SECRET"), ["2.2:inner.zip:secret.txt"]);
    assert!(!r.error, "{r:?}");
    let r = at(4);
    assert!(!r.matched("SECRET"), "{r:?}");
    assert_eq!(places(&r, ERR_RECURSION_LIMIT), ["2.2:inner.zip"]);
    assert!(r.error);
    // The default limit (9) digs all the way.
    assert!(scan(&raw, &sel).matched("SECRET"));
}

#[test]
fn gzip_and_tar_are_opened() {
    let tgz = tar_gz_of(&[
        ("etc/motd", b"welcome"),
        (
            "keys/server.pem",
            b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
        ),
    ]);
    let raw = message(&[attachment("application/gzip", "backup.tar.gz", &tgz)]);
    let r = scan_partid(&raw, &Selection::All);
    assert_eq!(places(&r, "PRIVATEKEY"), ["1:backup.tar:keys/server.pem"]);
    let r = scan_partid(
        &raw,
        &custom(json!({"PEM": {"filename": "/^server\\.pem$/"}})),
    );
    assert_eq!(places(&r, "PEM"), ["1:backup.tar:keys/server.pem"]);
}

/// Set the "encrypted" general-purpose flag on every local and central header.
fn mark_encrypted(mut z: Vec<u8>) -> Vec<u8> {
    let mut i = 0;
    while i + 4 <= z.len() {
        match &z[i..i + 4] {
            b"PK\x03\x04" => z[i + 6] |= 1,
            b"PK\x01\x02" => z[i + 8] |= 1,
            _ => {}
        }
        i += 1;
    }
    z
}

#[test]
fn password_protected_zip() {
    let z = mark_encrypted(stored_zip_of(&[("invoice.exe", b"MZ\x90\x00garbled")]));
    let raw = message(&[attachment("application/zip", "locked.zip", &z)]);
    let opts = ScanOptions {
        partid: true,
        extended_result: true,
        ..ScanOptions::default()
    };
    let sel = custom(json!({"EXE": {"filename": "/\\.exe$/i"}, "MZ": {"filetype": "exe"}}));
    let r = engine().scan(&raw, &sel, &opts);
    assert_eq!(places(&r, ERR_PASSWORD_PROTECTED), ["1:invoice.exe"]);
    assert_eq!(places(&r, "EXE"), ["1:invoice.exe"], "names are visible");
    assert!(!r.matched("MZ"), "contents are not");
    assert!(r.error);
}

#[test]
fn zip_bomb_is_stopped_within_limits() {
    // 200 MiB of zeros deflates to ~200 KiB.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(false);
    w.start_file("zeros.bin", o).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..200 {
        w.write_all(&chunk).unwrap();
    }
    w.start_file("after.txt", o).unwrap();
    w.write_all(b"TOPSECRET after the bomb").unwrap();
    let bomb = w.finish().unwrap().into_inner();
    assert!(bomb.len() < 1 << 20, "bomb is {} bytes", bomb.len());
    let raw = message(&[attachment("application/zip", "bomb.zip", &bomb)]);
    let t = Instant::now();
    let r = scan_partid(&raw, &custom(json!({"SECRET": {"content": "/TOPSECRET/"}})));
    assert_eq!(places(&r, ERR_LIMIT_EXCEEDED), ["1:zeros.bin"]);
    assert_eq!(
        places(&r, "SECRET"),
        ["1:after.txt"],
        "the rest is still scanned"
    );
    assert!(r.error);
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn lying_size_and_member_count_caps() {
    let limits = Limits {
        max_archive_members: 3,
        max_member_bytes: 1000,
        ..Limits::default()
    };
    let e = DlpEngine::with_limits(&BTreeMap::new(), limits).unwrap();
    let many = zip_of(&[("1", b"a"), ("2", b"b"), ("3", b"c"), ("4", b"d")]);
    let big = stored_zip_of(&[("big.txt", &[b'x'; 2000])]);
    let raw = message(&[
        attachment("application/zip", "many.zip", &many),
        attachment("application/zip", "big.zip", &big),
    ]);
    let opts = ScanOptions {
        partid: true,
        ..ScanOptions::default()
    };
    let r = e.scan(&raw, &Selection::All, &opts);
    assert_eq!(places(&r, ERR_LIMIT_EXCEEDED), ["1", "2:big.txt"]);
}

#[test]
fn malformed_mime_does_not_stop_the_scan() {
    // No closing boundary, broken base64 (kept raw by the parser), a header
    // without a colon, and a truncated zip.
    let raw = b"From: a@example.org\r\nBroken header line\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n\
        --XX\r\nContent-Type: text/plain\r\n\r\ncard 4111111111111111\r\n\
        --XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        UEsDBBQAAAAIAGJyb2tlbg==\r\n\
        --XX\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        UEsDBAo=!!!notbase64@@@\r\n";
    let r = scan_partid(raw, &Selection::All);
    assert!(r.matched("CREDITCARD"), "{r:?}");
    assert!(
        r.matched(ERR_UNKNOWN_ERROR),
        "an unreadable zip is reported: {r:?}"
    );
    // A message without a body or headers at all.
    let r = scan(b"", &Selection::All);
    assert_eq!(r.rules(), [ERR_UNKNOWN_ERROR]);
    let r = scan(b"\r\n\r\n\x00\xff garbage", &Selection::All);
    assert!(!r.matched("CREDITCARD"));
}

#[test]
fn unknown_rule_name_is_an_error_rule() {
    let raw = message(&[text_part("text/plain", "4111 1111 1111 1111")]);
    let r = scan(
        &raw,
        &Selection::Named(vec!["NOPE".into(), "CREDITCARD".into()]),
    );
    assert_eq!(r.rules(), ["CREDITCARD", ERR_UNKNOWN_ERROR]);
}

#[test]
fn stop_on_match_stops() {
    let raw = message(&[
        text_part("text/plain", "4111 1111 1111 1111"),
        attachment("application/octet-stream", "x", ELF),
    ]);
    let all = scan(&raw, &Selection::All);
    assert_eq!(all.rules(), ["CREDITCARD", "EXECUTABLE"]);
    let o = ScanOptions {
        stop_on_match: true,
        ..ScanOptions::default()
    };
    let r = engine().scan(&raw, &Selection::All, &o);
    assert_eq!(r.rules(), ["CREDITCARD"]);
}

#[test]
fn timeout_on_pathological_input() {
    // 3000 parts of 8 KiB text against a costly regex.
    let text = "lorem ipsum dolor sit amet ".repeat(300);
    let parts: Vec<String> = (0..3000).map(|_| text_part("text/plain", &text)).collect();
    let raw = message(&parts);
    let sel = custom(
        json!({"SLOW": {"content": ["/(\\w+\\s+){5,}password[^\\n]*\\n\\d+/", "/\\p{Greek}{3}/"]}}),
    );
    let o = ScanOptions {
        timeout: Some(Duration::from_millis(20)),
        extended_result: true,
        ..ScanOptions::default()
    };
    let t = Instant::now();
    let r = engine().scan(&raw, &sel, &o);
    let took = t.elapsed();
    assert!(r.matched(ERR_TIMEOUT), "{r:?} after {took:?}");
    assert!(r.error);
    // Stopped long before scanning it all: a full scan takes much longer.
    let full = Instant::now();
    let r = engine().scan(&raw, &sel, &ScanOptions::default());
    assert!(!r.matched(ERR_TIMEOUT));
    assert!(took < full.elapsed(), "{took:?} vs {:?}", full.elapsed());
}

// ---------- config validation ----------

#[test]
fn config_errors_name_rule_and_field() {
    let cases = [
        (json!({"filename": "\\.exe$"}), "filename", "/regex/flags"),
        (json!({"content": "/(unclosed/"}), "content", "unclosed"),
        (json!({"content": "/x/q"}), "content", "unknown regex flag"),
        (json!({"sha1hash": "abc"}), "sha1hash", "40 hex digits"),
        (json!({"size": ">lots"}), "size", "not a size"),
        (json!({"filetype": "docx"}), "filetype", "unknown file type"),
        (json!({"filenmae": "/x/"}), "filenmae", "unknown rule type"),
        (json!({"validator": "luhn"}), "validator", "needs content"),
        (json!({"content": "/(?<=a)b/"}), "content", "look-around"),
        (
            json!({"content": "/a{1000}{1000}/"}),
            "content",
            "size limit",
        ),
    ];
    for (rule, field, why) in cases {
        let mut cfg = BTreeMap::new();
        cfg.insert("MYRULE".to_string(), rule.clone());
        let err = DlpEngine::from_config(&cfg).unwrap_err();
        let DlpError::Rule {
            rule: r, field: f, ..
        } = &err;
        assert_eq!((r.as_str(), f.as_str()), ("MYRULE", field), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("MYRULE") && msg.contains(why), "{rule}: {msg}");
    }
    let mut cfg = BTreeMap::new();
    cfg.insert("ERR_MINE".to_string(), json!({"content": "/x/"}));
    assert!(DlpEngine::from_config(&cfg)
        .unwrap_err()
        .to_string()
        .contains("reserved"));
}

// ---------- Lua shapes ----------

fn lua_eval(lua: &mlua::Lua, src: &str) -> mlua::Value {
    lua.load(src).eval().unwrap()
}

#[test]
fn lua_result_shapes() {
    let lua = mlua::Lua::new();
    let raw = message(&[
        text_part("text/plain", "4111 1111 1111 1111"),
        attachment("application/zip", "a.zip", &zip_of(&[("x.elf", ELF)])),
    ]);
    let e = engine();
    let run = |patterns: &str, options: &str| -> mlua::Value {
        let p = lua_eval(&lua, patterns);
        let o = lua_eval(&lua, options);
        let v = scan_dlp_lua(&lua, &e, &raw, p, o).unwrap();
        lua.globals().set("r", v.clone()).unwrap();
        v
    };
    let check = |expr: &str| {
        let ok: bool = lua.load(expr).eval().unwrap();
        assert!(ok, "{expr}");
    };
    run("return nil", "return nil");
    check("return #r == 2 and r[1] == 'CREDITCARD' and r[2] == 'EXECUTABLE'");
    run("return {'EXECUTABLE'}", "return {partid = true}");
    check("return r.EXECUTABLE[1] == '2:x.elf' and r.CREDITCARD == nil");
    run("return {}", "return {extended_result = true}");
    check("return r.error == false and #r.rules == 2");
    run(
        "return {EXE = {filename = {'/\\\\.elf$/i', '/\\\\.zip$/i'}}}",
        "return {partid = true, extended_result = true, timeout = 5, recursion_limit = 9}",
    );
    check("return r.error == false and r.rules.EXE[1] == '2' and r.rules.EXE[2] == '2:x.elf'");
    run(
        "return {'CREDITCARD'}",
        "return {recursion_limit = 0, extended_result = true}",
    );
    check("return r.error == true and r.rules[1] == 'ERR_RECURSION_LIMIT'");
}

#[test]
fn lua_argument_errors() {
    let lua = mlua::Lua::new();
    let v = lua_eval(&lua, "return {stop_on_mtach = true}");
    let err = options_from_lua(v).unwrap_err().to_string();
    assert!(err.contains("stop_on_mtach"), "{err}");
    let v = lua_eval(&lua, "return {timeout = 'soon'}");
    assert!(options_from_lua(v).is_err());
    let v = lua_eval(&lua, "return {R1 = {content = {'/(/'}}}");
    let sel = selection_from_lua(v).unwrap();
    assert!(engine()
        .compile_custom(match &sel {
            Selection::Custom(m) => m,
            _ => panic!("custom expected"),
        })
        .unwrap_err()
        .to_string()
        .contains("R1"));
    let v = lua_eval(&lua, "return {R1 = {sha1hash = 'zz'}}");
    let err = selection_from_lua(v).unwrap_err().to_string();
    assert!(err.contains("R1") && err.contains("sha1hash"), "{err}");
    let v = lua_eval(&lua, "return {'CREDITCARD', R1 = {size = '>1'}}");
    assert!(selection_from_lua(v).is_err());
    let v = lua_eval(&lua, "return 'CREDITCARD'");
    assert!(selection_from_lua(v).is_err());
    let o = options_from_lua(lua_eval(
        &lua,
        "return {stop_on_match = true, timeout = 1.5, recursion_limit = 3, partid = true}",
    ))
    .unwrap();
    assert_eq!(
        o,
        ScanOptions {
            stop_on_match: true,
            timeout: Some(Duration::from_millis(1500)),
            recursion_limit: 3,
            partid: true,
            extended_result: false
        }
    );
}

#[test]
fn many_parts_are_bounded_by_the_item_cap() {
    let limits = Limits {
        max_items: 100,
        ..Limits::default()
    };
    let engine = DlpEngine::with_limits(&BTreeMap::new(), limits).unwrap();
    let mut parts: Vec<String> = (0..1000)
        .map(|i| text_part("text/plain", &format!("part {i}")))
        .collect();
    parts.push(text_part("text/plain", "card 4111111111111111"));
    let r = engine.scan(&message(&parts), &Selection::All, &ScanOptions::default());
    assert_eq!(r.rules(), [ERR_LIMIT_EXCEEDED], "{r:?}");
}

#[test]
fn nesting_past_the_fast_walk_is_still_scanned() {
    // Deeper than the fast walk takes: mail-parser walks it, the recursion
    // limit reports it.
    let mut m = String::from("From: a@example.org\r\nMIME-Version: 1.0\r\n");
    for i in 0..300 {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("\r\ncard 4111111111111111\r\n");
    for i in (0..300).rev() {
        m.push_str(&format!("--b{i}--\r\n"));
    }
    let r = scan(m.as_bytes(), &Selection::All);
    assert_eq!(r.rules(), [ERR_RECURSION_LIMIT], "{r:?}");
}

#[test]
fn unterminated_and_undecodable_parts_are_still_scanned() {
    // No final boundary: the last part is mail-parser's, kept as text.
    let raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n\
        --XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
        --XX\r\nContent-Type: text/plain\r\n\r\ncard 4111111111111111\r\n";
    assert_eq!(scan(raw, &Selection::All).rules(), ["CREDITCARD"]);
    // Base64 with a stray byte is kept raw, and its text still read.
    let raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n\
        --XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
        card 4111111111111111 !\r\n--XX--\r\n";
    assert_eq!(scan(raw, &Selection::All).rules(), ["CREDITCARD"]);
}
