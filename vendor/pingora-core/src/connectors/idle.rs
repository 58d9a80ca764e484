// hydrus patch: the idle upstream connections, without a watcher task per connection.
//
// pingora-pool gives each connection returned to the pool a spawned task that waits, under a
// mutex, for the connection to be read from (the server closed it or sent data), to time out, to
// be evicted or to be taken back; an `Arc<Notify>` in a sharded LRU and a oneshot channel tie them
// together. A request that reuses the connection wakes that task and waits for it to let go of
// the mutex. That is a task, a channel, a notifier, a timer and two wake-ups per request served
// from the pool: about a tenth of a bare pingora proxy's instructions per request.
//
// Here an idle connection is a stream in a per-upstream stack with the time it was returned:
// - taken back: the most recently returned first, skipping any past its idle timeout; the
//   caller's check that nothing was read on it (`test_reusable_stream`) sees a close as before;
// - the pool full: the least recently returned connection, of any upstream, is closed;
// - while idle: a sweep every `SWEEP_PERIOD` closes those past their idle timeout and those the
//   server closed (a read on a socket the reactor has not seen readable makes no system call).
// A connection the server closes is so closed within a sweep period rather than at once, and
// never handed out: the check at reuse sees the close.
//
// On pingora's runtime without work stealing (one single-threaded runtime a thread), an idle
// connection is kept for the thread that returned it, as nginx and Envoy keep theirs per worker:
// its socket is registered with that thread's I/O driver, and a request on another thread would
// have each of its readiness events seen there and handed over (a cross-thread wake-up each).

use crate::protocols::Stream;
use log::debug;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};
use tokio::runtime::RuntimeFlavor;

use super::PoolCallback;

/// How often idle connections are looked over (closed by the server, past their idle timeout).
pub(crate) const SWEEP_PERIOD: Duration = Duration::from_millis(500);

struct Idle {
    stream: Stream,
    since: Instant,
    idle_timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

/// An upstream (`Peer::reuse_hash`), and on a single-threaded runtime the thread running it.
type Key = (u64, Option<ThreadId>);

/// `key` as the pool files it for the calling thread.
fn local(key: u64) -> Key {
    (key, single_threaded().then(|| std::thread::current().id()))
}

/// Whether the caller runs on a single-threaded runtime (pingora without work stealing runs one
/// a thread), whose I/O driver sees only the sockets registered on that thread.
pub(crate) fn single_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
}

/// An upstream's pool key (`Peer::reuse_hash`) for the calling thread: on a single-threaded
/// runtime, a key of its own (for pools keyed by a number, as the HTTP/2 ones are), else `key`.
pub(crate) fn thread_key(key: u64) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    if !single_threaded() {
        return key;
    }
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one((key, std::thread::current().id()))
}

#[derive(Default)]
struct Groups {
    /// Per upstream and thread (see [`Key`]), the most recently returned last.
    by_key: HashMap<Key, VecDeque<Idle>>,
    /// How many are idle, per thread (`None`: a multi-threaded runtime's, all of them): the
    /// pool's size caps each thread's, as nginx's `keepalive` caps each worker's cache, so that
    /// one thread's returns never close another's idle connections.
    counts: HashMap<Option<ThreadId>, usize>,
}

/// The idle connections of a connector, at most `size` of them.
pub(crate) struct IdlePool {
    groups: Mutex<Groups>,
    size: usize,
    sweeping: AtomicBool,
    on_evicted: Option<PoolCallback>,
    /// The connector's count of connections found sending unasked.
    unexpected_data: Arc<AtomicU64>,
}

impl IdlePool {
    pub(crate) fn new(
        size: usize,
        on_evicted: Option<PoolCallback>,
        unexpected_data: Arc<AtomicU64>,
    ) -> Self {
        IdlePool {
            groups: Mutex::new(Groups::default()),
            size,
            sweeping: AtomicBool::new(false),
            on_evicted,
            unexpected_data,
        }
    }

    /// The most recently returned connection to `key` not past its idle timeout (returned on
    /// this thread, on a single-threaded runtime).
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let key = local(key);
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut g = self.groups.lock();
            let Groups { by_key, counts } = &mut *g;
            let stack = by_key.get_mut(&key)?;
            let mut found = None;
            while let Some(idle) = stack.pop_back() {
                forget_one(counts, key.1);
                if idle.expired(now) {
                    expired.push(idle);
                } else {
                    found = Some(idle.stream);
                    break;
                }
            }
            found
        };
        // (Closed outside the lock.)
        drop(expired);
        found
    }

    /// Keep `stream` for reuse by `key`; the least recently returned connection makes room when
    /// the pool is full (on a single-threaded runtime: this thread's, when its share is). A pool
    /// of size 0 keeps nothing.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.size == 0 {
            return;
        }
        self.start_sweeping();
        let key = local(key);
        let idle = Idle {
            stream,
            since: Instant::now(),
            idle_timeout,
        };
        let evicted = {
            let mut g = self.groups.lock();
            let evicted = if g.counts.get(&key.1).is_some_and(|&n| n >= self.size) {
                g.pop_oldest(key.1)
            } else {
                None
            };
            g.by_key.entry(key).or_default().push_back(idle);
            *g.counts.entry(key.1).or_default() += 1;
            evicted
        };
        if let Some(e) = evicted {
            debug!("idle pool full: evicting fd {}", e.stream.id());
            if let Some(cb) = &self.on_evicted {
                cb(e.since.elapsed());
            }
        }
    }

    /// Close the connections past their idle timeout or closed by the server (or sending
    /// unasked), and forget upstreams without idle connections.
    fn sweep(&self) {
        let unexpected_data = &*self.unexpected_data;
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut g = self.groups.lock();
            let Groups { by_key, counts } = &mut *g;
            by_key.retain(|&(_, thread), stack| {
                for mut idle in std::mem::take(stack) {
                    if !idle.expired(now)
                        && super::test_reusable_stream(&mut idle.stream, unexpected_data)
                    {
                        stack.push_back(idle);
                    } else {
                        // (Closed once the lock is released.)
                        forget_one(counts, thread);
                        closed.push(idle);
                    }
                }
                !stack.is_empty()
            });
        }
        if !closed.is_empty() {
            debug!("idle pool: closing {} connection(s)", closed.len());
        }
    }

    /// The sweep runs on the runtime of the first connection returned, for as long as the pool
    /// is alive; should that runtime stop first, the next connection returned starts another.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.sweeping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        /// Lets the next `put` start a sweep when this one's task is dropped unfinished.
        struct Sweeping(Weak<IdlePool>);
        impl Drop for Sweeping {
            fn drop(&mut self) {
                if let Some(pool) = self.0.upgrade() {
                    pool.sweeping.store(false, Ordering::Release);
                }
            }
        }
        let sweeping = Sweeping(Arc::downgrade(self));
        pingora_runtime::current_handle().spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_PERIOD).await;
                let Some(pool) = sweeping.0.upgrade() else {
                    return;
                };
                pool.sweep();
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.groups.lock().counts.values().sum()
    }
}

/// One idle connection of `thread`'s fewer.
fn forget_one(counts: &mut HashMap<Option<ThreadId>, usize>, thread: Option<ThreadId>) {
    if let Some(n) = counts.get_mut(&thread) {
        *n = n.saturating_sub(1);
    }
}

impl Groups {
    /// Remove `thread`'s least recently returned connection, of any upstream (a scan of the
    /// upstreams: only when its share of the pool is full).
    fn pop_oldest(&mut self, thread: Option<ThreadId>) -> Option<Idle> {
        let key = self
            .by_key
            .iter()
            .filter(|(k, _)| k.1 == thread)
            .filter_map(|(k, stack)| stack.front().map(|i| (*k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let oldest = self.by_key.get_mut(&key)?.pop_front()?;
        forget_one(&mut self.counts, thread);
        Some(oldest)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's end (as pingora's `Stream`) and the server's end.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Box::new(L4Stream::from(client.unwrap())), server.unwrap().0)
    }

    fn pool(size: usize) -> Arc<IdlePool> {
        Arc::new(IdlePool::new(size, None, Arc::new(AtomicU64::new(0))))
    }

    #[tokio::test]
    async fn the_most_recently_returned_connection_of_its_upstream_is_taken() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = pool(8);
        let (a, _sa) = pair(&l).await;
        let (b, _sb) = pair(&l).await;
        let (c, _sc) = pair(&l).await;
        let (a_id, b_id, c_id) = (a.id(), b.id(), c.id());
        p.put(1, a, None);
        p.put(1, b, None);
        p.put(2, c, None);
        assert_eq!(p.take(1).map(|s| s.id()), Some(b_id));
        assert_eq!(p.take(1).map(|s| s.id()), Some(a_id));
        assert!(p.take(1).is_none());
        assert!(p.take(3).is_none());
        assert_eq!(p.take(2).map(|s| s.id()), Some(c_id));
        assert_eq!(p.len(), 0);
    }

    /// On single-threaded runtimes (pingora without work stealing) a connection is kept for the
    /// thread that returned it; a multi-threaded runtime's threads share theirs.
    #[test]
    fn on_single_threaded_runtimes_a_connection_is_kept_for_its_thread() {
        let single = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let p = pool(8);
        let here = single();
        let (id, _server, l) = here.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (a, server) = pair(&l).await;
            let id = a.id();
            p.put(1, a, None);
            (id, server, l)
        });
        // Each thread's share is the pool's size: another thread's return closes none of this
        // thread's idle connections.
        let capped = pool(1);
        let (kept, _kept_server) = here.block_on(async {
            let (c, server) = pair(&l).await;
            let id = c.id();
            capped.put(1, c, None);
            (id, server)
        });
        let elsewhere = capped.clone();
        std::thread::spawn(move || {
            single().block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                for _ in 0..2 {
                    let (d, _server) = pair(&l).await;
                    elsewhere.put(1, d, None);
                }
            })
        })
        .join()
        .unwrap();
        assert_eq!(capped.len(), 2);
        assert_eq!(
            here.block_on(async { capped.take(1).map(|s| s.id()) }),
            Some(kept)
        );

        let other = p.clone();
        let found_elsewhere =
            std::thread::spawn(move || single().block_on(async move { other.take(1).is_some() }))
                .join()
                .unwrap();
        assert!(!found_elsewhere);
        assert_eq!(p.len(), 1);
        assert_eq!(here.block_on(async { p.take(1).map(|s| s.id()) }), Some(id));

        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        multi.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (b, _server) = pair(&l).await;
            let id = b.id();
            // Returned on a worker thread, taken on this one (`block_on`'s, not a worker).
            let putter = p.clone();
            tokio::spawn(async move { putter.put(2, b, None) })
                .await
                .unwrap();
            assert_eq!(p.take(2).map(|s| s.id()), Some(id));
        });
    }

    /// The HTTP/2 pools' keys: per thread on single-threaded runtimes only.
    #[test]
    fn an_upstream_key_is_the_threads_own_on_single_threaded_runtimes_only() {
        let single = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        let here = single().block_on(async { thread_key(7) });
        assert_eq!(single().block_on(async { thread_key(7) }), here);
        assert_ne!(single().block_on(async { thread_key(8) }), here);
        let there = std::thread::spawn(move || single().block_on(async { thread_key(7) }))
            .join()
            .unwrap();
        assert_ne!(here, there);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert_eq!(multi.block_on(async { thread_key(7) }), 7);
        assert_eq!(thread_key(7), 7);
    }

    #[tokio::test]
    async fn a_full_pool_closes_the_least_recently_returned_of_any_upstream() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let cb: PoolCallback = Arc::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let p = Arc::new(IdlePool::new(2, Some(cb), Arc::new(AtomicU64::new(0))));
        let (a, _sa) = pair(&l).await;
        let (b, _sb) = pair(&l).await;
        let (c, _sc) = pair(&l).await;
        let (b_id, c_id) = (b.id(), c.id());
        p.put(1, a, None);
        p.put(2, b, None);
        p.put(1, c, None);
        assert_eq!(p.len(), 2);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // `a` (upstream 1, returned first) made room.
        assert_eq!(p.take(1).map(|s| s.id()), Some(c_id));
        assert!(p.take(1).is_none());
        assert_eq!(p.take(2).map(|s| s.id()), Some(b_id));
        // A pool of size 0 keeps nothing.
        let none = pool(0);
        let (d, _sd) = pair(&l).await;
        none.put(1, d, None);
        assert!(none.take(1).is_none());
    }

    #[tokio::test]
    async fn a_connection_past_its_idle_timeout_is_not_handed_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = pool(8);
        let (a, _sa) = pair(&l).await;
        let (b, _sb) = pair(&l).await;
        let a_id = a.id();
        p.put(1, a, Some(Duration::from_secs(60)));
        p.put(1, b, Some(Duration::ZERO));
        // `b`, the more recent, expired at once: `a` comes out, `b` is closed.
        assert_eq!(p.take(1).map(|s| s.id()), Some(a_id));
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_server_closed_and_what_timed_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = pool(8);
        let (closed, server) = pair(&l).await;
        let (live, mut live_server) = pair(&l).await;
        let (expiring, mut expiring_server) = pair(&l).await;
        let live_id = live.id();
        p.put(1, closed, None);
        p.put(1, live, Some(Duration::from_secs(60)));
        p.put(2, expiring, Some(Duration::from_millis(20)));
        drop(server);
        // (The reactor sees the close, and the timeout passes.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.sweep();
        assert_eq!(p.len(), 1);
        let live = p.take(1).unwrap();
        assert_eq!(live.id(), live_id);
        // The timed-out connection was closed: its server reads the end.
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1];
        assert_eq!(expiring_server.read(&mut buf).await.unwrap(), 0);
        // The live one was not.
        let r = tokio::time::timeout(Duration::from_millis(50), live_server.read(&mut buf)).await;
        assert!(r.is_err(), "the live connection was closed");
        drop(live);
    }

    #[test]
    fn a_sweep_whose_runtime_stopped_is_started_again() {
        let p = pool(8);
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = rt();
        first.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (a, _sa) = pair(&l).await;
            p.put(1, a, Some(Duration::from_secs(60)));
        });
        drop(first);
        rt().block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (b, _sb) = pair(&l).await;
            p.put(2, b, Some(Duration::from_millis(10)));
            tokio::time::sleep(SWEEP_PERIOD * 3).await;
            // `b` timed out; `a`, whose runtime is gone, reads as broken.
            assert_eq!(p.len(), 0);
        });
    }

    #[tokio::test]
    async fn the_sweep_runs_on_its_own() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = pool(8);
        let (a, _sa) = pair(&l).await;
        p.put(1, a, Some(Duration::from_millis(10)));
        tokio::time::sleep(SWEEP_PERIOD * 3).await;
        assert_eq!(p.len(), 0);
    }
}
