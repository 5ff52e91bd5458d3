//! Writing run outputs so that a crash (power loss, SIGKILL, a full disk) leaves either
//! the old file or the new one, never a torn mix: write a temporary file in the same
//! folder, sync it, rename it over the old one, sync the folder.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};

/// The temporary sibling `path` is staged in.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` and syncs them to disk (no rename).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io_err(path, "create", e))?;
    f.write_all(bytes).map_err(|e| io_err(path, "write", e))?;
    f.sync_all().map_err(|e| io_err(path, "sync", e))
}

/// Renames `from` to `to` and syncs the folder, so the rename itself survives a crash.
pub fn rename_synced(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| io_err(to, "replace", e))?;
    sync_dir(to.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Replaces `path` with `bytes` atomically (see the module docs). On an error the
/// temporary file is removed and `path` is as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let r = write_synced(&tmp, bytes).and_then(|()| rename_synced(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A run folder held by one `hpff train` (the lead process of a job): an exclusive
/// advisory lock on `.hpff.lock` in it, which the OS drops when the process ends, however
/// it ends, so a lock left by a dead run never blocks a resume. (Advisory: other
/// programs may still write there; NFS honours it only where its lock service runs.)
#[derive(Debug)]
pub struct RunLock {
    _held: File,
}

/// Takes `dir`'s [`RunLock`], or says that a live run holds it (and which process).
pub fn lock_run(dir: &Path) -> Result<RunLock> {
    let path = dir.join(".hpff.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err(&path, "open the run lock", e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let who = match holder.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            return Err(crate::error::Error::msg(format!(
                "{} is in use by a running hpff train{who}; wait for it to end, or choose another --out",
                dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, "lock", e)),
    }
    // Who holds it, for the message above; the lock itself is what counts.
    let _ = f.set_len(0).and_then(|()| f.write_all(std::process::id().to_string().as_bytes()));
    Ok(RunLock { _held: f })
}

/// Bytes free for an unprivileged writer on the file system holding `dir`, where the OS says.
#[cfg(unix)]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs the call fills in.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // 32-bit on some targets
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn free_bytes(_: &Path) -> Option<u64> {
    None
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all(); // best effort: not every OS syncs folders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_cleans_up_on_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(tmp_path(&p), d.path().join("a.json.tmp"));
        assert!(!tmp_path(&p).exists());
        // A target that cannot be replaced (a folder): error naming it, no temporary left.
        let q = d.path().join("dir");
        std::fs::create_dir(&q).unwrap();
        std::fs::write(q.join("x"), b"x").unwrap();
        let e = write_atomic(&q, b"three").unwrap_err().to_string();
        assert!(e.contains("dir: cannot replace"), "{e}");
        assert!(!tmp_path(&q).exists());
    }
}
