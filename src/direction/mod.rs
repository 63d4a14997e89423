//! Creative direction: what keeps a dream loop from collapsing into one texture.
//!
//! A loop of img2img on its own output converges; the system dreamd replaces fought that with
//! rotating prompt themes, a collapse detector, a persistent cache of diverse frames and
//! injections of cached or seed pictures, and so does dreamd (inventory §2.8–2.13), with the
//! original's defects mended where they were broken:
//!
//! - [`themes`]: which prompt and negative prompt each generated keyframe gets;
//! - [`similarity`]: the colour (HSV histogram) and structure (pHash) metrics, exactly;
//! - [`collapse`]: the detector, `ok` / `converging` / `collapsed`;
//! - [`cache`]: the bounded, persistent diverse-frame cache in `output/cache/`;
//! - [`injection`]: when to blend a cached frame or a seed picture into the next keyframe;
//! - [`director`]: the wrapper that applies all of it to a keyframe source.

pub mod cache;
pub mod collapse;
pub mod director;
pub mod injection;
pub mod similarity;
pub mod themes;
