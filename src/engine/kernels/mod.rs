//! CPU compute kernels for the networks dreamd runs itself: 3×3 convolutions as shifted matrix
//! products ([`conv`]), their Winograd F(4,3) form ([`winograd`]) with its Winograd-domain
//! products ([`tile_products`]), the instruction-set level they run at ([`isa`]), the buffer
//! pool they draw their memory from ([`pool`]), and how a layer is split between the cores
//! ([`run_parts`]). Nothing here knows a model; the model code (`taesd::cpu`) composes these.

pub mod conv;
pub mod isa;
pub mod pool;
pub mod tile_products;
pub mod winograd;

/// Asks the CPU to bring `block` into L1, for writing when `write`. The kernels walk channel
/// planes hundreds of KiB apart, a new short stream per channel, which the hardware prefetchers
/// pick up too late (BENCHMARKS.md, attempts 15–18).
#[inline(always)]
pub(crate) fn prefetch(block: &[f32], write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        for line in block.chunks(16) {
            // SAFETY: a prefetch never faults; the address is inside `block`.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(line.as_ptr().cast());
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (block, write);
}

/// Threads the kernels split a layer between: the CPUs this process may use, asked once (the
/// standard library reads the cgroup files again at every call, and a decode has dozens of
/// layers per frame).
pub(crate) fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `work` on each of `parts` at once, one thread per part, the calling thread taking the
/// first (it would only wait otherwise): a layer starts one thread fewer.
pub(crate) fn run_parts<T: Send>(parts: impl IntoIterator<Item = T>, work: impl Fn(T) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    let work = &work;
    std::thread::scope(|scope| {
        for part in parts {
            scope.spawn(move || work(part));
        }
        work(first);
    });
}
