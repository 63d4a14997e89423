//! Atomic file replacement: a reader sees the old file or the new one, never a partial one.
//!
//! The bytes go to a temporary file in the destination's own folder (so the rename stays on one
//! filesystem), are flushed to disk with fsync, the file is closed, and it is renamed over the
//! destination ([`write_atomic`], or in two steps with [`stage`] and [`StagedFile::commit`]). Temporary names start with `.` and end in `.tmp`; [`remove_stale_temps`] clears
//! the ones a crash left behind.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically (temp file, fsync, close, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    stage(path, bytes)?.commit()
}

/// A temp file holding the next content of its destination, written, synced and closed, waiting
/// for [`StagedFile::commit`] (one rename). Dropped uncommitted, it is deleted.
///
/// Splitting the slow part (write + fsync) from the instant part (rename) lets the display
/// prepare the next `current_frame` ahead of its tick and only rename at the tick.
#[derive(Debug)]
pub struct StagedFile {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

/// Writes `bytes` to a temp file beside `path`, fsyncs and closes it (so watchers see no
/// close-after-write once it is renamed), and returns it ready to commit.
pub fn stage(path: &Path, bytes: &[u8]) -> io::Result<StagedFile> {
    let annotate =
        |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", path.display()));
    let tmp = temp_path(path).map_err(annotate)?;
    let staged = StagedFile {
        tmp,
        dest: path.to_path_buf(),
        committed: false,
    };
    let written = (|| {
        let mut file = match File::create(&staged.tmp) {
            // The folder was deleted while the daemon runs: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                    tracing::warn!("{} was missing; created it again", parent.display());
                }
                File::create(&staged.tmp)?
            }
            other => other?,
        };
        file.write_all(bytes)?;
        file.sync_data()
        // `file` is closed here, before any rename.
    })();
    // On error `staged` is dropped, which removes the temp file.
    written.map_err(annotate)?;
    Ok(staged)
}

impl StagedFile {
    /// The file this one replaces when committed.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temp file over the destination.
    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            io::Error::new(e.kind(), format!("writing {}: {e}", self.dest.display()))
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp_name))
}

/// Deletes temporary files (`.*.tmp`) left in `dir` by an earlier process; returns how many.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && entry.file_type()?.is_file() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn staged_files_are_committed_by_rename_or_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current_frame.png");
        let staged = stage(&path, b"next").unwrap();
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"next");
        drop(stage(&path, b"never shown").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read(&path).unwrap(), b"next");
    }

    #[test]
    fn error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-file"), b"").unwrap();
        let path = dir.path().join("a-file").join("x.png");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("x.png"), "{err}");
    }

    #[test]
    fn a_deleted_folder_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames").join("00000001.png");
        write_atomic(&path, b"x").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn stale_temps_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".status.json.1.0.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("status.json"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(dir.path().join("status.json").exists());
    }
}
