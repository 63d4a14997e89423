//! The files under `logs/` as writers that outlive their folder and a wrong clock.
//!
//! [`DailyLog`] is `dreamd.<date>.log`, a new file each UTC day, keeping the newest
//! `logging.keep_days`; [`Reopening`] wraps the size-rotated `dreamd.jsonl`. Both look, at most
//! once a second, whether their file is still there, and when the folder or file was deleted
//! (an operator cleaning up, a tmp reaper) they create it again instead of writing into an
//! unlinked file for ever. Dates come from [`crate::clock`], so a clock before 1970 or after
//! 9999 cannot panic the log writer (the `time`-based rolling appender did).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How often a writer looks whether its file still exists (and the date changed).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `dir/dreamd.<YYYY-MM-DD>.log`, one file per UTC day, the newest `keep` kept.
pub struct DailyLog {
    dir: PathBuf,
    keep: usize,
    date: String,
    file: Option<File>,
    checked: Instant,
}

impl DailyLog {
    /// Opens today's file in `dir` (creating the folder).
    pub fn new(dir: &Path, keep: usize) -> io::Result<DailyLog> {
        let mut log = DailyLog {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            date: String::new(),
            file: None,
            checked: Instant::now(),
        };
        log.open(crate::clock::utc_date(SystemTime::now()))?;
        Ok(log)
    }

    fn path(&self, date: &str) -> PathBuf {
        self.dir.join(format!("dreamd.{date}.log"))
    }

    fn open(&mut self, date: String) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&date))?;
        self.file = Some(file);
        self.date = date;
        self.prune();
        Ok(())
    }

    /// Deletes the oldest `dreamd.*.log` files beyond `keep`.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dreamd.") && n.ends_with(".log"))
            })
            .collect();
        logs.sort();
        let surplus = logs.len().saturating_sub(self.keep);
        for old in &logs[..surplus] {
            let _ = std::fs::remove_file(old);
        }
    }

    /// At most once a second: a new day, or a deleted file or folder, opens the file again.
    fn refresh(&mut self) {
        if self.file.is_some() && self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let date = crate::clock::utc_date(SystemTime::now());
        if date != self.date || self.file.is_none() || !self.path(&date).exists() {
            // When even that fails (a read-only disk), lines are dropped until it works.
            if self.open(date).is_err() {
                self.file = None;
            }
        }
    }
}

impl Write for DailyLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.refresh();
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// A writer for the file at `path`, made again by `make` when the file has disappeared.
pub struct Reopening<W, F> {
    path: PathBuf,
    make: F,
    inner: W,
    checked: Instant,
}

impl<W: Write, F: FnMut() -> W> Reopening<W, F> {
    /// Wraps `make()`'s writer for the file at `path`.
    pub fn new(path: PathBuf, mut make: F) -> Self {
        let inner = make();
        Reopening {
            path,
            make,
            inner,
            checked: Instant::now(),
        }
    }
}

impl<W: Write, F: FnMut() -> W> Write for Reopening<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.checked.elapsed() >= CHECK_EVERY {
            self.checked = Instant::now();
            if !self.path.exists() {
                if let Some(dir) = self.path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = self.inner.flush();
                self.inner = (self.make)();
            }
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_log_folder_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let mut log = DailyLog::new(&logs, 3).unwrap();
        log.write_all(b"one\n").unwrap();
        std::fs::remove_dir_all(&logs).unwrap();
        log.checked -= CHECK_EVERY;
        log.write_all(b"two\n").unwrap();
        let today = log.path(&log.date.clone());
        assert_eq!(std::fs::read_to_string(today).unwrap(), "two\n");

        let json = logs.join("dreamd.jsonl");
        let mut writer = Reopening::new(json.clone(), || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&json)
                .unwrap()
        });
        writer.write_all(b"{}\n").unwrap();
        std::fs::remove_dir_all(&logs).unwrap();
        writer.checked -= CHECK_EVERY;
        writer.write_all(b"{\"a\":1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&json).unwrap(), "{\"a\":1}\n");
    }

    #[test]
    fn only_the_newest_days_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for day in ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"] {
            std::fs::write(dir.path().join(format!("dreamd.{day}.log")), b"x").unwrap();
        }
        let _log = DailyLog::new(dir.path(), 2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2);
        assert_eq!(names[0], "dreamd.2020-01-04.log");
    }
}
