//! Winograd F(4×4, 3×3) convolutions: the "fast" precision of the CPU TAESD networks.
//!
//! A 3×3 convolution (padding 1, stride 1) computes each 4×4 output tile from a 6×6 input tile
//! with 36 multiplies per input/output channel pair instead of 144 (Lavin & Gray 2016, points
//! 0, ±1, ±2, ∞):
//!
//! ```text
//! Y = Aᵀ [ Σ_ci (G g Gᵀ)[co,ci] ⊙ (Bᵀ d Bᵀᵀ)[ci] ] A
//! ```
//!
//! The weights are transformed once, at load (in f64). At run time the input tiles of a chunk of
//! tile rows are transformed into `V[36][c_in][tiles]`, the 36 element-wise products summed over
//! input channels become 36 matrix products `M[p] = U[p] · V[p]` (`[c_out × c_in] · [c_in ×
//! tiles]`, through [`super::conv::matmul`]), and the output transform writes the tiles straight
//! into the [`Padded`] result with the epilogue (bias, residual, ReLU) fused. Tile rows are split
//! between the threads; each thread owns the output rows of its tiles.
//!
//! The transforms are exact in real arithmetic; in f32 the result differs from the direct
//! convolution by rounding only (≈1e-6 relative per layer), well inside the "fast" path's bound
//! of 45 dB PSNR against the direct path on real latents (see the decoder's tests).

use std::ops::Range;

use super::conv::{matmul, Epilogue, Matmul, Padded};
use super::pool;

/// Output tile side.
const TILE: usize = 4;
/// Input tile side (TILE + 2).
const ALPHA: usize = 6;
/// Transform positions per tile.
const POSITIONS: usize = ALPHA * ALPHA;
/// Tiles per chunk the threads aim at: `V` and `M` of a chunk (36 × 64 × tiles f32 each) stay
/// near the core's L2. 32, 48, 96 and 192 measured within noise of each other at 4×32×64
/// (BENCHMARKS.md); 192 was slowest.
const TILES_PER_CHUNK: usize = 96;

/// The weight transform `G` (6×3).
const G: [[f64; 3]; ALPHA] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A 3×3 convolution, padding 1, stride 1, with optional bias, computed with Winograd F(4,3).
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    c_in: usize,
    c_out: usize,
    /// Transformed weights `[36][c_out][c_in]`.
    u: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// Sizes shared by every thread of one forward pass.
#[derive(Clone, Copy)]
struct Geometry {
    height: usize,
    /// Tile rows per picture.
    th: usize,
    /// Tiles per tile row.
    tw: usize,
}

impl Geometry {
    /// Output rows (unpadded) covered by tile row `r` of the flattened batch: `(b, y0, rows)`.
    fn rows_of(&self, r: usize) -> (usize, usize, usize) {
        let (b, ty) = (r / self.th, r % self.th);
        let y0 = ty * TILE;
        (b, y0, TILE.min(self.height - y0))
    }
}

impl Winograd3x3 {
    /// From PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias `[c_out]`.
    pub fn new(c_in: usize, c_out: usize, weight: &[f32], bias: Option<Vec<f32>>) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "conv weight size");
        let mut u = vec![0.0; POSITIONS * c_out * c_in];
        for co in 0..c_out {
            for ci in 0..c_in {
                let g = &weight[(co * c_in + ci) * 9..][..9];
                // t = G g (6×3), then u = t Gᵀ (6×6).
                let mut t = [[0.0f64; 3]; ALPHA];
                for (i, row) in t.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|k| G[i][k] * f64::from(g[k * 3 + j])).sum();
                    }
                }
                for i in 0..ALPHA {
                    for j in 0..ALPHA {
                        let v: f64 = (0..3).map(|k| t[i][k] * G[j][k]).sum();
                        u[((i * ALPHA + j) * c_out + co) * c_in + ci] = v as f32;
                    }
                }
            }
        }
        Self {
            c_in,
            c_out,
            u,
            bias,
        }
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Convolves `input`, then applies the epilogue; borders of the result are zero.
    pub fn forward(&self, input: &Padded, epilogue: Epilogue) -> Padded {
        self.forward_with(input, epilogue, true)
    }

    /// [`Self::forward`], with the AVX2 build of the transforms allowed or not (tests check both).
    fn forward_with(&self, input: &Padded, epilogue: Epilogue, simd: bool) -> Padded {
        assert_eq!(input.channels, self.c_in, "conv input channels");
        if let Some(r) = epilogue.residual {
            assert_eq!(
                (r.channels, r.batch, r.height, r.width),
                (self.c_out, input.batch, input.height, input.width),
                "residual shape"
            );
        }
        let (batch, height, width) = (input.batch, input.height, input.width);
        let mut out = Padded::for_overwrite(self.c_out, batch, height, width);
        if height == 0 || width == 0 || batch == 0 {
            return out;
        }
        let geom = Geometry {
            height,
            th: height.div_ceil(TILE),
            tw: width.div_ceil(TILE),
        };
        let tile_rows = batch * geom.th;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(tile_rows);
        let ranges: Vec<Range<usize>> = (0..threads)
            .map(|t| t * tile_rows / threads..(t + 1) * tile_rows / threads)
            .collect();
        let owner: Vec<usize> = (0..tile_rows)
            .map(|r| {
                ranges
                    .iter()
                    .position(|range| range.contains(&r))
                    .unwrap_or(0)
            })
            .collect();
        // Hand every thread the interior output rows of its tiles, channel-major, in (b, y) order.
        let mut rows: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::new()).collect();
        let padded_rows = height + 2;
        for (i, row) in out.data.chunks_mut(width + 2).enumerate() {
            let (b, yp) = ((i / padded_rows) % batch, i % padded_rows);
            if yp == 0 || yp == padded_rows - 1 {
                continue;
            }
            rows[owner[b * geom.th + (yp - 1) / TILE]].push(&mut row[1..=width]);
        }
        std::thread::scope(|scope| {
            for (range, rows) in ranges.into_iter().zip(rows) {
                scope.spawn(move || self.tile_rows(input, rows, range, geom, epilogue, simd));
            }
        });
        out
    }

    /// Computes tile rows `range` (of the flattened batch) into `rows`: the interior output rows
    /// of those tiles, `c_out` groups of them in (b, y) order. Picks the AVX2 build of the
    /// transforms when `simd` allows it and the CPU has it.
    fn tile_rows(
        &self,
        input: &Padded,
        rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
        simd: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: `tile_rows_avx2` only needs AVX2, which the CPU has (checked just above).
            unsafe { self.tile_rows_avx2(input, rows, range, geom, epilogue) };
            return;
        }
        let _ = simd;
        self.tile_rows_generic(input, rows, range, geom, epilogue);
    }

    /// [`Self::tile_rows_generic`] compiled for AVX2 (the transforms vectorize 8 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn tile_rows_avx2(
        &self,
        input: &Padded,
        rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
    ) {
        self.tile_rows_generic(input, rows, range, geom, epilogue);
    }

    #[inline(always)]
    fn tile_rows_generic(
        &self,
        input: &Padded,
        mut rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
    ) {
        let tw = geom.tw;
        // Index of each tile row's first output row within one channel's group.
        let mut first_row = Vec::with_capacity(range.len() + 1);
        let mut n = 0;
        for r in range.clone() {
            first_row.push(n);
            n += geom.rows_of(r).2;
        }
        assert_eq!(rows.len(), n * self.c_out, "output rows of this thread");
        let per_chunk = (TILES_PER_CHUNK / tw).max(1);
        let max_tiles = per_chunk * tw;
        let mut v = pool::take_dirty(POSITIONS * self.c_in * max_tiles);
        let mut m = pool::take_dirty(POSITIONS * self.c_out * max_tiles);
        let mut scratch = Scratch::new(tw);
        let mut start = range.start;
        while start < range.end {
            let chunk = start..(start + per_chunk).min(range.end);
            let tiles = chunk.len() * tw;
            for ci in 0..self.c_in {
                for (k, r) in chunk.clone().enumerate() {
                    let (b, y0, _) = geom.rows_of(r);
                    let offset = ci * tiles + k * tw;
                    scratch.input_tiles(input, (ci, b, y0), &mut v, self.c_in * tiles, offset);
                }
            }
            for p in 0..POSITIONS {
                let weights = &self.u[p * self.c_out * self.c_in..][..self.c_out * self.c_in];
                matmul(
                    Matmul {
                        m: self.c_out,
                        n: tiles,
                        k: self.c_in,
                    },
                    &mut m[p * self.c_out * tiles..],
                    tiles,
                    weights,
                    &v[p * self.c_in * tiles..],
                    tiles,
                    false,
                );
            }
            for co in 0..self.c_out {
                let bias = self.bias.as_ref().map_or(0.0, |b| b[co]);
                for (k, r) in chunk.clone().enumerate() {
                    let (b, y0, count) = geom.rows_of(r);
                    let local = co * n + first_row[r - range.start];
                    scratch.output_tiles(
                        &m,
                        (self.c_out * tiles, co * tiles + k * tw),
                        &mut rows[local..local + count],
                        (co, b, y0),
                        bias,
                        epilogue,
                    );
                }
            }
            start = chunk.end;
        }
        pool::give(v);
        pool::give(m);
    }
}

/// Per-thread buffers of the transforms for one tile row of `tw` tiles.
struct Scratch {
    tw: usize,
    /// Six rows of the column transform, `4·(tw + 1)` long (zero past the picture).
    cols: [Vec<f32>; ALPHA],
    /// Phases `cols[i][4·tx + k]`, k = 0..4, `tw + 1` long (phase 4 and 5 are 0 and 1 shifted
    /// by one tile).
    phase: [Vec<f32>; TILE],
    /// Row transform of the output: `[6][4][tw]`.
    half: Vec<Vec<f32>>,
    /// Both transforms of the output: `[4 phases][4 rows][tw]`.
    full: Vec<Vec<f32>>,
    /// One output row before the epilogue, `4·tw` long.
    line: Vec<f32>,
    /// A zero row standing for input rows past the bottom border.
    zeros: Vec<f32>,
}

impl Scratch {
    fn new(tw: usize) -> Self {
        Self {
            tw,
            cols: std::array::from_fn(|_| vec![0.0; TILE * (tw + 1)]),
            phase: std::array::from_fn(|_| vec![0.0; tw + 1]),
            half: vec![vec![0.0; tw]; ALPHA * TILE],
            full: vec![vec![0.0; tw]; TILE * TILE],
            line: vec![0.0; TILE * tw],
            zeros: vec![0.0; TILE * (tw + 1)],
        }
    }

    /// Transforms the tiles of one tile row (picture `b`, output rows from `y0`) of channel
    /// `ci`: `v[p·stride + offset + tx] = (Bᵀ d B)[p]` of tile `tx`.
    #[inline(always)]
    fn input_tiles(
        &mut self,
        input: &Padded,
        (ci, b, y0): (usize, usize, usize),
        v: &mut [f32],
        stride: usize,
        offset: usize,
    ) {
        let width = input.width + 2;
        let zeros = &self.zeros[..width];
        // Padded rows y0 .. y0 + 6; those past the bottom border read as zero.
        let row = |s: usize| -> &[f32] {
            if y0 + s < input.height + 2 {
                let start = input.index(ci, b, y0 + s, 0);
                &input.data[start..start + width]
            } else {
                zeros
            }
        };
        let d = [row(0), row(1), row(2), row(3), row(4), row(5)];
        {
            let [c0, c1, c2, c3, c4, c5] = &mut self.cols;
            bt(
                d,
                [
                    &mut c0[..width],
                    &mut c1[..width],
                    &mut c2[..width],
                    &mut c3[..width],
                    &mut c4[..width],
                    &mut c5[..width],
                ],
            );
        }
        let tw = self.tw;
        for i in 0..ALPHA {
            let [p0, p1, p2, p3] = &mut self.phase;
            for ((((quad, a), b), c), d) in self.cols[i]
                .chunks_exact(TILE)
                .zip(p0.iter_mut())
                .zip(p1.iter_mut())
                .zip(p2.iter_mut())
                .zip(p3.iter_mut())
            {
                (*a, *b, *c, *d) = (quad[0], quad[1], quad[2], quad[3]);
            }
            let [p0, p1, p2, p3] = &self.phase;
            let src = [&p0[..], &p1[..], &p2[..], &p3[..], &p0[1..], &p1[1..]];
            let base = i * ALPHA * stride + offset;
            let (o0, rest) = v[base..].split_at_mut(stride);
            let (o1, rest) = rest.split_at_mut(stride);
            let (o2, rest) = rest.split_at_mut(stride);
            let (o3, rest) = rest.split_at_mut(stride);
            let (o4, rest) = rest.split_at_mut(stride);
            bt(
                src,
                [
                    &mut o0[..tw],
                    &mut o1[..tw],
                    &mut o2[..tw],
                    &mut o3[..tw],
                    &mut o4[..tw],
                    &mut rest[..tw],
                ],
            );
        }
    }

    /// Inverse-transforms one tile row of output channel `co` (picture `b`, output rows from
    /// `y0`) from `m[p·stride + offset + tx]` into `rows` (its 1–4 interior output rows), adding
    /// `bias` and the residual, then the ReLU when asked.
    #[inline(always)]
    fn output_tiles(
        &mut self,
        m: &[f32],
        (stride, offset): (usize, usize),
        rows: &mut [&mut [f32]],
        (co, b, y0): (usize, usize, usize),
        bias: f32,
        epilogue: Epilogue,
    ) {
        let tw = self.tw;
        for i in 0..ALPHA {
            let src: [&[f32]; ALPHA] =
                std::array::from_fn(|j| &m[(i * ALPHA + j) * stride + offset..][..tw]);
            let [h0, h1, h2, h3] = &mut self.half[i * TILE..(i + 1) * TILE] else {
                unreachable!("four rows")
            };
            at(src, [h0, h1, h2, h3]);
        }
        // self.full[k·4 + dy][tx] = output (dy, 4tx + k).
        for k in 0..TILE {
            let src: [&[f32]; ALPHA] = std::array::from_fn(|i| &self.half[i * TILE + k][..]);
            let [y0, y1, y2, y3] = &mut self.full[k * TILE..(k + 1) * TILE] else {
                unreachable!("four rows")
            };
            at(src, [y0, y1, y2, y3]);
        }
        for (dy, row) in rows.iter_mut().enumerate() {
            let [f0, f1, f2, f3] = [0, 1, 2, 3].map(|k| &self.full[k * TILE + dy][..tw]);
            for ((((quad, &a), &b), &c), &d) in self
                .line
                .chunks_exact_mut(TILE)
                .zip(f0)
                .zip(f1)
                .zip(f2)
                .zip(f3)
            {
                quad.copy_from_slice(&[a, b, c, d]);
            }
            let width = row.len();
            let line = &self.line[..width];
            let residual = epilogue.residual.map(|r| {
                let start = r.index(co, b, y0 + dy + 1, 1);
                &r.data[start..start + width]
            });
            match (residual, epilogue.relu) {
                (Some(res), true) => {
                    for ((out, &v), &r) in row.iter_mut().zip(line).zip(res) {
                        *out = (v + bias + r).max(0.0);
                    }
                }
                (Some(res), false) => {
                    for ((out, &v), &r) in row.iter_mut().zip(line).zip(res) {
                        *out = v + bias + r;
                    }
                }
                (None, true) => {
                    for (out, &v) in row.iter_mut().zip(line) {
                        *out = (v + bias).max(0.0);
                    }
                }
                (None, false) => {
                    for (out, &v) in row.iter_mut().zip(line) {
                        *out = v + bias;
                    }
                }
            }
        }
    }
}

/// `out = Bᵀ d` along the six inputs, element-wise over equal-length slices.
#[inline(always)]
fn bt(d: [&[f32]; ALPHA], out: [&mut [f32]; ALPHA]) {
    let n = out[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let [o0, o1, o2, o3, o4, o5] = out;
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for x in 0..n {
        let (a0, a1, a2, a3, a4, a5) = (d0[x], d1[x], d2[x], d3[x], d4[x], d5[x]);
        o0[x] = 4.0 * a0 - 5.0 * a2 + a4;
        o1[x] = -4.0 * (a1 + a2) + a3 + a4;
        o2[x] = 4.0 * (a1 - a2) - a3 + a4;
        o3[x] = 2.0 * (a3 - a1) - a2 + a4;
        o4[x] = 2.0 * (a1 - a3) - a2 + a4;
        o5[x] = 4.0 * a1 - 5.0 * a3 + a5;
    }
}

/// `out = Aᵀ m` along the six inputs, element-wise over equal-length slices.
#[inline(always)]
fn at(m: [&[f32]; ALPHA], out: [&mut [f32]; TILE]) {
    let n = out[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let [o0, o1, o2, o3] = out;
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for x in 0..n {
        let (p12, d12) = (m1[x] + m2[x], m1[x] - m2[x]);
        let (p34, d34) = (m3[x] + m4[x], m3[x] - m4[x]);
        o0[x] = m0[x] + p12 + p34;
        o1[x] = d12 + 2.0 * d34;
        o2[x] = p12 + 4.0 * p34;
        o3[x] = d12 + 8.0 * d34 + m5[x];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kernels::conv::Conv3x3;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.731 + seed).sin()).collect()
    }

    /// Winograd against the direct (shifted-GEMM) convolution, which is itself tested against a
    /// scalar reference in `conv`.
    fn check(c_in: usize, c_out: usize, batch: usize, h: usize, w: usize, residual: bool) {
        let weight = values(c_out * c_in * 9, 0.3);
        let bias = Some(values(c_out, 1.1));
        let input = Padded::from_nchw(&values(batch * c_in * h * w, 2.0), batch, c_in, h, w);
        let res = Padded::from_nchw(&values(batch * c_out * h * w, 0.7), batch, c_out, h, w);
        let epilogue = Epilogue {
            relu: residual,
            residual: residual.then_some(&res),
        };
        let direct = Conv3x3::new(c_in, c_out, &weight, bias.clone()).forward(&input, epilogue);
        let conv = Winograd3x3::new(c_in, c_out, &weight, bias);
        // The SIMD build (where the CPU has it) and the portable one.
        for simd in [true, false] {
            let fast = conv.forward_with(&input, epilogue, simd);
            assert_eq!(fast.data.len(), direct.data.len());
            for (i, (a, b)) in fast.data.iter().zip(&direct.data).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "simd {simd}, {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn matches_direct_convolution_on_ragged_tiles() {
        check(5, 7, 3, 6, 9, false);
        check(3, 2, 1, 13, 5, true);
        check(4, 8, 2, 1, 1, true);
    }

    #[test]
    fn matches_direct_convolution_at_decoder_width() {
        check(64, 64, 2, 8, 40, true);
        check(64, 3, 1, 16, 16, false);
    }

    #[test]
    fn borders_stay_zero() {
        let conv = Winograd3x3::new(1, 1, &[1.0; 9], Some(vec![5.0]));
        let out = conv.forward(
            &Padded::from_nchw(&[1.0; 6], 1, 1, 2, 3),
            Epilogue {
                relu: false,
                residual: None,
            },
        );
        assert_eq!(out.get(0, 0, 0, 0), 9.0);
        assert_eq!(out.get(0, 0, 1, 1), 11.0);
        for y in 0..4 {
            for x in 0..5 {
                if y == 0 || y == 3 || x == 0 || x == 4 {
                    assert_eq!(out.data[y * 5 + x], 0.0, "({y}, {x})");
                }
            }
        }
    }
}
