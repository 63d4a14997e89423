//! Reader for dreamd's `dreamd.jsonl`: one JSON object per line, `event` naming its kind
//! (README, "dreamd.jsonl events"). Unknown events are ignored; a line that is not a JSON object
//! with a timestamp is unparseable.

use std::borrow::Cow;

use serde::Deserialize;

use super::record::{
    parse_timestamp, DisplayStatsRecord, KeyframeRecord, Outcome, PairRecord, Record,
};

/// What one line held.
// Returned by value per line and consumed at once, never stored: boxing would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Record(Record),
    /// A valid event this analyzer does not use (unknown kind, or a line without `event`).
    Ignored,
    /// Not JSON, not an object, or no usable timestamp.
    Unparseable,
}

/// Every field any event has; absent ones stay `None`. Strings borrow from the line.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Line<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    // pair
    from: Option<u64>,
    to: Option<u64>,
    frames: Option<u64>,
    slerp_ms: Option<f64>,
    decode_ms: Option<f64>,
    decode_ms_per_frame: Option<f64>,
    save_ms: Option<f64>,
    total_ms: Option<f64>,
    lock_wait_ms: Option<f64>,
    lock_hold_ms: Option<f64>,
    lock_acquisitions: Option<u64>,
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stage: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    // keyframe
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    ms: Option<f64>,
    // display
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    late_ms: Option<f64>,
    // buffer
    seconds: Option<f64>,
    target_seconds: Option<f64>,
    frames_ready: Option<u64>,
    // state
    #[serde(borrow)]
    state: Option<Cow<'a, str>>,
    // display_stats
    target_fps: Option<f64>,
    frames_displayed: Option<u64>,
    actual_fps: Option<f64>,
    interval_error_p50_ms: Option<f64>,
    interval_error_p99_ms: Option<f64>,
}

fn non_empty(text: Option<Cow<'_, str>>) -> Option<String> {
    text.filter(|t| !t.is_empty()).map(Cow::into_owned)
}

/// Parses one line of `dreamd.jsonl`.
pub fn parse_line(line: &str) -> Parsed {
    let Ok(line) = serde_json::from_str::<Line<'_>>(line) else {
        return Parsed::Unparseable;
    };
    let Some(ts) = line.timestamp.as_deref().and_then(parse_timestamp) else {
        return Parsed::Unparseable;
    };
    let record = match line.event.as_deref() {
        Some("pair") => {
            let outcome = match line.outcome.as_deref() {
                Some("failed") => Outcome::Failed,
                Some("partial") => Outcome::Partial,
                _ => Outcome::Ok,
            };
            let (Some(from), Some(to)) = (line.from, line.to) else {
                return Parsed::Unparseable;
            };
            let mut pair = PairRecord::new(ts, from, to);
            pair.frames = line.frames;
            pair.total_ms = line.total_ms;
            pair.slerp_ms = line.slerp_ms;
            pair.decode_ms = line.decode_ms;
            pair.decode_ms_per_frame = line.decode_ms_per_frame;
            pair.save_ms = line.save_ms;
            pair.lock_wait_ms = line.lock_wait_ms;
            pair.lock_hold_ms = line.lock_hold_ms;
            pair.lock_acquisitions = line.lock_acquisitions;
            pair.outcome = outcome;
            pair.error = non_empty(line.error);
            pair.stage = non_empty(line.stage).or_else(|| {
                (outcome == Outcome::Partial && pair.error.is_some()).then(|| "save".to_string())
            });
            Record::Pair(pair)
        }
        Some("keyframe") => Record::Keyframe(KeyframeRecord {
            ts,
            source: non_empty(line.source).unwrap_or_else(|| "unknown".to_string()),
            ms: line.ms,
            ok: line.outcome.as_deref() != Some("failed"),
            error: non_empty(line.error),
        }),
        Some("display") => match line.kind.as_deref() {
            Some("late") => Record::Late {
                ts,
                late_ms: line.late_ms.unwrap_or(0.0),
            },
            Some("held") => Record::Held { ts },
            Some("skipped") => Record::Skipped { ts },
            _ => return Parsed::Ignored,
        },
        Some("buffer") => {
            let Some(seconds) = line.seconds else {
                return Parsed::Unparseable;
            };
            let fps_hint = match line.frames_ready {
                Some(ready) if seconds > 0.0 && ready > 0 => Some(ready as f64 / seconds),
                _ => None,
            };
            Record::Buffer {
                ts,
                seconds,
                target_seconds: line.target_seconds,
                fps_hint,
            }
        }
        Some("state") => Record::State {
            ts,
            state: non_empty(line.state).unwrap_or_default().to_lowercase(),
        },
        Some("display_stats") => Record::DisplayStats(DisplayStatsRecord {
            ts,
            target_fps: line.target_fps,
            frames_displayed: line.frames_displayed.unwrap_or(0),
            actual_fps: line.actual_fps,
            interval_error_p50_ms: line.interval_error_p50_ms,
            interval_error_p99_ms: line.interval_error_p99_ms,
        }),
        _ => return Parsed::Ignored,
    };
    Parsed::Record(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_event() {
        let line = r#"{"timestamp":"2024-05-01T12:00:00.000000Z","level":"INFO","event":"pair","from":1,"to":2,"first_seq":11,"last_seq":20,"frames":10,"frames_ready":11,"batch_size":10,"slerp_ms":1.5,"decode_ms":40.0,"decode_ms_per_frame":4.0,"resize_ms":2.0,"save_ms":30.0,"total_ms":80.0,"lock_wait_ms":0.01,"lock_hold_ms":39.0,"lock_acquisitions":1,"write_failures":0,"outcome":"ok","error":"","target":"dreamd::event"}"#;
        let Parsed::Record(Record::Pair(p)) = parse_line(line) else {
            panic!("not a pair");
        };
        assert_eq!((p.from, p.to, p.frames), (1, 2, Some(10)));
        assert_eq!(p.decode_ms, Some(40.0));
        assert_eq!(p.lock_acquisitions, Some(1));
        assert_eq!(p.outcome, Outcome::Ok);
        assert_eq!(p.error, None);
    }

    #[test]
    fn failed_pair_keeps_stage() {
        let line = r#"{"timestamp":"2024-05-01T12:00:00Z","event":"pair","from":2,"to":3,"frames":0,"outcome":"failed","stage":"decode","error":"timed out after 30.0 s"}"#;
        let Parsed::Record(Record::Pair(p)) = parse_line(line) else {
            panic!("not a pair");
        };
        assert_eq!(p.outcome, Outcome::Failed);
        assert_eq!(p.stage.as_deref(), Some("decode"));
        assert_eq!(p.total_ms, None);
    }

    #[test]
    fn unknown_event_and_garbage() {
        assert_eq!(
            parse_line(r#"{"timestamp":"2024-05-01T12:00:00Z","event":"future_thing","x":1}"#),
            Parsed::Ignored
        );
        assert_eq!(
            parse_line(r#"{"timestamp":"2024-05-01T12:00:00Z","event":"pa"#),
            Parsed::Unparseable
        );
        assert_eq!(parse_line("not json"), Parsed::Unparseable);
        assert_eq!(parse_line(r#"{"event":"pair"}"#), Parsed::Unparseable);
    }

    #[test]
    fn buffer_implies_fps() {
        let line = r#"{"timestamp":"2024-05-01T12:00:00Z","event":"buffer","seconds":2.5,"target_seconds":30.0,"frames_ready":10,"frames_registered":20}"#;
        let Parsed::Record(Record::Buffer { fps_hint, .. }) = parse_line(line) else {
            panic!("not a buffer event");
        };
        assert_eq!(fps_hint, Some(4.0));
    }
}
