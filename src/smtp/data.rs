//! Message data readers. [`MessageBuilder`] checks and stores content bytes
//! (bare CR/LF, NUL, line length, size, Received count); [`DotDecoder`]
//! turns a DATA stream into content, un-stuffing dots and finding the only
//! terminator RFC 5321 allows, `<CRLF>.<CRLF>` (the SMTP smuggling defence).
//! BDAT chunks go to the builder directly.
//!
//! Memory is bounded per message: past `message_size`, past the header
//! section's size (`[limits] header_size`) or line count (`header_lines`)
//! nothing more is stored — the bytes are counted and dropped so the reader
//! stays in sync with the client until the end of data, and the message is
//! refused there. Every byte is looked at once: the cost is linear.
//!
//! Memory is bounded across messages too: every builder draws what it
//! stores from one [`DataMemory`] budget (`[limits] data_memory`), in steps.
//! A message that finds the budget spent stops being stored the same way and
//! is refused with 452 4.3.1 at its end: however many clients send at once,
//! the bodies being received never hold more than the budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes a builder takes from the budget at a time.
const GRANT_STEP: u64 = 256 * 1024;

/// The budget for message content held by all sessions while receiving.
#[derive(Debug)]
pub struct DataMemory {
    limit: u64,
    used: AtomicU64,
}

impl DataMemory {
    pub fn new(limit: u64) -> Arc<DataMemory> {
        Arc::new(DataMemory {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes granted to builders now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What went wrong with a message's content, in the order the reply picks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ContentFlags {
    pub too_big: bool,
    pub bare_lf: bool,
    pub bare_cr: bool,
    pub nul: bool,
    pub long_line: bool,
    /// The header section is larger than `[limits] header_size`.
    pub header_too_big: bool,
    /// The header section has more lines than `[limits] header_lines`.
    pub too_many_header_lines: bool,
    /// `[limits] data_memory` was spent by the messages being received.
    pub no_memory: bool,
}

impl ContentFlags {
    /// Content is no longer stored (the message will be refused).
    pub fn discarding(&self) -> bool {
        self.too_big || self.header_too_big || self.too_many_header_lines || self.no_memory
    }
}

pub struct MessageBuilder {
    /// Stored bytes: our Received header, then the client's content.
    pub body: Vec<u8>,
    /// Client content bytes seen (also past the limit).
    pub size: u64,
    max_size: u64,
    max_line: usize,
    normalize: bool,
    pending_cr: bool,
    line_len: usize,
    in_headers: bool,
    prefix: [u8; 9],
    /// Received headers seen in the client's header block.
    pub received: usize,
    pub flags: ContentFlags,
    /// Offset in `body` where the header block ends (after the blank line), once seen.
    pub header_end: Option<usize>,
    /// Bytes and lines of the client's header section so far.
    pub header_size: u64,
    pub header_lines: usize,
    max_header_size: u64,
    max_header_lines: usize,
    /// The shared budget (None: unbounded) and what this builder holds of it.
    memory: Option<Arc<DataMemory>>,
    granted: u64,
}

impl Drop for MessageBuilder {
    fn drop(&mut self) {
        self.release_memory();
    }
}

impl MessageBuilder {
    pub fn new(prefix: &[u8], max_size: u64, max_line: usize, normalize: bool) -> Self {
        let mut body = Vec::with_capacity(prefix.len() + 16 * 1024);
        body.extend_from_slice(prefix);
        MessageBuilder {
            body,
            size: 0,
            max_size,
            max_line,
            normalize,
            pending_cr: false,
            line_len: 0,
            in_headers: true,
            prefix: [0; 9],
            received: 0,
            flags: ContentFlags::default(),
            header_end: None,
            header_size: 0,
            header_lines: 0,
            max_header_size: u64::MAX,
            max_header_lines: usize::MAX,
            memory: None,
            granted: u64::MAX,
        }
    }

    /// Draw what is stored from `memory`; the builder counts from what it
    /// holds already (our Received header).
    pub fn with_memory(mut self, memory: Arc<DataMemory>) -> Self {
        self.granted = 0;
        self.memory = Some(memory);
        let held = self.body.len() as u64;
        if !self.reserve(held) {
            self.flags.no_memory = true;
            self.stop_storing();
        }
        self
    }

    /// Make sure `more` bytes past what is stored fit in the grant, taking
    /// another step from the budget if needed; false if it is spent.
    #[inline]
    fn reserve(&mut self, more: u64) -> bool {
        let want = self.body.len() as u64 + more;
        if want <= self.granted {
            return true;
        }
        let Some(m) = &self.memory else {
            return true;
        };
        let step = (want - self.granted).max(GRANT_STEP);
        if m.take(step) {
            self.granted += step;
            true
        } else {
            false
        }
    }

    fn release_memory(&mut self) {
        if let Some(m) = &self.memory {
            if self.granted > 0 {
                m.give(self.granted);
                self.granted = 0;
            }
        }
    }

    /// The budget is spent: refuse this message (452 4.3.1), keep nothing.
    fn out_of_memory(&mut self) {
        self.flags.no_memory = true;
        self.stop_storing();
    }

    /// Bound the client's header section: `size` bytes (with line endings and
    /// the blank line), `lines` lines.
    pub fn with_header_limits(mut self, size: u64, lines: usize) -> Self {
        self.max_header_size = size;
        self.max_header_lines = lines;
        self
    }

    /// The message will be refused: drop what is stored, store nothing more.
    fn stop_storing(&mut self) {
        self.body = Vec::new();
        self.header_end = None;
        self.release_memory();
    }

    /// Hand the stored bytes over. Their share of the budget stays taken
    /// until the builder is dropped: keep it alive while the message is
    /// still in memory (hooks, scanners, the queue write).
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    #[inline]
    fn emit(&mut self, b: u8) {
        self.size += 1;
        if self.in_headers {
            self.header_size += 1;
            // Only the first header limit reached is reported.
            if self.header_size > self.max_header_size
                && !self.flags.header_too_big
                && !self.flags.too_many_header_lines
            {
                let was = self.flags.discarding();
                self.flags.header_too_big = true;
                if !was {
                    self.stop_storing();
                }
            }
        }
        if self.flags.discarding() {
            if self.size > self.max_size {
                self.flags.too_big = true;
            }
            return;
        }
        if self.size <= self.max_size {
            if !self.reserve(1) {
                self.out_of_memory();
                return;
            }
            self.body.push(b);
        } else {
            self.flags.too_big = true;
            // Nothing more will be stored: give the memory back early.
            self.body.shrink_to_fit();
        }
    }

    fn end_line(&mut self) {
        if self.in_headers {
            if self.line_len == 0 {
                self.in_headers = false;
                if !self.flags.discarding() {
                    self.header_end = Some(self.body.len());
                }
            } else {
                self.header_lines += 1;
                if self.header_lines > self.max_header_lines
                    && !self.flags.too_many_header_lines
                    && !self.flags.header_too_big
                {
                    let was = self.flags.discarding();
                    self.flags.too_many_header_lines = true;
                    if !was {
                        self.stop_storing();
                    }
                }
            }
        }
        self.line_len = 0;
    }

    fn emit_crlf(&mut self) {
        self.emit(b'\r');
        self.emit(b'\n');
        self.end_line();
    }

    #[inline]
    pub fn push(&mut self, b: u8) {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' {
                self.emit_crlf();
                return;
            }
            self.flags.bare_cr = true;
            if self.normalize {
                self.emit_crlf();
            } else {
                self.text_byte(b'\r');
            }
        }
        match b {
            b'\r' => self.pending_cr = true,
            b'\n' => {
                self.flags.bare_lf = true;
                if self.normalize {
                    self.emit_crlf();
                } else {
                    self.emit(b'\n');
                    self.end_line();
                }
            }
            _ => self.text_byte(b),
        }
    }

    #[inline]
    fn text_byte(&mut self, b: u8) {
        if b == 0 {
            self.flags.nul = true;
        }
        if self.in_headers && self.line_len < 9 {
            self.prefix[self.line_len] = b.to_ascii_lowercase();
            if self.line_len == 8 && &self.prefix == b"received:" {
                self.received += 1;
            }
        }
        self.line_len += 1;
        if self.line_len > self.max_line {
            self.flags.long_line = true;
        }
        self.emit(b);
    }

    /// A run of bytes with no CR, LF or NUL, in the body (not the headers):
    /// the common case, handled without the per-byte state machine.
    #[inline]
    fn push_plain_run(&mut self, run: &[u8]) {
        self.line_len += run.len();
        if self.line_len > self.max_line {
            self.flags.long_line = true;
        }
        let room = self.max_size.saturating_sub(self.size) as usize;
        self.size += run.len() as u64;
        if self.flags.discarding() {
            if run.len() > room {
                self.flags.too_big = true;
            }
        } else if !self.reserve(run.len().min(room) as u64) {
            self.out_of_memory();
            if run.len() > room {
                self.flags.too_big = true;
            }
        } else if run.len() <= room {
            self.body.extend_from_slice(run);
        } else {
            self.body.extend_from_slice(&run[..room]);
            if !self.flags.too_big {
                self.flags.too_big = true;
                self.body.shrink_to_fit();
            }
        }
    }

    /// Length of the leading run of `data` that [`push_plain_run`] may take now.
    #[inline]
    fn plain_prefix(&self, data: &[u8]) -> usize {
        if self.pending_cr || self.in_headers {
            return 0;
        }
        memchr::memchr3(b'\r', b'\n', 0, data).unwrap_or(data.len())
    }

    pub fn push_slice(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let n = self.plain_prefix(&data[i..]);
            if n > 0 {
                self.push_plain_run(&data[i..i + n]);
                i += n;
            } else {
                self.push(data[i]);
                i += 1;
            }
        }
    }

    /// End of content: a CR still pending is a bare CR.
    pub fn finish(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            self.flags.bare_cr = true;
            if self.normalize {
                self.emit_crlf();
            } else {
                self.emit(b'\r');
            }
        }
        if self.in_headers {
            if self.line_len > 0 {
                // The last header line had no line ending.
                self.end_line();
            }
            self.in_headers = false;
            if self.header_end.is_none() && !self.flags.discarding() {
                // A message that is all headers.
                self.header_end = Some(self.body.len());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    /// At the start of a line; `crlf` = the previous line ended in CRLF.
    Start {
        crlf: bool,
    },
    Dot {
        crlf: bool,
    },
    DotCr {
        crlf: bool,
    },
    Mid,
    MidCr,
}

/// Where the DATA stream stands after a `feed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// Need more input.
    More,
    /// `<CRLF>.<CRLF>` seen; the message is complete.
    End,
    /// A lone dot ended by a bare CR/LF or preceded by one: a client (or an
    /// attacker) may believe the data ended here. Rejected and disconnected.
    SuspiciousEnd,
}

pub struct DotDecoder {
    state: DState,
    reject_bare: bool,
}

impl DotDecoder {
    pub fn new(reject_bare: bool) -> Self {
        DotDecoder {
            state: DState::Start { crlf: true },
            reject_bare,
        }
    }

    /// Consume input; returns how many bytes were used and the progress.
    pub fn feed(&mut self, input: &[u8], out: &mut MessageBuilder) -> (usize, DataProgress) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                DState::Start { crlf } => {
                    if b == b'.' {
                        self.state = DState::Dot { crlf };
                    } else {
                        self.mid(b, out);
                    }
                }
                DState::Mid => {
                    // Fast path: copy up to the next CR/LF/NUL in one go.
                    let n = out.plain_prefix(&input[i - 1..]);
                    if n > 1 {
                        out.push_plain_run(&input[i - 1..i - 1 + n]);
                        i += n - 1;
                    } else {
                        self.mid(b, out);
                    }
                }
                DState::MidCr => {
                    out.push(b);
                    self.state = match b {
                        b'\n' => DState::Start { crlf: true },
                        b'\r' => DState::MidCr,
                        _ => DState::Mid,
                    };
                }
                DState::Dot { crlf } => match b {
                    b'\r' => self.state = DState::DotCr { crlf },
                    b'\n' => {
                        if self.reject_bare {
                            out.flags.bare_lf = true;
                            return (i, DataProgress::SuspiciousEnd);
                        }
                        out.push(b'\n');
                        self.state = DState::Start { crlf: false };
                    }
                    _ => {
                        // Dot-stuffed line: the leading dot is dropped.
                        out.push(b);
                        self.state = DState::Mid;
                    }
                },
                DState::DotCr { crlf } => {
                    if b == b'\n' {
                        if crlf {
                            out.finish();
                            return (i, DataProgress::End);
                        }
                        if self.reject_bare {
                            return (i, DataProgress::SuspiciousEnd);
                        }
                        out.push(b'\r');
                        out.push(b'\n');
                        self.state = DState::Start { crlf: true };
                    } else {
                        out.push(b'\r');
                        out.push(b);
                        self.state = match b {
                            b'\r' => DState::MidCr,
                            _ => DState::Mid,
                        };
                    }
                }
            }
        }
        (i, DataProgress::More)
    }

    #[inline]
    fn mid(&mut self, b: u8, out: &mut MessageBuilder) {
        out.push(b);
        self.state = match b {
            b'\r' => DState::MidCr,
            b'\n' => DState::Start { crlf: false },
            _ => DState::Mid,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_budget_is_shared_and_given_back() {
        let mem = DataMemory::new(1024 * 1024);
        let line = [b'a'; 1000];
        let mut first = MessageBuilder::new(b"", 10 << 20, 2000, false).with_memory(mem.clone());
        first.push_slice(b"Subject: one\r\n\r\n");
        for _ in 0..800 {
            first.push_slice(&line);
            first.push_slice(b"\r\n");
        }
        assert!(!first.flags.no_memory);
        assert!(mem.used() >= 800_000, "{}", mem.used());
        // The second finds the budget spent part way: refused, nothing kept.
        let mut second = MessageBuilder::new(b"", 10 << 20, 2000, false).with_memory(mem.clone());
        second.push_slice(b"Subject: two\r\n\r\n");
        for _ in 0..800 {
            second.push_slice(&line);
            second.push_slice(b"\r\n");
        }
        assert!(second.flags.no_memory && second.flags.discarding());
        assert!(second.body.is_empty());
        assert_eq!(second.size, 800 * 1002 + 16, "still counts what it drops");
        drop(second);
        // The first's body handed over still holds its share until drop.
        let body = first.take_body();
        assert!(body.len() > 800_000);
        assert!(mem.used() >= 800_000);
        drop(first);
        assert_eq!(mem.used(), 0, "grants not given back");
        // Byte by byte (header lines) draws from the budget as well.
        let mut third = MessageBuilder::new(b"", 10 << 20, 2000, false).with_memory(mem.clone());
        for _ in 0..2000 {
            third.push_slice(b"X-A: 0123456789012345678901234567890123456789\r\n");
        }
        assert!(mem.used() >= 90_000 && !third.flags.no_memory);
        drop(third);
        assert_eq!(mem.used(), 0);
    }

    fn run(input: &[u8], reject: bool) -> (DataProgress, Vec<u8>, ContentFlags, usize) {
        let mut b = MessageBuilder::new(b"", 1 << 20, 998, !reject);
        let mut d = DotDecoder::new(reject);
        let (n, p) = d.feed(input, &mut b);
        (p, b.take_body(), b.flags, n)
    }

    #[test]
    fn plain_end_and_unstuffing() {
        let (p, body, f, n) = run(b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n", true);
        assert_eq!(p, DataProgress::End);
        assert_eq!(body, b"Subject: x\r\n\r\n.dot\r\nline\r\n");
        assert_eq!(f, ContentFlags::default());
        assert_eq!(n, 30);
    }

    #[test]
    fn empty_message() {
        let (p, body, _, _) = run(b".\r\n", true);
        assert_eq!(p, DataProgress::End);
        assert!(body.is_empty());
    }

    #[test]
    fn smuggling_sequences_do_not_end_data() {
        // <LF>.<CRLF> and <CRLF>.<LF> are not terminators.
        let (p, _, f, _) = run(b"a\n.\r\nMAIL FROM:<x@y>\r\n", true);
        assert_eq!(p, DataProgress::SuspiciousEnd);
        assert!(f.bare_lf);
        let (p, _, _, _) = run(b"a\r\n.\nMAIL FROM:<x@y>\r\n", true);
        assert_eq!(p, DataProgress::SuspiciousEnd);
        // In normalize mode they are content, and only CRLF.CRLF ends.
        let (p, body, f, _) = run(b"a\n.\r\nb\r\n.\r\n", false);
        assert_eq!(p, DataProgress::End);
        assert!(f.bare_lf);
        assert_eq!(body, b"a\r\n\r\nb\r\n");
        // Bare CR in a line.
        let (p, _, f, _) = run(b"a\rb\r\n.\r\n", true);
        assert_eq!(p, DataProgress::End);
        assert!(f.bare_cr);
    }

    #[test]
    fn split_feeding_matches_whole() {
        let input = b"Received: x\r\nreceived: y\r\n\r\nbody\r\n..\r\n.\r\n";
        for cut in 0..input.len() {
            let mut b = MessageBuilder::new(b"", 1 << 20, 998, false);
            let mut d = DotDecoder::new(true);
            let (n1, p1) = d.feed(&input[..cut], &mut b);
            assert_eq!((n1, p1), (cut, DataProgress::More));
            let (_, p2) = d.feed(&input[cut..], &mut b);
            assert_eq!(p2, DataProgress::End);
            assert_eq!(b.body, b"Received: x\r\nreceived: y\r\n\r\nbody\r\n.\r\n");
            assert_eq!(b.received, 2);
        }
    }

    #[test]
    fn fast_path_respects_limits_in_body() {
        let mut input = b"H: v\r\n\r\n".to_vec();
        input.extend_from_slice(&b"a".repeat(50));
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(&b"b".repeat(100));
        input.extend_from_slice(b"\0\r\n.\r\n");
        let mut b = MessageBuilder::new(b"", 120, 60, false);
        let mut d = DotDecoder::new(true);
        let (_, p) = d.feed(&input, &mut b);
        assert_eq!(p, DataProgress::End);
        assert!(b.flags.too_big && b.flags.long_line && b.flags.nul);
        assert_eq!(b.body.len(), 120);
        assert_eq!(b.size, 8 + 52 + 103);
        let mut ok = MessageBuilder::new(b"", 1000, 998, false);
        let mut d = DotDecoder::new(true);
        d.feed(b"H: v\r\n\r\nplain body line\r\n.\r\n", &mut ok);
        assert_eq!(ok.body, b"H: v\r\n\r\nplain body line\r\n");
        assert_eq!(ok.flags, ContentFlags::default());
    }

    #[test]
    fn limits() {
        let mut b = MessageBuilder::new(b"R\r\n", 10, 4, false);
        b.push_slice(b"12345\r\n123\0\r\n");
        b.finish();
        assert!(b.flags.too_big && b.flags.long_line && b.flags.nul);
        assert_eq!(b.body.len(), 3 + 10);
    }

    #[test]
    fn header_lines_past_the_limit_are_counted_not_stored() {
        let mut input = b"X: 1\r\n".repeat(50_000);
        input.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let mut b =
            MessageBuilder::new(b"R\r\n", 1 << 30, 998, false).with_header_limits(1 << 30, 100);
        let mut d = DotDecoder::new(true);
        let (n, p) = d.feed(&input, &mut b);
        assert_eq!((n, p), (input.len(), DataProgress::End));
        assert!(b.flags.too_many_header_lines && !b.flags.header_too_big);
        assert_eq!(b.header_lines, 50_000);
        assert_eq!(b.body.capacity(), 0, "nothing kept once over the limit");
        assert_eq!(b.size, input.len() as u64 - 3);
    }

    #[test]
    fn one_huge_folded_header_is_refused_at_the_size_limit() {
        let mut b = MessageBuilder::new(b"", 1 << 30, 998, false).with_header_limits(4096, 10_000);
        let mut d = DotDecoder::new(true);
        d.feed(b"Subject: x\r\n", &mut b);
        let fold = b" folded\r\n".repeat(400);
        for _ in 0..100 {
            let (_, p) = d.feed(&fold, &mut b);
            assert_eq!(p, DataProgress::More);
            assert!(b.body.capacity() <= 16 * 1024);
        }
        let (_, p) = d.feed(b"\r\n.\r\n", &mut b);
        assert_eq!(p, DataProgress::End);
        assert!(b.flags.header_too_big && b.flags.discarding());
        // 40,000 lines: over the line limit too, but the size limit came first.
        assert!(!b.flags.too_many_header_lines);
        assert!(b.header_end.is_none());
    }

    #[test]
    fn header_limits_count_only_the_header_section() {
        // Exactly at the limits: accepted; the body does not count.
        let head = b"A: 1\r\nB: 2\r\n\r\n";
        let mut b = MessageBuilder::new(b"R\r\n", 1 << 20, 998, false)
            .with_header_limits(head.len() as u64, 2);
        b.push_slice(head);
        b.push_slice(&b"body line\r\n".repeat(1000));
        b.finish();
        assert!(!b.flags.discarding(), "{:?}", b.flags);
        assert_eq!(b.header_end, Some(3 + head.len()));
        assert_eq!((b.header_size, b.header_lines), (head.len() as u64, 2));
        // One byte or one line more: refused.
        let mut b = MessageBuilder::new(b"", 1 << 20, 998, false)
            .with_header_limits(head.len() as u64 - 1, 2);
        b.push_slice(head);
        b.finish();
        assert!(b.flags.header_too_big);
        let mut b = MessageBuilder::new(b"", 1 << 20, 998, false).with_header_limits(1 << 20, 2);
        b.push_slice(b"A: 1\r\nB: 2\r\nC: 3");
        b.finish();
        assert!(b.flags.too_many_header_lines && !b.flags.header_too_big);
    }
}
