//! The TAESD family against the golden vectors, batching, and loading every member.

use super::candle::TaesdDecoderModel;
use super::*;
use crate::latent::{LatentBatch, LatentShape};
use crate::test_weights::{read_f32_file, shared_file, weights};

/// The golden decode of `family`: needs the shared golden vectors and the weights they were
/// made from, so it skips (loudly) without the shared folder.
fn golden(family: Family, channels: usize) {
    let (Some(input), Some(expected), Some(path)) = (
        shared_file(&format!("golden/{family}_dec_in_{channels}x8x8_f32le.bin")),
        shared_file(&format!("golden/{family}_dec_out_3x64x64_f32le.bin")),
        weights(family, Part::Decoder),
    ) else {
        return;
    };
    let input = read_f32_file(&input);
    let expected = read_f32_file(&expected);
    let shape = LatentShape::new(channels, 8, 8);
    let mut batch = LatentBatch::with_capacity(shape, 1);
    batch.push(&Latent::new(shape, input).unwrap()).unwrap();
    let decoder = TaesdDecoderModel::load(&path, family.name(), Device::Cpu).unwrap();
    assert_eq!(decoder.latent_channels(), channels);
    let got = decoder.decode_raw(&batch).unwrap();
    assert_eq!(got.len(), expected.len());
    let max_err = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_err <= 1e-3, "{family}: max abs error {max_err}");
}

#[test]
fn taesd_decoder_matches_golden() {
    golden(Family::Taesd, 4);
}

#[test]
fn taef1_decoder_matches_golden() {
    golden(Family::Taef1, 16);
}

#[test]
fn batched_decode_equals_one_by_one() {
    let Some(path) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    let decoder = TaesdDecoderModel::load(&path, "taesd", Device::Cpu).unwrap();
    let shape = LatentShape::new(4, 4, 6);
    let latents: Vec<Latent> = (0..3)
        .map(|n| {
            let data = (0..shape.len())
                .map(|i| ((i + 7 * n) as f32 * 0.37).sin() * 2.0)
                .collect();
            Latent::new(shape, data).unwrap()
        })
        .collect();
    let mut batch = LatentBatch::with_capacity(shape, 3);
    for l in &latents {
        batch.push(l).unwrap();
    }
    let together = decoder.decode(&batch).unwrap();
    assert_eq!(together.len(), 3);
    assert_eq!(together[0].dimensions(), (48, 32));
    for (l, image) in latents.iter().zip(&together) {
        let mut single = LatentBatch::with_capacity(shape, 1);
        single.push(l).unwrap();
        let alone = decoder.decode(&single).unwrap().remove(0);
        let diff = alone
            .as_raw()
            .iter()
            .zip(image.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(diff <= 1, "batched and single decodes differ by {diff}");
    }
}

#[test]
fn every_family_member_loads_with_its_channel_count() {
    for family in Family::ALL {
        let (Some(decoder), Some(encoder)) = (
            weights(family, Part::Decoder),
            weights(family, Part::Encoder),
        ) else {
            continue;
        };
        let d = TaesdDecoderModel::load(&decoder, family.name(), Device::Cpu).unwrap();
        assert_eq!(d.latent_channels(), family.latent_channels(), "{family}");
        let e = TaesdEncoderModel::load(&encoder, Device::Cpu, Precision::Exact).unwrap();
        assert_eq!(e.latent_channels(), family.latent_channels(), "{family}");
    }
}

#[test]
fn decoder_file_given_as_encoder_is_a_clear_error() {
    let Some(path) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    let err = TaesdEncoderModel::load(&path, Device::Cpu, Precision::Exact)
        .err()
        .unwrap()
        .to_string();
    // taesd_decoder.safetensors from the shared folder, taesd_decoder.pth when pulled.
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("taesd_decoder."), "{name}");
    assert!(err.contains(name.as_ref()), "{err}");
    assert!(err.contains("14.weight"), "{err}");
}

/// TAEF2's GroupNorm mid-blocks: the engine's loaders pick candle's CPU backend for them (the
/// CPU networks refuse); its decode against the golden output is in `engine::pth`'s tests.
#[test]
fn taef2_runs_on_candle_on_the_cpu() {
    let (Some(decoder), Some(encoder)) = (
        weights(Family::Taef2, Part::Decoder),
        weights(Family::Taef2, Part::Encoder),
    ) else {
        return;
    };
    let loaded = WeightFile::load(&decoder, Part::Decoder).unwrap();
    assert!(has_mid_blocks(&loaded));
    assert!(matches!(
        Backend::for_weights(&loaded, Device::Cpu, Precision::Fast).unwrap(),
        Backend::Candle(_)
    ));
    let d = load_decoder(&decoder, Family::Taef2, Device::Cpu, Precision::Fast).unwrap();
    assert_eq!(d.latent_channels(), 32);
    let e = TaesdEncoderModel::load(&encoder, Device::Cpu, Precision::Fast).unwrap();
    assert_eq!(e.latent_channels(), 32);
    let picture = RgbImage::from_fn(64, 32, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 8) as u8, 60])
    });
    let latent = e.encode(&[picture]).unwrap().remove(0);
    assert_eq!(latent.shape(), LatentShape::new(32, 4, 8));
    let mut batch = LatentBatch::with_capacity(latent.shape(), 1);
    batch.push(&latent).unwrap();
    assert_eq!(d.decode(&batch).unwrap()[0].dimensions(), (64, 32));
    // Other families stay on dreamd's CPU networks.
    if let Some(taesd) = weights(Family::Taesd, Part::Decoder) {
        let loaded = WeightFile::load(&taesd, Part::Decoder).unwrap();
        assert!(!has_mid_blocks(&loaded));
        assert!(matches!(
            Backend::for_weights(&loaded, Device::Cpu, Precision::Fast).unwrap(),
            Backend::Cpu(Precision::Fast)
        ));
    }
}
