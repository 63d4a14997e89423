//! `dreamd models pull` against a local HTTP server standing in for GitHub and Hugging Face
//! (there is no internet here): `.pth` files verified by git blob id (right and wrong ids),
//! files already present, tampered, truncated and missing downloads, and `--from hf` diffusers
//! folders verified by loading.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

/// A folder of the shared models, or None (the test skips loudly, or fails under
/// DREAMD_REQUIRE_MODELS / DREAMD_REQUIRE_TOOLS).
fn shared(sub: &str) -> Option<PathBuf> {
    support::shared_file(sub)
}

/// How the test server misbehaves for one file.
#[derive(Clone, Copy)]
enum Fault {
    /// One byte flipped.
    Tampered,
    /// Content-Length promises the whole file; half of it arrives.
    Truncated,
}

/// A minimal HTTP/1.1 file server on 127.0.0.1: GET `/models/PATH` serves `root/PATH`.
struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn start(root: PathBuf, faults: HashMap<&'static str, Fault>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/models/", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    match reader.read_line(&mut header) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if header == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let name = path.strip_prefix("/models/").unwrap_or("");
                let file =
                    (!name.split('/').any(|c| c == ".." || c.is_empty())).then(|| root.join(name));
                let _ = match file.and_then(|f| std::fs::read(f).ok()) {
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                    Some(mut body) => {
                        let length = body.len();
                        match faults.get(name) {
                            Some(Fault::Tampered) => body[length / 2] ^= 0x55,
                            Some(Fault::Truncated) => body.truncate(length / 2),
                            None => {}
                        }
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                             Content-Length: {length}\r\nConnection: close\r\n\r\n"
                        );
                        stream
                            .write_all(head.as_bytes())
                            .and_then(|()| stream.write_all(&body))
                    }
                };
            }
        });
        Server { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn pull(dir: &Path, base_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["models", "pull", "--dir", "models", "--base-url", base_url])
        .args(args)
        .current_dir(dir)
        .env_remove("DREAMD_MODELS_URL")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn upstream_pth_files_verify_by_git_blob_id_then_are_not_fetched_again() {
    // The shared taef2 files are byte-identical to upstream: the embedded pins match.
    let Some(pth) = shared("taesd-pth") else {
        return;
    };
    let server = Server::start(pth.clone(), HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let first = pull(dir.path(), &server.url, &["taef2"]);
    let out = text(&first);
    assert!(first.status.success(), "{out}");
    assert_eq!(out.matches("git blob id verified").count(), 2, "{out}");
    let models = dir.path().join("models");
    assert_eq!(
        files_in(&models),
        ["taef2_decoder.pth", "taef2_encoder.pth"]
    );
    for name in files_in(&models) {
        assert_eq!(read(&models.join(&name)), read(&pth.join(&name)), "{name}");
    }
    assert_eq!(server.requests(), 2);

    let again = pull(dir.path(), &server.url, &["taef2"]);
    let out = text(&again);
    assert!(again.status.success(), "{out}");
    assert_eq!(
        out.matches("already present, git blob id matches").count(),
        2,
        "{out}"
    );
    assert_eq!(server.requests(), 2);
}

#[test]
fn a_wrong_blob_id_tampered_or_truncated_download_is_discarded_and_named() {
    let Some(pth) = shared("taesd-pth") else {
        return;
    };
    // The shared taesd_*.pth were written by torch.save, not by upstream: their blob ids differ
    // from the pinned upstream ones.
    let faults = HashMap::from([
        ("taef2_decoder.pth", Fault::Tampered),
        ("taef2_encoder.pth", Fault::Truncated),
    ]);
    let server = Server::start(pth, faults);
    let dir = tempfile::tempdir().unwrap();
    let output = pull(dir.path(), &server.url, &["taesd", "taef2"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains(
            "taesd_decoder.pth: git blob id mismatch (expected 5915a429fc08eba4adf62bf74f96705b8b0d5c1f, got "
        ),
        "{out}"
    );
    assert!(
        out.contains("taesd_encoder.pth: git blob id mismatch (expected 65f85afc"),
        "{out}"
    );
    assert!(
        out.contains("taef2_decoder.pth: git blob id mismatch (expected f4da1ec4"),
        "{out}"
    );
    assert!(
        out.contains("interrupted after 1352346 of 2704692 bytes"),
        "{out}"
    );
    assert!(
        out.contains("could not pull: taesd_decoder.pth, taesd_encoder.pth, taef2_decoder.pth, taef2_encoder.pth"),
        "{out}"
    );
    // Nothing partial or temporary is left.
    assert_eq!(files_in(&dir.path().join("models")), Vec::<String>::new());
}

#[test]
fn a_manifest_pinning_other_blob_ids_accepts_those_files_and_replaces_bad_local_ones() {
    let Some(pth) = shared("taesd-pth") else {
        return;
    };
    let blob = |name: &str| dreamd::pull::git_blob_hex(&read(&pth.join(name)));
    let manifest = format!(
        "[source.github]\nbase_url = \"http://unused.invalid/\"\n\n\
         [[file]]\nname = \"taesd_decoder.pth\"\nfamily = \"taesd\"\ngit_blob = \"{}\"\n\n\
         [[file]]\nname = \"taesd_encoder.pth\"\nfamily = \"taesd\"\ngit_blob = \"{}\"\n",
        blob("taesd_decoder.pth"),
        blob("taesd_encoder.pth")
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pins.toml"), manifest).unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("taesd_decoder.pth"), b"not a model").unwrap();
    let server = Server::start(pth.clone(), HashMap::new());
    let output = pull(dir.path(), &server.url, &["--manifest", "pins.toml"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("replaced a file that did not verify"), "{out}");
    assert_eq!(
        read(&models.join("taesd_decoder.pth")),
        read(&pth.join("taesd_decoder.pth"))
    );
    // What was pulled loads as weights.
    use dreamd::engine::taesd::weights::{Part, WeightFile};
    let weights = WeightFile::load(&models.join("taesd_decoder.pth"), Part::Decoder).unwrap();
    assert_eq!(weights.taesd_latent_channels(Part::Decoder).unwrap(), 4);
    // The daemon's own check finds the pulled .pth files in ./models and accepts them.
    let verify = support::isolate_models(&mut Command::new(BIN), dir.path())
        .args(["models", "verify"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = text(&verify);
    assert!(verify.status.success(), "{out}");
    assert_eq!(out.matches("\nok    taesd_").count(), 2, "{out}");

    let empty = tempfile::tempdir().unwrap();
    let missing = Server::start(empty.path().to_path_buf(), HashMap::new());
    let output = pull(dir.path(), &missing.url, &["taesdxl"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains(&format!("{}taesdxl_decoder.pth: HTTP 404", missing.url)),
        "{out}"
    );

    let output = pull(dir.path(), &server.url, &["sdxl"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("unknown family \"sdxl\""), "{out}");
}

/// The shared index-layout safetensors as one diffusers `AutoencoderTiny` file.
fn diffusers_safetensors(taesd: &Path) -> Vec<u8> {
    let decoder = read(&taesd.join("taesd_decoder.safetensors"));
    let encoder = read(&taesd.join("taesd_encoder.safetensors"));
    let decoder = safetensors::SafeTensors::deserialize(&decoder).unwrap();
    let encoder = safetensors::SafeTensors::deserialize(&encoder).unwrap();
    let mut tensors = Vec::new();
    for (file, prefix, offset) in [(&decoder, "decoder", 1), (&encoder, "encoder", 0)] {
        for (name, view) in file.tensors() {
            let (index, tail) = name.split_once('.').unwrap();
            let index: usize = index.parse().unwrap();
            tensors.push((format!("{prefix}.layers.{}.{tail}", index - offset), view));
        }
    }
    safetensors::serialize(tensors, None).unwrap()
}

#[test]
fn from_hf_pulls_a_diffusers_folder_verified_by_loading() {
    let Some(taesd) = shared("taesd") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("madebyollin/taesd/resolve/main");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("diffusion_pytorch_model.safetensors"),
        diffusers_safetensors(&taesd),
    )
    .unwrap();
    std::fs::write(
        repo.join("config.json"),
        br#"{"_class_name": "AutoencoderTiny", "latent_channels": 4}"#,
    )
    .unwrap();
    let server = Server::start(root.path().to_path_buf(), HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let output = pull(dir.path(), &server.url, &["--from", "hf", "taesd"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert_eq!(out.matches("load check verified").count(), 2, "{out}");
    let folder = dir.path().join("models/taesd");
    assert_eq!(
        files_in(&folder),
        ["config.json", "diffusion_pytorch_model.safetensors"]
    );
    // The model search finds the folder and serves both halves from it.
    use dreamd::engine::model_search::{search, Format, SearchInputs};
    use dreamd::engine::taesd::weights::Part;
    let report = search(&SearchInputs {
        models_dir: Some(dir.path().join("models")),
        ..SearchInputs::default()
    });
    let found = report
        .find(dreamd::engine::taesd::Family::Taesd, Part::Encoder)
        .unwrap();
    assert_eq!(found.format, Format::Diffusers);

    // A file that does not load is refused; a family HF does not carry is named.
    std::fs::write(
        repo.join("config.json"),
        br#"{"_class_name": "AutoencoderKL"}"#,
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let output = pull(other.path(), &server.url, &["--from", "hf", "taesd"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains(
            "taesd/config.json: the download does not load (_class_name is Some(\"AutoencoderKL\")"
        ),
        "{out}"
    );
    assert!(!other.path().join("models/taesd/config.json").exists());
    let output = pull(other.path(), &server.url, &["--from", "hf", "taef2"]);
    assert!(
        text(&output).contains("source \"hf\" has no taef2 files"),
        "{}",
        text(&output)
    );
}
