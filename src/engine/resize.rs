//! Smooth resampling of decoded frames to the output size (fast_image_resize, SIMD).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::EngineError;

/// Resizes `src` to `width × height` with a Catmull-Rom filter; returns `src` unchanged when it
/// already has that size.
pub fn resize_rgb(src: RgbImage, width: u32, height: u32) -> Result<RgbImage, EngineError> {
    if src.dimensions() == (width, height) {
        return Ok(src);
    }
    let resize_error = |what: String| EngineError::Resize {
        from: src.dimensions(),
        to: (width, height),
        what,
    };
    let src_view = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8x3)
        .map_err(|e| resize_error(e.to_string()))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .map_err(|e| resize_error(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| resize_error("resized buffer has the wrong size".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscales_to_requested_size_keeping_flat_colour() {
        let src = RgbImage::from_pixel(8, 4, image::Rgb([10, 200, 30]));
        let out = resize_rgb(src, 64, 32).unwrap();
        assert_eq!(out.dimensions(), (64, 32));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 30]));
    }

    #[test]
    fn same_size_is_returned_as_is() {
        let src = RgbImage::from_pixel(16, 8, image::Rgb([1, 2, 3]));
        assert_eq!(resize_rgb(src.clone(), 16, 8).unwrap(), src);
    }
}
