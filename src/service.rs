//! systemd integration (`Type=notify`): READY when the daemon runs, a one-line STATUS, a
//! watchdog ping only while frames keep advancing, and STOPPING at shutdown.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op. The watchdog interval comes
//! from `$WATCHDOG_USEC` (systemd's `WatchdogSec=`). A ping is sent every half interval, but only
//! if frames were shown or made since the last one; a pipeline that stalls (or fails every
//! frame until the buffer drains) stops the pings, and systemd restarts the service.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::stats::Telemetry;

/// Tells systemd the daemon is up.
pub fn ready(summary: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(summary)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The watchdog interval systemd asked for, if any: `$WATCHDOG_USEC`, for this process when
/// `$WATCHDOG_PID` is set (as libsystemd's `sd_watchdog_enabled` reads them).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us =
        std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// Frames shown plus in-between frames made: it moves while the daemon does useful work.
/// (Keyframes are left out: a source can go on making them while every decode fails.)
fn progress(telemetry: &Telemetry) -> u64 {
    telemetry.display.frames_displayed.load(Ordering::Relaxed)
        + telemetry
            .pipeline
            .interpolated_frames
            .load(Ordering::Relaxed)
}

/// Pings the watchdog every `interval / 2` while [`progress`] advances (or the display is
/// paused on purpose), until `stop`.
pub async fn watchdog(
    interval: Duration,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
    stop: CancellationToken,
) {
    let period = interval / 2;
    tracing::info!(
        "systemd watchdog every {:.1} s (WatchdogSec {:.1} s)",
        period.as_secs_f64(),
        interval.as_secs_f64()
    );
    let mut last = progress(&telemetry);
    let mut stalled_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = progress(&telemetry);
        if now != last || control.is_paused() {
            last = now;
            stalled_since = None;
            send(&[NotifyState::Watchdog]);
        } else {
            let since = *stalled_since.get_or_insert_with(tokio::time::Instant::now);
            tracing::warn!(
                "no frame shown or made for {:.1} s; withholding the watchdog ping",
                since.elapsed().as_secs_f64() + period.as_secs_f64()
            );
        }
    }
}
