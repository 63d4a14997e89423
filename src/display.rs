//! The display: shows frames in sequence order at the target rate and publishes each one.
//!
//! Pacing runs on its own OS thread with absolute deadlines (`start + k·interval`), so neither
//! the async runtime nor decode work can make it drift; a wake-up more than a whole interval
//! late re-anchors the schedule instead of bursting. Publishing (the atomic replace of
//! `current_frame.png`) happens on a second thread with bytes that stage 3 already encoded, so a
//! slow disk never delays a tick.
//!
//! Frames reach file watchers on the tick: right after showing a frame the pacer hands the
//! *next* ready frame to the publisher, which writes, fsyncs and closes it as a temp file during
//! the interval ([`crate::atomic_file::stage`]). At the next tick only a rename is left, so the
//! new `current_frame` lands within a fraction of a millisecond of its deadline (before, the
//! write and fsync came after the tick: p99 2.8 ms on a quiet machine, ≈12 ms under load). When
//! the frame shown is not the one staged (a skip, a hole) the publisher writes it the old way.
//! The in-memory current frame (`/frame/current`, the live events) is switched by the pacer
//! itself at the tick.
//!
//! Holes never freeze the screen: a failed slot is skipped at once; a slot still pending holds
//! the current frame for one interval, then the display skips to the next ready frame. With
//! nothing ready it goes back to `buffering` until the start gate refills.
//!
//! Operator [`Control`]: while paused the pacer keeps ticking but holds the frame on screen; a
//! skip request drops the frames before the next ready keyframe. The publisher also hands each
//! published frame to a `watch` channel (see [`Display::current_frame`]) that the HTTP server
//! reads; a watch never blocks its sender, so no reader can slow the display.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::{watch, Notify};

use crate::atomic_file::{stage, write_atomic, StagedFile};
use crate::buffer::{FrameBuffer, Front};
use crate::config::live::LiveSettings;
use crate::control::Control;
use crate::events::{DisplayEvent, LogEvent};
use crate::faults::Faults;
use crate::frame::{EncodedFrame, FrameKind};
use crate::stats::{millis as ms, DisplayPhase, Stage, Telemetry};

/// A wake-up later than this counts as a late tick.
const LATE_AFTER: Duration = Duration::from_millis(2);
/// How often the display looks at the buffer while it waits for the start gate.
const GATE_POLL: Duration = Duration::from_millis(10);
/// Frames queued for the publisher before the display drops the oldest.
const PUBLISH_QUEUE: usize = 8;

/// Display settings.
#[derive(Debug, Clone)]
pub struct DisplaySettings {
    /// Time each frame is shown and the start gate, read at every tick (a reload may change
    /// them).
    pub live: Arc<LiveSettings>,
    /// Folder that receives `current_frame.<ext>`.
    pub output_dir: PathBuf,
    /// Fault injection for the `current_frame` writes.
    pub faults: Arc<Faults>,
}

/// The most recently published frame (None before the first), for the HTTP server.
pub type CurrentFrame = watch::Receiver<Option<Arc<EncodedFrame>>>;

/// The running display; stopping it joins both threads.
pub struct Display {
    stop: Option<Sender<()>>,
    pacer: Option<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
    current: CurrentFrame,
}

impl Display {
    /// Starts the pacing and publishing threads.
    pub fn spawn(
        settings: DisplaySettings,
        buffer: Arc<FrameBuffer>,
        telemetry: Arc<Telemetry>,
        status_wake: Arc<Notify>,
        control: Arc<Control>,
    ) -> std::io::Result<Display> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (publish_tx, publish_rx) = crossbeam_channel::bounded(PUBLISH_QUEUE);
        let (current_tx, current) = watch::channel(None);
        let publisher = {
            let telemetry = Arc::clone(&telemetry);
            let dir = settings.output_dir.clone();
            let faults = Arc::clone(&settings.faults);
            std::thread::Builder::new()
                .name("display-publish".into())
                .spawn(move || publish_loop(publish_rx, dir, telemetry, &faults))?
        };
        let pacer = Pacer {
            settings,
            buffer,
            telemetry,
            status_wake,
            control,
            skips_served: Cell::new(0),
            stop: stop_rx,
            publish: publish_tx,
            current: current_tx,
        };
        let pacer = std::thread::Builder::new()
            .name("display-pacer".into())
            .spawn(move || pacer.run())?;
        Ok(Display {
            stop: Some(stop_tx),
            pacer: Some(pacer),
            publisher: Some(publisher),
            current,
        })
    }

    /// Follows the published frame (the same one `current_frame.<ext>` holds, or is about to).
    pub fn current_frame(&self) -> CurrentFrame {
        self.current.clone()
    }

    /// Stops pacing, lets the publisher finish its queue, and waits for both threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        for handle in [self.pacer.take(), self.publisher.take()]
            .into_iter()
            .flatten()
        {
            if handle.join().is_err() {
                tracing::error!("a display thread panicked");
            }
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the pacer does at a tick.
enum Choice {
    Show(Arc<EncodedFrame>),
    Hold(u64),
    Empty,
}

struct Pacer {
    settings: DisplaySettings,
    buffer: Arc<FrameBuffer>,
    telemetry: Arc<Telemetry>,
    status_wake: Arc<Notify>,
    control: Arc<Control>,
    /// Skip requests carried out (compared with [`Control::skips_requested`]).
    skips_served: Cell<u64>,
    stop: Receiver<()>,
    publish: Sender<Publish>,
    /// The in-memory current frame, switched at the tick.
    current: watch::Sender<Option<Arc<EncodedFrame>>>,
}

/// What the pacer asks of the publisher.
enum Publish {
    /// This frame is on screen now: make it `current_frame.<ext>` (a rename when it was staged).
    Show(Arc<EncodedFrame>),
    /// This frame is probably next: write it to a temp file, ready to rename at its tick.
    Stage(Arc<EncodedFrame>),
}

impl Pacer {
    fn run(self) {
        while self.wait_for_gate() {
            if !self.play() {
                break;
            }
        }
        self.set_phase(DisplayPhase::Stopped);
    }

    /// Sleeps until `deadline`; false when asked to stop.
    fn sleep_until(&self, deadline: Instant) -> bool {
        matches!(
            self.stop.recv_deadline(deadline),
            Err(RecvTimeoutError::Timeout)
        )
    }

    fn set_phase(&self, phase: DisplayPhase) {
        if self.telemetry.display.set_phase(phase) {
            tracing::info!(phase = ?phase, "display {}", phase_name(phase));
            self.status_wake.notify_one();
        }
    }

    /// Waits until enough frames are ready to (re)start playback; false when asked to stop.
    fn wait_for_gate(&self) -> bool {
        self.set_phase(DisplayPhase::Buffering);
        loop {
            // Failed slots at the front can never be shown; drop them while waiting.
            while let Front::Failed(seq) = self.buffer.front() {
                self.buffer.pop_front();
                self.skipped(seq, "failed");
            }
            let counts = self.buffer.counts();
            if counts.ready >= self.settings.live.get().gate_frames {
                return true;
            }
            if !self.sleep_until(Instant::now() + GATE_POLL) {
                return false;
            }
        }
    }

    /// Shows frames on schedule until the buffer runs dry (true) or a stop (false).
    fn play(&self) -> bool {
        self.set_phase(DisplayPhase::Playing);
        let mut deadline = Instant::now();
        let mut previous_show: Option<Instant> = None;
        let mut holding = false;
        loop {
            if !self.sleep_until(deadline) {
                return false;
            }
            let interval = self.settings.live.get().frame_interval;
            if self.control.is_paused() {
                // Hold the frame on screen; the gap across a pause is not a pacing error.
                previous_show = None;
                deadline += interval;
                continue;
            }
            let now = Instant::now();
            let lateness = now - deadline;
            if lateness > LATE_AFTER {
                self.telemetry.display.late.fetch_add(1, ORDER);
                DisplayEvent::Late {
                    late_ms: ms(lateness),
                }
                .emit();
                if lateness > interval {
                    // Too far behind to catch up without a burst: restart the schedule now.
                    deadline = now;
                    previous_show = None;
                }
            }
            match self.choose(&mut holding) {
                Choice::Show(frame) => {
                    self.show(frame, now);
                    if let Some(previous) = previous_show {
                        self.telemetry.display.interval(now - previous, interval);
                    }
                    previous_show = Some(now);
                }
                Choice::Hold(seq) => {
                    self.telemetry.display.held.fetch_add(1, ORDER);
                    DisplayEvent::Held { seq }.emit();
                    previous_show = None;
                }
                Choice::Empty => {
                    tracing::warn!("display buffer empty: buffering");
                    return true;
                }
            }
            deadline += interval;
        }
    }

    /// Picks the frame for this tick, skipping failed slots, and pending ones after one hold.
    fn choose(&self, holding: &mut bool) -> Choice {
        let skips = self.control.skips_requested();
        if skips != self.skips_served.get() && self.skip_to_keyframe() {
            self.skips_served.set(skips);
        }
        loop {
            match self.buffer.front() {
                Front::Ready(frame) => {
                    self.buffer.pop_front();
                    *holding = false;
                    return Choice::Show(frame);
                }
                Front::Failed(seq) => {
                    self.buffer.pop_front();
                    self.skipped(seq, "failed");
                }
                Front::Pending(seq) => {
                    if !*holding {
                        *holding = true;
                        return Choice::Hold(seq);
                    }
                    if self.buffer.counts().ready == 0 {
                        *holding = false;
                        return Choice::Empty;
                    }
                    self.buffer.pop_front();
                    self.skipped(seq, "late");
                }
                Front::Empty => {
                    *holding = false;
                    return Choice::Empty;
                }
            }
        }
    }

    /// Drops the frames in front of the next ready keyframe (an operator's skip); true once a
    /// keyframe is at the front, false while the way there is not ready yet.
    fn skip_to_keyframe(&self) -> bool {
        let mut dropped = 0u64;
        let arrived = loop {
            match self.buffer.front() {
                Front::Ready(frame) if matches!(frame.kind, FrameKind::Keyframe { .. }) => {
                    break true
                }
                Front::Ready(_) | Front::Failed(_) => {
                    self.buffer.pop_front();
                    dropped += 1;
                }
                Front::Pending(_) | Front::Empty => break false,
            }
        };
        DisplayEvent::SkipRequest { dropped, arrived }.emit();
        arrived
    }

    fn skipped(&self, seq: u64, reason: &str) {
        self.telemetry.display.skipped.fetch_add(1, ORDER);
        DisplayEvent::Skipped {
            seq,
            reason: reason.to_string(),
        }
        .emit();
    }

    fn show(&self, frame: Arc<EncodedFrame>, at: Instant) {
        self.telemetry
            .display
            .shown(frame.seq, frame.kind.keyframe(), at);
        // An in-memory swap that never blocks: `/frame/current` and the events switch now.
        self.current.send_replace(Some(Arc::clone(&frame)));
        if let Err(crossbeam_channel::TrySendError::Full(_)) =
            self.publish.try_send(Publish::Show(frame))
        {
            // The publisher is behind (slow disk); the file will catch up with a later frame.
            self.telemetry.display.publish_failures.fetch_add(1, ORDER);
        }
        // Prepare the next frame's file during the interval, when it is already made.
        if let Front::Ready(next) = self.buffer.front() {
            let _ = self.publish.try_send(Publish::Stage(next));
        }
    }
}

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

fn phase_name(phase: DisplayPhase) -> &'static str {
    match phase {
        DisplayPhase::Starting => "starting",
        DisplayPhase::Buffering => "buffering",
        DisplayPhase::Playing => "playing",
        DisplayPhase::Stopped => "stopped",
    }
}

/// Makes each shown frame `current_frame.<ext>` until the display stops: by renaming the temp
/// file staged for it when there is one, else by writing it (temp file, fsync, close, rename).
/// Of several queued requests only the newest `Show`, and the `Stage` after it, are carried out.
fn publish_loop(
    queue: Receiver<Publish>,
    dir: PathBuf,
    telemetry: Arc<Telemetry>,
    faults: &Faults,
) {
    let path_of =
        |frame: &EncodedFrame| dir.join(format!("current_frame.{}", frame.format.extension()));
    let mut staged: Option<(u64, StagedFile)> = None;
    while let Ok(first) = queue.recv() {
        let mut requests = vec![first];
        requests.extend(queue.try_iter());
        let last_show = requests.iter().rposition(|r| matches!(r, Publish::Show(_)));
        let next = requests[last_show.map_or(0, |i| i + 1)..]
            .iter()
            .rev()
            .find_map(|r| match r {
                Publish::Stage(frame) => Some(Arc::clone(frame)),
                Publish::Show(_) => None,
            });
        if let Some(Publish::Show(frame)) = last_show.map(|i| &requests[i]) {
            let path = path_of(frame);
            let written = match staged.take() {
                Some((seq, file)) if seq == frame.seq && file.dest() == path => file.commit(),
                // Not the frame staged (a skip, a hole): the staged file is dropped (deleted).
                _ => faults
                    .before_frame_write()
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
                    })
                    .and_then(|()| write_atomic(&path, &frame.bytes)),
            };
            if let Err(e) = written {
                telemetry.display.publish_failures.fetch_add(1, ORDER);
                telemetry
                    .pipeline
                    .record_failure(Stage::Publish, e.to_string());
                tracing::warn!(seq = frame.seq, "cannot publish current frame: {e}");
            }
        }
        if let Some(frame) = next {
            if staged.as_ref().is_some_and(|(seq, _)| *seq == frame.seq) {
                continue;
            }
            staged = None;
            let path = path_of(&frame);
            // A failure here is not counted: the frame is written again when shown.
            match faults
                .before_frame_write()
                .and_then(|()| stage(&path, &frame.bytes))
            {
                Ok(file) => staged = Some((frame.seq, file)),
                Err(e) => tracing::debug!(seq = frame.seq, "cannot stage the next frame: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Arc<EncodedFrame> {
        crate::frame::test_frame(seq)
    }

    fn start(
        buffer: &Arc<FrameBuffer>,
        gate: usize,
    ) -> (Display, Arc<Telemetry>, tempfile::TempDir) {
        start_with(buffer, gate, Arc::new(Control::new("test", false)))
    }

    fn start_with(
        buffer: &Arc<FrameBuffer>,
        gate: usize,
        control: Arc<Control>,
    ) -> (Display, Arc<Telemetry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(Telemetry::default());
        // 50 fps: a 20 ms interval.
        let mut config = crate::config::Config::default();
        config.display.target_fps = 50.0;
        config.display.start_gate_seconds = gate as f64 / 50.0;
        let display = Display::spawn(
            DisplaySettings {
                live: Arc::new(LiveSettings::new(&config)),
                output_dir: dir.path().to_path_buf(),
                faults: Faults::none(),
            },
            Arc::clone(buffer),
            Arc::clone(&telemetry),
            Arc::new(Notify::new()),
            control,
        )
        .unwrap();
        (display, telemetry, dir)
    }

    fn wait_for(mut done: impl FnMut() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < give_up, "condition not reached in 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn shows_frames_in_order_and_publishes_the_current_one() {
        let buffer = Arc::new(FrameBuffer::new(0));
        buffer.register(0, 5).unwrap();
        for seq in 0..5 {
            buffer.fulfil(frame(seq));
        }
        let (display, telemetry, dir) = start(&buffer, 5);
        wait_for(|| telemetry.display.frames_displayed.load(ORDER) == 5);
        wait_for(|| {
            std::fs::read(dir.path().join("current_frame.png")).ok()
                == Some(4u64.to_le_bytes().to_vec())
        });
        assert_eq!(telemetry.display.current_sequence(), Some(4));
        wait_for(|| telemetry.display.phase() == DisplayPhase::Buffering);
        display.stop();
        assert_eq!(telemetry.display.phase(), DisplayPhase::Stopped);
        assert_eq!(telemetry.display.skipped.load(ORDER), 0);
    }

    #[test]
    fn failed_slots_are_skipped_and_a_stuck_one_held_then_skipped() {
        let buffer = Arc::new(FrameBuffer::new(0));
        buffer.register(0, 4).unwrap();
        buffer.fulfil(frame(0));
        buffer.fail(1);
        // 2 stays pending for ever; 3 is ready.
        buffer.fulfil(frame(3));
        let (display, telemetry, _dir) = start(&buffer, 1);
        wait_for(|| telemetry.display.current_sequence() == Some(3));
        let d = &telemetry.display;
        assert_eq!(d.frames_displayed.load(ORDER), 2);
        assert_eq!(d.skipped.load(ORDER), 2);
        assert_eq!(d.held.load(ORDER), 1);
        display.stop();
    }

    fn keyframe_every(seq: u64, n: u64) -> Arc<EncodedFrame> {
        let mut frame = (*crate::frame::test_frame(seq)).clone();
        frame.kind = if seq.is_multiple_of(n) {
            FrameKind::Keyframe { index: seq / n }
        } else {
            FrameKind::Inbetween {
                from: seq / n,
                step: (seq % n) as u32,
                t: 0.5,
            }
        };
        Arc::new(frame)
    }

    #[test]
    fn pause_holds_the_frame_and_skip_jumps_to_the_next_keyframe() {
        let buffer = Arc::new(FrameBuffer::new(0));
        buffer.register(0, 40).unwrap();
        for seq in 0..40 {
            buffer.fulfil(keyframe_every(seq, 10));
        }
        let control = Arc::new(Control::new("test", false));
        let (display, telemetry, _dir) = start_with(&buffer, 1, Arc::clone(&control));
        let d = &telemetry.display;
        wait_for(|| d.current_sequence() >= Some(2));
        control.pause();
        std::thread::sleep(Duration::from_millis(30));
        let held = d.current_sequence();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(d.current_sequence(), held, "display moved while paused");
        control.request_skip();
        control.resume();
        wait_for(|| d.current_sequence() > held);
        assert_eq!(
            d.current_sequence(),
            Some(10),
            "skip did not land on keyframe 1"
        );
        assert_eq!(
            d.skipped.load(ORDER),
            0,
            "operator skips are not pacing skips"
        );
        let shown = d.frames_displayed.load(ORDER);
        wait_for(|| d.frames_displayed.load(ORDER) > shown + 2);
        let mut current = display.current_frame();
        assert!(current.borrow_and_update().is_some());
        display.stop();
    }

    #[test]
    fn stops_promptly_while_buffering() {
        let buffer = Arc::new(FrameBuffer::new(0));
        let (display, telemetry, _dir) = start(&buffer, 3);
        wait_for(|| telemetry.display.phase() == DisplayPhase::Buffering);
        let started = Instant::now();
        display.stop();
        assert!(started.elapsed() < Duration::from_millis(200));
    }
}
