//! The two clocks, each named for what it is: Unix time, for what is dated (log records,
//! windows of the day, table ages), and a monotonic clock, for what is timed (deadlines,
//! ejections, health-check schedules), which never jumps with the wall clock.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A time as Unix milliseconds (`None` before 1970).
pub fn unix_ms_of(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first call in this process (never 0 after the first millisecond,
/// never going back).
pub fn monotonic_ms() -> u64 {
    START.elapsed().as_millis() as u64
}
