//! Latents, and the paths the in-betweens follow between keyframes.
//!
//! A latent follows the SD convention `[C, H/8, W/8]` in the decoder's scaled space, stored as
//! f32. [`slerp_batch`] makes every in-between latent of a keyframe pair in one call: each output
//! is a linear combination `α·a + β·b`, so the whole batch costs one pass over the inputs per
//! frame, with the angle, norms and coefficients computed once per pair. [`path`] holds the
//! choice the pipeline makes (per-pair slerp, or a spline through the keyframes) and
//! [`contrast`] the per-channel rescale that keeps a blend's contrast.

use std::fmt;

pub mod contrast;
pub mod path;

/// Shape of one latent: channels × height × width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LatentShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl LatentShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Number of values in one latent.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when the shape holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for LatentShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Why latent arithmetic failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LatentError {
    #[error("latent data has {got} values but shape {shape} needs {}", shape.len())]
    WrongLength { shape: LatentShape, got: usize },
    #[error("latent shapes differ: {a} vs {b}")]
    ShapeMismatch { a: LatentShape, b: LatentShape },
    #[error("interpolation factor t = {0} is outside [0, 1]")]
    FactorOutOfRange(f32),
    #[error("latent holds a non-finite value (NaN or infinity)")]
    NonFinite,
}

/// One latent `[C, h, w]`, f32, C-order.
#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    shape: LatentShape,
    data: Vec<f32>,
}

impl Latent {
    /// Wraps `data`, which must hold exactly `shape.len()` values.
    pub fn new(shape: LatentShape, data: Vec<f32>) -> Result<Self, LatentError> {
        if data.len() != shape.len() {
            return Err(LatentError::WrongLength {
                shape,
                got: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    pub fn shape(&self) -> LatentShape {
        self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }
}

/// A batch of latents `[N, C, h, w]`, f32, C-order: the unit every decoder call takes.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentBatch {
    shape: LatentShape,
    count: usize,
    data: Vec<f32>,
}

impl LatentBatch {
    /// An empty batch of latents of `shape`, with room for `capacity` of them.
    pub fn with_capacity(shape: LatentShape, capacity: usize) -> Self {
        Self {
            shape,
            count: 0,
            data: Vec::with_capacity(capacity * shape.len()),
        }
    }

    /// Appends one latent; its shape must match the batch's.
    pub fn push(&mut self, latent: &Latent) -> Result<(), LatentError> {
        if latent.shape != self.shape {
            return Err(LatentError::ShapeMismatch {
                a: self.shape,
                b: latent.shape,
            });
        }
        self.data.extend_from_slice(&latent.data);
        self.count += 1;
        Ok(())
    }

    /// Shape of each latent in the batch.
    pub fn shape(&self) -> LatentShape {
        self.shape
    }

    /// Number of latents (N).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// All values, `[N, C, h, w]` in C-order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values of latent `i`, `[C, h, w]`.
    pub fn item(&self, i: usize) -> &[f32] {
        let n = self.shape.len();
        &self.data[i * n..(i + 1) * n]
    }
}

/// Below this angle (radians) the two latents are treated as parallel and lerped.
const PARALLEL_ANGLE: f64 = 1e-4;
/// Within this angle of π the two latents are treated as antipodal.
const ANTIPODAL_ANGLE: f64 = 1e-4;

/// The interpolation factors of a pair's in-betweens: `t = i/(N+1)`, `i = 1..=N`.
pub fn inbetween_factors(frames_per_pair: usize) -> Vec<f32> {
    (1..=frames_per_pair)
        .map(|i| i as f32 / (frames_per_pair + 1) as f32)
        .collect()
}

/// Spherical interpolation from `a` to `b` at every factor in `ts`, in one call.
///
/// The direction follows the great circle between `a/|a|` and `b/|b|`; the magnitude is
/// interpolated linearly between `|a|` and `|b|`. Nearly parallel inputs fall back to a plain
/// lerp; antipodal inputs (where the great circle is undefined) turn through a fixed direction
/// orthogonal to `a`, so the result is always finite. `t = 0` and `t = 1` return exact copies.
pub fn slerp_batch(a: &Latent, b: &Latent, ts: &[f32]) -> Result<LatentBatch, LatentError> {
    if a.shape != b.shape {
        return Err(LatentError::ShapeMismatch {
            a: a.shape,
            b: b.shape,
        });
    }
    if let Some(&t) = ts.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(LatentError::FactorOutOfRange(t));
    }
    let (mut dot, mut norm_a2, mut norm_b2) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        norm_a2 += x * x;
        norm_b2 += y * y;
    }
    if !(dot.is_finite() && norm_a2.is_finite() && norm_b2.is_finite()) {
        return Err(LatentError::NonFinite);
    }
    let (norm_a, norm_b) = (norm_a2.sqrt(), norm_b2.sqrt());
    let plan = if norm_a == 0.0 || norm_b == 0.0 {
        Plan::Lerp
    } else {
        let omega = (dot / (norm_a * norm_b)).clamp(-1.0, 1.0).acos();
        if omega < PARALLEL_ANGLE {
            Plan::Lerp
        } else if omega > std::f64::consts::PI - ANTIPODAL_ANGLE {
            Plan::Antipodal {
                norm_a,
                norm_b,
                ortho: orthogonal_unit(&a.data, norm_a),
            }
        } else {
            Plan::Slerp {
                omega,
                norm_a,
                norm_b,
            }
        }
    };

    let mut batch = LatentBatch::with_capacity(a.shape, ts.len());
    for &t in ts {
        if t == 0.0 {
            batch.data.extend_from_slice(&a.data);
        } else if t == 1.0 {
            batch.data.extend_from_slice(&b.data);
        } else {
            plan.extend(&mut batch.data, &a.data, &b.data, f64::from(t));
        }
        batch.count += 1;
    }
    Ok(batch)
}

/// The per-pair part of a slerp, computed once and applied to every factor.
enum Plan {
    Lerp,
    Slerp {
        omega: f64,
        norm_a: f64,
        norm_b: f64,
    },
    Antipodal {
        norm_a: f64,
        norm_b: f64,
        ortho: Vec<f32>,
    },
}

impl Plan {
    /// Appends the latent at factor `t` to `out`.
    fn extend(&self, out: &mut Vec<f32>, a: &[f32], b: &[f32], t: f64) {
        match self {
            Plan::Lerp => {
                let (ca, cb) = ((1.0 - t) as f32, t as f32);
                out.extend(a.iter().zip(b).map(|(&x, &y)| ca * x + cb * y));
            }
            Plan::Slerp {
                omega,
                norm_a,
                norm_b,
            } => {
                let magnitude = (1.0 - t) * norm_a + t * norm_b;
                let sin_omega = omega.sin();
                let ca = ((1.0 - t) * omega).sin() / sin_omega * magnitude / norm_a;
                let cb = (t * omega).sin() / sin_omega * magnitude / norm_b;
                let (ca, cb) = (ca as f32, cb as f32);
                out.extend(a.iter().zip(b).map(|(&x, &y)| ca * x + cb * y));
            }
            Plan::Antipodal {
                norm_a,
                norm_b,
                ortho,
            } => {
                // Half a turn from â through the orthogonal direction p to −â = b̂.
                let magnitude = (1.0 - t) * norm_a + t * norm_b;
                let angle = t * std::f64::consts::PI;
                let ca = (angle.cos() * magnitude / norm_a) as f32;
                let cp = (angle.sin() * magnitude) as f32;
                out.extend(a.iter().zip(ortho).map(|(&x, &p)| ca * x + cp * p));
            }
        }
    }
}

/// A unit vector orthogonal to `a` (of norm `norm_a > 0`), the same for the same `a`.
fn orthogonal_unit(a: &[f32], norm_a: f64) -> Vec<f32> {
    // Start from a fixed alternating pattern, remove its component along a (Gram-Schmidt); if the
    // pattern happens to be parallel to a, use a ramp instead.
    for candidate in [
        (|i: usize| if i.is_multiple_of(2) { 1.0 } else { -1.0 }) as fn(usize) -> f64,
        |i: usize| (i % 7) as f64 - 3.0,
    ] {
        let along: f64 = a
            .iter()
            .enumerate()
            .map(|(i, &x)| candidate(i) * f64::from(x))
            .sum::<f64>()
            / (norm_a * norm_a);
        let v: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, &x)| candidate(i) - along * f64::from(x))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-6 {
            return v.iter().map(|x| (x / norm) as f32).collect();
        }
    }
    // Only reachable for a one-value latent, where no orthogonal direction exists.
    vec![0.0; a.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latent(values: &[f32]) -> Latent {
        Latent::new(LatentShape::new(1, 1, values.len()), values.to_vec()).unwrap()
    }

    fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn endpoints_are_exact_copies() {
        let a = latent(&[1.0, 2.0, 3.0]);
        let b = latent(&[-3.0, 0.5, 2.0]);
        let batch = slerp_batch(&a, &b, &[0.0, 1.0]).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.item(0), a.data());
        assert_eq!(batch.item(1), b.data());
    }

    #[test]
    fn orthogonal_midpoint_is_on_the_arc() {
        let a = latent(&[1.0, 0.0]);
        let b = latent(&[0.0, 1.0]);
        let batch = slerp_batch(&a, &b, &[0.5, 1.0 / 3.0]).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert_close(batch.item(0), &[h, h], 1e-6);
        let (s, c) = (
            std::f32::consts::FRAC_PI_6.sin(),
            std::f32::consts::FRAC_PI_6.cos(),
        );
        assert_close(batch.item(1), &[c, s], 1e-6);
    }

    #[test]
    fn magnitudes_interpolate_linearly() {
        let a = latent(&[2.0, 0.0]);
        let b = latent(&[0.0, 4.0]);
        let batch = slerp_batch(&a, &b, &inbetween_factors(3)).unwrap();
        for (i, t) in inbetween_factors(3).iter().enumerate() {
            assert!((norm(batch.item(i)) - (2.0 + 2.0 * t)).abs() < 1e-5);
        }
    }

    #[test]
    fn parallel_inputs_lerp() {
        let a = latent(&[1.0, 1.0]);
        let b = latent(&[3.0, 3.0]);
        let batch = slerp_batch(&a, &b, &[0.25]).unwrap();
        assert_close(batch.item(0), &[1.5, 1.5], 1e-6);
    }

    #[test]
    fn identical_inputs_stay_put() {
        let a = latent(&[0.3, -0.7, 0.1]);
        let batch = slerp_batch(&a, &a, &inbetween_factors(4)).unwrap();
        for i in 0..4 {
            assert_close(batch.item(i), a.data(), 1e-6);
        }
    }

    #[test]
    fn antipodal_inputs_give_finite_results_of_the_right_size() {
        let a = latent(&[1.0, 2.0, -1.0, 0.5]);
        let b = latent(&[-2.0, -4.0, 2.0, -1.0]);
        let ts = inbetween_factors(9);
        let batch = slerp_batch(&a, &b, &ts).unwrap();
        let (na, nb) = (norm(a.data()), norm(b.data()));
        for (i, t) in ts.iter().enumerate() {
            let item = batch.item(i);
            assert!(item.iter().all(|x| x.is_finite()), "{item:?}");
            assert!((norm(item) - ((1.0 - t) * na + t * nb)).abs() < 1e-4);
        }
        // Midway the path is orthogonal to both ends.
        let mid = batch.item(4);
        let dot: f32 = mid.iter().zip(a.data()).map(|(x, y)| x * y).sum();
        assert!(dot.abs() < 1e-4, "{dot}");
    }

    #[test]
    fn zero_latent_lerps_without_nan() {
        let a = latent(&[0.0, 0.0]);
        let b = latent(&[1.0, -1.0]);
        let batch = slerp_batch(&a, &b, &[0.5]).unwrap();
        assert_close(batch.item(0), &[0.5, -0.5], 1e-6);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = latent(&[1.0, 2.0]);
        let b = Latent::new(LatentShape::new(2, 1, 1), vec![1.0, 2.0]).unwrap();
        assert!(matches!(
            slerp_batch(&a, &b, &[0.5]),
            Err(LatentError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn factor_outside_unit_interval_is_an_error() {
        let a = latent(&[1.0]);
        assert_eq!(
            slerp_batch(&a, &a, &[1.5]),
            Err(LatentError::FactorOutOfRange(1.5))
        );
    }

    #[test]
    fn non_finite_input_is_an_error() {
        let a = latent(&[f32::NAN, 1.0]);
        let b = latent(&[1.0, 1.0]);
        assert_eq!(slerp_batch(&a, &b, &[0.5]), Err(LatentError::NonFinite));
    }

    #[test]
    fn wrong_data_length_is_an_error() {
        assert!(Latent::new(LatentShape::new(4, 2, 2), vec![0.0; 15]).is_err());
    }

    #[test]
    fn factors_exclude_both_endpoints() {
        assert_eq!(inbetween_factors(3), vec![0.25, 0.5, 0.75]);
    }
}
