//! The wgpu backend on a real adapter (lavapipe in CI): each kernel against a float64
//! reference, the whole decoder and encoder against the CPU `exact` networks and the golden
//! vectors, and batch splitting under a small injected binding limit.
//!
//! Without an adapter these skip with one loud line; `DREAMD_REQUIRE_TOOLS=1` (set by `.ci/run`,
//! which installs lavapipe) makes that a failure. Sizes are small: lavapipe runs on the CPU.

use std::sync::Arc;

use super::kernels::{ConvMode, ConvWeights, Storage};
use super::network::{Layer, Network, Readout};
use super::{AdapterPolicy, GpuContext};
use crate::config::Precision;
use crate::engine::taesd::cpu::{TaesdCpuDecoder, TaesdCpuEncoder};
use crate::engine::taesd::weights::{Part, WeightFile};
use crate::engine::taesd::Family;
use crate::engine::Decoder;
use crate::latent::{Latent, LatentBatch, LatentShape};
use crate::test_weights::{max_abs_diff, psnr_unit, read_f32_file, shared_file, weights};

/// The process's wgpu context (software adapters allowed), or None after a loud skip line; a
/// panic instead under `DREAMD_REQUIRE_TOOLS=1`.
pub(crate) fn context() -> Option<Arc<GpuContext>> {
    match GpuContext::shared(AdapterPolicy::AllowSoftware) {
        Ok(context) => Some(context),
        Err(e) => {
            let test = std::thread::current()
                .name()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            let message = format!(
                "*** SKIPPED{test}: no wgpu adapter ({e}); install a Vulkan driver (lavapipe: \
                 apt-get install mesa-vulkan-drivers libvulkan1) or run .ci/run; \
                 DREAMD_REQUIRE_TOOLS=1 makes this a failure ***"
            );
            if std::env::var("DREAMD_REQUIRE_TOOLS").as_deref() == Ok("1") {
                panic!("{message}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{message}");
            None
        }
    }
}

/// Deterministic values in about [-amp, amp].
fn values(n: usize, seed: f64, amp: f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (amp * ((i as f64 * 0.7123 + seed) * 1.37).sin() * (i as f64 * 0.0917 + seed).cos())
                as f32
        })
        .collect()
}

/// A float64 3×3 convolution (padding 1) of `[n][c_in][h][w]` in `mode`, plus bias.
#[allow(clippy::too_many_arguments)]
fn reference_conv(
    input: &[f64],
    n: usize,
    c_in: usize,
    (h, w): (usize, usize),
    weight: &[f32],
    bias: &[f32],
    c_out: usize,
    mode: ConvMode,
) -> (Vec<f64>, (usize, usize)) {
    let (oh, ow) = mode.output_size(h, w);
    let mut out = vec![0.0; n * c_out * oh * ow];
    for b in 0..n {
        for o in 0..c_out {
            for y in 0..oh {
                for x in 0..ow {
                    let mut sum = f64::from(bias[o]);
                    for i in 0..c_in {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (yy, xx) = match mode {
                                    ConvMode::Same | ConvMode::Upsample => {
                                        (y as isize + ky as isize - 1, x as isize + kx as isize - 1)
                                    }
                                    ConvMode::Down => (
                                        2 * y as isize + ky as isize - 1,
                                        2 * x as isize + kx as isize - 1,
                                    ),
                                };
                                let (lim_h, lim_w) = match mode {
                                    ConvMode::Upsample => (oh, ow),
                                    _ => (h, w),
                                };
                                if yy < 0 || xx < 0 || yy as usize >= lim_h || xx as usize >= lim_w
                                {
                                    continue;
                                }
                                let (sy, sx) = match mode {
                                    ConvMode::Upsample => (yy as usize / 2, xx as usize / 2),
                                    _ => (yy as usize, xx as usize),
                                };
                                let v = input[((b * c_in + i) * h + sy) * w + sx];
                                sum += v * f64::from(weight[((o * c_in + i) * 3 + ky) * 3 + kx]);
                            }
                        }
                    }
                    out[((b * c_out + o) * oh + y) * ow + x] = sum;
                }
            }
        }
    }
    (out, (oh, ow))
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Largest |a − b| relative to max(1, |b|).
fn max_err(got: &[f32], expected: &[f64]) -> f64 {
    assert_eq!(got.len(), expected.len());
    got.iter()
        .zip(expected)
        .map(|(&a, &b)| (f64::from(a) - b).abs() / b.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// A random convolution's weights and bias, uploaded.
fn random_conv(
    context: &GpuContext,
    c_in: usize,
    c_out: usize,
    seed: f64,
) -> (ConvWeights, Vec<f32>, Vec<f32>) {
    // He-like scale keeps activations near 1 through the layers.
    let amp = (2.0 / (9.0 * c_in as f64)).sqrt() * 1.7;
    let weight = values(c_out * c_in * 9, seed, amp);
    let bias = values(c_out, seed + 0.5, 0.3);
    let conv = ConvWeights::upload(context, "test", c_in, c_out, &weight, Some(&bias)).unwrap();
    (conv, weight, bias)
}

// Odd sizes: channels not a multiple of the 8-channel chunk or the 32-channel block, pictures
// not a multiple of the 16 × 4 tile.
const N: usize = 2;
const C_IN: usize = 5;
const C_OUT: usize = 40;
const H: usize = 7;
const W: usize = 19;

#[test]
fn conv3x3_with_clamp_and_relu_matches_float64() {
    let Some(context) = context() else { return };
    let (conv, weight, bias) = random_conv(&context, C_IN, C_OUT, 0.1);
    let input = values(N * C_IN * H * W, 0.2, 6.0);
    let layer = Layer::Conv {
        conv,
        mode: ConvMode::Same,
        relu: true,
        clamp: true,
    };
    let network = Network::new(context, "test conv", C_IN, vec![layer], Storage::F32).unwrap();
    let got = network.run_raw(&input, N, H, W).unwrap();
    let clamped: Vec<f64> = wide(&input)
        .iter()
        .map(|v| (v / 3.0).tanh() * 3.0)
        .collect();
    let (expected, _) = reference_conv(
        &clamped,
        N,
        C_IN,
        (H, W),
        &weight,
        &bias,
        C_OUT,
        ConvMode::Same,
    );
    let err = max_err(&got, &relu(expected));
    assert!(err <= 1e-5, "max relative error {err}");
}

#[test]
fn upsampling_conv3x3_matches_float64() {
    let Some(context) = context() else { return };
    let (conv, weight, bias) = random_conv(&context, C_IN, C_OUT, 0.3);
    let input = values(N * C_IN * H * W, 0.4, 1.0);
    let layer = Layer::Conv {
        conv,
        mode: ConvMode::Upsample,
        relu: false,
        clamp: false,
    };
    let network = Network::new(context, "test upsample", C_IN, vec![layer], Storage::F32).unwrap();
    assert_eq!(network.output_shape(H, W), (C_OUT, 2 * H, 2 * W));
    let got = network.run_raw(&input, N, H, W).unwrap();
    let (expected, _) = reference_conv(
        &wide(&input),
        N,
        C_IN,
        (H, W),
        &weight,
        &bias,
        C_OUT,
        ConvMode::Upsample,
    );
    let err = max_err(&got, &expected);
    assert!(err <= 1e-5, "max relative error {err}");
}

#[test]
fn stride2_conv3x3_matches_float64() {
    let Some(context) = context() else { return };
    let (conv, weight, bias) = random_conv(&context, C_IN, C_OUT, 0.5);
    let (h, w) = (2 * H + 1, 2 * W);
    let input = values(N * C_IN * h * w, 0.6, 1.0);
    let network = Network::new(
        context,
        "test down",
        C_IN,
        vec![Layer::Down(conv)],
        Storage::F32,
    )
    .unwrap();
    assert_eq!(network.output_shape(h, w), (C_OUT, H + 1, W));
    let got = network.run_raw(&input, N, h, w).unwrap();
    let (expected, _) = reference_conv(
        &wide(&input),
        N,
        C_IN,
        (h, w),
        &weight,
        &bias,
        C_OUT,
        ConvMode::Down,
    );
    let err = max_err(&got, &expected);
    assert!(err <= 1e-5, "max relative error {err}");
}

#[test]
fn residual_block_matches_float64() {
    let Some(context) = context() else { return };
    let c = C_OUT;
    let convs: Vec<_> = (0..3)
        .map(|i| random_conv(&context, c, c, 0.7 + i as f64))
        .collect();
    let input = values(N * c * H * W, 0.8, 1.0);
    let x = wide(&input);
    let mut h = x.clone();
    for (i, (_, weight, bias)) in convs.iter().enumerate() {
        h = reference_conv(&h, N, c, (H, W), weight, bias, c, ConvMode::Same).0;
        if i == 2 {
            h.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
        }
        h = relu(h);
    }
    let mut convs = convs.into_iter().map(|(conv, _, _)| conv);
    let (Some(c0), Some(c2), Some(c4)) = (convs.next(), convs.next(), convs.next()) else {
        unreachable!("three convolutions");
    };
    let network = Network::new(
        context,
        "test block",
        c,
        vec![Layer::Block([c0, c2, c4])],
        Storage::F32,
    )
    .unwrap();
    let got = network.run_raw(&input, N, H, W).unwrap();
    let err = max_err(&got, &h);
    assert!(err <= 1e-5, "max relative error {err}");
}

#[test]
fn output_scaling_to_bytes_matches_float64() {
    let Some(context) = context() else { return };
    let (conv, weight, bias) = random_conv(&context, C_IN, 3, 0.9);
    let input = values(N * C_IN * H * W, 1.0, 1.0);
    let layer = Layer::Conv {
        conv,
        mode: ConvMode::Same,
        relu: false,
        clamp: false,
    };
    let network = Network::new(context, "test rgb8", C_IN, vec![layer], Storage::F32).unwrap();
    let got = network.run(&input, N, H, W, Readout::Rgb8).unwrap();
    let (expected, _) = reference_conv(
        &wide(&input),
        N,
        C_IN,
        (H, W),
        &weight,
        &bias,
        3,
        ConvMode::Same,
    );
    assert_eq!(got.len(), N * H * W * 4);
    let mut worst = 0;
    for b in 0..N {
        for p in 0..H * W {
            let pixel = &got[(b * H * W + p) * 4..][..4];
            assert_eq!(pixel[3], 0);
            for c in 0..3 {
                let v = expected[(b * 3 + c) * H * W + p];
                let byte = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                worst = worst.max(pixel[c].abs_diff(byte));
            }
        }
    }
    // f32 against f64 may straddle a rounding boundary.
    assert!(worst <= 1, "bytes differ by {worst}");
    // RGB output needs three channels.
    let (conv, _, _) = random_conv(network.context(), C_IN, 4, 1.1);
    let layer = Layer::Conv {
        conv,
        mode: ConvMode::Same,
        relu: false,
        clamp: false,
    };
    let four = Network::new(
        network.context().clone(),
        "test four",
        C_IN,
        vec![layer],
        Storage::F32,
    )
    .unwrap();
    let err = four.run(&input, N, H, W, Readout::Rgb8).unwrap_err();
    assert!(err.to_string().contains("3 channels"), "{err}");
}

fn latents(shape: LatentShape, n: usize) -> LatentBatch {
    let mut batch = LatentBatch::with_capacity(shape, n);
    for i in 0..n {
        let data = (0..shape.len())
            .map(|j| ((j * 3 + i * 11) as f32 * 0.29).sin() * 2.5)
            .collect();
        batch.push(&Latent::new(shape, data).unwrap()).unwrap();
    }
    batch
}

#[test]
fn decoder_matches_the_cpu_exact_path() {
    let Some(path) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    let Some(context) = context() else { return };
    let weights = WeightFile::load(&path, Part::Decoder).unwrap();
    let gpu = super::decoder::TaesdWgpuDecoder::new("taesd", &weights, context, Precision::Exact)
        .unwrap();
    let cpu = TaesdCpuDecoder::new("taesd", &weights, Precision::Exact).unwrap();
    for (shape, n) in [
        (LatentShape::new(4, 8, 8), 2),
        (LatentShape::new(4, 5, 7), 3),
    ] {
        let batch = latents(shape, n);
        let err = max_abs_diff(&gpu.decode_raw(&batch).unwrap(), &cpu.decode_raw(&batch));
        assert!(err <= 1e-4, "{shape}: max abs error {err}");
        // The pictures, through the output-scaling kernel.
        let (a, b) = (gpu.decode(&batch).unwrap(), cpu.decode(&batch).unwrap());
        assert_eq!(a.len(), n);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.dimensions(), b.dimensions());
            let diff = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap_or(0);
            assert!(diff <= 1, "{shape}: pictures differ by {diff}");
        }
    }
}

#[test]
fn decoder_matches_golden_vectors() {
    for (family, channels) in [(Family::Taesd, 4), (Family::Taef1, 16)] {
        let (Some(input), Some(expected), Some(path)) = (
            shared_file(&format!("golden/{family}_dec_in_{channels}x8x8_f32le.bin")),
            shared_file(&format!("golden/{family}_dec_out_3x64x64_f32le.bin")),
            weights(family, Part::Decoder),
        ) else {
            continue;
        };
        let Some(context) = context() else { return };
        let weights = WeightFile::load(&path, Part::Decoder).unwrap();
        let gpu = super::decoder::TaesdWgpuDecoder::new(
            family.name(),
            &weights,
            context,
            Precision::Exact,
        )
        .unwrap();
        let shape = LatentShape::new(channels, 8, 8);
        let mut batch = LatentBatch::with_capacity(shape, 1);
        batch
            .push(&Latent::new(shape, read_f32_file(&input)).unwrap())
            .unwrap();
        let err = max_abs_diff(&gpu.decode_raw(&batch).unwrap(), &read_f32_file(&expected));
        assert!(err <= 1e-4, "{family}: max abs error {err}");
    }
}

#[test]
fn encoder_matches_the_cpu_exact_path() {
    let Some(path) = weights(Family::Taesd, Part::Encoder) else {
        return;
    };
    let Some(context) = context() else { return };
    let weights = WeightFile::load(&path, Part::Encoder).unwrap();
    let gpu = super::encoder::TaesdWgpuEncoder::new(&weights, context, Precision::Exact).unwrap();
    let cpu = TaesdCpuEncoder::new(&weights, Precision::Exact).unwrap();
    // 64×64 → a 4×8×8 latent; 40×56 → an odd 4×5×7 one.
    for (n, h, w) in [(2, 64, 64), (2, 40, 56)] {
        let input: Vec<f32> = (0..n * 3 * h * w)
            .map(|i| 0.5 + 0.5 * (i as f32 * 0.013).sin() * (i as f32 * 0.0007).cos())
            .collect();
        let got = gpu.encode_raw(&input, n, h, w).unwrap();
        let expected = cpu.encode_raw(&input, n, h, w);
        let err = max_abs_diff(&got, &expected);
        assert!(err <= 1e-4, "{n}x3x{h}x{w}: max abs error {err}");
    }
}

#[test]
fn batches_split_under_a_small_binding_limit() {
    let (Some(dec_path), Some(enc_path)) = (
        weights(Family::Taesd, Part::Decoder),
        weights(Family::Taesd, Part::Encoder),
    ) else {
        return;
    };
    let Some(context) = context() else { return };
    let weights = WeightFile::load(&dec_path, Part::Decoder).unwrap();
    let mut decoder =
        super::decoder::TaesdWgpuDecoder::new("taesd", &weights, context.clone(), Precision::Exact)
            .unwrap();
    let shape = LatentShape::new(4, 4, 6);
    // A pass of two and a pass of one (each pass on lavapipe costs seconds).
    let batch = latents(shape, 3);
    let whole = decoder.decode_raw(&batch).unwrap();
    let whole_pictures = decoder.decode(&batch).unwrap();
    // One hidden activation of one picture: 64 × 32 × 48 × 4 bytes; allow two per pass.
    let picture = 64 * 32 * 48 * 4;
    decoder.network_mut().set_binding_limit(2 * picture + 100);
    assert_eq!(decoder.network_mut().per_pass(4, 6).unwrap(), 2);
    assert_eq!(decoder.decode_raw(&batch).unwrap(), whole);
    assert_eq!(decoder.decode(&batch).unwrap(), whole_pictures);
    // Below one picture per pass: an error naming the limit, not a panic.
    decoder.network_mut().set_binding_limit(picture - 1);
    let err = decoder.decode_raw(&batch).unwrap_err().to_string();
    assert!(err.contains("max_storage_buffer_binding_size"), "{err}");

    let weights = WeightFile::load(&enc_path, Part::Encoder).unwrap();
    let mut encoder =
        super::encoder::TaesdWgpuEncoder::new(&weights, context, Precision::Exact).unwrap();
    let (n, h, w) = (2, 32, 48);
    let input: Vec<f32> = (0..n * 3 * h * w)
        .map(|i| 0.5 + 0.4 * (i as f32 * 0.021).sin())
        .collect();
    let whole = encoder.encode_raw(&input, n, h, w).unwrap();
    encoder
        .network_mut()
        .set_binding_limit((64 * h * w * 4) as u64);
    assert_eq!(encoder.network_mut().per_pass(h, w).unwrap(), 1);
    assert_eq!(encoder.encode_raw(&input, n, h, w).unwrap(), whole);
}

#[test]
fn the_adapter_is_described() {
    let Some(context) = context() else { return };
    let adapter = context.adapter();
    assert!(!adapter.name.is_empty());
    assert!(
        ["vulkan", "metal", "dx12"].contains(&adapter.backend.as_str()),
        "{adapter}"
    );
    let text = adapter.to_string();
    assert!(
        text.contains(&adapter.name) && text.contains(&adapter.device_type),
        "{text}"
    );
    // auto never takes a software adapter.
    if let Some(real) = super::real_adapter() {
        assert!(!real.is_software(), "{real}");
    }
}

#[test]
fn no_adapter_is_an_error_naming_what_was_found() {
    let Some(context) = context() else { return };
    // The name filter is read from the environment; the other tests use the shared context,
    // already open, so setting it here for a moment does not change them.
    std::env::set_var(super::ADAPTER_NAME_ENV, "no such adapter 17");
    let err = GpuContext::open(AdapterPolicy::AllowSoftware).unwrap_err();
    std::env::remove_var(super::ADAPTER_NAME_ENV);
    let text = err.to_string();
    assert!(text.contains("no such adapter 17"), "{text}");
    assert!(text.contains(&context.adapter().name), "{text}");
}

/// f16 storage (`precision = "fast"` where the device has `SHADER_F16`): a chain that stores
/// every kind of intermediate as f16 — a convolution, two residual blocks (the second's residual
/// an f16 buffer), a stride-2 convolution — against float64, within f16's precision.
#[test]
fn f16_storage_stays_within_half_precision_of_float64() {
    let Some(context) = context() else { return };
    if !context.has_f16() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "(no SHADER_F16 on {}: f32 only)",
            context.adapter()
        );
        return;
    }
    let c = 16;
    let (first, w0, b0) = random_conv(&context, C_IN, c, 2.0);
    let mut reference = Vec::new();
    let mut block = |seed: f64| {
        let convs: Vec<_> = (0..3)
            .map(|i| random_conv(&context, c, c, seed + i as f64))
            .collect();
        reference.push(
            convs
                .iter()
                .map(|(_, w, b)| (w.clone(), b.clone()))
                .collect::<Vec<_>>(),
        );
        let mut it = convs.into_iter().map(|(conv, _, _)| conv);
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(d)) => Layer::Block([a, b, d]),
            _ => unreachable!("three convolutions"),
        }
    };
    let blocks = [block(3.0), block(6.0)];
    let (down, wd, bd) = random_conv(&context, c, c, 9.0);
    // The stride-2 convolution has no bias in TAESD, but the kernel takes one: keep it.
    let [b1, b2] = blocks;
    let layers = vec![
        Layer::Conv {
            conv: first,
            mode: ConvMode::Same,
            relu: true,
            clamp: false,
        },
        b1,
        b2,
        Layer::Down(down),
    ];
    let network = Network::new(context, "test f16", C_IN, layers, Storage::F16).unwrap();
    assert_eq!(network.storage(), Storage::F16);
    let (h, w) = (2 * H, W);
    let input = values(N * C_IN * h * w, 3.0, 1.0);
    let got = network.run_raw(&input, N, h, w).unwrap();

    let mut x = relu(reference_conv(&wide(&input), N, C_IN, (h, w), &w0, &b0, c, ConvMode::Same).0);
    for convs in &reference {
        let skip = x.clone();
        for (i, (wt, b)) in convs.iter().enumerate() {
            x = reference_conv(&x, N, c, (h, w), wt, b, c, ConvMode::Same).0;
            if i == 2 {
                x.iter_mut().zip(&skip).for_each(|(a, s)| *a += s);
            }
            x = relu(x);
        }
    }
    let (expected, _) = reference_conv(&x, N, c, (h, w), &wd, &bd, c, ConvMode::Down);
    // Each stored value rounds to 11 significant bits (≈ 5e-4 relative); after a few layers the
    // error is measured against the activations' scale, not each value (some are near zero).
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
        / scale;
    assert!(err <= 5e-3, "max error {err} of the largest value {scale}");
    assert!(err > 0.0, "f16 storage should round somewhere");
}

/// `precision = "fast"` on wgpu (f16 activations where the device has them) holds the same
/// bound as the CPU's fast path: ≥ 45 dB against the exact decode; the encoder's latents stay
/// close to the exact encoder's.
#[test]
fn fast_precision_decodes_above_45_db() {
    let (Some(dec_path), Some(enc_path)) = (
        weights(Family::Taesd, Part::Decoder),
        weights(Family::Taesd, Part::Encoder),
    ) else {
        return;
    };
    let Some(context) = context() else { return };
    let weights = WeightFile::load(&dec_path, Part::Decoder).unwrap();
    let fast =
        super::decoder::TaesdWgpuDecoder::new("taesd", &weights, context.clone(), Precision::Fast)
            .unwrap();
    let cpu = TaesdCpuDecoder::new("taesd", &weights, Precision::Exact).unwrap();
    let expected_storage = if context.has_f16() {
        Storage::F16
    } else {
        Storage::F32
    };
    assert_eq!(fast.storage(), expected_storage);
    let shape = LatentShape::new(4, 8, 8);
    let batch = latents(shape, 2);
    let db = psnr_unit(&cpu.decode_raw(&batch), &fast.decode_raw(&batch).unwrap());
    assert!(db >= 45.0, "{db:.1} dB");

    let weights = WeightFile::load(&enc_path, Part::Encoder).unwrap();
    let fast = super::encoder::TaesdWgpuEncoder::new(&weights, context, Precision::Fast).unwrap();
    let exact = TaesdCpuEncoder::new(&weights, Precision::Exact).unwrap();
    let (n, h, w) = (2, 64, 64);
    let input: Vec<f32> = (0..n * 3 * h * w)
        .map(|i| 0.5 + 0.5 * (i as f32 * 0.013).sin() * (i as f32 * 0.0007).cos())
        .collect();
    let err = max_abs_diff(
        &fast.encode_raw(&input, n, h, w).unwrap(),
        &exact.encode_raw(&input, n, h, w),
    );
    assert!(err <= 2e-2, "max abs error {err}");
}

/// A wait past its deadline is an error naming it, not a panic or a hang, and the decoder
/// works again afterwards (its read-back buffer is not left mapped).
#[test]
fn a_late_gpu_is_an_error_and_the_decoder_recovers() {
    let Some(path) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    if context().is_none() {
        return;
    }
    // A context of its own: the others keep their deadline.
    let context = Arc::new(GpuContext::open(AdapterPolicy::AllowSoftware).unwrap());
    let weights = WeightFile::load(&path, Part::Decoder).unwrap();
    let decoder =
        super::decoder::TaesdWgpuDecoder::new("taesd", &weights, context.clone(), Precision::Exact)
            .unwrap();
    // Small: lavapipe runs these shaders on one thread (16×16 × 2 took 54 s in a debug build).
    let batch = latents(LatentShape::new(4, 8, 8), 1);
    context.set_wait_limit(std::time::Duration::from_nanos(1));
    // A software adapter takes far longer than 1 ns; should it have been done, fine too.
    if let Err(e) = decoder.decode_raw(&batch) {
        let text = e.to_string();
        assert!(text.contains("did not finish within"), "{text}");
    }
    context.set_wait_limit(super::WAIT_LIMIT);
    let again = decoder.decode_raw(&batch).unwrap();
    let cpu = TaesdCpuDecoder::new("taesd", &weights, Precision::Exact).unwrap();
    let err = max_abs_diff(&again, &cpu.decode_raw(&batch));
    assert!(err <= 1e-4, "max abs error {err}");
}

/// The soft clamp stays finite for huge latents (some drivers' tanh overflows to NaN).
#[test]
fn the_input_clamp_is_finite_for_huge_values() {
    let Some(context) = context() else { return };
    let (conv, weight, bias) = random_conv(&context, C_IN, 8, 4.0);
    let layer = Layer::Conv {
        conv,
        mode: ConvMode::Same,
        relu: false,
        clamp: true,
    };
    let network = Network::new(context, "test clamp", C_IN, vec![layer], Storage::F32).unwrap();
    let input: Vec<f32> = values(C_IN * H * W, 5.0, 1.0)
        .into_iter()
        .map(|v| v.signum() * 1e30)
        .collect();
    let got = network.run_raw(&input, 1, H, W).unwrap();
    let clamped: Vec<f64> = input.iter().map(|v| 3.0 * v.signum() as f64).collect();
    let (expected, _) =
        reference_conv(&clamped, 1, C_IN, (H, W), &weight, &bias, 8, ConvMode::Same);
    assert!(got.iter().all(|v| v.is_finite()));
    let err = max_err(&got, &expected);
    assert!(err <= 1e-5, "max relative error {err}");
}
