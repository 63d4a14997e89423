//! The kiosk page in real headless Chromium: it opens on a frame (its first screenshot is not
//! blank), a later load shows another one, and a page left open follows the live events (driven
//! through the DevTools protocol: its frame counter and sequence number advance, and the layer on
//! top holds a loaded picture).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{tool_missing, Daemon};
use tokio_tungstenite::tungstenite;

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

/// Chromium and a daemon showing frames; None (reported) without Chromium.
fn browser_and_daemon() -> Option<(String, Daemon)> {
    let Some(browser) = chromium() else {
        tool_missing("chromium (headless)");
        return None;
    };
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    Some((browser, daemon))
}

#[test]
fn kiosk_page_opens_on_a_frame_and_frames_change() {
    let Some((browser, daemon)) = browser_and_daemon() else {
        return;
    };
    let shots = tempfile::tempdir().unwrap();
    let url = format!("{}/", daemon.url);

    // The frame on screen is part of the page, so the screenshot (taken at the load event, before
    // any live event can arrive) shows it.
    let first = screenshot(&browser, &url, shots.path(), "first.png");
    assert!(
        brightness(&first) > 8.0,
        "the kiosk page opened black (brightness {:.1})",
        brightness(&first)
    );

    // Frames change at 8 fps; a later load shows another one.
    let mut changed = 0.0;
    for attempt in 0..5 {
        std::thread::sleep(Duration::from_millis(1000));
        let shot = screenshot(&browser, &url, shots.path(), &format!("later{attempt}.png"));
        changed = difference(&first, &shot);
        if changed > 1.0 {
            break;
        }
    }
    assert!(
        changed > 1.0,
        "the kiosk page did not change (difference {changed:.2})"
    );
}

#[test]
fn kiosk_page_left_open_follows_the_live_events() {
    let Some((browser, daemon)) = browser_and_daemon() else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let mut page = DevToolsPage::open(&browser, &format!("{}/", daemon.url), profile.path());

    let read = |page: &mut DevToolsPage| -> PageState {
        let json = page.evaluate(
            // Before the page's script has run, the body has no data yet: no frames.
            "(d => JSON.stringify({frames: Number(d.frames ?? 0), seq: Number(d.seq ?? -1), \
             state: d.state ?? '', loaded: [...document.querySelectorAll('img.layer.shown')] \
                 .filter(i => i.complete && i.naturalWidth > 0).length})) \
             (document.body ? document.body.dataset : {})",
        );
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("page state {json}: {e}"))
    };
    // The first live frame event arrives, its picture loads and is crossfaded in; then more.
    let until = Instant::now() + Duration::from_secs(20);
    let mut first: Option<PageState> = None;
    loop {
        let now = read(&mut page);
        match &first {
            None if now.frames >= 1 => first = Some(now.clone()),
            Some(first) if now.frames >= first.frames + 3 && now.seq > first.seq => {
                assert_eq!(now.state, "playing", "{now:?}");
                assert!(now.loaded >= 1, "no loaded picture on top: {now:?}");
                break;
            }
            _ => {}
        }
        assert!(
            Instant::now() < until,
            "the open page did not follow the frames: first {first:?}, now {now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the page says about itself (`document.body.dataset`).
#[derive(Clone, Debug, serde::Deserialize)]
struct PageState {
    /// Frames crossfaded in since the page loaded.
    frames: u64,
    /// The newest of them.
    seq: i64,
    state: String,
    /// Layers shown with a decoded picture.
    loaded: usize,
}

/// A DevTools protocol connection.
type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A page in a headless Chromium driven over the DevTools protocol; the browser is killed on drop.
struct DevToolsPage {
    socket: Socket,
    next_id: u64,
    _browser: Browser,
}

/// A browser process, killed on drop (also when a test fails while it runs).
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl DevToolsPage {
    fn open(browser: &str, url: &str, profile: &Path) -> DevToolsPage {
        let browser = Browser(
            Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--window-size=640,360",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        DevToolsPage {
            socket: Self::connect(url, profile),
            next_id: 1,
            _browser: browser,
        }
    }

    /// Finds the browser's port (it writes it into the profile) and the page's socket.
    fn connect(url: &str, profile: &Path) -> Socket {
        let until = Instant::now() + Duration::from_secs(20);
        let socket_url = loop {
            if let Some(socket_url) = Self::socket_url(url, profile) {
                break socket_url;
            }
            assert!(Instant::now() < until, "no DevTools page for {url}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let socket = tungstenite::connect(socket_url).unwrap().0;
        if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
        }
        socket
    }

    /// The page's DevTools socket address, once the browser has written its port and opened
    /// the page.
    fn socket_url(url: &str, profile: &Path) -> Option<String> {
        let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
        let port = text.lines().next()?;
        // Chromium keeps the connection open after answering: read by its length.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .proxy(None)
            .build()
            .into();
        let list = agent
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let targets: Vec<serde_json::Value> = serde_json::from_str(&list).ok()?;
        targets.iter().find_map(|t| {
            (t["type"] == "page" && t["url"] == url)
                .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// Evaluates `expression` (which must give a string) in the page.
    fn evaluate(&mut self, expression: &str) -> String {
        let id = self.next_id;
        self.next_id += 1;
        let message = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let reply = self.socket.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let reply: serde_json::Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                return reply["result"]["result"]["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("evaluate {expression}: {reply}"))
                    .to_string();
            }
        }
    }
}
