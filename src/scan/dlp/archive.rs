//! Archive members (zip, gzip, tar), read through bounded readers so that a
//! bomb costs at most the cap, never its expansion.

use std::io::{Cursor, Read};

use super::filetype::FileType;
use super::scan::{Item, Scanner};
use super::{PartRef, ERR_PASSWORD_PROTECTED};

/// Open an archive item whose members sit at `depth`.
pub(crate) fn open(
    s: &mut Scanner,
    ft: FileType,
    data: &[u8],
    at: &PartRef,
    name: Option<&str>,
    depth: usize,
) {
    match ft {
        FileType::Zip => zip(s, data, at, depth),
        FileType::Gzip => gzip(s, data, at, name, depth),
        FileType::Tar => tar(s, data, at, depth),
        _ => {}
    }
}

/// How many bytes a member may decode to, and which cap sets that.
fn budget(s: &Scanner, compressed: Option<u64>) -> (u64, &'static str) {
    let l = s.limits;
    let mut best = (l.max_member_bytes, "decoded bytes per member");
    let left = l.max_total_bytes.saturating_sub(s.total_bytes);
    if left < best.0 {
        best = (left, "decoded bytes in total");
    }
    if let Some(c) = compressed {
        let by_ratio = c.saturating_mul(l.max_ratio).max(l.ratio_floor);
        if by_ratio < best.0 {
            best = (by_ratio, "compression ratio (archive bomb)");
        }
    }
    best
}

enum Bounded {
    Data(Vec<u8>),
    /// The cap was reached; the reason.
    TooBig(&'static str),
}

/// Read at most `cap` bytes; one more means the member is over the cap.
fn read_bounded(
    r: impl Read,
    (cap, why): (u64, &'static str),
    hint: u64,
) -> std::io::Result<Bounded> {
    let mut buf = Vec::with_capacity(hint.min(cap).min(1 << 20) as usize);
    r.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        Ok(Bounded::TooBig(why))
    } else {
        Ok(Bounded::Data(buf))
    }
}

/// Test a member: content if readable, else just its name.
fn member(s: &mut Scanner, at: &PartRef, name: &str, data: Option<&[u8]>, depth: usize) {
    let item = Item {
        at,
        name: Some(name),
        ctype: None,
        data,
        declared_text: false,
    };
    s.inspect(&item, depth);
}

/// Entry counts claimed by every end-of-central-directory record (zip64
/// included) near the end of `data`, so a forged count is refused before the
/// zip reader sizes anything by it.
fn zip_claimed_entries(data: &[u8]) -> Vec<u64> {
    let u16_at = |p: usize| data.get(p..p + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |p: usize| {
        data.get(p..p + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])))
    };
    let start = data.len().saturating_sub(22 + 65535 + 20);
    // Records start at most 22 bytes before the end; newest (last) first.
    let last = data.len().saturating_sub(22);
    let hay = &data[start.min(last)..(last + 4).min(data.len())];
    let mut out = Vec::new();
    for off in memchr::memmem::rfind_iter(hay, b"PK\x05\x06") {
        let i = start.min(last) + off;
        if let Some(n) = u16_at(i + 10) {
            out.push(u64::from(n));
        }
        // A zip64 locator sits just before the record.
        if i >= 20 && data[i - 20..].starts_with(b"PK\x06\x07") {
            let rec = u64_at(i - 20 + 8)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| data.get(o..).is_some_and(|d| d.starts_with(b"PK\x06\x06")));
            match rec.and_then(|o| u64_at(o + 32)) {
                Some(n) => out.push(n),
                None => out.push(u64::MAX),
            }
        }
    }
    out
}

fn zip(s: &mut Scanner, data: &[u8], at: &PartRef, depth: usize) {
    let max = s.limits.max_archive_members;
    if zip_claimed_entries(data).iter().any(|&n| n > max as u64) {
        s.limit(at, "zip: too many members", false);
        return;
    }
    let mut ar = match zip::ZipArchive::new(Cursor::new(data)) {
        Ok(a) => a,
        Err(e) => return s.fail(at, &format!("zip: {e}")),
    };
    if ar.len() > max {
        s.limit(at, "zip: too many members", false);
        return;
    }
    for i in 0..ar.len() {
        if s.stopped {
            return;
        }
        let meta = ar.by_index_raw(i).map(|f| {
            (
                f.name().to_string(),
                f.encrypted(),
                f.is_dir(),
                f.size(),
                f.compressed_size(),
            )
        });
        let (name, encrypted, is_dir, size, csize) = match meta {
            Ok(m) => m,
            Err(e) => {
                s.fail(at, &format!("zip member {i}: {e}"));
                continue;
            }
        };
        if is_dir {
            continue;
        }
        let mat = at.member(&name);
        if !s.proceed(&mat) {
            return;
        }
        if encrypted {
            s.result.record(ERR_PASSWORD_PROTECTED, &mat);
            member(s, &mat, &name, None, depth);
            continue;
        }
        let cap = budget(s, Some(csize.min(data.len() as u64)));
        if size > cap.0 {
            // The declared size is already over: don't even start.
            s.limit(&mat, cap.1, cap.1 == "decoded bytes in total");
            member(s, &mat, &name, None, depth);
            continue;
        }
        let read = ar
            .by_index(i)
            .map_err(std::io::Error::other)
            .and_then(|f| read_bounded(f, cap, size));
        match read {
            Ok(Bounded::Data(buf)) => member(s, &mat, &name, Some(&buf), depth),
            Ok(Bounded::TooBig(why)) => {
                s.limit(&mat, why, why == "decoded bytes in total");
                member(s, &mat, &name, None, depth);
            }
            Err(e) => {
                s.fail(&mat, &format!("zip: {e}"));
                member(s, &mat, &name, None, depth);
            }
        }
    }
}

fn gzip(s: &mut Scanner, data: &[u8], at: &PartRef, name: Option<&str>, depth: usize) {
    let mut dec = flate2::read::MultiGzDecoder::new(data);
    let cap = budget(s, Some(data.len() as u64));
    let read = read_bounded(&mut dec, cap, data.len() as u64 * 4);
    let inner = dec
        .header()
        .and_then(|h| h.filename())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .or_else(|| {
            let n = name?;
            let lower = n.to_ascii_lowercase();
            if lower.ends_with(".tgz") {
                Some(format!("{}.tar", &n[..n.len() - 4]))
            } else if lower.ends_with(".gz") {
                Some(n[..n.len() - 3].to_string())
            } else {
                None
            }
        })
        .unwrap_or_else(|| "gunzip".to_string());
    let mat = at.member(&inner);
    if !s.proceed(&mat) {
        return;
    }
    match read {
        Ok(Bounded::Data(buf)) => member(s, &mat, &inner, Some(&buf), depth),
        Ok(Bounded::TooBig(why)) => {
            s.limit(&mat, why, why == "decoded bytes in total");
            member(s, &mat, &inner, None, depth);
        }
        Err(e) => {
            s.fail(&mat, &format!("gzip: {e}"));
            member(s, &mat, &inner, None, depth);
        }
    }
}

fn tar(s: &mut Scanner, data: &[u8], at: &PartRef, depth: usize) {
    let mut ar = tar::Archive::new(data);
    let entries = match ar.entries() {
        Ok(e) => e,
        Err(e) => return s.fail(at, &format!("tar: {e}")),
    };
    let mut count = 0usize;
    for entry in entries {
        if s.stopped {
            return;
        }
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => return s.fail(at, &format!("tar: {e}")),
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        count += 1;
        if count > s.limits.max_archive_members {
            s.limit(at, "tar: too many members", false);
            return;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mat = at.member(&name);
        if !s.proceed(&mat) {
            return;
        }
        let size = entry.size();
        let cap = budget(s, None);
        if size > cap.0 {
            s.limit(&mat, cap.1, cap.1 == "decoded bytes in total");
            member(s, &mat, &name, None, depth);
            continue;
        }
        match read_bounded(&mut entry, cap, size) {
            Ok(Bounded::Data(buf)) => member(s, &mat, &name, Some(&buf), depth),
            Ok(Bounded::TooBig(why)) => {
                s.limit(&mat, why, why == "decoded bytes in total");
                member(s, &mat, &name, None, depth);
            }
            Err(e) => {
                s.fail(&mat, &format!("tar: {e}"));
                member(s, &mat, &name, None, depth);
            }
        }
    }
}
