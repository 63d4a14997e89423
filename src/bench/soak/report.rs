//! The soak's report: the run's figures and its checks, as JSON or as text.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::judge::{judge, rss_figures, Check, Sample};
use super::{Limits, Plan, MIB};
use crate::daemon::RunReport;
use crate::stats::round;

/// Results of `dreamd soak`.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Every check passed.
    pub passed: bool,
    /// Names of the checks that failed.
    pub failed: Vec<&'static str>,
    pub checks: Vec<Check>,
    pub simulated_hours: f64,
    pub simulated_fps: f64,
    pub display_fps: f64,
    /// Simulated seconds per wall-clock second, as run.
    pub speed: f64,
    pub decoder: String,
    pub size: String,
    pub frames_target: u64,
    pub frames_displayed: u64,
    pub pairs: u64,
    pub wall_s: f64,
    /// Median RSS over a tenth of the run from the warm sample (see [`rss_figures`]).
    pub rss_warm_mb: f64,
    pub rss_warm_at_simulated_h: f64,
    /// Median RSS over the last tenth of the run.
    pub rss_end_mb: f64,
    pub rss_max_mb: f64,
    pub rss_growth_pct: f64,
    pub frame_files_max: usize,
    pub keep_frames: usize,
    pub logs_bytes_max: u64,
    pub jsonl_bytes_max: u64,
    pub jsonl_files_max: usize,
    pub human_log_bytes_end: u64,
    pub late: u64,
    pub held: u64,
    pub skipped: u64,
    pub interval_error_p99_ms: f64,
    pub rebuffers: u64,
    pub samples: usize,
    /// `/proc/loadavg`'s 1, 5 and 15 minute figures at the start and at the end.
    pub load_average_start: String,
    pub load_average_end: String,
    /// CPU model and core count.
    pub machine: String,
    pub limits: Limits,
    /// Up to 25 samples spread evenly over the run (the last included).
    pub timeline: Vec<Sample>,
}

impl SoakReport {
    /// Judges `samples` (in order, the last taken when the run ended) of the finished `run` of
    /// `plan`.
    pub fn new(
        plan: &Plan,
        run: &RunReport,
        samples: &[Sample],
        load_average_start: String,
    ) -> SoakReport {
        let limits = &plan.limits;
        let checks = judge(samples, limits);
        let t = &run.telemetry;
        let last = samples.last().cloned().unwrap_or_default();
        let rss = rss_figures(samples, limits);
        let mb = |b: u64| round(b as f64 / MIB as f64, 1);
        let wall_s = last.wall_s;
        SoakReport {
            passed: checks.iter().all(|c| c.passed),
            failed: checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name)
                .collect(),
            checks,
            simulated_hours: round(last.simulated_h, 3),
            simulated_fps: plan.simulated_fps,
            display_fps: plan.display_fps,
            speed: if wall_s > 0.0 {
                round(last.simulated_h * 3600.0 / wall_s, 1)
            } else {
                0.0
            },
            decoder: run.decoder.clone(),
            size: format!(
                "{}x{}",
                plan.config.generation.width, plan.config.generation.height
            ),
            frames_target: limits.frames_target,
            frames_displayed: last.frames_displayed,
            pairs: t.pipeline.pairs.load(Ordering::Relaxed),
            wall_s: round(wall_s, 1),
            rss_warm_mb: mb(rss.map_or(0, |r| r.warm_bytes)),
            rss_warm_at_simulated_h: round(rss.map_or(0.0, |r| r.warm_at_h), 2),
            rss_end_mb: mb(rss.map_or(0, |r| r.end_bytes)),
            rss_max_mb: mb(samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0)),
            rss_growth_pct: rss
                .filter(|r| r.warm_bytes > 0)
                .map_or(0.0, |r| round(r.growth() * 100.0, 2)),
            frame_files_max: samples.iter().map(|s| s.frame_files).max().unwrap_or(0),
            keep_frames: limits.keep_frames,
            logs_bytes_max: samples.iter().map(Sample::log_bytes).max().unwrap_or(0),
            jsonl_bytes_max: samples.iter().map(|s| s.jsonl_bytes).max().unwrap_or(0),
            jsonl_files_max: samples.iter().map(|s| s.jsonl_files).max().unwrap_or(0),
            human_log_bytes_end: last.human_log_bytes,
            late: last.late,
            held: last.held,
            skipped: last.skipped,
            interval_error_p99_ms: last.p99_ms,
            rebuffers: last.rebuffers,
            samples: samples.len(),
            load_average_start,
            load_average_end: load_average(),
            machine: machine(),
            limits: limits.clone(),
            timeline: spread(samples, 25),
        }
    }

    /// Human-readable summary: the run, the figures, one line per check, the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "dreamd soak: {:.2} simulated hours ({} of {} frames at {} fps) in {:.0} s wall at {} fps (x{:.0}), decoder {} {}\n\
             RSS            warm {:.1} MB (at {:.2} h), end {:.1} MB ({:+.2} %), max {:.1} MB\n\
             frame files    at most {} (keep_frames {})\n\
             logs           at most {:.2} MiB; dreamd.jsonl* at most {:.2} MiB in {} files; human log {:.1} KiB\n\
             display        late {} held {} skipped {}, interval error p99 {:.3} ms, {} re-buffers\n\
             load average   {} at start, {} at end ({})\n",
            self.simulated_hours,
            self.frames_displayed,
            self.frames_target,
            self.simulated_fps,
            self.wall_s,
            self.display_fps,
            self.speed,
            self.decoder,
            self.size,
            self.rss_warm_mb,
            self.rss_warm_at_simulated_h,
            self.rss_end_mb,
            self.rss_growth_pct,
            self.rss_max_mb,
            self.frame_files_max,
            self.keep_frames,
            self.logs_bytes_max as f64 / MIB as f64,
            self.jsonl_bytes_max as f64 / MIB as f64,
            self.jsonl_files_max,
            self.human_log_bytes_end as f64 / 1024.0,
            self.late,
            self.held,
            self.skipped,
            self.interval_error_p99_ms,
            self.rebuffers,
            self.load_average_start,
            self.load_average_end,
            self.machine,
        );
        for check in &self.checks {
            out.push_str(&format!(
                "{} {:13} {}\n",
                if check.passed { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            ));
        }
        out.push_str(&if self.passed {
            "verdict: pass\n".to_string()
        } else {
            format!("verdict: FAIL ({})\n", self.failed.join(", "))
        });
        out
    }
}

/// At most `n` of `samples`, evenly spread, the first and the last included.
pub(super) fn spread(samples: &[Sample], n: usize) -> Vec<Sample> {
    if samples.len() <= n || n < 2 {
        return samples.to_vec();
    }
    let last = samples.len() - 1;
    (0..n)
        .map(|i| samples[i * last / (n - 1)].clone())
        .collect()
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cores} cores, {model}")
}
