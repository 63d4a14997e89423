//! The HTTP server of the real `dreamd` binary: every endpoint, control, limits, the token
//! rule, `dreamd ctl`, and `/metrics` through a real Prometheus text parser.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{get, post, raw_request, request, tool_missing, Daemon, BIN};

/// Keyframes sit at multiples of frames_per_pair + 1 (the test config has 4 in-betweens).
const KEYFRAME_EVERY: u64 = 5;

fn status(daemon: &Daemon) -> Value {
    let answer = get(&daemon.url, "/status");
    assert_eq!(answer.status, 200);
    serde_json::from_slice(&answer.body).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn frames_status_health_and_the_page_are_served() {
    let daemon = Daemon::start("[output]\nkeep_frames = 12");
    daemon.wait_for_first_frame();

    let page = get(&daemon.url, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.text().contains("new EventSource(\"/events\")"));

    let current = get(&daemon.url, "/frame/current");
    assert_eq!(current.header("content-type"), Some("image/png"));
    assert_eq!(current.header("cache-control"), Some("no-cache"));
    let image = image::load_from_memory(&current.body).unwrap();
    assert_eq!((image.width(), image.height()), (512, 256));
    let seq: u64 = current.header("x-frame-seq").unwrap().parse().unwrap();

    // A saved frame: immutable, strong ETag, 304 when the client has it.
    let frame = get(&daemon.url, &format!("/frames/{seq}"));
    assert_eq!(frame.status, 200, "{}", frame.text());
    assert_eq!(
        frame.body, current.body,
        "/frames/{seq} differs from what was shown"
    );
    let etag = frame.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    assert_eq!(
        frame.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let again = request(
        &daemon.url,
        "GET",
        &format!("/frames/{seq}"),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = request(
        &daemon.url,
        "GET",
        &format!("/frames/{seq}"),
        &[("If-None-Match", "\"0-0000000000000000\"")],
    );
    assert_eq!(other.status, 200);

    // Bad names never reach the disk.
    for bad in [
        "/frames/abc",
        "/frames/-1",
        "/frames/1.png",
        "/frames/..%2Fstatus.json",
        "/frames/%2E%2E%2F%2E%2E%2Fdreamd.toml",
    ] {
        assert_eq!(get(&daemon.url, bad).status, 400, "{bad}");
    }
    assert_eq!(get(&daemon.url, "/frames/../status.json").status, 404);
    assert_eq!(get(&daemon.url, "/frames/99999999").status, 404);
    // With 12 frames kept, frame 0 is pruned soon.
    wait_until("frame 0 to be pruned", Duration::from_secs(10), || {
        get(&daemon.url, "/frames/0").status == 404
    });

    // /status is the status.json document.
    let document = status(&daemon);
    for key in [
        "frame_number",
        "status",
        "buffer_seconds",
        "state",
        "display",
        "gpu_lock",
    ] {
        assert!(document.get(key).is_some(), "/status lacks {key}");
    }
    assert_eq!(document["server"]["url"], daemon.url.as_str());
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(daemon.path("output/status.json")).unwrap())
            .unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&document), keys(&on_disk));

    let health = get(&daemon.url, "/healthz");
    assert_eq!(health.status, 200);
    assert!(health.text().starts_with("ok: "), "{}", health.text());
    assert_eq!(get(&daemon.url, "/nope").status, 404);
}

/// Reads server-sent events from a raw socket.
struct EventReader {
    lines: BufReader<TcpStream>,
}

impl EventReader {
    fn open(url: &str) -> Result<EventReader, String> {
        let addr = url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut lines = BufReader::new(stream);
        let mut status_line = String::new();
        lines.read_line(&mut status_line).unwrap();
        if !status_line.starts_with("HTTP/1.1 200") {
            return Err(status_line);
        }
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            lines.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        assert!(
            headers.contains("content-type: text/event-stream"),
            "{headers}"
        );
        Ok(EventReader { lines })
    }

    /// The next `(event, data)`; chunk-size lines and comments are skipped.
    fn next(&mut self) -> (String, Value) {
        let (mut event, mut data) = (String::new(), None);
        loop {
            let mut line = String::new();
            let n = self
                .lines
                .read_line(&mut line)
                .expect("event stream stalled");
            assert!(n > 0, "event stream ended");
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(json) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(json).unwrap());
            } else if line.is_empty() {
                if let Some(data) = data.take() {
                    return (event, data);
                }
            }
        }
    }

    fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let (event, data) = self.next();
            if event == kind {
                return data;
            }
        }
    }
}

#[test]
fn events_carry_frames_in_order_and_state_changes_and_end_at_shutdown() {
    let mut daemon = Daemon::start("");
    let mut events = EventReader::open(&daemon.url).unwrap();
    let first = events.next_of("state");
    assert_eq!(first["interval_ms"], 125.0);
    let mut seqs = Vec::new();
    while seqs.len() < 8 {
        seqs.push(events.next_of("frame")["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(post(&daemon.url, "/control/pause").status, 200);
    let paused = events.next_of("state");
    assert_eq!(paused["state"], "paused");
    assert_eq!(post(&daemon.url, "/control/resume").status, 200);
    assert_eq!(events.next_of("state")["state"], "playing");

    // An open stream does not hold up shutdown.
    let (exit, took) = daemon.terminate();
    assert!(exit.success(), "{}", daemon.log());
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

#[test]
fn pause_holds_the_display_and_skip_lands_on_the_next_keyframe() {
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    let wrong_method = get(&daemon.url, "/control/pause");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(get(&daemon.url, "/control/skip").status, 405);
    assert_eq!(post(&daemon.url, "/control/explode").status, 404);

    let paused = post(&daemon.url, "/control/pause");
    assert_eq!(paused.status, 200, "{}", paused.text());
    let answer: Value = serde_json::from_slice(&paused.body).unwrap();
    assert_eq!(answer["state"], "paused");
    std::thread::sleep(Duration::from_millis(300));
    let held = status(&daemon)["display"]["current_sequence"]
        .as_u64()
        .unwrap();
    let generated = status(&daemon)["generation"]["pairs"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let document = status(&daemon);
    assert_eq!(document["state"], "paused");
    assert_eq!(
        document["display"]["current_sequence"], held,
        "display moved while paused"
    );
    // At most the pair in flight when pausing finishes.
    assert!(document["generation"]["pairs"].as_u64().unwrap() <= generated + 1);
    assert_eq!(get(&daemon.url, "/healthz").status, 200);

    assert_eq!(post(&daemon.url, "/control/skip").status, 200);
    assert_eq!(post(&daemon.url, "/control/resume").status, 200);
    let mut next = held;
    wait_until("a new frame after resume", Duration::from_secs(5), || {
        next = get(&daemon.url, "/frame/current")
            .header("x-frame-seq")
            .unwrap()
            .parse()
            .unwrap();
        next != held
    });
    assert!(next > held);
    assert_eq!(
        next % KEYFRAME_EVERY,
        0,
        "skip from {held} landed on {next}, not a keyframe"
    );

    let theme = post(&daemon.url, "/control/next-theme");
    assert_eq!(theme.status, 409);
    assert!(
        theme.text().contains("procedural has no themes"),
        "{}",
        theme.text()
    );
}

#[test]
fn metrics_parse_with_the_prometheus_text_parser() {
    let python = std::env::var("DREAMD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has_parser = Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_parser {
        tool_missing(&format!(
            "the prometheus_client Python package (for {python})"
        ));
        return;
    }
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    std::thread::sleep(Duration::from_millis(700));
    let metrics = get(&daemon.url, "/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = metrics.text();
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {"type": family.type,
                        "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Value = serde_json::from_slice(&output.stdout).unwrap();
    for (name, kind) in [
        ("dreamd_build_info", "gauge"),
        ("dreamd_display_fps", "gauge"),
        ("dreamd_display_interval_error_seconds", "histogram"),
        ("dreamd_buffer_seconds", "gauge"),
        ("dreamd_buffer_frames", "gauge"),
        ("dreamd_gpu_lock_wait_seconds", "histogram"),
        ("dreamd_gpu_lock_hold_seconds", "histogram"),
        ("dreamd_gpu_lock_acquisitions", "counter"),
        ("dreamd_decode_seconds_per_frame", "gauge"),
        ("dreamd_keyframe_seconds", "gauge"),
        ("dreamd_frames_generated", "counter"),
        ("dreamd_failures", "counter"),
        ("dreamd_display_frames", "counter"),
    ] {
        assert_eq!(families[name]["type"], kind, "{name} in:\n{text}");
    }
    let samples = |name: &str| families[name]["samples"].as_array().unwrap().clone();
    let value = |family: &str, sample: &str, label: Option<(&str, &str)>| -> f64 {
        samples(family)
            .iter()
            .find(|s| s[0] == sample && label.is_none_or(|(k, v)| s[1][k].as_str() == Some(v)))
            .unwrap_or_else(|| panic!("no {sample} {label:?}"))[2]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        value(
            "dreamd_build_info",
            "dreamd_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        1.0
    );
    assert_eq!(samples("dreamd_failures").len(), 5);
    assert!(
        value(
            "dreamd_keyframe_seconds",
            "dreamd_keyframe_seconds",
            Some(("source", "procedural"))
        ) > 0.0
    );
    assert!(
        value(
            "dreamd_frames_generated",
            "dreamd_frames_generated_total",
            Some(("kind", "inbetween"))
        ) > 0.0
    );
    // One lock acquisition per decode call; the lock histograms count them all.
    let acquisitions = value(
        "dreamd_gpu_lock_acquisitions",
        "dreamd_gpu_lock_acquisitions_total",
        None,
    );
    assert!(acquisitions > 0.0);
    // Histograms: cumulative buckets ending at +Inf = count.
    for family in [
        "dreamd_display_interval_error_seconds",
        "dreamd_gpu_lock_wait_seconds",
        "dreamd_gpu_lock_hold_seconds",
    ] {
        let buckets: Vec<f64> = samples(family)
            .iter()
            .filter(|s| s[0].as_str().unwrap().ends_with("_bucket"))
            .map(|s| s[2].as_f64().unwrap())
            .collect();
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{family}: {buckets:?}"
        );
        let count = value(family, &format!("{family}_count"), None);
        assert_eq!(*buckets.last().unwrap(), count, "{family}");
        assert!(count > 0.0, "{family} is empty");
    }
}

#[test]
fn healthz_fails_with_the_reason_once_degraded_past_the_threshold() {
    // Every decode times out, so the daemon is degraded from the first pair on.
    let daemon = Daemon::start(
        "[timeouts]\ndecode_seconds = 0.000001\n\
         [server]\nbind = \"127.0.0.1:0\"\nunhealthy_after_seconds = 0.5",
    );
    let mut last = String::new();
    wait_until("/healthz to fail", Duration::from_secs(10), || {
        let answer = get(&daemon.url, "/healthz");
        last = answer.text();
        answer.status == 503
    });
    assert!(
        last.contains("degraded") && last.contains("decode"),
        "{last}"
    );
    assert_eq!(status(&daemon)["state"], "degraded");
}

#[test]
fn live_event_clients_are_bounded() {
    let daemon = Daemon::start("[server]\nbind = \"127.0.0.1:0\"\nmax_sse_clients = 2");
    let first = EventReader::open(&daemon.url).unwrap();
    let _second = EventReader::open(&daemon.url).unwrap();
    let refused = EventReader::open(&daemon.url)
        .err()
        .expect("third client accepted");
    assert!(refused.contains("503"), "{refused}");
    drop(first);
    wait_until("a freed slot", Duration::from_secs(5), || {
        EventReader::open(&daemon.url).is_ok()
    });
}

#[test]
fn non_loopback_bind_needs_a_token_and_control_checks_it() {
    // Refused at start without a token.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dreamd.toml"), support::config("")).unwrap();
    let output = Command::new(BIN)
        .args(["run", "--config", "dreamd.toml", "--bind", "0.0.0.0:0"])
        .current_dir(dir.path())
        .env_remove("DREAMD_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("DREAMD_TOKEN"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let daemon = Daemon::start_with_env(
        "[server]\nbind = \"0.0.0.0:0\"",
        &[("DREAMD_TOKEN", "s3cret-token")],
    );
    assert_eq!(post(&daemon.url, "/control/pause").status, 401);
    let wrong = request(
        &daemon.url,
        "POST",
        "/control/pause",
        &[
            ("Authorization", "Bearer s3cret-tokem"),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        status(&daemon)["state"].as_str().map(|s| s != "paused"),
        Some(true)
    );
    let right = request(
        &daemon.url,
        "POST",
        "/control/pause",
        &[
            ("Authorization", "Bearer s3cret-token"),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(status(&daemon)["state"], "paused");
    // Reading needs no token.
    assert_eq!(get(&daemon.url, "/healthz").status, 200);

    // dreamd ctl sends DREAMD_TOKEN.
    let ctl = |token: &str, action: &str| {
        Command::new(BIN)
            .args(["ctl", "--url", &daemon.url, action])
            .env("DREAMD_TOKEN", token)
            .output()
            .unwrap()
    };
    let refused = ctl("nope", "resume");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let resumed = ctl("s3cret-token", "resume");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let said = String::from_utf8_lossy(&resumed.stdout);
    assert!(said.starts_with("resume: ok (state "), "{said}");
    assert_ne!(status(&daemon)["state"], "paused");
}

#[test]
fn ctl_pauses_resumes_and_reports_status() {
    let daemon = Daemon::start("");
    daemon.wait_for_first_frame();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--url", daemon.url.as_str()];
        all.extend_from_slice(args);
        Command::new(BIN)
            .args(&all)
            .env_remove("DREAMD_TOKEN")
            .output()
            .unwrap()
    };
    let paused = ctl(&["pause"]);
    assert!(
        paused.status.success(),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&paused.stdout).trim(),
        "pause: ok (state paused)"
    );
    let shown = ctl(&["status"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.starts_with("state      paused"), "{text}");
    let json = ctl(&["--json", "status"]);
    let document: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(document["state"], "paused");
    let theme = ctl(&["next-theme"]);
    assert!(!theme.status.success());
    assert!(String::from_utf8_lossy(&theme.stderr).contains("has no themes"));
    assert!(ctl(&["resume"]).status.success());
    assert!(ctl(&["skip"]).status.success());

    let nobody = Command::new(BIN)
        .args(["ctl", "--url", "http://127.0.0.1:9", "status"])
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        stderr.contains("cannot reach the daemon at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn bad_bind_and_port_in_use_fail_at_start_with_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dreamd.toml"), support::config("")).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (bind, expected) in [
        (
            "localhost:80".to_string(),
            "server.bind must be an IP address and port".to_string(),
        ),
        (
            "127.0.0.1:99999".to_string(),
            "server.bind must be".to_string(),
        ),
        (
            format!("127.0.0.1:{port}"),
            format!("cannot listen on 127.0.0.1:{port}"),
        ),
    ] {
        let output = Command::new(BIN)
            .args(["run", "--config", "dreamd.toml", "--bind", &bind])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{bind} was accepted");
        assert!(stderr.contains(&expected), "{bind}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing was started: no frames were made.
    assert!(!dir.path().join("output/frames").exists());
}

/// `status.json`'s `updated_at` and `display.frames_displayed`.
fn progress(daemon: &Daemon) -> (String, u64) {
    let s = daemon.status().unwrap_or_default();
    (
        s["updated_at"].as_str().unwrap_or_default().to_string(),
        s["display"]["frames_displayed"].as_u64().unwrap_or(0),
    )
}

/// Issue 18 (3): a web page can neither control the daemon nor read it through DNS rebinding:
/// cross-site and simple (text/plain) control requests are refused, a foreign Host is refused,
/// and the kiosk page's own origin still works.
#[test]
fn cross_site_control_and_foreign_hosts_are_refused() {
    let daemon = Daemon::start("");
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let control = |headers: &str| {
        raw_request(
            &daemon.url,
            format!(
                "POST /control/pause HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 {headers}Content-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    // What a cross-origin fetch/form from a page can send without a preflight.
    let simple = control("Content-Type: text/plain\r\nOrigin: http://evil.example\r\n");
    assert_eq!(simple.status, 403, "{}", simple.text());
    let plain = control("Content-Type: text/plain\r\n");
    assert_eq!(plain.status, 415, "{}", plain.text());
    let form = control("Content-Type: application/x-www-form-urlencoded\r\n");
    assert_eq!(form.status, 415, "{}", form.text());
    let cross = control("Content-Type: application/json\r\nSec-Fetch-Site: cross-site\r\n");
    assert_eq!(cross.status, 403, "{}", cross.text());
    let same_site = control("X-Dreamd-Control: 1\r\nSec-Fetch-Site: same-site\r\n");
    assert_eq!(same_site.status, 403, "{}", same_site.text());
    let null_origin = control("Content-Type: application/json\r\nOrigin: null\r\n");
    assert_eq!(null_origin.status, 403, "{}", null_origin.text());
    assert_ne!(status(&daemon)["state"], "paused");
    // The daemon's own origin (a same-origin fetch from the kiosk page) and dreamd ctl work.
    let same = control(&format!(
        "Content-Type: application/json\r\nOrigin: http://{addr}\r\nSec-Fetch-Site: same-origin\r\n"
    ));
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(status(&daemon)["state"], "paused");
    let custom = raw_request(
        &daemon.url,
        format!(
            "POST /control/resume HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             X-Dreamd-Control: 1\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(custom.status, 200, "{}", custom.text());

    // DNS rebinding: the page's own name in Host.
    let get_as = |host: &str, path: &str| {
        raw_request(
            &daemon.url,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    };
    let port = addr.rsplit(':').next().unwrap();
    for path in ["/status", "/", "/frame/current", "/metrics", "/events"] {
        let rebound = get_as(&format!("evil.example:{port}"), path);
        assert_eq!(rebound.status, 421, "{path}: {}", rebound.text());
        assert!(!rebound.text().contains("frames_displayed"));
    }
    assert_eq!(get_as(&format!("localhost:{port}"), "/status").status, 200);
    assert_eq!(get_as(&addr, "/status").status, 200);
}

/// Issue 18 (3): a Host name can be allowed by configuration.
#[test]
fn allowed_hosts_admit_a_configured_name() {
    let daemon =
        Daemon::start("[server]\nbind = \"127.0.0.1:0\"\nallowed_hosts = [\"kiosk.lan\"]\n");
    let ask = |host: &str| {
        raw_request(
            &daemon.url,
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .status
    };
    assert_eq!(ask("kiosk.lan:8765"), 200);
    assert_eq!(ask("other.lan:8765"), 421);
}

/// Issue 18 (8): a chunked or oversized body on a control route is refused before it is read.
#[test]
fn control_bodies_must_be_short_and_sized() {
    let daemon = Daemon::start("");
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let mut chunked = format!(
        "POST /control/pause HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&[b' '; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(&daemon.url, &chunked);
    assert_eq!(answer.status, 411, "{}", answer.text());
    let big = format!(
        "POST /control/pause HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 100000\r\nConnection: close\r\n\r\n{}",
        " ".repeat(100_000)
    );
    assert_eq!(raw_request(&daemon.url, big.as_bytes()).status, 413);
    assert_ne!(status(&daemon)["state"], "paused");
    // `dreamd ctl`'s request ({} as JSON) is fine.
    let ok = format!(
        "POST /control/pause HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(raw_request(&daemon.url, ok.as_bytes()).status, 200);
}

/// A local non-loopback IPv4 address of this machine, if it has one.
fn outward_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Issue 18 (3): error texts in /status and /healthz name absolute paths only to local callers
/// and to callers holding the token.
#[test]
fn remote_callers_without_the_token_see_no_absolute_paths() {
    let Some(ip) = outward_ip() else {
        eprintln!("*** SKIPPED: no non-loopback address to call from ***");
        return;
    };
    let daemon = Daemon::start_with_env(
        "[paths]\noutput_dir = \"{DIR}/output\"\n\
         [faults]\nwrite_error = { after_seconds = 0.5, for_seconds = 600 }\n\
         [server]\nbind = \"0.0.0.0:0\"\n",
        &[("DREAMD_TOKEN", "s3cret-token")],
    );
    let dir = daemon.dir.path().display().to_string();
    wait_until("an error naming a path", Duration::from_secs(10), || {
        status(&daemon)["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&dir))
    });
    let port = daemon.url.rsplit(':').next().unwrap();
    let remote = format!("http://{ip}:{port}");
    let answer = get(&remote, "/status");
    assert_eq!(answer.status, 200);
    let message = serde_json::from_slice::<Value>(&answer.body).unwrap()["last_error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !message.contains(&dir) && message.contains("…/"),
        "{message}"
    );
    let with_token = request(
        &remote,
        "GET",
        "/status",
        &[("Authorization", "Bearer s3cret-token")],
    );
    assert!(with_token.text().contains(&dir));
}

/// Issue 18 (2): more idle connections than the open-file limit allows used to stop
/// status.json, frame saves and publishing. Under `ulimit -n 256`, 400 idle connections are
/// capped (the rest answered 503), and the daemon's own files keep being written.
#[test]
fn idle_connections_cannot_starve_the_daemons_files() {
    let daemon = Daemon::start_with_nofile(
        "[server]\nbind = \"127.0.0.1:0\"\nheader_timeout_seconds = 30.0\n",
        256,
    );
    daemon.wait_for_first_frame();
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect(&addr) {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let (updated, shown) = progress(&daemon);
    let frames_before = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .count();
    let current_before = std::fs::metadata(daemon.path("output/current_frame.png"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let (updated_after, shown_after) = progress(&daemon);
    assert_ne!(
        updated,
        updated_after,
        "status.json stopped\n{}",
        daemon.log()
    );
    assert!(shown_after > shown + 10, "{shown} -> {shown_after}");
    let current_after = std::fs::metadata(daemon.path("output/current_frame.png"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(current_after > current_before, "current_frame.png stopped");
    let names: Vec<String> = std::fs::read_dir(daemon.path("output/frames"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.is_empty() && frames_before > 0);
    // Some of the later connections were answered 503 and closed.
    let mut refused = 0;
    for stream in idle.iter_mut().rev().take(50) {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = std::io::Read::read(stream, &mut buf) {
            if buf[..n].starts_with(b"HTTP/1.1 503") {
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no connection was refused");
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("cannot write status"), "{log}");
    drop(idle);
    // Once they are gone, the server answers again.
    wait_until("the server answers", Duration::from_secs(5), || {
        get(&daemon.url, "/healthz").status == 200
    });
}

/// Issue 18 (2): a connection that sends no request headers is closed after
/// `server.header_timeout_seconds`.
#[test]
fn silent_connections_are_closed_after_the_header_timeout() {
    let daemon = Daemon::start("[server]\nbind = \"127.0.0.1:0\"\nheader_timeout_seconds = 1.0\n");
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let opened = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut silent, &mut buf);
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}
