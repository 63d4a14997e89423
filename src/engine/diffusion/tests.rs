//! dreamd's real loading path (folder → tokenizer → text encoder → UNet → scheduler) against
//! diffusers' reference outputs for the tiny random SD 1.x pipeline in
//! `../shared/models/tiny-sd` (or `$DREAMD_MODELS/tiny-sd`). Without it the tests skip loudly,
//! and fail under `DREAMD_REQUIRE_TOOLS=1` (CI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device as CandleDevice, Tensor};

use super::*;

const ATOL: f32 = 5e-4;

/// The tiny-sd folder, or `None` after [`crate::test_weights::skip`] (a failure in CI).
pub(crate) fn tiny_sd() -> Option<PathBuf> {
    let dir = crate::test_weights::shared_file("tiny-sd")?;
    if dir.join("pipeline").is_dir() && dir.join("reference.safetensors").is_file() {
        return Some(dir);
    }
    crate::test_weights::skip("tiny-sd/pipeline and tiny-sd/reference.safetensors");
    None
}

/// Copies the parts `parts` of the tiny pipeline in `tiny` into `into/model`; returns that folder.
pub(crate) fn copy_pipeline(tiny: &Path, parts: &[&str], into: &Path) -> PathBuf {
    let copy = into.join("model");
    for part in parts {
        std::fs::create_dir_all(copy.join(part)).unwrap();
        for entry in std::fs::read_dir(tiny.join("pipeline").join(part)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(part).join(entry.file_name())).unwrap();
        }
    }
    copy
}

struct Fixture {
    model: DiffusionModel,
    reference: HashMap<String, Tensor>,
}

fn fixture() -> Option<Fixture> {
    let dir = tiny_sd()?;
    let device = CandleDevice::Cpu;
    let model = DiffusionModel::load(
        &dir.join("pipeline"),
        ModelChoice::Auto,
        DType::F32,
        &device,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &device)
        .unwrap_or_else(|e| panic!("reference.safetensors: {e}"));
    Some(Fixture { model, reference })
}

impl Fixture {
    fn get(&self, name: &str) -> &Tensor {
        self.reference
            .get(name)
            .unwrap_or_else(|| panic!("reference has no {name}"))
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

#[test]
fn token_ids_match_diffusers() {
    let Some(f) = fixture() else { return };
    let tok = &f.model.tokenizer;
    assert_eq!(
        tok.encode("a dream of the sea").unwrap(),
        ids(f.get("prompt_ids"))
    );
    assert_eq!(tok.encode("").unwrap(), ids(f.get("uncond_ids")));
    assert_eq!(
        tok.encode("Dreams, THE  sea-2!").unwrap(),
        ids(f.get("extra_ids"))
    );
    // Longer than 77 tokens: cut, and the end token kept.
    let long = tok.encode(&"sea ".repeat(100)).unwrap();
    assert_eq!(long.len(), 77);
    assert_eq!(long[76], 522);
}

#[test]
fn text_embeddings_match_diffusers() {
    let Some(f) = fixture() else { return };
    let d = max_diff(
        &f.model.embed("a dream of the sea").unwrap().0,
        f.get("prompt_embeds"),
    );
    eprintln!("prompt embeddings differ by {d}");
    assert!(d <= ATOL, "prompt embeddings differ by {d}");
    let d = max_diff(&f.model.embed("").unwrap().0, f.get("uncond_embeds"));
    eprintln!("empty-prompt embeddings differ by {d}");
    assert!(d <= ATOL, "empty-prompt embeddings differ by {d}");
}

#[test]
fn one_unet_call_matches_diffusers() {
    let Some(f) = fixture() else { return };
    let t = f.get("unet_t").to_vec1::<i64>().unwrap()[0] as f64;
    let out = f
        .model
        .unet
        .forward(f.get("unet_x"), t, f.get("prompt_embeds"))
        .unwrap();
    let d = max_diff(&out, f.get("unet_out"));
    eprintln!("UNet output differs by {d}");
    assert!(d <= ATOL, "UNet output differs by {d}");
}

#[test]
fn scheduler_matches_diffusers() {
    let Some(f) = fixture() else { return };
    let ac: Vec<f32> = f
        .model
        .scheduler
        .alphas_cumprod()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let d = max_diff(
        &Tensor::new(ac.as_slice(), &CandleDevice::Cpu).unwrap(),
        f.get("alphas_cumprod"),
    );
    assert!(d <= 1e-6, "alphas_cumprod differ by {d}");
    let ts: Vec<u32> = f
        .model
        .scheduler
        .timesteps(4)
        .iter()
        .map(|&t| t as u32)
        .collect();
    assert_eq!(ts, ids(f.get("ddim_timesteps")));
    let run = Sampler::img2img(&f.model.scheduler, 4, 0.5);
    let ts: Vec<u32> = run.timesteps().iter().map(|&t| t as u32).collect();
    assert_eq!(ts, ids(f.get("img2img_timesteps")));
}

/// 4-step DDIM img2img at strength 0.5 from the given noise, every step checked.
fn img2img(f: &Fixture, guidance: f64, latents: &str, out: &str) {
    let cond = f.model.embed("a dream of the sea").unwrap();
    let uncond = f.model.embed("").unwrap();
    let mut run = f
        .model
        .start(Some(f.get("init_latent")), f.get("noise"), 4, 0.5)
        .unwrap();
    let d = max_diff(&run.latent, f.get("img2img_noised"));
    eprintln!("noised latent differs by {d}");
    assert!(d <= ATOL, "noised latent differs by {d}");
    let mut i = 0;
    while !run.done() {
        let eps = run.step(&f.model, &cond, Some(&uncond), guidance).unwrap();
        if i == 0 && guidance > 1.0 {
            let d = max_diff(&eps, f.get("cfg_eps_0"));
            eprintln!("guided ε at step 0 differs by {d}");
            assert!(d <= ATOL, "guided ε at step 0 differs by {d}");
        }
        let expected = f.get(latents).get(i).unwrap();
        let d = max_diff(&run.latent, &expected);
        eprintln!("{latents} step {i} differs by {d}");
        assert!(d <= ATOL, "{latents} step {i} differs by {d}");
        i += 1;
    }
    assert_eq!(i, 2);
    let d = max_diff(&run.latent, f.get(out));
    eprintln!("{out} differs by {d}");
    assert!(d <= ATOL, "{out} differs by {d}");
}

#[test]
fn ddim_img2img_matches_diffusers() {
    let Some(f) = fixture() else { return };
    img2img(&f, 1.0, "img2img_latents", "img2img_out");
}

#[test]
fn ddim_img2img_with_cfg_matches_diffusers() {
    let Some(f) = fixture() else { return };
    let g = f.get("cfg_guidance_scale").to_vec1::<f32>().unwrap()[0] as f64;
    assert_eq!(g, 7.5);
    img2img(&f, g, "cfg_latents", "cfg_out");
}

#[test]
fn missing_file_or_tensor_is_one_error_naming_it() {
    let Some(dir) = tiny_sd() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_pipeline(
        &dir,
        &["unet", "text_encoder", "tokenizer", "scheduler"],
        tmp.path(),
    );
    let load = || DiffusionModel::load(&copy, ModelChoice::Auto, DType::F32, &CandleDevice::Cpu);
    assert!(load().is_ok());

    // A UNet file without one tensor: the error names the file and the tensor.
    let unet_file = copy.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&unet_file, &CandleDevice::Cpu).unwrap();
    tensors.remove("conv_out.weight").unwrap();
    candle_core::safetensors::save(&tensors, &unet_file).unwrap();
    let e = load()
        .err()
        .expect("a missing tensor must fail")
        .to_string();
    assert!(
        e.contains("conv_out.weight") && e.contains("diffusion_pytorch_model"),
        "{e}"
    );

    // A missing text encoder file: named.
    std::fs::remove_file(copy.join("text_encoder/model.safetensors")).unwrap();
    let e = load().err().expect("a missing file must fail").to_string();
    assert!(
        e.contains("text_encoder") && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn unprefixed_text_encoder_file_loads() {
    let Some(dir) = tiny_sd() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let copy = copy_pipeline(
        &dir,
        &["unet", "text_encoder", "tokenizer", "scheduler"],
        tmp.path(),
    );
    let te = copy.join("text_encoder/model.safetensors");
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&te, &CandleDevice::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("text_model.").to_string(), v))
        .collect();
    candle_core::safetensors::save(&tensors, &te).unwrap();
    let model = DiffusionModel::load(&copy, ModelChoice::Auto, DType::F32, &CandleDevice::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &CandleDevice::Cpu)
            .unwrap();
    let d = max_diff(
        &model.embed("a dream of the sea").unwrap().0,
        &reference["prompt_embeds"],
    );
    eprintln!("{d}");
    assert!(d <= ATOL, "{d}");
}
