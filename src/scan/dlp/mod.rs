//! DLP: content inspection of a message and its attachments (`ScanDLP`).
//!
//! A [`DlpEngine`] holds the pre-configured rules (the built-ins of
//! [`BUILTIN_RULES`] plus `[dlp.rules.NAME]` from config), compiled once at
//! start and shared through an `Arc`. [`DlpEngine::scan`] walks the MIME tree
//! of a raw message (its own fast walk for common shapes, mail-parser for the
//! rest; base64 / quoted-printable decoded; attached
//! `message/rfc822` messages walked too) and opens zip, gzip and tar
//! archives recursively, testing every part and archive member against the
//! selected rules. It is pure CPU work with no I/O: call it from a blocking
//! context (`spawn_blocking`) in async code.
//!
//! # Rules
//!
//! A rule has one or more types, each with a list of patterns; the rule
//! matches an item when any pattern of any type matches it (see
//! [`RuleSpec`]). Items are MIME parts (multipart containers and attached
//! messages included, for `filename` and `contenttype`) and archive members.
//!
//! # Error rules
//!
//! These are reported whenever they occur, whatever the selection, and set
//! [`ScanResult::error`]; scanning goes on where it can:
//!
//! | rule | when |
//! |---|---|
//! | `ERR_UNKNOWN_ERROR` | unparsable message or archive, unsupported zip compression, unknown rule name, bad custom rule (details in the log) |
//! | `ERR_PASSWORD_PROTECTED` | an encrypted zip entry (its name is still checked) |
//! | `ERR_RECURSION_LIMIT` | a container (multipart, attached message, archive) deeper than `recursion_limit` was not opened |
//! | `ERR_LIMIT_EXCEEDED` | a safety cap was hit: compression ratio (zip bomb), decoded bytes per member or in total, members per archive, items per message. The offending member is skipped (the total and item caps end the scan) |
//! | `ERR_TIMEOUT` | the `timeout` option expired; the scan stopped early |
//!
//! # Part ids
//!
//! IMAP-style section numbers: the parts of a multipart message are `1`, `2`,
//! …, their children `2.1`, `2.2`, …; a single-part message body is `1`; the
//! top-level multipart container (and message-level errors) is `0`; the body
//! of an attached message at `2` is `2.1` (or `2.1`, `2.2`, … if multipart).
//! An archive member appends `:` and its path, one segment per archive
//! level: `2:docs/outer.zip:inner.txt` is `inner.txt` inside `docs/outer.zip`
//! inside MIME part 2.

mod accel;
mod archive;
pub mod checks;
pub mod filetype;
mod lua;
mod mime;
pub mod rules;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use lua::{options_from_lua, result_to_lua, scan_dlp_lua, selection_from_lua};
pub use rules::{builtin_specs, Rule, RuleSet, RuleSpec, SizeRange, BUILTIN_RULES};

/// An error occurred that is not covered by another error rule.
pub const ERR_UNKNOWN_ERROR: &str = "ERR_UNKNOWN_ERROR";
/// An encrypted (password-protected) archive entry.
pub const ERR_PASSWORD_PROTECTED: &str = "ERR_PASSWORD_PROTECTED";
/// Nesting deeper than `recursion_limit`.
pub const ERR_RECURSION_LIMIT: &str = "ERR_RECURSION_LIMIT";
/// A safety cap was hit (zip bomb, too many members, too many decoded bytes).
pub const ERR_LIMIT_EXCEEDED: &str = "ERR_LIMIT_EXCEEDED";
/// The scan timed out.
pub const ERR_TIMEOUT: &str = "ERR_TIMEOUT";

/// Every built-in error rule.
pub const ERROR_RULES: &[&str] = &[
    ERR_UNKNOWN_ERROR,
    ERR_PASSWORD_PROTECTED,
    ERR_RECURSION_LIMIT,
    ERR_LIMIT_EXCEEDED,
    ERR_TIMEOUT,
];

/// A rule failed validation; names the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DlpError {
    #[error("dlp rule {rule:?}{}: {reason}", if field.is_empty() { String::new() } else { format!(", {field}") })]
    Rule {
        rule: String,
        field: String,
        reason: String,
    },
}

/// Safety caps for hostile input. The defaults suit a gateway accepting
/// messages up to ~50 MB.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest decoded archive member (bytes).
    pub max_member_bytes: u64,
    /// Decoded bytes across all parts and members of one scan.
    pub max_total_bytes: u64,
    /// Members per archive.
    pub max_archive_members: usize,
    /// Items (parts and members) examined per scan.
    pub max_items: usize,
    /// Largest decompressed/compressed ratio of a member…
    pub max_ratio: u64,
    /// …once it is larger than this many bytes (small files compress well).
    pub ratio_floor: u64,
    /// `RegexBuilder::size_limit` and `dfa_size_limit` per regex.
    pub regex_size_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_member_bytes: 32 << 20,
            max_total_bytes: 256 << 20,
            max_archive_members: 10_000,
            max_items: 50_000,
            max_ratio: 100,
            ratio_floor: 1 << 20,
            regex_size_limit: 2 << 20,
        }
    }
}

/// Which rules a scan uses.
#[derive(Debug, Clone, Default)]
pub enum Selection {
    /// Every configured rule (built-in and `[dlp.rules]`).
    #[default]
    All,
    /// Configured rules by name; an unknown name reports `ERR_UNKNOWN_ERROR`.
    Named(Vec<String>),
    /// Custom rules from a script, compiled for this scan.
    Custom(BTreeMap<String, RuleSpec>),
    /// Custom rules compiled ahead with [`DlpEngine::compile_custom`].
    Compiled(Arc<RuleSet>),
}

/// `ScanDLP` options.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanOptions {
    /// Stop at the first match of a selected rule.
    pub stop_on_match: bool,
    /// Approximate: checked before each part and archive member.
    pub timeout: Option<Duration>,
    /// How deep to open MIME containers and archives (both count).
    pub recursion_limit: usize,
    /// Return where each rule matched.
    pub partid: bool,
    /// Return `{rules = …, error = bool}`.
    pub extended_result: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            stop_on_match: false,
            timeout: None,
            recursion_limit: 9,
            partid: false,
            extended_result: false,
        }
    }
}

/// Where a match was found: a MIME part id and, inside archives, one member
/// path per archive level.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartRef {
    pub part: String,
    pub members: Vec<String>,
}

impl PartRef {
    pub fn part(id: impl Into<String>) -> PartRef {
        PartRef {
            part: id.into(),
            members: Vec::new(),
        }
    }

    pub(crate) fn member(&self, name: &str) -> PartRef {
        let mut r = self.clone();
        r.members.push(name.to_string());
        r
    }
}

impl fmt::Display for PartRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.part)?;
        for m in &self.members {
            write!(f, ":{m}")?;
        }
        Ok(())
    }
}

/// The outcome of a scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanResult {
    /// Matched rules (error rules included), sorted by name, each with the
    /// places it matched in scan order.
    pub matches: BTreeMap<String, Vec<PartRef>>,
    /// An error rule was raised: the scan may be incomplete.
    pub error: bool,
}

impl ScanResult {
    /// Matched rule names, sorted.
    pub fn rules(&self) -> Vec<&str> {
        self.matches.keys().map(String::as_str).collect()
    }

    pub fn matched(&self, rule: &str) -> bool {
        self.matches.contains_key(rule)
    }

    pub(crate) fn record(&mut self, rule: &str, at: &PartRef) {
        if ERROR_RULES.contains(&rule) {
            self.error = true;
        }
        let places = self.matches.entry(rule.to_string()).or_default();
        if !places.contains(at) {
            places.push(at.clone());
        }
    }
}

/// The compiled pre-configured rules plus the safety limits.
#[derive(Debug, Clone)]
pub struct DlpEngine {
    rules: Arc<RuleSet>,
    limits: Limits,
}

impl DlpEngine {
    /// Build from `[dlp.rules.NAME]` (config TOML as JSON values) plus the
    /// built-in rules; a config rule replaces a built-in of the same name.
    /// Errors name the rule and the bad field.
    pub fn from_config(rules: &BTreeMap<String, serde_json::Value>) -> Result<DlpEngine, DlpError> {
        Self::with_limits(rules, Limits::default())
    }

    pub fn with_limits(
        rules: &BTreeMap<String, serde_json::Value>,
        limits: Limits,
    ) -> Result<DlpEngine, DlpError> {
        let mut specs = builtin_specs();
        for (name, value) in rules {
            specs.insert(name.clone(), RuleSpec::from_json(name, value)?);
        }
        let rules = Arc::new(RuleSet::compile(&specs, &limits)?);
        Ok(DlpEngine { rules, limits })
    }

    /// The configured rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compile custom rules passed from a script (same limits as config rules).
    pub fn compile_custom(&self, rules: &BTreeMap<String, RuleSpec>) -> Result<RuleSet, DlpError> {
        RuleSet::compile(rules, &self.limits)
    }

    /// Scan a raw RFC 5322 message.
    pub fn scan(&self, raw_message: &[u8], select: &Selection, opts: &ScanOptions) -> ScanResult {
        let mut result = ScanResult::default();
        let top = PartRef::part("0");
        let custom;
        let rules: Vec<&Rule> = match select {
            Selection::All => self.rules.rules.iter().collect(),
            Selection::Named(names) => {
                let mut v: Vec<&Rule> = Vec::new();
                for n in names {
                    match self.rules.get(n) {
                        Some(r) => {
                            if !v.iter().any(|x| x.name == r.name) {
                                v.push(r)
                            }
                        }
                        None => {
                            tracing::warn!(rule = %n, "ScanDLP: unknown rule name");
                            result.record(ERR_UNKNOWN_ERROR, &top);
                        }
                    }
                }
                v
            }
            Selection::Custom(specs) => match self.compile_custom(specs) {
                Ok(set) => {
                    custom = set;
                    custom.rules.iter().collect()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ScanDLP: bad custom rule");
                    result.record(ERR_UNKNOWN_ERROR, &top);
                    return result;
                }
            },
            Selection::Compiled(set) => set.rules.iter().collect(),
        };
        scan::Scanner::new(&rules, opts, &self.limits, result).run(raw_message)
    }
}
