//! The bottleneck verdict: documented thresholds (README, "dreamd analyze") checked against the
//! report, each tripped one a finding with a concrete recommendation, ranked by how far over its
//! threshold it is.
//!
//! The **pair budget** is how long a pair's frames play: `frames / target_fps` (frames = the
//! in-betweens plus the pair's end keyframe). Generation keeps up only while a pair is made
//! faster than it plays.

use super::model::{Bottlenecks, Finding, Report};
use crate::config::DEFAULT_TARGET_FPS;

/// Generation is behind when the mean pair time exceeds this share of the pair budget.
pub const GENERATION_BUDGET_SHARE: f64 = 1.0;
/// Decode-bound when the mean decode time per pair exceeds this share of the pair budget.
pub const DECODE_BUDGET_SHARE: f64 = 0.5;
/// Keyframe-bound when the mean keyframe time exceeds this share of the pair budget (keyframes
/// are made one ahead, overlapping a pair, so one slower than a pair's playback starves it).
pub const KEYFRAME_BUDGET_SHARE: f64 = 1.0;
/// Save-bound when the mean save time per pair exceeds this share of the pair budget.
pub const SAVE_BUDGET_SHARE: f64 = 0.25;
/// Lock contention when the mean wait per acquisition exceeds this…
pub const LOCK_AVG_WAIT_MS: f64 = 1.0;
/// …or contention events exceed this share of acquisitions.
pub const LOCK_CONTENTION_SHARE: f64 = 0.05;
/// More lock acquisitions per pair than this means decodes are not batched.
pub const LOCK_ACQUISITIONS_PER_PAIR: f64 = 1.0;
/// The display is starved when it achieves less than this share of the target fps.
pub const FPS_SHARE: f64 = 0.95;
/// Late display ticks above this share of displayed frames…
pub const LATE_SHARE: f64 = 0.01;
/// …when their p95 lateness also exceeds this share of the frame interval (dreamd logs every
/// tick more than 2 ms late; a few ms at 4 fps are invisible).
pub const LATE_INTERVAL_SHARE: f64 = 0.10;
/// The buffer is low too often when more than this share of samples are below the low mark
/// (`BUFFER_LOW_SHARE` of target, after it first reached `BUFFER_READY_SHARE`).
pub const BUFFER_LOW_TIME_SHARE: f64 = 0.10;

/// Severity of a finding whose threshold is "none at all": grows with the log of the count.
fn count_severity(count: u64) -> f64 {
    1.0 + (count as f64).log10()
}

fn finding(
    id: &'static str,
    value: f64,
    threshold: f64,
    severity: f64,
    message: String,
    recommendation: &str,
) -> Finding {
    Finding {
        id,
        level: if severity >= 2.0 { "high" } else { "medium" },
        severity,
        value,
        threshold,
        message,
        recommendation: recommendation.to_string(),
    }
}

/// Checks every threshold against `report`.
pub fn judge(report: &Report) -> Bottlenecks {
    let mut findings = Vec::new();
    let mut notes = Vec::new();
    let pairs = &report.pairs;
    let display = &report.display;
    let fps = display.target_fps.unwrap_or(DEFAULT_TARGET_FPS);
    if display.target_fps.is_none() {
        notes.push(format!(
            "target fps not in the logs; {fps} fps assumed for the pair budget"
        ));
    }

    match pairs.budget_ms {
        Some(budget) if budget > 0.0 => {
            // A stage whose mean takes more than `limit` of the pair budget is a finding.
            let mut over_budget =
                |name, mean: Option<f64>, limit: f64, message: &dyn Fn(f64) -> String, advice| {
                    let Some(share) = mean.map(|m| m / budget) else {
                        return;
                    };
                    if share > limit {
                        let message = message(share);
                        findings.push(finding(name, share, limit, share / limit, message, advice));
                    }
                };
            over_budget(
                "generation_behind",
                pairs.total_ms.mean,
                GENERATION_BUDGET_SHARE,
                &|s| format!(
                    "a pair takes {:.0} ms on average but plays for {budget:.0} ms ({:.0} % of its budget): generation cannot keep up",
                    pairs.total_ms.mean.unwrap_or(0.0),
                    s * 100.0
                ),
                "lower display.target_fps or raise generation.frames_per_pair, and fix the slowest stage named in the other findings",
            );
            over_budget(
                "decode_bound",
                pairs.decode_ms.mean,
                DECODE_BUDGET_SHARE,
                &|s| format!(
                    "decode takes {:.0} % of the pair budget ({:.1} ms per frame)",
                    s * 100.0,
                    pairs.decode_ms_per_frame.mean.unwrap_or(0.0)
                ),
                "decode-bound: set generation.decode_divisor = 2 (decode at half size and upscale: 4x cheaper), lower generation.width/height, or set generation.device = \"cuda\"",
            );
            over_budget(
                "keyframe_bound",
                report.keyframes.ms.mean,
                KEYFRAME_BUDGET_SHARE,
                &|s| format!(
                    "a keyframe takes {:.0} ms on average, {:.0} % of the pair budget",
                    report.keyframes.ms.mean.unwrap_or(0.0),
                    s * 100.0
                ),
                "keyframe-bound: raise generation.frames_per_pair (more playback per keyframe), or use a faster keyframe source (fewer steps, smaller keyframes)",
            );
            over_budget(
                "save_bound",
                pairs.save_ms.mean,
                SAVE_BUDGET_SHARE,
                &|s| format!("saving frames takes {:.0} % of the pair budget", s * 100.0),
                "save-bound: set output.format = \"jpeg\", lower output.keep_frames or put output_dir on a faster disk",
            );
        }
        _ => notes.push("no pair timings: generation speed not judged".to_string()),
    }

    let lock = &report.lock;
    let avg = lock.avg_wait_ms.unwrap_or(0.0);
    let fraction = lock.contention_fraction.unwrap_or(0.0);
    if avg > LOCK_AVG_WAIT_MS || fraction > LOCK_CONTENTION_SHARE {
        let severity = (avg / LOCK_AVG_WAIT_MS).max(fraction / LOCK_CONTENTION_SHARE);
        findings.push(finding(
            "lock_contention",
            avg,
            LOCK_AVG_WAIT_MS,
            severity,
            format!(
                "GPU lock: mean wait {avg:.2} ms, {} contention events ({:.1} % of {} acquisitions)",
                lock.contention_events,
                fraction * 100.0,
                lock.acquisitions
            ),
            "contention: keep other GPU work (another dreamd, a second decoder) off the lock's device, and take the lock once per pair",
        ));
    }
    if let Some(per_pair) = lock.acquisitions_per_pair {
        if per_pair > LOCK_ACQUISITIONS_PER_PAIR {
            findings.push(finding(
                "lock_not_batched",
                per_pair,
                LOCK_ACQUISITIONS_PER_PAIR,
                per_pair / LOCK_ACQUISITIONS_PER_PAIR,
                format!("{per_pair:.1} lock acquisitions per pair: decodes are not batched"),
                "decode all of a pair's frames in one batch under one lock acquisition (the original's Fix 1; dreamd does this)",
            ));
        }
    }

    if let (Some(actual), Some(target)) = (display.actual_fps, display.target_fps) {
        if target > 0.0 && actual < FPS_SHARE * target {
            let s = actual / target;
            findings.push(finding(
                "display_starved",
                s,
                FPS_SHARE,
                FPS_SHARE / s.max(0.01),
                format!("display achieved {actual:.2} fps of {target:.2} ({:.0} %)", s * 100.0),
                "the buffer is not keeping up: fix the generation findings, or lower display.target_fps",
            ));
        }
    }
    let holes = display.held + display.skipped;
    if holes > 0 {
        findings.push(finding(
            "display_holes",
            holes as f64,
            0.0,
            count_severity(holes),
            format!(
                "{} frames held and {} skipped: frames were not ready on time",
                display.held, display.skipped
            ),
            "generation fell behind or failed: raise buffer.target_seconds and display.start_gate_seconds, and fix the other findings",
        ));
    }
    if let Some(shown) = display.frames_displayed.filter(|n| *n > 0) {
        let share = display.late as f64 / shown as f64;
        let interval_ms = 1000.0 / fps;
        let p95_late = display.late_ms.p95.unwrap_or(0.0);
        if share > LATE_SHARE && p95_late > LATE_INTERVAL_SHARE * interval_ms {
            findings.push(finding(
                "late_ticks",
                share,
                LATE_SHARE,
                share / LATE_SHARE,
                format!(
                    "{} late display ticks ({:.1} % of frames shown), p95 {p95_late:.1} ms late of a {interval_ms:.0} ms interval",
                    display.late,
                    share * 100.0
                ),
                "the display thread is starved of CPU: leave a core free (fewer other processes, smaller frames)",
            ));
        }
    }
    let low = report.buffer.low_fraction.unwrap_or(0.0);
    if low > BUFFER_LOW_TIME_SHARE || display.rebuffering > 0 {
        let severity = (low / BUFFER_LOW_TIME_SHARE).max(count_severity(display.rebuffering));
        findings.push(finding(
            "buffer_low",
            low,
            BUFFER_LOW_TIME_SHARE,
            severity,
            format!(
                "buffer below a quarter of its target in {:.0} % of samples; playback re-buffered {} times",
                low * 100.0,
                display.rebuffering
            ),
            "generation is slower than playback: fix the generation findings, or lower display.target_fps",
        ));
    }
    let failures = &report.failures;
    if failures.total > 0 {
        let stages: Vec<String> = failures
            .by_stage
            .iter()
            .map(|(stage, n)| format!("{stage} {n}"))
            .collect();
        findings.push(finding(
            "failures",
            failures.total as f64,
            0.0,
            count_severity(failures.total),
            format!("{} failures ({})", failures.total, stages.join(", ")),
            "read the last error per stage below; timeouts are set under [timeouts]",
        ));
    }

    findings.sort_by(|a, b| b.severity.total_cmp(&a.severity));
    Bottlenecks {
        healthy: findings.is_empty(),
        findings,
        notes,
    }
}
