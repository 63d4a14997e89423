//! The settings that may change while the daemon runs (a config reload), read by the display,
//! the pipeline and the status writer at the moment they need them.
//!
//! One small lock guards a plain copy of the values; readers take a snapshot with
//! [`LiveSettings::get`], and the reloader is the only writer ([`LiveSettings::set`]).

use std::time::Duration;

use parking_lot::RwLock;

use crate::config::{Config, TimeoutsConfig};

/// A snapshot of the live values.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub target_fps: f64,
    /// The time one frame is shown: `1 / target_fps`.
    pub frame_interval: Duration,
    /// Ready frames needed before playback (re)starts.
    pub gate_frames: usize,
    pub target_seconds: f64,
    /// Frames registered ahead of the display at which generation pauses.
    pub buffer_frames: usize,
    pub timeouts: TimeoutsConfig,
    /// A failure this recent makes the state `degraded`.
    pub degraded_window: Duration,
}

impl Live {
    /// The live values of `config`.
    pub fn from_config(config: &Config) -> Live {
        let fps = config.display.target_fps;
        Live {
            target_fps: fps,
            frame_interval: config.frame_interval(),
            gate_frames: ((config.display.start_gate_seconds * fps).round() as usize).max(1),
            target_seconds: config.buffer.target_seconds,
            buffer_frames: config.buffer_frames(),
            timeouts: config.timeouts.clone(),
            degraded_window: config.health.degraded_window(),
        }
    }
}

/// The shared, changeable settings.
#[derive(Debug)]
pub struct LiveSettings {
    values: RwLock<Live>,
}

impl LiveSettings {
    pub fn new(config: &Config) -> LiveSettings {
        LiveSettings {
            values: RwLock::new(Live::from_config(config)),
        }
    }

    /// A snapshot of the current values.
    pub fn get(&self) -> Live {
        self.values.read().clone()
    }

    /// Replaces the values with `config`'s.
    pub fn set(&self, config: &Config) {
        *self.values.write() = Live::from_config(config);
    }
}
