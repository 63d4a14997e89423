//! One daemon per output folder: an exclusive `flock` on the output folder itself, taken at
//! start-up before anything is written there and held until the process ends.
//!
//! Two daemons sharing a folder overwrite each other's frames and status.json, breaking the
//! "one writer per file" rule and the promise that a `/frames/` file never changes. The lock is
//! on the folder's own descriptor, so it creates no file (the folder's listing stays exactly
//! the daemon's outputs), it is released by the kernel when the process dies however it dies
//! (no stale lock after a crash or SIGKILL), and `O_CLOEXEC` keeps it out of child processes.
//!
//! `flock` does not record who holds a lock, so a refused daemon names the holder by the `pid`
//! in the folder's status.json, which the holder writes right after taking the lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the output folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The folder could not be opened or locked.
    #[error("cannot lock output folder {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "output folder {path} is in use by another dreamd ({holder}); stop it, or give this one \
         another --output"
    )]
    Held { path: PathBuf, holder: String },
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct OutputLock {
    _folder: File,
}

/// Takes the exclusive lock on `dir` (which must exist), without waiting.
pub fn lock(dir: &Path) -> Result<OutputLock, LockError> {
    let io = |error| LockError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let folder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io)?;
    // SAFETY: a valid descriptor owned by `folder`.
    if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(OutputLock { _folder: folder });
    }
    let error = std::io::Error::last_os_error();
    if error.kind() != std::io::ErrorKind::WouldBlock {
        return Err(io(error));
    }
    Err(LockError::Held {
        path: dir.to_path_buf(),
        holder: holder(dir),
    })
}

/// "pid N" from the folder's status.json, or why it is not known.
fn holder(dir: &Path) -> String {
    let pid = crate::regular_file::read_bounded(&dir.join("status.json"), 1024 * 1024)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|status| status["pid"].as_u64());
    match pid {
        Some(pid) => format!("pid {pid}, from its status.json"),
        None => "pid not known yet: it has not written status.json".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        std::fs::write(dir.path().join("status.json"), br#"{"pid": 4242}"#).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains("pid 4242") && err.contains("in use"), "{err}");
        drop(first);
        let _again = lock(dir.path()).unwrap();
        // No file was created for the lock.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
