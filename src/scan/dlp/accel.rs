//! Fast paths for hot built-in `content` patterns.
//!
//! A pattern without a leading literal (the built-in IBAN pattern starts with
//! `[A-Z]{2}\d{2}`) makes the regex engine run its DFA over every byte of the
//! text, then search backwards for the start of each hit; on text full of
//! IBAN-shaped strings that dominated a scan. A [`ContentRegex`] whose pattern
//! is *exactly* such a built-in pattern (same text, same flags) finds the same
//! matches, in the same order, by other means:
//!
//! 1. a word-at-a-time scan for the bytes a match must start with, and
//! 2. at each candidate, either a hand-written matcher that follows the
//!    regex's leftmost-first, greedy semantics for pure-ASCII candidates, or
//!    the same regex anchored at the candidate and run on a window longer than
//!    any match (anything else, e.g. Unicode digits, which `\d` accepts).
//!
//! Any other pattern (a config or script rule, or a built-in replaced in
//! config) uses the plain regex. The tests compare both paths on generated
//! text.

use regex::bytes::Regex as BytesRegex;

/// The built-in IBAN `content` pattern, in `/regex/flags` form.
pub(crate) const IBAN_PATTERN: &str = r"/(?-u:\b)[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)/";

/// Longest IBAN match: 2 letters, 2 digits of up to 4 bytes (Unicode `\d`),
/// 30 repetitions of an optional space and a character.
const IBAN_MAX_MATCH: usize = 2 + 2 * 4 + 30 * 2;

/// A compiled `content` pattern.
#[derive(Debug, Clone)]
pub(crate) struct ContentRegex {
    re: BytesRegex,
    accel: Option<Accel>,
}

#[derive(Debug, Clone)]
enum Accel {
    /// [`IBAN_PATTERN`]; the regex is the pattern anchored with `\A`.
    Iban(BytesRegex),
}

/// ASCII word byte, as `(?-u:\b)` sees it.
#[inline]
fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[inline]
fn upper_or_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// One bit (the high bit of the byte) per ASCII uppercase byte of `x`.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn upper_mask(x: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    let y = x & LO7;
    let ge_a = y + 0x3f3f_3f3f_3f3f_3f3f; // high bit set iff y >= b'A'
    let gt_z = y + 0x2525_2525_2525_2525; // high bit set iff y > b'Z'
    ge_a & !gt_z & !x & HI
}

impl ContentRegex {
    /// `source` is the pattern as written (`/regex/flags`); `re` its
    /// compilation; `build` compiles a variant of the bare pattern with the
    /// same flags and limits (used for the anchored form).
    pub(crate) fn new<E>(
        source: &str,
        re: BytesRegex,
        build: impl FnOnce(&str) -> Result<BytesRegex, E>,
    ) -> ContentRegex {
        let accel = if source == IBAN_PATTERN {
            let bare = &IBAN_PATTERN[1..IBAN_PATTERN.len() - 1];
            build(&format!(r"\A(?:{bare})")).ok().map(Accel::Iban)
        } else {
            None
        };
        ContentRegex { re, accel }
    }

    pub(crate) fn is_match(&self, data: &[u8]) -> bool {
        match &self.accel {
            None => self.re.is_match(data),
            Some(_) => self.any_match(data, |_| true),
        }
    }

    /// Whether `pred` holds for any match of `find_iter` (in order; stops at
    /// the first that does).
    pub(crate) fn any_match(&self, data: &[u8], mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        match &self.accel {
            None => self.re.find_iter(data).any(|m| pred(m.as_bytes())),
            Some(Accel::Iban(anchored)) => {
                let mut from = 0;
                while let Some(p) = iban_candidate(data, from) {
                    match iban_at(data, p, anchored) {
                        Some(end) => {
                            if pred(&data[p..end]) {
                                return true;
                            }
                            from = end;
                        }
                        None => from = p + 1,
                    }
                }
                false
            }
        }
    }

    /// Every match, as `find_iter` gives them (for tests).
    #[cfg(test)]
    pub(crate) fn matches(&self, data: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let base = data.as_ptr() as usize;
        self.any_match(data, |m| {
            let s = m.as_ptr() as usize - base;
            out.push((s, s + m.len()));
            false
        });
        out
    }

    #[cfg(test)]
    pub(crate) fn accelerated(&self) -> bool {
        self.accel.is_some()
    }

    #[cfg(test)]
    pub(crate) fn regex(&self) -> &BytesRegex {
        &self.re
    }
}

/// Bytes per step of [`upper_bits`].
#[cfg(target_arch = "x86_64")]
const STEP: usize = 16;
#[cfg(not(target_arch = "x86_64"))]
const STEP: usize = 8;

/// One set bit per ASCII uppercase byte of `chunk` (`STEP` bytes); bit
/// `k * BITS_PER_BYTE + j` for byte `k`, some `j`. SSE2 (always there on
/// x86_64): 16 bytes in a handful of instructions, where prose has almost
/// no uppercase ASCII.
#[cfg(target_arch = "x86_64")]
#[inline]
fn upper_bits(chunk: &[u8]) -> u64 {
    use std::arch::x86_64::{
        _mm_add_epi8, _mm_cmplt_epi8, _mm_movemask_epi8, _mm_set1_epi8, _mm_set_epi64x,
    };
    let lo = i64::from_le_bytes(chunk[..8].try_into().unwrap_or([0; 8]));
    let hi = i64::from_le_bytes(chunk[8..16].try_into().unwrap_or([0; 8]));
    // SAFETY: the intrinsics take no pointers and need only SSE2, which
    // every x86_64 CPU has (it is in the target's baseline).
    let m = unsafe {
        // b + 0x3f lands in 0x80..=0x99 (as i8: below -102) exactly for b'A'..=b'Z'.
        let t = _mm_add_epi8(_mm_set_epi64x(hi, lo), _mm_set1_epi8(0x3f));
        _mm_movemask_epi8(_mm_cmplt_epi8(t, _mm_set1_epi8(-102)))
    };
    u64::from(m as u16)
}
#[cfg(target_arch = "x86_64")]
const BITS_PER_BYTE: u32 = 1;

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn upper_bits(chunk: &[u8]) -> u64 {
    upper_mask(u64::from_le_bytes(chunk[..8].try_into().unwrap_or([0; 8])))
}
#[cfg(not(target_arch = "x86_64"))]
const BITS_PER_BYTE: u32 = 8;

/// The first position `>= from` where an IBAN match could start: a word
/// boundary, then two ASCII uppercase letters.
fn iban_candidate(data: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + STEP <= data.len() {
        let mut m = upper_bits(&data[i..i + STEP]);
        while m != 0 {
            let p = i + (m.trailing_zeros() / BITS_PER_BYTE) as usize;
            if data.get(p + 1).is_some_and(u8::is_ascii_uppercase) && (p == 0 || !word(data[p - 1]))
            {
                return Some(p);
            }
            m &= m - 1;
        }
        i += STEP;
    }
    while i < data.len() {
        if data[i].is_ascii_uppercase()
            && data.get(i + 1).is_some_and(u8::is_ascii_uppercase)
            && (i == 0 || !word(data[i - 1]))
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The end of the IBAN-pattern match starting at candidate `p`, if any.
fn iban_at(data: &[u8], p: usize, anchored: &BytesRegex) -> Option<usize> {
    // A match has at least 15 bytes, so both exist.
    let d0 = *data.get(p + 2)?;
    let d1 = *data.get(p + 3)?;
    if !(d0.is_ascii_digit() && d1.is_ascii_digit()) {
        if !(d0 >= 0x80 || (d0.is_ascii_digit() && d1 >= 0x80)) {
            return None;
        }
        // Possibly Unicode digits (which `\d` accepts): ask the regex, on a
        // window longer than any match so that the closing `\b` sees the
        // real next byte. The opening `\b` holds in both (checked by
        // `iban_candidate`; a window starts as after a non-word byte).
        let end = (p + IBAN_MAX_MATCH + 1).min(data.len());
        return anchored.find(&data[p..end]).map(|m| p + m.end());
    }
    // ASCII: `(?: ?[A-Z0-9]){11,30}` has one way to take each repetition, so
    // record where each ends; greedy takes the most repetitions after which
    // `(?-u:\b)` holds (the byte before is always a word byte).
    let mut ends = [0usize; 30];
    let mut k = 0;
    let mut j = p + 4;
    while k < 30 {
        match data.get(j) {
            Some(b' ') if data.get(j + 1).copied().is_some_and(upper_or_digit) => j += 2,
            Some(&c) if upper_or_digit(c) => j += 1,
            _ => break,
        }
        ends[k] = j;
        k += 1;
    }
    (11..=k)
        .rev()
        .map(|n| ends[n - 1])
        .find(|&e| data.get(e).is_none_or(|&c| !word(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::dlp::rules::builtin_specs;
    use crate::scan::dlp::{Limits, RuleSet};

    fn iban_regex() -> ContentRegex {
        let re = BytesRegex::new(&IBAN_PATTERN[1..IBAN_PATTERN.len() - 1]).unwrap();
        ContentRegex::new(IBAN_PATTERN, re, BytesRegex::new)
    }

    fn plain(c: &ContentRegex, data: &[u8]) -> Vec<(usize, usize)> {
        c.regex()
            .find_iter(data)
            .map(|m| (m.start(), m.end()))
            .collect()
    }

    #[test]
    fn only_the_exact_builtin_pattern_is_accelerated() {
        let set = RuleSet::compile(&builtin_specs(), &Limits::default()).unwrap();
        assert!(set.get("IBAN").unwrap().content_regexes()[0].accelerated());
        let re = BytesRegex::new("x").unwrap();
        let other = format!("{IBAN_PATTERN}i");
        assert!(!ContentRegex::new(&other, re.clone(), BytesRegex::new).accelerated());
        assert!(!ContentRegex::new("/x/", re, BytesRegex::new).accelerated());
    }

    #[test]
    fn upper_bits_marks_exactly_the_uppercase_bytes() {
        for first in (0..=255u8).step_by(STEP) {
            let chunk: Vec<u8> = (0..STEP as u8).map(|k| first.wrapping_add(k)).collect();
            let m = upper_bits(&chunk);
            for (k, &b) in chunk.iter().enumerate() {
                let bits = (m >> (k as u32 * BITS_PER_BYTE)) & ((1u64 << BITS_PER_BYTE) - 1);
                assert_eq!(bits != 0, b.is_ascii_uppercase(), "byte {b:#x}");
            }
        }
    }

    #[test]
    fn iban_fast_path_finds_what_the_regex_finds() {
        let c = iban_regex();
        let fixed: &[&[u8]] = &[
            b"GB82 WEST 1234 5698 7654 32",
            b"xGB82 WEST 1234 5698 7654 32",
            b" GB82 WEST 1234 5698 7654 32_",
            b"DE12 3456 7890 1234 5678 90 DE89 3704 0044 0532 0130 00 AND MORE WORDS HERE OK",
            b"AB1234567890ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 Z",
            "AB\u{663}\u{664} CDEF GHIJ KLMN DE89 3704 0044 0532 0130 00".as_bytes(),
            "AB1\u{664} CDEF GHIJ KLMN".as_bytes(),
            "AB\u{1d7ce}\u{1d7cf}CDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGHIJ".as_bytes(),
            "é DE89 3704 0044 0532 0130 00é".as_bytes(),
            b"DE89370400440532013000",
            b"DE8937040044053201300_",
            b"ZZ99 9 9 9 9 9 9 9 9 9 9 9  9",
            b"",
            b"AB",
            b"AB12",
        ];
        for d in fixed {
            assert_eq!(
                c.matches(d),
                plain(&c, d),
                "{:?}",
                String::from_utf8_lossy(d)
            );
        }
        // Generated text over the bytes that matter to the pattern.
        let alphabet: &[&str] = &[
            "A",
            "B",
            "D",
            "E",
            "G",
            "Z",
            "0",
            "1",
            "7",
            "9",
            " ",
            " ",
            "_",
            "a",
            "x",
            "-",
            "\n",
            "é",
            "\u{663}",
            "\u{1d7ce}",
            "DE",
            "GB82",
            "12",
            " 3456",
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut d = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 120) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                d.push_str(alphabet[(x >> 40) as usize % alphabet.len()]);
            }
            assert_eq!(c.matches(d.as_bytes()), plain(&c, d.as_bytes()), "{d:?}");
        }
    }
}
