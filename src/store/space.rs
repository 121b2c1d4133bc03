//! Free space on the data_dir filesystem (statvfs), cached for 100 ms so
//! that checking it before every transaction costs next to nothing.
//! Intake refuses mail below `[queue] min_free` (see `smtp::session::mail`)
//! so the databases never reach ENOSPC by mail intake.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE: Duration = Duration::from_millis(100);

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
