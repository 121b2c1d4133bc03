//! Rule specifications (as written in config or passed from a script), their
//! validation, compilation, and the built-in pre-configured rules.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use super::accel::{ContentRegex, IBAN_PATTERN};
use super::checks::Validator;
use super::filetype::FILETYPE_NAMES;
use super::{DlpError, Limits};

/// One rule as written by an operator or a script, before compilation.
/// A rule matches an item when *any* pattern of *any* of its types matches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSpec {
    /// `/regex/flags` on the attachment name or the archive member path (or
    /// its last component).
    pub filename: Vec<String>,
    /// Hex SHA-1 of a decoded part or archive member.
    pub sha1hash: Vec<String>,
    /// Hex SHA-256 of a decoded part or archive member.
    pub sha256hash: Vec<String>,
    /// Declared MIME type: `type/subtype`, `type/*`, or `/regex/flags`.
    pub contenttype: Vec<String>,
    /// Type detected from magic bytes; see [`FILETYPE_NAMES`](super::filetype::FILETYPE_NAMES).
    pub filetype: Vec<String>,
    /// `/regex/flags` on the decoded text of text parts and text-like members.
    pub content: Vec<String>,
    /// Decoded size bounds; any range containing the size matches.
    pub size: Vec<SizeRange>,
    /// Optional check every `content` match must pass (`luhn`, `iban`).
    pub validator: Option<Validator>,
}

/// Inclusive byte-size bounds. Written as `">1000000"`, `">=1M"`, `"<10k"`,
/// `"<=N"`, `"=N"`, `"N-M"` (units k, M, G: powers of 1024), or
/// `{min = N, max = M}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeRange {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

impl SizeRange {
    pub fn contains(&self, n: u64) -> bool {
        self.min.is_none_or(|m| n >= m) && self.max.is_none_or(|m| n <= m)
    }

    /// Parse the string form (see the type's doc).
    pub fn parse(s: &str) -> Result<SizeRange, String> {
        let s = s.trim();
        let num = |t: &str| -> Result<u64, String> {
            let t = t.trim();
            let (digits, mult) = match t.as_bytes().last() {
                Some(b'k' | b'K') => (&t[..t.len() - 1], 1u64 << 10),
                Some(b'm' | b'M') => (&t[..t.len() - 1], 1 << 20),
                Some(b'g' | b'G') => (&t[..t.len() - 1], 1 << 30),
                _ => (t, 1),
            };
            digits
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| {
                    format!("{s:?} is not a size (e.g. \">1000000\", \"<=10M\", \"1k-2M\")")
                })
        };
        let r = if let Some(t) = s.strip_prefix(">=") {
            SizeRange {
                min: Some(num(t)?),
                max: None,
            }
        } else if let Some(t) = s.strip_prefix("<=") {
            SizeRange {
                min: None,
                max: Some(num(t)?),
            }
        } else if let Some(t) = s.strip_prefix('>') {
            SizeRange {
                min: Some(num(t)?.saturating_add(1)),
                max: None,
            }
        } else if let Some(t) = s.strip_prefix('<') {
            let n = num(t)?;
            if n == 0 {
                return Err(format!("{s:?} can never match"));
            }
            SizeRange {
                min: None,
                max: Some(n - 1),
            }
        } else if let Some(t) = s.strip_prefix('=') {
            let n = num(t)?;
            SizeRange {
                min: Some(n),
                max: Some(n),
            }
        } else if let Some((a, b)) = s.split_once('-') {
            SizeRange {
                min: Some(num(a)?),
                max: Some(num(b)?),
            }
        } else {
            let n = num(s)?;
            SizeRange {
                min: Some(n),
                max: Some(n),
            }
        };
        if let (Some(a), Some(b)) = (r.min, r.max) {
            if a > b {
                return Err(format!("{s:?}: lower bound above upper bound"));
            }
        }
        Ok(r)
    }
}

const FIELDS: &[&str] = &[
    "filename",
    "sha1hash",
    "sha256hash",
    "contenttype",
    "filetype",
    "content",
    "size",
    "validator",
    "description",
];

impl RuleSpec {
    /// Parse and validate a rule from its JSON form (a `[dlp.rules.NAME]`
    /// table, or a script's custom rule). Each type takes a string or a list.
    /// Regexes are checked when the rule is compiled.
    pub fn from_json(rule: &str, value: &Value) -> Result<RuleSpec, DlpError> {
        validate_name(rule)?;
        let err = |field: &str, reason: String| DlpError::Rule {
            rule: rule.to_string(),
            field: field.to_string(),
            reason,
        };
        let obj = value.as_object().ok_or_else(|| {
            err(
                "",
                "a rule is a table of types (filename, content, …)".into(),
            )
        })?;
        let mut spec = RuleSpec::default();
        for (field, v) in obj {
            let strings = || -> Result<Vec<String>, DlpError> {
                let list: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    Value::Object(o) if o.is_empty() => Vec::new(),
                    other => vec![other],
                };
                list.into_iter()
                    .map(|x| {
                        x.as_str().map(str::to_string).ok_or_else(|| {
                            err(
                                field,
                                format!("expected a string or a list of strings, got {x}"),
                            )
                        })
                    })
                    .collect()
            };
            match field.as_str() {
                "filename" => spec.filename = strings()?,
                "content" => spec.content = strings()?,
                "contenttype" => spec.contenttype = strings()?,
                "sha1hash" | "sha256hash" => {
                    let want = if field == "sha1hash" { 40 } else { 64 };
                    let mut list = strings()?;
                    for h in &mut list {
                        *h = h.trim().to_ascii_lowercase();
                        if h.len() != want || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(err(field, format!("{h:?} is not {want} hex digits")));
                        }
                    }
                    if field == "sha1hash" {
                        spec.sha1hash = list;
                    } else {
                        spec.sha256hash = list;
                    }
                }
                "filetype" => {
                    let mut list = strings()?;
                    for t in &mut list {
                        *t = t.trim().to_ascii_lowercase();
                        if !FILETYPE_NAMES.contains(&t.as_str()) {
                            return Err(err(
                                field,
                                format!(
                                    "unknown file type {t:?}; known: {}",
                                    FILETYPE_NAMES.join(", ")
                                ),
                            ));
                        }
                    }
                    spec.filetype = list;
                }
                "size" => {
                    let list: Vec<&Value> = match v {
                        Value::Array(a) => a.iter().collect(),
                        other => vec![other],
                    };
                    for x in list {
                        let r = match x {
                            Value::String(s) => SizeRange::parse(s).map_err(|e| err(field, e))?,
                            Value::Number(n) => {
                                let n = n
                                    .as_u64()
                                    .ok_or_else(|| err(field, format!("{n} is not a size")))?;
                                SizeRange {
                                    min: Some(n),
                                    max: Some(n),
                                }
                            }
                            Value::Object(o) => {
                                let bound = |k: &str| -> Result<Option<u64>, DlpError> {
                                    match o.get(k) {
                                        None => Ok(None),
                                        Some(Value::Number(n)) => {
                                            n.as_u64().map(Some).ok_or_else(|| {
                                                err(field, format!("{k} = {n} is not a size"))
                                            })
                                        }
                                        Some(Value::String(s)) => SizeRange::parse(s)
                                            .ok()
                                            .and_then(|r| r.min.filter(|_| r.min == r.max))
                                            .map(Some)
                                            .ok_or_else(|| {
                                                err(field, format!("{k} = {s:?} is not a size"))
                                            }),
                                        Some(other) => {
                                            Err(err(field, format!("{k} = {other} is not a size")))
                                        }
                                    }
                                };
                                if let Some(k) = o.keys().find(|k| *k != "min" && *k != "max") {
                                    return Err(err(
                                        field,
                                        format!("unknown key {k:?} (use min, max)"),
                                    ));
                                }
                                let r = SizeRange {
                                    min: bound("min")?,
                                    max: bound("max")?,
                                };
                                if r.min.is_none() && r.max.is_none() {
                                    return Err(err(field, "give min, max or both".into()));
                                }
                                if let (Some(a), Some(b)) = (r.min, r.max) {
                                    if a > b {
                                        return Err(err(field, "min is above max".into()));
                                    }
                                }
                                r
                            }
                            other => return Err(err(field, format!("{other} is not a size"))),
                        };
                        spec.size.push(r);
                    }
                }
                "validator" => {
                    let name = v
                        .as_str()
                        .ok_or_else(|| err(field, "expected \"luhn\" or \"iban\"".into()))?;
                    spec.validator = Some(Validator::from_name(name).ok_or_else(|| {
                        err(
                            field,
                            format!("unknown validator {name:?} (use luhn, iban)"),
                        )
                    })?);
                }
                "description" => {}
                other => {
                    return Err(err(
                        other,
                        format!("unknown rule type; expected one of {}", FIELDS.join(", ")),
                    ));
                }
            }
        }
        if spec.validator.is_some() && spec.content.is_empty() {
            return Err(err(
                "validator",
                "a validator needs content patterns".into(),
            ));
        }
        if spec.is_empty() {
            return Err(err("", "the rule has no patterns".into()));
        }
        Ok(spec)
    }

    fn is_empty(&self) -> bool {
        self.filename.is_empty()
            && self.sha1hash.is_empty()
            && self.sha256hash.is_empty()
            && self.contenttype.is_empty()
            && self.filetype.is_empty()
            && self.content.is_empty()
            && self.size.is_empty()
    }
}

/// Rule names: letters, digits, `_`, `-`, `.`; the `ERR_` prefix is reserved
/// for the built-in error rules.
pub(crate) fn validate_name(rule: &str) -> Result<(), DlpError> {
    let bad = |reason: &str| DlpError::Rule {
        rule: rule.to_string(),
        field: String::new(),
        reason: reason.to_string(),
    };
    if rule.is_empty()
        || !rule
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(bad("rule names use letters, digits, '_', '-' and '.'"));
    }
    if rule.starts_with("ERR_") {
        return Err(bad("the ERR_ prefix is reserved for built-in error rules"));
    }
    Ok(())
}

/// A declared-content-type pattern.
#[derive(Debug, Clone)]
enum CtPattern {
    Exact(String),
    /// `type/*`: the stored prefix is `type/`.
    Prefix(String),
    Regex(Regex),
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: String,
    filename: Vec<Regex>,
    sha1: Vec<[u8; 20]>,
    sha256: Vec<[u8; 32]>,
    contenttype: Vec<CtPattern>,
    filetype: Vec<String>,
    content: Vec<ContentRegex>,
    validator: Option<Validator>,
    size: Vec<SizeRange>,
}

/// What an item offers to rules; computed once per item by the scanner.
pub(crate) struct Facts<'a> {
    pub name: Option<&'a str>,
    pub ctype: Option<&'a str>,
    pub data: Option<&'a [u8]>,
    pub filetype: Option<super::filetype::FileType>,
    pub text: bool,
    pub sha1: Option<[u8; 20]>,
    pub sha256: Option<[u8; 32]>,
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }

    #[cfg(test)]
    pub(crate) fn content_regexes(&self) -> &[ContentRegex] {
        &self.content
    }

    pub(crate) fn matches(&self, f: &Facts) -> bool {
        if let Some(name) = f.name {
            // Archive member paths: the full path or its last component.
            let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
            let hit =
                |r: &Regex| r.is_match(name) || (base.len() != name.len() && r.is_match(base));
            if self.filename.iter().any(hit) {
                return true;
            }
        }
        if let Some(ct) = f.ctype {
            let hit = self.contenttype.iter().any(|p| match p {
                CtPattern::Exact(s) => s == ct,
                CtPattern::Prefix(s) => ct.starts_with(s.as_str()),
                CtPattern::Regex(r) => r.is_match(ct),
            });
            if hit {
                return true;
            }
        }
        let Some(data) = f.data else { return false };
        if self.size.iter().any(|r| r.contains(data.len() as u64)) {
            return true;
        }
        if let Some(ft) = f.filetype {
            if self.filetype.iter().any(|p| ft.matches(p)) {
                return true;
            }
        }
        if let Some(h) = &f.sha1 {
            if self.sha1.contains(h) {
                return true;
            }
        }
        if let Some(h) = &f.sha256 {
            if self.sha256.contains(h) {
                return true;
            }
        }
        if f.text && !self.content.is_empty() {
            return match self.validator {
                None => self.content.iter().any(|r| r.is_match(data)),
                Some(v) => self
                    .content
                    .iter()
                    .any(|r| r.any_match(data, |m| v.check(m))),
            };
        }
        false
    }
}

/// A compiled set of rules, sorted by name; regexes are compiled once here.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
}

/// Which expensive facts any rule of a selection needs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    pub sha1: bool,
    pub sha256: bool,
}

impl Needs {
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Needs {
        let mut n = Needs::default();
        for r in rules {
            n.sha1 |= !r.sha1.is_empty();
            n.sha256 |= !r.sha256.is_empty();
        }
        n
    }
}

impl RuleSet {
    pub fn compile(
        specs: &BTreeMap<String, RuleSpec>,
        limits: &Limits,
    ) -> Result<RuleSet, DlpError> {
        let rules = specs
            .iter()
            .map(|(name, spec)| compile_rule(name, spec, limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RuleSet { rules })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.rules[i])
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Split `/pattern/flags` into the pattern and its flags.
fn split_slashes(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('/')?;
    let end = rest.rfind('/')?;
    Some((&rest[..end], &rest[end + 1..]))
}

struct Flags {
    i: bool,
    m: bool,
    s: bool,
    x: bool,
    ungreedy: bool,
}

fn parse_flags(flags: &str) -> Result<Flags, String> {
    let mut f = Flags {
        i: false,
        m: false,
        s: false,
        x: false,
        ungreedy: false,
    };
    for c in flags.chars() {
        match c {
            'i' => f.i = true,
            'm' => f.m = true,
            's' => f.s = true,
            'x' => f.x = true,
            'U' => f.ungreedy = true,
            'u' => {} // PCRE's UTF-8 mode: always on here
            other => {
                return Err(format!(
                    "unknown regex flag {other:?} (use i, m, s, x, U, u)"
                ))
            }
        }
    }
    Ok(f)
}

macro_rules! build_regex {
    ($builder:ty, $pat:expr, $f:expr, $limits:expr) => {
        <$builder>::new($pat)
            .case_insensitive($f.i)
            .multi_line($f.m)
            .dot_matches_new_line($f.s)
            .ignore_whitespace($f.x)
            .swap_greed($f.ungreedy)
            .size_limit($limits.regex_size_limit)
            .dfa_size_limit($limits.regex_size_limit)
            .build()
    };
}

fn compile_rule(name: &str, spec: &RuleSpec, limits: &Limits) -> Result<Rule, DlpError> {
    validate_name(name)?;
    let err = |field: &str, reason: String| DlpError::Rule {
        rule: name.to_string(),
        field: field.to_string(),
        reason,
    };
    let slashes = |field: &str, s: &str| -> Result<(String, Flags), DlpError> {
        let (pat, flags) = split_slashes(s)
            .ok_or_else(|| err(field, format!("{s:?} is not in /regex/flags form")))?;
        let f = parse_flags(flags).map_err(|e| err(field, format!("{s:?}: {e}")))?;
        Ok((pat.to_string(), f))
    };
    let str_regex = |field: &str, s: &str| -> Result<Regex, DlpError> {
        let (pat, f) = slashes(field, s)?;
        build_regex!(regex::RegexBuilder, &pat, f, limits)
            .map_err(|e| err(field, format!("{s:?}: {e}")))
    };
    let filename = spec
        .filename
        .iter()
        .map(|s| str_regex("filename", s))
        .collect::<Result<_, _>>()?;
    let content = spec
        .content
        .iter()
        .map(|s| {
            let (pat, f) = slashes("content", s)?;
            let re = build_regex!(regex::bytes::RegexBuilder, &pat, f, limits)
                .map_err(|e| err("content", format!("{s:?}: {e}")))?;
            Ok(ContentRegex::new(s, re, |variant| {
                build_regex!(regex::bytes::RegexBuilder, variant, f, limits)
            }))
        })
        .collect::<Result<_, _>>()?;
    let contenttype = spec
        .contenttype
        .iter()
        .map(|s| {
            if s.starts_with('/') {
                str_regex("contenttype", s).map(CtPattern::Regex)
            } else {
                let s = s.trim().to_ascii_lowercase();
                match s.strip_suffix("/*") {
                    Some(prefix) => Ok(CtPattern::Prefix(format!("{prefix}/"))),
                    None => Ok(CtPattern::Exact(s)),
                }
            }
        })
        .collect::<Result<_, _>>()?;
    let hex = |field: &str, h: &str, out: &mut [u8]| -> Result<(), DlpError> {
        let bytes = h.as_bytes();
        if bytes.len() != out.len() * 2 {
            return Err(err(
                field,
                format!("{h:?} is not {} hex digits", out.len() * 2),
            ));
        }
        for (i, o) in out.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&bytes[2 * i..2 * i + 2]).unwrap_or("zz");
            *o = u8::from_str_radix(pair, 16)
                .map_err(|_| err(field, format!("{h:?} is not hex")))?;
        }
        Ok(())
    };
    let mut sha1 = Vec::new();
    for h in &spec.sha1hash {
        let mut d = [0u8; 20];
        hex("sha1hash", h, &mut d)?;
        sha1.push(d);
    }
    let mut sha256 = Vec::new();
    for h in &spec.sha256hash {
        let mut d = [0u8; 32];
        hex("sha256hash", h, &mut d)?;
        sha256.push(d);
    }
    for t in &spec.filetype {
        if !FILETYPE_NAMES.contains(&t.as_str()) {
            return Err(err("filetype", format!("unknown file type {t:?}")));
        }
    }
    if spec.validator.is_some() && spec.content.is_empty() {
        return Err(err(
            "validator",
            "a validator needs content patterns".into(),
        ));
    }
    Ok(Rule {
        name: name.to_string(),
        filename,
        sha1,
        sha256,
        contenttype,
        filetype: spec.filetype.clone(),
        content,
        validator: spec.validator,
        size: spec.size.clone(),
    })
}

/// Names of the built-in pre-configured rules.
pub const BUILTIN_RULES: &[&str] = &["APIKEY", "CREDITCARD", "EXECUTABLE", "IBAN", "PRIVATEKEY"];

/// The built-in pre-configured rules; a `[dlp.rules.NAME]` of the same name
/// replaces one.
///
/// - `CREDITCARD`: 13–19 digit card numbers starting 2–6, optionally grouped
///   by spaces or dashes, Luhn-checked.
/// - `IBAN`: IBANs (optionally grouped by spaces), country length and mod-97 checked.
/// - `PRIVATEKEY`: PEM/OpenSSH/PGP private key armour (`-----BEGIN … PRIVATE KEY-----`).
/// - `APIKEY`: well-known credential shapes: AWS access key ids, GitHub
///   tokens, Slack tokens, Google API keys, Stripe live secret keys.
/// - `EXECUTABLE`: Windows PE, ELF and Mach-O by magic bytes, whatever the
///   declared type or name.
pub fn builtin_specs() -> BTreeMap<String, RuleSpec> {
    let content = |pats: &[&str]| pats.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut m = BTreeMap::new();
    m.insert(
        "CREDITCARD".to_string(),
        RuleSpec {
            content: content(&[
                r"/(?-u:\b)(?:[2-6]\d{3}(?:[ -]?\d{4}){2}[ -]?\d{1,7}|3\d{3}[ -]?\d{6}[ -]?\d{4,5}|[2-6]\d{12,18})(?-u:\b)/",
            ]),
            validator: Some(Validator::Luhn),
            ..RuleSpec::default()
        },
    );
    m.insert(
        "IBAN".to_string(),
        RuleSpec {
            content: content(&[IBAN_PATTERN]),
            validator: Some(Validator::Iban),
            ..RuleSpec::default()
        },
    );
    m.insert(
        "PRIVATEKEY".to_string(),
        RuleSpec {
            content: content(&[r"/-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----/"]),
            ..RuleSpec::default()
        },
    );
    m.insert(
        "APIKEY".to_string(),
        RuleSpec {
            content: content(&[
                // One alternation: a single literal-prefiltered pass.
                concat!(
                    r"/(?-u:\b)(?:(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
                    r"|gh[pousr]_[A-Za-z0-9]{36,255}(?-u:\b)",
                    r"|github_pat_[A-Za-z0-9_]{82}(?-u:\b)",
                    r"|xox[abposr]-[A-Za-z0-9-]{10,}",
                    r"|AIza[0-9A-Za-z_-]{35}",
                    r"|[sr]k_live_[0-9A-Za-z]{24,})/",
                ),
            ]),
            ..RuleSpec::default()
        },
    );
    m.insert(
        "EXECUTABLE".to_string(),
        RuleSpec {
            filetype: vec!["exe".to_string()],
            ..RuleSpec::default()
        },
    );
    m
}
