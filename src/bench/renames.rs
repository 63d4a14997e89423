//! Watching `current_frame.*` from outside, as a viewer would: an inotify watch on the output
//! folder records when each new frame's rename lands, so `dreamd bench pacing` can say how close
//! to the display's ticks a file watcher sees the frames, not only how precise the ticks are.
//!
//! The watch runs on its own thread with a blocking `poll` + `read` on the inotify descriptor
//! and takes its timestamp the moment the event is read, so the figures include everything a
//! watcher would pay (publisher hand-off, write, fsync, rename, inotify delivery).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Renames on either side whose phase sets a rename's schedule.
const WINDOW: usize = 25;
/// The name prefix of the file watched.
const TARGET: &[u8] = b"current_frame.";

/// What the watch saw.
#[derive(Debug, Default, Clone)]
pub struct RenameLog {
    /// When each rename onto `current_frame.*` was read, in order.
    pub renames: Vec<Instant>,
    /// Close-after-write events reported under the name `current_frame.*`: a temp file still
    /// open when it was renamed (a watcher sees the file "change" again after the rename).
    pub close_writes_on_target: u64,
}

/// Figures from a [`RenameLog`] for a display interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RenameFigures {
    pub renames: u64,
    /// |gap between consecutive renames − nearest whole number of intervals|.
    pub interval_error_p50_ms: f64,
    pub interval_error_p99_ms: f64,
    pub interval_error_max_ms: f64,
    /// How long after its tick each rename landed, the schedule being `anchor + k·interval`
    /// fitted from outside: the anchor is the most punctual of the 25 renames either side, so
    /// this is lateness relative to the most punctual rename nearby (which is itself at least
    /// the pacer's wake-up and the inotify delivery after the true deadline).
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
    pub close_writes_on_target: u64,
}

/// A running inotify watch on one folder.
pub struct RenameWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<RenameLog>,
}

/// Owns an inotify descriptor.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

impl RenameWatch {
    /// Starts watching `dir` (which must exist) for renames onto `current_frame.*`.
    pub fn start(dir: &Path) -> io::Result<RenameWatch> {
        let annotate =
            |e: io::Error| io::Error::new(e.kind(), format!("inotify on {}: {e}", dir.display()));
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(annotate(io::Error::last_os_error()));
        }
        let fd = Fd(fd);
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| annotate(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        // SAFETY: `path` is a valid C string for the call's duration.
        let watch = unsafe {
            libc::inotify_add_watch(
                fd.0,
                path.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE,
            )
        };
        if watch < 0 {
            return Err(annotate(io::Error::last_os_error()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("bench-inotify".into())
                .spawn(move || read_events(&fd, &stop))?
        };
        Ok(RenameWatch { stop, thread })
    }

    /// Stops the watch and returns what it saw.
    pub fn stop(self) -> RenameLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn read_events(fd: &Fd, stop: &AtomicBool) -> RenameLog {
    let mut log = RenameLog::default();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: fd.0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; 100 ms so the stop flag is seen.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
        let at = Instant::now();
        if n <= 0 {
            continue;
        }
        parse_events(&buf[..n as usize], at, &mut log);
    }
    log
}

/// Appends the events in `bytes` (a run of `inotify_event` records) to `log`.
fn parse_events(bytes: &[u8], at: Instant, log: &mut RenameLog) {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut offset = 0;
    while offset + HEADER <= bytes.len() {
        let mask = u32::from_ne_bytes(bytes[offset + 4..offset + 8].try_into().unwrap_or([0; 4]));
        let len = u32::from_ne_bytes(bytes[offset + 12..offset + 16].try_into().unwrap_or([0; 4]))
            as usize;
        let name_end = (offset + HEADER + len).min(bytes.len());
        let name = &bytes[offset + HEADER..name_end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name.starts_with(TARGET) {
            if mask & libc::IN_MOVED_TO != 0 {
                log.renames.push(at);
            }
            if mask & libc::IN_CLOSE_WRITE != 0 {
                log.close_writes_on_target += 1;
            }
        }
        offset = name_end;
    }
}

impl RenameLog {
    /// The figures for a display running at `interval` per frame.
    pub fn figures(&self, interval: Duration) -> RenameFigures {
        let period = interval.as_secs_f64();
        let mut errors = Vec::new();
        for pair in self.renames.windows(2) {
            let gap = (pair[1] - pair[0]).as_secs_f64();
            let whole = (gap / period).round().max(1.0);
            errors.push((gap - whole * period).abs());
        }
        // Each rename's phase against its neighbours' (±WINDOW renames): the schedule is
        // `anchor + k·interval`, the anchor being the most punctual neighbour, so a re-anchored
        // schedule (after a tick more than an interval late) only disturbs its own window.
        let lateness: Vec<f64> = (0..self.renames.len())
            .map(|i| {
                let lo = i.saturating_sub(WINDOW);
                let hi = (i + WINDOW + 1).min(self.renames.len());
                let earliest = self.renames[lo..hi]
                    .iter()
                    .map(|t| {
                        let d = if *t >= self.renames[i] {
                            (*t - self.renames[i]).as_secs_f64()
                        } else {
                            -(self.renames[i] - *t).as_secs_f64()
                        };
                        d - (d / period).round() * period
                    })
                    .fold(0.0, f64::min);
                -earliest
            })
            .collect();
        let mut lateness = lateness;
        let ms = |v: f64| crate::stats::round(v * 1000.0, 3);
        let q = |values: &mut Vec<f64>, q: f64| ms(quantile(values, q));
        RenameFigures {
            renames: self.renames.len() as u64,
            interval_error_p50_ms: q(&mut errors, 0.5),
            interval_error_p99_ms: q(&mut errors, 0.99),
            interval_error_max_ms: q(&mut errors, 1.0),
            lateness_p50_ms: q(&mut lateness, 0.5),
            lateness_p99_ms: q(&mut lateness, 0.99),
            lateness_max_ms: q(&mut lateness, 1.0),
            close_writes_on_target: self.close_writes_on_target,
        }
    }
}

/// The `q` quantile (nearest rank) of `values`; 0 for none.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_measure_spread_around_the_schedule() {
        let start = Instant::now();
        let at = |ms: f64| start + Duration::from_secs_f64(ms / 1000.0);
        let log = RenameLog {
            // 100 ms interval; the third rename 3 ms late, one tick missed before the last.
            renames: vec![at(0.0), at(100.0), at(203.0), at(300.0), at(500.0)],
            close_writes_on_target: 0,
        };
        let f = log.figures(Duration::from_millis(100));
        assert_eq!(f.renames, 5);
        assert_eq!(f.interval_error_max_ms, 3.0);
        assert_eq!(f.lateness_max_ms, 3.0);
        assert_eq!(f.lateness_p50_ms, 0.0);
    }

    #[test]
    fn the_watch_sees_a_rename_and_a_close_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let watch = RenameWatch::start(dir.path()).unwrap();
        let tmp = dir.path().join(".x.tmp");
        std::fs::write(&tmp, b"a").unwrap();
        std::fs::rename(&tmp, dir.path().join("current_frame.png")).unwrap();
        // (Unread identical events may be merged by the kernel; the display's are 8 ms apart
        // at least.)
        std::thread::sleep(Duration::from_millis(100));
        // A file renamed while still open: its close is reported under the new name.
        let open = std::fs::File::create(&tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("current_frame.png")).unwrap();
        drop(open);
        std::thread::sleep(Duration::from_millis(300));
        let log = watch.stop();
        assert_eq!(log.renames.len(), 2);
        assert_eq!(log.close_writes_on_target, 1);
    }
}
