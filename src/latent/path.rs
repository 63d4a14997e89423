//! The curve a pair's in-betweens follow, and the one call the pipeline makes for them.
//!
//! Piecewise slerp ([`super::slerp_batch`]) starts every pair's arc afresh at its keyframe, so
//! the motion turns sharply at each keyframe. [`PathKind::Spline`] instead runs one curve through
//! all keyframes whose first derivative is continuous across them, in frame time: every pair
//! lasts N+1 frames, so the parameter is uniform and `t ∈ [0, 1]` spans one pair.
//!
//! The spline splits each keyframe latent `z_k` into a direction `u_k = z_k/|z_k|` on the unit
//! sphere and a magnitude `r_k = |z_k|`:
//!
//! - the direction follows a spherical cubic Bézier (de Casteljau with geodesics instead of
//!   straight lines; Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985) from
//!   `u_{k−1}` to `u_k`, with inner control points `b₁ = exp_{u_{k−1}}(v_{k−1}/3)` and
//!   `b₂ = exp_{u_k}(−v_k/3)`, so its derivative is `v_{k−1}` at the start and `v_k` at the end;
//! - the tangent `v_k` at a keyframe is Catmull-Rom's on the sphere,
//!   `v_k = ½(log_{u_k} u_{k+1} − log_{u_k} u_{k−1})`, rescaled to the mean length of the two
//!   arcs it joins, so the speed at a keyframe matches the speed of the pairs either side
//!   (a turn of 90° would otherwise slow to 0.71× at every keyframe);
//! - the magnitude follows a uniform Catmull-Rom (cubic Hermite) curve through the `r_k`.
//!
//! Both halves use the same tangent at keyframe `k` whether it ends pair `(k−1, k)` or starts
//! pair `(k, k+1)`, which is what makes the derivative continuous. Without a neighbour (the
//! stream's first pair, or a keyframe that is not there yet at shutdown or after a failed one),
//! the tangent is one-sided: along the arc to the keyframe that is there.
//!
//! Degenerate inputs stay finite: antipodal directions turn through a fixed orthogonal direction
//! (as the slerp does), parallel ones reduce to a straight step, and a zero latent (no direction)
//! falls back to a Euclidean Catmull-Rom segment.
//!
//! With `keep_contrast`, each output channel's mean and spread are then set to values
//! interpolated along the same kind of path ([`super::contrast`]).

use super::contrast::{self, ChannelStats};
use super::{slerp_batch, Latent, LatentBatch, LatentError};

/// The curve the in-betweens follow (`generation.path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lower")]
pub enum PathKind {
    /// Spherical interpolation inside each pair; the direction of motion jumps at keyframes.
    Slerp,
    /// One C¹ curve through every keyframe (needs one keyframe of look-ahead).
    Spline,
}

/// How the in-betweens of a pair are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    pub kind: PathKind,
    /// Interpolate each channel's mean and spread separately and rescale the blend to them.
    pub keep_contrast: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            kind: PathKind::Spline,
            keep_contrast: true,
        }
    }
}

/// The keyframe latents around pair `(k−1, k)`: the path runs from `from` to `to`, shaped by
/// `before` (k−2) and `after` (k+1) when they are known.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub before: Option<&'a Latent>,
    pub from: &'a Latent,
    pub to: &'a Latent,
    pub after: Option<&'a Latent>,
}

impl<'a> Window<'a> {
    /// A pair with no neighbours (the spline then equals a slerp in direction).
    pub fn pair(from: &'a Latent, to: &'a Latent) -> Self {
        Window {
            before: None,
            from,
            to,
            after: None,
        }
    }
}

/// Below this, a norm or a sine counts as zero.
const TINY: f64 = 1e-12;

/// Every in-between of the window's pair at the factors `ts` (each in `[0, 1]`), in one call.
/// `t = 0` and `t = 1` give exact copies of `from` and `to`.
pub fn inbetweens(
    window: Window<'_>,
    ts: &[f32],
    options: PathOptions,
) -> Result<LatentBatch, LatentError> {
    let shape = window.from.shape;
    for latent in [window.before, Some(window.to), window.after]
        .into_iter()
        .flatten()
    {
        if latent.shape != shape {
            return Err(LatentError::ShapeMismatch {
                a: shape,
                b: latent.shape,
            });
        }
        if !latent.data.iter().all(|x| x.is_finite()) {
            return Err(LatentError::NonFinite);
        }
    }
    let mut batch = match options.kind {
        PathKind::Slerp => slerp_batch(window.from, window.to, ts)?,
        PathKind::Spline => spline_batch(window, ts)?,
    };
    if options.keep_contrast {
        let stats = StatsPath::new(window, options.kind);
        let n = shape.len();
        for (i, &t) in ts.iter().enumerate() {
            if t > 0.0 && t < 1.0 {
                let target = stats.at(f64::from(t));
                contrast::match_stats(&mut batch.data[i * n..(i + 1) * n], shape, &target);
            }
        }
    }
    Ok(batch)
}

/// The spline's in-betweens (see the module docs); inputs already checked for shape.
fn spline_batch(window: Window<'_>, ts: &[f32]) -> Result<LatentBatch, LatentError> {
    if let Some(&t) = ts.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(LatentError::FactorOutOfRange(t));
    }
    let segment = Segment::new(window);
    let mut batch = LatentBatch::with_capacity(window.from.shape, ts.len());
    for &t in ts {
        if t == 0.0 {
            batch.data.extend_from_slice(&window.from.data);
        } else if t == 1.0 {
            batch.data.extend_from_slice(&window.to.data);
        } else {
            batch
                .data
                .extend(segment.at(f64::from(t)).into_iter().map(|x| x as f32));
        }
        batch.count += 1;
    }
    Ok(batch)
}

/// One pair's piece of the spline, in f64, with everything per-pair computed once.
pub(crate) enum Segment {
    /// Direction on the sphere (Bézier control points) and magnitude (Hermite).
    Sphere {
        control: [Vec<f64>; 4],
        magnitude: Hermite,
    },
    /// `from` or `to` is zero, so has no direction: Catmull-Rom on the raw values.
    Euclidean {
        points: [Vec<f64>; 2],
        tangents: [Vec<f64>; 2],
    },
}

impl Segment {
    pub(crate) fn new(window: Window<'_>) -> Segment {
        let to_f64 = |l: &Latent| l.data.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let (from, to) = (to_f64(window.from), to_f64(window.to));
        let (before, after) = (window.before.map(to_f64), window.after.map(to_f64));
        let (r_from, r_to) = (norm(&from), norm(&to));
        if r_from <= TINY || r_to <= TINY {
            return Segment::Euclidean {
                tangents: [
                    euclidean_tangent(before.as_deref(), &from, Some(&to)),
                    euclidean_tangent(Some(&from), &to, after.as_deref()),
                ],
                points: [from, to],
            };
        }
        // Neighbours without a direction count as absent.
        let unit = |v: Vec<f64>| {
            let r = norm(&v);
            (r > TINY).then(|| (scale(&v, 1.0 / r), r))
        };
        let (before, after) = (before.and_then(unit), after.and_then(unit));
        let (u_from, u_to) = (scale(&from, 1.0 / r_from), scale(&to, 1.0 / r_to));
        let v_from = sphere_tangent(
            before.as_ref().map(|b| b.0.as_slice()),
            &u_from,
            Some(&u_to),
        );
        let v_to = sphere_tangent(Some(&u_from), &u_to, after.as_ref().map(|a| a.0.as_slice()));
        let b1 = exp(&u_from, &scale(&v_from, 1.0 / 3.0));
        let b2 = exp(&u_to, &scale(&v_to, -1.0 / 3.0));
        let magnitude = Hermite::catmull_rom(
            before.as_ref().map(|b| b.1),
            r_from,
            r_to,
            after.as_ref().map(|a| a.1),
        );
        Segment::Sphere {
            control: [u_from, b1, b2, u_to],
            magnitude,
        }
    }

    /// The latent at factor `t ∈ [0, 1]`.
    pub(crate) fn at(&self, t: f64) -> Vec<f64> {
        match self {
            Segment::Sphere { control, magnitude } => {
                // de Casteljau with geodesics: three levels of interpolation at the same t.
                let [b0, b1, b2, b3] = control;
                let (p01, p12, p23) = (
                    geodesic(b0, b1, t),
                    geodesic(b1, b2, t),
                    geodesic(b2, b3, t),
                );
                let (q0, q1) = (geodesic(&p01, &p12, t), geodesic(&p12, &p23, t));
                let direction = geodesic(&q0, &q1, t);
                let r = magnitude.at(t).max(0.0);
                scale(&direction, r)
            }
            Segment::Euclidean { points, tangents } => {
                let [h00, h10, h01, h11] = hermite_basis(t);
                (0..points[0].len())
                    .map(|i| {
                        h00 * points[0][i]
                            + h10 * tangents[0][i]
                            + h01 * points[1][i]
                            + h11 * tangents[1][i]
                    })
                    .collect()
            }
        }
    }
}

/// A scalar cubic Hermite segment on `[0, 1]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hermite {
    p0: f64,
    p1: f64,
    m0: f64,
    m1: f64,
}

impl Hermite {
    /// Uniform Catmull-Rom from `p0` to `p1`: tangent `½(p_{k+1} − p_{k−1})` at each end,
    /// one-sided (`p_{k+1} − p_k` or `p_k − p_{k−1}`) where a neighbour is missing.
    pub(crate) fn catmull_rom(before: Option<f64>, p0: f64, p1: f64, after: Option<f64>) -> Self {
        let m0 = match before {
            Some(b) => 0.5 * (p1 - b),
            None => p1 - p0,
        };
        let m1 = match after {
            Some(a) => 0.5 * (a - p0),
            None => p1 - p0,
        };
        Hermite { p0, p1, m0, m1 }
    }

    /// Straight from `p0` to `p1`.
    pub(crate) fn linear(p0: f64, p1: f64) -> Self {
        Hermite {
            p0,
            p1,
            m0: p1 - p0,
            m1: p1 - p0,
        }
    }

    pub(crate) fn at(&self, t: f64) -> f64 {
        let [h00, h10, h01, h11] = hermite_basis(t);
        h00 * self.p0 + h10 * self.m0 + h01 * self.p1 + h11 * self.m1
    }
}

/// The cubic Hermite basis `[h00, h10, h01, h11]` at `t`:
/// `h00 = 2t³ − 3t² + 1`, `h10 = t³ − 2t² + t`, `h01 = −2t³ + 3t²`, `h11 = t³ − t²`.
fn hermite_basis(t: f64) -> [f64; 4] {
    let (t2, t3) = (t * t, t * t * t);
    [
        2.0 * t3 - 3.0 * t2 + 1.0,
        t3 - 2.0 * t2 + t,
        -2.0 * t3 + 3.0 * t2,
        t3 - t2,
    ]
}

/// Each channel's mean and spread along the pair: linear for the slerp, Catmull-Rom (through
/// the neighbours' values, like the magnitude) for the spline. A spread never goes below zero.
struct StatsPath {
    mean: Vec<Hermite>,
    std: Vec<Hermite>,
}

impl StatsPath {
    fn new(window: Window<'_>, kind: PathKind) -> Self {
        let of = |l: &Latent| ChannelStats::of(&l.data, l.shape);
        let (from, to) = (of(window.from), of(window.to));
        let (before, after) = match kind {
            PathKind::Slerp => (None, None),
            PathKind::Spline => (window.before.map(of), window.after.map(of)),
        };
        let curves = |field: fn(&ChannelStats) -> &Vec<f64>| -> Vec<Hermite> {
            (0..field(&from).len())
                .map(|c| match kind {
                    PathKind::Slerp => Hermite::linear(field(&from)[c], field(&to)[c]),
                    PathKind::Spline => Hermite::catmull_rom(
                        before.as_ref().map(|b| field(b)[c]),
                        field(&from)[c],
                        field(&to)[c],
                        after.as_ref().map(|a| field(a)[c]),
                    ),
                })
                .collect()
        };
        StatsPath {
            mean: curves(|s| &s.mean),
            std: curves(|s| &s.std),
        }
    }

    fn at(&self, t: f64) -> ChannelStats {
        ChannelStats {
            mean: self.mean.iter().map(|h| h.at(t)).collect(),
            std: self.std.iter().map(|h| h.at(t).max(0.0)).collect(),
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn scale(a: &[f64], s: f64) -> Vec<f64> {
    a.iter().map(|x| x * s).collect()
}

/// The log map of the unit sphere at `p`: the tangent vector at `p` pointing along the
/// great circle to `q`, as long as the arc (`θ/sin θ · (q − cos θ · p)`, θ = ∠(p, q)).
/// Parallel inputs give `q − p` (≈ 0); antipodal ones a fixed orthogonal direction of length π.
fn log(p: &[f64], q: &[f64]) -> Vec<f64> {
    let cos = dot(p, q).clamp(-1.0, 1.0);
    let w: Vec<f64> = q.iter().zip(p).map(|(q, p)| q - cos * p).collect();
    let sin = norm(&w);
    if sin <= 1e-9 {
        if cos > 0.0 {
            return q.iter().zip(p).map(|(q, p)| q - p).collect();
        }
        return scale(&orthogonal_unit(p), std::f64::consts::PI);
    }
    let theta = sin.atan2(cos);
    scale(&w, theta / sin)
}

/// The exp map of the unit sphere at `p`: `cos|v| · p + sin|v| · v/|v|`.
fn exp(p: &[f64], v: &[f64]) -> Vec<f64> {
    let angle = norm(v);
    if angle <= TINY {
        return p.to_vec();
    }
    let (sin, cos) = angle.sin_cos();
    p.iter()
        .zip(v)
        .map(|(p, v)| cos * p + sin / angle * v)
        .collect()
}

/// The point a fraction `t` along the great circle from `p` to `q`: `exp_p(t · log_p q)`.
fn geodesic(p: &[f64], q: &[f64], t: f64) -> Vec<f64> {
    exp(p, &scale(&log(p, q), t))
}

/// Catmull-Rom's tangent at `at` on the sphere, per pair of frame time (see the module docs).
fn sphere_tangent(before: Option<&[f64]>, at: &[f64], after: Option<&[f64]>) -> Vec<f64> {
    match (before, after) {
        (Some(b), Some(a)) => {
            let (to_after, to_before) = (log(at, a), log(at, b));
            // ½(log_at(after) − log_at(before)), then set to the mean arc length either side.
            let v: Vec<f64> = to_after
                .iter()
                .zip(&to_before)
                .map(|(a, b)| 0.5 * (a - b))
                .collect();
            let length = norm(&v);
            let arcs = 0.5 * (norm(&to_after) + norm(&to_before));
            if length <= TINY {
                // Going straight back: no direction to continue in.
                v
            } else {
                scale(&v, arcs / length)
            }
        }
        (None, Some(a)) => log(at, a),
        (Some(b), None) => scale(&log(at, b), -1.0),
        (None, None) => vec![0.0; at.len()],
    }
}

/// Catmull-Rom's tangent of raw values: `½(after − before)`, one-sided when one is missing.
fn euclidean_tangent(before: Option<&[f64]>, at: &[f64], after: Option<&[f64]>) -> Vec<f64> {
    match (before, after) {
        (Some(b), Some(a)) => a.iter().zip(b).map(|(a, b)| 0.5 * (a - b)).collect(),
        (None, Some(a)) => a.iter().zip(at).map(|(a, x)| a - x).collect(),
        (Some(b), None) => at.iter().zip(b).map(|(x, b)| x - b).collect(),
        (None, None) => vec![0.0; at.len()],
    }
}

/// A unit vector orthogonal to the unit vector `p`, the same for the same `p` (the f64 twin
/// of the slerp's).
fn orthogonal_unit(p: &[f64]) -> Vec<f64> {
    for candidate in [
        (|i: usize| if i.is_multiple_of(2) { 1.0 } else { -1.0 }) as fn(usize) -> f64,
        |i: usize| (i % 7) as f64 - 3.0,
    ] {
        let along: f64 = p.iter().enumerate().map(|(i, x)| candidate(i) * x).sum();
        let v: Vec<f64> = p
            .iter()
            .enumerate()
            .map(|(i, x)| candidate(i) - along * x)
            .collect();
        let n = norm(&v);
        if n > 1e-6 {
            return scale(&v, 1.0 / n);
        }
    }
    // Only for a one-value latent, where no orthogonal direction exists.
    vec![0.0; p.len()]
}

#[cfg(test)]
mod tests;
