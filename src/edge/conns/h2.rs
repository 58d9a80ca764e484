//! An HTTP/2 connection: pingora's HTTP/2 sessions, accepted here rather than by pingora's own
//! loop so that each request stream runs under the same body deadline as an HTTP/1 request (a
//! stream whose body never ends would otherwise hold its connection, and a slot under the
//! connection cap, for ever). Like pingora's loop: GOAWAY on shutdown, then the streams in
//! flight finish; the connection closed after `limits.idle_timeout` without a stream; one that
//! keeps sending malformed streams closed.
//!
//! At the connection cap, a connection without a stream in flight is evictable as an idle
//! keep-alive HTTP/1.1 one is: it is sent GOAWAY and closed once the client has seen it (at most
//! [`EVICTED_DRAIN`] later). A client that stops reading cannot hold more than bounded memory:
//! at most [`MAX_STREAMS`] streams, each buffering at most [`SEND_BUFFER`] bytes of its answer
//! in the HTTP/2 layer; a stream whose window stays shut for `limits.send_timeout` is reset,
//! which gives back its upstream connection.

use super::connection::Edge;
use super::{Phase, Slot};
use pingora::protocols::http::v2::server::{
    default_h2_options, handshake, H2Accept, H2Options, HttpSession,
};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;

/// Rejected (malformed) streams after which a connection is closed, as pingora does.
const MAX_REJECTED_STREAMS: usize = 32;

/// Concurrent streams a client may open on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`):
/// pingora's default, and gRPC's usual one.
const MAX_STREAMS: u32 = 100;

/// Bytes of a stream's answer the HTTP/2 layer buffers for a client that has opened its window
/// but does not read them off the connection (the h2 crate's default is 400 KiB): four DATA
/// frames of the default size.
const SEND_BUFFER: usize = 64 << 10;

/// Bytes a client may send on a stream, and on the whole connection, before hydrus has read
/// them: the protocol's default window, stated (request bodies buffered per connection stay
/// within it).
const RECEIVE_WINDOW: u32 = 65_535;

/// How long an evicted connection may take to see its GOAWAY and finish a stream that began
/// just before, before it is closed anyway.
const EVICTED_DRAIN: Duration = Duration::from_secs(1);

/// The HTTP/2 server's settings: pingora's bounded defaults (the request header list at most
/// 64 KiB) with the stream count, send buffers and receive windows above.
fn options() -> H2Options {
    let mut o = default_h2_options();
    o.max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(SEND_BUFFER)
        .initial_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW);
    o
}

/// The streams in flight on a connection, and the connection's slot under the cap: busy while
/// a stream is in flight, evictable (idle keep-alive) while none is.
struct Active {
    count: AtomicUsize,
    idle: Notify,
    slot: Arc<Slot>,
}

/// One stream in flight; dropping it says so.
struct InFlight(Arc<Active>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.slot.set_phase(Phase::KeepAlive);
            // (A stream that started meanwhile keeps the connection busy.)
            if a.count.load(Ordering::Acquire) > 0 {
                a.slot.set_phase(Phase::Busy);
            }
            a.idle.notify_one();
        }
    }
}

impl Active {
    fn new(slot: Arc<Slot>) -> Self {
        Self {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            slot,
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.slot.set_phase(Phase::Busy);
        InFlight(self.clone())
    }

    /// Returns once no stream has been in flight for `d`.
    async fn idle_for(&self, d: Duration) {
        loop {
            while self.count.load(Ordering::Acquire) > 0 {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
            tokio::time::sleep(d).await;
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }
}

impl Edge {
    /// Serve an HTTP/2 connection until it closes; `own`: the connection's slot under the cap.
    pub(super) async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        own: &Arc<Slot>,
        shutdown: &ShutdownWatch,
    ) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let mut conn = match handshake(stream, Some(options())).await {
            Ok(c) => c,
            Err(e) => {
                log::debug!("HTTP/2 handshake failed: {e}");
                return;
            }
        };
        let limits = self.state.config.load().limits.clone();
        let active = Arc::new(Active::new(own.clone()));
        let mut sd = shutdown.clone();
        let mut draining = *shutdown.borrow();
        if draining {
            conn.graceful_shutdown();
        }
        // Evicted: when the drain ends (clock ms).
        let mut evicted_until: Option<u64> = None;
        let mut rejected = 0;
        loop {
            let accepted = if let Some(until) = evicted_until {
                let left = until.saturating_sub(hydrus_filters::clock::monotonic_ms());
                let accept = HttpSession::from_h2_conn(&mut conn, digest.clone());
                match tokio::time::timeout(Duration::from_millis(left), accept).await {
                    Ok(a) => a,
                    // (Streams still in flight lose their connection now.)
                    Err(_) => return,
                }
            } else if draining {
                HttpSession::from_h2_conn(&mut conn, digest.clone()).await
            } else {
                tokio::select! {
                    biased;
                    _ = sd.changed() => {
                        conn.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                    _ = own.kick.notified() => {
                        // (Only eviction kicks an HTTP/2 connection: it has no deadline.)
                        if own.evicted.load(Ordering::Acquire) {
                            conn.graceful_shutdown();
                            evicted_until = Some(hydrus_filters::clock::monotonic_ms().saturating_add(
                                EVICTED_DRAIN.as_millis().min(u128::from(u64::MAX)) as u64,
                            ));
                        }
                        continue;
                    }
                    a = HttpSession::from_h2_conn(&mut conn, digest.clone()) => a,
                    _ = active.idle_for(limits.idle_timeout) => {
                        self.conns.m.idle_timeout.inc();
                        return;
                    }
                }
            };
            match accepted {
                // (A client that just drops the TCP connection is common: not logged.)
                Err(e) => {
                    log::debug!("HTTP/2 connection ended: {e}");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    rejected += 1;
                    if rejected >= MAX_REJECTED_STREAMS {
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(s))) => {
                    let in_flight = active.start();
                    let edge = self.clone();
                    let shutdown = shutdown.clone();
                    let slot = self.conns.stream_slot(limits.body_timeout);
                    let send_timeout = limits.send_timeout;
                    tokio::spawn(async move {
                        let _in_flight = in_flight;
                        let mut session = ServerSession::new_http2(s);
                        // A stream whose window stays shut this long is reset (the
                        // connection's own writes are under the same deadline, see
                        // `deadline`).
                        session.set_write_timeout(Some(send_timeout));
                        // (pingora carries a connection's context to the hooks for HTTP/1
                        // only: the stream's slot rides on its request instead.)
                        session
                            .req_header_mut()
                            .extensions_mut()
                            .insert(slot.slot.clone());
                        // (An HTTP/2 stream is never reused: nothing comes back.)
                        let _ = edge.serve(session, &slot.slot, &shutdown).await;
                    });
                }
            }
        }
    }
}
