//! Wall-clock time as the wire protocol counts it: milliseconds since the Unix epoch.
//!
//! Latency is `receive time − ts` where `ts` was stamped by the sending device, possibly in
//! another worker process, so both ends must read the same clock: the system clock, not an
//! `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, rounded to the nearest millisecond.
pub fn now_ms() -> u64 {
    (now_micros() + 500) / 1000
}
