//! The Winograd-domain products of a [`super::winograd`] convolution: for each of its 36
//! transform positions `p`, `M[p] = U[p] · V[p]`, `[c_out × c_in] · [c_in × tiles]`. The
//! encoder's stride-2 convolutions use the same kernels for their im2col product (one
//! position, `c_in` = 9 × input channels, a column per output pixel).
//!
//! `V[p]` arrives row-major (`c_in` rows of `tiles` contiguous values), which is already the
//! layout a microkernel that vectorizes across tiles wants, so the AVX-512 kernels read it in
//! place: a block of 4 output channels × 96 tiles lives in 24 of the 32 zmm registers, and each
//! input channel costs 6 loads, 4 broadcasts and 24 fused multiply-adds. Three builds:
//!
//! - [`Isa::Portable`] / [`Isa::Avx2`]: the `gemm` crate ([`super::conv::matmul`]), which packs
//!   both operands on every call;
//! - [`Isa::Avx512`]: the f32 microkernel above;
//! - [`Isa::Avx512Bf16`] with [`Products::Bf16`] (`precision = "bf16"`): the same blocking
//!   with `vdpbf16ps`, which multiplies pairs of bf16 values and adds both products into one
//!   f32 lane: half the instructions for the same products. The weights are rounded to bf16 once at load, pairs of input channels
//!   interleaved (`[p][c_out][c_in/2]`, the even channel in the low half); `V[p]` is rounded
//!   and interleaved the same way into a small buffer just before its product. Sums stay f32.
//!   Rounding both operands to 8 significant bits costs more than F(4,3)'s transforms can
//!   afford: the decoder lands at ≈34 dB PSNR against `exact` on real latents, below the
//!   45 dB bound of `precision = "fast"`, so bf16 is its own, opt-in, precision.

use super::conv::{matmul, Matmul};
use super::isa::Isa;

/// The arithmetic of the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// f32 multiply-adds.
    F32,
    /// bf16 products summed in f32 where the CPU has AVX512_BF16 (and the level is not capped
    /// below it); f32 elsewhere.
    Bf16,
}

impl Products {
    /// The instruction-set level these products run at on this CPU: bf16 needs
    /// [`Isa::Avx512Bf16`]; f32 products go no further than [`Isa::Avx512`].
    pub fn level(self) -> Isa {
        match self {
            Products::Bf16 => Isa::active(),
            Products::F32 => Isa::active().min(Isa::Avx512),
        }
    }
}

/// The transformed weights `U`, in the forms the products need.
#[derive(Debug, Clone)]
pub(crate) struct PositionWeights {
    /// Transform positions: 36 for F(4,3), 1 for the stride-2 im2col product.
    positions: usize,
    c_out: usize,
    c_in: usize,
    /// `[positions][c_out][c_in]`, f32.
    f32: Vec<f32>,
    /// `[positions][c_out][c_in.div_ceil(2)]` pairs of bf16 (even input channel in the low 16
    /// bits); made for [`Products::Bf16`] where the CPU has AVX512_BF16.
    bf16: Option<Vec<u32>>,
}

impl PositionWeights {
    /// From `u = [positions][c_out][c_in]`.
    pub(crate) fn new(
        positions: usize,
        c_out: usize,
        c_in: usize,
        u: Vec<f32>,
        products: Products,
    ) -> Self {
        assert_eq!(u.len(), positions * c_out * c_in, "transformed weight size");
        let bf16 = (products == Products::Bf16 && Isa::detected() >= Isa::Avx512Bf16)
            .then(|| pack_bf16_pairs(&u, c_in));
        Self {
            positions,
            c_out,
            c_in,
            f32: u,
            bf16,
        }
    }

    /// `m[p][co][t] = Σ_ci U[p][co][ci] · v[p][ci][t]` for every position, `t < tiles`, with
    /// the best build `isa` allows (bf16 only for weights made with [`Products::Bf16`]).
    pub(crate) fn multiply(&self, isa: Isa, v: &[f32], tiles: usize, m: &mut [f32]) {
        let (positions, c_out, c_in) = (self.positions, self.c_out, self.c_in);
        assert!(
            isa <= Isa::detected(),
            "{isa} products on a CPU without {isa}"
        );
        assert!(v.len() >= positions * c_in * tiles, "products: V too short");
        assert!(
            m.len() >= positions * c_out * tiles,
            "products: M too short"
        );
        if tiles == 0 || c_out == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx512Bf16 {
            if let Some(u) = &self.bf16 {
                // SAFETY: the level is only reached where the CPU has AVX-512 F/BW and
                // AVX512_BF16 (`Isa::detected`); the asserts above bound every access.
                unsafe { x86::bf16_products(u, (positions, c_out, c_in, tiles), v, m) };
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx512 {
            // SAFETY: as above, with AVX-512 F.
            unsafe { x86::f32_products(&self.f32, (positions, c_out, c_in, tiles), v, m) };
            return;
        }
        let _ = isa;
        for p in 0..positions {
            matmul(
                Matmul {
                    m: c_out,
                    n: tiles,
                    k: c_in,
                },
                &mut m[p * c_out * tiles..],
                tiles,
                &self.f32[p * c_out * c_in..][..c_out * c_in],
                &v[p * c_in * tiles..],
                tiles,
                false,
            );
        }
    }
}

/// `f32` → bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16` does; NaN stays NaN).
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// `[positions][c_out][c_in]` f32 → `[positions][c_out][c_in.div_ceil(2)]` bf16 pairs (odd tail
/// paired with 0).
fn pack_bf16_pairs(u: &[f32], c_in: usize) -> Vec<u32> {
    u.chunks_exact(c_in)
        .flat_map(|row| {
            row.chunks(2).map(|pair| {
                let lo = u32::from(bf16_bits(pair[0]));
                let hi = pair.get(1).map_or(0, |&x| u32::from(bf16_bits(x)));
                lo | hi << 16
            })
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::engine::kernels::isa::lanes;

    /// f32 lanes per zmm register.
    const LANES: usize = 16;
    /// Output channels per block.
    const ROWS: usize = 4;
    /// Vectors of tiles per block (96 tiles).
    const VECS: usize = 6;

    /// Calls `$block::<R, V>` for the runtime `rows` (1..=4) and `vecs` (1..=6).
    macro_rules! dispatch {
        ($block:ident, $rows:expr, $vecs:expr, $($arg:expr),*) => {
            match ($rows, $vecs) {
                (4, 6) => $block::<4, 6>($($arg),*),
                (4, 5) => $block::<4, 5>($($arg),*),
                (4, 4) => $block::<4, 4>($($arg),*),
                (4, 3) => $block::<4, 3>($($arg),*),
                (4, 2) => $block::<4, 2>($($arg),*),
                (4, _) => $block::<4, 1>($($arg),*),
                (3, 6) => $block::<3, 6>($($arg),*),
                (3, 5) => $block::<3, 5>($($arg),*),
                (3, 4) => $block::<3, 4>($($arg),*),
                (3, 3) => $block::<3, 3>($($arg),*),
                (3, 2) => $block::<3, 2>($($arg),*),
                (3, _) => $block::<3, 1>($($arg),*),
                (2, 6) => $block::<2, 6>($($arg),*),
                (2, 5) => $block::<2, 5>($($arg),*),
                (2, 4) => $block::<2, 4>($($arg),*),
                (2, 3) => $block::<2, 3>($($arg),*),
                (2, 2) => $block::<2, 2>($($arg),*),
                (2, _) => $block::<2, 1>($($arg),*),
                (_, 6) => $block::<1, 6>($($arg),*),
                (_, 5) => $block::<1, 5>($($arg),*),
                (_, 4) => $block::<1, 4>($($arg),*),
                (_, 3) => $block::<1, 3>($($arg),*),
                (_, 2) => $block::<1, 2>($($arg),*),
                (_, _) => $block::<1, 1>($($arg),*),
            }
        };
    }

    /// The f32 products of every position. Callers guarantee AVX-512 F and
    /// `u.len() ≥ positions·c_out·c_in`, `v.len() ≥ positions·c_in·tiles`, `m.len() ≥
    /// positions·c_out·tiles`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_products(
        u: &[f32],
        (positions, c_out, c_in, tiles): (usize, usize, usize, usize),
        v: &[f32],
        m: &mut [f32],
    ) {
        assert!(u.len() >= positions * c_out * c_in);
        for p in 0..positions {
            let u = u.as_ptr().add(p * c_out * c_in);
            let v = v.as_ptr().add(p * c_in * tiles);
            let m = m.as_mut_ptr().add(p * c_out * tiles);
            for_each_block(c_out, tiles, |co, t, rows, vecs, mask| {
                dispatch!(
                    f32_block,
                    rows,
                    vecs,
                    u.add(co * c_in),
                    c_in,
                    v.add(t),
                    tiles,
                    m.add(co * tiles + t),
                    tiles,
                    mask
                )
            });
        }
    }

    /// Calls `block(co, t, rows, vecs, mask)` for each block of one position's `M`: up to
    /// [`ROWS`] output channels from `co` × up to [`VECS`] vectors of tiles from `t`, `mask`
    /// the lanes of the last vector that hold tiles.
    #[inline(always)]
    fn for_each_block(
        c_out: usize,
        tiles: usize,
        mut block: impl FnMut(usize, usize, usize, usize, __mmask16),
    ) {
        let mut t = 0;
        while t < tiles {
            let width = (tiles - t).min(VECS * LANES);
            let vecs = width.div_ceil(LANES);
            let mask = lanes(width - (vecs - 1) * LANES);
            let mut co = 0;
            while co < c_out {
                let rows = (c_out - co).min(ROWS);
                block(co, t, rows, vecs, mask);
                co += rows;
            }
            t += width;
        }
    }

    /// Stores a block's accumulators: row `r` at `m + r·m_rs`, the last vector masked.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_block<const R: usize, const V: usize>(
        acc: &[[__m512; V]; R],
        m: *mut f32,
        m_rs: usize,
        mask: __mmask16,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            let out = m.add(r * m_rs);
            for (j, &acc) in acc.iter().enumerate() {
                if j + 1 == V {
                    _mm512_mask_storeu_ps(out.add(j * LANES), mask, acc);
                } else {
                    _mm512_storeu_ps(out.add(j * LANES), acc);
                }
            }
        }
    }

    /// `R` rows × `V` vectors of `m` (the last vector masked by `mask`) from `k` input channels:
    /// `m[r][j] = Σ_l u[r·k + l] · v[l·v_rs + j]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_block<const R: usize, const V: usize>(
        u: *const f32,
        k: usize,
        v: *const f32,
        v_rs: usize,
        m: *mut f32,
        m_rs: usize,
        mask: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for l in 0..k {
            let row = v.add(l * v_rs);
            let x: [__m512; V] = std::array::from_fn(|j| {
                if j + 1 == V {
                    _mm512_maskz_loadu_ps(mask, row.add(j * LANES))
                } else {
                    _mm512_loadu_ps(row.add(j * LANES))
                }
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*u.add(r * k + l));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm512_fmadd_ps(w, x, *acc);
                }
            }
        }
        store_block(&acc, m, m_rs, mask);
    }

    /// The bf16 products of every position. Callers guarantee AVX-512 F/BW and AVX512_BF16,
    /// `u.len() ≥ positions·c_out·⌈c_in/2⌉`, `v.len() ≥ positions·c_in·tiles`, `m.len() ≥
    /// positions·c_out·tiles`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn bf16_products(
        u: &[u32],
        (positions, c_out, c_in, tiles): (usize, usize, usize, usize),
        v: &[f32],
        m: &mut [f32],
    ) {
        let pairs = c_in.div_ceil(2);
        assert!(u.len() >= positions * c_out * pairs);
        // One position's V as bf16 pairs, `[pairs][padded]`: tile t of pair l at
        // `l·padded + t`, so every row is whole vectors.
        let padded = tiles.div_ceil(LANES) * LANES;
        let mut packed = vec![0u32; pairs * padded];
        for p in 0..positions {
            pack_position(v.as_ptr().add(p * c_in * tiles), c_in, tiles, &mut packed);
            let u = u.as_ptr().add(p * c_out * pairs);
            let m = m.as_mut_ptr().add(p * c_out * tiles);
            let packed = packed.as_ptr();
            for_each_block(c_out, tiles, |co, t, rows, vecs, mask| {
                dispatch!(
                    bf16_block,
                    rows,
                    vecs,
                    u.add(co * pairs),
                    pairs,
                    packed.add(t),
                    padded,
                    m.add(co * tiles + t),
                    tiles,
                    mask
                )
            });
        }
    }

    /// Rounds `v[c_in][tiles]` (row-major, rows `tiles` apart) to bf16 and interleaves pairs of
    /// rows into `packed[pairs][padded]`: tile t of rows 2l and 2l+1 becomes one 32-bit value
    /// (row 2l low). Lanes past `tiles` and a missing odd row read as zero.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_position(v: *const f32, c_in: usize, tiles: usize, packed: &mut [u32]) {
        let padded = tiles.div_ceil(LANES) * LANES;
        assert!(packed.len() >= c_in.div_ceil(2) * padded);
        // cvtne2ps gives [even row ×16 | odd row ×16]; this puts tile i's pair at 2i, 2i+1.
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        for l in 0..c_in.div_ceil(2) {
            let even = v.add(2 * l * tiles);
            let odd = (2 * l + 1 < c_in).then(|| v.add((2 * l + 1) * tiles));
            let mut t = 0;
            while t < tiles {
                let mask = lanes(tiles - t);
                let a = _mm512_maskz_loadu_ps(mask, even.add(t));
                let b = odd.map_or(_mm512_setzero_ps(), |odd| {
                    _mm512_maskz_loadu_ps(mask, odd.add(t))
                });
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                let pairs = _mm512_permutexvar_epi16(interleave, both);
                _mm512_storeu_si512(packed.as_mut_ptr().add(l * padded + t).cast(), pairs);
                t += LANES;
            }
        }
    }

    /// [`f32_block`] on bf16 pairs: `k` pairs of input channels, `v` rows `v_rs` apart, each
    /// row whole vectors (no mask on loads).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn bf16_block<const R: usize, const V: usize>(
        u: *const u32,
        k: usize,
        v: *const u32,
        v_rs: usize,
        m: *mut f32,
        m_rs: usize,
        mask: __mmask16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for l in 0..k {
            let row = v.add(l * v_rs);
            let x: [__m512bh; V] = std::array::from_fn(|j| {
                std::mem::transmute(_mm512_loadu_si512(row.add(j * LANES).cast()))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*u.add(r * k + l) as i32));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm512_dpbf16_ps(*acc, w, x);
                }
            }
        }
        store_block(&acc, m, m_rs, mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// F(4,3)'s positions; the products do not depend on what the positions are.
    const POSITIONS: usize = 36;

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.731 + seed).sin()).collect()
    }

    fn bf16_value(x: f32) -> f64 {
        f64::from(f32::from_bits(u32::from(bf16_bits(x)) << 16))
    }

    /// `Σ_ci a(U) · a(V)` in f64, with `a` applied to each operand, and the sum of magnitudes.
    fn reference(
        (c_out, c_in, tiles): (usize, usize, usize),
        u: &[f32],
        v: &[f32],
        a: impl Fn(f32) -> f64,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(POSITIONS * c_out * tiles);
        for p in 0..POSITIONS {
            for co in 0..c_out {
                for t in 0..tiles {
                    let (mut sum, mut magnitude) = (0.0, 0.0);
                    for ci in 0..c_in {
                        let term =
                            a(u[(p * c_out + co) * c_in + ci]) * a(v[(p * c_in + ci) * tiles + t]);
                        sum += term;
                        magnitude += term.abs();
                    }
                    out.push((sum, magnitude));
                }
            }
        }
        out
    }

    /// Shapes with every remainder: rows of 4 and fewer, 96-tile blocks and ragged tails, odd
    /// input channels (a bf16 pair with zero).
    const SHAPES: [(usize, usize, usize); 6] = [
        (64, 64, 96),
        (64, 64, 200),
        (3, 64, 17),
        (7, 5, 33),
        (64, 4, 7),
        (5, 3, 112),
    ];

    #[test]
    fn every_level_matches_the_f64_products() {
        for shape @ (c_out, c_in, tiles) in SHAPES {
            let u = values(POSITIONS * c_out * c_in, 0.4);
            let v = values(POSITIONS * c_in * tiles, 1.7);
            let weights = PositionWeights::new(POSITIONS, c_out, c_in, u.clone(), Products::Bf16);
            let f32_weights =
                PositionWeights::new(POSITIONS, c_out, c_in, u.clone(), Products::F32);
            let exact = reference(shape, &u, &v, f64::from);
            let rounded = reference(shape, &u, &v, bf16_value);
            for isa in Isa::available() {
                // Sentinels past the end must survive (masked stores).
                let mut m = vec![f32::NAN; POSITIONS * c_out * tiles + 5];
                weights.multiply(isa, &v, tiles, &mut m);
                assert!(
                    m[POSITIONS * c_out * tiles..].iter().all(|x| x.is_nan()),
                    "{isa}: wrote past M"
                );
                // f32 weights stay f32 at every level.
                let mut m32 = vec![0.0; POSITIONS * c_out * tiles];
                f32_weights.multiply(isa, &v, tiles, &mut m32);
                for (i, (&got, &(want, magnitude))) in m32.iter().zip(&exact).enumerate() {
                    let err = (f64::from(got) - want).abs();
                    assert!(
                        err <= 1e-5 * (magnitude + 1.0),
                        "{isa} f32 {shape:?} [{i}]: {got} vs {want}"
                    );
                }
                // bf16 products are exact in f32; what remains is f32 summation. The f32 paths
                // round only their sums.
                let expected = if isa >= Isa::Avx512Bf16 {
                    &rounded
                } else {
                    &exact
                };
                for (i, (&got, &(want, magnitude))) in m.iter().zip(expected).enumerate() {
                    let err = (f64::from(got) - want).abs();
                    assert!(
                        err <= 1e-5 * (magnitude + 1.0),
                        "{isa} {shape:?} [{i}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ is halfway between bf16 1.0 and 1 + 2⁻⁷: ties go to the even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), bf16_bits(1.0));
        assert_eq!(bf16_value(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(bf16_value(-2.5), -2.5);
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
        assert_eq!(bf16_value(f32::INFINITY), f64::INFINITY);
    }

    #[test]
    fn odd_channels_pair_with_zero() {
        let packed = pack_bf16_pairs(&[1.0, 2.0, 3.0], 3);
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[1] >> 16, 0);
        assert_eq!(packed[0] & 0xffff, u32::from(bf16_bits(1.0)));
        assert_eq!(packed[0] >> 16, u32::from(bf16_bits(2.0)));
    }
}
