//! Thread priorities: generation work yields the CPU to display pacing.
//!
//! Every thread of the tokio runtime (coordination, and the blocking pool where slerp, decode,
//! encode and saves run) is started at a lower priority (nice +[`WORK_NICE`]), while the display's
//! pacer and publisher threads, spawned from the main thread, keep the process's priority. When
//! decoding saturates every core, the pacer still wakes on time. Raising a thread's nice value
//! needs no privilege.

/// How much lower than the process the runtime's threads run.
pub const WORK_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`WORK_NICE`]; failures are ignored (the thread
/// simply keeps its priority).
pub fn lower_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and get/setpriority take plain integers and touch no memory of ours.
        // On Linux, PRIO_PROCESS with a thread id addresses that one thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, (current + WORK_NICE).min(19));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn lowers_only_the_calling_thread() {
        // SAFETY: as above.
        let nice = || unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        };
        let before = nice();
        let lowered = std::thread::spawn(move || {
            lower_current_thread();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + WORK_NICE).min(19));
        assert_eq!(nice(), before);
    }
}
