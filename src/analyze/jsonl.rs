//! Reader for dreamd's `dreamd.jsonl`: one JSON object per line, `event` naming its kind
//! (README, "dreamd.jsonl events"), read into the same typed records the daemon wrote
//! ([`crate::events`]) and turned into [`Record`]s. Unknown events are ignored; a line that is
//! not a JSON object with a timestamp is unparseable.

use std::borrow::Cow;

use serde::Deserialize;

use super::record::{
    parse_timestamp, CacheRecord, CollapseRecord, DisplayStatsRecord, InjectionRecord,
    KeyframeDirection, KeyframeRecord, Outcome, PairRecord, Record, Timestamp,
};
use crate::events::{AnyEvent, DisplayEvent, KeyframeOutcome, LogEvent, PairOutcome};

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

/// The two fields every line is sorted by; strings borrow from the line.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

fn non_empty(text: &str) -> Option<String> {
    Some(text).filter(|t| !t.is_empty()).map(str::to_string)
}

/// A line that is not a `dreamd.jsonl` event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object with a timestamp and a readable record")]
pub struct Unparseable;

/// Reads one line of `dreamd.jsonl` as the typed event the daemon wrote: `Ok(None)` for a
/// valid line of a kind no record has (or without `event`), `Err` for a line that is not a
/// JSON object with a timestamp, or whose record does not read.
pub fn parse_event(line: &str) -> Result<Option<(Timestamp, AnyEvent)>, Unparseable> {
    let head: Head<'_> = serde_json::from_str(line).map_err(|_| Unparseable)?;
    let ts = head
        .timestamp
        .as_deref()
        .and_then(parse_timestamp)
        .ok_or(Unparseable)?;
    let Some(name) = head.event.as_deref() else {
        return Ok(None);
    };
    match AnyEvent::parse(name, line) {
        Ok(event) => Ok(event.map(|e| (ts, e))),
        // A display kind this analyzer does not know is a valid line it has no use for.
        Err(_) if name == DisplayEvent::NAME => Ok(None),
        Err(_) => Err(Unparseable),
    }
}

/// Parses one line of `dreamd.jsonl`.
pub fn parse_line(line: &str) -> Parsed {
    let (ts, event) = match parse_event(line) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Parsed::Ignored,
        Err(Unparseable) => return Parsed::Unparseable,
    };
    let record = match event {
        AnyEvent::Pair(p) => {
            let outcome = match p.outcome {
                PairOutcome::Failed => Outcome::Failed,
                PairOutcome::Partial => Outcome::Partial,
                PairOutcome::Ok => Outcome::Ok,
            };
            let mut pair = PairRecord::new(ts, p.from, p.to);
            pair.frames = p.frames;
            pair.total_ms = p.total_ms;
            pair.slerp_ms = p.slerp_ms;
            pair.decode_ms = p.decode_ms;
            pair.decode_ms_per_frame = p.decode_ms_per_frame;
            pair.save_ms = p.save_ms;
            pair.lock_wait_ms = p.lock_wait_ms;
            pair.lock_hold_ms = p.lock_hold_ms;
            pair.lock_acquisitions = p.lock_acquisitions;
            pair.outcome = outcome;
            pair.error = non_empty(&p.error);
            pair.stage = p.stage.as_deref().and_then(non_empty).or_else(|| {
                (outcome == Outcome::Partial && pair.error.is_some()).then(|| "save".to_string())
            });
            Record::Pair(pair)
        }
        AnyEvent::Keyframe(k) => {
            let keyframe = KeyframeRecord {
                ts,
                source: non_empty(&k.source).unwrap_or_else(|| "unknown".to_string()),
                ms: k.ms,
                ok: k.outcome != KeyframeOutcome::Failed,
                error: k.error.as_deref().and_then(non_empty),
            };
            let detail = k.detail;
            let direction = KeyframeDirection {
                theme: detail.theme.as_deref().and_then(non_empty),
                prompt: detail.prompt.as_deref().and_then(non_empty),
                origin: detail.origin.as_deref().and_then(non_empty),
            };
            if direction == KeyframeDirection::default() {
                Record::Keyframe(keyframe)
            } else {
                Record::DirectedKeyframe(keyframe, direction)
            }
        }
        AnyEvent::Display(DisplayEvent::Late { late_ms }) => Record::Late { ts, late_ms },
        AnyEvent::Display(DisplayEvent::Held { .. }) => Record::Held { ts },
        AnyEvent::Display(DisplayEvent::Skipped { .. }) => Record::Skipped { ts },
        AnyEvent::Buffer(b) => {
            let fps_hint = match b.frames_ready {
                Some(ready) if b.seconds > 0.0 && ready > 0 => Some(ready as f64 / b.seconds),
                _ => None,
            };
            Record::Buffer {
                ts,
                seconds: b.seconds,
                target_seconds: b.target_seconds,
                fps_hint,
            }
        }
        AnyEvent::State(s) => Record::State {
            ts,
            state: s.state.to_lowercase(),
        },
        AnyEvent::DisplayStats(d) => Record::DisplayStats(DisplayStatsRecord {
            ts,
            target_fps: d.target_fps,
            frames_displayed: d.frames_displayed,
            actual_fps: d.actual_fps,
            interval_error_p50_ms: d.interval_error_p50_ms,
            interval_error_p99_ms: d.interval_error_p99_ms,
        }),
        AnyEvent::Collapse(c) => Record::Collapse(CollapseRecord {
            ts,
            index: c.index,
            state: c.state,
            color_similarity: f64::from(c.color_similarity),
            structure_similarity: f64::from(c.structure_similarity),
            color_delta: c.color_delta.map(f64::from),
            structure_delta: c.structure_delta.map(f64::from),
            severity: f64::from(c.severity),
        }),
        AnyEvent::Cache(c) => Record::Cache(CacheRecord {
            ts,
            accepted: c.accepted,
            size: c.size,
            evicted: c.evicted.is_some(),
        }),
        AnyEvent::Injection(i) => Record::Injection(InjectionRecord {
            ts,
            index: i.index,
            kind: i.kind,
            source_id: i.source_id,
            weight: i.weight,
            reason: i.reason,
        }),
        AnyEvent::Display(DisplayEvent::SkipRequest { .. }) | AnyEvent::ConfigReload(_) => {
            return Parsed::Ignored
        }
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

    /// Lines written by the real `dreamd.jsonl` layer while `emit` runs.
    fn written_lines(emit: impl FnOnce()) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;

        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber =
            tracing_subscriber::registry().with(crate::logging::json_lines(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// One event of every kind (and every variant of the kinds that have them).
    fn every_event() -> Vec<AnyEvent> {
        use crate::events::*;
        let mut failed = PairEvent::failed(3, 31, 41, "decode", "timed out after 30.0 s");
        failed.write_failures = Some(2);
        let mut ok = PairEvent::failed(2, 11, 21, "", "");
        ok.outcome = PairOutcome::Ok;
        ok.stage = None;
        ok.from = 1;
        ok.frames = Some(10);
        ok.frames_ready = Some(11);
        ok.batch_size = Some(10);
        ok.slerp_ms = Some(1.5);
        ok.decode_ms = Some(40.25);
        ok.decode_ms_per_frame = Some(4.025);
        ok.resize_ms = Some(2.0);
        ok.save_ms = Some(30.0);
        ok.total_ms = Some(80.125);
        ok.lock_wait_ms = Some(0.01);
        ok.lock_hold_ms = Some(39.0);
        ok.lock_acquisitions = Some(1);
        ok.write_failures = Some(0);
        let mut partial = ok.clone();
        partial.outcome = PairOutcome::Partial;
        partial.error = "disk full".to_string();
        let keyframe = KeyframeEvent {
            index: 4,
            seq: 44,
            source: "procedural".to_string(),
            ms: Some(2.5),
            outcome: KeyframeOutcome::Ok,
            error: None,
            detail: crate::events::KeyframeDetail {
                theme: Some("nebula".to_string()),
                prompt: Some("a nebula, dawn light".to_string()),
                prompt_id: Some("5f0c…".to_string()),
                seed: Some(7),
                denoise: Some(0.2),
                origin: Some("comfyui".to_string()),
            },
        };
        let keyframe_failed = KeyframeEvent {
            outcome: KeyframeOutcome::Failed,
            error: Some("injected".to_string()),
            ..keyframe.clone()
        };
        vec![
            AnyEvent::Pair(ok),
            AnyEvent::Pair(partial),
            AnyEvent::Pair(failed),
            AnyEvent::Keyframe(keyframe),
            AnyEvent::Keyframe(keyframe_failed),
            AnyEvent::Display(DisplayEvent::Late { late_ms: 3.25 }),
            AnyEvent::Display(DisplayEvent::Held { seq: 7 }),
            AnyEvent::Display(DisplayEvent::Skipped {
                seq: 8,
                reason: "failed".to_string(),
            }),
            AnyEvent::Display(DisplayEvent::SkipRequest {
                dropped: 3,
                arrived: true,
            }),
            AnyEvent::Buffer(BufferEvent {
                seconds: 2.5,
                target_seconds: Some(30.0),
                frames_ready: Some(10),
                frames_registered: Some(20),
            }),
            AnyEvent::State(StateEvent {
                state: "Playing".to_string(),
            }),
            AnyEvent::DisplayStats(DisplayStatsEvent {
                target_fps: Some(4.0),
                frames_displayed: 100,
                actual_fps: Some(3.998),
                interval_error_p50_ms: Some(0.1),
                interval_error_p99_ms: Some(0.9),
                late: 1,
                held: 2,
                skipped: 3,
            }),
            AnyEvent::ConfigReload(ConfigReloadEvent::Applied {
                file: "dreamd.toml".to_string(),
                applied: "faults".to_string(),
                needs_restart: "generation".to_string(),
            }),
            AnyEvent::ConfigReload(ConfigReloadEvent::Rejected {
                error: "bad".to_string(),
            }),
            AnyEvent::Collapse(crate::events::CollapseEvent {
                index: 60,
                state: crate::direction::collapse::CollapseState::Converging,
                color_similarity: 2.25,
                structure_similarity: 0.75,
                color_delta: Some(0.125),
                structure_delta: Some(0.09375),
                severity: 0.25,
                reason: "structure delta 0.094 > 0.080".to_string(),
            }),
            AnyEvent::Cache(crate::events::CacheEvent {
                index: 60,
                accepted: true,
                size: 12,
                color_similarity: Some(1.25),
                structure_similarity: Some(0.5),
                evicted: None,
            }),
            AnyEvent::Injection(crate::events::InjectionEvent {
                index: 61,
                kind: crate::direction::injection::InjectionKind::Seed,
                source_id: "seed.png".to_string(),
                weight: 0.85,
                color_similarity: Some(1.5),
                structure_similarity: None,
                reason: "bootstrap".to_string(),
            }),
        ]
    }

    #[test]
    fn every_event_round_trips_through_the_analyzer() {
        let events = every_event();
        let lines = written_lines(|| events.iter().for_each(AnyEvent::emit));
        assert_eq!(lines.len(), events.len(), "{lines:#?}");
        for (line, sent) in lines.iter().zip(&events) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["target"], crate::events::TARGET, "{line}");
            assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()));
            let (_, read) = parse_event(line).unwrap().unwrap();
            assert_eq!(&read, sent, "{line}");
            // What the analyzer makes of it: every kind it uses becomes its record.
            let used = match sent {
                AnyEvent::Pair(_)
                | AnyEvent::Keyframe(_)
                | AnyEvent::Buffer(_)
                | AnyEvent::State(_)
                | AnyEvent::DisplayStats(_)
                | AnyEvent::Collapse(_)
                | AnyEvent::Cache(_)
                | AnyEvent::Injection(_) => true,
                AnyEvent::Display(d) => !matches!(d, DisplayEvent::SkipRequest { .. }),
                AnyEvent::ConfigReload(_) => false,
            };
            match parse_line(line) {
                // A keyframe that says its theme, prompt or origin feeds the direction too.
                Parsed::Record(Record::Keyframe(_)) => {
                    assert!(matches!(sent, AnyEvent::Keyframe(_)), "{line}");
                    assert!(!line.contains("\"theme\""), "{line}");
                }
                Parsed::Record(Record::DirectedKeyframe(_, direction)) => {
                    let AnyEvent::Keyframe(k) = sent else {
                        panic!("{line}")
                    };
                    assert_eq!(direction.theme, k.detail.theme, "{line}");
                    assert_eq!(direction.prompt, k.detail.prompt, "{line}");
                    assert_eq!(direction.origin, k.detail.origin, "{line}");
                }
                Parsed::Record(_) => assert!(used, "{line}"),
                Parsed::Ignored => assert!(!used, "{line}"),
                Parsed::Unparseable => panic!("unparseable: {line}"),
            }
        }
    }
}
