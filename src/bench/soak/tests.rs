//! The soak's verdicts and plan.

use super::report::spread;
use super::*;

fn limits() -> Limits {
    Limits {
        frames_target: 1000,
        warmup_frames: 100,
        rss_growth: 0.05,
        keep_frames: 300,
        frame_files: 326,
        jsonl_bytes: 3 * MIB,
        jsonl_files: 3,
        human_log_bytes: HUMAN_LOG_BUDGET,
    }
}

/// A healthy run: 11 samples, 100 frames apart, flat memory, files and logs in bounds.
fn healthy() -> Vec<Sample> {
    (0..=10u64)
        .map(|i| Sample {
            wall_s: i as f64,
            frames_displayed: i * 100,
            simulated_h: i as f64 * 100.0 / 4.0 / 3600.0,
            rss_bytes: 40 * MIB + i * 1000,
            frame_files: 300,
            jsonl_bytes: MIB + i * 1000,
            jsonl_files: 2,
            human_log_bytes: 10_000,
            state: if i == 0 { "buffering" } else { "playing" }.to_string(),
            buffer_percentage: if i == 0 { 20.0 } else { 100.0 },
            ..Sample::default()
        })
        .collect()
}

fn failed(samples: &[Sample]) -> Vec<&'static str> {
    judge(samples, &limits())
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect()
}

#[test]
fn a_healthy_run_passes_every_check() {
    let checks = judge(&healthy(), &limits());
    assert_eq!(checks.len(), 7);
    assert!(checks.iter().all(|c| c.passed), "{checks:#?}");
}

#[test]
fn memory_growth_past_the_limit_fails_and_is_measured_from_the_warm_sample() {
    let mut samples = healthy();
    // Start-up growth before the warm sample (100 frames) does not count …
    samples[0].rss_bytes = 10 * MIB;
    assert!(failed(&samples).is_empty());
    // … growth after it does (the end figure is the median of the last tenth: samples 9-10).
    samples[9].rss_bytes = samples[1].rss_bytes * 106 / 100;
    samples[10].rss_bytes = samples[1].rss_bytes * 106 / 100;
    assert_eq!(failed(&samples), ["rss_growth"]);
    let detail = &judge(&samples, &limits())[1].detail;
    assert!(detail.contains("+6.00 %"), "{detail}");
}

#[test]
fn the_warm_sample_waits_for_the_filled_buffer() {
    let mut samples = healthy();
    for s in &mut samples[..4] {
        s.buffer_percentage = 50.0;
        s.rss_bytes = 20 * MIB;
    }
    // Frames 100-300 were displayed while the buffer (and memory) still grew.
    assert_eq!(warm(&samples, &limits()), Some(&samples[4]));
    assert!(failed(&samples).is_empty(), "{:?}", failed(&samples));
    // A buffer that never fills: the first sample past the warm-up frames.
    for s in &mut samples {
        s.buffer_percentage = 10.0;
    }
    assert_eq!(warm(&samples, &limits()), Some(&samples[1]));
    assert_eq!(failed(&samples), ["rss_growth"]);
}

#[test]
fn a_stall_a_rebuffer_and_too_many_files_are_each_named() {
    let mut samples = healthy();
    samples[5].frames_displayed = samples[4].frames_displayed;
    samples[7].frame_files = 400;
    samples[10].rebuffers = 1;
    assert_eq!(
        failed(&samples),
        ["frame_files", "no_stall", "no_buffering"]
    );
    let mut samples = healthy();
    samples[3].state = "buffering".to_string();
    assert_eq!(failed(&samples), ["no_buffering"]);
}

#[test]
fn unbounded_logs_an_unfinished_run_and_failures_fail() {
    let mut samples = healthy();
    samples[6].jsonl_bytes = 5 * MIB;
    assert_eq!(failed(&samples), ["logs_bounded"]);
    let mut samples = healthy();
    samples[6].jsonl_files = 4;
    samples[10].failures = 2;
    assert_eq!(failed(&samples), ["no_failures", "logs_bounded"]);
    let mut samples = healthy();
    samples.truncate(8);
    assert_eq!(failed(&samples), ["completed"]);
    assert_eq!(failed(&[]), ["completed"]);
}

#[test]
fn no_frame_at_all_is_a_stall_and_no_warm_sample_fails_memory() {
    let samples: Vec<Sample> = healthy()
        .into_iter()
        .map(|s| Sample {
            frames_displayed: 0,
            ..s
        })
        .collect();
    let names = failed(&samples);
    assert!(
        names.contains(&"no_stall") && names.contains(&"rss_growth"),
        "{names:?}"
    );
}

#[test]
fn the_plan_keeps_public_validation_and_raises_the_rate_afterwards() {
    let options = SoakOptions {
        hours: 24.0,
        rate: Rate::Speed(100.0),
        sample_every: Duration::from_secs(1),
        rss_growth: RSS_GROWTH_LIMIT,
    };
    let plan = plan(Config::default(), &options).unwrap();
    assert_eq!(plan.display_fps, 400.0);
    assert_eq!(plan.config.display.target_fps, 400.0);
    assert!(
        plan.config.validate().is_err(),
        "400 fps is past the public limit"
    );
    assert_eq!(plan.limits.frames_target, 24 * 3600 * 4);
    assert_eq!(plan.limits.warmup_frames, 34_560);
    assert_eq!(plan.limits.jsonl_files, JSONL_KEEP + 1);
    assert_eq!(plan.config.buffer_frames(), 800);
    assert!(plan.scratch.path().is_dir());
    let too_fast = SoakOptions {
        rate: Rate::Fps(5000.0),
        ..options
    };
    assert!(plan_err(&too_fast).contains("<= 1000 fps"));
}

fn plan_err(options: &SoakOptions) -> String {
    plan(Config::default(), options).unwrap_err().to_string()
}

#[test]
fn spread_keeps_the_ends() {
    let samples = healthy();
    let picked = spread(&samples, 3);
    assert_eq!(picked.len(), 3);
    assert_eq!(picked[0], samples[0]);
    assert_eq!(picked[1], samples[5]);
    assert_eq!(picked[2], samples[10]);
}
