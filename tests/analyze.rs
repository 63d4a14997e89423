//! `dreamd analyze` end to end: on logs the real daemon writes, on fixture logs of the original
//! Python controller written from its spec (original-system.md §5.1), on a gzipped rotation with
//! a truncated last line, and against a golden text report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `dreamd args…` in `dir` (the package root when `None`), without `DREAMD_MODELS` so a
/// daemon run uses the preview decoder these expectations assume.
fn dreamd(dir: Option<&Path>, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir.unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .env_remove("RUST_LOG")
        .env_remove("DREAMD_MODELS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "dreamd failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn json(args: &[&str]) -> Value {
    let mut all = vec!["analyze", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout(&dreamd(None, &all))).unwrap()
}

fn finding_ids(report: &Value) -> Vec<String> {
    report["bottlenecks"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn analyzes_the_real_daemons_logs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dreamd.toml"),
        "[display]\nstart_gate_seconds = 0.5\ntarget_fps = 8.0\n[generation]\nframes_per_pair = 4\n",
    )
    .unwrap();
    let run = dreamd(
        Some(dir.path()),
        &["run", "--config", "dreamd.toml", "--duration", "4"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Text, from the default folder (logs/ in the working directory).
    let text = stdout(&dreamd(Some(dir.path()), &["analyze"]));
    assert!(text.contains("logs/dreamd.jsonl [jsonl]"), "{text}");
    assert!(text.contains("GPU lock (source: pairs)"), "{text}");
    assert!(text.contains("Bottlenecks:"), "{text}");

    let html = dir.path().join("report.html");
    let out = dreamd(
        Some(dir.path()),
        &["analyze", "logs", "--json", "--html", "report.html"],
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["schema"], "dreamd-analyze/1");
    assert_eq!(report["totals"]["unparseable_lines"], 0);
    let pairs = &report["pairs"];
    assert!(pairs["count"].as_u64().unwrap() >= 2, "{pairs}");
    assert_eq!(pairs["count"], pairs["ok"]);
    // 4 in-betweens + the end keyframe per pair.
    let frames = pairs["frames"]["p50"].as_f64().unwrap();
    assert!((frames - 5.0).abs() < 0.1, "{frames}");
    assert!(pairs["decode_ms"]["mean"].as_f64().unwrap() > 0.0);
    assert!((pairs["budget_ms"].as_f64().unwrap() - 625.0).abs() < 1.0);
    assert_eq!(report["lock"]["acquisitions_per_pair"], 1.0);
    assert_eq!(report["lock"]["source"], "pairs");
    assert!(
        report["keyframes"]["by_source"]["procedural"]["count"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(report["display"]["target_fps"], 8.0);
    assert_eq!(report["display"]["target_fps_source"], "display_stats");
    assert!(report["display"]["frames_displayed"].as_u64().unwrap() > 0);
    let fps = report["display"]["actual_fps"].as_f64().unwrap();
    assert!(fps > 2.0 && fps < 12.0, "{fps}");
    assert_eq!(report["failures"]["total"], 0);
    assert!(!finding_ids(&report).contains(&"failures".to_string()));

    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 4, "four plots");
    for external in ["<script", "<link", "src=", "url("] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}

#[test]
fn python_batched_log_with_foreign_lines_inside_blocks() {
    let report = json(&[fixture("legacy_batched.log").to_str().unwrap()]);
    let input = &report["inputs"][0];
    assert_eq!(input["format"], "python");
    assert_eq!(input["foreign_lines_in_blocks"], 3);
    assert_eq!(input["incomplete_timing_blocks"], 0);
    assert_eq!(input["unparseable_lines"], 2, "two traceback lines");
    assert_eq!(report["pairs"]["count"], 6);
    assert_eq!(report["pairs"]["decode_ms"]["max"], 2600.0);
    assert_eq!(report["pairs"]["save_ms"]["mean"], 450.0);
    assert_eq!(report["lock"]["source"], "vae_lock_lines");
    assert_eq!(report["lock"]["acquisitions"], 14);
    assert_eq!(report["lock"]["acquisitions_per_pair"], 1.0);
    assert_eq!(report["lock"]["contention_events"], 1);
    assert_eq!(report["lock"]["max_wait_ms"], 140.0);
    assert_eq!(report["keyframes"]["count"], 8);
    assert_eq!(report["keyframes"]["by_source"]["comfyui"]["count"], 6);
    assert_eq!(report["display"]["held"], 1);
    let ids = finding_ids(&report);
    assert_eq!(ids[0], "lock_contention");
    assert!(ids.contains(&"decode_bound".to_string()), "{ids:?}");
    assert_eq!(report["bottlenecks"]["healthy"], false);
}

#[test]
fn python_per_frame_variant_is_not_batched() {
    let report = json(&[fixture("legacy_per_frame.log").to_str().unwrap()]);
    assert_eq!(report["pairs"]["count"], 3);
    assert_eq!(report["pairs"]["decode_ms_per_frame"]["max"], 320.0);
    assert_eq!(report["lock"]["acquisitions_per_pair"], 10.0);
    assert_eq!(report["lock"]["contention_events"], 1);
    assert!(finding_ids(&report).contains(&"lock_not_batched".to_string()));
}

#[test]
fn python_single_pair_and_no_timing_do_not_crash() {
    let single = json(&[fixture("legacy_single_pair.log").to_str().unwrap()]);
    assert_eq!(single["pairs"]["count"], 1);
    assert_eq!(single["pairs"]["total_ms"]["p95"], 2310.0);

    let none = json(&[fixture("legacy_no_timing.log").to_str().unwrap()]);
    assert_eq!(none["pairs"]["count"], 0);
    assert_eq!(none["pairs"]["total_ms"]["mean"], Value::Null);
    assert_eq!(none["bottlenecks"]["healthy"], true);
    let text = stdout(&dreamd(
        None,
        &["analyze", fixture("legacy_no_timing.log").to_str().unwrap()],
    ));
    assert!(text.contains("no pair timings"), "{text}");
}

#[test]
fn rotated_folder_with_gzip_unknown_event_and_truncated_line() {
    let report = json(&[fixture("rotated").to_str().unwrap()]);
    let inputs = report["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert!(inputs[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("dreamd.jsonl.1.gz"));
    assert_eq!(inputs[0]["gzip"], true);
    assert_eq!(inputs[1]["truncated_last_line"], true);
    assert_eq!(report["totals"]["unparseable_lines"], 1);
    assert_eq!(report["totals"]["ignored_lines"], 1, "the unknown event");
    assert_eq!(report["pairs"]["count"], 20);
}

#[test]
fn since_and_until_window_the_records() {
    let log = fixture("legacy_batched.log");
    let all = json(&[log.to_str().unwrap()]);
    let windowed = json(&[
        log.to_str().unwrap(),
        "--since",
        "2025-01-10T14:00:05Z",
        "--until",
        "2025-01-10 14:00:12",
    ]);
    assert_eq!(all["pairs"]["count"], 6);
    // Pairs start at 14:00:02, 05, 08, 11, 14, 17.
    assert_eq!(windowed["pairs"]["count"], 3);
    assert_eq!(windowed["window"]["since"], "2025-01-10T14:00:05Z");
    assert!(windowed["totals"]["outside_window"].as_u64().unwrap() > 0);

    let bad = dreamd(None, &["analyze", log.to_str().unwrap(), "--since", "soon"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since \"soon\""));
}

#[test]
fn compare_puts_two_runs_side_by_side() {
    let a = fixture("legacy_per_frame.log");
    let b = fixture("legacy_batched.log");
    let out = dreamd(
        None,
        &[
            "analyze",
            "--json",
            "--compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    let cmp: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(cmp["schema"], "dreamd-analyze-compare/1");
    let metric = |name: &str| {
        cmp["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == name)
            .unwrap()
            .clone()
    };
    let per_frame = metric("decode ms/frame mean");
    let ratio = per_frame["ratio"].as_f64().unwrap();
    assert!((ratio - 206.6667 / 300.0).abs() < 1e-3, "{ratio}");
    assert_eq!(metric("lock acquisitions/pair")["ratio"], 0.1);
    let text = stdout(&dreamd(
        None,
        &[
            "analyze",
            "--compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("B/A"), "{text}");
    assert!(text.contains("lock acquisitions/pair"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("compare.html");
    stdout(&dreamd(
        None,
        &[
            "analyze",
            "--compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--html",
            page.to_str().unwrap(),
        ],
    ));
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<th>B/A</th>"));
    assert!(html.contains("Run A: ") && html.contains("Run B: "));
    assert!(html.matches("<svg").count() >= 4, "plots of both runs");
}

#[test]
fn failures_and_display_holes_from_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dreamd.jsonl");
    let lines = [
        r#"{"timestamp":"2024-05-01T12:00:00Z","event":"keyframe","index":1,"seq":5,"source":"procedural","ms":2.0,"outcome":"ok"}"#,
        r#"{"timestamp":"2024-05-01T12:00:01Z","event":"keyframe","index":2,"seq":10,"source":"procedural","ms":30000.0,"outcome":"failed","error":"timed out after 30.0 s"}"#,
        r#"{"timestamp":"2024-05-01T12:00:01Z","event":"pair","from":1,"to":2,"first_seq":6,"last_seq":10,"frames":0,"frames_ready":0,"lock_acquisitions":0,"outcome":"failed","stage":"keyframe","error":"timed out after 30.0 s"}"#,
        r#"{"timestamp":"2024-05-01T12:00:02Z","event":"display","kind":"held","seq":6}"#,
        r#"{"timestamp":"2024-05-01T12:00:02Z","event":"display","kind":"skipped","seq":6,"reason":"failed"}"#,
        r#"{"timestamp":"2024-05-01T12:00:03Z","event":"state","state":"Degraded"}"#,
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let report = json(&[log.to_str().unwrap()]);
    assert_eq!(report["pairs"]["failed"], 1);
    assert_eq!(report["keyframes"]["failed"], 1);
    assert_eq!(
        report["failures"]["by_stage"]["keyframe"], 1,
        "the pair it cost is not a second failure"
    );
    assert_eq!(
        report["failures"]["last_error"]["keyframe"],
        "timed out after 30.0 s"
    );
    assert_eq!(report["display"]["held"], 1);
    assert_eq!(report["display"]["skipped"], 1);
    let ids = finding_ids(&report);
    assert!(ids.contains(&"failures".to_string()), "{ids:?}");
    assert!(ids.contains(&"display_holes".to_string()), "{ids:?}");
}

#[test]
fn missing_file_is_named() {
    let out = dreamd(None, &["analyze", "no/such/dreamd.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/dreamd.jsonl"), "{err}");
}

/// The text report of a fixed fixture, byte for byte. `UPDATE_GOLDEN=1` rewrites it.
#[test]
fn golden_text_report() {
    let golden = fixture("legacy_batched.golden.txt");
    let text = stdout(&dreamd(
        None,
        &["analyze", "tests/fixtures/legacy_batched.log"],
    ));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(text, expected);
}

/// Creative direction (themes, collapse, injections, cache) from a synthetic ComfyUI run; the
/// figures themselves are checked in `src/analyze/dream.rs`.
#[test]
fn creative_direction_from_jsonl() {
    let log = fixture("dream.jsonl");
    let report = json(&[log.to_str().unwrap()]);
    assert_eq!(report["totals"]["unparseable_lines"], 0);
    assert_eq!(report["totals"]["ignored_lines"], 0);
    assert_eq!(report["keyframes"]["count"], 20);
    let d = &report["direction"];
    let shown = d["themes"]["shown"].as_array().unwrap();
    assert_eq!(shown.len(), 2);
    assert_eq!(shown[0]["name"], "nebula");
    assert_eq!(shown[0]["spans_total"], 2);
    assert_eq!(shown[1]["name"], "forest");
    assert_eq!(d["collapse"]["converging"], 3);
    assert_eq!(d["collapse"]["collapsed"], 1);
    assert_eq!(
        d["collapse"]["first_collapsed"]["at"],
        "2025-03-01T20:00:25Z"
    );
    assert_eq!(d["injections"]["by_kind"]["cache"]["count"], 2);
    assert_eq!(
        d["injections"]["by_kind"]["seed"]["reasons"]["bootstrap"],
        1
    );
    assert_eq!(d["cache"]["acceptance_rate"], 0.7);
    assert_eq!(d["cache"]["final_size"], 6);
    assert!(!d["series"]["color_delta"].as_array().unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("dream.html");
    let text = stdout(&dreamd(
        None,
        &[
            "analyze",
            log.to_str().unwrap(),
            "--html",
            page.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("\nCreative direction:\n"), "{text}");
    assert!(
        text.contains("  Injections: 4 (cache 2, seed 2)\n"),
        "{text}"
    );
    assert!(
        text.contains("  Cache: 14 of 20 offers accepted (70.0 %)"),
        "{text}"
    );
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("Collapse deltas over time, with injections"));
    assert_eq!(html.matches("<svg").count(), 1, "no pairs: only this plot");
    for external in ["<script", "<link", "src=", "url("] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}

#[test]
fn logs_without_direction_events_report_no_direction() {
    for name in ["legacy_batched.log", "legacy_per_frame.log", "rotated"] {
        let report = json(&[fixture(name).to_str().unwrap()]);
        assert!(report.get("direction").is_none(), "{name}");
        let text = stdout(&dreamd(None, &["analyze", fixture(name).to_str().unwrap()]));
        assert!(!text.contains("Creative direction"), "{name}");
    }
}
