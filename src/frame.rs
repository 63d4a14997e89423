//! Frames: what each sequence number shows, and its encoding (done once, in stage 3).

use std::io::Cursor;
use std::sync::Arc;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use crate::config::FrameFormat;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameKind {
    /// Keyframe number `index`.
    Keyframe { index: u64 },
    /// In-between `step` (1..=N) from keyframe `from` to `from + 1`, at factor `t`.
    Inbetween { from: u64, step: u32, t: f32 },
}

impl FrameKind {
    /// The keyframe this frame belongs to on screen: itself, or for an in-between the keyframe
    /// it leaves (what the picture was made as changes when the next keyframe arrives).
    pub fn keyframe(&self) -> u64 {
        match *self {
            FrameKind::Keyframe { index } => index,
            FrameKind::Inbetween { from, .. } => from,
        }
    }
}

/// A frame ready to show: its bytes are already encoded, so showing it is only a copy.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub seq: u64,
    pub kind: FrameKind,
    pub format: FrameFormat,
    pub bytes: Arc<[u8]>,
}

/// Encodes `image` as `format` (PNG with fast compression, or JPEG at `jpeg_quality`).
pub fn encode(
    image: &RgbImage,
    format: FrameFormat,
    jpeg_quality: u8,
) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Cursor::new(Vec::with_capacity(image.as_raw().len() / 2));
    let (w, h) = image.dimensions();
    match format {
        FrameFormat::Png => {
            PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive)
                .write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
        FrameFormat::Jpeg => JpegEncoder::new_with_quality(&mut bytes, jpeg_quality).write_image(
            image.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
    }
    Ok(bytes.into_inner())
}

/// A tiny frame for tests: PNG format, the sequence number's bytes as content.
#[cfg(test)]
pub fn test_frame(seq: u64) -> Arc<EncodedFrame> {
    Arc::new(EncodedFrame {
        seq,
        kind: FrameKind::Keyframe { index: 0 },
        format: FrameFormat::Png,
        bytes: Arc::from(seq.to_le_bytes().to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_exactly() {
        let image = RgbImage::from_fn(32, 16, |x, y| image::Rgb([x as u8 * 8, y as u8 * 16, 7]));
        let bytes = encode(&image, FrameFormat::Png, 90).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back, image);
    }

    #[test]
    fn jpeg_decodes_at_the_same_size() {
        let image = RgbImage::from_pixel(32, 16, image::Rgb([100, 150, 200]));
        let bytes = encode(&image, FrameFormat::Jpeg, 80).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (32, 16));
    }
}
