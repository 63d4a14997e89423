//! The real daemon with `generation.device = "wgpu"`: TAESD decodes on the wgpu adapter
//! (lavapipe in CI) for a few seconds, frames are shown, status.json names the device and no
//! decode fails. Skips loudly without an adapter (fails under `DREAMD_REQUIRE_TOOLS=1`).

mod support;

use std::time::{Duration, Instant};

use dreamd::engine::wgpu::{AdapterPolicy, GpuContext};
use support::{field, tool_missing, weights_dir, Daemon, Family};

#[test]
fn the_daemon_decodes_on_wgpu() {
    let Some(models) = weights_dir(Family::Taesd) else {
        return;
    };
    if let Err(e) = GpuContext::open(AdapterPolicy::AllowSoftware) {
        tool_missing(&format!("a wgpu adapter ({e})"));
        return;
    }
    // Small frames: a software adapter decodes 32×64 pictures (divisor 2 of 64×128) quickly.
    // The test config's [generation] table is open: these keys continue it.
    let mut daemon = Daemon::start(&format!(
        "device = \"wgpu\"\ndecoder = \"taesd\"\nmodels_dir = {:?}\n\
         width = 128\nheight = 64\ndecode_divisor = 2\n",
        models.display().to_string()
    ));
    daemon.wait_for_first_frame();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = daemon.status().unwrap_or_default();
        if field(&status, "generation/pairs").as_u64().unwrap_or(0) >= 3
            && field(&status, "display/frames_displayed")
                .as_u64()
                .unwrap_or(0)
                >= 8
        {
            break status;
        }
        assert!(
            Instant::now() < until,
            "too few pairs or frames in 30 s: {status:#}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(field(&status, "generation/device"), "wgpu", "{status:#}");
    assert_eq!(field(&status, "generation/decoder"), "taesd", "{status:#}");
    let adapter = field(&status, "generation/adapter")
        .as_str()
        .unwrap_or_default();
    assert!(
        adapter.contains("vulkan") || adapter.contains("metal") || adapter.contains("dx12"),
        "{status:#}"
    );
    assert_eq!(field(&status, "failures/decode"), 0, "{status:#}");
    let frame = image::open(daemon.path("output/current_frame.png")).unwrap();
    assert_eq!((frame.width(), frame.height()), (128, 64));
    let (exit, _) = daemon.terminate();
    assert!(exit.success(), "{exit}");
    let log = daemon.log();
    assert!(log.contains("wgpu: opened the device"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
