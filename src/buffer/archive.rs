//! Frames on disk: `output/frames/NNNNNNNN.<ext>`, saved atomically, pruned by count and, when
//! `output.keep_mb` is set, by their total size (a small disk does not stay full).
//!
//! On start-up the archive removes temp files a crash left behind, prunes to the retention
//! count, and tells the daemon the first free sequence number, so numbering continues across
//! restarts and a frame's file name always means the same picture.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::atomic_file::{remove_stale_temps, write_atomic};
use crate::config::FrameFormat;
use crate::faults::Faults;
use crate::frame::EncodedFrame;

/// Digits in a frame's file name.
const SEQ_DIGITS: usize = 8;

/// The frames folder and its retention.
pub struct FrameArchive {
    dir: PathBuf,
    keep: AtomicUsize,
    /// Byte budget of the frames on disk (`u64::MAX`: none).
    keep_bytes: AtomicU64,
    kept: Mutex<Kept>,
    faults: Arc<Faults>,
}

/// The frames on disk, oldest first, with their sizes.
#[derive(Default)]
struct Kept {
    files: VecDeque<(PathBuf, u64)>,
    bytes: u64,
}

impl FrameArchive {
    /// Opens (creating) `dir`, keeping at most `keep` frames. Returns the archive and the
    /// sequence number after the highest one already on disk (0 for an empty folder).
    pub fn open(dir: &Path, keep: usize) -> io::Result<(FrameArchive, u64)> {
        let annotate = |e: io::Error| {
            io::Error::new(e.kind(), format!("frames folder {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(annotate)?;
        remove_stale_temps(dir).map_err(annotate)?;
        let mut existing: Vec<(u64, PathBuf, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(annotate)? {
            let entry = entry.map_err(annotate)?;
            let path = entry.path();
            if let Some(seq) = parse_seq(&path) {
                let bytes = entry.metadata().map_or(0, |m| m.len());
                existing.push((seq, path, bytes));
            }
        }
        existing.sort_unstable_by_key(|(seq, _, _)| *seq);
        let next_seq = existing.last().map_or(0, |(seq, _, _)| seq + 1);
        let kept = Kept {
            bytes: existing.iter().map(|(_, _, bytes)| bytes).sum(),
            files: existing
                .into_iter()
                .map(|(_, path, bytes)| (path, bytes))
                .collect(),
        };
        let archive = FrameArchive {
            dir: dir.to_path_buf(),
            keep: AtomicUsize::new(keep),
            keep_bytes: AtomicU64::new(u64::MAX),
            kept: Mutex::new(kept),
            faults: Faults::none(),
        };
        archive.prune()?;
        Ok((archive, next_seq))
    }

    /// Routes every frame write through `faults` (fault injection).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Changes the retention count (a config reload); the surplus goes with the next save.
    pub fn set_keep(&self, keep: usize) {
        self.keep.store(keep.max(1), Ordering::Relaxed);
    }

    /// Sets the byte budget (`output.keep_mb`; None: count only). The oldest frames go until
    /// the rest fit, at the next save; the newest frame always stays.
    pub fn set_keep_bytes(&self, keep_bytes: Option<u64>) {
        self.keep_bytes
            .store(keep_bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Bytes of the frames on disk that the archive tracks.
    pub fn bytes(&self) -> u64 {
        self.kept.lock().bytes
    }

    /// The file a frame is saved to.
    pub fn path_for(&self, frame: &EncodedFrame) -> PathBuf {
        self.path_of(frame.seq, frame.format)
    }

    /// The file frame `seq` is (or was) saved to in `format`: always inside the frames folder,
    /// since the name is built from the number alone.
    pub fn path_of(&self, seq: u64, format: FrameFormat) -> PathBuf {
        self.dir.join(format!(
            "{:0width$}.{}",
            seq,
            format.extension(),
            width = SEQ_DIGITS
        ))
    }

    /// Writes `frame` atomically, then deletes the oldest frames beyond the retention count.
    pub fn save(&self, frame: &EncodedFrame) -> io::Result<PathBuf> {
        let path = self.path_for(frame);
        self.faults
            .before_frame_write()
            .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
        write_atomic(&path, &frame.bytes)?;
        {
            let mut kept = self.kept.lock();
            kept.files
                .push_back((path.clone(), frame.bytes.len() as u64));
            kept.bytes += frame.bytes.len() as u64;
        }
        self.prune()?;
        Ok(path)
    }

    /// Number of frames on disk that the archive tracks.
    pub fn len(&self) -> usize {
        self.kept.lock().files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn prune(&self) -> io::Result<()> {
        loop {
            let oldest = {
                let mut kept = self.kept.lock();
                let over_count = kept.files.len() > self.keep.load(Ordering::Relaxed);
                let over_bytes =
                    kept.files.len() > 1 && kept.bytes > self.keep_bytes.load(Ordering::Relaxed);
                if !(over_count || over_bytes) {
                    return Ok(());
                }
                let oldest = kept.files.pop_front();
                if let Some((_, bytes)) = &oldest {
                    kept.bytes -= bytes;
                }
                oldest
            };
            if let Some((path, _)) = oldest {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("pruning {}: {e}", path.display()),
                        ))
                    }
                }
            }
        }
    }
}

/// `00000123.png` → 123, `123456789.png` → 123456789 (numbers past 99,999,999 simply have
/// more digits); anything else → None.
fn parse_seq(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    let ext = path.extension()?.to_str()?;
    let canonical = stem.len() == SEQ_DIGITS || (stem.len() > SEQ_DIGITS && !stem.starts_with('0'));
    if !canonical || !stem.bytes().all(|b| b.is_ascii_digit()) || !matches!(ext, "png" | "jpg") {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FrameFormat;
    use crate::frame::FrameKind;
    use std::sync::Arc;

    fn frame(seq: u64) -> EncodedFrame {
        EncodedFrame {
            seq,
            kind: FrameKind::Keyframe { index: 0 },
            format: FrameFormat::Png,
            bytes: Arc::from(vec![seq as u8]),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn keeps_only_the_newest_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, next) = FrameArchive::open(dir.path(), 3).unwrap();
        assert_eq!(next, 0);
        for seq in 0..5 {
            archive.save(&frame(seq)).unwrap();
        }
        assert_eq!(
            files(dir.path()),
            ["00000002.png", "00000003.png", "00000004.png"]
        );
        assert_eq!(archive.len(), 3);
    }

    #[test]
    fn a_byte_budget_keeps_only_what_fits() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, _) = FrameArchive::open(dir.path(), 100).unwrap();
        archive.set_keep_bytes(Some(3));
        for seq in 0..6 {
            archive.save(&frame(seq)).unwrap();
        }
        // One byte a frame: the three newest fit.
        assert_eq!(
            files(dir.path()),
            ["00000003.png", "00000004.png", "00000005.png"]
        );
        assert_eq!(archive.bytes(), 3);
        // Even a budget smaller than one frame keeps the newest one.
        archive.set_keep_bytes(Some(0));
        archive.save(&frame(6)).unwrap();
        assert_eq!(files(dir.path()), ["00000006.png"]);
        // Reopened, sizes are read from disk.
        let (archive, _) = FrameArchive::open(dir.path(), 100).unwrap();
        assert_eq!(archive.bytes(), 1);
    }

    #[test]
    fn numbering_continues_past_eight_digits() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (archive, _) = FrameArchive::open(dir.path(), 10).unwrap();
            for seq in [99_999_998, 99_999_999, 100_000_000] {
                archive.save(&frame(seq)).unwrap();
            }
        }
        assert!(dir.path().join("100000000.png").exists());
        let (archive, next) = FrameArchive::open(dir.path(), 10).unwrap();
        assert_eq!(next, 100_000_001);
        assert_eq!(archive.len(), 3);
        assert_eq!(parse_seq(Path::new("+1234567.png")), None);
        assert_eq!(parse_seq(Path::new("012345678.png")), None);
    }

    #[test]
    fn reopening_continues_numbering_prunes_and_cleans_temps() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (archive, _) = FrameArchive::open(dir.path(), 10).unwrap();
            for seq in 0..6 {
                archive.save(&frame(seq)).unwrap();
            }
        }
        std::fs::write(dir.path().join(".00000006.png.99.0.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let (_, next) = FrameArchive::open(dir.path(), 2).unwrap();
        assert_eq!(next, 6);
        assert_eq!(
            files(dir.path()),
            ["00000004.png", "00000005.png", "notes.txt"]
        );
    }
}
