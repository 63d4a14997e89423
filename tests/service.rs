//! systemd integration against a fake notify socket: READY, watchdog pings while frames advance
//! (and none when generation is broken), STOPPING at shutdown.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::Daemon;

/// The notify socket systemd would give the service.
struct FakeSystemd {
    socket: UnixDatagram,
    path: String,
}

impl FakeSystemd {
    fn new(dir: &std::path::Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeSystemd {
            socket,
            path: path.display().to_string(),
        }
    }

    /// Every message received within `within`.
    fn messages(&self, within: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < within {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        out
    }
}

fn start(extra: &str) -> (Daemon, FakeSystemd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::new(dir.path());
    let env = [
        ("NOTIFY_SOCKET", systemd.path.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    (Daemon::start_with_env(extra, &env), systemd, dir)
}

#[test]
fn ready_then_watchdog_pings_while_frames_advance_then_stopping() {
    let (mut daemon, systemd, _socket_dir) = start("");
    let messages = systemd.messages(Duration::from_secs(3));
    let ready = messages.iter().position(|m| m.contains("READY=1"));
    let ready = ready.unwrap_or_else(|| panic!("no READY=1 in {messages:?}\n{}", daemon.log()));
    assert!(
        messages[ready].contains("STATUS=decoder preview"),
        "{messages:?}"
    );
    let pings = messages[ready..]
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    // Every 200 ms for about 3 s.
    assert!(pings >= 8, "{pings} pings in {messages:?}");

    let (status, _) = daemon.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success());
    let after = systemd.messages(Duration::from_millis(300));
    assert!(after.iter().any(|m| m.contains("STOPPING=1")), "{after:?}");
}

#[test]
fn a_stalled_pipeline_gets_no_watchdog_pings() {
    let (daemon, systemd, _socket_dir) = start(
        "[timeouts]\ndecode_seconds = 1.0\n[faults]\ndecoder_error = { after_seconds = 0.0 }\n",
    );
    let messages = systemd.messages(Duration::from_secs(3));
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "pinged although no frame was made: {messages:?}"
    );
    assert!(
        daemon.log().contains("withholding the watchdog ping"),
        "{}",
        daemon.log()
    );
}
