//! Checksums that turn a regex hit into a finding: Luhn for card numbers,
//! ISO 13616 mod-97 for IBANs.

/// Named validators a `content` rule may apply to each regex match
/// (`validator = "luhn"` in a rule). A match counts only if it validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    /// 13–19 digits (spaces and dashes ignored) passing the Luhn check.
    Luhn,
    /// An IBAN (spaces ignored) with the right length for its country and a
    /// valid mod-97 check.
    Iban,
}

impl Validator {
    pub fn from_name(name: &str) -> Option<Validator> {
        match name.to_ascii_lowercase().as_str() {
            "luhn" | "creditcard" => Some(Validator::Luhn),
            "iban" | "mod97" => Some(Validator::Iban),
            _ => None,
        }
    }

    pub fn check(self, candidate: &[u8]) -> bool {
        match self {
            Validator::Luhn => luhn_card(candidate),
            Validator::Iban => iban_prefix(candidate),
        }
    }
}

/// A card number candidate: 13–19 digits after removing spaces and dashes,
/// not all the same digit, passing Luhn.
pub fn luhn_card(candidate: &[u8]) -> bool {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &b in candidate {
        match b {
            b'0'..=b'9' => {
                if n == digits.len() {
                    return false;
                }
                digits[n] = b - b'0';
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    if n < 13 {
        return false;
    }
    let digits = &digits[..n];
    if digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    luhn(digits)
}

/// The Luhn checksum over digit values (0–9), rightmost digit is the check digit.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if !i.is_multiple_of(2) {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN at the start of a space-grouped candidate: the regex may have
/// swallowed following uppercase words, so take exactly as many characters
/// as the country's IBAN has, ending at a group boundary.
///
/// One pass and no buffer: the first four characters (country, check
/// digits) are kept aside and the rest folds into the mod-97 remainder as it
/// is read; the four are appended last, as the rearranged form wants.
/// Anything but letters and digits among the characters fails, as `iban`
/// would.
fn iban_prefix(candidate: &[u8]) -> bool {
    // Reduce before `rem * 10_000 + 9999` could overflow.
    const REDUCE_AT: u64 = 1 << 48;
    let Some(len) = candidate.get(..2).and_then(iban_length) else {
        return false;
    };
    // `iban_length` took only uppercase letters, so these are the country.
    let country = u64::from(candidate[0] - b'A' + 10) * 100 + u64::from(candidate[1] - b'A' + 10);
    let mut check = 0u64;
    let mut rem = 0u64;
    let mut n = 2;
    let mut i = 2;
    while i < candidate.len() {
        // Four digits in a row (how IBANs are grouped) fold in with one
        // multiply instead of four dependent ones.
        if n >= 4 && n + 4 <= len {
            if let Some(d) = four_digits(&candidate[i..]) {
                rem = rem * 10_000 + d;
                if rem >= REDUCE_AT {
                    rem %= 97;
                }
                n += 4;
                i += 4;
                if n == len {
                    return iban_prefix_end(candidate, i, rem, country, check);
                }
                continue;
            }
        }
        let b = candidate[i];
        i += 1;
        let v = match b {
            b' ' => continue,
            b'0'..=b'9' => u64::from(b - b'0'),
            b'A'..=b'Z' => u64::from(b - b'A') + 10,
            b'a'..=b'z' => u64::from(b - b'a') + 10,
            _ => return false,
        };
        if n < 4 {
            // The check digits.
            if v >= 10 {
                return false;
            }
            check = check * 10 + v;
        } else {
            rem = if v >= 10 { rem * 100 + v } else { rem * 10 + v };
            if rem >= REDUCE_AT {
                rem %= 97;
            }
        }
        n += 1;
        if n == len {
            return iban_prefix_end(candidate, i, rem, country, check);
        }
    }
    false
}

/// The last character of the IBAN ended before `end`: it must end a group,
/// and the rearranged number (the rest, then the country letters as two
/// digits each, then the check digits) must be 1 mod 97.
fn iban_prefix_end(candidate: &[u8], end: usize, rem: u64, country: u64, check: u64) -> bool {
    let at_boundary = candidate.get(end).is_none_or(|&c| c == b' ');
    at_boundary && ((rem % 97) * 1_000_000 + country * 100 + check) % 97 == 1
}

/// The value of the first four bytes if they are all ASCII digits.
#[inline]
fn four_digits(s: &[u8]) -> Option<u64> {
    let w = u32::from_le_bytes(s.get(..4)?.try_into().ok()?);
    let d = w.wrapping_sub(0x3030_3030);
    // A byte below b'0' sets its own high bit in `d`; one above b'9' sets it
    // in `d + 0x76`.
    if (d | d.wrapping_add(0x7676_7676)) & 0x8080_8080 != 0 {
        return None;
    }
    let [a, b, c, e] = d.to_le_bytes().map(u64::from);
    Some(a * 1000 + b * 100 + c * 10 + e)
}

fn iban_length(cc: &[u8]) -> Option<usize> {
    match *cc {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            let n = IBAN_LENGTH_BY_CODE[usize::from(a - b'A') * 26 + usize::from(b - b'A')];
            (n != 0).then_some(usize::from(n))
        }
        _ => None,
    }
}

/// [`IBAN_LENGTHS`] indexed by `(first letter) * 26 + (second letter)`; 0 =
/// not a country with IBANs.
const IBAN_LENGTH_BY_CODE: [u8; 26 * 26] = {
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let (cc, len) = IBAN_LENGTHS[i];
        t[(cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize] = len as u8;
        i += 1;
    }
    t
};

/// IBAN lengths by country (ISO 13616 registry, SWIFT release 2024).
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24), (b"AE", 23), (b"AL", 28), (b"AT", 20), (b"AZ", 28), (b"BA", 20),
    (b"BE", 16), (b"BG", 22), (b"BH", 22), (b"BI", 27), (b"BR", 29), (b"BY", 28),
    (b"CH", 21), (b"CR", 22), (b"CY", 28), (b"CZ", 24), (b"DE", 22), (b"DJ", 27),
    (b"DK", 18), (b"DO", 28), (b"EE", 20), (b"EG", 29), (b"ES", 24), (b"FI", 18),
    (b"FK", 18), (b"FO", 18), (b"FR", 27), (b"GB", 22), (b"GE", 22), (b"GI", 23),
    (b"GL", 18), (b"GR", 27), (b"GT", 28), (b"HR", 21), (b"HU", 28), (b"IE", 22),
    (b"IL", 23), (b"IQ", 23), (b"IS", 26), (b"IT", 27), (b"JO", 30), (b"KW", 30),
    (b"KZ", 20), (b"LB", 28), (b"LC", 32), (b"LI", 21), (b"LT", 20), (b"LU", 20),
    (b"LV", 21), (b"LY", 25), (b"MC", 27), (b"MD", 24), (b"ME", 22), (b"MK", 19),
    (b"MN", 20), (b"MR", 27), (b"MT", 31), (b"MU", 30), (b"NI", 28), (b"NL", 18),
    (b"NO", 15), (b"OM", 23), (b"PK", 24), (b"PL", 28), (b"PS", 29), (b"PT", 25),
    (b"QA", 29), (b"RO", 24), (b"RS", 22), (b"RU", 33), (b"SA", 24), (b"SC", 31),
    (b"SD", 18), (b"SE", 24), (b"SI", 19), (b"SK", 24), (b"SM", 27), (b"SO", 23),
    (b"ST", 25), (b"SV", 28), (b"TL", 23), (b"TN", 24), (b"TR", 26), (b"UA", 29),
    (b"VA", 22), (b"VG", 24), (b"XK", 20), (b"YE", 30),
];

/// An IBAN candidate (spaces allowed): known country, its registered length,
/// and the mod-97 check equal to 1.
pub fn iban(candidate: &[u8]) -> bool {
    let mut buf = [0u8; 34];
    let mut n = 0;
    for &b in candidate {
        match b {
            b' ' => {}
            b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => {
                if n == buf.len() {
                    return false;
                }
                buf[n] = b.to_ascii_uppercase();
                n += 1;
            }
            _ => return false,
        }
    }
    iban_compact(&buf[..n])
}

/// `iban` on letters and digits only, uppercased.
fn iban_compact(s: &[u8]) -> bool {
    let n = s.len();
    if n < 15 || !s[0].is_ascii_alphabetic() || !s[1].is_ascii_alphabetic() {
        return false;
    }
    if !s[2].is_ascii_digit() || !s[3].is_ascii_digit() {
        return false;
    }
    if iban_length(&s[..2]) != Some(n) {
        return false;
    }
    // Move the first four characters to the end, letters become 10..35,
    // and compute the remainder digit by digit (reducing only when the
    // accumulator gets large: same remainder, far fewer divisions).
    let mut rem: u64 = 0;
    for &c in s[4..].iter().chain(&s[..4]) {
        let v = if c.is_ascii_digit() {
            u64::from(c - b'0')
        } else {
            u64::from(c - b'A') + 10
        };
        rem = if v >= 10 { rem * 100 + v } else { rem * 10 + v };
        if rem >= 1 << 56 {
            rem %= 97;
        }
    }
    rem % 97 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_positives_and_negatives() {
        assert!(luhn_card(b"4111111111111111"));
        assert!(luhn_card(b"4111 1111 1111 1111"));
        assert!(luhn_card(b"5500-0000-0000-0004"));
        assert!(luhn_card(b"378282246310005")); // Amex, 15 digits
        assert!(!luhn_card(b"4111111111111112")); // wrong check digit
        assert!(!luhn_card(b"0000000000000000")); // repeated digit
        assert!(!luhn_card(b"411111111111")); // too short
        assert!(!luhn_card(b"41111111111111111111")); // too long
    }

    #[test]
    fn iban_table_is_sorted() {
        assert!(IBAN_LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn iban_length_lookup_matches_the_table() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let cc = [a, b];
                let want = IBAN_LENGTHS
                    .binary_search_by(|(c, _)| c[..].cmp(&cc[..]))
                    .ok()
                    .map(|i| IBAN_LENGTHS[i].1);
                assert_eq!(iban_length(&cc), want, "{cc:?}");
            }
        }
        assert_eq!(iban_length(b"D"), None);
    }

    /// The two-pass form `iban_prefix` replaced.
    fn iban_prefix_reference(candidate: &[u8]) -> bool {
        let Some(len) = candidate.get(..2).and_then(iban_length) else {
            return false;
        };
        let mut seen = 0;
        for (i, &b) in candidate.iter().enumerate() {
            if b != b' ' {
                seen += 1;
                if seen == len {
                    let end = i + 1;
                    let at_boundary = candidate.get(end).is_none_or(|&c| c == b' ');
                    return at_boundary && iban(&candidate[..end]);
                }
            }
        }
        false
    }

    #[test]
    fn iban_prefix_agrees_with_the_two_pass_form() {
        let bases: &[&[u8]] = &[
            b"GB82 WEST 1234 5698 7654 32 AND MORE",
            b"DE89 3704 0044 0532 0130 00",
            b"NO93 8601 1117 947",
            b"DE12 3456 7890 1234 5678 90",
            b"DE89370400440532013000",
            b"DE89370400440532013000 1234",
            b"GB82WEST12345698765432",
            b"MT84 MALT 0110 0001 2345 MTLC AST0 01S",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for base in bases {
            assert_eq!(iban_prefix(base), iban_prefix_reference(base));
            for _ in 0..5000 {
                let mut c = base.to_vec();
                for _ in 0..(x % 3) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x >> 8) as usize % c.len();
                    c[at] = b"0123456789 AZaz-_#"[(x >> 40) as usize % 18];
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.truncate(c.len() - (x % 4) as usize);
                assert_eq!(iban_prefix(&c), iban_prefix_reference(&c), "{c:?}");
            }
        }
    }

    #[test]
    fn four_digits_takes_only_ascii_digits() {
        for a in 0..=255u8 {
            for b in [b'0', b'5', b'9', a] {
                let s = [b'1', a, b, b'9'];
                let want = s
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then(|| std::str::from_utf8(&s).unwrap().parse::<u64>().unwrap());
                assert_eq!(four_digits(&s), want, "{s:?}");
            }
        }
        assert_eq!(four_digits(b"123"), None);
    }

    #[test]
    fn iban_prefix_stops_at_the_country_length() {
        assert!(iban_prefix(b"GB82 WEST 1234 5698 7654 32 AND MORE"));
        assert!(!iban_prefix(b"GB82 WEST 1234 5698 7654 3299"));
    }

    #[test]
    fn iban_positives_and_negatives() {
        assert!(iban(b"GB82WEST12345698765432"));
        assert!(iban(b"GB82 WEST 1234 5698 7654 32"));
        assert!(iban(b"DE89370400440532013000"));
        assert!(iban(b"NO9386011117947"));
        assert!(!iban(b"GB82WEST12345698765433")); // bad checksum
        assert!(!iban(b"DE8937040044053201300")); // wrong length for DE
        assert!(!iban(b"ZZ82WEST12345698765432")); // unknown country
    }
}
