//! Shared by the end-to-end tests: the real `dreamd` binary on its embedded default, its server on
//! a free loopback port, readers for the files it writes, a tiny HTTP client, and the test
//! weights ([`weights`], [`pth_weights`], [`weights_dir`], [`shared_file`]: the shared model
//! folder or a verified pull cached under `target/`, else one loud skip line, or a failure
//! under `DREAMD_REQUIRE_MODELS=1`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

// Not every test file uses all of these.
#[allow(unused_imports)]
pub use dreamd::engine::taesd::{weights::Part, Family};
#[allow(unused_imports)]
pub use dreamd::test_weights::{
    models_dir as weights_dir, pth_weights, shared_file, shared_models_dir, weights,
};

/// Makes `command` see only the model folders a test names: no `$DREAMD_MODELS`,
/// `$COMFYUI_PATH` or `$HF_HOME`, and `home` as the home folder, so that a ComfyUI, A1111 or
/// Hugging Face cache on the developer's machine is not found.
pub fn isolate_models<'c>(command: &'c mut Command, home: &Path) -> &'c mut Command {
    command
        .env_remove("DREAMD_MODELS")
        .env_remove("COMFYUI_PATH")
        .env_remove("HF_HOME")
        .env("HOME", home)
}

/// The Rainmeter skin's keys, in the order its regex expects, then the original's other keys.
pub const LEGACY_KEYS: [&str; 19] = [
    "frame_number",
    "generation_time",
    "status",
    "current_mode",
    "current_prompt",
    "cache_size",
    "uptime_hours",
    "daemon_status",
    "comfyui_status",
    "controller_status",
    "is_buffering",
    "buffer_filled",
    "buffer_target",
    "buffer_seconds",
    "buffer_percentage",
    "keyframes_generated",
    "interpolations_generated",
    "vae_lock_avg_wait_ms",
    "last_update",
];

/// A running daemon in a temporary folder.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// The test config: fast display (8 fps), short gate, small buffer, 4 in-betweens (keyframes
/// at multiples of 5), server on a free port; `extra` is appended.
pub fn config(extra: &str) -> String {
    format!(
        "[display]\ntarget_fps = 8.0\nstart_gate_seconds = 0.5\n\
         [buffer]\ntarget_seconds = 4.0\n\
         [generation]\nframes_per_pair = 4\n\
         {extra}\n"
    )
}

impl Daemon {
    /// Starts the daemon with [`config`]`(extra)` plus `[server] bind = "127.0.0.1:0"` (unless
    /// `extra` has its own `[server]` section) and waits for its URL in status.json.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full(extra, env, None)
    }

    /// [`Daemon::start`] under an open-file limit of `nofile` (soft and hard, `ulimit -n`).
    pub fn start_with_nofile(extra: &str, nofile: u64) -> Daemon {
        Daemon::start_full(extra, &[], Some(nofile))
    }

    /// `{DIR}` in `extra` becomes the daemon's (absolute) folder.
    fn start_full(extra: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra.replace("{DIR}", &dir.path().display().to_string());
        let extra = if extra.contains("[server]") {
            extra
        } else {
            format!("{extra}\n[server]\nbind = \"127.0.0.1:0\"\n")
        };
        std::fs::write(dir.path().join("dreamd.toml"), config(&extra)).unwrap();
        let args = ["run", "--config", "dreamd.toml"];
        let child = match nofile {
            None => spawn(dir.path(), &args, env),
            Some(n) => spawn_program(
                "sh",
                dir.path(),
                &[
                    &["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN][..],
                    &args[..],
                ]
                .concat(),
                env,
            ),
        };
        let mut daemon = Daemon {
            child,
            dir,
            url: String::new(),
        };
        daemon.url = daemon.wait_for_url();
        daemon
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// The server URL from status.json, with a wildcard address replaced by loopback.
    fn wait_for_url(&mut self) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited ({status}) before serving:\n{}", self.log());
            }
            let url = std::fs::read_to_string(self.path("output/status.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["server"]["url"].as_str().map(str::to_string));
            if let Some(url) = url {
                return url.replace("0.0.0.0", "127.0.0.1");
            }
            assert!(Instant::now() < until, "no server url:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/frame/current` has a frame (at most 30 s: a debug build on two cores shared
    /// with the other tests has taken 10 s to show its first frame on a software GPU adapter).
    pub fn wait_for_first_frame(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        while get(&self.url, "/frame/current").status != 200 {
            assert!(Instant::now() < until, "no frame shown:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (at most 5 s); returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        self.signal_and_wait("TERM", Duration::from_secs(5))
    }

    /// Sends `signal` (e.g. "TERM") and waits at most `limit` for the exit.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> (ExitStatus, Duration) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > limit {
                let _ = self.child.kill();
                panic!("daemon did not exit within {limit:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// status.json, if it exists and parses.
    pub fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.path("output/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every event in logs/dreamd.jsonl.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("logs/dreamd.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// The field at a `/`-separated path, e.g. `failures/decode` (null when absent).
pub fn field<'a>(value: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    value
        .pointer(&format!("/{path}"))
        .unwrap_or(&serde_json::Value::Null)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary in `dir` with output to files (never to an unread pipe).
pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    spawn_program(BIN, dir, args, env)
}

/// [`spawn`] through another program (a shell that sets limits, say).
pub fn spawn_program(program: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("DREAMD_TOKEN")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    // The tests assume the preview decoder unless they pass DREAMD_MODELS themselves.
    isolate_models(&mut command, dir);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request with `Connection: close`, over a plain socket so every byte is visible.
pub fn request(url: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    try_request(url, method, path, headers).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`request`], with a transport error (refused, reset, timed out) returned instead of
/// panicking: for polls that wait for the server to come back.
pub fn try_request(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Answer> {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

pub fn get(url: &str, path: &str) -> Answer {
    request(url, "GET", path, &[])
}

/// A control request as `dreamd ctl` sends it (JSON content type).
pub fn post(url: &str, path: &str) -> Answer {
    request(url, "POST", path, &[("Content-Type", "application/json")])
}

/// Sends `raw` (a whole request, byte for byte) and reads the answer until the server closes.
pub fn raw_request(url: &str, raw: &[u8]) -> Answer {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse(&answer)
}

fn parse(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A tool the test needs is missing: fail under `DREAMD_REQUIRE_TOOLS=1` (CI), else skip loudly.
/// Returns normally only when skipping.
pub fn tool_missing(what: &str) {
    if std::env::var("DREAMD_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{what} is required (DREAMD_REQUIRE_TOOLS=1) but missing");
    }
    eprintln!("\n*** SKIPPED: {what} is missing; install it or run .ci/run ***\n");
}
