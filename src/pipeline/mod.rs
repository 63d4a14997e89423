//! The pipeline: a coordinator on tokio that turns keyframes into a gap-free, ordered stream of
//! frames in the buffer.
//!
//! For every keyframe `k` the coordinator registers the sequence numbers of the pair
//! `(k−1, k)` up front, as the producer handed them out in order ([`SeqCursor`]): the pair's
//! in-betweens, keyframe `k`, then its D dwell frames. With a fixed N in-betweens keyframe `k`
//! lands at `base + kS`, S = N+1+D; pair lengthening (`generation.max_frames_per_pair`) lets N
//! grow while keyframes are slow. Then it runs the
//! three [`stages`] on the blocking pool, each under its own timeout. Keyframe `k+1` is being made by the producer task meanwhile, and stage 3 of one
//! pair overlaps stages 1–2 of the next. A failed or late stage marks its frames failed and
//! is logged; the coordinator moves on to the next pair. Generation pauses while the buffer
//! holds its target, and while an operator has paused it ([`Control`]).
//!
//! The spline path needs one keyframe of look-ahead: pair `(k−1, k)` waits, its slots
//! registered, until keyframe `k+1` has arrived (its tangent at `k` depends on it). When the
//! keyframe after it fails instead, the waiting pair is made at once with a one-sided tangent;
//! at shutdown it is abandoned like any pair in flight.

pub mod stages;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::buffer::archive::FrameArchive;
use crate::buffer::FrameBuffer;
use crate::config::live::LiveSettings;
use crate::config::{Config, FrameFormat, KeyframeImage};
use crate::control::Control;
use crate::engine::{Engine, LockAccount, Priority};
use crate::events::{KeyframeEvent, KeyframeOutcome, LogEvent, PairEvent, PairOutcome};
use crate::frame::FrameKind;
use crate::keyframes::decoded::DecodedKeyframes;
use crate::keyframes::{Keyframe, KeyframeSource};
use crate::latent::path::{PathKind, PathOptions, Window};
use crate::stats::{millis as ms, Stage, Telemetry};
use stages::{PendingFrame, SaveReport};

/// Pairs whose frames may be saving at once; beyond this the coordinator waits.
const SAVES_IN_FLIGHT: usize = 2;
/// How long a keyframe failure backs off at first, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the pipeline needs from the config.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub frames_per_pair: usize,
    /// The path in-betweens follow and whether it keeps contrast.
    pub path: PathOptions,
    /// What a keyframe's own frame shows.
    pub keyframe_image: KeyframeImage,
    /// Extra frames each keyframe is held for.
    pub dwell_frames: usize,
    /// Pair lengthening's ceiling (`generation.max_frames_per_pair`); equal to
    /// `frames_per_pair` when lengthening is off.
    pub max_frames_per_pair: usize,
    /// The display rate a pair's length is measured against.
    pub fps: f64,
    pub format: FrameFormat,
    pub jpeg_quality: u8,
    /// Sequence number of keyframe 0.
    pub first_seq: u64,
    /// The buffer target and the stage timeouts, read per pair (a reload may change them).
    pub live: Arc<LiveSettings>,
}

impl PipelineSettings {
    pub fn from_config(config: &Config, first_seq: u64, live: Arc<LiveSettings>) -> Self {
        Self {
            frames_per_pair: config.generation.frames_per_pair as usize,
            path: PathOptions {
                kind: config.generation.path,
                keep_contrast: config.generation.keep_contrast,
            },
            keyframe_image: config.generation.keyframe_image,
            dwell_frames: config.generation.keyframe_dwell_frames as usize,
            max_frames_per_pair: config
                .generation
                .max_frames_per_pair
                .unwrap_or(config.generation.frames_per_pair)
                .max(config.generation.frames_per_pair) as usize,
            fps: config.display.target_fps,
            format: config.output.format,
            jpeg_quality: config.output.jpeg_quality,
            first_seq,
            live,
        }
    }

    /// Frames from one keyframe to the next while every pair has `frames_per_pair`
    /// in-betweens: S = N + 1 + D.
    pub fn stride(&self) -> u64 {
        (self.frames_per_pair + 1 + self.dwell_frames) as u64
    }

    /// Sequence number of keyframe `k` (its first frame, when it dwells) while every pair has
    /// `frames_per_pair` in-betweens (no lengthening).
    pub fn keyframe_seq(&self, k: u64) -> u64 {
        self.first_seq + k * self.stride()
    }

    /// In-betweens for the pair that ends at a keyframe which took `made_in`: enough that the
    /// pair plays (with a 25 % margin) while the next keyframe, assumed as slow, is made —
    /// never fewer than `frames_per_pair` nor more than `max_frames_per_pair`.
    pub fn pair_length(&self, made_in: Duration) -> usize {
        if self.max_frames_per_pair <= self.frames_per_pair || self.fps <= 0.0 {
            return self.frames_per_pair;
        }
        let frames = (made_in.as_secs_f64() * self.fps * 1.25).ceil() as usize;
        frames
            .saturating_sub(1)
            .clamp(self.frames_per_pair, self.max_frames_per_pair)
    }
}

/// Hands out sequence numbers in order: keyframe 0 and its dwell frames, then each pair's
/// in-betweens, its keyframe and the keyframe's dwell frames. With a fixed pair length
/// keyframe k lands at `first_seq + kS` ([`PipelineSettings::keyframe_seq`]).
#[derive(Debug, Clone)]
struct SeqCursor {
    next: u64,
    frames_per_pair: usize,
    dwell_frames: usize,
}

/// The slots one keyframe completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    /// The first in-between before it (the keyframe itself for keyframe 0).
    first: u64,
    /// The keyframe's own frame.
    keyframe: u64,
    /// Its last dwell frame (the keyframe itself without dwell).
    last: u64,
}

impl SeqCursor {
    /// The slots of keyframe `index` with `n` in-betweens before it.
    fn take(&mut self, index: u64, n: usize) -> Slots {
        let first = self.next;
        let keyframe = if index == 0 { first } else { first + n as u64 };
        let last = keyframe + self.dwell_frames as u64;
        self.next = last + 1;
        Slots {
            first,
            keyframe,
            last,
        }
    }
}

/// One keyframe from the producer: made, or failed with a reason.
struct KeyframeResult {
    index: u64,
    /// Its slots: the in-betweens before it, the keyframe, then its dwell frames up to
    /// `last_seq`.
    first_seq: u64,
    last_seq: u64,
    /// In-betweens of the pair it ends.
    frames_per_pair: usize,
    result: Result<Keyframe, String>,
}

/// The coordinator and what it drives.
pub struct Pipeline {
    pub engine: Arc<Engine>,
    pub buffer: Arc<FrameBuffer>,
    pub archive: Arc<FrameArchive>,
    pub telemetry: Arc<Telemetry>,
    pub control: Arc<Control>,
    pub settings: PipelineSettings,
    /// Keyframes the director decoded already: a pair takes its keyframe's picture from here
    /// instead of decoding the latent again (None: every pair decodes its keyframe).
    pub decoded_keyframes: Option<Arc<DecodedKeyframes>>,
}

impl Pipeline {
    /// Runs until `shutdown`; returns after in-flight saves finish or are abandoned. A source
    /// received on `replacements` (a config reload) takes over from the next keyframe.
    pub async fn run(
        self,
        source: Box<dyn KeyframeSource>,
        replacements: mpsc::Receiver<Box<dyn KeyframeSource>>,
        shutdown: CancellationToken,
    ) {
        let (keyframes_tx, mut keyframes) = mpsc::channel(1);
        let producer = tokio::spawn(produce_keyframes(
            source,
            replacements,
            keyframes_tx,
            self.settings.clone(),
            Arc::clone(&self.telemetry),
            Arc::clone(&self.control),
            shutdown.clone(),
        ));
        let saves = Arc::new(Semaphore::new(SAVES_IN_FLIGHT));
        let lookahead = self.settings.path.kind == PathKind::Spline;
        // The last two good keyframes, and the pair waiting for the keyframe after it.
        let (mut before, mut previous): (Option<Keyframe>, Option<Keyframe>) = (None, None);
        let mut waiting: Option<PairJob> = None;
        loop {
            if !self.control.wait_while_paused(&shutdown).await
                || !self.wait_for_room(&shutdown).await
            {
                break;
            }
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = keyframes.recv() => next,
            };
            let Some(KeyframeResult {
                index,
                first_seq,
                last_seq,
                frames_per_pair,
                result,
            }) = next
            else {
                break;
            };
            if !self.register(first_seq, last_seq) {
                break;
            }
            match result {
                Ok(keyframe) => {
                    if let Some(mut job) = waiting.take() {
                        job.after = Some(keyframe.clone());
                        if !self.start_pair(job, &saves, &shutdown).await {
                            break;
                        }
                    }
                    let job = PairJob {
                        before: before.take(),
                        from: previous.clone(),
                        to: keyframe.clone(),
                        after: None,
                        first_seq,
                        frames_per_pair,
                    };
                    before = previous.replace(keyframe);
                    // A pair with no keyframe to start from has no path, so nothing to wait for.
                    if lookahead && job.from.is_some() {
                        waiting = Some(job);
                    } else if !self.start_pair(job, &saves, &shutdown).await {
                        break;
                    }
                }
                Err(reason) => {
                    // The waiting pair goes ahead with a one-sided tangent at its end.
                    if let Some(job) = waiting.take() {
                        if !self.start_pair(job, &saves, &shutdown).await {
                            break;
                        }
                    }
                    // Keep the last good keyframe; the next pair interpolates from it.
                    self.buffer.fail_range(first_seq..=last_seq);
                    PairEvent::failed(
                        index,
                        first_seq,
                        last_seq,
                        Stage::Keyframe.as_str(),
                        &reason,
                    )
                    .emit();
                }
            }
        }
        if let Some(job) = waiting.take() {
            self.abandon(&job, job.last_seq(&self.settings));
        }
        shutdown.cancel();
        let _ = producer.await;
        // Give in-flight saves a moment to land; their slots are failed otherwise.
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            saves.acquire_many(SAVES_IN_FLIGHT as u32),
        )
        .await;
    }

    /// Waits until the buffer has room for another pair; false on shutdown.
    async fn wait_for_room(&self, shutdown: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                room = self.buffer.wait_for_room(self.settings.live.get().buffer_frames, Duration::from_millis(250)) => {
                    if room {
                        return true;
                    }
                }
            }
        }
    }

    /// Registers the slots `first..=last` that a keyframe completes: the in-betweens before
    /// it, the keyframe itself and its dwell frames.
    fn register(&self, first: u64, last: u64) -> bool {
        match self.buffer.register(first, (last - first + 1) as usize) {
            Ok(()) => true,
            Err(e) => {
                // Cannot happen while this coordinator is the only registrant.
                tracing::error!("frame buffer refused registration: {e}");
                false
            }
        }
    }

    /// Waits for a save permit, then runs the pair; false on shutdown.
    async fn start_pair(
        &self,
        job: PairJob,
        saves: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> bool {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return false,
            permit = Arc::clone(saves).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return false };
        self.run_pair(job, permit, shutdown).await;
        true
    }

    /// Stages 1 and 2 here; stage 3 in a task that holds `permit` until the frames are saved.
    async fn run_pair(
        &self,
        job: PairJob,
        permit: tokio::sync::OwnedSemaphorePermit,
        shutdown: &CancellationToken,
    ) {
        let started = Instant::now();
        let timeouts = &self.settings.live.get().timeouts;
        let n = job.frames_per_pair;
        let (path, keyframe_image) = (self.settings.path, self.settings.keyframe_image);
        let job = Arc::new(job);
        let last_seq = job.last_seq(&self.settings);
        // The keyframe's frame: its own picture, its latent decoded by the director already,
        // or (None) its latent decoded with the in-betweens.
        let keyframe_picture = if stages::shows_picture(&job.to, keyframe_image) {
            job.to.image.clone()
        } else {
            self.decoded_keyframes
                .as_ref()
                .and_then(|board| board.take(job.to.index, self.engine.output_size()))
        };
        let decode_keyframe = keyframe_picture.is_none();

        let batch = {
            let work = Arc::clone(&job);
            let stage = tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                stages::path_stage(work.window(), &work.to, n, path, decode_keyframe)
                    .map(|b| (b, start.elapsed()))
            });
            let outcome = run_stage(stage, timeouts.slerp(), shutdown).await;
            match self.settle(outcome, &job, last_seq, Stage::Slerp) {
                Some(batch) => batch,
                None => return,
            }
        };
        let (batch, slerp_time) = batch;
        let batch_size = batch.len();

        let account = Arc::new(LockAccount::default());
        let decoded = {
            let (engine, account) = (Arc::clone(&self.engine), Arc::clone(&account));
            let lock_timeout = timeouts.decode();
            // Below the start gate the display is starving: this decode goes before background
            // work (the UNet steps of an in-process keyframe) waiting for the lock.
            let priority = match self.buffer.counts().ready < self.settings.live.get().gate_frames {
                true => Priority::Urgent,
                false => Priority::Normal,
            };
            let stage = tokio::task::spawn_blocking(move || {
                stages::decode_stage(
                    &engine,
                    &batch,
                    keyframe_picture,
                    priority,
                    &account,
                    lock_timeout,
                )
            });
            let outcome = run_stage(stage, timeouts.decode(), shutdown).await;
            match self.settle(outcome, &job, last_seq, Stage::Decode) {
                Some(output) => output,
                None => return,
            }
        };

        let frames = job.frames(decoded.images, &self.settings);
        let frames_made = frames.len();
        let save = {
            let (buffer, archive) = (Arc::clone(&self.buffer), Arc::clone(&self.archive));
            let (format, quality) = (self.settings.format, self.settings.jpeg_quality);
            let stop = shutdown.clone();
            tokio::task::spawn_blocking(move || {
                stages::save_stage(frames, format, quality, &buffer, &archive, &stop)
            })
        };
        let timing = PairTiming {
            started,
            slerp: slerp_time,
            decode: decoded.decode,
            resize: decoded.resize,
            batch_size,
            frames: frames_made,
            slots: job.slot_count(&self.settings),
            keyframe_frames: 1 + self.settings.dwell_frames,
            account,
        };
        let (buffer, telemetry) = (Arc::clone(&self.buffer), Arc::clone(&self.telemetry));
        let save_timeout = timeouts.save();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let outcome = run_stage(save, save_timeout, &shutdown).await;
            drop(permit);
            finish_pair(&job, last_seq, outcome, timing, &buffer, &telemetry);
        });
    }

    /// The value of a finished stage 1 or 2; on failure, timeout or shutdown the pair's slots
    /// are failed (and a failure recorded and logged, except on shutdown) and None returned.
    fn settle<T, E: std::fmt::Display>(
        &self,
        outcome: StageOutcome<Result<T, E>>,
        job: &PairJob,
        last_seq: u64,
        stage: Stage,
    ) -> Option<T> {
        let reason = match outcome {
            StageOutcome::Done(Ok(value)) => return Some(value),
            StageOutcome::Done(Err(e)) => e.to_string(),
            StageOutcome::Failed(reason) => reason,
            StageOutcome::Shutdown => {
                self.abandon(job, last_seq);
                return None;
            }
        };
        self.fail_pair(job, last_seq, stage, &reason);
        None
    }

    fn fail_pair(&self, job: &PairJob, last_seq: u64, stage: Stage, reason: &str) {
        self.buffer.fail_range(job.first_seq..=last_seq);
        self.telemetry.pipeline.record_failure(stage, reason);
        PairEvent::failed(
            job.to.index,
            job.first_seq,
            last_seq,
            stage.as_str(),
            reason,
        )
        .emit();
    }

    fn abandon(&self, job: &PairJob, last_seq: u64) {
        self.buffer.fail_range(job.first_seq..=last_seq);
    }
}

/// A pair to interpolate: from the last good keyframe (none at start) to `to`, with the good
/// keyframes either side of it when known (they shape the spline).
struct PairJob {
    before: Option<Keyframe>,
    from: Option<Keyframe>,
    to: Keyframe,
    after: Option<Keyframe>,
    first_seq: u64,
    /// In-betweens of this pair (more than `frames_per_pair` while lengthened).
    frames_per_pair: usize,
}

impl PairJob {
    /// Registered slots: N in-betweens, the keyframe and its D dwell frames, or the keyframe and
    /// its dwell frames alone for keyframe 0.
    fn slot_count(&self, settings: &PipelineSettings) -> usize {
        let keyframe = 1 + settings.dwell_frames;
        if self.to.index == 0 {
            keyframe
        } else {
            self.frames_per_pair + keyframe
        }
    }

    fn last_seq(&self, settings: &PipelineSettings) -> u64 {
        self.first_seq + self.slot_count(settings) as u64 - 1
    }

    /// The keyframes the path runs through, or None without a keyframe to start from.
    fn window(&self) -> Option<Window<'_>> {
        self.from.as_ref().map(|from| Window {
            before: self.before.as_ref().map(|k| &k.latent),
            from: &from.latent,
            to: &self.to.latent,
            after: self.after.as_ref().map(|k| &k.latent),
        })
    }

    /// Matches decoded pictures to sequence numbers: the in-betweens, then the keyframe (last
    /// picture) repeated over its dwell frames. Without a `from` keyframe (keyframe 0, or after
    /// a failed keyframe at the start) only the keyframe itself is drawn; its in-between slots
    /// are failed by the caller.
    fn frames(
        &self,
        images: Vec<image::RgbImage>,
        settings: &PipelineSettings,
    ) -> Vec<PendingFrame> {
        let (to, frames_per_pair) = (self.to.index, self.frames_per_pair);
        let keyframe_seq = self.last_seq(settings) - settings.dwell_frames as u64;
        let inbetweens = images.len().saturating_sub(1);
        let mut frames = Vec::with_capacity(images.len() + settings.dwell_frames);
        for (i, image) in images.into_iter().enumerate() {
            if i == inbetweens {
                let kind = FrameKind::Keyframe { index: to };
                let dwell: Vec<PendingFrame> = (1..=settings.dwell_frames as u64)
                    .map(|d| PendingFrame {
                        seq: keyframe_seq + d,
                        kind,
                        image: image.clone(),
                    })
                    .collect();
                frames.push(PendingFrame {
                    seq: keyframe_seq,
                    kind,
                    image,
                });
                frames.extend(dwell);
            } else {
                let step = i as u32 + 1;
                frames.push(PendingFrame {
                    seq: self.first_seq + i as u64,
                    kind: FrameKind::Inbetween {
                        from: to - 1,
                        step,
                        t: step as f32 / (frames_per_pair + 1) as f32,
                    },
                    image,
                });
            }
        }
        frames
    }
}

/// Timings carried from stages 1–2 to the end of stage 3.
struct PairTiming {
    started: Instant,
    slerp: Duration,
    decode: Duration,
    resize: Duration,
    batch_size: usize,
    frames: usize,
    /// Slots the pair registered, and how many of them show its keyframe.
    slots: usize,
    keyframe_frames: usize,
    account: Arc<LockAccount>,
}

enum StageOutcome<T> {
    Done(T),
    /// Timed out or the worker died; the reason says which.
    Failed(String),
    Shutdown,
}

/// Awaits a blocking stage under `timeout`, giving up on shutdown.
async fn run_stage<T>(
    stage: tokio::task::JoinHandle<T>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> StageOutcome<T> {
    tokio::select! {
        _ = shutdown.cancelled() => StageOutcome::Shutdown,
        result = tokio::time::timeout(timeout, stage) => match result {
            Ok(Ok(value)) => StageOutcome::Done(value),
            Ok(Err(join)) => StageOutcome::Failed(format!("worker failed: {join}")),
            Err(_) => StageOutcome::Failed(format!("timed out after {:.1} s", timeout.as_secs_f64())),
        },
    }
}

/// Records the end of a pair: stats, failed slots, and its one JSON event. A save cut short by
/// shutdown is abandoned like an earlier stage: its slots failed, no stats and no event (it was
/// logged as a `partial` pair with no error, which `dreamd analyze` counted as a save failure
/// after every clean stop that landed mid-save).
fn finish_pair(
    job: &PairJob,
    last_seq: u64,
    outcome: StageOutcome<SaveReport>,
    timing: PairTiming,
    buffer: &FrameBuffer,
    telemetry: &Telemetry,
) {
    let report = match outcome {
        StageOutcome::Done(report) => Some(report),
        StageOutcome::Failed(reason) => Some(SaveReport {
            first_error: Some(reason),
            ..SaveReport::default()
        }),
        StageOutcome::Shutdown => None,
    };
    // Anything not ready by now (late save, or in-betweens with no start keyframe) is failed.
    buffer.fail_range(job.first_seq..=last_seq);
    let Some(report) = report else { return };
    let pipeline = &telemetry.pipeline;
    let ok = report.first_error.is_none() && report.ready == timing.slots;
    if let Some(error) = &report.first_error {
        pipeline.record_failure(Stage::Save, error.clone());
    }
    let total = timing.started.elapsed();
    let decode_ms = ms(timing.decode);
    pipeline.pairs.fetch_add(1, ORDER);
    let inbetweens_ready = report.ready.saturating_sub(timing.keyframe_frames) as u64;
    pipeline
        .interpolated_frames
        .fetch_add(inbetweens_ready, ORDER);
    pipeline.record_pair(timing.frames, decode_ms, total);
    let from = job.from.as_ref().map_or(job.to.index, |k| k.index);
    let per_frame = if timing.frames > 0 {
        decode_ms / timing.frames as f64
    } else {
        0.0
    };
    PairEvent {
        from,
        to: job.to.index,
        first_seq: job.first_seq,
        last_seq,
        frames: Some(timing.frames as u64),
        frames_ready: Some(report.ready as u64),
        batch_size: Some(timing.batch_size as u64),
        slerp_ms: Some(ms(timing.slerp)),
        decode_ms: Some(decode_ms),
        decode_ms_per_frame: Some(per_frame),
        resize_ms: Some(ms(timing.resize)),
        save_ms: Some(ms(report.elapsed)),
        total_ms: Some(ms(total)),
        lock_wait_ms: Some(ms(timing.account.wait())),
        lock_hold_ms: Some(ms(timing.account.hold())),
        lock_acquisitions: Some(timing.account.acquisitions()),
        write_failures: Some(report.write_failures as u64),
        outcome: if ok {
            PairOutcome::Ok
        } else {
            PairOutcome::Partial
        },
        stage: None,
        error: report.first_error.unwrap_or_default(),
    }
    .emit();
}

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// The `keyframe` event of attempt `index` (failed when there is an `error`).
fn keyframe_event(
    index: u64,
    seq: u64,
    source: &dyn KeyframeSource,
    elapsed: Duration,
    error: Option<&String>,
) -> KeyframeEvent {
    KeyframeEvent {
        index,
        seq,
        source: source.name().to_string(),
        detail: source.detail().unwrap_or_default(),
        ms: Some(ms(elapsed)),
        outcome: match error {
            Some(_) => KeyframeOutcome::Failed,
            None => KeyframeOutcome::Ok,
        },
        error: error.cloned(),
    }
}

/// Makes keyframes 0, 1, 2, … ahead of the coordinator (one in hand, one being made), each
/// under the keyframe timeout, backing off after failures.
async fn produce_keyframes(
    mut source: Box<dyn KeyframeSource>,
    mut replacements: mpsc::Receiver<Box<dyn KeyframeSource>>,
    results: mpsc::Sender<KeyframeResult>,
    settings: PipelineSettings,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut cursor = SeqCursor {
        next: settings.first_seq,
        frames_per_pair: settings.frames_per_pair,
        dwell_frames: settings.dwell_frames,
    };
    telemetry
        .pipeline
        .frames_per_pair
        .store(settings.frames_per_pair as u64, ORDER);
    for index in 0u64.. {
        while let Ok(replacement) = replacements.try_recv() {
            tracing::info!(
                "keyframe source {} replaced by {} from keyframe {index}",
                source.name(),
                replacement.name()
            );
            source = replacement;
            backoff = FIRST_BACKOFF;
        }
        let timeout = settings.live.get().timeouts.keyframe();
        if control.take_next_theme() {
            source.next_theme();
            tracing::info!(theme = ?source.theme(), "next theme requested");
        }
        let started = Instant::now();
        let made = tokio::select! {
            _ = shutdown.cancelled() => return,
            made = tokio::time::timeout(timeout, source.keyframe(index)) => made,
        };
        let elapsed = started.elapsed();
        let result = match made {
            Ok(Ok(keyframe)) => Ok(keyframe),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {:.1} s", timeout.as_secs_f64())),
        };
        // A made keyframe sets the length of the pair it ends; a failed one keeps the last.
        let n = match &result {
            Ok(_) if index > 0 => settings.pair_length(elapsed),
            _ => cursor.frames_per_pair,
        };
        if n != cursor.frames_per_pair {
            let fps = settings.fps.max(f64::MIN_POSITIVE);
            if n > cursor.frames_per_pair {
                tracing::warn!(
                    "keyframes are slower than the display ({:.1} s for a pair of {:.1} s): \
                     lengthening pairs to {n} in-betweens (max {})",
                    elapsed.as_secs_f64(),
                    (cursor.frames_per_pair + 1) as f64 / fps,
                    settings.max_frames_per_pair
                );
            } else {
                tracing::info!(
                    "keyframes are faster again ({:.1} s): pairs shortened to {n} in-betweens",
                    elapsed.as_secs_f64()
                );
            }
            cursor.frames_per_pair = n;
            telemetry.pipeline.frames_per_pair.store(n as u64, ORDER);
        }
        let slots = cursor.take(index, n);
        let seq = slots.keyframe;
        let pipeline = &telemetry.pipeline;
        match &result {
            Ok(_) => {
                pipeline.keyframes.fetch_add(1, ORDER);
                pipeline.record_keyframe_ms(ms(elapsed));
                pipeline.set_theme(source.theme());
                keyframe_event(index, seq, source.as_ref(), elapsed, None).emit();
            }
            Err(reason) => {
                pipeline.record_failure(Stage::Keyframe, reason.clone());
                keyframe_event(index, seq, source.as_ref(), elapsed, Some(reason)).emit();
            }
        }
        let failed = result.is_err();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            sent = results.send(KeyframeResult {
                index,
                first_seq: slots.first,
                last_seq: slots.last,
                frames_per_pair: n,
                result,
            }) => {
                if sent.is_err() {
                    return;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
        }
    }
}

#[cfg(test)]
mod tests;
