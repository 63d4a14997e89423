//! Pictures of keyframes that came without one (procedural, in-process diffusion, injections),
//! decoded once and shared by the director and the pipeline.
//!
//! The director decodes such a keyframe to look at it (collapse, cache) while the next one is
//! being made; the pair ending at that keyframe would decode the same latent again as its last
//! frame. On the spline path that pair waits for the keyframe after it, which the director
//! only starts once it has looked, so by then the picture is here and the pair takes it
//! instead: one decode in `frames_per_pair + 1` saved (at 512×256 on two CPU cores, the
//! difference between keeping 8 fps fed and not). When the picture is not here (a straight path
//! that starts before the director looks, the director not looking, a reload that changed the
//! output size) the pair decodes the keyframe itself, as before.

use std::collections::VecDeque;

use image::RgbImage;
use parking_lot::Mutex;

/// Pictures kept; older ones are dropped (a pair takes its keyframe's picture within one or
/// two keyframes of it being put here).
const KEPT: usize = 4;

/// Decoded pictures of the last few keyframes, by keyframe index.
#[derive(Debug, Default)]
pub struct DecodedKeyframes {
    pictures: Mutex<VecDeque<(u64, RgbImage)>>,
}

impl DecodedKeyframes {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `picture` as keyframe `index`'s decoded latent (replacing an earlier one).
    pub fn put(&self, index: u64, picture: RgbImage) {
        let mut pictures = self.pictures.lock();
        pictures.retain(|(i, _)| *i != index);
        if pictures.len() == KEPT {
            pictures.pop_front();
        }
        pictures.push_back((index, picture));
    }

    /// Keyframe `index`'s picture if it is here and `width × height`; taken off the board.
    pub fn take(&self, index: u64, (width, height): (u32, u32)) -> Option<RgbImage> {
        let mut pictures = self.pictures.lock();
        let position = pictures.iter().position(|(i, _)| *i == index)?;
        let (_, picture) = pictures.remove(position)?;
        (picture.dimensions() == (width, height)).then_some(picture)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(value: u8) -> RgbImage {
        RgbImage::from_pixel(4, 2, image::Rgb([value; 3]))
    }

    #[test]
    fn a_picture_is_taken_once_by_its_index() {
        let board = DecodedKeyframes::new();
        board.put(7, picture(7));
        assert_eq!(board.take(8, (4, 2)), None);
        assert_eq!(board.take(7, (4, 2)), Some(picture(7)));
        assert_eq!(board.take(7, (4, 2)), None);
    }

    #[test]
    fn only_the_last_few_are_kept_and_a_wrong_size_is_not_handed_out() {
        let board = DecodedKeyframes::new();
        for i in 0..10 {
            board.put(i, picture(i as u8));
        }
        assert_eq!(board.take(5, (4, 2)), None, "dropped as too old");
        assert_eq!(board.take(6, (4, 2)), Some(picture(6)));
        board.put(9, picture(90));
        assert_eq!(
            board.take(9, (4, 2)),
            Some(picture(90)),
            "the later put wins"
        );
        assert_eq!(board.take(8, (8, 4)), None, "another output size");
        assert_eq!(board.take(8, (4, 2)), None, "taken by the failed attempt");
    }
}
