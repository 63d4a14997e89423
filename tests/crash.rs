//! Crash safety: the daemon is SIGKILLed at random moments, 50 times, while readers parse
//! `status.json`, `current_frame.png` and the frames continuously. No reader may ever see a
//! partial file, a restart must clear the temporary files a crash left, and a frame file, once
//! written, never changes (numbering continues after a crash instead of overwriting).

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use support::{config, spawn};

const KILLS: usize = 50;

/// A small deterministic generator for the kill moments (the seed is printed on failure).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// What the readers found.
#[derive(Default)]
struct Findings {
    problems: Mutex<Vec<String>>,
    status_reads: AtomicU64,
    frame_reads: AtomicU64,
    /// The daemon run now going on (the number of kills so far).
    run: AtomicUsize,
    /// The runs during which `status.json`, and `current_frame.png`, were read.
    runs_with_status_read: Mutex<HashSet<usize>>,
    runs_with_frame_read: Mutex<HashSet<usize>>,
    /// Frame file name → its bytes' length and a checksum, as first seen.
    frames_seen: Mutex<HashMap<String, (usize, u64)>>,
}

impl Findings {
    fn problem(&self, what: String) {
        self.problems.lock().unwrap().push(what);
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Reads `status.json` and `current_frame.png` in a loop; every read that finds a file must
/// parse or decode completely.
fn read_live_files(output: PathBuf, stop: Arc<AtomicBool>, found: Arc<Findings>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(text) = std::fs::read_to_string(output.join("status.json")) {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                found.problem(format!("partial status.json ({e}): {text:?}"));
            }
            found.status_reads.fetch_add(1, Ordering::Relaxed);
            let run = found.run.load(Ordering::Relaxed);
            found.runs_with_status_read.lock().unwrap().insert(run);
        }
        if let Ok(bytes) = std::fs::read(output.join("current_frame.png")) {
            if let Err(e) = image::load_from_memory(&bytes) {
                found.problem(format!(
                    "partial current_frame.png ({} bytes): {e}",
                    bytes.len()
                ));
            }
            found.frame_reads.fetch_add(1, Ordering::Relaxed);
            let run = found.run.load(Ordering::Relaxed);
            found.runs_with_frame_read.lock().unwrap().insert(run);
        }
    }
}

/// Reads every frame file in a loop: each must decode, and must never change once seen.
fn read_frames(frames: PathBuf, stop: Arc<AtomicBool>, found: Arc<Findings>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(entries) = std::fs::read_dir(&frames) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".png") || name.starts_with('.') {
                continue;
            }
            // Pruned between listing and reading: fine.
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            if let Err(e) = image::load_from_memory(&bytes) {
                found.problem(format!("partial frame {name} ({} bytes): {e}", bytes.len()));
            }
            let print = (bytes.len(), checksum(&bytes));
            let mut seen = found.frames_seen.lock().unwrap();
            if let Some(first) = seen.insert(name.clone(), print) {
                if first != print {
                    found.problem(format!("frame {name} was overwritten"));
                }
            }
        }
    }
}

/// Whether `dir` holds a finished frame file.
fn has_frame(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".png") && !name.starts_with('.')
        })
    })
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_partial_file() {
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    let mut random = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    // A short gate and a small retention, so kills land in every phase (start, playing, pruning);
    // small frames, so that even a debug build on a slow machine makes many of them per run
    // (what is tested is how files are written, not how fast frames are made).
    let text = config(
        "width = 128\nheight = 64\n[output]\nkeep_frames = 40\n\
         [server]\nbind = \"127.0.0.1:0\"\n",
    );
    std::fs::write(dir.path().join("dreamd.toml"), text).unwrap();
    let output = dir.path().join("output");

    let stop = Arc::new(AtomicBool::new(false));
    let found = Arc::new(Findings::default());
    let readers = [
        {
            let (output, stop, found) = (output.clone(), stop.clone(), found.clone());
            std::thread::spawn(move || read_live_files(output, stop, found))
        },
        {
            let (frames, stop, found) = (output.join("frames"), stop.clone(), found.clone());
            std::thread::spawn(move || read_frames(frames, stop, found))
        },
    ];

    let started = Instant::now();
    // The first run is killed as its first frame appears; how long that took (this build, this
    // machine) sets how long the others may live: up to twice as long, so that the kills land
    // before, during and well after the first frames, however fast the machine is.
    let mut first = spawn(dir.path(), &["run", "--config", "dreamd.toml"], &[]);
    let until = started + Duration::from_secs(60);
    while !has_frame(&output.join("frames")) {
        assert!(Instant::now() < until, "no frame made in 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_frame = started.elapsed();
    first.kill().unwrap();
    first.wait().unwrap();
    let longest = (2 * first_frame.as_millis() as u64).clamp(700, 10_000);
    let mut stale_after_kill = temp_files(&output).len() + temp_files(&output.join("frames")).len();
    for run in 1..KILLS {
        found.run.store(run, Ordering::Relaxed);
        let mut child = spawn(dir.path(), &["run", "--config", "dreamd.toml"], &[]);
        std::thread::sleep(Duration::from_millis(random.next_ms(30, longest)));
        child.kill().unwrap();
        child.wait().unwrap();
        stale_after_kill += temp_files(&output).len() + temp_files(&output.join("frames")).len();
    }
    // A last, clean run: it must clear whatever temporary files the kills left, then stop.
    let mut last = spawn(
        dir.path(),
        &["run", "--config", "dreamd.toml", "--duration", "1.5"],
        &[],
    );
    assert!(last.wait().unwrap().success());
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }

    let problems = found.problems.lock().unwrap();
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    // The readers must have been at work while the kills happened, not merely before or after:
    // in most runs (the first few may end before the first frame is shown).
    let status_reads = found.status_reads.load(Ordering::Relaxed);
    let frame_reads = found.frame_reads.load(Ordering::Relaxed);
    let runs_with_status_read = found.runs_with_status_read.lock().unwrap().len();
    let runs_with_frame_read = found.runs_with_frame_read.lock().unwrap().len();
    assert!(
        runs_with_status_read > KILLS * 3 / 4 && runs_with_frame_read > KILLS / 2,
        "the readers read status.json during {runs_with_status_read} and current_frame.png \
         during {runs_with_frame_read} of {KILLS} runs ({status_reads} / {frame_reads} reads)"
    );
    assert!(
        found.frames_seen.lock().unwrap().len() > 40,
        "too few frames made"
    );
    assert_eq!(temp_files(&output), Vec::<String>::new());
    assert_eq!(temp_files(&output.join("frames")), Vec::<String>::new());
    eprintln!(
        "{KILLS} kills in {:.1} s (the first frame after {} ms, so kills at 30-{longest} ms): {status_reads} status reads ({runs_with_status_read} runs), \
         {frame_reads} frame reads ({runs_with_frame_read} runs), \
         {} frame files checked, {stale_after_kill} temp files found right after kills",
        started.elapsed().as_secs_f64(),
        first_frame.as_millis(),
        found.frames_seen.lock().unwrap().len()
    );
}

/// Issue 18 (7): SIGHUP, SIGUSR1/2, SIGQUIT and SIGALRM used to kill the daemon at once with
/// status.json left at `playing`. SIGUSR1, SIGUSR2 and SIGALRM are now ignored (logged), and
/// SIGQUIT stops gracefully like SIGTERM: exit 0, status.json `stopped`. (SIGHUP reloads the
/// config: tests/reload.rs.)
#[test]
fn stray_signals_are_ignored_and_sigquit_stops_gracefully() {
    let mut daemon = support::Daemon::start("");
    daemon.wait_for_first_frame();
    for signal in ["USR1", "USR2", "ALRM", "HUP"] {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &daemon.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !(daemon.log().contains("SIGUSR1 received: ignored")
        && daemon.log().contains("SIGUSR2 received: ignored")
        && daemon.log().contains("SIGALRM received: ignored"))
    {
        assert!(Instant::now() < until, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );
    assert_ne!(daemon.status().unwrap()["state"], "stopped");
    let (status, took) = daemon.signal_and_wait("QUIT", Duration::from_secs(5));
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(took < Duration::from_secs(3));
    assert_eq!(daemon.status().unwrap()["state"], "stopped");
}
