//! A monotonic clock in milliseconds since the process started: for the timings that must not
//! jump with the wall clock (ejections, stalls, health-check schedules).

use std::sync::LazyLock;
use std::time::Instant;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first call in this process (never 0 after the first millisecond,
/// never going back).
pub fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64
}
