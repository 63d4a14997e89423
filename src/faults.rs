//! Fault injection: the `[faults]` config section, a testing aid that makes chosen stages fail or
//! hang during a window of time, so tests (and operators rehearsing an incident) can watch dreamd
//! degrade and recover.
//!
//! [`Faults`] holds the plan and the moment it was set; the wrappers [`FaultyDecoder`] and
//! [`FaultySource`] and the frame writers consult it. With every fault off (the default) each
//! check is one read lock and a comparison. A reload may change the plan at run time; windows
//! then count from the reload.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use image::RgbImage;
use parking_lot::RwLock;

use crate::config::{FaultWindow, FaultsConfig};
use crate::engine::{Decoder, EngineError};
use crate::keyframes::{Keyframe, KeyframeError, KeyframeSource};
use crate::latent::LatentBatch;

/// How often a hang looks again at whether its window is over (or the plan changed).
const HANG_POLL: Duration = Duration::from_millis(50);

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    DecoderError,
    DecoderHang,
    KeyframeError,
    KeyframeHang,
    WriteError,
    SlowDisk,
}

impl Fault {
    fn window(self, plan: &FaultsConfig) -> Option<FaultWindow> {
        match self {
            Fault::DecoderError => plan.decoder_error,
            Fault::DecoderHang => plan.decoder_hang,
            Fault::KeyframeError => plan.keyframe_error,
            Fault::KeyframeHang => plan.keyframe_hang,
            Fault::WriteError => plan.write_error,
            Fault::SlowDisk => plan.slow_disk,
        }
    }
}

/// The fault plan in force and when it was set.
#[derive(Debug)]
pub struct Faults {
    state: RwLock<(FaultsConfig, Instant)>,
}

impl Faults {
    /// A plan counted from now.
    pub fn new(plan: FaultsConfig) -> Arc<Faults> {
        Arc::new(Faults {
            state: RwLock::new((plan, Instant::now())),
        })
    }

    /// No faults.
    pub fn none() -> Arc<Faults> {
        Faults::new(FaultsConfig::default())
    }

    /// Replaces the plan (a config reload); windows count from now. An unchanged plan keeps
    /// its start time.
    pub fn update(&self, plan: FaultsConfig) {
        let mut state = self.state.write();
        if state.0 != plan {
            *state = (plan, Instant::now());
        }
    }

    /// Whether `fault` is active now, and for how much longer.
    pub fn active(&self, fault: Fault) -> Option<Duration> {
        let state = self.state.read();
        let window = fault.window(&state.0)?;
        let elapsed = state.1.elapsed().as_secs_f64();
        let end = window.after_seconds + window.for_seconds;
        (elapsed >= window.after_seconds && elapsed < end)
            .then(|| Duration::try_from_secs_f64(end - elapsed).unwrap_or(Duration::MAX))
    }

    /// Blocks while `fault` stays active (re-checking, so a reload that clears it ends the
    /// hang). Returns whether it hung at all.
    pub fn hang_blocking(&self, fault: Fault) -> bool {
        let mut hung = false;
        while let Some(left) = self.active(fault) {
            hung = true;
            std::thread::sleep(left.min(HANG_POLL));
        }
        hung
    }

    /// The async form of [`Faults::hang_blocking`].
    pub async fn hang(&self, fault: Fault) -> bool {
        let mut hung = false;
        while let Some(left) = self.active(fault) {
            hung = true;
            tokio::time::sleep(left.min(HANG_POLL)).await;
        }
        hung
    }

    /// Called before each frame file write: waits when the disk is slow, fails like a full disk
    /// when writes fail.
    pub fn before_frame_write(&self) -> io::Result<()> {
        if self.active(Fault::SlowDisk).is_some() {
            let delay = self.state.read().0.slow_disk_ms;
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.active(Fault::WriteError).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected fault faults.write_error)",
            ));
        }
        Ok(())
    }
}

/// A decoder that fails or hangs when the plan says so, and otherwise is `inner`.
pub struct FaultyDecoder {
    inner: Box<dyn Decoder>,
    faults: Arc<Faults>,
}

impl FaultyDecoder {
    pub fn wrap(inner: Box<dyn Decoder>, faults: Arc<Faults>) -> Box<dyn Decoder> {
        Box::new(FaultyDecoder { inner, faults })
    }
}

impl Decoder for FaultyDecoder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn latent_channels(&self) -> usize {
        self.inner.latent_channels()
    }

    fn decode(&self, batch: &LatentBatch) -> Result<Vec<RgbImage>, EngineError> {
        self.faults.hang_blocking(Fault::DecoderHang);
        if self.faults.active(Fault::DecoderError).is_some() {
            return Err(EngineError::Model(
                "injected fault faults.decoder_error".to_string(),
            ));
        }
        self.inner.decode(batch)
    }
}

/// A keyframe source that fails or hangs when the plan says so, and otherwise is `inner`.
pub struct FaultySource {
    inner: Box<dyn KeyframeSource>,
    faults: Arc<Faults>,
}

impl FaultySource {
    pub fn wrap(inner: Box<dyn KeyframeSource>, faults: Arc<Faults>) -> Box<dyn KeyframeSource> {
        Box::new(FaultySource { inner, faults })
    }
}

#[async_trait]
impl KeyframeSource for FaultySource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn theme(&self) -> Option<String> {
        self.inner.theme()
    }

    fn has_themes(&self) -> bool {
        self.inner.has_themes()
    }

    fn next_theme(&mut self) {
        self.inner.next_theme()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn uses_prompts(&self) -> bool {
        self.inner.uses_prompts()
    }

    fn set_prompt(&mut self, prompt: &crate::direction::themes::PromptChoice) {
        self.inner.set_prompt(prompt)
    }

    fn continue_from(&mut self, keyframe: &Keyframe) {
        self.inner.continue_from(keyframe)
    }

    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        self.inner.detail()
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        self.faults.hang(Fault::KeyframeHang).await;
        if self.faults.active(Fault::KeyframeError).is_some() {
            return Err(KeyframeError::Source {
                source_name: self.inner.name().to_string(),
                message: "injected fault faults.keyframe_error".to_string(),
            });
        }
        self.inner.keyframe(index).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::preview::PreviewDecoder;
    use crate::latent::{Latent, LatentShape};

    fn window(after_seconds: f64, for_seconds: f64) -> Option<FaultWindow> {
        Some(FaultWindow {
            after_seconds,
            for_seconds,
        })
    }

    #[test]
    fn a_window_opens_and_closes_on_time() {
        let faults = Faults::new(FaultsConfig {
            decoder_error: window(0.05, 0.1),
            ..FaultsConfig::default()
        });
        assert_eq!(faults.active(Fault::DecoderError), None);
        std::thread::sleep(Duration::from_millis(70));
        let left = faults.active(Fault::DecoderError).unwrap();
        assert!(left <= Duration::from_millis(80), "{left:?}");
        assert_eq!(faults.active(Fault::DecoderHang), None);
        std::thread::sleep(left + Duration::from_millis(10));
        assert_eq!(faults.active(Fault::DecoderError), None);
    }

    #[test]
    fn the_decoder_fails_inside_its_window_and_recovers_after() {
        let faults = Faults::new(FaultsConfig {
            decoder_error: window(0.0, 0.1),
            ..FaultsConfig::default()
        });
        let decoder = FaultyDecoder::wrap(Box::new(PreviewDecoder), Arc::clone(&faults));
        let shape = LatentShape::new(4, 2, 2);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, vec![0.0; shape.len()]).unwrap())
            .unwrap();
        let err = decoder.decode(&batch).unwrap_err().to_string();
        assert!(err.contains("faults.decoder_error"), "{err}");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(decoder.decode(&batch).unwrap().len(), 1);
    }

    #[test]
    fn a_reload_that_clears_a_hang_ends_it() {
        let faults = Faults::new(FaultsConfig {
            decoder_hang: window(0.0, f64::INFINITY),
            ..FaultsConfig::default()
        });
        let clear = {
            let faults = Arc::clone(&faults);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                faults.update(FaultsConfig::default());
            })
        };
        let start = Instant::now();
        assert!(faults.hang_blocking(Fault::DecoderHang));
        assert!(start.elapsed() < Duration::from_secs(2));
        clear.join().unwrap();
    }

    #[test]
    fn writes_fail_like_a_full_disk() {
        let faults = Faults::new(FaultsConfig {
            write_error: window(0.0, 10.0),
            ..FaultsConfig::default()
        });
        let err = faults.before_frame_write().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(Faults::none().before_frame_write().is_ok());
    }
}
