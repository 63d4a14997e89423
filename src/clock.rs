//! Wall-clock timestamps that survive a wrong clock.
//!
//! The system clock can be set anywhere (a dead RTC battery reads 1970 or earlier, an operator
//! typo reads year 20000). RFC 3339 formatting panics before 1970 (humantime) and date
//! arithmetic panics after 9999 (the `time` crate), and a panic in the status writer or the log
//! appender stops status.json or the logs. Everything that prints a wall-clock time goes through
//! here: times are clamped to 1970-01-01T00:00:00Z … 9999-12-31T23:59:59.999999Z first, so a
//! wrong clock gives wrong-but-valid timestamps, never a panic. (Pacing never uses the wall
//! clock: it runs on the monotonic clock.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last instant RFC 3339 can write: 9999-12-31T23:59:59.999999Z.
const LATEST: Duration = Duration::new(253_402_300_799, 999_999_000);

/// `at` clamped into 1970 … 9999.
pub fn clamp(at: SystemTime) -> SystemTime {
    match at.duration_since(UNIX_EPOCH) {
        Err(_) => UNIX_EPOCH,
        Ok(since) if since > LATEST => UNIX_EPOCH + LATEST,
        Ok(_) => at,
    }
}

/// `2026-11-30T14:07:35.123Z`, clamped.
pub fn rfc3339_millis(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(clamp(at)).to_string()
}

/// `2026-11-30T14:07:35.123456Z`, clamped.
pub fn rfc3339_micros(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(clamp(at)).to_string()
}

/// The UTC date `2026-11-30`, clamped.
pub fn utc_date(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(clamp(at)).to_string()[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_and_after_9999_format_without_panicking() {
        let before = UNIX_EPOCH - Duration::from_secs(86_400 * 365 * 10);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
        let after = UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400 * 365 * 100);
        assert_eq!(rfc3339_millis(after), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_micros(after), "9999-12-31T23:59:59.999999Z");
        assert_eq!(utc_date(after), "9999-12-31");
        assert_eq!(utc_date(before), "1970-01-01");
        let now = SystemTime::now();
        assert_eq!(clamp(now), now);
    }
}
