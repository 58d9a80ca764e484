//! The write deadline of a client connection (`limits.send_timeout`), as nginx's
//! `send_timeout`: a write to the client that makes no progress for this long fails, and with
//! it the request and the connection (counted as `send_timeout`), so that a client that stops
//! reading holds its connection, its upstream connection and the buffers between them no
//! longer than that.
//!
//! It sits under every write pingora makes to the client: HTTP/1 response headers, bodies and
//! the final flush, the flush before a close, HTTP/2 frames. pingora's own write timeout covers
//! only HTTP/1 body writes: a response small enough for pingora's write buffer (1460 bytes) is
//! written by the flush that ends it, untimed, so a client that asks for small answers and
//! reads none would hold its upstream connection for ever. (An HTTP/2 stream whose window never
//! opens writes nothing here: pingora's write timeout on the stream resets it, see
//! [`super::h2`].)
//!
//! The timer is armed only when a write would block, and disarmed by the next write that
//! makes progress: a write that completes at once costs a branch.

use async_trait::async_trait;
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use prometheus::IntCounter;
use std::task::{Context, Poll};
use std::time::Duration;
use std::{future::Future, io, pin::Pin, sync::Arc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client stream whose writes fail once blocked for longer than the deadline.
pub struct Deadline {
    inner: Stream,
    after: Duration,
    /// Made on the first write that blocks; re-armed by each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// A write is blocked and the timer runs.
    armed: bool,
    /// The deadline passed: every write fails from then on.
    expired: bool,
    /// Counts connections whose deadline passed.
    closed: IntCounter,
    /// Bytes read from the stream so far.
    read: u64,
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("inner", &self.inner)
            .field("after", &self.after)
            .field("expired", &self.expired)
            .finish()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "client write made no progress")
}

impl Deadline {
    pub fn new(inner: Stream, after: Duration, closed: IntCounter) -> Self {
        Self {
            inner,
            after,
            timer: None,
            armed: false,
            expired: false,
            closed,
            read: 0,
        }
    }

    /// Bytes read from the stream so far.
    pub fn read_bytes(&self) -> u64 {
        self.read
    }

    /// Peek the stream (see [`Peek`]), without the boxed future of a call through the trait.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }

    /// The outcome of one write attempt: progress disarms the timer; a blocked write arms it
    /// (once) and fails when it has run out.
    #[inline]
    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        match self.blocked(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A write is blocked: `Ready` once it has been for the deadline.
    #[cold]
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if !self.armed {
            timer.as_mut().reset(Instant::now() + after);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.expired = true;
            self.closed.inc();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl AsyncRead for Deadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += buf.filled().len().saturating_sub(before) as u64;
        r
    }
}

impl AsyncWrite for Deadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.expired {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, r)
    }
}

#[async_trait]
impl Shutdown for Deadline {
    /// The inner stream's shutdown (its buffer flushed, TLS's close_notify), within the
    /// deadline: pingora closes a connection so after an answer that ends it.
    async fn shutdown(&mut self) {
        if self.expired {
            return;
        }
        if tokio::time::timeout(self.after, self.inner.shutdown())
            .await
            .is_err()
        {
            self.expired = true;
            self.closed.inc();
        }
    }
}

#[async_trait]
impl Peek for Deadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl UniqueID for Deadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Deadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::conns::connection::tests::pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counter() -> IntCounter {
        IntCounter::new("closed", "closed").expect("counter")
    }

    #[tokio::test]
    async fn a_write_blocked_past_the_deadline_fails_and_is_counted() {
        let (stream, _client) = pair().await;
        let closed = counter();
        let mut d = Deadline::new(stream, Duration::from_millis(200), closed.clone());
        // The client reads nothing: the socket buffers fill, then a write blocks.
        let chunk = vec![0u8; 1 << 16];
        let t = std::time::Instant::now();
        let err = loop {
            if let Err(e) = d.write_all(&chunk).await {
                break e;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "writes never blocked"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(closed.get(), 1);
        // And every write after it.
        assert!(d.write_all(b"x").await.is_err());
        assert!(d.flush().await.is_err());
        assert_eq!(closed.get(), 1);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (stream, mut client) = pair().await;
        let closed = counter();
        let mut d = Deadline::new(stream, Duration::from_secs(2), closed.clone());
        // The client reads 64 KiB every 5 ms: writes block (the kernel wakes a blocked writer
        // once half of what is queued has gone), but never for 2 s; the whole takes longer.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            total
        });
        let chunk = vec![0u8; 1 << 16];
        let t = std::time::Instant::now();
        for _ in 0..512 {
            d.write_all(&chunk)
                .await
                .expect("progress keeps the deadline away");
        }
        d.flush().await.expect("flushed");
        drop(d);
        assert_eq!(reader.await.expect("reader"), 512 << 16);
        assert_eq!(closed.get(), 0);
        assert!(t.elapsed() > Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
