//! The kiosk page in real headless Chromium: it loads, shows a frame (the screenshot is not
//! blank) and the frame changes over time.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{tool_missing, Daemon};

/// `DREAMD_CHROMIUM`, else the first Chromium found on PATH.
fn chromium() -> Option<String> {
    if let Ok(path) = std::env::var("DREAMD_CHROMIUM") {
        return Some(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

/// Loads `url` in headless Chromium and returns its screenshot.
fn screenshot(browser: &str, url: &str, dir: &Path, name: &str) -> image::RgbImage {
    let path = dir.join(name);
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=640,360",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success() && path.exists(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    image::open(&path).unwrap().to_rgb8()
}

/// Mean brightness (0–255).
fn brightness(image: &image::RgbImage) -> f64 {
    let sum: u64 = image
        .pixels()
        .map(|p| p.0.iter().map(|&c| u64::from(c)).sum::<u64>())
        .sum();
    sum as f64 / (image.pixels().len() * 3) as f64
}

/// Mean absolute difference per channel (0–255).
fn difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn kiosk_page_shows_frames_that_change() {
    let Some(browser) = chromium() else {
        tool_missing("chromium (headless)");
        return;
    };
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    let shots = tempfile::tempdir().unwrap();
    let url = format!("{}/", daemon.url);

    // The page draws nothing until its first frame event, so a picture proves the page works.
    // Each attempt is a fresh headless Chromium whose screenshot races that first event: on two
    // busy cores three attempts were sometimes all too early.
    let mut first = None;
    for attempt in 0..6 {
        let shot = screenshot(&browser, &url, shots.path(), &format!("a{attempt}.png"));
        if brightness(&shot) > 8.0 {
            first = Some(shot);
            break;
        }
    }
    let first = first.expect("the kiosk page stayed black");

    // Frames change at 8 fps; a later screenshot shows another one.
    let mut changed = 0.0;
    for attempt in 0..6 {
        std::thread::sleep(Duration::from_millis(1000));
        let shot = screenshot(&browser, &url, shots.path(), &format!("b{attempt}.png"));
        if brightness(&shot) > 8.0 {
            changed = difference(&first, &shot);
            if changed > 1.0 {
                break;
            }
        }
    }
    assert!(
        changed > 1.0,
        "the kiosk page did not change (difference {changed:.2})"
    );
}
