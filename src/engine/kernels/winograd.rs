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
//! tiles]`, through [`super::tile_products`]), and the output transform writes the tiles straight
//! into the [`Padded`] result with the epilogue (bias, residual, ReLU) fused. Tile rows are split
//! between the threads; each thread owns the output rows of its tiles.
//!
//! A 3×3 convolution of the input upsampled 2× (nearest neighbour, TAESD's `Upsample → conv`)
//! is computed on the input as it is ([`Winograd3x3::upsampled`]): each of the four sub-pixel
//! phases of the output is a 3×3 convolution of the input with summed taps, the four phases'
//! transformed weights are stacked as `4·c_out` rows of `U`, one input transform per tile
//! serves all of them, and the output side interleaves the phases as it writes the rows.
//!
//! The transforms are exact in real arithmetic; in f32 the result differs from the direct
//! convolution by rounding only (≈1e-6 relative per layer), well inside the "fast" path's bound
//! of 45 dB PSNR against the direct path on real latents (see the decoder's tests).

use std::ops::Range;

use super::conv::{Epilogue, Padded};
use super::isa::Isa;
use super::pool;
use super::tile_products::{PositionWeights, Products};

/// Output tile side.
const TILE: usize = 4;
/// Input tile side (TILE + 2).
const ALPHA: usize = 6;
/// Transform positions.
const POSITIONS: usize = ALPHA * ALPHA;
/// Tiles per chunk the threads aim at: `V` and `M` of a chunk (36 × 64 × tiles f32 each) stay
/// near the core's L2. 32, 48, 96 and 192 measured within noise of each other at 4×32×64
/// (BENCHMARKS.md); 192 was slowest. Upsampling convolutions keep it although their `M` is four
/// times as large: a quarter of it, or two products of half the rows, measured slower
/// (attempts 32–33).
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

/// A 3×3 convolution, padding 1, stride 1, with optional bias, computed with Winograd F(4,3);
/// optionally of the input upsampled 2× first ([`Winograd3x3::upsampled`]).
#[derive(Debug, Clone)]
pub struct Winograd3x3 {
    c_in: usize,
    c_out: usize,
    /// Whether the input is upsampled 2× (nearest neighbour) before the convolution.
    upsample: bool,
    /// Transformed weights `[36][phases·c_out][c_in]`, one block of `c_out` rows per sub-pixel
    /// phase (one phase without upsampling; four, `py·2 + px`, with it).
    u: PositionWeights,
    bias: Option<Vec<f32>>,
}

/// For each sub-pixel phase `p` of a 2× nearest upsampling and each input offset `a` (−1, 0,
/// +1 as 0, 1, 2): the taps of a 3×3 kernel along one axis that read input offset `a`. Output
/// row `2i` reads upsampled rows `2i − 1, 2i, 2i + 1`, which are input rows `i − 1, i, i`;
/// output row `2i + 1` reads input rows `i, i, i + 1`.
const PHASE_TAPS: [[&[usize]; 3]; 2] = [[&[0], &[1, 2], &[]], [&[], &[0, 1], &[2]]];

/// Where one output channel's tiles start in `M`: one block, or, for an upsampling convolution,
/// the blocks of its four sub-pixel phases `[py][px]`.
#[derive(Clone, Copy)]
enum Sources {
    Plain(usize),
    Upsampled([[usize; 2]; 2]),
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
    /// From PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias `[c_out]`, with
    /// the Winograd-domain products in `products` arithmetic.
    pub fn new(
        c_in: usize,
        c_out: usize,
        weight: &[f32],
        bias: Option<Vec<f32>>,
        products: Products,
    ) -> Self {
        Self::build((c_in, c_out, false), weight, bias, products)
    }

    /// The same convolution applied to the input upsampled 2× (nearest neighbour), as in
    /// TAESD's `Upsample → conv`, computed on the input as it is: each sub-pixel phase `(py,
    /// px)` of the output is a 3×3 convolution of the input whose taps are the original taps
    /// that land on the same input pixel, summed ([`PHASE_TAPS`]). The input is transformed
    /// once per tile for all four phases (a quarter of the transforms of convolving the
    /// upsampled activation), and that 4× larger activation is never made. Same products.
    pub fn upsampled(
        c_in: usize,
        c_out: usize,
        weight: &[f32],
        bias: Option<Vec<f32>>,
        products: Products,
    ) -> Self {
        Self::build((c_in, c_out, true), weight, bias, products)
    }

    /// Transforms the kernel of every phase (one without upsampling, where each tap reads its
    /// own offset) into `U`.
    fn build(
        (c_in, c_out, upsample): (usize, usize, bool),
        weight: &[f32],
        bias: Option<Vec<f32>>,
        products: Products,
    ) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "conv weight size");
        if let Some(bias) = &bias {
            assert_eq!(bias.len(), c_out, "conv bias size");
        }
        // The taps along one axis that read input offset a (−1, 0, +1), per phase.
        let taps = |phase: usize| -> [&[usize]; 3] {
            if upsample {
                PHASE_TAPS[phase]
            } else {
                [&[0], &[1], &[2]]
            }
        };
        let kernel = |phase: usize, co: usize, ci: usize| -> [f64; 9] {
            let g = &weight[(co * c_in + ci) * 9..][..9];
            let (rows, cols) = (taps(phase / 2), taps(phase % 2));
            std::array::from_fn(|k| {
                rows[k / 3]
                    .iter()
                    .flat_map(|&ky| cols[k % 3].iter().map(move |&kx| f64::from(g[ky * 3 + kx])))
                    .sum()
            })
        };
        let phases = if upsample { 4 } else { 1 };
        let rows = phases * c_out;
        let mut u = vec![0.0; POSITIONS * rows * c_in];
        for phase in 0..phases {
            for co in 0..c_out {
                let row = phase * c_out + co;
                for ci in 0..c_in {
                    let g = kernel(phase, co, ci);
                    // t = G g (6×3), then u = t Gᵀ (6×6).
                    let mut t = [[0.0f64; 3]; ALPHA];
                    for (i, t) in t.iter_mut().enumerate() {
                        for (j, v) in t.iter_mut().enumerate() {
                            *v = (0..3).map(|k| G[i][k] * g[k * 3 + j]).sum();
                        }
                    }
                    for i in 0..ALPHA {
                        for j in 0..ALPHA {
                            let v: f64 = (0..3).map(|k| t[i][k] * G[j][k]).sum();
                            u[((i * ALPHA + j) * rows + row) * c_in + ci] = v as f32;
                        }
                    }
                }
            }
        }
        Self {
            c_in,
            c_out,
            upsample,
            u: PositionWeights::new(POSITIONS, rows, c_in, u, products),
            bias,
        }
    }

    /// Output pixels per input pixel along each axis.
    fn scale(&self) -> usize {
        if self.upsample {
            2
        } else {
            1
        }
    }

    /// Rows of `U` and `M`: output channels times sub-pixel phases.
    fn u_rows(&self) -> usize {
        self.scale() * self.scale() * self.c_out
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Convolves `input`, then applies the epilogue; borders of the result are zero.
    pub fn forward(&self, input: &Padded, epilogue: Epilogue) -> Padded {
        self.forward_with(input, epilogue, Isa::active())
    }

    /// [`Self::forward`] with the kernels of instruction-set level `isa`, which the CPU must
    /// have (tests check every level it has).
    fn forward_with(&self, input: &Padded, epilogue: Epilogue, isa: Isa) -> Padded {
        assert_eq!(input.channels, self.c_in, "conv input channels");
        let (batch, height, width) = (input.batch, input.height, input.width);
        let scale = self.scale();
        if let Some(r) = epilogue.residual {
            assert_eq!(
                (r.channels, r.batch, r.height, r.width),
                (self.c_out, batch, scale * height, scale * width),
                "residual shape"
            );
        }
        let mut out = Padded::for_overwrite(self.c_out, batch, scale * height, scale * width);
        if height == 0 || width == 0 || batch == 0 {
            return out;
        }
        let geom = Geometry {
            height,
            th: height.div_ceil(TILE),
            tw: width.div_ceil(TILE),
        };
        let th = geom.th;
        let parts = out.rows_by_thread(batch * th, |b, y| b * th + y / (scale * TILE));
        super::run_parts(parts, |(range, rows)| {
            self.tile_rows(input, rows, range, geom, epilogue, isa)
        });
        out
    }

    /// Computes tile rows `range` (of the flattened batch) into `rows`: the interior output rows
    /// of those tiles, `c_out` groups of them in (b, y) order, with the build of the transforms
    /// for `isa`.
    fn tile_rows(
        &self,
        input: &Padded,
        rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
        isa: Isa,
    ) {
        assert!(
            isa <= Isa::detected(),
            "{isa} kernels on a CPU without {isa}"
        );
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: each build needs only its level's features, which the CPU has (above).
            Isa::Avx512 | Isa::Avx512Bf16 => {
                unsafe { self.tile_rows_avx512(input, rows, range, geom, epilogue, isa) };
                return;
            }
            Isa::Avx2 => {
                unsafe { self.tile_rows_avx2(input, rows, range, geom, epilogue) };
                return;
            }
            Isa::Portable => {}
        }
        self.tile_rows_generic(input, rows, range, geom, epilogue, isa);
    }

    /// [`Self::tile_rows_generic`] compiled for AVX2 (the transforms vectorize 8 wide).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_rows_avx2(
        &self,
        input: &Padded,
        rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
    ) {
        self.tile_rows_generic(input, rows, range, geom, epilogue, Isa::Avx2);
    }

    /// [`Self::tile_rows_generic`] compiled for AVX-512 (16 wide, masked tails).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
    unsafe fn tile_rows_avx512(
        &self,
        input: &Padded,
        rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
        isa: Isa,
    ) {
        self.tile_rows_generic(input, rows, range, geom, epilogue, isa);
    }

    #[inline(always)]
    fn tile_rows_generic(
        &self,
        input: &Padded,
        mut rows: Vec<&mut [f32]>,
        range: Range<usize>,
        geom: Geometry,
        epilogue: Epilogue,
        isa: Isa,
    ) {
        let (tw, scale) = (geom.tw, self.scale());
        // Index of each tile row's first output row within one channel's group.
        let mut first_row = Vec::with_capacity(range.len() + 1);
        let mut n = 0;
        for r in range.clone() {
            first_row.push(n);
            n += scale * geom.rows_of(r).2;
        }
        assert_eq!(rows.len(), n * self.c_out, "output rows of this thread");
        let per_chunk = (TILES_PER_CHUNK / tw).max(1);
        let max_tiles = per_chunk * tw;
        let mut v = pool::take_dirty(POSITIONS * self.c_in * max_tiles);
        let mut m = pool::take_dirty(POSITIONS * self.u_rows() * max_tiles);
        let mut scratch = Scratch::new(tw, isa, self.upsample);
        let mut start = range.start;
        while start < range.end {
            let chunk = start..(start + per_chunk).min(range.end);
            let tiles = chunk.len() * tw;
            for ci in 0..self.c_in {
                for (k, r) in chunk.clone().enumerate() {
                    let (b, y0, _) = geom.rows_of(r);
                    let offset = ci * tiles + k * tw;
                    let ahead = (ci + 1 < self.c_in).then_some(ci + 1);
                    scratch.input_tiles(
                        isa,
                        input,
                        (ci, b, y0),
                        ahead,
                        &mut v,
                        (self.c_in * tiles, offset),
                    );
                }
            }
            self.u.multiply(isa, &v, tiles, &mut m);
            for co in 0..self.c_out {
                let bias = self.bias.as_ref().map_or(0.0, |b| b[co]);
                for (k, r) in chunk.clone().enumerate() {
                    let (b, y0, count) = geom.rows_of(r);
                    let count = scale * count;
                    let local = co * n + first_row[r - range.start];
                    // This tile row's rows of channel co, and those of co + 1, which the
                    // epilogue prefetches as it goes.
                    let (current, later) = rows[local..].split_at_mut(count);
                    let next = (co + 1 < self.c_out).then(|| &later[n - count..n]);
                    let block = |phase: usize| (phase * self.c_out + co) * tiles + k * tw;
                    let sources = if self.upsample {
                        Sources::Upsampled([[block(0), block(1)], [block(2), block(3)]])
                    } else {
                        Sources::Plain(block(0))
                    };
                    scratch.output_tiles(
                        isa,
                        (&m, self.u_rows() * tiles, sources),
                        (current, next),
                        (co, b, scale * y0),
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
    /// Row transform of the output: `[6][4][tw]` (below AVX-512; `avx512::output_rows` keeps
    /// the output side in registers).
    half: Vec<Vec<f32>>,
    /// Both transforms of the output: `[4 phases][4 rows][tw]` (below AVX-512).
    full: Vec<Vec<f32>>,
    /// One output row before the epilogue, `4·tw` long (below AVX-512).
    line: Vec<f32>,
    /// An upsampling convolution's output rows of sub-pixel column phase 0, `[4][4·tw]`, and
    /// one whole output row, `8·tw` (below AVX-512).
    even: Vec<Vec<f32>>,
    wide: Vec<f32>,
    /// A zero row standing for input rows past the bottom border.
    zeros: Vec<f32>,
}

impl Scratch {
    /// For tile rows of `tw` tiles with the kernels of `isa`: the output side's rows only where
    /// it runs through memory (below AVX-512), and those of the sub-pixel phases only for an
    /// upsampling convolution.
    fn new(tw: usize, isa: Isa, upsample: bool) -> Self {
        let output_rows = if cfg!(target_arch = "x86_64") && isa >= Isa::Avx512 {
            0
        } else {
            tw
        };
        let phase_rows = if upsample { output_rows } else { 0 };
        Self {
            tw,
            cols: std::array::from_fn(|_| vec![0.0; TILE * (tw + 1)]),
            phase: std::array::from_fn(|_| vec![0.0; tw + 1]),
            half: vec![vec![0.0; output_rows]; ALPHA * TILE],
            full: vec![vec![0.0; output_rows]; TILE * TILE],
            line: vec![0.0; TILE * output_rows],
            even: vec![vec![0.0; TILE * phase_rows]; TILE],
            wide: vec![0.0; 2 * TILE * phase_rows],
            zeros: vec![0.0; TILE * (tw + 1)],
        }
    }

    /// Transforms the tiles of one tile row (picture `b`, output rows from `y0`) of channel
    /// `ci`: `v[p·stride + offset + tx] = (Bᵀ d B)[p]` of tile `tx`.
    #[inline(always)]
    fn input_tiles(
        &mut self,
        isa: Isa,
        input: &Padded,
        (ci, b, y0): (usize, usize, usize),
        ahead: Option<usize>,
        v: &mut [f32],
        (stride, offset): (usize, usize),
    ) {
        let width = input.width + 2;
        let zeros = &self.zeros[..width];
        // Padded rows y0 .. y0 + 6; those past the bottom border read as zero.
        let row = |c: usize, s: usize| -> &[f32] {
            if y0 + s < input.height + 2 {
                let start = input.index(c, b, y0 + s, 0);
                &input.data[start..start + width]
            } else {
                zeros
            }
        };
        let d: [&[f32]; ALPHA] = std::array::from_fn(|s| row(ci, s));
        let ahead = ahead.map(|c| -> [&[f32]; ALPHA] { std::array::from_fn(|s| row(c, s)) });
        {
            let [c0, c1, c2, c3, c4, c5] = &mut self.cols;
            bt(
                isa,
                d,
                ahead,
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
            deinterleave4(isa, &self.cols[i], [p0, p1, p2, p3]);
            let [p0, p1, p2, p3] = &self.phase;
            let src = [&p0[..], &p1[..], &p2[..], &p3[..], &p0[1..], &p1[1..]];
            let base = i * ALPHA * stride + offset;
            let (o0, rest) = v[base..].split_at_mut(stride);
            let (o1, rest) = rest.split_at_mut(stride);
            let (o2, rest) = rest.split_at_mut(stride);
            let (o3, rest) = rest.split_at_mut(stride);
            let (o4, rest) = rest.split_at_mut(stride);
            bt(
                isa,
                src,
                None,
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
    /// `y0`) from `m[p·stride + offset + tx]`, `offset` given by `sources`, into `rows` (its
    /// 1–4 interior output rows, 2–8 for an upsampling convolution), adding `bias` and the
    /// residual, then the ReLU when asked; `next`, the same rows of channel `co + 1` when
    /// there is one, are prefetched (with that channel's residual) as it goes.
    #[inline(always)]
    fn output_tiles(
        &mut self,
        isa: Isa,
        (m, stride, sources): (&[f32], usize, Sources),
        (rows, next): (&mut [&mut [f32]], Option<&[&mut [f32]]>),
        (co, b, y0): (usize, usize, usize),
        bias: f32,
        epilogue: Epilogue,
    ) {
        let width = rows.first().map_or(0, |row| row.len());
        let residual_row = |c: usize, dy: usize| {
            epilogue.residual.map(|r| {
                let start = r.index(c, b, y0 + dy + 1, 1);
                &r.data[start..start + width]
            })
        };
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx512 {
            let residual: [Option<&[f32]>; 2 * TILE] =
                std::array::from_fn(|dy| (dy < rows.len()).then(|| residual_row(co, dy)).flatten());
            let ahead: [Option<Ahead>; 2 * TILE] = std::array::from_fn(|dy| {
                next.filter(|next| dy < next.len())
                    .map(|next| (&*next[dy], residual_row(co + 1, dy)))
            });
            // SAFETY: `isa` is at most what the CPU has (`tile_rows`).
            unsafe {
                avx512::output_rows(
                    (m, stride, sources),
                    rows,
                    residual,
                    (bias, epilogue.relu),
                    ahead,
                )
            };
            return;
        }
        // Output row dy of the next channel, and its residual row, for the epilogue to prefetch.
        let ahead_row = |dy: usize| next.map(|next| (&*next[dy], residual_row(co + 1, dy)));
        // The epilogue is called inline in each arm, not through a shared closure: a closure
        // called from two places stays out of line, compiled without the enclosing build's
        // instruction set (the epilogue ran 4 wide under AVX2).
        match sources {
            Sources::Plain(offset) => {
                self.phase_rows(isa, m, stride, offset);
                for (dy, row) in rows.iter_mut().enumerate() {
                    let (residual, ahead) = (residual_row(co, dy), ahead_row(dy));
                    #[cfg(target_arch = "x86_64")]
                    if isa >= Isa::Avx2 {
                        let phases = [0, 1, 2, 3].map(|k| &self.full[k * TILE + dy][..]);
                        // SAFETY: `isa` is at most what the CPU has (`tile_rows`).
                        unsafe {
                            avx2::output_row(phases, row, residual, (bias, epilogue.relu), ahead)
                        };
                        continue;
                    }
                    self.output_line(dy);
                    let line = &self.line[..width];
                    epilogue_row(row, line, residual, (bias, epilogue.relu), ahead);
                }
            }
            Sources::Upsampled(offsets) => {
                let low = width.div_ceil(2);
                for (py, [even, odd]) in offsets.into_iter().enumerate() {
                    self.phase_rows(isa, m, stride, even);
                    for dy in 0..TILE {
                        self.output_line(dy);
                        self.even[dy][..low].copy_from_slice(&self.line[..low]);
                    }
                    self.phase_rows(isa, m, stride, odd);
                    for (dy, row) in rows.iter_mut().skip(py).step_by(2).enumerate() {
                        self.output_line(dy);
                        let pairs = self.wide.chunks_exact_mut(2);
                        for ((pair, &a), &b) in pairs.zip(&self.even[dy][..low]).zip(&self.line) {
                            pair.copy_from_slice(&[a, b]);
                        }
                        let y = 2 * dy + py;
                        epilogue_row(
                            row,
                            &self.wide[..width],
                            residual_row(co, y),
                            (bias, epilogue.relu),
                            ahead_row(y),
                        );
                    }
                }
            }
        }
    }

    /// Both `Aᵀ` passes of one block of tiles, `m[p·stride + offset + tx]`, into `full`.
    #[inline(always)]
    fn phase_rows(&mut self, isa: Isa, m: &[f32], stride: usize, offset: usize) {
        let tw = self.tw;
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: `isa` is at most what the CPU has (`tile_rows`).
            unsafe { avx2::phase_rows(m, (stride, offset), tw, &mut self.half, &mut self.full) };
            return;
        }
        let _ = isa;
        for i in 0..ALPHA {
            let src: [&[f32]; ALPHA] =
                std::array::from_fn(|j| &m[(i * ALPHA + j) * stride + offset..][..tw]);
            let [h0, h1, h2, h3] = &mut self.half[i * TILE..(i + 1) * TILE] else {
                unreachable!("four rows")
            };
            at_portable(src, [h0, h1, h2, h3]);
        }
        // self.full[k·4 + dy][tx] = output (dy, 4tx + k).
        for k in 0..TILE {
            let src: [&[f32]; ALPHA] = std::array::from_fn(|i| &self.half[i * TILE + k][..]);
            let [y0, y1, y2, y3] = &mut self.full[k * TILE..(k + 1) * TILE] else {
                unreachable!("four rows")
            };
            at_portable(src, [y0, y1, y2, y3]);
        }
    }

    /// Output row `dy` of the tiles in `full`, phases interleaved, into `line`.
    #[inline(always)]
    fn output_line(&mut self, dy: usize) {
        let tw = self.tw;
        let [f0, f1, f2, f3] = [0, 1, 2, 3].map(|k| &self.full[k * TILE + dy][..tw]);
        interleave4([f0, f1, f2, f3], &mut self.line);
    }
}

/// The stretch of the next output channel's row and of its residual row that the epilogue
/// prefetches as it writes the same stretch of this channel's.
type Ahead<'a> = (&'a [f32], Option<&'a [f32]>);

/// `out = line + bias (+ residual)`, then the ReLU when `relu`, 16 values at a time; the same
/// stretch of the next channel's output row (for writing) and residual row is prefetched at
/// each step.
#[inline(always)]
fn epilogue_row(
    out: &mut [f32],
    line: &[f32],
    residual: Option<&[f32]>,
    (bias, relu): (f32, bool),
    ahead: Option<Ahead>,
) {
    const STEP: usize = 16;
    let width = out.len();
    let (line, residual) = (&line[..width], residual.map(|r| &r[..width]));
    let mut x = 0;
    while x < width {
        let end = (x + STEP).min(width);
        if let Some((next_out, next_residual)) = ahead {
            // Rows of one layer all have `width` values.
            super::prefetch(&next_out[x..=x], true);
            if let Some(r) = next_residual {
                super::prefetch(&r[x..=x], false);
            }
        }
        let (out, line) = (&mut out[x..end], &line[x..end]);
        match (residual.map(|r| &r[x..end]), relu) {
            (Some(res), true) => {
                for ((out, &v), &r) in out.iter_mut().zip(line).zip(res) {
                    *out = (v + bias + r).max(0.0);
                }
            }
            (Some(res), false) => {
                for ((out, &v), &r) in out.iter_mut().zip(line).zip(res) {
                    *out = v + bias + r;
                }
            }
            (None, true) => {
                for (out, &v) in out.iter_mut().zip(line) {
                    *out = (v + bias).max(0.0);
                }
            }
            (None, false) => {
                for (out, &v) in out.iter_mut().zip(line) {
                    *out = v + bias;
                }
            }
        }
        x = end;
    }
}

/// `out = Bᵀ d` along the six inputs, element-wise over equal-length slices, with the
/// instructions of `isa`; rows `ahead`, the next ones to transform, are prefetched as it goes.
#[inline(always)]
fn bt(isa: Isa, d: [&[f32]; ALPHA], ahead: Option<[&[f32]; ALPHA]>, out: [&mut [f32]; ALPHA]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: `isa` is at most what the CPU has (`tile_rows`).
        unsafe { avx512::bt(d, ahead, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as above.
        unsafe { avx2::bt(d, ahead, out) };
        return;
    }
    let _ = isa;
    if let Some(ahead) = ahead {
        for row in ahead {
            super::prefetch(row, false);
        }
    }
    bt_portable(d, out);
}

/// `out[k][t] = src[4t + k]` for `t < out[k].len()` (the four phases of a row of tiles).
#[inline(always)]
fn deinterleave4(isa: Isa, src: &[f32], out: [&mut [f32]; TILE]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: as in `bt`.
        unsafe { avx512::deinterleave4(src, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: as above.
        unsafe { avx2::deinterleave4(src, out) };
        return;
    }
    let _ = isa;
    deinterleave4_portable(src, out);
}

/// [`deinterleave4`] in plain moves.
#[inline(always)]
fn deinterleave4_portable(src: &[f32], out: [&mut [f32]; TILE]) {
    let [p0, p1, p2, p3] = out;
    for ((((quad, a), b), c), d) in src
        .chunks_exact(TILE)
        .zip(p0.iter_mut())
        .zip(p1.iter_mut())
        .zip(p2.iter_mut())
        .zip(p3.iter_mut())
    {
        (*a, *b, *c, *d) = (quad[0], quad[1], quad[2], quad[3]);
    }
}

/// `dst[4t + k] = src[k][t]` for `t < src[0].len()` (the inverse of [`deinterleave4`]; the
/// AVX-512 build does it in registers, in `avx512::output_rows`).
#[inline(always)]
fn interleave4(src: [&[f32]; TILE], dst: &mut [f32]) {
    let [f0, f1, f2, f3] = src;
    for ((((quad, &a), &b), &c), &d) in dst.chunks_exact_mut(TILE).zip(f0).zip(f1).zip(f2).zip(f3) {
        quad.copy_from_slice(&[a, b, c, d]);
    }
}

/// [`bt`] in plain arithmetic (the compiler vectorizes it for the enclosing build).
#[inline(always)]
fn bt_portable(d: [&[f32]; ALPHA], out: [&mut [f32]; ALPHA]) {
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

/// `out = Aᵀ m` along the six inputs, element-wise over equal-length slices (AVX2 has its own,
/// `avx2::phase_rows`; the AVX-512 build does it in registers, in `avx512::output_rows`).
#[inline(always)]
fn at_portable(m: [&[f32]; ALPHA], out: [&mut [f32]; TILE]) {
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

/// The transforms' element-wise pieces with AVX2 instructions, 8 lanes: [`bt`] prefetching the
/// next channel's rows a line at a time as it goes (the portable build prefetched them all up
/// front, and its loads of the rows carried most of its time), [`deinterleave4`] as in-lane
/// transposes and one cross-lane permute per phase instead of scalar moves, [`phase_rows`]
/// (the output's `Aᵀ` passes), and [`output_row`]: the phase interleave and the epilogue of one
/// output row in registers. The
/// compiler's own vectorization of the portable loops left rows of 16–32 tiles to its scalar
/// remainder loops. Tails (rows are `4·tw + 2` and `tw + 1` long) go through the portable code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{ALPHA, TILE};

    const LANES: usize = 8;

    /// [`super::bt`]. Needs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bt(
        d: [&[f32]; ALPHA],
        ahead: Option<[&[f32]; ALPHA]>,
        mut out: [&mut [f32]; ALPHA],
    ) {
        let n = out[0].len();
        assert!(d.iter().all(|d| d.len() >= n) && out.iter().all(|o| o.len() >= n));
        assert!(ahead.is_none_or(|a| a.iter().all(|a| a.len() >= n)));
        let full = n - n % LANES;
        {
            let dp = d.map(<[f32]>::as_ptr);
            let ap = ahead.map(|a| a.map(<[f32]>::as_ptr));
            let o = out.each_mut().map(|o| o.as_mut_ptr());
            let (two, four, five) = (
                _mm256_set1_ps(2.0),
                _mm256_set1_ps(4.0),
                _mm256_set1_ps(5.0),
            );
            let mut x = 0;
            while x < full {
                let [a0, a1, a2, a3, a4, a5] = dp.map(|d| _mm256_loadu_ps(d.add(x)));
                if let Some(ahead) = ap {
                    // One 64-byte line of each next row per 16 values.
                    if x % 16 == 0 {
                        for row in ahead {
                            _mm_prefetch::<_MM_HINT_T0>(row.add(x).cast());
                        }
                    }
                }
                let store = |i: usize, v: __m256| _mm256_storeu_ps(o[i].add(x), v);
                store(0, _mm256_fmadd_ps(four, a0, _mm256_fnmadd_ps(five, a2, a4)));
                store(
                    1,
                    _mm256_fnmadd_ps(four, _mm256_add_ps(a1, a2), _mm256_add_ps(a3, a4)),
                );
                store(
                    2,
                    _mm256_fmadd_ps(four, _mm256_sub_ps(a1, a2), _mm256_sub_ps(a4, a3)),
                );
                let a42 = _mm256_sub_ps(a4, a2);
                store(3, _mm256_fmadd_ps(two, _mm256_sub_ps(a3, a1), a42));
                store(4, _mm256_fmadd_ps(two, _mm256_sub_ps(a1, a3), a42));
                store(5, _mm256_fmadd_ps(four, a1, _mm256_fnmadd_ps(five, a3, a5)));
                x += LANES;
            }
        }
        if full < n {
            super::bt_portable(d.map(|d| &d[full..n]), out.map(|o| &mut o[full..n]));
        }
    }

    /// [`super::Scratch::phase_rows`]: both `Aᵀ` passes of one block of tiles (M's 36 rows of
    /// `tw` values from `m[offset]`, `stride` apart) into `half`, `[6][4]` rows, then `full`,
    /// `[4][4]`, in one call: at 8–16 tiles a row, ten calls' set-up cost as much as their
    /// arithmetic. Needs AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn phase_rows(
        m: &[f32],
        (stride, offset): (usize, usize),
        tw: usize,
        half: &mut [Vec<f32>],
        full: &mut [Vec<f32>],
    ) {
        assert!(half.len() == ALPHA * TILE && full.len() == TILE * TILE);
        assert!(half.iter().chain(full.iter()).all(|row| row.len() >= tw));
        if tw == 0 {
            return;
        }
        assert!(m.len() >= (ALPHA * ALPHA - 1) * stride + offset + tw);
        let m = m.as_ptr().add(offset);
        let h: [*mut f32; ALPHA * TILE] = std::array::from_fn(|r| half[r].as_mut_ptr());
        let f: [*mut f32; TILE * TILE] = std::array::from_fn(|r| full[r].as_mut_ptr());
        for i in 0..ALPHA {
            let src = std::array::from_fn(|j| m.add((i * ALPHA + j) * stride));
            at_rows(src, std::array::from_fn(|k| h[i * TILE + k]), tw);
        }
        // full[k·4 + dy][t] = output (dy, 4t + k).
        for k in 0..TILE {
            let src = std::array::from_fn(|i| h[i * TILE + k].cast_const());
            at_rows(src, std::array::from_fn(|dy| f[k * TILE + dy]), tw);
        }
    }

    /// `out = Aᵀ m` over `n` values of six rows into four. Callers guarantee AVX2 and FMA, rows
    /// of `n` values, and outputs that overlap neither each other nor an input.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn at_rows(m: [*const f32; ALPHA], o: [*mut f32; TILE], n: usize) {
        let (two, four, eight) = (
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(4.0),
            _mm256_set1_ps(8.0),
        );
        let mut x = 0;
        while x + LANES <= n {
            let [m0, m1, m2, m3, m4, m5] = m.map(|m| _mm256_loadu_ps(m.add(x)));
            let (p12, d12) = (_mm256_add_ps(m1, m2), _mm256_sub_ps(m1, m2));
            let (p34, d34) = (_mm256_add_ps(m3, m4), _mm256_sub_ps(m3, m4));
            let store = |i: usize, v: __m256| _mm256_storeu_ps(o[i].add(x), v);
            store(0, _mm256_add_ps(_mm256_add_ps(m0, p12), p34));
            store(1, _mm256_fmadd_ps(two, d34, d12));
            store(2, _mm256_fmadd_ps(four, p34, p12));
            store(3, _mm256_fmadd_ps(eight, d34, _mm256_add_ps(d12, m5)));
            x += LANES;
        }
        // The tail in place rather than through `at_portable`: calling it kept this function
        // out of line, ten calls per block again.
        while x < n {
            let [m0, m1, m2, m3, m4, m5] = m.map(|m| m.add(x).read());
            let (p12, d12) = (m1 + m2, m1 - m2);
            let (p34, d34) = (m3 + m4, m3 - m4);
            let values = [
                m0 + p12 + p34,
                d12 + 2.0 * d34,
                p12 + 4.0 * p34,
                d12 + 8.0 * d34 + m5,
            ];
            for (o, v) in o.iter().zip(values) {
                o.add(x).write(v);
            }
            x += 1;
        }
    }

    /// One output row from its four phases (`phases[k][t]` is the row's value at `4t + k`):
    /// interleaved in registers, then [`super::epilogue_row`]'s `+ bias (+ residual)` and ReLU,
    /// stored into `out`; one line of the next channel's row and residual is prefetched per 16
    /// values. Needs AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn output_row(
        phases: [&[f32]; TILE],
        out: &mut [f32],
        residual: Option<&[f32]>,
        (bias, relu): (f32, bool),
        ahead: Option<super::Ahead>,
    ) {
        let width = out.len();
        // Whole groups of 8 tiles (32 values); the rest through the portable epilogue.
        let groups = width / (TILE * LANES);
        let done = groups * TILE * LANES;
        assert!(phases.iter().all(|p| p.len() * TILE >= width));
        assert!(residual.is_none_or(|r| r.len() >= width));
        assert!(ahead.is_none_or(|(o, r)| o.len() >= width && r.is_none_or(|r| r.len() >= width)));
        {
            let p = phases.map(<[f32]>::as_ptr);
            let o = out.as_mut_ptr();
            let r = residual.map(<[f32]>::as_ptr);
            let ahead = ahead.map(|(o, r)| (o.as_ptr(), r.map(<[f32]>::as_ptr)));
            let (bias, zero) = (_mm256_set1_ps(bias), _mm256_setzero_ps());
            for g in 0..groups {
                let (t, x) = (g * LANES, g * TILE * LANES);
                if let Some((next_out, next_residual)) = ahead {
                    for line in [x, x + 16] {
                        _mm_prefetch::<_MM_HINT_ET0>(next_out.add(line).cast());
                        if let Some(next_residual) = next_residual {
                            _mm_prefetch::<_MM_HINT_T0>(next_residual.add(line).cast());
                        }
                    }
                }
                let [a, b, c, d] = p.map(|p| _mm256_loadu_ps(p.add(t)));
                // a0 b0 a1 b1 | a4 b4 a5 b5, and so on.
                let (ab_lo, ab_hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (cd_lo, cd_hi) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                let pairs = |x: __m256, y: __m256, hi: bool| {
                    let (x, y) = (_mm256_castps_pd(x), _mm256_castps_pd(y));
                    _mm256_castpd_ps(if hi {
                        _mm256_unpackhi_pd(x, y)
                    } else {
                        _mm256_unpacklo_pd(x, y)
                    })
                };
                // Tiles 0 | 4, 1 | 5, 2 | 6, 3 | 7, four values each.
                let q0 = pairs(ab_lo, cd_lo, false);
                let q1 = pairs(ab_lo, cd_lo, true);
                let q2 = pairs(ab_hi, cd_hi, false);
                let q3 = pairs(ab_hi, cd_hi, true);
                let rows = [
                    _mm256_permute2f128_ps::<0x20>(q0, q1),
                    _mm256_permute2f128_ps::<0x20>(q2, q3),
                    _mm256_permute2f128_ps::<0x31>(q0, q1),
                    _mm256_permute2f128_ps::<0x31>(q2, q3),
                ];
                for (j, v) in rows.into_iter().enumerate() {
                    let at = x + j * LANES;
                    let mut v = _mm256_add_ps(v, bias);
                    if let Some(r) = r {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(at)));
                    }
                    if relu {
                        v = _mm256_max_ps(v, zero);
                    }
                    _mm256_storeu_ps(o.add(at), v);
                }
            }
        }
        if done < width {
            let mut line = [0.0; TILE * LANES];
            let tail = width - done;
            super::interleave4(phases.map(|p| &p[groups * LANES..]), &mut line);
            super::epilogue_row(
                &mut out[done..],
                &line[..tail],
                residual.map(|r| &r[done..width]),
                (bias, relu),
                ahead.map(|(o, r)| (&o[done..width], r.map(|r| &r[done..width]))),
            );
        }
    }

    /// [`super::deinterleave4`]. Needs AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn deinterleave4(src: &[f32], mut out: [&mut [f32]; TILE]) {
        let n = out[0].len();
        assert!(src.len() >= TILE * n && out.iter().all(|o| o.len() >= n));
        let full = n - n % LANES;
        {
            let s = src.as_ptr();
            let o = out.each_mut().map(|o| o.as_mut_ptr());
            // After the in-lane transposes phase k holds tiles 0 2 4 6 | 1 3 5 7.
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let mut t = 0;
            while t < full {
                // Vector j holds tiles 2j (low lane) and 2j + 1 (high lane), 4 values each.
                let [a0, a1, a2, a3] =
                    [0, 1, 2, 3].map(|j| _mm256_loadu_ps(s.add(TILE * t + 8 * j)));
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let phases = [
                    _mm256_castpd_ps(_mm256_unpacklo_pd(
                        _mm256_castps_pd(t0),
                        _mm256_castps_pd(t2),
                    )),
                    _mm256_castpd_ps(_mm256_unpackhi_pd(
                        _mm256_castps_pd(t0),
                        _mm256_castps_pd(t2),
                    )),
                    _mm256_castpd_ps(_mm256_unpacklo_pd(
                        _mm256_castps_pd(t1),
                        _mm256_castps_pd(t3),
                    )),
                    _mm256_castpd_ps(_mm256_unpackhi_pd(
                        _mm256_castps_pd(t1),
                        _mm256_castps_pd(t3),
                    )),
                ];
                for (k, phase) in phases.into_iter().enumerate() {
                    _mm256_storeu_ps(o[k].add(t), _mm256_permutevar8x32_ps(phase, order));
                }
                t += LANES;
            }
        }
        if full < n {
            super::deinterleave4_portable(&src[TILE * full..], out.map(|o| &mut o[full..n]));
        }
    }
}

/// The transforms' element-wise pieces with AVX-512 instructions: 16 lanes, masked tails, and
/// the phase (de)interleaving as two-source permutes instead of scalar moves (the compiler's
/// own vectorization of the portable loops left rows of 16–32 tiles to its scalar remainder).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Ahead, Sources, ALPHA, TILE};
    use crate::engine::kernels::isa::lanes as mask;

    const LANES: usize = 16;

    /// [`super::bt`]. Needs AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bt(
        d: [&[f32]; ALPHA],
        ahead: Option<[&[f32]; ALPHA]>,
        out: [&mut [f32]; ALPHA],
    ) {
        let n = out[0].len();
        assert!(d.iter().all(|d| d.len() >= n) && out.iter().all(|o| o.len() >= n));
        assert!(ahead.is_none_or(|a| a.iter().all(|a| a.len() >= n)));
        let ahead = ahead.map(|a| a.map(<[f32]>::as_ptr));
        let d = d.map(<[f32]>::as_ptr);
        let o = out.map(<[f32]>::as_mut_ptr);
        let (two, four, five) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(5.0),
        );
        let mut x = 0;
        while x < n {
            let k = mask(n - x);
            let [a0, a1, a2, a3, a4, a5] = d.map(|d| _mm512_maskz_loadu_ps(k, d.add(x)));
            if let Some(ahead) = ahead {
                // One cache line of each next row per step, as far along as this step reads.
                for row in ahead {
                    _mm_prefetch::<_MM_HINT_T0>(row.add(x).cast());
                }
            }
            let store = |i: usize, v: __m512| _mm512_mask_storeu_ps(o[i].add(x), k, v);
            store(0, _mm512_fmadd_ps(four, a0, _mm512_fnmadd_ps(five, a2, a4)));
            store(
                1,
                _mm512_fnmadd_ps(four, _mm512_add_ps(a1, a2), _mm512_add_ps(a3, a4)),
            );
            store(
                2,
                _mm512_fmadd_ps(four, _mm512_sub_ps(a1, a2), _mm512_sub_ps(a4, a3)),
            );
            let a42 = _mm512_sub_ps(a4, a2);
            store(3, _mm512_fmadd_ps(two, _mm512_sub_ps(a3, a1), a42));
            store(4, _mm512_fmadd_ps(two, _mm512_sub_ps(a1, a3), a42));
            store(5, _mm512_fmadd_ps(four, a1, _mm512_fnmadd_ps(five, a3, a5)));
            x += LANES;
        }
    }

    /// The 4 × 4 outputs of 16 tiles, `m[p·stride + tx]` for lanes `k`, as `y[dy][j]`: output
    /// row `dy`, values `16·j .. 16·j + 16` of the tiles' 64 columns. A macro so that each use
    /// is compiled in place: as an `#[inline]` function LLVM kept it (and `Aᵀ`) out of line
    /// once it had three callers, passing the 16 vectors through memory.
    macro_rules! tile_values {
        ($m:expr, $stride:expr, $k:expr, $index:expr) => {{
            let (m, stride, k): (*const f32, usize, __mmask16) = ($m, $stride, $k);
            let (two, four, eight) = (
                _mm512_set1_ps(2.0),
                _mm512_set1_ps(4.0),
                _mm512_set1_ps(8.0),
            );
            // Aᵀ m along a tile's six values.
            let at = |[m0, m1, m2, m3, m4, m5]: [__m512; ALPHA]| -> [__m512; TILE] {
                let (p12, d12) = (_mm512_add_ps(m1, m2), _mm512_sub_ps(m1, m2));
                let (p34, d34) = (_mm512_add_ps(m3, m4), _mm512_sub_ps(m3, m4));
                [
                    _mm512_add_ps(_mm512_add_ps(m0, p12), p34),
                    _mm512_fmadd_ps(two, d34, d12),
                    _mm512_fmadd_ps(four, p34, p12),
                    _mm512_add_ps(_mm512_fmadd_ps(eight, d34, d12), m5),
                ]
            };
            // half[i][phase], along the rows; then y[dy][phase] = output (dy, 4·tile + phase),
            // down the columns.
            let half: [[__m512; TILE]; ALPHA] = std::array::from_fn(|i| {
                at(std::array::from_fn(|j| {
                    _mm512_maskz_loadu_ps(k, m.add((i * ALPHA + j) * stride))
                }))
            });
            let mut y = [[_mm512_setzero_ps(); TILE]; TILE];
            for phase in 0..TILE {
                let column = at(std::array::from_fn(|i| half[i][phase]));
                for (y, value) in y.iter_mut().zip(column) {
                    y[phase] = value;
                }
            }
            y.map(|y| interleave(y, $index))
        }};
    }

    /// The output transform, the phase interleave and the epilogue, fused: for 16 tiles at a
    /// time, `Aᵀ` along the rows and down the columns of `m[p·stride + offset + tx]` leaves the
    /// 4 × 4 outputs in registers; each output row's four phases become four vectors of 16
    /// consecutive values, which are stored into `rows[dy]` with the bias, `residual[dy]` and
    /// the ReLU applied. For an upsampling convolution (`rows` are then 2–8 output rows),
    /// row `2·dy + py` interleaves the values of the blocks `[py][0]` and `[py][1]` of
    /// `sources`, its two sub-pixel column phases, into twice as many. `ahead[dy]`, the next
    /// channel's row and residual, are prefetched one line per 16 values. Needs AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_rows(
        (m, stride, sources): (&[f32], usize, Sources),
        rows: &mut [&mut [f32]],
        residual: [Option<&[f32]>; 2 * TILE],
        (bias, relu): (f32, bool),
        ahead: [Option<Ahead>; 2 * TILE],
    ) {
        let Some(width) = rows.first().map(|row| row.len()) else {
            return;
        };
        let (scale, last) = match sources {
            Sources::Plain(offset) => (1, offset),
            Sources::Upsampled(offsets) => (2, offsets.into_iter().flatten().max().unwrap_or(0)),
        };
        assert!(rows.len() <= scale * TILE);
        let tw = width.div_ceil(scale).div_ceil(TILE);
        assert!(m.len() >= (ALPHA * ALPHA - 1) * stride + last + tw);
        assert!(rows.iter().all(|row| row.len() == width));
        assert!(residual.iter().flatten().all(|r| r.len() >= width));
        assert!(ahead
            .iter()
            .flatten()
            .all(|(row, r)| row.len() >= width && r.is_none_or(|r| r.len() >= width)));
        let m = m.as_ptr();
        let epilogue = (_mm512_set1_ps(bias), relu);
        let index = interleave_indices();
        match sources {
            Sources::Plain(offset) => {
                let mut t = 0;
                while t < tw {
                    let y = tile_values!(m.add(offset + t), stride, mask(tw - t), index);
                    for (dy, row) in rows.iter_mut().enumerate() {
                        for (j, v) in y[dy].into_iter().enumerate() {
                            let x = TILE * t + 16 * j;
                            if x >= width {
                                break;
                            }
                            store(row, x, v, (residual[dy], ahead[dy]), epilogue);
                        }
                    }
                    t += LANES;
                }
            }
            Sources::Upsampled(offsets) => {
                let (low, high, ..) = index;
                let mut t = 0;
                while t < tw {
                    let k = mask(tw - t);
                    for (py, [even, odd]) in offsets.into_iter().enumerate() {
                        let a = tile_values!(m.add(even + t), stride, k, index);
                        let b = tile_values!(m.add(odd + t), stride, k, index);
                        for (dy, row) in rows.iter_mut().skip(py).step_by(2).enumerate() {
                            let r = 2 * dy + py;
                            for j in 0..TILE {
                                let x = 2 * (TILE * t + 16 * j);
                                if x >= width {
                                    break;
                                }
                                let (a, b) = (a[dy][j], b[dy][j]);
                                let extra = (residual[r], ahead[r]);
                                store(row, x, _mm512_permutex2var_ps(a, low, b), extra, epilogue);
                                if x + 16 < width {
                                    let v = _mm512_permutex2var_ps(a, high, b);
                                    store(row, x + 16, v, extra, epilogue);
                                }
                            }
                        }
                    }
                    t += LANES;
                }
            }
        }
    }

    /// Stores `v + bias (+ residual)`, then the ReLU when asked, at `row[x..x + 16]` (masked at
    /// the row's end), prefetching the same stretch of the next channel's row and residual.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(
        row: &mut [f32],
        x: usize,
        mut v: __m512,
        (residual, ahead): (Option<&[f32]>, Option<Ahead>),
        (bias, relu): (__m512, bool),
    ) {
        let k = mask(row.len() - x);
        if let Some((next_row, next_residual)) = ahead {
            _mm_prefetch::<_MM_HINT_ET0>(next_row.as_ptr().add(x).cast());
            if let Some(r) = next_residual {
                _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().add(x).cast());
            }
        }
        v = _mm512_add_ps(v, bias);
        if let Some(r) = residual {
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, r.as_ptr().add(x)));
        }
        if relu {
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        }
        _mm512_mask_storeu_ps(row.as_mut_ptr().add(x), k, v);
    }

    /// The permute indices of [`interleave`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn interleave_indices() -> (__m512i, __m512i, __m512i, __m512i) {
        (
            // Pairs of phases, lanes interleaved: [a0 b0 a1 b1 …] for tiles 0–7 and 8–15.
            _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
            _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
            // Then pairs of pairs, 64-bit lanes interleaved: four tiles × four phases per vector.
            _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11),
            _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15),
        )
    }

    /// The four phases of 16 tiles (`f[k]`: lane t holds value 4t + k) as four vectors of 16
    /// consecutive values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn interleave(
        f: [__m512; TILE],
        (low, high, first, second): (__m512i, __m512i, __m512i, __m512i),
    ) -> [__m512; TILE] {
        let [f0, f1, f2, f3] = f;
        let (l01, h01) = (
            _mm512_permutex2var_ps(f0, low, f1),
            _mm512_permutex2var_ps(f0, high, f1),
        );
        let (l23, h23) = (
            _mm512_permutex2var_ps(f2, low, f3),
            _mm512_permutex2var_ps(f2, high, f3),
        );
        [
            (l01, l23, first),
            (l01, l23, second),
            (h01, h23, first),
            (h01, h23, second),
        ]
        .map(|(a, b, index)| {
            _mm512_castpd_ps(_mm512_permutex2var_pd(
                _mm512_castps_pd(a),
                index,
                _mm512_castps_pd(b),
            ))
        })
    }

    /// `idx[lane] = k + 4·(lane mod 8)`: phase k of 8 tiles from a pair of vectors.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn phase_index(k: i32) -> __m512i {
        _mm512_setr_epi32(
            k,
            k + 4,
            k + 8,
            k + 12,
            k + 16,
            k + 20,
            k + 24,
            k + 28,
            k,
            k + 4,
            k + 8,
            k + 12,
            k + 16,
            k + 20,
            k + 24,
            k + 28,
        )
    }

    /// [`super::deinterleave4`]. Needs AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deinterleave4(src: &[f32], out: [&mut [f32]; TILE]) {
        let n = out[0].len();
        assert!(src.len() >= TILE * n && out.iter().all(|o| o.len() >= n));
        let s = src.as_ptr();
        let o = out.map(<[f32]>::as_mut_ptr);
        let index = [0, 1, 2, 3].map(|k| phase_index(k));
        // Vectors past the end are loaded and stored with empty masks (no lane touched); their
        // addresses are only formed, hence `wrapping_add`.
        let mut t = 0;
        while t < n {
            let left = TILE * (n - t);
            // 16 tiles × 4 values; vector j holds tiles 4j..4j+4.
            let a: [__m512; 4] = std::array::from_fn(|j| {
                _mm512_maskz_loadu_ps(
                    mask(left.saturating_sub(16 * j)),
                    s.wrapping_add(TILE * t + 16 * j),
                )
            });
            for (k, index) in index.iter().enumerate() {
                let low = _mm512_permutex2var_ps(a[0], *index, a[1]);
                let high = _mm512_permutex2var_ps(a[2], *index, a[3]);
                let phase = _mm512_mask_blend_ps(0xff00, low, high);
                _mm512_mask_storeu_ps(o[k].add(t), mask(n - t), phase);
            }
            t += LANES;
        }
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
        let conv = Winograd3x3::new(c_in, c_out, &weight, bias, Products::F32);
        // Every level the CPU has.
        for isa in Isa::available() {
            let fast = conv.forward_with(&input, epilogue, isa);
            assert_eq!(fast.data.len(), direct.data.len());
            for (i, (a, b)) in fast.data.iter().zip(&direct.data).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{isa}, {i}: {a} vs {b}"
                );
            }
        }
    }

    /// The upsampling convolution against the direct convolution of the upsampled input.
    fn check_upsampled(
        c_in: usize,
        c_out: usize,
        batch: usize,
        h: usize,
        w: usize,
        residual: bool,
    ) {
        let weight = values(c_out * c_in * 9, 0.9);
        let bias = Some(values(c_out, 0.2));
        let input = Padded::from_nchw(&values(batch * c_in * h * w, 1.3), batch, c_in, h, w);
        let (h2, w2) = (2 * h, 2 * w);
        let res = Padded::from_nchw(&values(batch * c_out * h2 * w2, 0.4), batch, c_out, h2, w2);
        let epilogue = Epilogue {
            relu: residual,
            residual: residual.then_some(&res),
        };
        let direct =
            Conv3x3::new(c_in, c_out, &weight, bias.clone()).forward(&input.upsample2(), epilogue);
        let conv = Winograd3x3::upsampled(c_in, c_out, &weight, bias, Products::F32);
        for isa in Isa::available() {
            let fast = conv.forward_with(&input, epilogue, isa);
            assert_eq!(
                (fast.channels, fast.batch, fast.height, fast.width),
                (c_out, batch, h2, w2)
            );
            for (i, (a, b)) in fast.data.iter().zip(&direct.data).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{isa}, {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn upsampling_matches_direct_convolution_of_the_upsampled_input() {
        check_upsampled(5, 7, 3, 6, 9, false);
        check_upsampled(3, 2, 1, 13, 5, true);
        check_upsampled(4, 8, 2, 1, 1, true);
        check_upsampled(64, 64, 1, 8, 40, false);
        // Rows of more tiles than a chunk holds.
        check_upsampled(3, 4, 1, 5, 4 * 110 + 3, true);
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
    fn matches_direct_convolution_on_wide_ragged_rows() {
        // Rows of more tiles than a chunk holds (96), ending in a ragged tile.
        check(8, 5, 2, 6, 4 * 150 + 3, true);
        check(3, 4, 1, 5, 4 * 300 + 1, false);
    }

    #[test]
    fn borders_stay_zero() {
        let conv = Winograd3x3::new(1, 1, &[1.0; 9], Some(vec![5.0]), Products::F32);
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
