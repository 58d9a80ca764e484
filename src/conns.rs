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
use crate::proxy::Proxy;
use crate::state::State;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    evict: Notify,
    evicted: AtomicBool,
    /// Wakes the connection's loop when the header or the body has been read.
    progress: Notify,
    /// Set by the proxy once the current request's header has been read, and once its body has.
    header_read: AtomicBool,
    body_read: AtomicBool,
}

impl Slot {
    fn set_phase(&self, p: Phase) {
        self.since.store(crate::clock::now_ms(), Ordering::Release);
        self.phase.store(p as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Header,
            2 => Phase::KeepAlive,
            _ => Phase::Busy,
        }
    }

    /// The proxy read this request's header: its deadline no longer applies.
    pub fn header_read(&self) {
        self.set_phase(Phase::Busy);
        self.header_read.store(true, Ordering::Release);
        self.progress.notify_one();
    }

    /// The proxy read this request's whole body (or it has none).
    pub fn body_read(&self) {
        self.body_read.store(true, Ordering::Release);
        self.progress.notify_one();
    }
}

struct Handles {
    open: IntGauge,
    idle_timeout: IntCounter,
    header_timeout: IntCounter,
    body_timeout: IntCounter,
    evicted: IntCounter,
    refused: IntCounter,
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
                evicted: closed("evicted"),
                refused: closed("refused"),
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
        let slot = Arc::new(Slot {
            phase: AtomicU8::new(Phase::Fresh as u8),
            since: AtomicU64::new(crate::clock::now_ms()),
            evict: Notify::new(),
            evicted: AtomicBool::new(false),
            progress: Notify::new(),
            header_read: AtomicBool::new(false),
            body_read: AtomicBool::new(false),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, slot.clone());
        Some(Admitted {
            id,
            slot,
            conns: self.clone(),
        })
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
            s.evict.notify_one();
        }
        self.m.evicted.inc_by(n as u64);
        n
    }
}

/// Wait for the first byte of a request on `stream`: `Ok(true)` when one arrived, `Ok(false)`
/// when the stream cannot be peeked (then there is nothing to wait for here).
async fn first_byte(stream: &mut Stream) -> std::io::Result<bool> {
    let mut b = [0u8; 1];
    stream.try_peek(&mut b).await
}

/// Why a connection's wait for its next request ended.
enum Wait {
    Request,
    Closed,
    Idle,
    Evicted,
    Shutdown,
}

/// `now + d`, or far in the future when that does not fit.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// pingora's HTTP proxy behind the connection guard.
pub struct Edge {
    pub proxy: Arc<HttpProxy<Proxy>>,
    pub state: Arc<State>,
    pub conns: Arc<Connections>,
}

impl Edge {
    async fn wait_for_request(
        &self,
        stream: &mut Stream,
        slot: &Slot,
        phase: Phase,
        limit: Duration,
        shutdown: &ShutdownWatch,
    ) -> Wait {
        if *shutdown.borrow() {
            return Wait::Shutdown;
        }
        if slot.evicted.load(Ordering::Acquire) {
            return Wait::Evicted;
        }
        slot.set_phase(phase);
        let mut sd = shutdown.clone();
        tokio::select! {
            biased;
            r = first_byte(stream) => match r {
                Ok(_) => Wait::Request,
                Err(_) => Wait::Closed,
            },
            _ = slot.evict.notified() => Wait::Evicted,
            _ = sd.wait_for(|down| *down) => Wait::Shutdown,
            _ = tokio::time::sleep_until(after(limit)) => Wait::Idle,
        }
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.state.config.load().limits.clone();
        let admitted = self.conns.admit(limits.max_connections)?;
        let slot = admitted.slot.clone();
        let accepted = Instant::now();
        let mut stream = stream;
        let mut settings = None;
        let mut first = true;
        loop {
            let limits = self.state.config.load().limits.clone();
            // (HTTP/1.1 pipelining stays off, pingora's default: no request is ever buffered
            // ahead, so the next one starts with a byte on the stream.)
            // The first request's wait counts against its header deadline.
            let (phase, wait) = if first {
                (Phase::Fresh, limits.header_timeout)
            } else {
                (Phase::KeepAlive, limits.idle_timeout)
            };
            match self
                .wait_for_request(&mut stream, &slot, phase, wait, shutdown)
                .await
            {
                Wait::Request => {}
                Wait::Closed | Wait::Shutdown | Wait::Evicted => return None,
                Wait::Idle => {
                    if first {
                        self.conns.m.header_timeout.inc();
                    } else {
                        self.conns.m.idle_timeout.inc();
                    }
                    return None;
                }
            }
            let header_deadline = if first {
                accepted
                    .checked_add(limits.header_timeout)
                    .unwrap_or_else(|| after(limits.header_timeout))
            } else {
                after(limits.header_timeout)
            };
            first = false;
            slot.set_phase(Phase::Header);
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session),
                None => {
                    session.set_keepalive(Some(limits.idle_timeout.as_secs().max(1)));
                    if let Some(o) = self.proxy.server_options() {
                        session.set_keepalive_reuses_remaining(o.keepalive_request_limit);
                    }
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            slot.header_read.store(false, Ordering::Release);
            slot.body_read.store(false, Ordering::Release);
            session.set_connection_user_context(Some(Box::new(slot.clone())));
            let serve = self.proxy.process_new_http(session, shutdown);
            tokio::pin!(serve);
            // Until its header is read, a request may be evicted or run out of time; then its
            // body has its own deadline; then it runs to the end.
            let mut body_deadline = None;
            let reused = loop {
                let header = slot.header_read.load(Ordering::Acquire);
                let body = slot.body_read.load(Ordering::Acquire);
                let deadline = match (header, body) {
                    (false, _) => Some(header_deadline),
                    (true, false) => Some(*body_deadline.get_or_insert_with(|| {
                        // From when the header was read (the Busy phase began).
                        let read_ms = slot.since.load(Ordering::Acquire);
                        let spent = crate::clock::now_ms().saturating_sub(read_ms);
                        after(
                            limits
                                .body_timeout
                                .saturating_sub(Duration::from_millis(spent)),
                        )
                    })),
                    (true, true) => None,
                };
                tokio::select! {
                    biased;
                    r = &mut serve => break r,
                    _ = slot.progress.notified(), if deadline.is_some() => {}
                    _ = slot.evict.notified(), if !header => {
                        if !slot.header_read.load(Ordering::Acquire) {
                            return None;
                        }
                    }
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        match (slot.header_read.load(Ordering::Acquire), slot.body_read.load(Ordering::Acquire)) {
                            (false, _) => {
                                self.conns.m.header_timeout.inc();
                                return None;
                            }
                            (true, false) if body_deadline.is_some_and(|d| Instant::now() >= d) => {
                                // The request's hold on its upstream is given back as it drops.
                                self.conns.m.body_timeout.inc();
                                return None;
                            }
                            _ => {}
                        }
                    }
                }
            };
            let (s, p) = reused?.consume();
            stream = s;
            settings = p;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

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
