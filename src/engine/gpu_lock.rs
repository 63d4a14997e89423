//! The GPU lock: one instrumented mutex that every piece of work on the decode device goes
//! through.
//!
//! Each acquisition records how long the caller waited and how long it held the lock; an
//! acquisition that found the lock taken counts as a contention event. Work that wants its own
//! figures (a pair, to prove it took the lock once) passes a [`LockAccount`].
//!
//! Acquisitions have a [`Priority`]. Long background work that takes the lock over and over
//! (each UNet step of an in-process keyframe) asks as [`Priority::Background`] and stands aside
//! while an [`Priority::Urgent`] caller waits: the pipeline decodes urgently while the buffer is
//! below the display's start gate, so a starving display is fed between two steps instead of
//! after the whole keyframe.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::stats::BucketHistogram;

/// The lock could not be had in time.
#[derive(Debug, thiserror::Error)]
#[error("GPU lock not acquired within {0:?}")]
pub struct LockTimeout(pub Duration);

/// Totals since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LockStats {
    pub acquisitions: u64,
    pub contention_events: u64,
    pub total_wait: Duration,
    pub max_wait: Duration,
    pub total_hold: Duration,
    pub max_hold: Duration,
}

impl LockStats {
    /// Mean wait per acquisition, in milliseconds.
    pub fn avg_wait_ms(&self) -> f64 {
        mean_ms(self.total_wait, self.acquisitions)
    }

    /// Mean hold per acquisition, in milliseconds.
    pub fn avg_hold_ms(&self) -> f64 {
        mean_ms(self.total_hold, self.acquisitions)
    }
}

fn mean_ms(total: Duration, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total.as_secs_f64() * 1000.0 / count as f64
    }
}

/// Figures for one unit of work (one pair, one keyframe encode).
#[derive(Debug, Default)]
pub struct LockAccount {
    acquisitions: AtomicU64,
    wait_ns: AtomicU64,
    hold_ns: AtomicU64,
}

impl LockAccount {
    /// How many times this work took the lock.
    pub fn acquisitions(&self) -> u64 {
        self.acquisitions.load(Ordering::Relaxed)
    }

    /// Total time this work waited for the lock.
    pub fn wait(&self) -> Duration {
        Duration::from_nanos(self.wait_ns.load(Ordering::Relaxed))
    }

    /// Total time this work held the lock.
    pub fn hold(&self) -> Duration {
        Duration::from_nanos(self.hold_ns.load(Ordering::Relaxed))
    }
}

/// Distributions of lock waits and holds, for `/metrics`.
#[derive(Debug, Clone)]
pub struct LockHistograms {
    pub wait: BucketHistogram,
    pub hold: BucketHistogram,
}

impl Default for LockHistograms {
    fn default() -> Self {
        Self {
            wait: BucketHistogram::new(BucketHistogram::LATENCY_BOUNDS),
            hold: BucketHistogram::new(BucketHistogram::LATENCY_BOUNDS),
        }
    }
}

/// How an acquisition ranks against others waiting for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Waits its turn (the lock is eventually fair).
    #[default]
    Normal,
    /// Others marked background stand aside while this one waits.
    Urgent,
    /// Does not take the lock while an urgent caller is waiting.
    Background,
}

/// How long a background caller waits between looks while an urgent one is waiting.
const STAND_ASIDE: Duration = Duration::from_millis(1);

/// The one lock in front of the decode device.
#[derive(Debug, Default)]
pub struct GpuLock {
    mutex: Mutex<()>,
    stats: Mutex<LockStats>,
    histograms: Mutex<LockHistograms>,
    /// Urgent callers waiting now.
    urgent_waiting: AtomicUsize,
}

/// Holding this means holding the GPU; dropping it releases the lock and records the hold time.
pub struct GpuGuard<'a> {
    lock: &'a GpuLock,
    account: &'a LockAccount,
    acquired_at: Instant,
    _guard: MutexGuard<'a, ()>,
}

impl GpuLock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lock, waiting at most `timeout`, and charges the wait to `account`.
    pub fn acquire<'a>(
        &'a self,
        account: &'a LockAccount,
        timeout: Duration,
    ) -> Result<GpuGuard<'a>, LockTimeout> {
        self.acquire_as(Priority::Normal, account, timeout)
    }

    /// [`GpuLock::acquire`] at `priority`.
    pub fn acquire_as<'a>(
        &'a self,
        priority: Priority,
        account: &'a LockAccount,
        timeout: Duration,
    ) -> Result<GpuGuard<'a>, LockTimeout> {
        let start = Instant::now();
        let taken = match priority {
            Priority::Normal => self.take(timeout),
            Priority::Urgent => {
                self.urgent_waiting.fetch_add(1, Ordering::SeqCst);
                let taken = self.take(timeout);
                self.urgent_waiting.fetch_sub(1, Ordering::SeqCst);
                taken
            }
            Priority::Background => self.take_in_background(start + timeout),
        };
        let Some((guard, contended)) = taken else {
            self.stats.lock().contention_events += 1;
            return Err(LockTimeout(timeout));
        };
        self.granted(guard, contended, start, account)
    }

    /// The mutex within `timeout`, and whether it was taken when first tried.
    fn take(&self, timeout: Duration) -> Option<(MutexGuard<'_, ()>, bool)> {
        match self.mutex.try_lock() {
            Some(guard) => Some((guard, false)),
            None => self.mutex.try_lock_for(timeout).map(|guard| (guard, true)),
        }
    }

    /// The mutex by `deadline`, never while an urgent caller waits: a background caller that
    /// gets it while one has started waiting lets it go again.
    fn take_in_background(&self, deadline: Instant) -> Option<(MutexGuard<'_, ()>, bool)> {
        let mut contended = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if self.urgent_waiting.load(Ordering::SeqCst) > 0 {
                contended = true;
                std::thread::sleep(STAND_ASIDE.min(deadline - now));
                continue;
            }
            let Some((guard, waited)) = self.take((deadline - now).min(STAND_ASIDE)) else {
                contended = true;
                continue;
            };
            if self.urgent_waiting.load(Ordering::SeqCst) == 0 {
                return Some((guard, contended || waited));
            }
            contended = true;
            // Fair unlock hands the mutex straight to the urgent caller parked on it.
            MutexGuard::unlock_fair(guard);
        }
    }

    /// Records a granted acquisition and wraps its guard.
    fn granted<'a>(
        &'a self,
        guard: MutexGuard<'a, ()>,
        contended: bool,
        start: Instant,
        account: &'a LockAccount,
    ) -> Result<GpuGuard<'a>, LockTimeout> {
        let acquired_at = Instant::now();
        let waited = acquired_at - start;
        {
            let mut stats = self.stats.lock();
            stats.acquisitions += 1;
            stats.contention_events += u64::from(contended);
            stats.total_wait += waited;
            stats.max_wait = stats.max_wait.max(waited);
        }
        self.histograms.lock().wait.record(waited);
        account.acquisitions.fetch_add(1, Ordering::Relaxed);
        account
            .wait_ns
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        Ok(GpuGuard {
            lock: self,
            account,
            acquired_at,
            _guard: guard,
        })
    }

    /// Totals since start-up.
    pub fn stats(&self) -> LockStats {
        *self.stats.lock()
    }

    /// Wait and hold distributions since start-up.
    pub fn histograms(&self) -> LockHistograms {
        self.histograms.lock().clone()
    }
}

impl Drop for GpuGuard<'_> {
    fn drop(&mut self) {
        let held = self.acquired_at.elapsed();
        {
            let mut stats = self.lock.stats.lock();
            stats.total_hold += held;
            stats.max_hold = stats.max_hold.max(held);
        }
        self.lock.histograms.lock().hold.record(held);
        self.account
            .hold_ns
            .fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn records_acquisitions_and_hold() {
        let lock = GpuLock::new();
        let account = LockAccount::default();
        {
            let _g = lock.acquire(&account, Duration::from_secs(1)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, 1);
        assert_eq!(stats.contention_events, 0);
        assert!(stats.total_hold >= Duration::from_millis(5));
        assert_eq!(account.acquisitions(), 1);
        assert!(account.hold() >= Duration::from_millis(5));
        let histograms = lock.histograms();
        assert_eq!((histograms.wait.count(), histograms.hold.count()), (1, 1));
        assert!(histograms.hold.sum_seconds() >= 0.005);
    }

    #[test]
    fn contention_is_counted_and_wait_measured() {
        let lock = Arc::new(GpuLock::new());
        let holder_account = LockAccount::default();
        let guard = lock
            .acquire(&holder_account, Duration::from_secs(1))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let account = LockAccount::default();
                tx.send(()).unwrap();
                let _g = lock.acquire(&account, Duration::from_secs(5)).unwrap();
                account.wait()
            })
        };
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(guard);
        let waited = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(10), "{waited:?}");
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, 2);
        assert_eq!(stats.contention_events, 1);
        assert!(stats.max_wait >= Duration::from_millis(10));
    }

    /// A background caller and an urgent one both wait on a held lock: the urgent one gets it
    /// first, whoever came first; the background one gets it after.
    #[test]
    fn background_callers_stand_aside_for_urgent_ones() {
        let lock = Arc::new(GpuLock::new());
        let holder = LockAccount::default();
        let guard = lock.acquire(&holder, Duration::from_secs(1)).unwrap();
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let spawn = |priority: Priority, name: &'static str| {
            let (lock, order) = (Arc::clone(&lock), Arc::clone(&order));
            std::thread::spawn(move || {
                let account = LockAccount::default();
                let _g = lock
                    .acquire_as(priority, &account, Duration::from_secs(5))
                    .unwrap();
                order.lock().push(name);
                std::thread::sleep(Duration::from_millis(5));
            })
        };
        let background = spawn(Priority::Background, "background");
        std::thread::sleep(Duration::from_millis(20));
        let urgent = spawn(Priority::Urgent, "urgent");
        let until = Instant::now() + Duration::from_secs(5);
        while lock.urgent_waiting.load(Ordering::SeqCst) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
        drop(guard);
        background.join().unwrap();
        urgent.join().unwrap();
        assert_eq!(*order.lock(), ["urgent", "background"]);
        assert_eq!(lock.stats().acquisitions, 3);
    }

    #[test]
    fn a_background_caller_takes_a_free_lock_and_times_out_on_a_held_one() {
        let lock = GpuLock::new();
        let account = LockAccount::default();
        drop(
            lock.acquire_as(Priority::Background, &account, Duration::from_millis(50))
                .unwrap(),
        );
        let _held = lock.acquire(&account, Duration::from_secs(1)).unwrap();
        let other = LockAccount::default();
        let start = Instant::now();
        assert!(lock
            .acquire_as(Priority::Background, &other, Duration::from_millis(30))
            .is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(other.acquisitions(), 0);
    }

    #[test]
    fn gives_up_after_timeout() {
        let lock = GpuLock::new();
        let account = LockAccount::default();
        let _held = lock.acquire(&account, Duration::from_secs(1)).unwrap();
        let other = LockAccount::default();
        assert!(lock.acquire(&other, Duration::from_millis(10)).is_err());
        assert_eq!(other.acquisitions(), 0);
        assert_eq!(lock.stats().contention_events, 1);
    }
}
