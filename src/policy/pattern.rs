//! Lua 5.4 string patterns (`string.find`, `match`, `gmatch`, `gsub`),
//! matched with a step budget.
//!
//! Lua's own matcher (lstrlib.c) is C code the VM's instruction hook never
//! interrupts: `("a"):rep(30000):find(".-.-.-b")` backtracks for hours
//! inside one "instruction". This is the same algorithm, kept line by line
//! to the reference semantics (classes, sets, `%b`, `%f`, back references,
//! position captures, the 200-level recursion limit, 32 captures), but every
//! match call, expansion step and balance character costs one step, and the
//! caller's budget ends the match with [`PatternError::Budget`].
//!
//! This file owns matching only: no Lua values, no app data. The bindings
//! in `api::strings` convert arguments and charge the steps to the run.

/// Lua's `LUA_MAXCAPTURES`.
pub const MAX_CAPTURES: usize = 32;
/// Lua's `MAXCCALLS` for the matcher: recursion depth before "pattern too complex".
const MAX_DEPTH: usize = 200;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// The pattern is malformed; the message is Lua's.
    Malformed(String),
    /// The step budget ran out.
    Budget,
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatternError::Malformed(m) => f.write_str(m),
            PatternError::Budget => f.write_str("pattern step budget exhausted"),
        }
    }
}

fn malformed<T>(m: impl Into<String>) -> Result<T, PatternError> {
    Err(PatternError::Malformed(m.into()))
}

/// One capture as Lua returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// A substring: `src[start..end]`.
    Span(usize, usize),
    /// `()`: a 1-based position.
    Position(usize),
}

#[derive(Clone, Copy)]
enum CapLen {
    Unfinished,
    Position,
    Len(usize),
}

/// A matcher over one subject and pattern; reusable for every start
/// position (as `reprepstate` does).
pub struct Matcher<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    depth: usize,
    caps: [(usize, CapLen); MAX_CAPTURES],
    /// Steps taken so far (never reset: the caller charges them).
    pub steps: u64,
    /// Steps allowed in all.
    pub limit: u64,
}

impl<'a> Matcher<'a> {
    pub fn new(src: &'a [u8], pat: &'a [u8], limit: u64) -> Self {
        Matcher {
            src,
            pat,
            level: 0,
            depth: MAX_DEPTH,
            caps: [(0, CapLen::Unfinished); MAX_CAPTURES],
            steps: 0,
            limit,
        }
    }

    /// The subject.
    pub fn src(&self) -> &'a [u8] {
        self.src
    }

    fn tick(&mut self, n: u64) -> Result<(), PatternError> {
        self.steps += n;
        if self.steps > self.limit {
            Err(PatternError::Budget)
        } else {
            Ok(())
        }
    }

    /// Match the pattern from `p` against the subject from `s`: the end of
    /// the match, or `None`.
    pub fn match_at(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        self.level = 0;
        self.depth = MAX_DEPTH;
        self.do_match(s, p)
    }

    /// Captures of the last successful match (`whole` = the match itself
    /// when the pattern has none, as `match`/`gmatch`/`gsub` do).
    pub fn captures(&self, s: usize, e: usize, whole: bool) -> Result<Vec<Capture>, PatternError> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }

    /// Capture `i` (0-based); the whole match `s..e` for index 0 when there
    /// are no captures.
    pub fn capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            if i != 0 {
                return malformed(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Span(s, e));
        }
        match self.caps[i] {
            (_, CapLen::Unfinished) => malformed("unfinished capture"),
            (init, CapLen::Position) => Ok(Capture::Position(init + 1)),
            (init, CapLen::Len(l)) => Ok(Capture::Span(init, init + l)),
        }
    }

    fn do_match(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return malformed("pattern too complex");
        }
        self.depth -= 1;
        self.tick(1)?;
        let pat = self.pat;
        let r = loop {
            if p == pat.len() {
                break Some(s);
            }
            match pat[p] {
                b'(' => {
                    break if pat.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, CapLen::Position)?
                    } else {
                        self.start_capture(s, p + 1, CapLen::Unfinished)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == pat.len() => {
                    break (s == self.src.len()).then_some(s);
                }
                ESC if pat.get(p + 1) == Some(&b'b') => match self.match_balance(s, p + 2)? {
                    Some(ns) => {
                        s = ns;
                        p += 4;
                    }
                    None => break None,
                },
                ESC if pat.get(p + 1) == Some(&b'f') => {
                    p += 2;
                    if pat.get(p) != Some(&b'[') {
                        return malformed("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let prev = if s == 0 { 0 } else { self.src[s - 1] };
                    let cur = self.src.get(s).copied().unwrap_or(0);
                    if !match_bracket_class(prev, pat, p, ep - 1)
                        && match_bracket_class(cur, pat, p, ep - 1)
                    {
                        p = ep;
                    } else {
                        break None;
                    }
                }
                ESC if pat.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                    match self.match_capture(s, pat[p + 1])? {
                        Some(ns) => {
                            s = ns;
                            p += 2;
                        }
                        None => break None,
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = pat.get(ep).copied();
                    if !self.single_match(s, p, ep) {
                        if matches!(suffix, Some(b'*' | b'?' | b'-')) {
                            p = ep + 1;
                            continue;
                        }
                        break None;
                    }
                    match suffix {
                        Some(b'?') => {
                            if let Some(r) = self.do_match(s + 1, ep + 1)? {
                                break Some(r);
                            }
                            p = ep + 1;
                        }
                        Some(b'+') => break self.max_expand(s + 1, p, ep)?,
                        Some(b'*') => break self.max_expand(s, p, ep)?,
                        Some(b'-') => break self.min_expand(s, p, ep)?,
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        };
        self.depth += 1;
        Ok(r)
    }

    /// The index just past the single-character class at `p`.
    fn class_end(&self, mut p: usize) -> Result<usize, PatternError> {
        let pat = self.pat;
        let c = pat[p];
        p += 1;
        if c == ESC {
            if p >= pat.len() {
                return malformed("malformed pattern (ends with '%')");
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if pat.get(p) == Some(&b'^') {
                p += 1;
            }
            // The first character after `[` / `[^` is never the closing `]`.
            loop {
                if p >= pat.len() {
                    return malformed("malformed pattern (missing ']')");
                }
                let cc = pat[p];
                p += 1;
                if cc == ESC && p < pat.len() {
                    p += 1;
                }
                if pat.get(p) == Some(&b']') {
                    return Ok(p + 1);
                }
            }
        }
        Ok(p)
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            ESC => match_class(c, self.pat[p + 1]),
            b'[' => match_bracket_class(c, self.pat, p, ep - 1),
            pc => pc == c,
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, PatternError> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            i += 1;
        }
        self.tick(i as u64)?;
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if self.single_match(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        what: CapLen,
    ) -> Result<Option<usize>, PatternError> {
        if self.level >= MAX_CAPTURES {
            return malformed("too many captures");
        }
        self.caps[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&i| matches!(self.caps[i].1, CapLen::Unfinished))
        else {
            return malformed("invalid pattern capture");
        };
        self.caps[l].1 = CapLen::Len(s - self.caps[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.caps[l].1 = CapLen::Unfinished;
        }
        Ok(r)
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if p + 1 >= self.pat.len() {
            return malformed("malformed pattern (missing arguments to '%b')");
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        for (i, &c) in self.src.iter().enumerate().skip(s + 1) {
            if c == close {
                depth -= 1;
                if depth == 0 {
                    self.tick((i - s) as u64)?;
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        self.tick((self.src.len() - s) as u64)?;
        Ok(None)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, PatternError> {
        let l = (digit as i32 - b'1' as i32) as isize;
        if l < 0
            || l as usize >= self.level
            || matches!(self.caps[l as usize].1, CapLen::Unfinished)
        {
            return malformed(format!("invalid capture index %{}", l + 1));
        }
        let (init, len) = self.caps[l as usize];
        // A position capture has no length: Lua's comparison never succeeds.
        let CapLen::Len(len) = len else {
            return Ok(None);
        };
        self.tick(len as u64)?;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }
}

/// `%a`, `%d`… in the C locale; an upper-case class letter negates.
fn match_class(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        // C's isspace: also \v (0x0b), which is_ascii_whitespace leaves out.
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated but still in the vendored Lua (LUA_COMPAT): `%z` is NUL.
        // Found by the differential fuzz target against C Lua.
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// A `[set]` from `p` (the `[`) to `ec` (the `]`).
fn match_bracket_class(c: u8, pat: &[u8], mut p: usize, ec: usize) -> bool {
    let mut sig = true;
    if pat[p + 1] == b'^' {
        sig = false;
        p += 1;
    }
    p += 1;
    while p < ec {
        if pat[p] == ESC {
            p += 1;
            if match_class(c, pat[p]) {
                return sig;
            }
            p += 1;
        } else if pat[p + 1] == b'-' && p + 2 < ec {
            if pat[p] <= c && c <= pat[p + 2] {
                return sig;
            }
            p += 3;
        } else {
            if pat[p] == c {
                return sig;
            }
            p += 1;
        }
    }
    !sig
}

/// Does the pattern have no magic characters (`find` then searches plainly)?
pub fn is_plain(pat: &[u8]) -> bool {
    !pat.iter().any(|c| SPECIALS.contains(c))
}

/// Lua's `posrelatI` minus one: a 0-based start from a 1-based, possibly
/// negative `init`.
pub fn start_index(init: i64, len: usize) -> usize {
    let len = len as i64;
    let pos = if init > 0 {
        init
    } else if init == 0 || init < -len {
        1
    } else {
        len + init + 1
    };
    (pos - 1) as usize
}

/// Plain substring search from `from`.
pub fn find_plain(src: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from);
    }
    memchr::memmem::find(&src[from..], needle).map(|i| i + from)
}

/// `find`/`match` with the anchor handled: the first match at or after
/// `init` as (start, end) with the matcher left holding its captures.
pub fn search(m: &mut Matcher<'_>, init: usize) -> Result<Option<(usize, usize)>, PatternError> {
    let (anchor, p) = if m.pat.first() == Some(&b'^') {
        (true, 1)
    } else {
        (false, 0)
    };
    let mut s = init;
    loop {
        if let Some(e) = m.match_at(s, p)? {
            return Ok(Some((s, e)));
        }
        s += 1;
        if anchor || s > m.src.len() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(s: &str, p: &str) -> Option<(usize, usize)> {
        let mut m = Matcher::new(s.as_bytes(), p.as_bytes(), u64::MAX);
        search(&mut m, 0).unwrap()
    }

    #[test]
    fn basics_match_lua() {
        assert_eq!(find("hello world", "o w"), Some((4, 7)));
        assert_eq!(find("hello", "l+"), Some((2, 4)));
        assert_eq!(find("hello", "^h.-o$"), Some((0, 5)));
        assert_eq!(find("hello", "^e"), None);
        assert_eq!(find("THE (quick) fox", "%((%a+)%)"), Some((4, 11)));
        assert_eq!(find("f(a(b)c)d", "%b()"), Some((1, 8)));
        assert_eq!(find("THE (quick) fox", "%f[%a]%a+"), Some((0, 3)));
        assert_eq!(find("abcabc", "(abc)%1"), Some((0, 6)));
        assert_eq!(find("x]y", "[]]"), Some((1, 2)));
        assert_eq!(find("a-b", "[a%-]+"), Some((0, 2)));
    }

    #[test]
    fn errors_are_lua_messages() {
        let mut m = Matcher::new(b"abc", b"%", u64::MAX);
        assert_eq!(
            search(&mut m, 0),
            Err(PatternError::Malformed(
                "malformed pattern (ends with '%')".into()
            ))
        );
        let mut m = Matcher::new(b"abc", b"[a", u64::MAX);
        assert_eq!(
            search(&mut m, 0),
            Err(PatternError::Malformed(
                "malformed pattern (missing ']')".into()
            ))
        );
        let mut m = Matcher::new(b"abc", b"(a", u64::MAX);
        let (s, e) = search(&mut m, 0).unwrap().unwrap();
        assert_eq!(
            m.captures(s, e, true),
            Err(PatternError::Malformed("unfinished capture".into()))
        );
    }

    #[test]
    fn backtracking_bomb_stops_at_the_budget() {
        let s = "a".repeat(30_000);
        let mut m = Matcher::new(s.as_bytes(), b".-.-.-.-b", 5_000_000);
        assert_eq!(search(&mut m, 0), Err(PatternError::Budget));
        assert!(m.steps > 5_000_000 && m.steps < 6_000_000, "{}", m.steps);
    }
}
