//! The TAESD family against the golden vectors, batching, and loading every member.

use super::candle::TaesdDecoderModel;
use super::*;
use crate::engine::model_files::{find, read_f32_file, search_dirs, test_models_dir};
use crate::latent::{LatentBatch, LatentShape};
use std::path::PathBuf;

fn model_file(family: Family, part: Part) -> PathBuf {
    let dirs = search_dirs(Some(&test_models_dir()));
    find(&dirs, family, part).unwrap_or_else(|| {
        panic!(
            "{} not found under {} (set DREAMD_MODELS)",
            family.file_name(part),
            test_models_dir().display()
        )
    })
}

fn golden(family: Family, channels: usize) {
    let dir = test_models_dir().join("golden");
    let input = read_f32_file(&dir.join(format!("{family}_dec_in_{channels}x8x8_f32le.bin")));
    let expected = read_f32_file(&dir.join(format!("{family}_dec_out_3x64x64_f32le.bin")));
    let shape = LatentShape::new(channels, 8, 8);
    let mut batch = LatentBatch::with_capacity(shape, 1);
    batch.push(&Latent::new(shape, input).unwrap()).unwrap();
    let decoder = TaesdDecoderModel::load(
        &model_file(family, Part::Decoder),
        family.name(),
        Device::Cpu,
    )
    .unwrap();
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
    let decoder = TaesdDecoderModel::load(
        &model_file(Family::Taesd, Part::Decoder),
        "taesd",
        Device::Cpu,
    )
    .unwrap();
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
        let d = TaesdDecoderModel::load(
            &model_file(family, Part::Decoder),
            family.name(),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(d.latent_channels(), family.latent_channels(), "{family}");
        let e = TaesdEncoderModel::load(
            &model_file(family, Part::Encoder),
            Device::Cpu,
            Precision::Exact,
        )
        .unwrap();
        assert_eq!(e.latent_channels(), family.latent_channels(), "{family}");
    }
}

#[test]
fn decoder_file_given_as_encoder_is_a_clear_error() {
    let err = TaesdEncoderModel::load(
        &model_file(Family::Taesd, Part::Decoder),
        Device::Cpu,
        Precision::Exact,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("taesd_decoder.safetensors"), "{err}");
    assert!(err.contains("14.weight"), "{err}");
}
