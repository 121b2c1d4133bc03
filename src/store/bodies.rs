//! Message bodies in append-only segment files under `<data_dir>/bodies/`.
//! Owns those files and nothing else: which body is where is kept in sled
//! (the `body_loc` tree, written by `queue`), and this module never reads
//! or writes sled.
//!
//! Why not in sled: sled keeps values inline in its leaves and rewrites a
//! whole leaf on every split or consolidation, so a 10 KiB body was written
//! ~6 times over (profile: 13% of the intake workers in sled's insert path,
//! 18% in its I/O threads). Here a body is written once, with `pwrite`, and
//! made durable by [`Bodies::sync_dirty`], which the queue's group commit
//! runs alongside sled's flush; the 250 waits for both.
//!
//! Each location carries the CRC-32 of its body. sled may write a location
//! to disk (its own timer, or the flush running alongside) before the
//! body's segment is synced; after a power loss such a location names bytes
//! that never reached the disk. Such a message was never acknowledged, and
//! recovery drops it by the CRC ([`Bodies::verify`]).
//!
//! A segment is deleted when its last body goes. Leftovers that keep an old
//! segment alive (a deferred message among thousands delivered) are moved
//! into sled by the queue ([`Bodies::sparse_segments`]), so the disk holds
//! at most about four times the live bytes, plus the segments still young.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// A segment is sealed (no more appends) once it holds this much.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A sealed segment this old whose live bytes are under a quarter of it is
/// sparse: its bodies are worth moving out so the file can go.
pub const SPARSE_AFTER: Duration = Duration::from_secs(30);

/// Where one body is: segment, offset, length, CRC-32 of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLoc {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// Version tag of the encoded form.
const LOC_V1: u8 = 1;
const LOC_LEN: usize = 1 + 8 + 8 + 8 + 4;

impl BodyLoc {
    pub fn encode(&self) -> [u8; LOC_LEN] {
        let mut out = [0u8; LOC_LEN];
        out[0] = LOC_V1;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..25].copy_from_slice(&self.len.to_be_bytes());
        out[25..29].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    pub fn decode(v: &[u8]) -> Option<BodyLoc> {
        if v.len() != LOC_LEN || v[0] != LOC_V1 {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().expect("8 bytes"));
        Some(BodyLoc {
            segment: u64_at(1),
            offset: u64_at(9),
            len: u64_at(17),
            crc: u32::from_be_bytes(v[25..29].try_into().expect("4 bytes")),
        })
    }
}

struct Segment {
    file: Arc<File>,
    /// Bytes written (the next offset).
    len: u64,
    /// Bodies still referred to, and their bytes.
    live: u64,
    live_bytes: u64,
    /// When it stopped taking appends (`None`: current, or found at open).
    sealed: Option<Instant>,
}

#[derive(Default)]
struct State {
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to, once one is opened.
    current: Option<u64>,
    next_id: u64,
    /// Written to since the last [`Bodies::sync_dirty`].
    dirty: Vec<(u64, Arc<File>)>,
    /// A segment file was created since the last sync: the directory needs
    /// an fsync too.
    new_file: bool,
}

/// The segment files of one data_dir.
pub struct Bodies {
    dir: PathBuf,
    state: Mutex<State>,
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Bodies {
    /// Open the segments under `dir`, given every location sled still holds.
    /// Segments no location names are deleted (what a crash between a last
    /// removal and the unlink leaves); appends go to a new segment.
    pub fn open(dir: &Path, locations: &[BodyLoc]) -> io::Result<Bodies> {
        std::fs::create_dir_all(dir)?;
        let mut state = State::default();
        let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for l in locations {
            let e = live.entry(l.segment).or_default();
            e.0 += 1;
            e.1 += l.len;
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            state.next_id = state.next_id.max(id + 1);
            let Some(&(count, bytes)) = live.get(&id) else {
                std::fs::remove_file(entry.path())?;
                continue;
            };
            let file = File::open(entry.path())?;
            let len = file.metadata()?.len();
            state.segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    len,
                    live: count,
                    live_bytes: bytes,
                    sealed: None,
                },
            );
        }
        Ok(Bodies {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append one body; durable after the next [`Bodies::sync_dirty`].
    pub fn append(&self, body: &[u8]) -> io::Result<BodyLoc> {
        let crc = crc32fast::hash(body);
        let mut st = self.lock();
        let current = match st.current {
            Some(id) if st.segments[&id].len < SEGMENT_BYTES => id,
            sealed => {
                if let Some(old) = sealed.and_then(|id| st.segments.get_mut(&id)) {
                    old.sealed = Some(Instant::now());
                }
                let id = st.next_id;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(self.dir.join(segment_name(id)))?;
                st.next_id += 1;
                st.new_file = true;
                st.segments.insert(
                    id,
                    Segment {
                        file: Arc::new(file),
                        len: 0,
                        live: 0,
                        live_bytes: 0,
                        sealed: None,
                    },
                );
                st.current = Some(id);
                id
            }
        };
        let seg = st.segments.get_mut(&current).expect("current segment");
        let offset = seg.len;
        if let Err(e) = seg.file.write_all_at(body, offset) {
            // Whatever part was written stays unreferenced; cut it off so
            // the next body starts at a known offset.
            let _ = seg.file.set_len(offset);
            return Err(e);
        }
        seg.len += body.len() as u64;
        seg.live += 1;
        seg.live_bytes += body.len() as u64;
        let file = seg.file.clone();
        if !st.dirty.iter().any(|(id, _)| *id == current) {
            st.dirty.push((current, file));
        }
        Ok(BodyLoc {
            segment: current,
            offset,
            len: body.len() as u64,
            crc,
        })
    }

    /// fdatasync every segment written since the last call (and the
    /// directory, if a segment was created). Run by the group commit with
    /// sled's flush.
    pub fn sync_dirty(&self) -> io::Result<()> {
        let (dirty, new_file) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.dirty),
                std::mem::take(&mut st.new_file),
            )
        };
        let res = (|| {
            for (_, f) in &dirty {
                f.sync_data()?;
            }
            if new_file {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if res.is_err() {
            // Not synced: the next round tries again.
            let mut st = self.lock();
            st.new_file |= new_file;
            for d in dirty {
                if !st.dirty.iter().any(|(id, _)| *id == d.0) {
                    st.dirty.push(d);
                }
            }
        }
        res
    }

    /// The body at `loc`, checked against its CRC.
    pub fn read(&self, loc: &BodyLoc) -> io::Result<Bytes> {
        let file = self
            .lock()
            .segments
            .get(&loc.segment)
            .map(|s| s.file.clone())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("body segment {} is gone", segment_name(loc.segment)),
                )
            })?;
        let len = usize::try_from(loc.len).map_err(|_| io::ErrorKind::InvalidData)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, loc.offset)?;
        if crc32fast::hash(&buf) != loc.crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "body in {} at {} fails its CRC",
                    segment_name(loc.segment),
                    loc.offset
                ),
            ));
        }
        Ok(Bytes::from(buf))
    }

    /// Whether the body at `loc` is whole on disk (recovery's test).
    pub fn verify(&self, loc: &BodyLoc) -> bool {
        self.read(loc).is_ok()
    }

    /// A body is no longer referred to. A segment left with none, and no
    /// longer taking appends, is deleted.
    ///
    /// Safe before sled's removal of the location is durable: every body in
    /// the segment was removed, so after a crash recovery drops the entries
    /// that still name it (they were delivered or deleted already).
    pub fn release(&self, loc: &BodyLoc) {
        let doomed = {
            let mut st = self.lock();
            let current = st.current;
            let Some(seg) = st.segments.get_mut(&loc.segment) else {
                return;
            };
            seg.live = seg.live.saturating_sub(1);
            seg.live_bytes = seg.live_bytes.saturating_sub(loc.len);
            if seg.live == 0 && current != Some(loc.segment) {
                st.segments.remove(&loc.segment);
                st.dirty.retain(|(id, _)| *id != loc.segment);
                true
            } else {
                false
            }
        };
        if doomed {
            if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(loc.segment))) {
                tracing::warn!(segment = %segment_name(loc.segment), error = %e, "removing an empty body segment failed");
            }
        }
    }

    /// Sealed segments at least [`SPARSE_AFTER`] old holding less than a
    /// quarter of their bytes live (segments found at open count as sealed
    /// then).
    pub fn sparse_segments(&self) -> Vec<u64> {
        let mut st = self.lock();
        let now = Instant::now();
        let current = st.current;
        let mut out = Vec::new();
        for (id, seg) in st.segments.iter_mut() {
            if Some(*id) == current {
                continue;
            }
            let sealed = *seg.sealed.get_or_insert(now);
            if now.duration_since(sealed) >= SPARSE_AFTER && seg.live_bytes * 4 < seg.len {
                out.push(*id);
            }
        }
        out
    }

    /// Segment files on disk and their total size (for tests and metrics).
    pub fn usage(&self) -> (usize, u64) {
        let st = self.lock();
        (st.segments.len(), st.segments.values().map(|s| s.len).sum())
    }

    /// Take appends to a new segment from now on (tests: makes the current
    /// one sealed, as filling it would).
    #[cfg(test)]
    pub fn seal_current(&self, age: Duration) {
        let mut st = self.lock();
        if let Some(id) = st.current.take() {
            if let Some(seg) = st.segments.get_mut(&id) {
                seg.sealed = Instant::now().checked_sub(age);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_round_trip() {
        let l = BodyLoc {
            segment: 7,
            offset: 1 << 40,
            len: 12345,
            crc: 0xdead_beef,
        };
        assert_eq!(BodyLoc::decode(&l.encode()), Some(l));
        assert_eq!(BodyLoc::decode(b"raw message bytes"), None);
        assert_eq!(BodyLoc::decode(&[]), None);
    }

    #[test]
    fn append_read_release_deletes_sealed_empty_segments() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bodies::open(dir.path(), &[]).unwrap();
        let a = b.append(b"first").unwrap();
        let c = b.append(b"second").unwrap();
        assert_eq!(a.segment, c.segment);
        assert_eq!(c.offset, 5);
        b.sync_dirty().unwrap();
        assert_eq!(&b.read(&c).unwrap()[..], b"second");
        b.seal_current(Duration::ZERO);
        let d = b.append(b"third").unwrap();
        assert_ne!(d.segment, a.segment);
        b.release(&a);
        assert_eq!(b.usage().0, 2);
        b.release(&c);
        // The sealed segment had no body left: gone from disk.
        assert_eq!(b.usage().0, 1);
        assert!(!dir.path().join(segment_name(a.segment)).exists());
        assert!(b.read(&a).is_err());
        // The current one stays even when empty.
        b.release(&d);
        assert_eq!(b.usage().0, 1);
    }

    #[test]
    fn a_torn_body_fails_its_crc_and_reopen_drops_unreferenced_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, torn, unreferenced) = {
            let b = Bodies::open(dir.path(), &[]).unwrap();
            let kept = b.append(b"kept body").unwrap();
            let torn = b.append(b"torn body").unwrap();
            b.seal_current(Duration::ZERO);
            let unreferenced = b.append(b"never committed").unwrap();
            b.sync_dirty().unwrap();
            (kept, torn, unreferenced)
        };
        // A power loss that kept the file's length but not the last bytes.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_name(torn.segment)))
            .unwrap();
        f.write_all_at(b"\0\0\0\0", torn.offset + 2).unwrap();
        let b = Bodies::open(dir.path(), &[kept, torn]).unwrap();
        assert!(b.verify(&kept));
        assert!(!b.verify(&torn));
        assert!(!dir.path().join(segment_name(unreferenced.segment)).exists());
        // New appends never reuse a segment id.
        let next = b.append(b"x").unwrap();
        assert!(next.segment > unreferenced.segment);
    }

    #[test]
    fn sparse_segments_are_old_sealed_and_mostly_dead() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bodies::open(dir.path(), &[]).unwrap();
        let locs: Vec<BodyLoc> = (0..8).map(|_| b.append(&[b'x'; 100]).unwrap()).collect();
        assert!(b.sparse_segments().is_empty(), "current segment");
        b.seal_current(SPARSE_AFTER);
        assert!(b.sparse_segments().is_empty(), "all live");
        for l in &locs[..6] {
            b.release(l);
        }
        // 2 of 8 live is not under a quarter.
        assert!(b.sparse_segments().is_empty());
        b.release(&locs[6]);
        assert_eq!(b.sparse_segments(), vec![locs[0].segment]);
    }
}
