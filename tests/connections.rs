//! The listener's connections and limits, through the real binary: idle, silent and slowloris
//! clients are disconnected on time; a flood of idle connections never locks out new clients
//! or the admin listener; the soft open-file limit is raised to the hard one at start; an
//! oversized header is refused, and long identity values are forwarded whole but capped in the
//! log. And what clients that hold resources without using them can cost: clients that stop
//! reading their answers (HTTP/2 streams whose window never opens, HTTP/1.1 connections whose
//! answers pile up unread), idle HTTP/2 connections at the connection cap, and HTTP/1.1 requests
//! pipelined in one write. Real sockets, loopback only; every wait bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::raw::{frame, literal};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The length of the answers that are neither `/big` nor `/slow`.
const SMALL: usize = 1200;

/// An HTTP/1.1 upstream that answers `/big` with `big` bytes, `/slow` after 1.5 s, anything
/// else with [`SMALL`] bytes at once (to HEAD: the header alone). It counts its open
/// connections (open until the peer closes it or a write to it fails), the requests it
/// answered and the `/slow` ones it received.
struct Sized {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    slow: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Counts a connection open while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sized {
    fn start(big: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let slow = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Counts {
            served: served.clone(),
            slow: slow.clone(),
            stop: stop.clone(),
        };
        let o = open.clone();
        std::thread::spawn(move || {
            while !counts.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        o.fetch_add(1, Ordering::SeqCst);
                        let guard = Open(o.clone());
                        let counts = counts.clone();
                        std::thread::spawn(move || {
                            let _open = guard;
                            sized_connection(s, big, &counts);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            open,
            served,
            slow,
            stop,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Sized {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What a [`Sized`] upstream's connections share: its counters and its stop flag.
#[derive(Clone)]
struct Counts {
    served: Arc<AtomicUsize>,
    slow: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn sized_connection(mut s: TcpStream, big: usize, c: &Counts) {
    s.set_nonblocking(false).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // (A write that hangs this long means the test has failed already.)
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A request head (no request sent here has a body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if c.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let len = match path.as_str() {
            "/big" => big,
            "/slow" => {
                c.slow.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1500));
                SMALL
            }
            _ => SMALL,
        };
        let header = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
        if s.write_all(header.as_bytes()).is_err() {
            return;
        }
        let piece = vec![b'x'; 64 << 10];
        // (An answer to HEAD is its header alone.)
        let mut left = if head.starts_with("HEAD ") { 0 } else { len };
        while left > 0 {
            let n = left.min(piece.len());
            if s.write_all(&piece[..n]).is_err() {
                return;
            }
            left -= n;
        }
        c.served.fetch_add(1, Ordering::SeqCst);
    }
}

/// hydrus in front of `up` with `limits` (YAML lines under `limits:`).
fn start(up: &Sized, limits: &str) -> Hydrus {
    let mut c = Config::new()
        .cluster("sized", &[up.addr])
        .route(route("all", "sized"));
    if !limits.is_empty() {
        c = c.top(&format!("limits:\n{limits}"));
    }
    Hydrus::start(&c.template())
}

fn closed_count(h: &Hydrus, reason: &str) -> f64 {
    metric_value(
        &h.metrics(),
        &format!("hydrus_downstream_connections_closed_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Read `s` until the peer closes it (EOF or reset), within `limit`: the bytes read, or `None`
/// when it stayed open.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while t.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(out),
        }
    }
    None
}

/// A new HTTP/2 connection (h2 crate, window as given; `None`: the crate's default).
async fn h2_client(port: u16, window: Option<u32>) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut b = h2::client::Builder::new();
    if let Some(w) = window {
        b.initial_window_size(w);
    }
    let (client, conn) = b.handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

fn get_request(port: u16, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .body(())
        .unwrap()
}

/// GET `path` on `client` and read the whole answer: (status, body length).
async fn h2_get(
    client: &mut h2::client::SendRequest<Bytes>,
    port: u16,
    path: &str,
) -> (u16, usize) {
    let (resp, _) = client.send_request(get_request(port, path), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    (status, len)
}

#[test]
fn the_send_deadline_is_on_by_default() {
    let up = Sized::start(0);
    let h = start(&up, "");
    let (status, body) = get(&format!("{}/config", h.admin())).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["limits"]["send_timeout"], "1m", "{body}");
}

#[test]
fn http2_streams_whose_window_never_opens_are_reset_and_free_their_upstream() {
    const N: usize = 20;
    let up = Sized::start(2 << 20);
    let h = start(&up, "  send_timeout: 2s");
    let rt = Runtime::new().unwrap();
    let port = h.port;
    // A client that opens N streams with a window of 0 and never opens it.
    let (client, bodies) = rt.block_on(async {
        let mut client = h2_client(port, Some(0)).await;
        let mut answers = Vec::new();
        for _ in 0..N {
            client = client.ready().await.unwrap();
            let (resp, _) = client
                .send_request(get_request(port, "/big"), true)
                .unwrap();
            answers.push(resp);
        }
        let mut bodies = Vec::new();
        for a in answers {
            let resp = tokio::time::timeout(Duration::from_secs(10), a)
                .await
                .expect("every answer's header arrives")
                .unwrap();
            assert_eq!(resp.status(), 200);
            bodies.push(resp.into_body());
        }
        (client, bodies)
    });
    // Each stream holds an upstream connection while its body waits for the window...
    assert!(
        eventually(Duration::from_secs(5), || up.open() == N),
        "upstream connections: {}",
        up.open()
    );
    // ...until hydrus gives up on it at the deadline: the stream is reset, not a byte sent.
    rt.block_on(async {
        for (i, mut b) in bodies.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(10), b.data()).await {
                Ok(Some(Err(e))) => assert!(e.is_reset() && e.is_remote(), "stream {i}: {e}"),
                other => panic!("stream {i} not reset within 10 s: {other:?}"),
            }
        }
    });
    // The upstream connections are closed: a body nobody reads is not worth finishing.
    assert!(
        eventually(Duration::from_secs(5), || up.open() == 0),
        "upstream connections still open: {}",
        up.open()
    );
    assert!(
        closed_count(&h, "send_timeout") >= N as f64,
        "{}",
        h.metrics()
    );
    // New clients are served, on both protocols.
    assert_eq!(get(&h.url("/small")).unwrap().0, 200);
    rt.block_on(async {
        let mut fresh = h2_client(port, None).await;
        assert_eq!(h2_get(&mut fresh, port, "/small").await, (200, SMALL));
    });
    drop(client);
}

/// A connection to `port` with a small segment size and receive buffer: the kernel then gives
/// hydrus's end a send buffer of a few hundred KB (not the 4 MB of a loopback connection), which
/// a client that stops reading fills quickly.
fn connect_narrow(port: u16) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_tcp_mss(536).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.into()
}

#[test]
fn an_http1_client_that_stops_reading_is_cut_off_and_frees_the_upstream() {
    let big = 32 << 20;
    let up = Sized::start(big);
    let h = start(&up, "  send_timeout: 2s");
    // A large answer, never read: a body write blocks once the socket buffers are full.
    let mut large = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    large
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    // HEAD requests pipelined and never read: each answer is a header alone, written by the
    // flush that ends it (which pingora does not time), until the buffers are full.
    let mut heads = connect_narrow(h.port);
    heads
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut sent = 0;
    while sent < 100_000
        && heads
            .write_all(b"HEAD /small HTTP/1.1\r\nhost: x\r\n\r\n")
            .is_ok()
    {
        sent += 1;
    }
    // Both are cut off at the deadline, and the upstream connections they held are closed;
    // the pipelined requests were answered, in order, until the client stopped reading.
    assert!(
        eventually(Duration::from_secs(15), || up.open() == 0),
        "upstream connections still open: {} ({} of {sent} HEAD requests answered upstream)",
        up.open(),
        up.served()
    );
    let answered = up.served();
    assert!(answered > 100 && answered < sent, "{answered} of {sent}");
    let got = read_to_close(&mut large, Duration::from_secs(10)).expect("large closed");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < big, "{} bytes: not the whole answer", got.len());
    let got = read_to_close(&mut heads, Duration::from_secs(10)).expect("heads closed");
    let read = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(
        read <= answered,
        "{read} answers read, {answered} served upstream"
    );
    assert!(closed_count(&h, "send_timeout") >= 2.0, "{}", h.metrics());
    // Others are served.
    assert_eq!(get(&h.url("/small")).unwrap().0, 200);
}

/// One raw HTTP/2 frame: (type, flags, stream, payload).
type RawFrame = (u8, u8, u32, Vec<u8>);

fn read_frame(s: &mut TcpStream) -> Option<RawFrame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], stream, payload))
}

/// Answer what the server asks of an HTTP/2 client: SETTINGS and PING acknowledged.
fn acknowledge(s: &mut TcpStream, f: &RawFrame) {
    let (kind, flags, _, payload) = f;
    if (*kind == 4 || *kind == 6) && flags & 1 == 0 {
        // (A SETTINGS acknowledgement carries nothing; a PING's echoes its payload.)
        let echo: &[u8] = if *kind == 6 { payload } else { &[] };
        let mut ack = Vec::new();
        frame(&mut ack, *kind, 1, 0, echo);
        let _ = s.write_all(&ack);
    }
}

/// A raw HTTP/2 connection that made one GET of `path` and read its whole answer; left open.
fn h2_used_once(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "x"),
    ] {
        literal(&mut block, k, v);
    }
    frame(&mut out, 1, 4 | 1, 1, &block);
    s.write_all(&out).unwrap();
    loop {
        let f = read_frame(&mut s).expect("the answer arrives");
        acknowledge(&mut s, &f);
        let (kind, flags, stream, _) = f;
        assert_ne!(kind, 3, "stream reset");
        if stream == 1 && kind <= 1 && flags & 1 != 0 {
            return s;
        }
    }
}

#[test]
fn idle_http2_connections_make_room_at_the_cap() {
    let up = Sized::start(0);
    let h = start(&up, "  max_connections: 4");
    let rt = Runtime::new().unwrap();
    let port = h.port;
    // Three HTTP/2 connections that made one request each and stay open, and one with a
    // request in flight: the cap is full.
    let mut idle: Vec<TcpStream> = (0..3).map(|_| h2_used_once(port, "/small")).collect();
    // (The busy connection's client is handed back with its answer: it stays open.)
    let busy = rt.spawn(async move {
        let mut c = h2_client(port, None).await;
        (h2_get(&mut c, port, "/slow").await, c)
    });
    assert!(eventually(Duration::from_secs(5), || up
        .slow
        .load(Ordering::SeqCst)
        == 1));
    // A new HTTP/1.1 client is served: idle HTTP/2 connections made room.
    let mut status = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            status = get(&h.url("/small")).ok().map(|r| r.0);
            status.is_some()
        }),
        "a new client was not served at the cap\n{}",
        h.log()
    );
    assert_eq!(status, Some(200));
    // So is a new HTTP/2 client.
    rt.block_on(async {
        let mut fresh = h2_client(port, None).await;
        assert_eq!(h2_get(&mut fresh, port, "/small").await, (200, SMALL));
    });
    // The connection with a request in flight was left alone.
    let (answer, _busy_client) = rt.block_on(busy).unwrap();
    assert_eq!(answer, (200, SMALL));
    // The idle ones were told to go away (GOAWAY), then closed.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut goaway = false;
        while let Some(f) = read_frame(s) {
            acknowledge(s, &f);
            goaway |= f.0 == 7;
        }
        assert!(goaway, "idle connection {i}: no GOAWAY before it closed");
    }
    assert!(closed_count(&h, "evicted") >= 3.0, "{}", h.metrics());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("a");
    let h = Hydrus::start(
        &Config::new()
            .cluster("a", &[up.addr])
            .route(route("all", "a"))
            .template(),
    );
    // Three requests in one write (the second with a body), the last closing the connection.
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).expect("closed after the third");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text}");
    let seen: Vec<(String, String)> = up.take().into_iter().map(|r| (r.method, r.path)).collect();
    let want = [("GET", "/one"), ("POST", "/two"), ("GET", "/three")];
    assert_eq!(
        seen,
        want.map(|(m, p)| (m.to_string(), p.to_string())).to_vec()
    );
    // On a connection used one request at a time (a body among them), then pipelined.
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for req in [
        &b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    ] {
        s.write_all(req).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"group\"") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    }
    s.write_all(
        b"GET /c HTTP/1.1\r\nhost: x\r\n\r\nGET /d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).expect("closed after /d");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen: Vec<String> = up.take().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/a", "/b", "/c", "/d"]);
    // A request that arrives while the one before is still being answered waits its turn.
    up.delay_ms.store(300, Ordering::SeqCst);
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"GET /second HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).expect("closed after the second");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seen: Vec<String> = up.take().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/first", "/second"]);
}

#[test]
fn idle_and_slow_clients_are_disconnected() {
    let up = Upstream::start("a");
    let h = Hydrus::start(&pool_template(
        &[up.addr],
        "",
        "limits:\n  idle_timeout: 1s\n  header_timeout: 1s",
    ));
    // A keep-alive connection: served, then closed after a second without a request.
    let mut ka = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    ka.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = ka.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = closed_within(&mut ka, Duration::from_secs(5)).expect("idle connection closed");
    assert!(idle >= Duration::from_millis(800), "{idle:?}");
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).is_some());
    // Slowloris: a header byte every 100 ms never completes; closed at the header deadline.
    let mut slow = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    let mut closed = false;
    while t.elapsed() < Duration::from_secs(5) {
        if slow.write_all(b"x-slow: 1\r\n").is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(100)).is_some() {
            closed = true;
            break;
        }
    }
    assert!(closed, "slowloris connection still open after 5 s");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "idle_timeout")]
        ) >= 1.0
    );
    assert!(
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "header_timeout")]
        ) >= 2.0
    );
    // Others are served throughout.
    assert_eq!(get(&h.url("/")).unwrap().0, 200);
}

#[test]
fn a_flood_of_idle_connections_never_locks_out_clients_or_admin() {
    let up = Upstream::start("a");
    // 300 open files: the connection cap is (300 - 256) / 2 = 22.
    let dir = tempfile::tempdir().unwrap();
    let h = Hydrus::start_limited(dir, &pool_template(&[up.addr], "", ""), Some(300));
    let mut flood = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", h.port)) {
            flood.push(s);
        }
    }
    // Some sent a request and stay open (keep-alive idle); some sent one byte of a header.
    for s in flood.iter_mut().take(10) {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    }
    for s in flood.iter_mut().skip(380) {
        let _ = s.write_all(b"G");
    }
    // Once hydrus has taken the flood in (closing most of it to stay under the cap)...
    assert!(eventually(Duration::from_secs(10), || {
        metric_of(
            &h,
            "hydrus_downstream_connections_closed_total",
            &[("reason", "evicted")],
        ) >= 370.0
    }));
    // ...new clients are served, one after the other.
    for i in 0..30 {
        let (status, _) = get_with(&h.url("/rank"), &[("x-user-id", &format!("n{i}"))])
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", h.log()));
        assert_eq!(status, 200);
    }
    assert_eq!(get(&format!("{}/ready", h.admin())).unwrap().0, 200);
    let evicted = metric_of(
        &h,
        "hydrus_downstream_connections_closed_total",
        &[("reason", "evicted")],
    );
    assert!(
        evicted >= 300.0,
        "idle connections were closed to admit new ones: {evicted}"
    );
    assert!(h.metric("hydrus_downstream_connections") <= 30.0);
    assert!(
        h.log().contains("at most 22 client connections"),
        "{}",
        h.log()
    );
    drop(flood);
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_at_start() {
    let up = Upstream::start("a");
    // Soft 64, hard 300: raised to 300, so the cap is (300 - 256) / 2 = 22. Left at 64, it
    // would have been the floor of 16.
    let dir = tempfile::tempdir().unwrap();
    let h = Hydrus::start_under(dir, &pool_template(&[up.addr], "", ""), Some((64, 300)));
    let log = h.log();
    assert!(
        log.contains("at most 22 client connections (open-file limit 300)"),
        "{log}"
    );
    // The kernel's view of the running process agrees.
    assert_eq!(h.metric("process_max_fds"), 300.0);
    assert_eq!(get(&h.url("/")).unwrap().0, 200);
}

#[test]
fn oversized_headers_are_refused_and_long_values_capped_in_the_log() {
    let up = Upstream::start("a");
    let mut h = start_strategies(&up, "100", "", &[("default", 0.004)]);
    let mut big = b"GET / HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\nx-big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 << 10));
    big.extend(b"\r\n\r\n");
    let answer = raw_request(h.port, &big);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        metric_of(
            &h,
            "hydrus_requests_rejected_total",
            &[("reason", "header_too_large")]
        ),
        1.0
    );
    let long_user = "x".repeat(1000);
    let (status, _) = get_with(
        &h.url("/"),
        &[("x-user-id", &long_user), ("x-qoe-score", "0.5")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        up.seen()[0].header("x-user-id").map(str::len),
        Some(1000),
        "forwarded whole"
    );
    // Counted when the sink thread writes the record.
    assert!(eventually(Duration::from_secs(5), || metric_of(
        &h,
        "hydrus_log_fields_truncated_total",
        &[("field", "user_id")]
    ) == 1.0));
    h.terminate();
    let records = read_records(&h.path("logs"));
    assert_eq!(records.len(), 1, "no record of the refused request");
    assert_eq!(
        records[0].user_id.len(),
        hydrus_filters::log::MAX_FIELD_BYTES
    );
}
