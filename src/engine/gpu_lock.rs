//! The GPU lock: one instrumented mutex that every piece of work on the decode device goes
//! through.
//!
//! Each acquisition records how long the caller waited and how long it held the lock; an
//! acquisition that found the lock taken counts as a contention event. Work that wants its own
//! figures (a pair, to prove it took the lock once) passes a [`LockAccount`].

use std::sync::atomic::{AtomicU64, Ordering};
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

/// The one lock in front of the decode device.
#[derive(Debug, Default)]
pub struct GpuLock {
    mutex: Mutex<()>,
    stats: Mutex<LockStats>,
    histograms: Mutex<LockHistograms>,
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
        let start = Instant::now();
        let (guard, contended) = match self.mutex.try_lock() {
            Some(guard) => (guard, false),
            None => match self.mutex.try_lock_for(timeout) {
                Some(guard) => (guard, true),
                None => {
                    self.stats.lock().contention_events += 1;
                    return Err(LockTimeout(timeout));
                }
            },
        };
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
