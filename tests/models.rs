//! `dreamd models list|verify` against the shared TAESD weights, a broken copy, and the upstream
//! `.pth` in a ComfyUI folder (found through `comfyui_dir` and `$COMFYUI_PATH`).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{isolate_models, pth_weights, shared_file, weights, Family, Part, BIN};

/// `dreamd models VERB` in `dir` with `config` as its config file, seeing only the folders the
/// config names (and `env`).
fn models_with(dir: &Path, config: &str, verb: &str, env: &[(&str, &Path)]) -> Output {
    std::fs::write(dir.join("dreamd.toml"), config).unwrap();
    let mut command = Command::new(BIN);
    isolate_models(&mut command, &dir.join("home"))
        .args(["models", verb, "--config", "dreamd.toml"])
        .current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn models(dir: &Path, models_dir: &Path, verb: &str) -> Output {
    let config = format!(
        "[generation]\nmodels_dir = {:?}\n",
        models_dir.display().to_string()
    );
    models_with(dir, &config, verb, &[])
}

#[test]
fn list_and_verify_every_shared_model() {
    // Every family member's safetensors: only the shared folder has them all.
    let Some(shared_models) = shared_file("taesd").and_then(|d| d.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listed = models(dir.path(), &shared_models, "list");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for family in ["taesd", "taesdxl", "taesd3", "taef1"] {
        for part in ["decoder", "encoder"] {
            assert!(
                text.contains(&format!("{family}_{part}.safetensors")),
                "{text}"
            );
        }
    }
    let verified = models(dir.path(), &shared_models, "verify");
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        8,
        "{text}"
    );
}

#[test]
fn verify_names_a_truncated_file_and_fails() {
    // taesd_decoder.safetensors from the shared folder, or the pulled upstream .pth.
    let Some(good) = weights(Family::Taesd, Part::Decoder) else {
        return;
    };
    let name = good.file_name().unwrap().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let models_dir = dir.path().join("models");
    std::fs::create_dir(&models_dir).unwrap();
    let bytes = std::fs::read(good).unwrap();
    std::fs::write(models_dir.join(&name), &bytes[..bytes.len() / 2]).unwrap();
    let out = models(dir.path(), &models_dir, "verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL") && stdout.contains(&name),
        "{stdout}"
    );
    assert!(
        stderr.contains("bad model files") && stderr.contains(&name),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn no_models_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = models(dir.path(), &dir.path().join("nowhere"), "list");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no TAESD model files found"));
    // What was looked at is listed with the reason it gave nothing.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let nowhere = dir.path().join("nowhere");
    assert!(
        stdout.contains(&format!(
            "{} (generation.models_dir): does not exist",
            nowhere.display()
        )),
        "{stdout}"
    );
}

#[test]
fn comfyui_pth_files_are_found_listed_and_verified() {
    let (Some(decoder), Some(encoder)) = (
        pth_weights(Family::Taesd, Part::Decoder),
        pth_weights(Family::Taesd, Part::Encoder),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let comfy = dir.path().join("ComfyUI");
    let vae_approx = comfy.join("models/vae_approx");
    std::fs::create_dir_all(&vae_approx).unwrap();
    std::fs::copy(&decoder, vae_approx.join("taesd_decoder.pth")).unwrap();
    std::fs::copy(&encoder, vae_approx.join("taesd_encoder.pth")).unwrap();
    // A models_dir with the decoder too: it wins, and the ComfyUI copy is reported as shadowed.
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::copy(&decoder, mine.join("taesd_decoder.pth")).unwrap();
    let config = format!(
        "[generation]\nmodels_dir = {:?}\ncomfyui_dir = {:?}\n",
        mine.display().to_string(),
        comfy.display().to_string()
    );

    let listed = models_with(dir.path(), &config, "list", &[]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{out}");
    let line = |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or("");
    let found_decoder = line(&format!(
        "{} (via generation.models_dir)",
        mine.join("taesd_decoder.pth").display()
    ));
    assert!(
        found_decoder.contains("taesd_decoder.pth") && found_decoder.contains(" .pth "),
        "{out}"
    );
    let found_encoder = line(&format!(
        "{} (via comfyui_dir)",
        vae_approx.join("taesd_encoder.pth").display()
    ));
    assert!(found_encoder.contains("taesd_encoder.pth"), "{out}");
    assert!(
        out.contains(&format!(
            "{} (comfyui_dir): shadowed by {}",
            vae_approx.join("taesd_decoder.pth").display(),
            mine.join("taesd_decoder.pth").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{} (./models): does not exist",
            dir.path().join("models").display()
        )),
        "{out}"
    );

    // `verify` names the real files, .pth included, and runs them.
    let verified = models_with(dir.path(), &config, "verify", &[]);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(out.contains("ok    taesd_decoder.pth"), "{out}");
    assert!(out.contains("ok    taesd_encoder.pth"), "{out}");
    assert!(!out.contains(".safetensors"), "{out}");

    // $COMFYUI_PATH (here naming the models folder) is searched too.
    let listed = models_with(
        dir.path(),
        "",
        "list",
        &[("COMFYUI_PATH", comfy.join("models").as_path())],
    );
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{} (via $COMFYUI_PATH)",
            vae_approx.join("taesd_decoder.pth").display()
        )),
        "{out}"
    );
}

/// Issue 15: `models list|verify` cover the in-process diffusion model folder.
#[test]
fn list_and_verify_cover_the_diffusion_model() {
    let Some(taesd) = shared_file("taesd") else {
        return;
    };
    let Some(tiny) = shared_file("tiny-sd/pipeline") else {
        return;
    };
    let shared_models = taesd.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[generation]\nmodels_dir = {:?}\n[keyframes]\nsource = \"diffusion\"\n\
         [diffusion]\nmodel_dir = {:?}\n",
        shared_models.display().to_string(),
        tiny.display().to_string()
    );
    let listed = models_with(dir.path(), &config, "list", &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{text}");
    for part in ["unet", "text_encoder", "tokenizer", "scheduler"] {
        assert!(text.contains(&format!("  {part} ")), "{part}: {text}");
    }
    let verified = models_with(dir.path(), &config, "verify", &[]);
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{text}");
    assert!(text.contains("ok    diffusion model"), "{text}");

    // A folder without its UNet is named, and the exit status says so.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("unet")).unwrap();
    let config = format!(
        "[generation]\nmodels_dir = {:?}\n[keyframes]\nsource = \"diffusion\"\n\
         [diffusion]\nmodel_dir = \"broken\"\nmodel = \"sd15\"\n",
        shared_models.display().to_string()
    );
    let listed = models_with(dir.path(), &config, "list", &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.status.success(), "{text}");
    assert!(
        text.contains("diffusion_pytorch_model.safetensors"),
        "{text}"
    );
}
