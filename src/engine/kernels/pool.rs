//! A small pool of `f32` buffers, so that the CPU networks reuse their activation and scratch
//! memory instead of asking the kernel for fresh pages (and faulting them in) at every layer.
//!
//! Large allocations go straight to `mmap` in glibc, and every page of a fresh one costs a page
//! fault and a kernel-side clear: without the pool that was ≈20 % of a TAESD decode. The pool
//! keeps up to [`MAX_BUFFERS`] returned buffers; [`take`] hands back one of at least the asked
//! length (at most twice it, so a small request never pins a huge buffer), zero-filled.

use std::sync::Mutex;

/// Buffers kept for reuse; more are freed. A decode pass cycles through four resolutions with
/// up to four live activations each, plus each thread's transform buffers: with 8 kept, 70
/// frames of a 512×256 decode faulted in 224k fresh pages (16 kept: 77k, most at start) for
/// no saving in peak memory (324 vs 316 MB). 16 measured 4–6 % faster for decode and encode
/// (BENCHMARKS.md, attempt 34).
const MAX_BUFFERS: usize = 16;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A zero-filled buffer of `len` values, reused from the pool when one fits.
pub fn take(len: usize) -> Vec<f32> {
    let mut buffer = take_dirty(len);
    buffer.fill(0.0);
    buffer
}

/// A buffer of `len` values with unspecified (finite, stale) contents, for callers that write
/// every value before reading it: saves the clear.
pub fn take_dirty(len: usize) -> Vec<f32> {
    let reused = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let fit = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() <= len.saturating_mul(2))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        fit.map(|i| pool.swap_remove(i))
    };
    match reused {
        Some(mut buffer) => {
            buffer.truncate(len);
            buffer.resize(len, 0.0);
            buffer
        }
        None => vec![0.0; len],
    }
}

/// Returns a buffer to the pool (or frees it when the pool is full).
pub fn give(buffer: Vec<f32>) {
    if buffer.capacity() == 0 {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < MAX_BUFFERS {
        pool.push(buffer);
    } else if let Some(smallest) = pool
        .iter_mut()
        .min_by_key(|b| b.capacity())
        .filter(|b| b.capacity() < buffer.capacity())
    {
        *smallest = buffer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_zeroed_and_long_enough() {
        let mut a = take(1000);
        a.iter_mut().for_each(|v| *v = 7.0);
        give(a);
        // Other tests share the pool, so only the contract is checked, not which buffer.
        let b = take(900);
        assert_eq!(b.len(), 900);
        assert!(b.iter().all(|&v| v == 0.0));
        let c = take(10);
        assert_eq!(c.len(), 10);
        assert!(c.iter().all(|&v| v == 0.0));
        let mut d = take_dirty(500);
        assert_eq!(d.len(), 500);
        d.iter_mut().for_each(|v| *v = 3.0);
        give(d);
        assert_eq!(take_dirty(400).len(), 400);
    }
}
