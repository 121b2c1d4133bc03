//! The "map" source: a file of addresses, one entry a line —
//! `user@domain` (exists), `@domain` (every address of the domain exists),
//! `!user@domain` (refused, even under an `@domain` entry); `#` starts a
//! comment; case does not matter. An address neither listed nor under a
//! listed domain is not the map's to answer (the next source is asked).
//! Re-read on SIGHUP; a file that cannot be read keeps the old entries.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::{BoxFuture, RecipientSource, SourceAnswer};

#[derive(Debug, Default, PartialEq, Eq)]
struct Entries {
    addresses: HashSet<String>,
    domains: HashSet<String>,
    refused: HashSet<String>,
}

pub struct MapSource {
    path: PathBuf,
    entries: RwLock<Entries>,
}

fn parse(path: &Path, text: &str) -> Result<Entries, String> {
    let mut e = Entries::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("{}:{}: {why}: {line:?}", path.display(), n + 1);
        let (refuse, item) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if item.contains(char::is_whitespace) {
            return Err(bad("one address per line"));
        }
        let item = item.to_ascii_lowercase();
        match item.split_once('@') {
            Some(("", d)) if !refuse && valid_domain(d) => {
                e.domains.insert(d.to_string());
            }
            Some((l, d)) if !l.is_empty() && valid_domain(d) => {
                if refuse {
                    e.refused.insert(item);
                } else {
                    e.addresses.insert(item);
                }
            }
            _ => return Err(bad("expected user@domain, @domain or !user@domain")),
        }
    }
    Ok(e)
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty() && !d.contains('@') && d.split('.').all(|l| !l.is_empty())
}

impl MapSource {
    pub fn open(path: &Path) -> Result<MapSource, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("map {}: {e}", path.display()))?;
        Ok(MapSource {
            path: path.to_path_buf(),
            entries: RwLock::new(parse(path, &text)?),
        })
    }

    fn answer(&self, address: &str) -> SourceAnswer {
        let e = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if e.refused.contains(address) {
            return SourceAnswer::Unknown;
        }
        if e.addresses.contains(address) {
            return SourceAnswer::Exists { rewrite: None };
        }
        let domain = address.rsplit_once('@').map(|x| x.1).unwrap_or("");
        if e.domains.contains(domain) {
            return SourceAnswer::Exists { rewrite: None };
        }
        SourceAnswer::NoAnswer
    }
}

impl RecipientSource for MapSource {
    fn name(&self) -> &'static str {
        "map"
    }

    fn lookup<'a>(&'a self, address: &'a str) -> BoxFuture<'a, SourceAnswer> {
        Box::pin(async move { self.answer(address) })
    }

    fn reload(&self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("map {}: {e}", self.path.display()))?;
        let fresh = parse(&self.path, &text)?;
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("recipients");
        std::fs::write(
            &p,
            "# users\nBob@Example.org\n@catchall.example  # the whole domain\n!noreply@catchall.example\n\n",
        )
        .unwrap();
        let m = MapSource::open(&p).unwrap();
        assert_eq!(
            m.answer("bob@example.org"),
            SourceAnswer::Exists { rewrite: None }
        );
        assert_eq!(
            m.answer("x@catchall.example"),
            SourceAnswer::Exists { rewrite: None }
        );
        assert_eq!(m.answer("noreply@catchall.example"), SourceAnswer::Unknown);
        assert_eq!(m.answer("carol@example.org"), SourceAnswer::NoAnswer);
        std::fs::write(&p, "carol@example.org\n").unwrap();
        m.reload().unwrap();
        assert_eq!(
            m.answer("carol@example.org"),
            SourceAnswer::Exists { rewrite: None }
        );
        assert_eq!(m.answer("bob@example.org"), SourceAnswer::NoAnswer);
        // A broken file keeps the old entries and names the line.
        std::fs::write(&p, "carol@example.org\nnot an address\n").unwrap();
        let e = m.reload().unwrap_err();
        assert!(e.contains(":2:"), "{e}");
        assert_eq!(
            m.answer("carol@example.org"),
            SourceAnswer::Exists { rewrite: None }
        );
        for bad in ["@", "user@", "!@domain.example", "a@b@c"] {
            std::fs::write(&p, format!("{bad}\n")).unwrap();
            assert!(MapSource::open(&p).is_err(), "{bad}");
        }
    }
}
