//! The fast MIME walk: splits the common shapes of mail into parts without
//! mail-parser's byte-at-a-time body loops, and gives up (`None`) on
//! anything else, so that the scanner falls back to mail-parser.
//!
//! The result is the list of parts mail-parser's `Message::parts` would
//! hold (same order, same indices, same headers, same decoded bodies) for
//! everything the scanner reads: the body variant, the content type, the
//! attachment name and the decoded content. mail-parser stays the reference:
//! headers are parsed by its own header parser (quoting, folding, RFC 2047
//! and RFC 2231 parameters, case-insensitive names), quoted-printable by its
//! own decoder and charsets by its own tables; only the boundary search
//! (`memmem` instead of a byte loop), the base64 decoder (whole groups at a
//! time, with mail-parser's table and its handling of everything else) and
//! the UTF-8 check (simdutf8) are ours. The tests below compare both walks
//! on common, generated, truncated, corrupted and fuzz-corpus messages; the
//! engine tests in `tests.rs` cover the shapes left to mail-parser.
//!
//! Given up on, for mail-parser to handle: attached messages
//! (`message/rfc822`, `message/global`) and `multipart/digest` (whose parts
//! default to messages), a multipart without a boundary or whose boundary
//! never appears, a part whose body is not ended by its boundary or does
//! not decode (mail-parser's "encoding problem" recovery), headers cut off
//! by the end of the message, and nesting deeper than [`MAX_NESTING`].

use std::borrow::Cow;
use std::sync::LazyLock;

use mail_parser::decoders::base64::BASE64_MAP;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::parsers::MessageStream;
use mail_parser::{
    Encoding, GetHeader, HeaderName, HeaderValue, MessageParser, MessagePart, MimeHeaders, PartType,
};

/// Open multiparts at once; deeper nesting goes to mail-parser (whose state
/// stack is on the heap), so the walk's own stack stays bounded.
pub(crate) const MAX_NESTING: usize = 64;

/// mail-parser's base64 table (`BASE64_MAP`, one row per position in a
/// group of four), copied into fixed-size rows: indexing a `[u32; 256]` by
/// a byte needs no bounds check, a `&[u32]` does.
static B64: LazyLock<[[u32; 256]; 4]> = LazyLock::new(|| {
    let mut t = [[u32::MAX; 256]; 4];
    for (row, src) in t.iter_mut().zip(BASE64_MAP.iter()) {
        for (v, s) in row.iter_mut().zip(src.iter()) {
            *v = *s;
        }
    }
    t
});

/// An open multipart: its part index, its boundary, its children so far.
struct Open {
    idx: usize,
    boundary: Vec<u8>,
    children: Vec<u32>,
}

/// Position of the first `--boundary` at or after `from`. mail-parser's
/// loops match `--` followed by the boundary anywhere, not only at a line
/// start, and so does this.
fn find_boundary(data: &[u8], from: usize, boundary: &[u8]) -> Option<usize> {
    let hay = data.get(from..)?;
    let mut needle = Vec::with_capacity(boundary.len() + 2);
    needle.extend_from_slice(b"--");
    needle.extend_from_slice(boundary);
    memchr::memmem::find(hay, &needle).map(|p| from + p)
}

/// The parts of `raw` as mail-parser lists them, or `None` to leave the
/// message to mail-parser.
pub(crate) fn parse(raw: &[u8]) -> Option<Vec<MessagePart<'_>>> {
    let conf = MessageParser::new();
    let mut s = MessageStream::new(raw);
    let mut parts: Vec<MessagePart> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    loop {
        let mut headers = Vec::new();
        if !s.parse_headers(&conf, &mut headers) {
            return None;
        }
        let idx = parts.len();
        if let Some(o) = open.last_mut() {
            o.children.push(u32::try_from(idx).ok()?);
        }
        let mut part = MessagePart {
            headers,
            is_encoding_problem: false,
            body: PartType::default(),
            encoding: Encoding::None,
            offset_header: 0,
            offset_body: 0,
            offset_end: 0,
        };
        // mail-parser's classification (`mime_type` in its message.rs).
        let ct = part.content_type();
        let (multipart, text, html) = match ct {
            None => (false, true, false),
            Some(ct) => match ct.ctype() {
                "multipart" if ct.subtype() == Some("digest") => return None,
                "multipart" => (true, false, false),
                "text" => (false, true, ct.subtype() == Some("html")),
                "message" if [Some("rfc822"), Some("global")].contains(&ct.subtype()) => {
                    return None
                }
                _ => (false, false, false),
            },
        };
        if multipart {
            let boundary = ct?.attribute("boundary")?.as_bytes().to_vec();
            // mail-parser treats an empty boundary as none.
            if boundary.is_empty() || open.len() >= MAX_NESTING {
                return None;
            }
            let p = find_boundary(raw, s.offset(), &boundary)?;
            s.skip_bytes(p + 2 + boundary.len() - s.offset());
            parts.push(part);
            open.push(Open {
                idx,
                boundary,
                children: Vec::new(),
            });
            s.skip_crlf();
            continue;
        }
        let decoder = ct
            .filter(|_| text)
            .and_then(|ct| ct.attribute("charset"))
            .and_then(|c| charset_decoder(c.as_bytes()));
        let boundary: &[u8] = open.last().map_or(b"", |o| &o.boundary);
        let start = s.offset();
        let bytes: Cow<[u8]> = match part
            .headers
            .header_value(&HeaderName::ContentTransferEncoding)
        {
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("base64") => {
                let (buf, next) = decode_base64(raw, start, boundary)?;
                s.skip_bytes(next - start);
                Cow::Owned(buf)
            }
            Some(HeaderValue::Text(e)) if e.eq_ignore_ascii_case("quoted-printable") => {
                let (end, bytes) = s.decode_quoted_printable_mime(boundary);
                if end == usize::MAX {
                    return None;
                }
                bytes
            }
            _ if boundary.is_empty() => {
                s.seek_end();
                Cow::Borrowed(&raw[start..])
            }
            _ => {
                let p = find_boundary(raw, start, boundary)?;
                // The line break before the boundary belongs to it.
                let end = if p > start && raw[p - 1] == b'\n' {
                    if p - 1 > start && raw[p - 2] == b'\r' {
                        p - 2
                    } else {
                        p - 1
                    }
                } else {
                    p
                };
                s.skip_bytes(p + 2 + boundary.len() - start);
                Cow::Borrowed(&raw[start..end])
            }
        };
        part.body = if text {
            let text: Cow<str> = match (bytes, decoder) {
                (Cow::Owned(v), Some(d)) => d(&v).into(),
                (Cow::Owned(v), None) => String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                    .into(),
                (Cow::Borrowed(b), Some(d)) => d(b).into(),
                // A validity check first: the same result as
                // `from_utf8_lossy`, many times faster on valid text (simdutf8
                // checks 32 bytes a step; prose with accents defeats std's
                // ASCII fast path).
                (Cow::Borrowed(b), None) => match simdutf8::basic::from_utf8(b) {
                    Ok(t) => Cow::Borrowed(t),
                    Err(_) => String::from_utf8_lossy(b),
                },
            };
            if html {
                PartType::Html(text)
            } else {
                PartType::Text(text)
            }
        } else {
            PartType::Binary(bytes)
        };
        parts.push(part);
        if open.is_empty() {
            // A single-part message: its body ran to the end.
            return Some(parts);
        }
        // After a boundary: another part, or `--` closing the multipart
        // (then on to the enclosing multipart's next boundary).
        while s.is_multipart_end() {
            let Some(done) = open.pop() else {
                return Some(parts);
            };
            parts[done.idx].body = PartType::Multipart(done.children);
            let Some(outer) = open.last() else {
                return Some(parts);
            };
            match find_boundary(raw, s.offset(), &outer.boundary) {
                Some(p) => s.skip_bytes(p + 2 + outer.boundary.len() - s.offset()),
                None => {
                    // mail-parser ends here and closes what is still open.
                    while let Some(o) = open.pop() {
                        parts[o.idx].body = PartType::Multipart(o.children);
                    }
                    return Some(parts);
                }
            }
        }
    }
}

/// mail-parser's base64 body decoder (`decode_base64_mime`), with a fast
/// path for whole groups of four alphabet bytes: decodes from `start` up to
/// `--boundary` (or the end when `boundary` is empty) and returns the bytes
/// and the offset just after the boundary. `None` where mail-parser reports
/// an encoding problem: a byte outside the alphabet, `=`, whitespace and
/// lone dashes, `--` not followed by the boundary, or no boundary at all.
fn decode_base64(data: &[u8], start: usize, boundary: &[u8]) -> Option<(Vec<u8>, usize)> {
    const INVALID: u32 = 0x01ff_ffff;
    let mut buf = Vec::with_capacity((data.len() - start) / 4 * 3);
    let mut chunk: u32 = 0;
    let mut count: usize = 0;
    let mut last = b'\n';
    let t: &[[u32; 256]; 4] = &B64;
    let group = |g: &[u8]| {
        t[0][g[0] as usize] | t[1][g[1] as usize] | t[2][g[2] as usize] | t[3][g[3] as usize]
    };
    let mut i = start;
    while i < data.len() {
        if count == 0 {
            // Valid table entries are below 2^24 and invalid ones at least
            // INVALID, so an OR of entries is below INVALID only if all are
            // valid. Two groups a step, then one.
            while let Some(g) = data.get(i..i + 8) {
                let (v, w) = (group(&g[..4]), group(&g[4..]));
                if v | w >= INVALID {
                    break;
                }
                let (v, w) = (v.to_le_bytes(), w.to_le_bytes());
                buf.extend_from_slice(&[v[0], v[1], v[2], w[0], w[1], w[2]]);
                last = g[7];
                i += 8;
            }
            while let Some(g) = data.get(i..i + 4) {
                let v = group(g);
                if v >= INVALID {
                    break;
                }
                buf.extend_from_slice(&v.to_le_bytes()[..3]);
                last = g[3];
                i += 4;
            }
            if i >= data.len() {
                break;
            }
        }
        let ch = data[i];
        i += 1;
        let v = t[count][ch as usize];
        if v < INVALID {
            count = (count + 1) & 3;
            if count == 1 {
                chunk = v;
            } else {
                chunk |= v;
                if count == 0 {
                    buf.extend_from_slice(&chunk.to_le_bytes()[..3]);
                }
            }
        } else {
            match ch {
                b'=' => {
                    match count {
                        1 | 2 => buf.push(chunk.to_le_bytes()[0]),
                        3 => buf.extend_from_slice(&chunk.to_le_bytes()[..2]),
                        _ => {}
                    }
                    count = 0;
                }
                b'\n' | b' ' | b'\t' | b'\r' => {}
                b'-' if last == b'-' => {
                    return (!boundary.is_empty() && data[i..].starts_with(boundary))
                        .then(|| (buf, i + boundary.len()));
                }
                b'-' => {}
                _ => return None,
            }
        }
        last = ch;
    }
    boundary.is_empty().then_some((buf, data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the scanner reads of each part.
    fn summary(parts: &[MessagePart]) -> Vec<String> {
        parts
            .iter()
            .map(|p| {
                let ct = p
                    .content_type()
                    .map(|c| format!("{}/{:?}", c.ctype(), c.subtype()));
                let body = match &p.body {
                    PartType::Multipart(c) => format!("multipart {c:?}"),
                    PartType::Text(t) => format!("text {t:?}"),
                    PartType::Html(t) => format!("html {t:?}"),
                    PartType::Binary(b) | PartType::InlineBinary(b) => format!("binary {b:?}"),
                    PartType::Message(m) => format!("message {}", m.parts.len()),
                };
                format!("{ct:?} {:?} {body}", p.attachment_name())
            })
            .collect()
    }

    /// Whether the fast walk took `raw`; when it did, it must agree with
    /// mail-parser.
    fn agrees(raw: &[u8]) -> bool {
        let Some(fast) = parse(raw) else {
            return false;
        };
        let reference = MessageParser::new()
            .parse(raw)
            .unwrap_or_else(|| panic!("mail-parser refused {:?}", String::from_utf8_lossy(raw)));
        assert_eq!(
            summary(&fast),
            summary(&reference.parts),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        true
    }

    const HDR: &str = "From: a@example.org\r\nSubject: t\r\nMIME-Version: 1.0\r\n";

    fn b64(data: &[u8]) -> String {
        use base64::Engine as _;
        let s = base64::engine::general_purpose::STANDARD.encode(data);
        s.as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect()
    }

    /// Messages of the shapes the fast walk must take, each checked.
    fn common() -> Vec<Vec<u8>> {
        let zip_like: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        vec![
            // Single part, no content type: text/plain.
            format!("{HDR}\r\nhello 4111 1111 1111 1111\r\n").into_bytes(),
            // Single part, base64, LF line ends.
            format!(
                "{HDR}Content-Type: application/octet-stream\nContent-Transfer-Encoding: BASE64\n\n{}",
                b64(&zip_like).replace("\r\n", "\n")
            )
            .into_bytes(),
            // Multipart with quoted boundary, 8bit utf-8, latin-1 charset,
            // quoted-printable, base64 attachment with RFC 2047 and RFC 2231
            // names, folded and lower-case headers, preamble and epilogue.
            format!(
                "{HDR}content-type: Multipart/Mixed;\r\n boundary=\"b 1:x\"\r\n\r\npreamble\r\n\
                 --b 1:x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                 délai Überweisung\r\n\
                 --b 1:x\r\nContent-Type: text/plain; charset=\"ISO-8859-1\"\r\n\r\ncaf@E9@\r\n\
                 --b 1:x\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
                 <p>caf=C3=A9 soft=\r\nbreak</p>\r\n\
                 --b 1:x\r\nContent-Type: application/pdf;\r\n\tname=\"=?utf-8?B?cmFwcG9ydC5wZGY=?=\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}\
                 --b 1:x\r\nContent-Type: application/zip\r\nContent-Disposition: attachment;\r\n \
                 filename*=UTF-8''r%C3%A9sum%C3%A9.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
                 --b 1:x--\r\nepilogue\r\n",
                b64(b"%PDF-1.4 xx"),
                b64(&zip_like)
            )
            // The latin-1 byte for é, which no Rust string holds.
            .replace("@E9@", "\u{1}")
            .bytes()
            .map(|b| if b == 1 { 0xe9 } else { b })
            .collect(),
            // Nested multiparts, two levels, and a closing line with trailing blanks.
            format!(
                "{HDR}Content-Type: multipart/mixed; boundary=OUT\r\n\r\n\
                 --OUT\r\nContent-Type: multipart/alternative; boundary=IN\r\n\r\n\
                 --IN\r\nContent-Type: text/plain\r\n\r\nplain\r\n\
                 --IN\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n\
                 --IN--  \r\nbetween\r\n\
                 --OUT\r\nContent-Type: multipart/related; boundary=\"IN2\"\r\n\r\n\
                 --IN2\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
                 --IN2--\r\n\
                 --OUT--\r\n",
                b64(b"\x89PNG\r\n\x1a\nxxxx")
            )
            .into_bytes(),
            // A base64 body with `=` inside, blanks and a lone dash.
            format!(
                "{HDR}Content-Type: multipart/mixed; boundary=Z\r\n\r\n--Z\r\n\
                 Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                 aGk=aGk= aGVs\tbG8-\r\nYQ\r\n--Z--\r\n"
            )
            .into_bytes(),
            // A boundary not at a line start, and a part that is empty.
            format!(
                "{HDR}Content-Type: multipart/mixed; boundary=Q\r\n\r\n--Q\r\n\r\nab--Q\r\n\r\n\r\n--Q--"
            )
            .into_bytes(),
            // The inner multipart's closing boundary is missing: both end there.
            format!(
                "{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n\
                 Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\r\none\r\n--B--\r\n"
            )
            .into_bytes(),
        ]
    }

    #[test]
    fn common_shapes_take_the_fast_walk_and_agree() {
        for (i, m) in common().iter().enumerate() {
            assert!(agrees(m), "message {i} was left to mail-parser");
        }
    }

    /// Shapes left to mail-parser (each is checked through the scanner's
    /// fallback by the engine tests).
    #[test]
    fn unusual_shapes_are_left_to_mail_parser() {
        let cases = [
            // Attached message.
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody\r\n--A--\r\n"),
            // Digest.
            format!("{HDR}Content-Type: multipart/digest; boundary=A\r\n\r\n--A\r\n\r\nSubject: x\r\n\r\nbody\r\n--A--\r\n"),
            // Missing final boundary.
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\nno end"),
            // Boundary never appears / empty / absent.
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\nno parts\r\n"),
            format!("{HDR}Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n\r\nx\r\n----\r\n"),
            format!("{HDR}Content-Type: multipart/mixed\r\n\r\n--A\r\n\r\nx\r\n--A--\r\n"),
            // Base64 that does not decode: a bad byte, `--` that is not the boundary.
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Transfer-Encoding: base64\r\n\r\naGk*\r\n--A--\r\n"),
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Transfer-Encoding: base64\r\n\r\naGk--B\r\n--A--\r\n"),
            // Headers cut off.
            format!("{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\nContent-Type: text/plain"),
        ];
        for c in &cases {
            assert!(!agrees(c.as_bytes()), "{c:?}");
        }
    }

    #[test]
    fn nesting_past_the_cap_is_left_to_mail_parser() {
        let deep = |levels: usize| {
            let mut m = String::from(HDR);
            for i in 0..levels {
                m.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
                ));
            }
            m.push_str("\r\ninnermost\r\n");
            for i in (0..levels).rev() {
                m.push_str(&format!("--b{i}--\r\n"));
            }
            m.into_bytes()
        };
        assert!(agrees(&deep(MAX_NESTING)));
        assert!(!agrees(&deep(MAX_NESTING + 1)));
        assert!(!agrees(&deep(5000)));
    }

    /// Every prefix of each common message and single-byte corruptions of
    /// it: wherever the fast walk takes one, it agrees with mail-parser.
    #[test]
    fn truncated_and_corrupted_messages_agree() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let junk = b"-\r\n=\t :;\"A=-Zb\x80\xff";
        let (mut tried, mut taken) = (0, 0);
        for m in common() {
            for cut in 0..m.len() {
                tried += 1;
                taken += usize::from(agrees(&m[..cut]));
            }
            for _ in 0..1500 {
                let mut c = m.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % c.len() as u64) as usize;
                    c[at] = junk[(next() % junk.len() as u64) as usize];
                }
                tried += 1;
                taken += usize::from(agrees(&c));
            }
        }
        // Not vacuous: a good share of the damaged messages took the fast walk.
        assert!(taken * 4 > tried, "{taken} of {tried}");
    }

    /// The fuzz seeds and known inputs, whole and cut short.
    #[test]
    fn fuzz_inputs_agree() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["corpus/dlp", "regressions/dlp", "known/dlp"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let m = std::fs::read(e.path()).unwrap();
                for cut in 0..=m.len() {
                    agrees(&m[..cut]);
                }
                n += 1;
            }
        }
        assert!(n > 0, "no fuzz inputs found");
    }

    #[test]
    fn base64_matches_mail_parser_on_generated_bodies() {
        let alphabet = b"QUJDabc0129+/=== \t\r\n\n-";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let mut body = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for _ in 0..x % 40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.push(alphabet[(x >> 32) as usize % alphabet.len()]);
            }
            let mut m = format!(
                "{HDR}Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n\
                 Content-Transfer-Encoding: base64\r\nContent-Type: application/x\r\n\r\n"
            )
            .into_bytes();
            m.extend_from_slice(&body);
            m.extend_from_slice(b"\r\n--A--\r\n");
            agrees(&m);
            // And as a single part, decoded to the end.
            let mut single = format!("{HDR}Content-Transfer-Encoding: base64\r\n\r\n").into_bytes();
            single.extend_from_slice(&body);
            agrees(&single);
        }
    }
}
