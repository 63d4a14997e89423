//! CPU 3×3 convolutions as shifted matrix products, for the TAESD decoder.
//!
//! Activations live in a [`Padded`] layout: `[C][B][H+2][W+2]`, channel-major across the whole
//! batch, with a zero border around every picture. In that layout a 3×3 convolution with padding
//! 1 is nine matrix products, one per tap: `out[co, q] += W_tap[co, ci] · in[ci, q + offset_tap]`,
//! where `q` runs over the flattened batch and `offset_tap = (dy−1)(W+2) + (dx−1)`. No im2col
//! copy is made; positions that land on a border compute garbage and are zeroed by the epilogue,
//! which also adds the bias and the residual and applies the ReLU. Columns are processed in
//! cache-sized chunks (all nine taps per chunk), and output channels are split across threads.
//!
//! The matrix products use the `gemm` crate; [`matmul`] is the one place that calls it, with
//! every index range checked against its slice first.

use std::ops::Range;

use super::isa::Isa;
use super::tile_products::{PositionWeights, Products};

/// Columns per chunk: 64 output rows × this many f32 stay in L2 across the nine taps.
const CHUNK: usize = 2048;

/// Activations `[C][B][H+2][W+2]` with zero borders. The buffer comes from, and goes back to,
/// [`super::pool`].
#[derive(Debug, Clone, PartialEq)]
pub struct Padded {
    pub channels: usize,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Padded {
    /// Splits the interior rows between the cores for a kernel that computes output rows in
    /// `units` (tile rows, output lines) numbered in (b, y) order over the flattened batch, the
    /// interior row `y` of picture `b` belonging to unit `unit_of(b, y)` (non-decreasing in
    /// `(b, y)`). Returns, per thread, its units and the interior of their rows, channel-major,
    /// in (b, y) order; at most one thread per unit.
    pub(crate) fn rows_by_thread(
        &mut self,
        units: usize,
        unit_of: impl Fn(usize, usize) -> usize,
    ) -> Vec<(Range<usize>, Vec<&mut [f32]>)> {
        let threads = super::threads().min(units).max(1);
        let ranges: Vec<Range<usize>> = (0..threads)
            .map(|t| t * units / threads..(t + 1) * units / threads)
            .collect();
        let owner: Vec<usize> = (0..units)
            .map(|u| ranges.iter().position(|r| r.contains(&u)).unwrap_or(0))
            .collect();
        let mut rows: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::new()).collect();
        let (batch, height, width) = (self.batch, self.height, self.width);
        let padded_rows = height + 2;
        for (i, row) in self.data.chunks_mut(width + 2).enumerate() {
            let (b, yp) = ((i / padded_rows) % batch.max(1), i % padded_rows);
            if yp == 0 || yp == padded_rows - 1 {
                continue;
            }
            let thread = owner.get(unit_of(b, yp - 1)).copied().unwrap_or(0);
            rows[thread].push(&mut row[1..=width]);
        }
        ranges.into_iter().zip(rows).collect()
    }

    /// All zeros.
    pub fn zeros(channels: usize, batch: usize, height: usize, width: usize) -> Self {
        let len = channels * batch * (height + 2) * (width + 2);
        Self {
            channels,
            batch,
            height,
            width,
            data: super::pool::take(len),
        }
    }

    /// Zero borders around an interior of unspecified (stale, finite) values, for producers
    /// that write every interior value.
    pub fn for_overwrite(channels: usize, batch: usize, height: usize, width: usize) -> Self {
        let (rows, row) = (height + 2, width + 2);
        let mut data = super::pool::take_dirty(channels * batch * rows * row);
        for picture in data.chunks_exact_mut(rows * row) {
            picture[..row].fill(0.0);
            picture[(rows - 1) * row..].fill(0.0);
            for line in picture.chunks_exact_mut(row) {
                line[0] = 0.0;
                line[row - 1] = 0.0;
            }
        }
        Self {
            channels,
            batch,
            height,
            width,
            data,
        }
    }

    /// From `[B][C][H][W]` values.
    pub fn from_nchw(
        values: &[f32],
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Self {
        let mut padded = Self::zeros(channels, batch, height, width);
        for b in 0..batch {
            for c in 0..channels {
                for y in 0..height {
                    let src = ((b * channels + c) * height + y) * width;
                    let dst = padded.index(c, b, y + 1, 1);
                    padded.data[dst..dst + width].copy_from_slice(&values[src..src + width]);
                }
            }
        }
        padded
    }

    /// Appends the interior as `[B][C][H][W]` values (the inverse of [`Self::from_nchw`]).
    pub fn append_nchw(&self, out: &mut Vec<f32>) {
        let (h, w) = (self.height, self.width);
        for b in 0..self.batch {
            for c in 0..self.channels {
                for y in 0..h {
                    let start = self.index(c, b, y + 1, 1);
                    out.extend_from_slice(&self.data[start..start + w]);
                }
            }
        }
    }

    /// Values per channel (the whole padded batch).
    pub fn plane(&self) -> usize {
        self.batch * (self.height + 2) * (self.width + 2)
    }

    /// Flat index of padded coordinates.
    pub(crate) fn index(&self, c: usize, b: usize, y: usize, x: usize) -> usize {
        ((c * self.batch + b) * (self.height + 2) + y) * (self.width + 2) + x
    }

    /// Interior value at `(c, b, y, x)` (unpadded coordinates).
    pub fn get(&self, c: usize, b: usize, y: usize, x: usize) -> f32 {
        self.data[self.index(c, b, y + 1, x + 1)]
    }

    /// Applies `f` to every interior value.
    pub fn map_interior(&mut self, f: impl Fn(f32) -> f32) {
        let (h, w) = (self.height, self.width);
        for c in 0..self.channels {
            for b in 0..self.batch {
                for y in 0..h {
                    let start = self.index(c, b, y + 1, 1);
                    for v in &mut self.data[start..start + w] {
                        *v = f(*v);
                    }
                }
            }
        }
    }

    /// Nearest-neighbour upsampling by 2.
    pub fn upsample2(&self) -> Padded {
        let mut out =
            Padded::for_overwrite(self.channels, self.batch, self.height * 2, self.width * 2);
        for c in 0..self.channels {
            for b in 0..self.batch {
                for y in 0..self.height {
                    let src = self.index(c, b, y + 1, 1);
                    let row = &self.data[src..src + self.width];
                    for dy in 0..2 {
                        let dst = out.index(c, b, 2 * y + dy + 1, 1);
                        for (x, &v) in row.iter().enumerate() {
                            out.data[dst + 2 * x] = v;
                            out.data[dst + 2 * x + 1] = v;
                        }
                    }
                }
            }
        }
        out
    }

    /// 1 for interior positions of the flattened plane, 0 for borders.
    fn interior_mask(&self) -> Vec<bool> {
        let (h, w) = (self.height + 2, self.width + 2);
        (0..self.plane())
            .map(|q| {
                let (y, x) = ((q / w) % h, q % w);
                y >= 1 && y <= self.height && x >= 1 && x <= self.width
            })
            .collect()
    }
}

impl Drop for Padded {
    fn drop(&mut self) {
        super::pool::give(std::mem::take(&mut self.data));
    }
}

/// A 3×3 convolution, padding 1, stride 1, with optional bias.
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    c_in: usize,
    c_out: usize,
    /// `[tap][c_out][c_in]`, tap = dy·3 + dx.
    taps: Vec<f32>,
    bias: Option<Vec<f32>>,
}

/// What happens to each output value after the convolution.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub relu: bool,
    pub residual: Option<&'a Padded>,
}

impl Conv3x3 {
    /// From PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias `[c_out]`.
    pub fn new(c_in: usize, c_out: usize, weight: &[f32], bias: Option<Vec<f32>>) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "conv weight size");
        let mut taps = vec![0.0; 9 * c_out * c_in];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..9 {
                    taps[(t * c_out + co) * c_in + ci] = weight[(co * c_in + ci) * 9 + t];
                }
            }
        }
        Self {
            c_in,
            c_out,
            taps,
            bias,
        }
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Convolves `input`, then applies the epilogue; borders of the result are zero.
    pub fn forward(&self, input: &Padded, epilogue: Epilogue) -> Padded {
        assert_eq!(input.channels, self.c_in, "conv input channels");
        let mut out = Padded::zeros(self.c_out, input.batch, input.height, input.width);
        let plane = input.plane();
        let row = input.width + 2;
        // Output positions whose nine taps all stay inside the plane.
        let columns = (row + 1)..(plane - row - 1);
        let mask = input.interior_mask();
        let threads = super::threads().min(self.c_out);
        let rows_per_thread = self.c_out.div_ceil(threads);
        let parts = out.data.chunks_mut(rows_per_thread * plane).enumerate();
        super::run_parts(parts, |(part, dst)| {
            let rows = part * rows_per_thread..(part * rows_per_thread + dst.len() / plane);
            self.rows(input, dst, rows, columns.clone(), &mask, epilogue);
        });
        out
    }

    /// Computes output channels `rows` into `dst` (those channels' planes).
    fn rows(
        &self,
        input: &Padded,
        dst: &mut [f32],
        rows: Range<usize>,
        columns: Range<usize>,
        mask: &[bool],
        epilogue: Epilogue,
    ) {
        let plane = input.plane();
        let row = (input.width + 2) as isize;
        let m = rows.len();
        let mut start = columns.start;
        while start < columns.end {
            let n = CHUNK.min(columns.end - start);
            for t in 0..9 {
                let offset = ((t / 3) as isize - 1) * row + (t % 3) as isize - 1;
                let lhs_start = (t * self.c_out + rows.start) * self.c_in;
                matmul(
                    Matmul { m, n, k: self.c_in },
                    &mut dst[start..],
                    plane,
                    &self.taps[lhs_start..lhs_start + m * self.c_in],
                    &input.data[(start as isize + offset) as usize..],
                    plane,
                    t > 0,
                );
            }
            for (local, co) in rows.clone().enumerate() {
                let bias = self.bias.as_ref().map_or(0.0, |b| b[co]);
                let values = &mut dst[local * plane + start..local * plane + start + n];
                let residual = epilogue
                    .residual
                    .map(|r| &r.data[co * plane + start..co * plane + start + n]);
                for (i, v) in values.iter_mut().enumerate() {
                    if !mask[start + i] {
                        *v = 0.0;
                        continue;
                    }
                    let mut x = *v + bias;
                    if let Some(r) = residual {
                        x += r[i];
                    }
                    *v = if epilogue.relu { x.max(0.0) } else { x };
                }
            }
            start += n;
        }
    }
}

/// A 3×3 convolution, padding 1, stride 2, with optional bias (the encoder's downsampling): an
/// im2col copy of a few output rows at a time (`K = 9·c_in`), then one matrix product per
/// chunk, by the Winograd products' kernels (one "position": `[c_out × K] · [K × columns]`).
/// Threads split the output lines.
#[derive(Debug, Clone)]
pub struct Conv3x3Stride2 {
    c_in: usize,
    c_out: usize,
    /// `[1][c_out][c_in·9]`: the PyTorch layout.
    weight: PositionWeights,
    bias: Option<Vec<f32>>,
}

impl Conv3x3Stride2 {
    /// From PyTorch-layout weights `[c_out][c_in][3][3]` and an optional bias `[c_out]`.
    pub fn new(c_in: usize, c_out: usize, weight: &[f32], bias: Option<Vec<f32>>) -> Self {
        assert_eq!(weight.len(), c_out * c_in * 9, "conv weight size");
        Self {
            c_in,
            c_out,
            weight: PositionWeights::new(1, c_out, c_in * 9, weight.to_vec(), Products::F32),
            bias,
        }
    }

    /// Convolves `input` to `⌈H/2⌉ × ⌈W/2⌉`, adding the bias; borders of the result are zero.
    pub fn forward(&self, input: &Padded) -> Padded {
        assert_eq!(input.channels, self.c_in, "conv input channels");
        let (ho, wo) = (input.height.div_ceil(2), input.width.div_ceil(2));
        let mut out = Padded::for_overwrite(self.c_out, input.batch, ho, wo);
        // Output lines of the flattened batch, (b, y), split between the threads: each builds
        // the im2col of its own lines only (split by output channel, every thread built all of
        // it) and multiplies it by all the weights.
        let lines = input.batch * ho;
        if lines == 0 || wo == 0 {
            return out;
        }
        let parts = out.rows_by_thread(lines, |b, y| b * ho + y);
        super::run_parts(parts, |(range, rows)| {
            self.lines(input, rows, range, (ho, wo))
        });
        out
    }

    /// Computes output lines `range` (of the flattened batch) into `rows`: their interior rows,
    /// `c_out` groups of `range.len()` in (b, y) order.
    fn lines(
        &self,
        input: &Padded,
        mut rows: Vec<&mut [f32]>,
        range: Range<usize>,
        (ho, wo): (usize, usize),
    ) {
        let mine = range.len();
        assert_eq!(rows.len(), mine * self.c_out, "output rows of this thread");
        let k = self.c_in * 9;
        let per_chunk = (CHUNK / wo).max(1);
        let mut cols = super::pool::take_dirty(k * per_chunk * wo);
        let mut product = super::pool::take_dirty(self.c_out * per_chunk * wo);
        let isa = Isa::active();
        let mut start = range.start;
        while start < range.end {
            let chunk = start..(start + per_chunk).min(range.end);
            let n = chunk.len() * wo;
            for ci in 0..self.c_in {
                for tap in 0..9 {
                    let (dy, dx) = (tap / 3, tap % 3);
                    let col = &mut cols[(ci * 9 + tap) * n..][..n];
                    for (line, out) in chunk.clone().zip(col.chunks_exact_mut(wo)) {
                        let (b, y) = (line / ho, line % ho);
                        // Output (y, x) reads padded input (2y + dy, 2x + dx), which stays
                        // inside the padded row: 2(wo − 1) + 2 ≤ width + 1.
                        let at = input.index(ci, b, 2 * y + dy, dx);
                        // The first column of taps walks every row this channel needs; it
                        // prefetches the same rows of the next channel as it goes.
                        let ahead = (dx == 0 && ci + 1 < self.c_in).then(|| {
                            let next = input.index(ci + 1, b, 2 * y + dy, 0);
                            &input.data[next..next + 2 * wo - 1]
                        });
                        even_values(isa, &input.data[at..at + 2 * wo - 1], ahead, out);
                    }
                }
            }
            self.weight.multiply(isa, &cols, n, &mut product);
            for co in 0..self.c_out {
                let bias = self.bias.as_ref().map_or(0.0, |b| b[co]);
                for (i, line) in chunk.clone().enumerate() {
                    let dst = &mut rows[co * mine + line - range.start];
                    let src = &product[co * n + i * wo..][..wo];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v + bias;
                    }
                }
            }
            start = chunk.end;
        }
        super::pool::give(cols);
        super::pool::give(product);
    }
}

/// `out[x] = src[2x]`; `src` holds at least `2·out.len() − 1` values. `ahead`, as long as `src`,
/// is prefetched as it goes.
fn even_values(isa: Isa, src: &[f32], ahead: Option<&[f32]>, out: &mut [f32]) {
    assert!(
        src.len() + 1 >= 2 * out.len(),
        "even_values: source too short"
    );
    assert!(
        ahead.is_none_or(|a| a.len() == src.len()),
        "even_values: prefetch span"
    );
    assert!(
        isa <= Isa::detected(),
        "{isa} kernels on a CPU without {isa}"
    );
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 F (checked above); `even_values_avx512` reads and writes
        // only within the lengths asserted above (masked tails).
        unsafe { even_values_avx512(src, ahead, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (checked above); `even_values_avx2` reads and writes only
        // within the lengths asserted above.
        unsafe { even_values_avx2(src, ahead, out) };
        return;
    }
    let _ = isa;
    even_values_portable(src, ahead, out);
}

/// [`even_values`] in plain moves.
#[inline(always)]
fn even_values_portable(src: &[f32], ahead: Option<&[f32]>, out: &mut [f32]) {
    if let Some(ahead) = ahead {
        super::prefetch(ahead, false);
    }
    for (v, pair) in out.iter_mut().zip(src.chunks(2)) {
        *v = pair[0];
    }
}

/// [`even_values`] 8 at a time: two loads, one in-lane shuffle and one cross-lane permute;
/// the tail through the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn even_values_avx2(src: &[f32], ahead: Option<&[f32]>, out: &mut [f32]) {
    use std::arch::x86_64::*;

    let (n, len) = (out.len(), src.len());
    // Whole steps read src[2x .. 2x + 16].
    let steps = n.min(len / 2) / 8;
    {
        let (s, o) = (src.as_ptr(), out.as_mut_ptr());
        for step in 0..steps {
            let x = 8 * step;
            let (a, b) = (
                _mm256_loadu_ps(s.add(2 * x)),
                _mm256_loadu_ps(s.add(2 * x + 8)),
            );
            // a0 a2 b0 b2 | a4 a6 b4 b6, then the middle quarters swapped.
            let pairs = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
            let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(pairs));
            _mm256_storeu_ps(o.add(x), even);
            if let Some(ahead) = ahead {
                // The line this step read, in the next channel (`ahead` is as long as `src`).
                _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().add(2 * x).cast());
            }
        }
    }
    let done = 8 * steps;
    if done < n {
        let ahead = ahead.map(|a| &a[2 * done..]);
        even_values_portable(&src[2 * done..], ahead, &mut out[done..]);
    }
}

/// [`even_values`] 16 at a time: two loads and one two-source permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn even_values_avx512(src: &[f32], ahead: Option<&[f32]>, out: &mut [f32]) {
    use std::arch::x86_64::*;

    use super::isa::lanes as mask;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let (n, len) = (out.len(), src.len());
    let (s, o) = (src.as_ptr(), out.as_mut_ptr());
    let mut x = 0;
    while x < n {
        let first = 2 * x;
        let a = _mm512_maskz_loadu_ps(mask(len - first), s.add(first));
        // Past the end the mask is empty: no lane is read, and the address is only formed.
        let b = _mm512_maskz_loadu_ps(
            mask(len.saturating_sub(first + 16)),
            s.wrapping_add(first + 16),
        );
        _mm512_mask_storeu_ps(o.add(x), mask(n - x), _mm512_permutex2var_ps(a, even, b));
        if let Some(ahead) = ahead {
            // The two lines this step read, in the next channel (`ahead` is as long as `src`).
            let p = ahead.as_ptr();
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(first).cast());
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(first + 16).cast());
        }
        x += 16;
    }
}

/// Sizes of one product: `[m × k] · [k × n]`.
#[derive(Clone, Copy)]
pub(crate) struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// `dst[i, j] (+)= Σ_l lhs[i, l] · rhs[l, j]`, all row-major with unit column stride; rows of
/// `dst` are `dst_rs` apart, rows of `lhs` are `k` apart, rows of `rhs` are `rhs_rs` apart.
/// `accumulate` adds to `dst` instead of overwriting it.
pub(crate) fn matmul(
    size: Matmul,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_rs: usize,
    accumulate: bool,
) {
    let Matmul { m, n, k } = size;
    if m == 0 || n == 0 {
        return;
    }
    // The last element each operand touches must be inside its slice.
    assert!((m - 1) * dst_rs + n <= dst.len(), "matmul dst out of range");
    assert!(m * k <= lhs.len(), "matmul lhs out of range");
    assert!(
        k == 0 || (k - 1) * rhs_rs + n <= rhs.len(),
        "matmul rhs out of range"
    );
    // SAFETY: the asserts above keep every access of gemm (rows × strides) inside the slices,
    // `dst` is exclusively borrowed, and `lhs`/`rhs` do not alias it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution of one `[C][H][W]` picture, for reference.
    fn reference(
        input: &[f32],
        c_in: usize,
        h: usize,
        w: usize,
        weight: &[f32],
        c_out: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; c_out * h * w];
        for co in 0..c_out {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for ci in 0..c_in {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (yy, xx) =
                                    (y as isize + dy as isize - 1, x as isize + dx as isize - 1);
                                if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                                    acc += weight[((co * c_in + ci) * 3 + dy) * 3 + dx]
                                        * input[(ci * h + yy as usize) * w + xx as usize];
                                }
                            }
                        }
                    }
                    out[(co * h + y) * w + x] = acc;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.731 + seed).sin()).collect()
    }

    #[test]
    fn matches_direct_convolution_over_a_batch() {
        let (c_in, c_out, h, w, batch) = (5, 7, 6, 9, 3);
        let weight = values(c_out * c_in * 9, 0.3);
        let bias: Vec<f32> = values(c_out, 1.1);
        let input = values(batch * c_in * h * w, 2.0);
        let conv = Conv3x3::new(c_in, c_out, &weight, Some(bias.clone()));
        let padded = Padded::from_nchw(&input, batch, c_in, h, w);
        let out = conv.forward(
            &padded,
            Epilogue {
                relu: false,
                residual: None,
            },
        );
        for b in 0..batch {
            let one = &input[b * c_in * h * w..(b + 1) * c_in * h * w];
            let expected = reference(one, c_in, h, w, &weight, c_out);
            for co in 0..c_out {
                for y in 0..h {
                    for x in 0..w {
                        let e = expected[(co * h + y) * w + x] + bias[co];
                        let g = out.get(co, b, y, x);
                        assert!((e - g).abs() < 1e-4, "b{b} c{co} y{y} x{x}: {e} vs {g}");
                    }
                }
            }
        }
        // Borders stay zero so the next convolution sees padding.
        assert_eq!(out.data[0], 0.0);
        let last = out.data.len() - 1;
        assert_eq!(out.data[last], 0.0);
    }

    #[test]
    fn stride_two_matches_the_direct_convolution_subsampled() {
        for (h, w) in [(6, 8), (7, 5), (1, 1)] {
            let (c_in, c_out, batch) = (3, 5, 2);
            let weight = values(c_out * c_in * 9, 0.9);
            let bias = values(c_out, 0.2);
            let input = values(batch * c_in * h * w, 1.3);
            let conv = Conv3x3Stride2::new(c_in, c_out, &weight, Some(bias.clone()));
            let out = conv.forward(&Padded::from_nchw(&input, batch, c_in, h, w));
            assert_eq!((out.height, out.width), (h.div_ceil(2), w.div_ceil(2)));
            for b in 0..batch {
                let one = &input[b * c_in * h * w..(b + 1) * c_in * h * w];
                let full = reference(one, c_in, h, w, &weight, c_out);
                for co in 0..c_out {
                    for y in 0..out.height {
                        for x in 0..out.width {
                            let e = full[(co * h + 2 * y) * w + 2 * x] + bias[co];
                            let g = out.get(co, b, y, x);
                            assert!(
                                (e - g).abs() < 1e-4,
                                "{h}x{w} b{b} c{co} ({y},{x}): {e} vs {g}"
                            );
                        }
                    }
                }
            }
            assert_eq!(out.data[0], 0.0);
        }
    }

    #[test]
    fn even_values_at_every_level_and_length() {
        for isa in Isa::available() {
            for n in [0, 1, 2, 15, 16, 17, 33, 100] {
                let src: Vec<f32> = (0..(2 * n).max(1) - 1).map(|i| i as f32).collect();
                // A sentinel past the end must survive (masked stores).
                let expected: Vec<f32> = (0..n).map(|x| (2 * x) as f32).collect();
                // Prefetching the next channel's span changes nothing.
                let next = vec![7.0; src.len()];
                for ahead in [None, Some(&next[..])] {
                    let mut out = vec![-1.0; n + 1];
                    even_values(isa, &src, ahead, &mut out[..n]);
                    assert_eq!(out[..n], expected[..], "{isa}, {n}");
                    assert_eq!(out[n], -1.0, "{isa}, {n}: wrote past the end");
                }
            }
        }
    }

    #[test]
    fn epilogue_adds_residual_then_relu() {
        let weight = vec![0.0; 9];
        let conv = Conv3x3::new(1, 1, &weight, Some(vec![-1.0]));
        let input = Padded::from_nchw(&[0.5, 3.0], 1, 1, 1, 2);
        let out = conv.forward(
            &input,
            Epilogue {
                relu: true,
                residual: Some(&input),
            },
        );
        assert_eq!(out.get(0, 0, 0, 0), 0.0);
        assert_eq!(out.get(0, 0, 0, 1), 2.0);
    }

    #[test]
    fn overwrite_buffers_have_zero_borders() {
        let mut dirty = Padded::zeros(2, 2, 3, 4);
        dirty.data.fill(9.0);
        drop(dirty);
        let p = Padded::for_overwrite(2, 2, 3, 4);
        let (rows, row) = (5, 6);
        for (i, &v) in p.data.iter().enumerate() {
            let (y, x) = ((i / row) % rows, i % row);
            if y == 0 || y == rows - 1 || x == 0 || x == row - 1 {
                assert_eq!(v, 0.0, "border value at {i}");
            }
        }
    }

    #[test]
    fn nchw_values_round_trip() {
        let values = values(2 * 3 * 4 * 5, 0.6);
        let mut back = vec![-1.0];
        Padded::from_nchw(&values, 2, 3, 4, 5).append_nchw(&mut back);
        assert_eq!(back[0], -1.0, "appends");
        assert_eq!(&back[1..], &values[..]);
    }

    #[test]
    fn upsample_repeats_each_value_twice_each_way() {
        let p = Padded::from_nchw(&[1.0, 2.0], 1, 1, 1, 2);
        let u = p.upsample2();
        assert_eq!((u.height, u.width), (2, 4));
        let row: Vec<f32> = (0..4).map(|x| u.get(0, 0, 1, x)).collect();
        assert_eq!(row, [1.0, 1.0, 2.0, 2.0]);
    }
}
