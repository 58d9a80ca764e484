//! The proxy listener's connections, as nginx and Envoy guard theirs: a cap on open client
//! connections (at the cap the longest-idle keep-alive connections are closed to admit new
//! ones; with none idle, new ones are refused), an idle timeout between keep-alive requests,
//! and a deadline for a whole request header, so that neither idle clients nor slow ones
//! (slowloris) can hold the proxy's file descriptors.
//!
//! [`Edge`] wraps pingora's HTTP proxy as the listening service's application: it runs the
//! HTTP/1 keep-alive loop itself, so it knows when a connection is idle (waiting for the first
//! byte of a request) and when a request header is late.

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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

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

/// One open client connection.
pub struct Slot {
    /// When it became idle (clock ms + 1); 0 while a request is being read or served.
    idle_since: AtomicU64,
    evict: Notify,
    evicted: AtomicBool,
    /// Set by the proxy once the current request's header has been read.
    header_read: AtomicBool,
}

impl Slot {
    /// The proxy read this request's header: its deadline no longer applies.
    pub fn header_read(&self) {
        self.header_read.store(true, Ordering::Release);
    }
}

struct Handles {
    open: IntGauge,
    idle_timeout: IntCounter,
    header_timeout: IntCounter,
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

/// How many idle connections one admission at the cap closes at most (nginx closes up to 32).
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
        let open = self.conns.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.conns.m.open.set(open as i64);
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
                evicted: closed("evicted"),
                refused: closed("refused"),
            },
        }
    }

    pub fn auto_cap(&self) -> usize {
        self.auto_cap
    }

    /// Count a new connection in, closing idle ones if the cap is reached; `None`: refused.
    pub fn admit(self: &Arc<Self>, cap: Option<usize>) -> Option<Admitted> {
        let cap = cap.unwrap_or(self.auto_cap);
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let over = open.saturating_sub(self.evicting.load(Ordering::Acquire));
        if over > cap && self.evict_idle(over - cap) == 0 {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.m.refused.inc();
            return None;
        }
        self.m.open.set(open as i64);
        let slot = Arc::new(Slot {
            idle_since: AtomicU64::new(0),
            evict: Notify::new(),
            evicted: AtomicBool::new(false),
            header_read: AtomicBool::new(false),
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

    /// Close the `need` longest-idle connections (a few more if many are idle); returns how many.
    fn evict_idle(&self, need: usize) -> usize {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut idle: Vec<(u64, &Arc<Slot>)> = slots
            .values()
            .filter(|s| !s.evicted.load(Ordering::Acquire))
            .filter_map(|s| match s.idle_since.load(Ordering::Acquire) {
                0 => None,
                t => Some((t, s)),
            })
            .collect();
        let n = need.max(EVICT_BATCH.min(idle.len())).min(idle.len());
        if n == 0 {
            return 0;
        }
        idle.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
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
        limit: Duration,
        shutdown: &ShutdownWatch,
    ) -> Wait {
        if *shutdown.borrow() {
            return Wait::Shutdown;
        }
        slot.idle_since
            .store(crate::clock::now_ms() + 1, Ordering::Release);
        let mut sd = shutdown.clone();
        let w = tokio::select! {
            biased;
            r = first_byte(stream) => match r {
                Ok(_) => Wait::Request,
                Err(_) => Wait::Closed,
            },
            _ = slot.evict.notified() => Wait::Evicted,
            _ = sd.wait_for(|down| *down) => Wait::Shutdown,
            _ = tokio::time::sleep(limit) => Wait::Idle,
        };
        slot.idle_since.store(0, Ordering::Release);
        w
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
        let accepted = tokio::time::Instant::now();
        let mut stream = stream;
        let mut settings = None;
        let mut first = true;
        loop {
            let limits = self.state.config.load().limits.clone();
            // (HTTP/1.1 pipelining stays off, pingora's default: no request is ever buffered
            // ahead, so the next one starts with a byte on the stream.)
            // The first request's wait counts against its header deadline.
            let wait = if first {
                limits.header_timeout
            } else {
                limits.idle_timeout
            };
            match self
                .wait_for_request(&mut stream, &slot, wait, shutdown)
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
            let deadline = if first {
                accepted + limits.header_timeout
            } else {
                tokio::time::Instant::now() + limits.header_timeout
            };
            first = false;
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
            session.set_connection_user_context(Some(Box::new(slot.clone())));
            let serve = self.proxy.process_new_http(session, shutdown);
            tokio::pin!(serve);
            let reused = match tokio::time::timeout_at(deadline, &mut serve).await {
                Ok(r) => r,
                Err(_) if slot.header_read.load(Ordering::Acquire) => serve.await,
                Err(_) => {
                    self.conns.m.header_timeout.inc();
                    return None;
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
    fn the_cap_closes_the_longest_idle_then_refuses() {
        let c = conns(3);
        let a: Vec<Admitted> = (0..3)
            .map(|_| c.admit(None).expect("under the cap"))
            .collect();
        // None idle: refused.
        assert!(c.admit(None).is_none());
        assert_eq!(c.m.refused.get(), 1);
        a[1].slot.idle_since.store(10, Ordering::Release);
        a[2].slot.idle_since.store(20, Ordering::Release);
        let d = c.admit(None).expect("an idle one makes room");
        assert!(
            a[1].slot.evicted.load(Ordering::Acquire),
            "the longest idle goes"
        );
        assert_eq!(c.m.evicted.get(), 2, "a small batch: both idle ones");
        // Evicted ones no longer count: the next admission needs no more room.
        let e = c.admit(None).expect("room left by the batch");
        assert_eq!(c.m.evicted.get(), 2);
        drop((a, d, e));
        assert_eq!(c.open.load(Ordering::Acquire), 0);
        assert_eq!(c.evicting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_fd_limit_sets_the_default_cap() {
        assert_eq!(cap_for_fd_limit(1024), 384);
        assert_eq!(cap_for_fd_limit(100), 16);
        assert_eq!(cap_for_fd_limit(1 << 20), ((1 << 20) - 256) / 2);
    }
}
