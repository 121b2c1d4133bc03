//! Free space on the data_dir filesystem (statvfs), cached for 100 ms so
//! that checking it before every transaction costs next to nothing.
//! Intake refuses mail below `[queue] min_free` (see `smtp::session::mail`)
//! so the databases never reach ENOSPC by mail intake.
//!
//! Something else can still fill the filesystem (another program, a log).
//! For that the daemon keeps a space reserve: a file of [`RESERVE_BYTES`]
//! in data_dir, given up when the databases cannot be opened for lack of
//! space, so `sluice run` still starts on a full disk (intake then refuses
//! with 452 4.3.1) and `sluice queue list/delete` work. sled needs about a
//! log segment (512 KiB) per database to open; the reserve holds several.
//! The daemon puts the reserve back once there is room for it again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE: Duration = Duration::from_millis(100);

/// The reserve file's name in data_dir, and its size.
pub const RESERVE_FILE: &str = "space.reserve";
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Bytes available to an unprivileged writer, and the filesystem's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub avail: u64,
    pub total: u64,
}

pub(crate) struct SpaceProbe {
    path: PathBuf,
    last: Mutex<Option<(Instant, Space)>>,
}

impl SpaceProbe {
    pub(crate) fn new(path: &Path) -> SpaceProbe {
        SpaceProbe {
            path: path.to_path_buf(),
            last: Mutex::new(None),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The free space now (at most 100 ms old); `None` if statvfs fails.
    pub(crate) fn get(&self) -> Option<Space> {
        let mut last = self.last.lock().expect("space lock");
        if let Some((at, s)) = *last {
            if at.elapsed() < CACHE {
                return Some(s);
            }
        }
        let s = statvfs(&self.path)?;
        crate::metrics::storage_free(s.avail);
        *last = Some((Instant::now(), s));
        Some(s)
    }
}

/// Give the reserve back to the filesystem; true if there was one.
pub fn release_reserve(data_dir: &Path) -> bool {
    std::fs::remove_file(data_dir.join(RESERVE_FILE)).is_ok()
}

/// What [`ensure_reserve`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserve {
    Present,
    Created,
    /// Not enough room: `avail` bytes free, the reserve needs more.
    NoRoom {
        avail: u64,
    },
}

/// Put the reserve in place if it is missing and the filesystem has room
/// for it with `headroom` bytes to spare (the intake reserve: the file must
/// not be what pushes intake under `[queue] min_free`). Written, not
/// sparse, and synced, so the blocks are really taken.
pub fn ensure_reserve(data_dir: &Path, headroom: u64) -> std::io::Result<Reserve> {
    use std::io::Write;
    let path = data_dir.join(RESERVE_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= RESERVE_BYTES) {
        return Ok(Reserve::Present);
    }
    let avail = statvfs(data_dir).map_or(0, |s| s.avail);
    if avail < RESERVE_BYTES.saturating_add(headroom) {
        return Ok(Reserve::NoRoom { avail });
    }
    let tmp = data_dir.join(format!("{RESERVE_FILE}.tmp"));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| Reserve::Created)
}

// The casts matter where statvfs fields are 32-bit.
#[allow(clippy::unnecessary_cast)]
pub fn statvfs(path: &Path) -> Option<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: c is a NUL-terminated path; st is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded and filled st.
    let st = unsafe { st.assume_init() };
    let frsize = if st.f_frsize > 0 {
        st.f_frsize as u64
    } else {
        st.f_bsize as u64
    };
    Some(Space {
        avail: (st.f_bavail as u64).saturating_mul(frsize),
        total: (st.f_blocks as u64).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::MinFree;

    #[test]
    fn reserve_is_created_once_and_released() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            super::ensure_reserve(dir.path(), 0).unwrap(),
            super::Reserve::Created
        );
        let len = std::fs::metadata(dir.path().join(super::RESERVE_FILE))
            .unwrap()
            .len();
        assert_eq!(len, super::RESERVE_BYTES);
        assert_eq!(
            super::ensure_reserve(dir.path(), 0).unwrap(),
            super::Reserve::Present
        );
        assert!(matches!(
            std::fs::remove_file(dir.path().join(super::RESERVE_FILE))
                .map(|()| super::ensure_reserve(dir.path(), u64::MAX / 2).unwrap()),
            Ok(super::Reserve::NoRoom { .. })
        ));
        assert!(!super::release_reserve(dir.path()));
        super::ensure_reserve(dir.path(), 0).unwrap();
        assert!(super::release_reserve(dir.path()));
        assert!(!dir.path().join(super::RESERVE_FILE).exists());
    }

    #[test]
    fn min_free_forms_and_default() {
        assert_eq!(MinFree::parse("512MiB"), Ok(MinFree::Bytes(512 << 20)));
        assert_eq!(MinFree::parse("1GiB"), Ok(MinFree::Bytes(1 << 30)));
        assert_eq!(MinFree::parse("5%"), Ok(MinFree::Percent(5.0)));
        assert!(MinFree::parse("5 parsecs").is_err());
        assert!(MinFree::parse("120%").is_err());
        // Default: 5% or 1 GiB, whichever is smaller.
        assert_eq!(MinFree::reserve(None, 100 << 20), 5 << 20);
        assert_eq!(MinFree::reserve(None, 1 << 40), 1 << 30);
        assert_eq!(MinFree::reserve(Some(MinFree::Bytes(7)), 1 << 40), 7);
    }

    #[test]
    fn statvfs_reports_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = super::statvfs(dir.path()).unwrap();
        assert!(s.total > 0 && s.avail <= s.total, "{s:?}");
    }
}
