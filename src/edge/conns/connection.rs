//! One client connection's life on the proxy listener: the TLS handshake (when `tls:` is
//! set), HTTP/2 (by ALPN, or the prior-knowledge preface in clear text) handed to pingora's
//! HTTP/2 server, or the HTTP/1 keep-alive loop with its deadlines and eviction.

use super::deadline::Deadline;
use super::{Connections, Phase, Slot};
use crate::edge::Proxy;
use crate::state::State;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Ssl, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A client connection's stream, under its send deadline. (Kept as itself between requests, so
/// that its peeks and byte count need no dynamic dispatch; each session gets it as a `Stream`.)
type Client = Box<Deadline>;

/// Wait for the first byte of a request on `stream`: `Ok(true)` when one arrived, `Ok(false)`
/// when the stream cannot be peeked (then there is nothing to wait for here).
async fn first_byte(stream: &mut Deadline) -> std::io::Result<bool> {
    let mut b = [0u8; 1];
    stream.peek(&mut b).await
}

/// Which request of a connection is awaited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Its first.
    First,
    /// One after an answer: the connection is idle until it begins.
    KeepAlive,
    /// One that began with the last (see [`pipelined`]).
    Pipelined,
}

/// Why a connection's wait for its next request ended.
enum Wait {
    Request,
    /// The stream cannot be peeked (TLS): whether a request began is not known here.
    Unknown,
    Closed,
    Idle,
    Evicted,
    Shutdown,
}

/// The clock time `d` from `from_ms` (clock ms), saturating.
fn at(from_ms: u64, d: Duration) -> u64 {
    from_ms.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// pingora's HTTP proxy behind the connection guard.
pub struct Edge {
    pub proxy: Arc<HttpProxy<Proxy>>,
    pub state: Arc<State>,
    pub conns: Arc<Connections>,
    /// How long keep-alive connections are drained once shutdown (or an upgrade's hand-over)
    /// begins: their next request is served with `Connection: close` instead of the
    /// connection being closed while idle, which a client could be sending on at that instant.
    pub drain: Duration,
    /// When draining ends (clock ms), fixed when shutdown is first seen.
    pub drain_until: std::sync::OnceLock<u64>,
    /// Set once the task that kicks every connection at shutdown runs.
    pub shutdown_watched: std::sync::OnceLock<()>,
}

impl Edge {
    async fn wait_for_request(
        &self,
        stream: &mut Deadline,
        slot: &Slot,
        phase: Phase,
        deadline_ms: u64,
        shutdown: &ShutdownWatch,
    ) -> Wait {
        slot.set_phase(phase);
        slot.set_deadline(deadline_ms);
        let mut draining = false;
        loop {
            if !draining && *shutdown.borrow() {
                draining = true;
                let until = *self
                    .drain_until
                    .get_or_init(|| at(hydrus_filters::clock::monotonic_ms(), self.drain));
                slot.set_deadline(deadline_ms.min(until));
            }
            if slot.evicted.load(Ordering::Acquire) {
                return Wait::Evicted;
            }
            if slot.expired(hydrus_filters::clock::monotonic_ms()) {
                return if draining { Wait::Shutdown } else { Wait::Idle };
            }
            tokio::select! {
                biased;
                r = first_byte(stream) => return match r {
                    Ok(true) => Wait::Request,
                    Ok(false) => Wait::Unknown,
                    Err(_) => Wait::Closed,
                },
                // (Shutdown kicks every connection, see `watch_shutdown`.)
                _ = slot.kick.notified() => {}
            }
        }
    }
}

/// The preface an HTTP/2 client with prior knowledge opens with (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the connection speaks HTTP/2: by ALPN over TLS, by its preface in clear text.
async fn is_h2(stream: &mut Deadline) -> bool {
    if stream.get_ssl_digest().is_some() {
        return matches!(
            stream.selected_alpn_proto(),
            Some(pingora::protocols::ALPN::H2)
        );
    }
    // pingora's peek waits for the whole buffer: ask for more only while what arrived can
    // still be the preface, so that a short HTTP/1 request is never waited on (any request
    // starting with `P` has more than 4 bytes: `PUT / HTTP/1.0` and an empty line).
    for n in [1, 4, H2_PREFACE.len()] {
        let mut buf = [0u8; H2_PREFACE.len()];
        if !matches!(stream.peek(&mut buf[..n]).await, Ok(true)) || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
    }
    true
}

impl Edge {
    /// The TLS handshake with the running config's certificate, within the header deadline
    /// (a client that opens a connection and never finishes its handshake holds nothing
    /// longer than one that never sends a request). Failures are counted, not logged.
    async fn tls_handshake(
        &self,
        stream: Stream,
        tls: Arc<rustls::ServerConfig>,
        slot: &Slot,
        deadline_ms: u64,
    ) -> Option<Stream> {
        slot.set_deadline(deadline_ms);
        // The listener hands over its TCP streams boxed; TLS wraps the stream itself.
        let Ok(tcp) = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
        else {
            log::error!("TLS listener: not a TCP stream");
            return None;
        };
        let acceptor = pingora::listeners::tls::Acceptor::from_server_config(tls);
        let handshake = acceptor.tls_handshake(*tcp);
        tokio::pin!(handshake);
        loop {
            tokio::select! {
                biased;
                r = &mut handshake => {
                    slot.set_deadline(0);
                    return match r {
                        Ok(s) => Some(Box::new(s)),
                        Err(e) => {
                            log::debug!("TLS handshake failed: {e}");
                            self.conns.m.tls_failed.inc();
                            None
                        }
                    };
                }
                _ = slot.kick.notified() => {
                    if slot.evicted.load(Ordering::Acquire) {
                        return None;
                    }
                    if slot.expired(hydrus_filters::clock::monotonic_ms()) {
                        self.conns.m.tls_failed.inc();
                        return None;
                    }
                }
            }
        }
    }
}

/// The persistent settings of a served connection's session, carried to its next request.
type Persistent = Option<pingora::apps::HttpPersistentSettings>;

/// Whether pingora carries, in `settings`, bytes of the next request that it read with the last
/// one (the client pipelined it): then that request has begun, and no byte of it may be left
/// on the stream to wait for. pingora keeps those bytes private; its `Debug` says whether there
/// are any (`pipelined_prefix: Some(..)`), read here up to that field and no further.
fn pipelined(settings: &pingora::apps::HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    /// Where the scan is: before the field's name, after it, after its `: `.
    struct Scan(u8, bool);
    impl Write for Scan {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            match (self.0, s) {
                (0, "pipelined_prefix") | (1, ": ") => self.0 += 1,
                (1, _) => self.0 = 0,
                (2, _) => {
                    self.1 = s.starts_with("Some");
                    // Decided: stop formatting.
                    return Err(std::fmt::Error);
                }
                _ => {}
            }
            Ok(())
        }
    }
    let mut scan = Scan(0, false);
    let _ = write!(scan, "{settings:?}");
    scan.1
}

impl Edge {
    /// Kick every connection when shutdown (or an upgrade's hand-over) begins, from one task:
    /// a connection waiting for its next request then drains. (Each connection watching the
    /// shutdown signal itself took a lock per request.)
    fn watch_shutdown(&self, shutdown: &ShutdownWatch) {
        self.shutdown_watched.get_or_init(|| {
            let conns = self.conns.clone();
            let mut sd = shutdown.clone();
            tokio::spawn(async move {
                if sd.wait_for(|down| *down).await.is_ok() {
                    conns.kick_all();
                }
            });
        });
    }

    /// Wait for the connection's next request within its deadline: whether one began.
    async fn next_request(
        &self,
        stream: &mut Deadline,
        slot: &Slot,
        next: Next,
        accepted_ms: u64,
        shutdown: &ShutdownWatch,
    ) -> bool {
        let limits = self.state.config.load().limits.clone();
        let first = next == Next::First;
        if next == Next::Pipelined {
            // pingora read the start of this request with the last one (the client pipelined
            // it): it has begun, although nothing of it may be left on the stream to wait for.
            slot.set_phase(Phase::Header);
            slot.set_deadline(at(
                hydrus_filters::clock::monotonic_ms(),
                limits.header_timeout,
            ));
            return true;
        }
        // The first request's wait counts against its header deadline.
        let first_deadline = at(accepted_ms, limits.header_timeout);
        let (phase, deadline) = if first {
            (Phase::Fresh, first_deadline)
        } else {
            (
                Phase::KeepAlive,
                at(hydrus_filters::clock::monotonic_ms(), limits.idle_timeout),
            )
        };
        let body_ms = limits.body_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        slot.body_timeout_ms.store(body_ms, Ordering::Release);
        match self
            .wait_for_request(stream, slot, phase, deadline, shutdown)
            .await
        {
            Wait::Request => {}
            Wait::Unknown => {
                // Over TLS the wait for the next request and its header are one deadline
                // (the idle timeout and the header timeout added up).
                if !first {
                    slot.set_deadline(at(deadline, limits.header_timeout));
                }
                return true;
            }
            Wait::Closed | Wait::Shutdown | Wait::Evicted => return false,
            Wait::Idle => {
                if first {
                    self.conns.m.header_timeout.inc();
                } else {
                    self.conns.m.idle_timeout.inc();
                }
                return false;
            }
        }
        slot.set_phase(Phase::Header);
        slot.set_deadline(if first {
            first_deadline
        } else {
            at(hydrus_filters::clock::monotonic_ms(), limits.header_timeout)
        });
        true
    }

    /// A session for the request that began on `stream`.
    fn session(
        &self,
        stream: Client,
        settings: Persistent,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        match settings {
            Some(s) => pingora::apps::HttpPersistentSettings::apply_to_session(s, &mut session),
            None => {
                let idle = self.state.config.load().limits.idle_timeout;
                session.set_keepalive(Some(idle.as_secs().max(1)));
                // Requests pipelined behind this one (sent before its answer) are answered in
                // order, one after the other, as nginx and HAProxy do: pingora hands the bytes
                // it read past a request to the next session (the setting is carried on).
                session.set_pipelining_enabled(true);
                if let Some(o) = self.proxy.server_options() {
                    session.set_keepalive_reuses_remaining(o.keepalive_request_limit);
                }
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        session
    }

    /// Serve one request: until its header is read, it may be evicted or run out of time; then
    /// its body may run out of time; then it runs to the end. The reaper kicks. The stream
    /// back when the connection may be reused.
    pub(super) async fn serve(
        &self,
        session: ServerSession,
        slot: &Arc<Slot>,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, Persistent)> {
        slot.header_read.store(false, Ordering::Release);
        slot.body_read.store(false, Ordering::Release);
        slot.consumed.store(super::UNKNOWN, Ordering::Release);
        let mut session = session;
        // (Writes to the client are under `limits.send_timeout` at the stream, see `deadline`;
        // an HTTP/2 stream's wait for its window, under the same, is set in `h2`.)
        session.set_connection_user_context(Some(Box::new(slot.clone())));
        let serve = self.proxy.process_new_http(session, shutdown);
        tokio::pin!(serve);
        let reused = loop {
            tokio::select! {
                biased;
                r = &mut serve => break r,
                _ = slot.kick.notified() => {
                    let header = slot.header_read.load(Ordering::Acquire);
                    if !header && slot.evicted.load(Ordering::Acquire) {
                        return None;
                    }
                    if slot.expired(hydrus_filters::clock::monotonic_ms()) {
                        // The request's hold on its upstream is given back as it drops.
                        if header {
                            self.conns.m.body_timeout.inc();
                        } else {
                            self.conns.m.header_timeout.inc();
                        }
                        return None;
                    }
                }
            }
        };
        slot.set_deadline(0);
        Some(reused?.consume())
    }
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.watch_shutdown(shutdown);
        let running = self.state.config.load_full();
        let admitted = self.conns.admit(running.limits.max_connections)?;
        let slot = admitted.slot.clone();
        let accepted_ms = hydrus_filters::clock::monotonic_ms();
        let stream = match &running.tls {
            Some(tls) => {
                let deadline = at(accepted_ms, running.limits.header_timeout);
                self.tls_handshake(stream, tls.clone(), &slot, deadline)
                    .await?
            }
            None => stream,
        };
        // Every write to the client from here on is under the send deadline.
        let mut stream: Client = Box::new(Deadline::new(
            stream,
            running.limits.send_timeout,
            self.conns.m.send_timeout.clone(),
        ));
        let header_timeout = running.limits.header_timeout;
        drop(running);
        if !self
            .next_request(&mut stream, &slot, Next::First, accepted_ms, shutdown)
            .await
        {
            return None;
        }
        // (The preface is part of the first request's header: the same deadline.)
        let h2 = tokio::time::timeout(header_timeout, is_h2(&mut stream)).await;
        if h2.is_err() {
            self.conns.m.header_timeout.inc();
            return None;
        }
        if h2.is_ok_and(|h2| h2) {
            // pingora's HTTP/2 server runs each stream through the same hooks; the
            // connection stays counted against the cap until it closes: busy while a stream
            // is in flight, else evictable (as one whose first request is arriving, until it
            // has made one; then as an idle keep-alive one). Closed after
            // `limits.idle_timeout` without a stream.
            slot.set_phase(Phase::Header);
            slot.set_deadline(0);
            let _admitted = admitted;
            self.serve_h2(stream, &slot, shutdown).await;
            return None;
        }
        let mut settings = None;
        let mut next = Next::First;
        loop {
            let read_before = stream.read_bytes();
            let session = self.session(stream, settings.take(), shutdown);
            let served;
            (served, settings) = self.serve(session, &slot, shutdown).await?;
            // (The session hands back the stream it was given.)
            stream = served.into_any().downcast::<Deadline>().ok()?;
            // A request that began on the stream and took all it read left nothing of the next
            // (the usual case, told without asking pingora); else pingora's record says.
            let read = stream.read_bytes().wrapping_sub(read_before);
            let took_all = next != Next::Pipelined && read == slot.consumed.load(Ordering::Acquire);
            next = match &settings {
                Some(s) if !took_all && pipelined(s) => Next::Pipelined,
                _ => Next::KeepAlive,
            };
            if !self
                .next_request(&mut stream, &slot, next, accepted_ms, shutdown)
                .await
            {
                return None;
            }
        }
    }

    /// Nothing to do when the listener closes: connections drain on their own (see
    /// [`Edge::drain`]). pingora's own cleanup would make every request that arrives during the
    /// drain be dropped unread.
    async fn cleanup(&self) {}
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A loopback connection: hydrus's end as pingora's stream, and the client's end.
    pub(crate) async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let server = pingora::protocols::l4::stream::Stream::from(server);
        (Box::new(server), client)
    }

    #[tokio::test]
    async fn pipelined_bytes_carried_to_the_next_request_are_seen() {
        let (stream, _client) = pair().await;
        let session = ServerSession::new_http1(stream);
        let mut settings = pingora::apps::HttpPersistentSettings::for_session(&session);
        assert!(!pipelined(&settings));
        settings.set_user_context(Box::new(7u64));
        assert!(!pipelined(&settings));
        settings.set_pipelined_prefix(bytes::BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(pipelined(&settings));
    }
}
