//! The settings that may change while the daemon runs (a config reload), read by the display,
//! the pipeline and the status writer at the moment they need them, and [`RELOAD_KEYS`]: the
//! one table of which keys a reload applies live and which need a restart.
//!
//! One small lock guards a plain copy of the values; readers take a snapshot with
//! [`LiveSettings::get`], and the reloader is the only writer ([`LiveSettings::set`]).

use std::time::Duration;

use parking_lot::RwLock;

use super::{Config, TimeoutsConfig};

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

/// What takes a changed key at a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// [`LiveSettings`]: read by display, pipeline and status at their next use.
    Settings,
    /// The frame archive's retention.
    Retention,
    /// The console's and `dreamd.log`'s filter.
    LogLevel,
    /// Fault injection.
    Faults,
    /// A new keyframe source, from the next keyframe.
    Keyframes,
    /// The creative direction (themes, collapse detector, cache, injections), in place.
    Direction,
    /// Nothing while running: the key needs a restart.
    Restart,
}

/// One row of [`RELOAD_KEYS`].
#[derive(Debug, Clone, Copy)]
pub struct ReloadKey {
    /// The key or section as reload messages name it (`display.target_fps`, `generation`).
    pub name: &'static str,
    /// How the README names it (`` `timeouts.*` ``, `` `[generation]` ``).
    pub doc: &'static str,
    pub effect: Effect,
    /// A remark for the README (empty when none).
    pub note: &'static str,
    /// Whether the key differs between the running config and a new one.
    pub changed: fn(&Config, &Config) -> bool,
}

impl ReloadKey {
    /// True when a reload applies this key without a restart.
    pub fn is_live(&self) -> bool {
        self.effect != Effect::Restart
    }
}

/// Every key or section a reload compares, in the order reload messages list them: those
/// applied live first, then those that need a restart. The README's hot-reload table is
/// [`reload_table`] of this (a test keeps them equal).
pub const RELOAD_KEYS: &[ReloadKey] = &[
    ReloadKey {
        name: "display.target_fps",
        doc: "`display.target_fps`",
        effect: Effect::Settings,
        note: "",
        changed: |a, b| a.display.target_fps != b.display.target_fps,
    },
    ReloadKey {
        name: "display.start_gate_seconds",
        doc: "`display.start_gate_seconds`",
        effect: Effect::Settings,
        note: "",
        changed: |a, b| a.display.start_gate_seconds != b.display.start_gate_seconds,
    },
    ReloadKey {
        name: "buffer.target_seconds",
        doc: "`buffer.target_seconds`",
        effect: Effect::Settings,
        note: "",
        changed: |a, b| a.buffer.target_seconds != b.buffer.target_seconds,
    },
    ReloadKey {
        name: "timeouts",
        doc: "`timeouts.*`",
        effect: Effect::Settings,
        note: "",
        changed: |a, b| a.timeouts != b.timeouts,
    },
    ReloadKey {
        name: "health",
        doc: "`health.*`",
        effect: Effect::Settings,
        note: "",
        changed: |a, b| a.health != b.health,
    },
    ReloadKey {
        name: "output.keep_frames",
        doc: "`output.keep_frames`",
        effect: Effect::Retention,
        note: "",
        changed: |a, b| a.keep_frames() != b.keep_frames(),
    },
    ReloadKey {
        name: "output.keep_mb",
        doc: "`output.keep_mb`",
        effect: Effect::Retention,
        note: "",
        changed: |a, b| a.output.keep_mb != b.output.keep_mb,
    },
    ReloadKey {
        name: "logging.level",
        doc: "`logging.level`",
        effect: Effect::LogLevel,
        note: "unless `RUST_LOG` is set",
        changed: |a, b| a.logging.level != b.logging.level,
    },
    ReloadKey {
        name: "faults",
        doc: "`[faults]`",
        effect: Effect::Faults,
        note: "",
        changed: |a, b| a.faults != b.faults,
    },
    ReloadKey {
        name: "keyframes",
        doc: "`[keyframes]`, `[comfyui]`, `[diffusion]`",
        effect: Effect::Keyframes,
        note: "a new source takes over from the next keyframe, and the stream morphs into it; \
               the in-process model is loaded again",
        changed: |a, b| {
            a.keyframes != b.keyframes || a.comfyui != b.comfyui || a.diffusion != b.diffusion
        },
    },
    ReloadKey {
        name: "prompts",
        doc: "`[prompts]`",
        effect: Effect::Direction,
        note: "the playing theme continues when its name is still listed",
        changed: |a, b| a.prompts != b.prompts,
    },
    ReloadKey {
        name: "collapse",
        doc: "`[collapse]`",
        effect: Effect::Direction,
        note: "the detector keeps its history",
        changed: |a, b| a.collapse != b.collapse,
    },
    ReloadKey {
        name: "cache",
        doc: "`[cache]`",
        effect: Effect::Direction,
        note: "a smaller `max_size` evicts at once",
        changed: |a, b| a.cache != b.cache,
    },
    ReloadKey {
        name: "injection",
        doc: "`[injection]`",
        effect: Effect::Direction,
        note: "",
        changed: |a, b| a.injection != b.injection,
    },
    ReloadKey {
        name: "paths",
        doc: "`[paths]`",
        effect: Effect::Restart,
        note: "",
        changed: |a, b| a.paths != b.paths,
    },
    ReloadKey {
        name: "server",
        doc: "`[server]`",
        effect: Effect::Restart,
        note: "",
        changed: |a, b| a.server != b.server,
    },
    ReloadKey {
        name: "generation",
        doc: "`[generation]`",
        effect: Effect::Restart,
        note: "",
        changed: |a, b| a.generation != b.generation,
    },
    ReloadKey {
        name: "output.format",
        doc: "`output.format`",
        effect: Effect::Restart,
        note: "",
        changed: |a, b| a.output.format != b.output.format,
    },
    ReloadKey {
        name: "output.jpeg_quality",
        doc: "`output.jpeg_quality`",
        effect: Effect::Restart,
        note: "",
        changed: |a, b| a.output.jpeg_quality != b.output.jpeg_quality,
    },
    ReloadKey {
        name: "logging (files)",
        doc: "`logging.keep_days`, `logging.jsonl_max_mb`, `logging.jsonl_keep`",
        effect: Effect::Restart,
        note: "the log files",
        changed: |a, b| {
            let files = |c: &Config| {
                (
                    c.logging.keep_days,
                    c.logging.jsonl_max_mb,
                    c.logging.jsonl_keep,
                )
            };
            files(a) != files(b)
        },
    },
];

/// [`RELOAD_KEYS`] as the README's Markdown table.
pub fn reload_table() -> String {
    let mut table = String::from("| key | on reload |\n| --- | --- |\n");
    for key in RELOAD_KEYS {
        let apply = if key.is_live() {
            "applied live"
        } else {
            "needs a restart"
        };
        let note = if key.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", key.note)
        };
        table.push_str(&format!("| {} | {apply}{note} |\n", key.doc));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_shows_the_reload_table() {
        let readme = include_str!("../../README.md");
        let table = reload_table();
        assert!(
            readme.contains(&table),
            "README.md's hot-reload section must hold this table:\n{table}"
        );
    }

    #[test]
    fn every_row_sees_a_change_of_its_key() {
        // A default config against one with a value of every row changed: each row reports it.
        let old = Config::default();
        let mut new = old.clone();
        new.display.target_fps = 5.0;
        new.display.start_gate_seconds = 1.0;
        new.buffer.target_seconds = 20.0;
        new.timeouts.save_seconds = 5.0;
        new.health.degraded_seconds = 5.0;
        new.output.keep_frames = Some(5);
        new.output.keep_mb = Some(100);
        new.logging.level = "debug".to_string();
        new.faults.slow_disk_ms = 1;
        new.keyframes.seed = 1;
        new.prompts.rotate_every = 3;
        new.collapse.window = 5;
        new.cache.max_size = 5;
        new.injection.probability = 0.5;
        new.paths.log_dir = "elsewhere".into();
        new.server.enabled = false;
        new.generation.width = 256;
        new.output.format = crate::config::FrameFormat::Jpeg;
        new.output.jpeg_quality = 50;
        new.logging.keep_days = 1;
        let changed: Vec<&str> = RELOAD_KEYS
            .iter()
            .filter(|k| (k.changed)(&old, &new))
            .map(|k| k.name)
            .collect();
        let all: Vec<&str> = RELOAD_KEYS.iter().map(|k| k.name).collect();
        assert_eq!(changed, all);
    }

    /// A change to any section is seen by some row: none is silently ignored on reload.
    #[test]
    fn every_section_has_a_row() {
        let old = Config::default();
        type Change = fn(&mut Config);
        let sections: [(&str, Change); 17] = [
            ("paths", |c| c.paths.output_dir = "x".into()),
            ("display", |c| c.display.target_fps = 5.0),
            ("buffer", |c| c.buffer.target_seconds = 20.0),
            ("generation", |c| c.generation.height = 128),
            ("keyframes", |c| c.keyframes.seed = 7),
            ("output", |c| c.output.jpeg_quality = 10),
            ("timeouts", |c| c.timeouts.decode_seconds = 3.0),
            ("logging", |c| c.logging.jsonl_keep = 9),
            ("health", |c| c.health.degraded_seconds = 7.0),
            ("faults", |c| c.faults.slow_disk_ms = 3),
            ("server", |c| c.server.max_sse_clients = 3),
            ("comfyui", |c| c.comfyui.url = "http://127.0.0.1:9".into()),
            ("diffusion", |c| c.diffusion.strength = 0.25),
            ("prompts", |c| c.prompts.rotate_every = 2),
            ("collapse", |c| c.collapse.window = 4),
            ("cache", |c| c.cache.max_size = 4),
            ("injection", |c| c.injection.probability = 0.25),
        ];
        for (section, change) in sections {
            let mut new = old.clone();
            change(&mut new);
            assert_ne!(old, new, "[{section}]: the change changed nothing");
            assert!(
                RELOAD_KEYS.iter().any(|k| (k.changed)(&old, &new)),
                "a change to [{section}] is seen by no reload row"
            );
        }
    }
}
