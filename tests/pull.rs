//! `dreamd models pull` against a local HTTP server serving the shared TAESD weights (there is no
//! internet here): verified downloads, files already present, tampered, truncated and missing
//! downloads.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_dreamd");

fn shared_taesd() -> PathBuf {
    std::env::var_os("DREAMD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models"))
        .join("taesd")
}

/// How the test server misbehaves for one file.
#[derive(Clone, Copy)]
enum Fault {
    /// One byte flipped.
    Tampered,
    /// Content-Length promises the whole file; half of it arrives.
    Truncated,
}

/// A minimal HTTP/1.1 file server on 127.0.0.1: GET `/models/NAME` serves `root/NAME`.
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
                let file = (!name.contains('/')).then(|| root.join(name));
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

#[test]
fn pulls_verified_files_then_skips_them_when_present() {
    let server = Server::start(shared_taesd(), HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let first = pull(dir.path(), &server.url, &[]);
    let out = text(&first);
    assert!(first.status.success(), "{out}");
    assert!(
        out.contains("taesd_decoder.safetensors") && out.contains("sha256 verified"),
        "{out}"
    );
    let models = dir.path().join("models");
    assert_eq!(
        files_in(&models),
        ["taesd_decoder.safetensors", "taesd_encoder.safetensors"]
    );
    for name in files_in(&models) {
        assert_eq!(
            std::fs::read(models.join(&name)).unwrap(),
            std::fs::read(shared_taesd().join(&name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(server.requests(), 2);

    // Present with the right hash: nothing is fetched.
    let again = pull(dir.path(), &server.url, &[]);
    let out = text(&again);
    assert!(again.status.success(), "{out}");
    assert_eq!(out.matches("already present").count(), 2, "{out}");
    assert_eq!(server.requests(), 2);

    // The daemon's own check accepts what was pulled.
    let verify = Command::new(BIN)
        .args(["models", "verify"])
        .current_dir(dir.path())
        .env_remove("DREAMD_MODELS")
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn a_tampered_or_truncated_download_is_discarded_and_named() {
    let faults = HashMap::from([
        ("taef1_decoder.safetensors", Fault::Tampered),
        ("taef1_encoder.safetensors", Fault::Truncated),
    ]);
    let server = Server::start(shared_taesd(), faults);
    let dir = tempfile::tempdir().unwrap();
    let output = pull(dir.path(), &server.url, &["taef1", "taesd3"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains("taef1_decoder.safetensors: sha256 mismatch (expected bb41500b"),
        "{out}"
    );
    assert!(out.contains("taef1_encoder.safetensors"), "{out}");
    assert!(
        out.contains("interrupted after 1232212 of 2464424 bytes"),
        "{out}"
    );
    assert!(
        out.contains("could not pull: taef1_decoder.safetensors, taef1_encoder.safetensors"),
        "{out}"
    );
    // The good family still arrives; nothing partial or temporary is left.
    assert_eq!(
        files_in(&dir.path().join("models")),
        ["taesd3_decoder.safetensors", "taesd3_encoder.safetensors"]
    );
}

#[test]
fn a_wrong_local_file_is_replaced_and_a_missing_one_named() {
    let server = Server::start(shared_taesd(), HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("taesd_decoder.safetensors"), b"not a model").unwrap();
    let output = pull(dir.path(), &server.url, &["taesd"]);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("replaced a file with another hash"), "{out}");
    assert_eq!(
        std::fs::read(models.join("taesd_decoder.safetensors")).unwrap(),
        std::fs::read(shared_taesd().join("taesd_decoder.safetensors")).unwrap()
    );

    let empty = tempfile::tempdir().unwrap();
    let missing = Server::start(empty.path().to_path_buf(), HashMap::new());
    let output = pull(dir.path(), &missing.url, &["taesdxl"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "{}taesdxl_decoder.safetensors: HTTP 404",
            missing.url
        )),
        "{out}"
    );

    let output = pull(dir.path(), &server.url, &["sdxl"]);
    let out = text(&output);
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("unknown family \"sdxl\""), "{out}");
}
