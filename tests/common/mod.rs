//! What the end-to-end tests share: a real `dreamd run` in a scratch folder, and readers for
//! the files it writes.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

/// A daemon started by a test; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
}

/// A config that plays quickly: 8 fps, a 0.5 s gate, a 4 s buffer, 4 in-betweens per pair,
/// the HTTP server on a free port.
pub const FAST: &str = "[display]\ntarget_fps = 8.0\nstart_gate_seconds = 0.5\n\
                        [buffer]\ntarget_seconds = 4.0\n\
                        [generation]\nframes_per_pair = 4\n\
                        [server]\nbind = \"127.0.0.1:0\"\n";

impl Daemon {
    /// Starts `dreamd run --config dreamd.toml` with `config` in a fresh folder.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config)
    }

    /// Starts it in `dir` (which may hold an earlier run's output).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Daemon {
        Self::start_with_env(dir, config, &[])
    }

    /// Starts it in `dir` with extra environment variables.
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Daemon {
        std::fs::write(dir.path().join("dreamd.toml"), config).unwrap();
        let child = spawn_with_env(dir.path(), &["run", "--config", "dreamd.toml"], env);
        Daemon { child, dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// status.json, if it exists and parses.
    pub fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.path("output/status.json")).ok()?;
        serde_json::from_str(&text).ok()
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

    /// The console log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// Every event in logs/dreamd.jsonl.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path("logs/dreamd.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary in `dir` with output to files (never to an unread pipe).
pub fn spawn(dir: &Path, args: &[&str]) -> Child {
    spawn_with_env(dir, args, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap()
}

/// Runs the binary to completion in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The field at a `/`-separated path, e.g. `failures/decode`.
pub fn field<'a>(value: &'a Value, path: &str) -> &'a Value {
    value.pointer(&format!("/{path}")).unwrap_or(&Value::Null)
}
