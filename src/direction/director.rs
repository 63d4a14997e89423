//! The director: a keyframe source wrapped with themes, collapse watching, the cache and
//! injections.
//!
//! [`DirectedSource`] sits between the pipeline's keyframe producer and the real source. Before
//! each keyframe it looks at the keyframe just made (its picture, or its latent decoded under
//! the GPU lock): embeds it, lets the collapse detector judge it, offers it to the cache; then
//! it decides the new keyframe. Usually the real source makes it, under the prompt the theme
//! rotation gives; an injection instead blends a cached frame or a seed picture into the last
//! keyframe's latent, and tells the source to continue from that blend (so the next img2img
//! starts from the injected picture). All of it runs on the blocking pool inside the keyframe's
//! time budget, never on the display's path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use image::RgbImage;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::cache::{CacheConfig, CacheStats, FrameCache, Offer};
use super::collapse::{CollapseConfig, CollapseDetector, CollapseReport};
use super::injection::{Decision, InjectionConfig, InjectionKind, InjectionPolicy, Trigger};
use super::similarity::{Embedding, Similarity};
use super::themes::{PromptChoice, PromptsConfig, SystemClock, ThemeRotation};
use crate::engine::{Engine, LockAccount};
use crate::events::{CacheEvent, CollapseEvent, InjectionEvent, LogEvent};
use crate::keyframes::decoded::DecodedKeyframes;
use crate::keyframes::{Keyframe, KeyframeError, KeyframeSource};
use crate::latent::Latent;

/// The settings the director needs, from `[prompts]`, `[collapse]`, `[cache]`, `[injection]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionSettings {
    pub prompts: PromptsConfig,
    pub collapse: CollapseConfig,
    pub cache: CacheConfig,
    pub injection: InjectionConfig,
    /// `output/cache`.
    pub cache_dir: PathBuf,
    /// Seed of the director's random choices.
    pub seed: u64,
}

/// What the director shows to status, `/metrics` and SSE.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectionSnapshot {
    /// The theme playing (sources with prompts).
    pub theme: Option<String>,
    /// The last prompt, modifier included (sources with prompts).
    pub prompt: Option<String>,
    /// What the last keyframe was: `dream`, `injection:cache`, `injection:seed`, or the
    /// source's name when it has no prompts.
    pub mode: String,
    /// What is playing, for people: the prompt, or the source's description
    /// (`procedural seed 42`, `picture sunset.png`).
    pub playing: String,
    pub collapse: CollapseReport,
    pub cache_size: usize,
    pub cache: CacheStats,
    pub cache_injections: u64,
    pub seed_injections: u64,
    /// Keyframes analysed by the detector.
    pub analysed: u64,
}

struct DirectorState {
    rotation: ThemeRotation,
    detector: CollapseDetector,
    cache: Option<FrameCache>,
    policy: InjectionPolicy,
    rng: StdRng,
    seeds: SeedList,
    last_seed: Option<PathBuf>,
    analysed: u64,
}

/// An injection prepared on the blocking pool.
struct Injection {
    kind: InjectionKind,
    /// Cache entry name or seed file name.
    source_id: String,
    picture: RgbImage,
    weight: f64,
    similarity: Option<Similarity>,
    reason: String,
}

/// What one keyframe was made as, kept so that status and the kiosk can say what is *on
/// screen* (the buffer plays keyframes made up to `buffer.target_seconds` earlier).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyframeLabel {
    pub mode: String,
    pub theme: Option<String>,
    pub prompt: Option<String>,
    pub playing: String,
}

/// Labels kept: far more keyframes than any buffer holds ahead of the screen.
const LABELS_KEPT: usize = 1024;

/// The labels of the last [`LABELS_KEPT`] keyframes, oldest first.
#[derive(Debug, Default)]
struct Labels(std::collections::VecDeque<(u64, KeyframeLabel)>);

impl Labels {
    fn record(&mut self, index: u64, label: KeyframeLabel) {
        // A restarted source numbers from 0 again: older labels no longer apply.
        if self.0.back().is_some_and(|(k, _)| *k >= index) {
            self.0.clear();
        }
        if self.0.len() == LABELS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back((index, label));
    }

    /// Keyframe `index`'s label, else the nearest earlier one's.
    fn of(&self, index: u64) -> Option<&KeyframeLabel> {
        let at = self.0.partition_point(|(k, _)| *k <= index);
        at.checked_sub(1).map(|i| &self.0[i].1)
    }
}

/// The creative direction of one daemon: theme rotation, detector, cache and injection
/// bookkeeping, shared by every [`DirectedSource`] it wraps (a reloaded source keeps them).
pub struct Director {
    state: Mutex<DirectorState>,
    status: Mutex<DirectionSnapshot>,
    labels: Mutex<Labels>,
    engine: Arc<Engine>,
    lock_timeout: Duration,
    /// Where the keyframes decoded here wait for the pairs that end at them.
    decoded: Arc<DecodedKeyframes>,
}

/// A keyframe source under creative direction.
pub struct DirectedSource {
    inner: Box<dyn KeyframeSource>,
    director: Arc<Director>,
    previous: Option<Keyframe>,
}

impl DirectionSettings {
    /// The settings in `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            prompts: config.prompts.clone(),
            collapse: config.collapse.clone(),
            cache: config.cache.clone(),
            injection: config.injection.clone(),
            cache_dir: config.paths.output_dir.join("cache"),
            seed: config.keyframes.seed,
        }
    }
}

impl Director {
    /// Starts the direction. The cache is opened (or created) when injections are possible:
    /// they need the engine's encoder, and without one the cache and injections are off (with
    /// a note in the log). A cache folder that cannot be opened is an error naming it.
    pub fn new(
        engine: Arc<Engine>,
        settings: DirectionSettings,
        lock_timeout: Duration,
    ) -> Result<Arc<Self>, KeyframeError> {
        let has_encoder = engine.encoder().is_some();
        let mut injection = settings.injection.clone();
        if injection.enabled && !has_encoder {
            tracing::info!(
                "cache and injections are off: decoder {} has no encoder to bring pictures into latent space",
                engine.decoder_name()
            );
        }
        injection.enabled &= has_encoder;
        let cache = if settings.cache.enabled && injection.enabled {
            Some(
                FrameCache::open(&settings.cache_dir, settings.cache.clone()).map_err(|e| {
                    KeyframeError::Source {
                        source_name: "direction".into(),
                        message: e.to_string(),
                    }
                })?,
            )
        } else {
            None
        };
        let seeds = SeedList::new(injection.seeds_dir.clone());
        let state = DirectorState {
            rotation: ThemeRotation::new(settings.prompts, Box::new(SystemClock), settings.seed),
            detector: CollapseDetector::new(settings.collapse),
            cache,
            policy: InjectionPolicy::new(injection),
            rng: StdRng::seed_from_u64(settings.seed ^ 0x5eed),
            seeds,
            last_seed: None,
            analysed: 0,
        };
        Ok(Arc::new(Self {
            state: Mutex::new(state),
            status: Mutex::new(DirectionSnapshot::default()),
            labels: Mutex::new(Labels::default()),
            engine,
            lock_timeout,
            decoded: Arc::new(DecodedKeyframes::new()),
        }))
    }

    /// The direction now: counters, collapse, and what the last keyframe made was.
    pub fn snapshot(&self) -> DirectionSnapshot {
        self.status.lock().clone()
    }

    /// [`Director::snapshot`] with mode, theme, prompt and what is playing taken from the
    /// keyframe on screen, `showing` (see [`Director::label_of`]); the last made when none is.
    pub fn snapshot_showing(&self, showing: Option<u64>) -> DirectionSnapshot {
        let mut snapshot = self.snapshot();
        if let Some(label) = showing.and_then(|k| self.label_of(k)) {
            snapshot.mode = label.mode;
            snapshot.theme = label.theme;
            snapshot.prompt = label.prompt;
            snapshot.playing = label.playing;
        }
        snapshot
    }

    /// What keyframe `index` was made as: its own label, else that of the nearest keyframe
    /// before it that has one (a keyframe made while direction failed kept the last prompt);
    /// None when it is older than every label kept or none was made yet.
    pub fn label_of(&self, index: u64) -> Option<KeyframeLabel> {
        self.labels.lock().of(index).cloned()
    }

    /// Applies reloaded `[prompts]`, `[collapse]`, `[cache]` and `[injection]` settings.
    pub fn reconfigure(&self, settings: DirectionSettings) {
        let mut state = self.state.lock();
        state.rotation.reconfigure(settings.prompts);
        state.detector.reconfigure(settings.collapse);
        if let Some(cache) = state.cache.as_mut() {
            if let Err(e) = cache.reconfigure(settings.cache) {
                tracing::warn!("cache reconfiguration: {e}");
            }
        }
        let mut injection = settings.injection;
        injection.enabled &= self.engine.encoder().is_some();
        state.seeds.set_dir(&injection.seeds_dir);
        state.policy.reconfigure(injection);
    }

    /// The pictures of keyframes this director decoded to look at, for the pipeline's pairs
    /// (see [`DecodedKeyframes`]).
    pub fn decoded_keyframes(&self) -> Arc<DecodedKeyframes> {
        Arc::clone(&self.decoded)
    }

    /// Wraps `inner` in this direction.
    pub fn wrap(self: &Arc<Self>, inner: Box<dyn KeyframeSource>) -> Box<dyn KeyframeSource> {
        {
            let mut status = self.status.lock();
            status.mode = inner.name().to_string();
            status.playing = inner.describe();
        }
        Box::new(DirectedSource {
            inner,
            director: Arc::clone(self),
            previous: None,
        })
    }

    /// Looks at the keyframe just made, and decides and prepares what comes next. Blocking.
    fn direct(
        &self,
        previous: Option<&Keyframe>,
        index: u64,
        label: &str,
    ) -> Result<Option<Injection>, String> {
        let (state, engine, lock_timeout) = (&self.state, &*self.engine, self.lock_timeout);
        let Some(previous) = previous else {
            return Ok(None);
        };
        {
            // Without injections (no encoder) there is nothing to steer with: no measuring,
            // and no decode under the GPU lock on the keyframe's path.
            let st = state.lock();
            if !st.policy.config().enabled && st.cache.is_none() {
                return Ok(None);
            }
        }
        let picture = match &previous.image {
            Some(image) => image.clone(),
            None => {
                let picture = engine
                    .decode_one(&previous.latent, lock_timeout)
                    .map_err(|e| format!("decoding the last keyframe for direction: {e}"))?;
                self.decoded.put(previous.index, picture.clone());
                picture
            }
        };
        let embedding = Embedding::of(&picture);
        let mut guard = state.lock();
        let st = &mut *guard;
        if !st.policy.in_warmup(index) {
            let report = st.detector.analyse(embedding.clone()).clone();
            st.analysed += 1;
            st.policy.record_verdict(report.state);
            CollapseEvent::new(previous.index, &report).emit();
        }
        if let Some(cache) = st.cache.as_mut() {
            let average = cache.average_similarity(&embedding);
            match cache.offer(&picture, embedding.clone(), label) {
                Ok(offer) => {
                    let (accepted, evicted) = match offer {
                        Offer::Accepted { evicted, .. } => (true, evicted),
                        Offer::Redundant { .. } => (false, None),
                    };
                    CacheEvent {
                        index: previous.index,
                        accepted,
                        size: cache.len() as u64,
                        color_similarity: average.map(|a| a.color),
                        structure_similarity: average.map(|a| a.structure),
                        evicted,
                    }
                    .emit();
                }
                Err(e) => tracing::warn!("cache: {e}"),
            }
        }
        let seeds = st.seeds.pictures().to_vec();
        let cache_len = st.cache.as_ref().map_or(0, FrameCache::len);
        let report = st.detector.last().clone();
        let decision = st
            .policy
            .decide(index, &report, cache_len, !seeds.is_empty(), &mut st.rng);
        let injection = match decision {
            Decision::Generate => None,
            Decision::Seed { reason } => {
                let choices: Vec<&PathBuf> = seeds
                    .iter()
                    .filter(|p| seeds.len() < 2 || Some(*p) != st.last_seed.as_ref())
                    .collect();
                let path = choices[st.rng.random_range(0..choices.len())].clone();
                st.last_seed = Some(path.clone());
                let picture = read_picture(&path).inspect_err(|_| st.seeds.forget())?;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Some(Injection {
                    kind: InjectionKind::Seed,
                    source_id: name,
                    similarity: Some(embedding.similarity(&Embedding::of(&picture))),
                    picture,
                    weight: st.policy.config().seed_blend_weight,
                    reason,
                })
            }
            Decision::Cache {
                forced,
                probability,
            } => {
                let trigger = {
                    let cfg = st.detector.config();
                    Trigger::of(&report, cfg.color_converge, cfg.structure_converge)
                };
                let cache = st.cache.as_ref().ok_or("cache injection without a cache")?;
                let candidate = st.policy.choose_cached(
                    &embedding,
                    cache.entries().iter().map(|e| (e.id, &e.embedding)),
                    trigger,
                    &mut st.rng,
                );
                match candidate {
                    None => {
                        tracing::info!(
                            "cache injection for keyframe {index}: no cached frame lies in the dissimilarity windows; generating"
                        );
                        None
                    }
                    Some(c) => {
                        let picture = cache.load(c.id).map_err(|e| e.to_string())?;
                        Some(Injection {
                            kind: InjectionKind::Cache,
                            source_id: format!("cache_{:08}", c.id),
                            picture,
                            weight: st.policy.config().blend_weight,
                            similarity: Some(c.similarity),
                            reason: if forced {
                                format!("forced by collapse ({})", report.reason)
                            } else {
                                format!("chance {:.0} %", probability * 100.0)
                            },
                        })
                    }
                }
            }
        };
        if let Some(inj) = &injection {
            if let (InjectionKind::Cache, Some(cache)) = (inj.kind, st.cache.as_mut()) {
                if let Some(id) = inj
                    .source_id
                    .strip_prefix("cache_")
                    .and_then(|s| s.parse().ok())
                {
                    let _ = cache.mark_used(id);
                }
            }
        }
        Ok(injection)
    }

    /// Records what keyframe `index` was made as, for status, metrics and SSE.
    fn publish(&self, index: u64, mode: String, uses_prompts: bool, playing: String) {
        let state = self.state.lock();
        let (cache_injections, seed_injections) = state.policy.counts();
        let label = KeyframeLabel {
            mode,
            theme: uses_prompts.then(|| state.rotation.current_theme().name.clone()),
            prompt: uses_prompts
                .then(|| state.rotation.last().map(|p| p.prompt.clone()))
                .flatten(),
            playing,
        };
        self.labels.lock().record(index, label.clone());
        let mut s = self.status.lock();
        s.mode = label.mode;
        s.playing = label.playing;
        s.theme = label.theme;
        s.prompt = label.prompt;
        s.collapse = state.detector.last().clone();
        s.cache_size = state.cache.as_ref().map_or(0, FrameCache::len);
        s.cache = state
            .cache
            .as_ref()
            .map(FrameCache::stats)
            .unwrap_or_default();
        s.cache_injections = cache_injections;
        s.seed_injections = seed_injections;
        s.analysed = state.analysed;
    }
}

fn read_picture(path: &Path) -> Result<RgbImage, String> {
    crate::keyframes::images::load_bounded(path)
        .map_err(|e| format!("cannot read seed picture {}: {e}", path.display()))
}

/// The seed pictures of `injection.seeds_dir`, listed again every
/// [`crate::keyframes::images::RELIST_EVERY`] (pictures added while running are used, deleted
/// ones dropped), and at once after one could not be read.
struct SeedList {
    dir: PathBuf,
    listed_at: Option<Instant>,
    pictures: Vec<PathBuf>,
}

impl SeedList {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            listed_at: None,
            pictures: Vec::new(),
        }
    }

    /// Points at `dir` (a reload); a new folder is listed on the next look.
    fn set_dir(&mut self, dir: &Path) {
        if self.dir != dir {
            *self = Self::new(dir.to_path_buf());
        }
    }

    /// The pictures, sorted by name; empty when the folder is unset, missing or unreadable.
    fn pictures(&mut self) -> &[PathBuf] {
        let stale = self
            .listed_at
            .is_none_or(|at| at.elapsed() >= crate::keyframes::images::RELIST_EVERY);
        if stale {
            self.pictures = list_pictures(&self.dir);
            self.listed_at = Some(Instant::now());
        }
        &self.pictures
    }

    /// Lists again on the next look.
    fn forget(&mut self) {
        self.listed_at = None;
    }
}

/// The PNG, JPEG and WebP pictures in `dir`, sorted; empty when `dir` is empty or unreadable.
fn list_pictures(dir: &Path) -> Vec<PathBuf> {
    if dir.as_os_str().is_empty() {
        return Vec::new();
    }
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = listing
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::keyframes::images::is_picture(p))
        .collect();
    files.sort();
    files
}

/// `weight·injected + (1 − weight)·current`, element-wise.
pub fn blend(
    injected: &Latent,
    current: &Latent,
    weight: f64,
) -> Result<Latent, crate::latent::LatentError> {
    if injected.shape() != current.shape() {
        return Err(crate::latent::LatentError::ShapeMismatch {
            a: injected.shape(),
            b: current.shape(),
        });
    }
    let w = weight as f32;
    let data = injected
        .data()
        .iter()
        .zip(current.data())
        .map(|(a, b)| w * a + (1.0 - w) * b)
        .collect();
    Latent::new(injected.shape(), data)
}

#[async_trait]
impl KeyframeSource for DirectedSource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn theme(&self) -> Option<String> {
        self.inner.uses_prompts().then(|| {
            let state = self.director.state.lock();
            state.rotation.current_theme().name.clone()
        })
    }

    fn has_themes(&self) -> bool {
        self.inner.uses_prompts()
    }

    fn next_theme(&mut self) {
        self.director.state.lock().rotation.request_next_theme();
    }

    fn describe(&self) -> String {
        if self.inner.uses_prompts() {
            if let Some(p) = self.director.state.lock().rotation.last() {
                return p.prompt.clone();
            }
        }
        self.inner.describe()
    }

    fn uses_prompts(&self) -> bool {
        self.inner.uses_prompts()
    }

    fn detail(&self) -> Option<crate::events::KeyframeDetail> {
        let mut detail = self.inner.detail().unwrap_or_default();
        let status = self.director.status.lock();
        if let Some(kind) = status.mode.strip_prefix("injection:") {
            // This keyframe is a blend: the source's detail belongs to an earlier one.
            detail = crate::events::KeyframeDetail {
                origin: Some(kind.to_string()),
                ..Default::default()
            };
        } else if self.inner.uses_prompts() {
            detail.theme = status.theme.clone();
            detail.prompt = status.prompt.clone();
        }
        (detail != crate::events::KeyframeDetail::default()).then_some(detail)
    }

    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        let director = Arc::clone(&self.director);
        let previous = self.previous.clone();
        let label = self.describe();
        let direct = tokio::task::spawn_blocking(move || {
            let Some(injection) = director.direct(previous.as_ref(), index, &label)? else {
                return Ok(None);
            };
            let current = previous.as_ref().ok_or("injection without a keyframe")?;
            let engine = &director.engine;
            let (w, h) = engine.output_size();
            let framed = crate::keyframes::images::fit(
                image::DynamicImage::ImageRgb8(injection.picture.clone()),
                w,
                h,
                crate::config::FitMode::Crop,
            )
            .map_err(|e| e.to_string())?;
            let account = LockAccount::default();
            let latent = engine
                .encode_batch(
                    std::slice::from_ref(&framed),
                    &account,
                    director.lock_timeout,
                )
                .map_err(|e| format!("encoding the {} injection: {e}", injection.kind.as_str()))?
                .pop()
                .ok_or("encoder returned nothing")?;
            let blended =
                blend(&latent, &current.latent, injection.weight).map_err(|e| e.to_string())?;
            Ok::<_, String>(Some((injection, blended)))
        })
        .await
        .map_err(|e| KeyframeError::Worker(e.to_string()))?;
        let uses_prompts = self.inner.uses_prompts();
        let keyframe = match direct {
            Ok(Some((injection, latent))) => {
                {
                    let mut state = self.director.state.lock();
                    let id = injection
                        .source_id
                        .strip_prefix("cache_")
                        .and_then(|s| s.parse().ok());
                    state.policy.record(index, Some((injection.kind, id)));
                    state.detector.reset_after_injection();
                }
                InjectionEvent {
                    index,
                    kind: injection.kind,
                    source_id: injection.source_id.clone(),
                    weight: injection.weight,
                    color_similarity: injection.similarity.map(|s| s.color),
                    structure_similarity: injection.similarity.map(|s| s.structure),
                    reason: injection.reason.clone(),
                }
                .emit();
                let keyframe = Keyframe {
                    index,
                    latent,
                    image: None,
                };
                self.inner.continue_from(&keyframe);
                let playing = format!(
                    "{} injection of {}",
                    injection.kind.as_str(),
                    injection.source_id
                );
                self.director.publish(
                    index,
                    format!("injection:{}", injection.kind.as_str()),
                    uses_prompts,
                    playing,
                );
                keyframe
            }
            Ok(None) => {
                if uses_prompts {
                    let choice: PromptChoice = self.director.state.lock().rotation.next_prompt();
                    self.inner.set_prompt(&choice);
                }
                let keyframe = self.inner.keyframe(index).await?;
                self.director.state.lock().policy.record(index, None);
                let mode = if uses_prompts {
                    "dream".to_string()
                } else {
                    self.inner.name().to_string()
                };
                self.director
                    .publish(index, mode, uses_prompts, self.describe());
                keyframe
            }
            Err(message) => {
                // Direction failing must not stop the dream: make the keyframe as usual.
                tracing::warn!("creative direction for keyframe {index}: {message}");
                self.director.state.lock().policy.record(index, None);
                self.inner.keyframe(index).await?
            }
        };
        self.previous = Some(keyframe.clone());
        Ok(keyframe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_picture(path: &Path) {
        RgbImage::from_pixel(4, 4, image::Rgb([10, 20, 30]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn the_label_of_a_keyframe_on_screen_is_its_own_or_the_last_before_it() {
        let label = |prompt: &str| KeyframeLabel {
            mode: "dream".into(),
            theme: Some("t".into()),
            prompt: Some(prompt.into()),
            playing: prompt.into(),
        };
        let mut labels = Labels::default();
        assert_eq!(labels.of(0), None);
        labels.record(3, label("three"));
        labels.record(5, label("five"));
        assert_eq!(labels.of(2), None);
        assert_eq!(labels.of(3).unwrap().playing, "three");
        assert_eq!(labels.of(4).unwrap().playing, "three");
        assert_eq!(labels.of(9).unwrap().playing, "five");
        for k in 6..6 + LABELS_KEPT as u64 {
            labels.record(k, label(&k.to_string()));
        }
        assert_eq!(labels.0.len(), LABELS_KEPT);
        assert_eq!(labels.of(5), None, "the oldest are dropped");
        // Numbering from 0 again (a new run of the source) starts afresh.
        labels.record(0, label("zero"));
        assert_eq!(labels.of(7).unwrap().playing, "zero");
    }

    #[test]
    fn seed_pictures_are_listed_once_and_again_after_a_failed_read() {
        let dir = tempfile::tempdir().unwrap();
        write_picture(&dir.path().join("a.png"));
        std::fs::write(dir.path().join("notes.txt"), "not a picture").unwrap();
        let mut seeds = SeedList::new(dir.path().to_path_buf());
        assert_eq!(seeds.pictures(), [dir.path().join("a.png")]);
        // Within the re-list interval the folder is not read again...
        write_picture(&dir.path().join("b.jpg"));
        assert_eq!(seeds.pictures().len(), 1);
        // ...unless a picture could not be read.
        seeds.forget();
        assert_eq!(seeds.pictures().len(), 2);
        // Another folder (a reload) is listed on the next look; an unset one is empty.
        seeds.set_dir(Path::new(""));
        assert!(seeds.pictures().is_empty());
        seeds.set_dir(dir.path());
        assert_eq!(seeds.pictures().len(), 2);
    }
}
