//! The proxy listener's connections, as nginx and Envoy guard theirs: a cap on open client
//! connections (at the cap, connections that are not being served make room: first those that
//! never sent a byte, then those still sending a request header, then idle keep-alive ones,
//! oldest first; with none, new ones are refused), an idle timeout between keep-alive requests,
//! a deadline for a whole request header and one for a whole request body, so that neither idle
//! clients nor slow ones (slowloris, slow bodies) can hold the proxy's file descriptors.
//!
//! [`Edge`] wraps pingora's HTTP proxy as the listening service's application: it runs the
//! HTTP/1 keep-alive loop itself, so it knows when a connection is idle (waiting for the first
//! byte of a request), when a request header is late, and when its body is.

use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod connection;
mod deadline;
mod h2;
pub use connection::Edge;

/// File descriptors kept for everything but client connections (upstream pool, admin, log
/// files, health checks) when the connection cap is derived from the open-file limit.
pub const FD_RESERVE: u64 = 256;

/// The connection cap for an open-file limit: every proxied client connection may need an
/// upstream one too.
pub fn cap_for_fd_limit(nofile: u64) -> usize {
    (nofile.saturating_sub(FD_RESERVE) / 2).max(16) as usize
}

/// Raise the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// What a connection is doing, for eviction: the lower, the sooner it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    /// Opened, nothing sent yet.
    Fresh = 0,
    /// A request header is arriving.
    Header = 1,
    /// Served a request; waiting for the next.
    KeepAlive = 2,
    /// A request is being served: never evicted.
    Busy = 3,
}

/// One open client connection.
pub struct Slot {
    phase: AtomicU8,
    /// When the current phase began (clock ms).
    since: AtomicU64,
    /// When the current phase runs out (clock ms; 0: never). The reaper wakes the connection
    /// then: no timer per request.
    deadline: AtomicU64,
    /// The body deadline's length, set when the header arrives.
    body_timeout_ms: AtomicU64,
    /// Wakes the connection: evicted, its deadline passed, or shutdown began.
    kick: Kick,
    evicted: AtomicBool,
    /// Set by the proxy once the current request's header has been read, and once its body has.
    header_read: AtomicBool,
    body_read: AtomicBool,
    /// The bytes the current HTTP/1 request took off the stream, as pingora counts them (its
    /// header and body), once it is done; [`UNKNOWN`] until then.
    consumed: AtomicU64,
}

/// Wakes the one task serving a connection (or an HTTP/2 stream): a flag and that task's waker.
/// tokio's `Notify` takes a lock on every poll of a waiting future, which a served connection
/// polls several times a request; this costs two atomics. A kick with no one waiting is kept
/// for the next wait, as `Notify::notify_one` keeps a permit.
struct Kick {
    kicked: AtomicBool,
    waker: atomic_waker::AtomicWaker,
}

impl Kick {
    fn new() -> Self {
        Self {
            kicked: AtomicBool::new(false),
            waker: atomic_waker::AtomicWaker::new(),
        }
    }

    fn notify(&self) {
        self.kicked.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn take(&self) -> bool {
        self.kicked.load(Ordering::Acquire) && self.kicked.swap(false, Ordering::AcqRel)
    }

    /// Ready once kicked (at once if kicked since the last wait).
    fn notified(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.take() {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.take() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// [`Slot::consumed`] before the request is done.
const UNKNOWN: u64 = u64::MAX;

impl Slot {
    fn set_phase(&self, p: Phase) {
        self.since
            .store(hydrus_filters::clock::monotonic_ms(), Ordering::Release);
        self.phase.store(p as u8, Ordering::Release);
    }

    fn set_deadline(&self, at_ms: u64) {
        self.deadline.store(at_ms, Ordering::Release);
    }

    /// Whether the current deadline has passed.
    fn expired(&self, now_ms: u64) -> bool {
        let d = self.deadline.load(Ordering::Acquire);
        d != 0 && now_ms >= d
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Header,
            2 => Phase::KeepAlive,
            _ => Phase::Busy,
        }
    }

    /// The proxy read this request's header: its deadline no longer applies; the body's does,
    /// until [`Self::body_read`].
    pub fn header_read(&self) {
        self.set_phase(Phase::Busy);
        self.header_read.store(true, Ordering::Release);
        if !self.body_read.load(Ordering::Acquire) {
            let body = self.body_timeout_ms.load(Ordering::Acquire);
            self.set_deadline(hydrus_filters::clock::monotonic_ms().saturating_add(body));
        }
    }

    /// The proxy read this request's whole body (or it has none).
    pub fn body_read(&self) {
        self.body_read.store(true, Ordering::Release);
        self.set_deadline(0);
    }

    /// The HTTP/1 request is done, having taken `n` bytes off the stream (its header and body).
    pub fn consumed(&self, n: u64) {
        self.consumed.store(n, Ordering::Release);
    }
}

struct Handles {
    open: IntGauge,
    idle_timeout: IntCounter,
    header_timeout: IntCounter,
    body_timeout: IntCounter,
    send_timeout: IntCounter,
    evicted: IntCounter,
    refused: IntCounter,
    tls_failed: IntCounter,
}

/// Every open client connection of the proxy listener.
pub struct Connections {
    open: AtomicUsize,
    /// Evicted connections not yet closed (they no longer count against the cap).
    evicting: AtomicUsize,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// The cap when the config does not set one.
    auto_cap: usize,
    m: Handles,
}

/// How many connections one admission at the cap closes at most (nginx closes up to 32).
const EVICT_BATCH: usize = 8;

/// A connection counted against the cap; dropping it closes the count.
pub struct Admitted {
    id: u64,
    pub slot: Arc<Slot>,
    conns: Arc<Connections>,
}

/// An HTTP/2 stream's slot; dropping it stops watching it.
pub struct StreamSlot {
    id: u64,
    pub slot: Arc<Slot>,
    conns: Arc<Connections>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.conns
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut slots = self
            .conns
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.remove(&self.id);
        drop(slots);
        if self.slot.evicted.load(Ordering::Acquire) {
            self.conns.evicting.fetch_sub(1, Ordering::AcqRel);
        }
        self.conns.open.fetch_sub(1, Ordering::AcqRel);
        self.conns.m.open.dec();
    }
}

impl Connections {
    pub fn new(auto_cap: usize, metrics: &Metrics) -> Self {
        let closed = |r: &str| metrics.downstream_closed.with_label_values(&[r]);
        Self {
            open: AtomicUsize::new(0),
            evicting: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            auto_cap,
            m: Handles {
                open: metrics.downstream_connections.clone(),
                idle_timeout: closed("idle_timeout"),
                header_timeout: closed("header_timeout"),
                body_timeout: closed("body_timeout"),
                send_timeout: closed("send_timeout"),
                evicted: closed("evicted"),
                refused: closed("refused"),
                tls_failed: closed("tls_handshake"),
            },
        }
    }

    pub fn auto_cap(&self) -> usize {
        self.auto_cap
    }

    /// Count a new connection in, closing others if the cap is reached; `None`: refused.
    pub fn admit(self: &Arc<Self>, cap: Option<usize>) -> Option<Admitted> {
        let cap = cap.unwrap_or(self.auto_cap);
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let over = open.saturating_sub(self.evicting.load(Ordering::Acquire));
        if over > cap && self.evict(over - cap) == 0 {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.m.refused.inc();
            return None;
        }
        self.m.open.inc();
        let (id, slot) = self.track(Phase::Fresh);
        Some(Admitted {
            id,
            slot,
            conns: self.clone(),
        })
    }

    /// A new slot, watched by the reaper.
    fn track(&self, phase: Phase) -> (u64, Arc<Slot>) {
        let slot = Arc::new(Slot {
            phase: AtomicU8::new(phase as u8),
            since: AtomicU64::new(hydrus_filters::clock::monotonic_ms()),
            deadline: AtomicU64::new(0),
            body_timeout_ms: AtomicU64::new(0),
            kick: Kick::new(),
            evicted: AtomicBool::new(false),
            header_read: AtomicBool::new(false),
            body_read: AtomicBool::new(false),
            consumed: AtomicU64::new(UNKNOWN),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, slot.clone());
        (id, slot)
    }

    /// The slot of one request stream of an HTTP/2 connection: its body deadline, reaped
    /// with the connections'. It is not counted against the cap (its connection is) and never
    /// evicted (it is being served).
    pub fn stream_slot(self: &Arc<Self>, body_timeout: std::time::Duration) -> StreamSlot {
        let (id, slot) = self.track(Phase::Busy);
        let ms = body_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        slot.body_timeout_ms.store(ms, Ordering::Release);
        StreamSlot {
            id,
            slot,
            conns: self.clone(),
        }
    }

    /// Close `need` connections not being served (a few more if many are), the least useful
    /// first: never used, then mid-header, then idle keep-alive; oldest first. Returns how many.
    fn evict(&self, need: usize) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut idle: Vec<((Phase, u64), &Arc<Slot>)> = slots
            .values()
            .filter(|s| !s.evicted.load(Ordering::Acquire))
            .filter_map(|s| match s.phase() {
                Phase::Busy => None,
                p => Some(((p, s.since.load(Ordering::Acquire)), s)),
            })
            .collect();
        let n = need.max(EVICT_BATCH.min(idle.len())).min(idle.len());
        if n == 0 {
            return 0;
        }
        idle.select_nth_unstable_by_key(n - 1, |(k, _)| *k);
        for (_, s) in &idle[..n] {
            s.evicted.store(true, Ordering::Release);
            self.evicting.fetch_add(1, Ordering::AcqRel);
            s.kick.notify();
        }
        self.m.evicted.inc_by(n as u64);
        n
    }
}

impl Connections {
    /// Wake every connection whose deadline has passed (its loop then closes it and counts
    /// why). One scan for all connections, instead of a timer per request.
    pub fn reap(&self) {
        let now = hydrus_filters::clock::monotonic_ms();
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for s in slots.values().filter(|s| s.expired(now)) {
            s.kick.notify();
        }
    }

    /// Wake every connection: shutdown began (each then drains as it sees fit).
    pub fn kick_all(&self) {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        for s in slots.values() {
            s.kick.notify();
        }
    }

    /// Reap every `period` on a thread of its own, until `conns` is the last reference.
    pub fn spawn_reaper(conns: &Arc<Self>, period: Duration) -> std::io::Result<()> {
        let weak = Arc::downgrade(conns);
        std::thread::Builder::new()
            .name("hydrus-reaper".into())
            .spawn(move || {
                while let Some(c) = weak.upgrade() {
                    c.reap();
                    drop(c);
                    std::thread::sleep(period);
                }
            })
            .map(drop)
    }
}

/// How often the reaper looks for connections past their deadline: the deadlines' resolution.
pub const REAP_PERIOD: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(cap: usize) -> Arc<Connections> {
        Arc::new(Connections::new(cap, &Metrics::new()))
    }

    #[test]
    fn the_cap_closes_the_least_useful_then_refuses() {
        let c = conns(4);
        let a: Vec<Admitted> = (0..4)
            .map(|_| c.admit(None).expect("under the cap"))
            .collect();
        for s in &a {
            s.slot.set_phase(Phase::Busy);
        }
        // None evictable: refused.
        assert!(c.admit(None).is_none());
        assert_eq!(c.m.refused.get(), 1);
        a[1].slot.set_phase(Phase::KeepAlive);
        a[2].slot.set_phase(Phase::Header);
        a[3].slot.set_phase(Phase::Fresh);
        // The batch takes every evictable one when few are; the fresh one goes first.
        let _d = c.admit(None).expect("room is made");
        assert!(a[3].slot.evicted.load(Ordering::Acquire));
        assert_eq!(c.m.evicted.get(), 3);
        // Evicted ones no longer count against the cap.
        let e = c.admit(None).expect("room left by the batch");
        drop((a, e));
        assert_eq!(c.evicting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn eviction_order_is_fresh_then_header_then_keep_alive() {
        let c = conns(100);
        let a: Vec<Admitted> = (0..30).map(|_| c.admit(None).expect("room")).collect();
        for (i, s) in a.iter().enumerate() {
            s.slot.set_phase(match i % 3 {
                0 => Phase::KeepAlive,
                1 => Phase::Header,
                _ => Phase::Fresh,
            });
        }
        assert_eq!(c.evict(12), 12);
        let gone = |p: usize| {
            a.iter()
                .enumerate()
                .filter(|(i, s)| i % 3 == p && s.slot.evicted.load(Ordering::Acquire))
                .count()
        };
        assert_eq!((gone(2), gone(1), gone(0)), (10, 2, 0));
    }

    #[test]
    fn the_fd_limit_sets_the_default_cap() {
        assert_eq!(cap_for_fd_limit(1024), 384);
        assert_eq!(cap_for_fd_limit(100), 16);
        assert_eq!(cap_for_fd_limit(1 << 20), ((1 << 20) - 256) / 2);
    }
}
