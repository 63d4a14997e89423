//! `dreamd bench comfyui`: what the ComfyUI client costs per keyframe, and whether its memory
//! stays flat over many keyframes.
//!
//! The client makes img2img keyframes (upload, queue, wait on the WebSocket, history and
//! `/view`) against the replaying ComfyUI ([`crate::comfyui::replay`], the recorded protocol on
//! loopback), or against a real server with `--url`. Against the replay the server's own work
//! (making the picture) is measured inside it and subtracted, so what is left is the client's
//! overhead; against a real server only totals and phases are reported. Resident memory is
//! sampled after every tenth of the run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::comfyui::client::{ClientOptions, ComfyClient, GenerateRequest};
use crate::comfyui::replay::{Options, Replay};
use crate::comfyui::workflow::{Values, Workflow};
use crate::comfyui::{ComfyUiConfig, ComfyUiHealth, ComfyUiStatus};

/// What to run.
#[derive(Debug, Clone)]
pub struct ComfyOptions {
    /// Timed keyframes (after a warm-up of a tenth of them, at least 5).
    pub keyframes: usize,
    /// A real server instead of the replay (its own work is then not known).
    pub url: Option<String>,
    /// The built-in img2img graph, or a user workflow, as `[comfyui] workflow` takes it.
    pub workflow: Workflow,
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct ComfyReport {
    /// `replay` or the server's URL.
    pub server: String,
    pub keyframes: usize,
    pub wall_s: f64,
    pub input_png_kib: usize,
    pub total_ms_mean: f64,
    pub total_ms_p50: f64,
    pub total_ms_p95: f64,
    pub total_ms_max: f64,
    pub upload_ms_mean: f64,
    pub queue_ms_mean: f64,
    pub wait_ms_mean: f64,
    pub fetch_ms_mean: f64,
    /// The replay's picture work per keyframe (None against a real server).
    pub server_work_ms_mean: Option<f64>,
    /// Total minus the server's work (None against a real server).
    pub client_overhead_ms_mean: Option<f64>,
    /// Resident memory after each tenth of the run, KiB.
    pub rss_kib: Vec<u64>,
    /// Growth from the first tenth to the last, per cent.
    pub rss_growth_percent: f64,
}

/// Runs the benchmark (async: call it on the runtime).
pub async fn run(options: ComfyOptions) -> anyhow::Result<ComfyReport> {
    anyhow::ensure!(
        options.keyframes >= 10,
        "--keyframes must be at least 10 (got {})",
        options.keyframes
    );
    let replay = match &options.url {
        Some(_) => None,
        None => Some(Replay::start(Options::default()).await?),
    };
    let url = match (&options.url, &replay) {
        (Some(url), _) => url.clone(),
        (None, Some(replay)) => replay.url.clone(),
        (None, None) => anyhow::bail!("no server"),
    };
    let client = ComfyClient::new(
        &url,
        ClientOptions::default(),
        ComfyUiHealth::new(ComfyUiStatus::Unreachable),
    )?;
    let input = input_png()?;
    let (width, height) = (512, 256);
    let request = || GenerateRequest {
        workflow: options.workflow.clone(),
        values: Values::from_config(&ComfyUiConfig::default(), width, height),
        input_png: Some(input.clone()),
        deadline: Duration::from_secs(60),
    };
    for _ in 0..(options.keyframes / 10).max(5) {
        client.generate(request()).await?;
    }
    let busy_before = replay
        .as_ref()
        .map(|r| r.shared.busy_us.load(Ordering::Relaxed));
    let tenth = options.keyframes / 10;
    let mut totals = Vec::with_capacity(options.keyframes);
    let mut phases = [0f64; 4];
    let mut rss_kib = Vec::with_capacity(10);
    let start = Instant::now();
    for i in 0..tenth * 10 {
        let made = client.generate(request()).await?;
        let t = made.timings;
        totals.push(t.total.as_secs_f64() * 1e3);
        for (sum, d) in phases.iter_mut().zip([t.upload, t.queue, t.wait, t.fetch]) {
            *sum += d.as_secs_f64() * 1e3;
        }
        if (i + 1) % tenth == 0 {
            if let Some(replay) = &replay {
                // The replay keeps every output and request (as ComfyUI's output folder does
                // on its disk): dropped here so the figure is the client's.
                replay.shared.outputs.lock().clear();
                replay.shared.log.lock().clear();
            }
            rss_kib.push(crate::stats::rss_bytes().unwrap_or(0) / 1024);
        }
    }
    let wall = start.elapsed();
    let n = totals.len() as f64;
    let server_work = match (&replay, busy_before) {
        (Some(replay), Some(before)) => {
            Some((replay.shared.busy_us.load(Ordering::Relaxed) - before) as f64 / 1e3 / n)
        }
        _ => None,
    };
    let mut sorted = totals.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = totals.iter().sum::<f64>() / n;
    let first = rss_kib.first().copied().unwrap_or(0).max(1) as f64;
    let last = rss_kib.last().copied().unwrap_or(0) as f64;
    Ok(ComfyReport {
        server: options.url.unwrap_or_else(|| "replay".to_string()),
        keyframes: totals.len(),
        wall_s: wall.as_secs_f64(),
        input_png_kib: input.len() / 1024,
        total_ms_mean: mean,
        total_ms_p50: percentile(&sorted, 0.5),
        total_ms_p95: percentile(&sorted, 0.95),
        total_ms_max: sorted.last().copied().unwrap_or(0.0),
        upload_ms_mean: phases[0] / n,
        queue_ms_mean: phases[1] / n,
        wait_ms_mean: phases[2] / n,
        fetch_ms_mean: phases[3] / n,
        server_work_ms_mean: server_work,
        client_overhead_ms_mean: server_work.map(|w| mean - w),
        rss_kib,
        rss_growth_percent: (last / first - 1.0) * 100.0,
    })
}

/// The benchmark's input picture (512×256, a smooth gradient) as PNG.
fn input_png() -> anyhow::Result<Vec<u8>> {
    let picture = image::RgbImage::from_fn(512, 256, |x, y| {
        image::Rgb([(x / 2) as u8, y as u8, ((x + y) / 3) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl ComfyReport {
    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "server: {}\nkeyframes: {}, wall {:.2} s, input PNG {} KiB\n\
             per keyframe total ms: mean {:.2}, p50 {:.2}, p95 {:.2}, max {:.2}\n\
             phases mean ms: upload {:.2}, queue {:.2}, wait {:.2}, fetch {:.2}\n",
            self.server,
            self.keyframes,
            self.wall_s,
            self.input_png_kib,
            self.total_ms_mean,
            self.total_ms_p50,
            self.total_ms_p95,
            self.total_ms_max,
            self.upload_ms_mean,
            self.queue_ms_mean,
            self.wait_ms_mean,
            self.fetch_ms_mean,
        );
        if let (Some(work), Some(overhead)) =
            (self.server_work_ms_mean, self.client_overhead_ms_mean)
        {
            out.push_str(&format!(
                "server picture work mean ms: {work:.2}; client overhead (total - server work) \
                 mean ms: {overhead:.2}\n"
            ));
        }
        out.push_str(&format!(
            "RSS KiB after each tenth: {:?}; growth first to last tenth: {:.1} %\n",
            self.rss_kib, self.rss_growth_percent
        ));
        out
    }
}
