//! The two clocks, each named for what it is: Unix time, for what is dated (log records,
//! windows of the day, table ages), and a monotonic clock, for what is timed (deadlines,
//! ejections, health-check schedules), which never jumps with the wall clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// The coarse monotonic clock in milliseconds: the kernel's last tick (1-10 ms behind, by its
/// HZ), read without the TSC and its scaling, which cost more than a request's deadlines need.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Elsewhere, the precise clock.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn coarse_ms() -> u64 {
    static ORIGIN: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
    ORIGIN.elapsed().as_millis() as u64
}

static START: LazyLock<u64> = LazyLock::new(coarse_ms);

/// Milliseconds since the first call in this process (never going back; to the kernel's tick,
/// 1-10 ms: for deadlines and schedules, not for measuring).
pub fn monotonic_ms() -> u64 {
    coarse_ms().saturating_sub(*START)
}

/// When a recurring task (resolving a name again) is next due on the monotonic clock, and
/// whether a run is under way: a run is claimed when due and the next one set when it ends, so
/// two never overlap.
#[derive(Debug, Default)]
pub struct Schedule {
    next_ms: AtomicU64,
    busy: AtomicBool,
}

impl Schedule {
    /// Claim the next run if it is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms.load(Ordering::Relaxed) && !self.busy.swap(true, Ordering::AcqRel)
    }

    /// A run ended at `now_ms`: the next one `after` it.
    pub fn done(&self, now_ms: u64, after: Duration) {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.next_ms
            .store(now_ms.saturating_add(after), Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
    }
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, a `Last-Modified`), or RFC 3339, as Unix ms.
pub fn unix_ms_of_http_date(v: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(v)
        .ok()
        .or_else(|| imf_fixdate(v))
        .and_then(unix_ms_of)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the HTTP date format.
fn imf_fixdate(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[2])? + 1;
    let text = format!(
        "{}-{:02}-{:02}T{}Z",
        parts[3],
        month,
        parts[1].parse::<u32>().ok()?,
        parts[4]
    );
    humantime::parse_rfc3339(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_dates() {
        assert_eq!(
            unix_ms_of_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(unix_ms_of_http_date("yesterday"), None);
    }
}
