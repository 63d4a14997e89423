//! The three stages of a pair, each a blocking function run on the blocking pool:
//! make the in-between latents along the path (no lock), decode them and the keyframe's latent
//! as one batch (one GPU-lock acquisition, one decoder call), encode and save the frames (atomic
//! writes, filling the buffer as each is done).

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use tokio_util::sync::CancellationToken;

use crate::buffer::archive::FrameArchive;
use crate::buffer::FrameBuffer;
use crate::config::{FrameFormat, KeyframeImage};
use crate::engine::{DecodeOutput, Engine, EngineError, LockAccount, Priority};
use crate::frame::{encode, EncodedFrame, FrameKind};
use crate::keyframes::Keyframe;
use crate::latent::path::{self, PathOptions, Window};
use crate::latent::{inbetween_factors, LatentBatch, LatentError};

/// Whether keyframe `to`'s frame is its source's own picture rather than its decoded latent.
pub fn shows_picture(to: &Keyframe, keyframe_image: KeyframeImage) -> bool {
    keyframe_image == KeyframeImage::Picture && to.image.is_some()
}

/// Stage 1: the latents to decode for a pair ending at `to`: the N in-betweens along the path
/// through `window` (none when there is no window: no keyframe to start from), then, when
/// `decode_keyframe`, `to`'s own latent, so the keyframe comes through the same decoder as its
/// neighbours (not when it shows its picture, or its latent was decoded already).
pub fn path_stage(
    window: Option<Window<'_>>,
    to: &Keyframe,
    frames_per_pair: usize,
    options: PathOptions,
    decode_keyframe: bool,
) -> Result<LatentBatch, LatentError> {
    let mut batch = match window {
        Some(window) => path::inbetweens(window, &inbetween_factors(frames_per_pair), options)?,
        None => LatentBatch::with_capacity(to.latent.shape(), 1),
    };
    if decode_keyframe {
        batch.push(&to.latent)?;
    }
    Ok(batch)
}

/// Stage 2: decodes the batch under one lock acquisition; appends `keyframe_picture` (the
/// keyframe's own picture, or its latent decoded earlier), resized to the output size, when
/// stage 1 left the keyframe out.
pub fn decode_stage(
    engine: &Engine,
    batch: &LatentBatch,
    keyframe_picture: Option<RgbImage>,
    priority: Priority,
    account: &LockAccount,
    lock_timeout: Duration,
) -> Result<DecodeOutput, EngineError> {
    let mut output = if batch.is_empty() {
        DecodeOutput {
            images: Vec::new(),
            decode: Duration::ZERO,
            resize: Duration::ZERO,
        }
    } else {
        engine.decode_batch_as(batch, priority, account, lock_timeout)?
    };
    if let Some(image) = keyframe_picture {
        let (w, h) = engine.output_size();
        output
            .images
            .push(crate::engine::resize::resize_rgb(image, w, h)?);
    }
    Ok(output)
}

/// A picture waiting for stage 3, with its place in the sequence.
pub struct PendingFrame {
    pub seq: u64,
    pub kind: FrameKind,
    pub image: RgbImage,
}

/// What stage 3 did.
#[derive(Debug, Default)]
pub struct SaveReport {
    /// Frames that reached the buffer.
    pub ready: usize,
    /// Frames that could not be encoded (their slots are failed).
    pub encode_failures: usize,
    /// Frames in the buffer whose file could not be written.
    pub write_failures: usize,
    /// The first error met, for the log.
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Stage 3: encodes each frame once, hands it to the buffer (so the display can use it at
/// once), and saves it to the archive. A frame whose file cannot be written still plays. Stops
/// between frames once `stop` is cancelled (shutdown), so no write is cut short by the exit.
pub fn save_stage(
    frames: Vec<PendingFrame>,
    format: FrameFormat,
    jpeg_quality: u8,
    buffer: &FrameBuffer,
    archive: &FrameArchive,
    stop: &CancellationToken,
) -> SaveReport {
    let start = Instant::now();
    let mut report = SaveReport::default();
    for pending in frames {
        if stop.is_cancelled() {
            break;
        }
        let bytes = match encode(&pending.image, format, jpeg_quality) {
            Ok(bytes) => bytes,
            Err(e) => {
                buffer.fail(pending.seq);
                report.encode_failures += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("encoding frame {}: {e}", pending.seq));
                continue;
            }
        };
        let frame = Arc::new(EncodedFrame {
            seq: pending.seq,
            kind: pending.kind,
            format,
            bytes: Arc::from(bytes),
        });
        if buffer.fulfil(Arc::clone(&frame)) {
            report.ready += 1;
        }
        if let Err(e) = archive.save(&frame) {
            report.write_failures += 1;
            report.first_error.get_or_insert_with(|| e.to_string());
        }
    }
    report.elapsed = start.elapsed();
    report
}
