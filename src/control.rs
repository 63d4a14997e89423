//! Operator control shared by the server, the pipeline and the display: pause, resume, skip to
//! the next keyframe, next theme.
//!
//! Requests are flags and counters, never channels: the HTTP side only sets them, and the
//! display and the coordinator look at them on their own schedule, so a burst of requests can
//! never queue work or slow a tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A control request that cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The keyframe source has no themes to move through.
    #[error("keyframe source {0} has no themes")]
    NoThemes(String),
}

/// Shared control state; one per daemon.
#[derive(Debug)]
pub struct Control {
    paused: watch::Sender<bool>,
    /// Skip requests made so far; the display remembers how many it has served.
    skips: AtomicU64,
    next_theme: AtomicBool,
    source_name: String,
    source_has_themes: bool,
}

impl Control {
    /// Control for a daemon whose keyframe source is `source_name`.
    pub fn new(source_name: &str, source_has_themes: bool) -> Self {
        Self {
            paused: watch::channel(false).0,
            skips: AtomicU64::new(0),
            next_theme: AtomicBool::new(false),
            source_name: source_name.to_string(),
            source_has_themes,
        }
    }

    /// Stops generation and holds the display; returns whether it was running.
    pub fn pause(&self) -> bool {
        self.paused
            .send_if_modified(|p| !std::mem::replace(p, true))
    }

    /// Undoes [`Control::pause`]; returns whether it was paused.
    pub fn resume(&self) -> bool {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, false))
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits while paused; false when `shutdown` comes first.
    pub async fn wait_while_paused(&self, shutdown: &CancellationToken) -> bool {
        let mut paused = self.paused.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            result = paused.wait_for(|p| !*p) => result.is_ok(),
        }
    }

    /// Asks the display to jump to the next keyframe.
    pub fn request_skip(&self) {
        self.skips.fetch_add(1, Ordering::Relaxed);
    }

    /// Skip requests made so far (the display compares it with the ones it served).
    pub fn skips_requested(&self) -> u64 {
        self.skips.load(Ordering::Relaxed)
    }

    /// Asks the keyframe source to move to its next theme before the next keyframe.
    pub fn request_next_theme(&self) -> Result<(), ControlError> {
        if !self.source_has_themes {
            return Err(ControlError::NoThemes(self.source_name.clone()));
        }
        self.next_theme.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Takes a pending next-theme request.
    pub fn take_next_theme(&self) -> bool {
        self.next_theme.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn pause_and_resume_report_changes() {
        let control = Control::new("procedural", false);
        assert!(!control.is_paused());
        assert!(control.pause());
        assert!(!control.pause());
        assert!(control.is_paused());
        assert!(control.resume());
        assert!(!control.resume());
    }

    #[test]
    fn next_theme_needs_a_source_with_themes() {
        let control = Control::new("procedural", false);
        assert_eq!(
            control.request_next_theme().unwrap_err().to_string(),
            "keyframe source procedural has no themes"
        );
        let control = Control::new("prompts", true);
        control.request_next_theme().unwrap();
        assert!(control.take_next_theme());
        assert!(!control.take_next_theme());
    }

    #[tokio::test]
    async fn waiting_ends_on_resume_or_shutdown() {
        let control = Arc::new(Control::new("procedural", false));
        let shutdown = CancellationToken::new();
        assert!(control.wait_while_paused(&shutdown).await);
        control.pause();
        let waiter = {
            let (control, shutdown) = (Arc::clone(&control), shutdown.clone());
            tokio::spawn(async move { control.wait_while_paused(&shutdown).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        control.resume();
        assert!(waiter.await.unwrap());
        control.pause();
        shutdown.cancel();
        assert!(!control.wait_while_paused(&shutdown).await);
    }
}
