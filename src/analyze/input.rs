//! Finding the log files, opening them (gzip too), and streaming their lines through the right
//! reader. Memory is bounded: one line at a time, and a line longer than [`MAX_LINE_BYTES`] is
//! skipped without being held.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Serialize;

use super::jsonl::{self, Parsed};
use super::legacy::{LegacyReader, LineKind};
use super::record::Record;
use super::AnalyzeError;

/// Longest line read; longer ones are counted as unparseable and skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Read buffer per file.
const READ_BUFFER: usize = 256 * 1024;

/// The log format of one file, detected from its first non-empty line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// dreamd's `dreamd.jsonl`.
    Jsonl,
    /// The original Python controller log.
    Python,
    /// Nothing to detect from (an empty file).
    Empty,
}

impl Format {
    /// Short name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Python => "python",
            Format::Empty => "empty",
        }
    }
}

/// What reading one file found.
#[derive(Debug, Clone, Serialize)]
pub struct InputStats {
    pub path: String,
    pub format: Format,
    pub gzip: bool,
    /// Uncompressed bytes read.
    pub bytes: u64,
    pub lines: u64,
    /// Lines that became records.
    pub records: u64,
    /// Valid lines with nothing for the report (unknown events, other log messages).
    pub ignored_lines: u64,
    /// Lines that could not be parsed (skipped).
    pub unparseable_lines: u64,
    /// The file ended without a newline and that last line could not be parsed.
    pub truncated_last_line: bool,
    /// Python logs: `[TIMING]` blocks that ended without all their lines.
    pub incomplete_timing_blocks: u64,
    /// Python logs: foreign records inside `[TIMING]` blocks (skipped, block kept).
    pub foreign_lines_in_blocks: u64,
}

fn is_log_name(name: &str) -> bool {
    name == "dreamd.jsonl"
        || name.starts_with("dreamd.jsonl.")
        || name.ends_with(".jsonl.gz")
        || name == "dream_controller.log"
        || name.starts_with("dream_controller.log.")
}

/// Numeric rotation suffix (`dreamd.jsonl.3` → 3, `dreamd.jsonl.2.gz` → 2); the live file is 0.
fn rotation_index(name: &str) -> u64 {
    name.trim_end_matches(".gz")
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The files to read: a folder gives its `dreamd.jsonl` and rotated siblings (`dreamd.jsonl.*`,
/// `*.jsonl.gz`; the Python `dream_controller.log` and its `.1`–`.3` likewise), oldest first;
/// a file is read as given. No path means `logs/`.
pub fn resolve(paths: &[PathBuf]) -> Result<Vec<PathBuf>, AnalyzeError> {
    let default = [PathBuf::from("logs")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| AnalyzeError::Open {
            path: path.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|source| AnalyzeError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let mut found: Vec<(bool, u64, String, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_log_name(&name) && entry.path().is_file() {
                let python = name.starts_with("dream_controller");
                // Higher rotation index = older: read it first.
                found.push((python, u64::MAX - rotation_index(&name), name, entry.path()));
            }
        }
        if found.is_empty() {
            return Err(AnalyzeError::NoLogs {
                dir: path.display().to_string(),
            });
        }
        found.sort();
        files.extend(found.into_iter().map(|(_, _, _, p)| p));
    }
    Ok(files)
}

fn open(path: &Path) -> Result<(Box<dyn BufRead>, bool), AnalyzeError> {
    let error = |source| AnalyzeError::Open {
        path: path.display().to_string(),
        source,
    };
    let mut file = BufReader::with_capacity(READ_BUFFER, File::open(path).map_err(error)?);
    let gzip = file.fill_buf().map_err(error)?.starts_with(&[0x1f, 0x8b]);
    if gzip {
        let decoder = MultiGzDecoder::new(file);
        Ok((
            Box::new(BufReader::with_capacity(READ_BUFFER, decoder)),
            true,
        ))
    } else {
        Ok((Box::new(file), false))
    }
}

/// Reads the next line into `buf` (newline stripped). Returns `None` at the end, else whether
/// the line ended with a newline; a line over [`MAX_LINE_BYTES`] is skipped and reported as
/// `Some(Err(()))`.
fn next_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<bool, ()>>> {
    buf.clear();
    let read = reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if read == 0 {
        return Ok(None);
    }
    let newline = buf.last() == Some(&b'\n');
    if !newline && buf.len() > MAX_LINE_BYTES {
        buf.clear();
        reader.skip_until(b'\n')?;
        return Ok(Some(Err(())));
    }
    if newline {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(Ok(newline)))
}

/// Streams one file through its reader, handing each record to `sink`.
pub fn read_file(path: &Path, sink: &mut dyn FnMut(Record)) -> Result<InputStats, AnalyzeError> {
    let (mut reader, gzip) = open(path)?;
    let mut stats = InputStats {
        path: path.display().to_string(),
        format: Format::Empty,
        gzip,
        bytes: 0,
        lines: 0,
        records: 0,
        ignored_lines: 0,
        unparseable_lines: 0,
        truncated_last_line: false,
        incomplete_timing_blocks: 0,
        foreign_lines_in_blocks: 0,
    };
    let mut legacy = LegacyReader::default();
    let mut pending = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let line = next_line(reader.as_mut(), &mut buf).map_err(|source| AnalyzeError::Read {
            path: stats.path.clone(),
            source,
        })?;
        let Some(line) = line else { break };
        stats.lines += 1;
        stats.bytes += buf.len() as u64 + 1;
        let (Ok(newline), Ok(text)) = (line, std::str::from_utf8(&buf)) else {
            stats.unparseable_lines += 1;
            continue;
        };
        if text.trim().is_empty() {
            stats.ignored_lines += 1;
            continue;
        }
        if stats.format == Format::Empty {
            stats.format = if text.trim_start().starts_with('{') {
                Format::Jsonl
            } else {
                Format::Python
            };
        }
        let parsed_ok = match stats.format {
            Format::Jsonl => match jsonl::parse_line(text) {
                Parsed::Record(record) => {
                    stats.records += 1;
                    sink(record);
                    true
                }
                Parsed::Ignored => {
                    stats.ignored_lines += 1;
                    true
                }
                Parsed::Unparseable => false,
            },
            _ => {
                let kind = legacy.line(text, &mut pending);
                if pending.is_empty() && kind == LineKind::Record {
                    stats.ignored_lines += 1;
                }
                for record in pending.drain(..) {
                    stats.records += 1;
                    sink(record);
                }
                kind == LineKind::Record
            }
        };
        if !parsed_ok {
            stats.unparseable_lines += 1;
            if !newline {
                stats.truncated_last_line = true;
            }
        }
    }
    legacy.finish(&mut pending);
    for record in pending.drain(..) {
        stats.records += 1;
        sink(record);
    }
    stats.incomplete_timing_blocks = legacy.incomplete_blocks;
    stats.foreign_lines_in_blocks = legacy.foreign_in_blocks;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(path: &Path) -> (InputStats, Vec<Record>) {
        let mut records = Vec::new();
        let stats = read_file(path, &mut |r| records.push(r)).unwrap();
        (stats, records)
    }

    const PAIR: &str = r#"{"timestamp":"2024-05-01T12:00:00Z","event":"pair","from":0,"to":1,"frames":4,"total_ms":10.0,"outcome":"ok"}"#;

    #[test]
    fn truncated_last_line_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dreamd.jsonl");
        std::fs::write(&path, format!("{PAIR}\n{}", &PAIR[..40])).unwrap();
        let (stats, records) = collect(&path);
        assert_eq!(records.len(), 1);
        assert_eq!(stats.unparseable_lines, 1);
        assert!(stats.truncated_last_line);
        assert_eq!(stats.format, Format::Jsonl);
    }

    #[test]
    fn gzip_is_read_transparently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dreamd.jsonl.1.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        writeln!(gz, "{PAIR}\n{PAIR}").unwrap();
        gz.finish().unwrap();
        let (stats, records) = collect(&path);
        assert!(stats.gzip);
        assert_eq!(records.len(), 2);
    }

    #[test]
    fn overlong_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        std::fs::write(&path, format!("{PAIR}\n{long}\n{PAIR}\n")).unwrap();
        let (stats, records) = collect(&path);
        assert_eq!(records.len(), 2);
        assert_eq!(stats.unparseable_lines, 1);
        assert!(!stats.truncated_last_line);
    }

    /// The names `resolve` gives for a folder holding `files`.
    fn resolved(files: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        for name in files {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        resolve(&[dir.path().to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn folder_lists_rotated_siblings_oldest_first() {
        let names = resolved(&[
            "dreamd.jsonl",
            "dreamd.jsonl.1",
            "dreamd.jsonl.2.gz",
            "other.txt",
        ]);
        assert_eq!(
            names,
            ["dreamd.jsonl.2.gz", "dreamd.jsonl.1", "dreamd.jsonl"]
        );
    }

    #[test]
    fn folder_with_the_python_log_and_its_rotations() {
        let names = resolved(&[
            "dream_controller.log",
            "dream_controller.log.1",
            "daemon.log",
        ]);
        assert_eq!(names, ["dream_controller.log.1", "dream_controller.log"]);
    }

    #[test]
    fn missing_file_and_empty_folder_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let err = resolve(std::slice::from_ref(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.jsonl"), "{err}");
        let err = resolve(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
