//! The real coordinator over a faulty decoder and a failing source: which slots end ready
//! or failed, and that generation goes on.

use super::*;
use crate::buffer::Slot;
use crate::engine::preview::PreviewDecoder;
use crate::engine::{Decoder, Device, EngineError};
use crate::keyframes::decoded::DecodedKeyframes;
use crate::keyframes::procedural::ProceduralSource;
use crate::keyframes::KeyframeError;
use crate::latent::LatentBatch;
use async_trait::async_trait;
use std::sync::atomic::AtomicUsize;

/// The preview decoder, failing or hanging on chosen calls (1-based).
struct FaultyDecoder {
    calls: AtomicUsize,
    /// The batch size of every call.
    sizes: Arc<parking_lot::Mutex<Vec<usize>>>,
    fail_on: Option<usize>,
    hang_on: Option<(usize, Duration)>,
}

impl Decoder for FaultyDecoder {
    fn name(&self) -> &str {
        "faulty"
    }
    fn latent_channels(&self) -> usize {
        4
    }
    fn decode(&self, batch: &LatentBatch) -> Result<Vec<image::RgbImage>, EngineError> {
        let call = self.calls.fetch_add(1, ORDER) + 1;
        self.sizes.lock().push(batch.len());
        if self.fail_on == Some(call) {
            return Err(EngineError::Device(
                "test".into(),
                "injected failure".into(),
            ));
        }
        if let Some((n, hang)) = self.hang_on {
            if n == call {
                std::thread::sleep(hang);
            }
        }
        PreviewDecoder.decode(batch)
    }
}

/// The procedural source, failing at one keyframe index.
struct FailingSource {
    inner: ProceduralSource,
    fail_at: u64,
}

#[async_trait]
impl KeyframeSource for FailingSource {
    fn name(&self) -> &str {
        "failing"
    }
    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        if index == self.fail_at {
            return Err(KeyframeError::Source {
                source_name: "failing".into(),
                message: "injected failure".into(),
            });
        }
        self.inner.keyframe(index).await
    }
}

const N: usize = 3;

fn procedural() -> ProceduralSource {
    ProceduralSource::new(1, 0.35, crate::latent::LatentShape::new(4, 4, 8))
}

/// Runs the real coordinator until slots `0..=last` are all settled; returns each slot's
/// state ('R' ready, 'F' failed) and the telemetry.
async fn run_until_settled(
    decoder: FaultyDecoder,
    source: Box<dyn KeyframeSource>,
    decode_timeout: f64,
    last: u64,
) -> (String, Arc<Telemetry>) {
    let (states, telemetry, _) = run_with(decoder, source, decode_timeout, last, |_| {}).await;
    (states, telemetry)
}

/// [`run_until_settled`] with changed settings; also returns the buffer.
async fn run_with(
    decoder: FaultyDecoder,
    source: Box<dyn KeyframeSource>,
    decode_timeout: f64,
    last: u64,
    change: impl FnOnce(&mut PipelineSettings),
) -> (String, Arc<Telemetry>, Arc<FrameBuffer>) {
    run_with_decoded(decoder, source, decode_timeout, last, change, None).await
}

/// [`run_with`], with keyframes decoded already (as the director leaves them).
async fn run_with_decoded(
    decoder: FaultyDecoder,
    source: Box<dyn KeyframeSource>,
    decode_timeout: f64,
    last: u64,
    change: impl FnOnce(&mut PipelineSettings),
    decoded_keyframes: Option<Arc<DecodedKeyframes>>,
) -> (String, Arc<Telemetry>, Arc<FrameBuffer>) {
    let dir = tempfile::tempdir().unwrap();
    let (archive, first_seq) = FrameArchive::open(&dir.path().join("frames"), 1000).unwrap();
    let buffer = Arc::new(FrameBuffer::new(first_seq));
    let telemetry = Arc::new(Telemetry::default());
    let mut config = Config::default();
    config.timeouts.decode_seconds = decode_timeout;
    config.buffer.target_seconds = 250.0; // 1000 frames at 4 fps
    let mut pipeline = Pipeline {
        engine: Arc::new(Engine::new(Box::new(decoder), Device::Cpu, 64, 32)),
        buffer: Arc::clone(&buffer),
        archive: Arc::new(archive),
        telemetry: Arc::clone(&telemetry),
        control: Arc::new(Control::new("test", false)),
        settings: PipelineSettings {
            frames_per_pair: N,
            path: crate::latent::path::PathOptions::default(),
            keyframe_image: crate::config::KeyframeImage::Decoded,
            dwell_frames: 0,
            max_frames_per_pair: N,
            fps: 4.0,
            format: FrameFormat::Png,
            jpeg_quality: 90,
            first_seq,
            live: Arc::new(LiveSettings::new(&config)),
        },
        decoded_keyframes,
    };
    change(&mut pipeline.settings);
    let shutdown = CancellationToken::new();
    let (_replace, replacements) = mpsc::channel(1);
    let task = tokio::spawn(pipeline.run(source, replacements, shutdown.clone()));
    let give_up = Instant::now() + Duration::from_secs(20);
    let states = loop {
        let states: Option<String> = (0..=last)
            .map(|seq| match buffer.slot(seq) {
                Some(Slot::Ready(_)) => Some('R'),
                Some(Slot::Failed) => Some('F'),
                _ => None,
            })
            .collect();
        if let Some(states) = states {
            break states;
        }
        assert!(Instant::now() < give_up, "slots never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    shutdown.cancel();
    task.await.unwrap();
    (states, telemetry, buffer)
}

fn decoder(fail_on: Option<usize>, hang_on: Option<(usize, Duration)>) -> FaultyDecoder {
    FaultyDecoder {
        calls: AtomicUsize::new(0),
        sizes: Arc::default(),
        fail_on,
        hang_on,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_frames_are_ready_in_order_when_nothing_fails() {
    let (states, telemetry) =
        run_until_settled(decoder(None, None), Box::new(procedural()), 5.0, 12).await;
    assert_eq!(states, "RRRRRRRRRRRRR");
    assert_eq!(telemetry.pipeline.total_failures(), 0);
}

/// A keyframe the director decoded already is not decoded again: its pair's batch is the
/// in-betweens only, and the keyframe's frame is the director's picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframes_decoded_by_the_director_are_not_decoded_again() {
    let board = Arc::new(DecodedKeyframes::new());
    let marked = image::RgbImage::from_pixel(64, 32, image::Rgb([1, 2, 3]));
    board.put(1, marked.clone());
    board.put(2, marked.clone());
    let decoder = decoder(None, None);
    let sizes = Arc::clone(&decoder.sizes);
    let (states, telemetry, buffer) = run_with_decoded(
        decoder,
        Box::new(procedural()),
        5.0,
        12,
        |_| {},
        Some(Arc::clone(&board)),
    )
    .await;
    assert_eq!(states, "RRRRRRRRRRRRR");
    assert_eq!(telemetry.pipeline.total_failures(), 0);
    // Keyframe 0 alone, then pairs ending at keyframes 1 and 2 without their keyframe (N), and
    // the pair ending at 3 with it (N + 1).
    assert_eq!(sizes.lock()[..4], [1, N, N, N + 1]);
    for (seq, reused) in [(4, true), (8, true), (12, false)] {
        let Some(Slot::Ready(frame)) = buffer.slot(seq) else {
            panic!("slot {seq} not ready")
        };
        let picture = image::load_from_memory(&frame.bytes).unwrap().to_rgb8();
        assert_eq!(picture == marked, reused, "keyframe frame {seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keyframe_costs_its_pair_and_the_next_pair_starts_from_the_last_good_one() {
    let source = FailingSource {
        inner: procedural(),
        fail_at: 2,
    };
    let (states, telemetry) =
        run_until_settled(decoder(None, None), Box::new(source), 5.0, 16).await;
    // Keyframe k sits at 4k: pair (1,2) = 5..=8 is lost, pair (2,3) = 9..=12 is drawn from
    // keyframe 1 to keyframe 3.
    assert_eq!(states, "RRRRRFFFFRRRRRRRR");
    assert_eq!(telemetry.pipeline.failures(Stage::Keyframe), 1);
    assert!(telemetry
        .pipeline
        .last_error()
        .unwrap()
        .message
        .contains("injected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_decode_costs_one_pair_and_generation_goes_on() {
    // Call 1 draws keyframe 0 alone; call 2 is pair (0,1).
    let (states, telemetry) =
        run_until_settled(decoder(Some(2), None), Box::new(procedural()), 5.0, 12).await;
    assert_eq!(states, "RFFFFRRRRRRRR");
    assert_eq!(telemetry.pipeline.failures(Stage::Decode), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_decode_times_out_and_generation_recovers() {
    let hang = Duration::from_millis(1500);
    let (states, telemetry) = run_until_settled(
        decoder(None, Some((2, hang))),
        Box::new(procedural()),
        0.3,
        40,
    )
    .await;
    assert!(states.starts_with("RFFFF"), "{states}");
    assert!(states.ends_with("RRRRRRRR"), "never recovered: {states}");
    assert!(telemetry.pipeline.failures(Stage::Decode) >= 1);
    let error = telemetry.pipeline.last_error().unwrap().message;
    assert!(
        error.contains("timed out") || error.contains("GPU lock"),
        "{error}"
    );
}

/// The procedural source with a picture on every keyframe, like the image source.
struct PictureSource(ProceduralSource);

#[async_trait]
impl KeyframeSource for PictureSource {
    fn name(&self) -> &str {
        "pictures"
    }
    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        let mut keyframe = self.0.keyframe(index).await?;
        keyframe.image = Some(image::RgbImage::from_pixel(8, 8, image::Rgb([255, 0, 0])));
        Ok(keyframe)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picture_keyframes_are_decoded_in_the_same_batch_as_their_inbetweens() {
    let decoder = decoder(None, None);
    let sizes = Arc::clone(&decoder.sizes);
    let source = Box::new(PictureSource(procedural()));
    let (states, _, _) = run_with(decoder, source, 5.0, 12, |_| {}).await;
    assert_eq!(states, "RRRRRRRRRRRRR");
    // Keyframe 0 alone, then each pair's N in-betweens and its keyframe: one call per pair.
    let sizes = sizes.lock().clone();
    assert_eq!(&sizes[..4], &[1, N + 1, N + 1, N + 1], "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_image_picture_shows_the_sources_picture_undecoded() {
    let decoder = decoder(None, None);
    let sizes = Arc::clone(&decoder.sizes);
    let source = Box::new(PictureSource(procedural()));
    let (states, _, _) = run_with(decoder, source, 5.0, 12, |s| {
        s.keyframe_image = crate::config::KeyframeImage::Picture;
    })
    .await;
    assert_eq!(states, "RRRRRRRRRRRRR");
    let sizes = sizes.lock().clone();
    assert!(sizes.iter().all(|&n| n == N), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dwell_frames_hold_each_keyframe() {
    // N = 3, D = 2: keyframe k at 6k, held at 6k+1 and 6k+2, in-betweens at 6k+3 ..= 6k+5.
    for kind in [PathKind::Slerp, PathKind::Spline] {
        let (states, _, buffer) =
            run_with(decoder(None, None), Box::new(procedural()), 5.0, 17, |s| {
                s.dwell_frames = 2;
                s.path.kind = kind;
            })
            .await;
        assert_eq!(states, "RRRRRRRRRRRRRRRRRR", "{kind:?}");
        let kind_of = |seq| match buffer.slot(seq) {
            Some(Slot::Ready(frame)) => frame.kind,
            other => panic!("slot {seq}: {other:?}"),
        };
        for seq in [6, 7, 8, 12, 13, 14] {
            assert_eq!(
                kind_of(seq),
                FrameKind::Keyframe { index: seq / 6 },
                "{kind:?}"
            );
        }
        assert!(matches!(
            kind_of(9),
            FrameKind::Inbetween {
                from: 1,
                step: 1,
                ..
            }
        ));
    }
}

/// The procedural source, taking `slow` to make keyframe `slow_at`.
struct SlowSource {
    inner: ProceduralSource,
    slow_at: u64,
    slow: Duration,
}

#[async_trait]
impl KeyframeSource for SlowSource {
    fn name(&self) -> &str {
        "slow"
    }
    async fn keyframe(&mut self, index: u64) -> Result<Keyframe, KeyframeError> {
        if index == self.slow_at {
            tokio::time::sleep(self.slow).await;
        }
        self.inner.keyframe(index).await
    }
}

#[test]
fn pair_length_covers_the_next_keyframe_within_limits() {
    let mut settings = PipelineSettings {
        frames_per_pair: 3,
        path: crate::latent::path::PathOptions::default(),
        keyframe_image: crate::config::KeyframeImage::Decoded,
        dwell_frames: 0,
        max_frames_per_pair: 3,
        fps: 10.0,
        format: FrameFormat::Png,
        jpeg_quality: 90,
        first_seq: 0,
        live: Arc::new(LiveSettings::new(&Config::default())),
    };
    // Off (max = frames_per_pair): always the configured length.
    assert_eq!(settings.pair_length(Duration::from_secs(60)), 3);
    settings.max_frames_per_pair = 20;
    assert_eq!(settings.pair_length(Duration::ZERO), 3);
    // 0.6 s at 10 fps, 25 % margin: 7.5 → 8 frames = 7 in-betweens and the keyframe.
    assert_eq!(settings.pair_length(Duration::from_millis(600)), 7);
    assert_eq!(settings.pair_length(Duration::from_secs(60)), 20);
}

#[test]
fn a_fixed_pair_length_keeps_the_old_numbering() {
    for dwell in [0, 2] {
        let mut cursor = SeqCursor {
            next: 100,
            frames_per_pair: 4,
            dwell_frames: dwell,
        };
        let stride = 4 + 1 + dwell as u64;
        for k in 0..6u64 {
            let slots = cursor.take(k, 4);
            assert_eq!(slots.keyframe, 100 + k * stride);
            assert_eq!(slots.last, slots.keyframe + dwell as u64);
            let first = if k == 0 { 100 } else { slots.keyframe - 4 };
            assert_eq!(slots.first, first);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_keyframes_lengthen_the_next_pair_and_fast_ones_shorten_it_again() {
    let source = SlowSource {
        inner: procedural(),
        slow_at: 1,
        slow: Duration::from_millis(600),
    };
    // At 10 fps keyframe 1 (0.6 s) gets 7 in-betweens before it: 1..=7, keyframe at 8; the
    // instant keyframes after it are back to N = 3: 9..=11 + 12, 13..=15 + 16.
    let (states, telemetry, buffer) =
        run_with(decoder(None, None), Box::new(source), 5.0, 16, |s| {
            s.max_frames_per_pair = 20;
            s.fps = 10.0;
        })
        .await;
    assert_eq!(states, "RRRRRRRRRRRRRRRRR");
    let kinds: Vec<Option<FrameKind>> = (0..=16)
        .map(|seq| match buffer.slot(seq) {
            Some(Slot::Ready(frame)) => Some(frame.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds[8], Some(FrameKind::Keyframe { index: 1 }));
    assert_eq!(
        kinds[7],
        Some(FrameKind::Inbetween {
            from: 0,
            step: 7,
            t: 7.0 / 8.0
        })
    );
    assert_eq!(kinds[12], Some(FrameKind::Keyframe { index: 2 }));
    assert_eq!(kinds[16], Some(FrameKind::Keyframe { index: 3 }));
    assert_eq!(telemetry.pipeline.frames_per_pair.load(ORDER), N as u64);
    assert_eq!(telemetry.pipeline.total_failures(), 0);
}
