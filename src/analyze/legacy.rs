//! Reader for the original Python controller's log (`dream_controller.log`), so a run before the
//! migration can be compared with one after (original-system.md §5.1).
//!
//! Every line is a record `%Y-%m-%d %H:%M:%S - logger - LEVEL - message`; the timestamp is
//! naive local time and is taken as UTC. Multi-line `[TIMING]` blocks (the BATCHED variant and
//! the older per-frame one) are assembled by matching each record's label, not by line offset,
//! so a foreign record interleaved inside a block is skipped instead of breaking it. A pair's
//! `[OK] Interpolated a->b in Ts (Us/frame)` line, before or after its block, supplies the frame
//! count the per-frame variant lacks; a pair with only that line still counts, with its total.

use super::record::{
    parse_timestamp, DisplayStatsRecord, KeyframeRecord, PairRecord, Record, Timestamp,
};

/// A block still open after this many records without its last line is closed as it stands.
const MAX_BLOCK_RECORDS: usize = 40;

/// What the reader made of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A log record (used or not).
    Record,
    /// No `time - logger - LEVEL - message` prefix (a traceback line, say).
    Unparseable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Batched,
    PerFrame,
}

/// A `[TIMING]` block being assembled.
#[derive(Debug)]
struct Block {
    variant: Variant,
    pair: PairRecord,
    records: usize,
    precompute_s: Option<f64>,
    slerp_all_s: Option<f64>,
    per_frame_slerp_ms: Option<f64>,
    per_frame_save_ms: Option<f64>,
    complete: bool,
}

/// An `[OK] Interpolated` line not yet matched with a block.
#[derive(Debug, Clone, Copy)]
struct OkLine {
    ts: Timestamp,
    from: u64,
    to: u64,
    elapsed_s: f64,
    per_frame_s: f64,
}

/// Streaming reader state for one Python log file.
#[derive(Debug, Default)]
pub struct LegacyReader {
    block: Option<Block>,
    ok_line: Option<OkLine>,
    /// Blocks closed without a total time (nothing usable); reported.
    pub incomplete_blocks: u64,
    /// Foreign records seen inside `[TIMING]` blocks and skipped.
    pub foreign_in_blocks: u64,
}

/// All numbers in `text`, in order (`12`, `0.400`, `-3.5`).
fn numbers(text: &str) -> impl Iterator<Item = f64> + '_ {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|token| token.trim_matches(|c| c == '.' || c == '-').parse().ok())
}

fn first_number(text: &str) -> Option<f64> {
    numbers(text).next()
}

/// `a->b` at the start of `text`.
fn pair_ids(text: &str) -> Option<(u64, u64)> {
    let (a, rest) = text.split_once("->")?;
    let a = a.trim().trim_start_matches("KF").parse().ok()?;
    let b: String = rest
        .trim_start()
        .trim_start_matches("KF")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((a, b.parse().ok()?))
}

/// Splits a record into timestamp and message; `None` without the Python prefix.
fn split_record(line: &str) -> Option<(Timestamp, &str)> {
    let mut parts = line.splitn(4, " - ");
    let time = parts.next()?;
    let _logger = parts.next()?;
    let _level = parts.next()?;
    let message = parts.next()?;
    // `%(asctime)s` without a date format adds `,mmm`.
    let ts = parse_timestamp(&time.replacen(',', ".", 1))?;
    Some((ts, message.trim_end_matches(['\r', '\n'])))
}

impl LegacyReader {
    /// Reads one line, pushing any finished records to `out`.
    pub fn line(&mut self, line: &str, out: &mut Vec<Record>) -> LineKind {
        let Some((ts, message)) = split_record(line) else {
            return LineKind::Unparseable;
        };
        let text = message.trim();
        if let Some(rest) = text.strip_prefix("[TIMING] Interpolation ") {
            self.close_block(out);
            if let Some((from, to)) = pair_ids(rest) {
                let variant = if rest.contains("(BATCHED)") {
                    Variant::Batched
                } else {
                    Variant::PerFrame
                };
                self.block = Some(Block {
                    variant,
                    pair: PairRecord::new(ts, from, to),
                    records: 0,
                    precompute_s: None,
                    slerp_all_s: None,
                    per_frame_slerp_ms: None,
                    per_frame_save_ms: None,
                    complete: false,
                });
                // An `[OK]` line that came first belongs to this block.
                if let Some(ok) = self.ok_line.take() {
                    if (ok.from, ok.to) == (from, to) {
                        self.ok_line = Some(ok);
                    } else {
                        out.push(Record::Pair(total_only(ok)));
                    }
                }
            }
            return LineKind::Record;
        }
        if self.block_line(text) {
            return LineKind::Record;
        }
        if let Some(rest) = text.strip_prefix("[OK] Interpolated ") {
            self.ok(ts, rest, out);
            return LineKind::Record;
        }
        if let Some(block) = &mut self.block {
            block.records += 1;
            self.foreign_in_blocks += 1;
            if block.records > MAX_BLOCK_RECORDS {
                self.close_block(out);
            }
        }
        if let Some(record) = other_line(ts, text, out) {
            out.push(record);
        }
        LineKind::Record
    }

    /// Flushes what is still open at the end of a file.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        self.close_block(out);
        if let Some(ok) = self.ok_line.take() {
            out.push(Record::Pair(total_only(ok)));
        }
    }

    /// A line of the open block; returns whether it was one.
    fn block_line(&mut self, text: &str) -> bool {
        let Some(block) = &mut self.block else {
            return false;
        };
        let seconds_ms = |rest: &str| first_number(rest).map(|s| s * 1000.0);
        let pair = &mut block.pair;
        if let Some(rest) = text.strip_prefix("Total time:") {
            pair.total_ms = seconds_ms(rest);
        } else if let Some(rest) = text.strip_prefix("Slerp precompute:") {
            block.precompute_s = first_number(rest);
        } else if text == "Phase timings:" || text == "Avg per frame:" {
        } else if let Some(rest) = text.strip_prefix("- Slerp all:") {
            block.slerp_all_s = first_number(rest);
        } else if let Some(rest) = text.strip_prefix("- Decode all:") {
            let mut values = numbers(rest);
            pair.decode_ms = values.next().map(|s| s * 1000.0);
            pair.decode_ms_per_frame = values.next();
        } else if let Some(rest) = text.strip_prefix("- Save all:") {
            pair.save_ms = seconds_ms(rest);
        } else if let Some(rest) = text.strip_prefix("[BATCHED] Single VAE lock acquisition for") {
            pair.frames = first_number(rest).map(|n| n as u64);
            pair.lock_acquisitions = Some(1);
            block.complete = true;
        } else if let Some(rest) = text.strip_prefix("- Slerp:") {
            block.per_frame_slerp_ms = first_number(rest);
        } else if let Some(rest) = text.strip_prefix("- Decode (VAE):") {
            pair.decode_ms_per_frame = first_number(rest);
        } else if let Some(rest) = text.strip_prefix("- Save (I/O):") {
            block.per_frame_save_ms = first_number(rest);
        } else if text.starts_with("- Overhead:") {
        } else if text.starts_with("Unaccounted time:") {
            block.complete = true;
        } else {
            return false;
        }
        block.records += 1;
        true
    }

    /// `[OK] Interpolated a->b in Ts (Us/frame)`.
    fn ok(&mut self, ts: Timestamp, rest: &str, out: &mut Vec<Record>) {
        let Some((from, to)) = pair_ids(rest) else {
            return;
        };
        let after = rest.split_once(" in ").map_or("", |(_, after)| after);
        let mut values = numbers(after);
        let (Some(elapsed_s), per_frame_s) = (values.next(), values.next()) else {
            return;
        };
        let ok = OkLine {
            ts,
            from,
            to,
            elapsed_s,
            per_frame_s: per_frame_s.unwrap_or(0.0),
        };
        match &self.block {
            Some(block) if (block.pair.from, block.pair.to) == (from, to) => {
                self.ok_line = Some(ok);
                self.close_block(out);
            }
            _ => {
                if let Some(previous) = self.ok_line.replace(ok) {
                    out.push(Record::Pair(total_only(previous)));
                }
            }
        }
    }

    /// Emits the open block (merged with its `[OK]` line when that has been seen).
    fn close_block(&mut self, out: &mut Vec<Record>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let ok = match self.ok_line {
            Some(ok) if (ok.from, ok.to) == (block.pair.from, block.pair.to) => {
                self.ok_line = None;
                Some(ok)
            }
            _ => None,
        };
        let mut pair = block.pair;
        if pair.total_ms.is_none() {
            pair.total_ms = ok.map(|ok| ok.elapsed_s * 1000.0);
        }
        if pair.total_ms.is_none() {
            self.incomplete_blocks += 1;
            return;
        }
        if pair.frames.is_none() {
            pair.frames = ok
                .filter(|ok| ok.per_frame_s > 0.0)
                .map(|ok| (ok.elapsed_s / ok.per_frame_s).round() as u64);
        }
        match block.variant {
            Variant::Batched => {
                let slerp = block.precompute_s.unwrap_or(0.0) + block.slerp_all_s.unwrap_or(0.0);
                if block.precompute_s.is_some() || block.slerp_all_s.is_some() {
                    pair.slerp_ms = Some(slerp * 1000.0);
                }
            }
            Variant::PerFrame => {
                // One lock acquisition per frame; totals from per-frame averages × frames.
                if let Some(frames) = pair.frames {
                    let n = frames as f64;
                    pair.lock_acquisitions = Some(frames);
                    pair.decode_ms = pair.decode_ms_per_frame.map(|ms| ms * n);
                    pair.save_ms = block.per_frame_save_ms.map(|ms| ms * n);
                    pair.slerp_ms = block
                        .per_frame_slerp_ms
                        .map(|ms| ms * n + block.precompute_s.unwrap_or(0.0) * 1000.0);
                }
            }
        }
        if !block.complete {
            self.incomplete_blocks += 1;
        }
        out.push(Record::Pair(pair));
    }
}

/// A pair known only from its `[OK] Interpolated` line.
fn total_only(ok: OkLine) -> PairRecord {
    let mut pair = PairRecord::new(ok.ts, ok.from, ok.to);
    pair.total_ms = Some(ok.elapsed_s * 1000.0);
    if ok.per_frame_s > 0.0 {
        pair.frames = Some((ok.elapsed_s / ok.per_frame_s).round() as u64);
    }
    pair
}

/// Lines outside `[TIMING]` blocks: keyframes, VAE lock, buffer and display.
fn other_line(ts: Timestamp, text: &str, out: &mut Vec<Record>) -> Option<Record> {
    if let Some(rest) = text.strip_prefix("[OK] Keyframe ") {
        let source = if rest.contains("from DISSIMILAR CACHE") {
            "cache"
        } else if rest.contains("from SEED") {
            "seed"
        } else if rest.contains(" generated in ") {
            "comfyui"
        } else {
            return None;
        };
        let seconds = rest.rsplit_once(" in ").and_then(|(_, t)| first_number(t));
        return Some(Record::Keyframe(KeyframeRecord {
            ts,
            source: source.to_string(),
            ms: seconds.map(|s| s * 1000.0),
            ok: true,
            error: None,
        }));
    }
    if let Some(rest) = text.strip_prefix("VAE lock contention: waited") {
        return Some(Record::LockContention {
            ts,
            wait_ms: first_number(rest)?,
        });
    }
    if let Some(rest) = text
        .strip_prefix("VAE Lock Contention:")
        .or_else(|| text.strip_prefix("VAE Lock:"))
    {
        let mut values = numbers(rest);
        let acquisitions = values.next()? as u64;
        let avg_wait_ms = values.next()?;
        return Some(Record::LockSnapshot {
            ts,
            acquisitions,
            avg_wait_ms,
            max_wait_ms: values.next(),
        });
    }
    if let Some(rest) = text.strip_prefix("Buffer:") {
        let mut values = numbers(rest);
        let seconds = values.next()?;
        if rest.contains(" / ") {
            let target_seconds = values.next();
            // Cumulative displayed count: the achieved fps comes from its growth.
            if let Some(displayed) = rest
                .split_once("Displayed:")
                .and_then(|(_, d)| first_number(d))
            {
                out.push(Record::DisplayStats(DisplayStatsRecord {
                    ts,
                    target_fps: None,
                    frames_displayed: displayed as u64,
                    actual_fps: None,
                    interval_error_p50_ms: None,
                    interval_error_p99_ms: None,
                }));
            }
            return Some(Record::Buffer {
                ts,
                seconds,
                target_seconds,
                fps_hint: None,
            });
        }
        let frames = values.next();
        return Some(Record::Buffer {
            ts,
            seconds,
            target_seconds: None,
            fps_hint: frames.filter(|_| seconds > 0.0).map(|n| n / seconds),
        });
    }
    if text.starts_with("Next frame not ready in buffer") {
        return Some(Record::Held { ts });
    }
    if text.starts_with("Buffer depleted!") {
        return Some(Record::State {
            ts,
            state: "buffering".to_string(),
        });
    }
    if text.starts_with("[OK] Buffer ready") {
        return Some(Record::State {
            ts,
            state: "playing".to_string(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Vec<Record>, LegacyReader, usize) {
        let mut reader = LegacyReader::default();
        let mut out = Vec::new();
        let mut unparseable = 0;
        for line in text.lines() {
            if reader.line(line, &mut out) == LineKind::Unparseable {
                unparseable += 1;
            }
        }
        reader.finish(&mut out);
        (out, reader, unparseable)
    }

    fn pairs(records: &[Record]) -> Vec<&PairRecord> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Pair(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    const BATCHED: &str = "\
2025-01-10 14:00:01 - core.interpolation_worker - INFO - [TIMING] Interpolation 3->4 breakdown (BATCHED):
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Total time:        2.500s
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Slerp precompute:  0.010s
2025-01-10 14:00:01 - backend.cache.manager - DEBUG - Added to cache: cache_7 (total: 8)
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Phase timings:
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Slerp all:     0.050s (5.0ms per frame)
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Decode all:    2.000s (200.0ms per frame)
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Save all:      0.400s (40.0ms per frame)
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   [BATCHED] Single VAE lock acquisition for 10 frames
2025-01-10 14:00:01 - core.interpolation_worker - INFO - [OK] Interpolated 3->4 in 2.51s (0.251s/frame)
";

    #[test]
    fn batched_block_with_a_foreign_line_inside() {
        let (records, reader, unparseable) = read(BATCHED);
        let pairs = pairs(&records);
        assert_eq!(pairs.len(), 1);
        let p = pairs[0];
        assert_eq!((p.from, p.to, p.frames), (3, 4, Some(10)));
        assert_eq!(p.total_ms, Some(2500.0));
        assert_eq!(p.decode_ms, Some(2000.0));
        assert_eq!(p.decode_ms_per_frame, Some(200.0));
        assert_eq!(p.save_ms, Some(400.0));
        assert!((p.slerp_ms.unwrap() - 60.0).abs() < 1e-9);
        assert_eq!(p.lock_acquisitions, Some(1));
        assert_eq!(reader.foreign_in_blocks, 1);
        assert_eq!(reader.incomplete_blocks, 0);
        assert_eq!(unparseable, 0);
    }

    #[test]
    fn per_frame_block_takes_frames_from_ok_line() {
        let log = "\
2025-01-10 14:00:01 - core.interpolation_worker - INFO - [TIMING] Interpolation 1->2 breakdown:
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Total time:        4.000s
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Slerp precompute:  0.020s
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Avg per frame:
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Slerp:         4.0ms
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Decode (VAE):  300.0ms
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Save (I/O):    50.0ms
2025-01-10 14:00:01 - core.interpolation_worker - INFO -     - Overhead:      46.0ms
2025-01-10 14:00:01 - core.interpolation_worker - INFO -   Unaccounted time:  0.000s (0.0%)
2025-01-10 14:00:01 - core.interpolation_worker - INFO - [OK] Interpolated 1->2 in 4.00s (0.400s/frame)
";
        let (records, _, _) = read(log);
        let pairs = pairs(&records);
        assert_eq!(pairs.len(), 1);
        let p = pairs[0];
        assert_eq!(p.frames, Some(10));
        assert_eq!(p.decode_ms_per_frame, Some(300.0));
        assert_eq!(p.decode_ms, Some(3000.0));
        assert_eq!(p.lock_acquisitions, Some(10));
    }

    #[test]
    fn ok_line_alone_counts_and_no_timing_is_fine() {
        let log = "\
2025-01-10 14:00:01 - core.interpolation_worker - INFO - [OK] Interpolated 5->6 in 3.00s (0.300s/frame)
Traceback (most recent call last):
2025-01-10 14:00:02 - core.controller - DEBUG - VAE Lock: 12 ops, avg wait: 3.5ms
2025-01-10 14:00:03 - core.controller - WARNING - VAE Lock Contention: 14 ops, avg wait: 12.5ms, max wait: 150.0ms
2025-01-10 14:00:03 - core.vae - WARNING - VAE lock contention: waited 150.0ms (acquisitions: 14)
";
        let (records, _, unparseable) = read(log);
        assert_eq!(unparseable, 1);
        let p = pairs(&records);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].total_ms, Some(3000.0));
        assert_eq!(p[0].frames, Some(10));
        assert!(records.contains(&Record::LockContention {
            ts: p[0].ts + 2.0,
            wait_ms: 150.0
        }));
        let snapshots = records
            .iter()
            .filter(|r| matches!(r, Record::LockSnapshot { .. }))
            .count();
        assert_eq!(snapshots, 2);
        let (none, _, _) = read("2025-01-10 14:00:01 - x - INFO - hello\n");
        assert!(none.is_empty());
    }

    #[test]
    fn header_without_values_is_incomplete_not_a_pair() {
        let log =
            "2025-01-10 14:00:01 - w - INFO - [TIMING] Interpolation 1->2 breakdown (BATCHED):\n";
        let (records, reader, _) = read(log);
        assert!(records.is_empty());
        assert_eq!(reader.incomplete_blocks, 1);
    }

    #[test]
    fn keyframes_by_source() {
        let log = "\
2025-01-10 14:00:01 - c - INFO - [OK] Keyframe 4 generated in 2.50s (total: 4)
2025-01-10 14:00:02 - c - INFO - [OK] Keyframe 5 from SEED (seed) in 0.20s
2025-01-10 14:00:03 - c - INFO - [OK] Keyframe 6 from DISSIMILAR CACHE in 0.05s
2025-01-10 14:00:03 - c - INFO - [OK] Keyframe 6 completed: keyframe_006.png
";
        let (records, _, _) = read(log);
        let sources: Vec<_> = records
            .iter()
            .filter_map(|r| match r {
                Record::Keyframe(k) => Some((k.source.as_str(), k.ms)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sources,
            vec![
                ("comfyui", Some(2500.0)),
                ("seed", Some(200.0)),
                ("cache", Some(50.0))
            ]
        );
    }
}
