//! The walk: MIME tree first (parsed by [`mime`](super::mime), or by
//! mail-parser where that gives up), archives below it, every item tested
//! against the selected rules.

use std::time::Instant;

use mail_parser::{MessageParser, MessagePart, MimeHeaders, PartType};
use sha1::Digest;

use super::filetype::{self, FileType};
use super::mime;
use super::rules::{Facts, Needs, Rule};
use super::{
    archive, Limits, PartRef, ScanOptions, ScanResult, ERR_LIMIT_EXCEEDED, ERR_RECURSION_LIMIT,
    ERR_TIMEOUT, ERR_UNKNOWN_ERROR,
};

/// The recursion limit is capped here whatever a script asks, to bound the
/// stack.
const MAX_RECURSION: usize = 64;

/// One thing rules look at: a MIME part or an archive member.
pub(crate) struct Item<'a> {
    pub at: &'a PartRef,
    pub name: Option<&'a str>,
    /// Declared MIME type, lowercase `type/subtype`.
    pub ctype: Option<&'a str>,
    /// Decoded content; `None` for containers and unreadable members.
    pub data: Option<&'a [u8]>,
    /// Declared as text by MIME (mail-parser decoded it to UTF-8).
    pub declared_text: bool,
}

pub(crate) struct Scanner<'a> {
    rules: &'a [&'a Rule],
    needs: Needs,
    opts: &'a ScanOptions,
    recursion_limit: usize,
    pub(crate) limits: &'a Limits,
    deadline: Option<Instant>,
    pub(crate) total_bytes: u64,
    items: usize,
    pub(crate) result: ScanResult,
    pub(crate) stopped: bool,
}

impl<'a> Scanner<'a> {
    pub fn new(
        rules: &'a [&'a Rule],
        opts: &'a ScanOptions,
        limits: &'a Limits,
        result: ScanResult,
    ) -> Scanner<'a> {
        Scanner {
            rules,
            needs: Needs::of(rules.iter().copied()),
            opts,
            recursion_limit: opts.recursion_limit.min(MAX_RECURSION),
            limits,
            deadline: opts.timeout.map(|t| Instant::now() + t),
            total_bytes: 0,
            items: 0,
            result,
            stopped: false,
        }
    }

    pub fn run(mut self, raw: &[u8]) -> ScanResult {
        if self.rules.is_empty() {
            return self.result;
        }
        self.walk_raw(raw, &PartRef::part("0"), "", 0);
        self.result
    }

    /// Report `ERR_UNKNOWN_ERROR` with the details in the log.
    pub(crate) fn fail(&mut self, at: &PartRef, what: &str) {
        tracing::warn!(part = %at, "ScanDLP: {what}");
        self.result.record(ERR_UNKNOWN_ERROR, at);
    }

    /// Report `ERR_LIMIT_EXCEEDED`; `fatal` ends the scan.
    pub(crate) fn limit(&mut self, at: &PartRef, what: &str, fatal: bool) {
        tracing::warn!(part = %at, "ScanDLP: limit exceeded: {what}");
        self.result.record(ERR_LIMIT_EXCEEDED, at);
        self.stopped |= fatal;
    }

    /// Called before each item: the timeout and the item cap. `false` = stop.
    pub(crate) fn proceed(&mut self, at: &PartRef) -> bool {
        if self.stopped {
            return false;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(part = %at, "ScanDLP: timeout");
            self.result.record(ERR_TIMEOUT, at);
            self.stopped = true;
            return false;
        }
        self.items += 1;
        if self.items > self.limits.max_items {
            self.limit(at, "too many parts and archive members", true);
            return false;
        }
        true
    }

    /// Whether a container at `depth` may be opened; reports the error if not.
    pub(crate) fn may_descend(&mut self, at: &PartRef, depth: usize) -> bool {
        if depth < self.recursion_limit {
            true
        } else {
            self.result.record(ERR_RECURSION_LIMIT, at);
            false
        }
    }

    /// Parse a message (the fast walk, else mail-parser) and walk its parts;
    /// `at` is where a parse failure is reported.
    fn walk_raw(&mut self, raw: &[u8], at: &PartRef, prefix: &str, depth: usize) {
        if let Some(parts) = mime::parse(raw) {
            return self.walk_message(&parts, prefix, depth);
        }
        match MessageParser::new().parse(raw) {
            Some(msg) => self.walk_message(&msg.parts, prefix, depth),
            None if prefix.is_empty() => self.fail(at, "message could not be parsed"),
            None => self.fail(at, "attached message could not be parsed"),
        }
    }

    fn walk_message(&mut self, parts: &[MessagePart], prefix: &str, depth: usize) {
        let Some(root) = parts.first() else {
            return;
        };
        let id = match (&root.body, prefix) {
            (PartType::Multipart(_), "") => "0".to_string(),
            (PartType::Multipart(_), p) => p.to_string(),
            (_, "") => "1".to_string(),
            (_, p) => format!("{p}.1"),
        };
        self.walk_part(parts, 0, id, depth);
    }

    fn walk_part(&mut self, parts: &[MessagePart], idx: usize, id: String, depth: usize) {
        let Some(part) = parts.get(idx) else {
            return;
        };
        let at = PartRef::part(id);
        if !self.proceed(&at) {
            return;
        }
        let ctype = part.content_type().map(|ct| {
            let mut s = ct.ctype().to_ascii_lowercase();
            if let Some(sub) = ct.subtype() {
                s.push('/');
                s.push_str(&sub.to_ascii_lowercase());
            }
            s
        });
        let name = part.attachment_name();
        macro_rules! item {
            ($data:expr, $text:expr) => {
                Item {
                    at: &at,
                    name,
                    ctype: ctype.as_deref(),
                    data: $data,
                    declared_text: $text,
                }
            };
        }
        match &part.body {
            PartType::Multipart(children) => {
                self.examine(&item!(None, false));
                if children.is_empty() || self.stopped || !self.may_descend(&at, depth) {
                    return;
                }
                for (i, &child) in children.iter().enumerate() {
                    if self.stopped {
                        break;
                    }
                    let child_id = if at.part == "0" {
                        (i + 1).to_string()
                    } else {
                        format!("{}.{}", at.part, i + 1)
                    };
                    self.walk_part(parts, child as usize, child_id, depth + 1);
                }
            }
            PartType::Message(inner) => {
                self.examine(&item!(None, false));
                if !self.stopped && self.may_descend(&at, depth) {
                    self.walk_message(&inner.parts, &at.part, depth + 1);
                }
            }
            PartType::Text(t) | PartType::Html(t) => {
                self.inspect(&item!(Some(t.as_bytes()), true), depth);
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                let is_message = ctype
                    .as_deref()
                    .is_some_and(|c| c == "message/rfc822" || c == "message/global");
                if is_message {
                    // mail-parser stops parsing encoded nested messages after a
                    // few levels; our own recursion limit decides instead.
                    self.examine(&item!(None, false));
                    if self.stopped || !self.may_descend(&at, depth) {
                        return;
                    }
                    self.walk_raw(b.as_ref(), &at, &at.part, depth + 1);
                } else {
                    self.inspect(&item!(Some(b.as_ref()), false), depth);
                }
            }
        }
    }

    /// Test an item with content against the rules, then open it if it is an
    /// archive. The caller has called `proceed`.
    pub(crate) fn inspect(&mut self, item: &Item, depth: usize) {
        if let Some(data) = item.data {
            self.total_bytes += data.len() as u64;
            if self.total_bytes > self.limits.max_total_bytes {
                self.limit(item.at, "decoded bytes in total", true);
                return;
            }
        }
        let ft = self.examine(item);
        let (Some(data), Some(ft)) = (item.data, ft) else {
            return;
        };
        if self.stopped || !matches!(ft, FileType::Zip | FileType::Gzip | FileType::Tar) {
            return;
        }
        if self.may_descend(item.at, depth) {
            archive::open(self, ft, data, item.at, item.name, depth + 1);
        }
    }

    /// Test one item against every selected rule; returns the detected type.
    fn examine(&mut self, item: &Item) -> Option<FileType> {
        let data = item.data;
        let ft = data.and_then(filetype::detect);
        let facts = Facts {
            name: item.name,
            ctype: item.ctype,
            data,
            filetype: ft,
            text: data.is_some_and(|d| item.declared_text || filetype::looks_like_text(d, ft)),
            sha1: data
                .filter(|_| self.needs.sha1)
                .map(|d| sha1::Sha1::digest(d).into()),
            sha256: data
                .filter(|_| self.needs.sha256)
                .map(|d| sha2::Sha256::digest(d).into()),
        };
        for rule in self.rules {
            // Without partid one hit per rule is enough.
            if !self.opts.partid && self.result.matches.contains_key(rule.name()) {
                continue;
            }
            if rule.matches(&facts) {
                self.result.record(rule.name(), item.at);
                if self.opts.stop_on_match {
                    self.stopped = true;
                    break;
                }
            }
        }
        ft
    }
}
