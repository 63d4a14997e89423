//! File-descriptor limits: the daemon raises its soft `RLIMIT_NOFILE` to the hard limit at
//! start-up, and keeps a share of descriptors that HTTP connections may never take, so a flood
//! of idle connections cannot stop status.json, frame saves, publishing or the logs.
//!
//! The HTTP server asks [`http_connection_cap`] how many connections it may hold: the
//! configured `server.max_connections`, but never more than the soft limit minus
//! [`reserved_descriptors`].

use std::io;

/// Descriptors kept for the daemon's own files (frames, status.json, logs, config, models,
/// runtime internals) when the limit allows: it never opens more than a few dozen at once.
pub const RESERVED_FDS: u64 = 128;

/// The open-file limit, soft and hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE`.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn nofile() -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the soft open-file limit to the hard limit; returns the limit in force afterwards.
/// (systemd's default soft limit is 1024 with a hard limit of 512K.)
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let current = nofile()?;
    if current.soft >= current.hard {
        return Ok(current);
    }
    let raised = libc::rlimit {
        rlim_cur: current.hard as libc::rlim_t,
        rlim_max: current.hard as libc::rlim_t,
    };
    // SAFETY: a valid rlimit; raising soft up to hard needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    nofile()
}

/// Descriptors HTTP may not take under a soft limit of `soft`: [`RESERVED_FDS`], or half the
/// limit when it is small.
pub fn reserved_descriptors(soft: u64) -> u64 {
    RESERVED_FDS.min(soft / 2)
}

/// How many connections over the cap may be held at once while their 503 is delivered (a
/// second each at most); these descriptors are kept apart from the connection cap too.
pub fn refusal_descriptors(soft: u64) -> usize {
    (soft / 16).clamp(1, 32) as usize
}

/// How many HTTP connections may be open at once under a soft limit of `soft`: `configured`,
/// capped so that [`reserved_descriptors`] (plus a few for the listener and runtime) stay free.
pub fn http_connection_cap(configured: usize, soft: u64) -> usize {
    let available =
        soft.saturating_sub(reserved_descriptors(soft) + 16 + refusal_descriptors(soft) as u64);
    (configured as u64).min(available).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_never_take_the_reserve() {
        assert_eq!(http_connection_cap(512, 1024), 512);
        assert_eq!(http_connection_cap(512, 256), 96);
        assert_eq!(http_connection_cap(512, 64), 12);
        assert_eq!(http_connection_cap(512, 8), 1);
        assert_eq!(http_connection_cap(100, 1 << 20), 100);
    }

    #[test]
    fn raising_keeps_soft_at_most_hard() {
        let before = nofile().unwrap();
        let after = raise_nofile().unwrap_or(before);
        assert!(after.soft <= after.hard);
        assert!(after.soft >= before.soft);
    }
}
