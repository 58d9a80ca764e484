//! Upstreams and clients written by hand, to see what client libraries hide: an HTTP/2 server
//! (the h2 crate) whose answer depends on the path, an HTTP/1.x server that answers canned
//! bytes, and an HTTP/2 client that reports the response's frames as they arrive.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// A request as an HTTP/2 upstream saw it.
#[derive(Debug, Clone)]
pub struct H2Seen {
    pub method: String,
    pub path: String,
    /// `:authority`, when the request had one.
    pub authority: Option<String>,
    pub headers: http::HeaderMap,
    /// Whether the request's HEADERS ended its stream (no body, not even an empty DATA frame).
    pub headers_ended: bool,
}

/// An HTTP/2 server (h2c) answering by path:
/// - `/t.S/Fail`: a trailers-only call answer, `grpc-status: 5` in HEADERS that end the stream;
/// - `/t.S/Unary`: one message, then trailers `grpc-status: 0`;
/// - `/t.S/Quiet`: one message, then nothing until the stream is reset (its time recorded);
/// - `/t.S/Drop`: the body read whole, then the stream reset (INTERNAL_ERROR), no answer;
/// - `/empty`: 204; `/text`: 200 `hello` (to HEAD: its header alone).
pub struct H2Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<H2Seen>>>,
    /// How long after its answer began each `/t.S/Quiet` stream was reset.
    pub resets: Arc<Mutex<Vec<Duration>>>,
    pub calls: Arc<AtomicUsize>,
}

impl H2Upstream {
    pub fn start(rt: &Runtime) -> Self {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Self {
            addr,
            seen: Arc::default(),
            resets: Arc::default(),
            calls: Arc::default(),
        };
        let (seen, resets, calls) = (up.seen.clone(), up.resets.clone(), up.calls.clone());
        rt.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (seen, resets, calls) = (seen.clone(), resets.clone(), calls.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        calls.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(H2Seen {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            authority: req.uri().authority().map(|a| a.to_string()),
                            headers: req.headers().clone(),
                            headers_ended: req.body().is_end_stream(),
                        });
                        tokio::spawn(h2_answer(req, respond, resets.clone()));
                    }
                });
            }
        });
        up
    }

    pub fn seen(&self) -> Vec<H2Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The header of a gRPC call's answer: 200, `content-type: application/grpc`.
pub fn grpc_response() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

async fn h2_answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    resets: Arc<Mutex<Vec<Duration>>>,
) {
    let path = req.uri().path().to_string();
    let head = req.method() == http::Method::HEAD;
    let mut body = req.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let message = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
    let ok_trailers = || {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    };
    match path.as_str() {
        "/t.S/Fail" => {
            let mut r = grpc_response();
            r.headers_mut().insert("grpc-status", "5".parse().unwrap());
            let _ = respond.send_response(r, true);
        }
        "/t.S/Drop" => respond.send_reset(h2::Reason::INTERNAL_ERROR),
        "/t.S/Unary" | "/t.S/Quiet" => {
            let Ok(mut send) = respond.send_response(grpc_response(), false) else {
                return;
            };
            let _ = send.send_data(message, false);
            if path == "/t.S/Unary" {
                let _ = send.send_trailers(ok_trailers());
                return;
            }
            let began = Instant::now();
            let reset = std::future::poll_fn(|cx| send.poll_reset(cx));
            if tokio::time::timeout(Duration::from_secs(30), reset)
                .await
                .is_ok()
            {
                resets.lock().unwrap().push(began.elapsed());
            }
        }
        "/empty" => {
            let r = http::Response::builder().status(204).body(()).unwrap();
            let _ = respond.send_response(r, true);
        }
        _ => {
            let r = http::Response::builder()
                .status(200)
                .header("content-length", "5")
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(r, head) {
                if !head {
                    let _ = send.send_data(bytes::Bytes::from_static(b"hello"), true);
                }
            }
        }
    }
}

/// An HTTP/1.x server answering each request with the bytes `reply` gives for its head (request
/// line and header fields, as received), closing the connection after it when it says so. Its
/// requests' heads are kept. [`Canned::start_once`]: each connection answers one request only.
pub struct Canned {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

type Reply = dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync;

impl Canned {
    pub fn start(reply: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Self {
        Self::serve(reply, false)
    }

    /// Each connection answers its first request, kept alive (no `Connection` field said
    /// otherwise), and is closed when its next request arrives, unanswered: a server that
    /// closed an idle kept-alive connection just as the client reused it.
    pub fn start_once(reply: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Self {
        Self::serve(reply, true)
    }

    fn serve(reply: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static, once: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let (seen, reply): (_, Arc<Reply>) = (heads.clone(), Arc::new(reply));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let (seen, reply) = (seen.clone(), reply.clone());
                std::thread::spawn(move || canned_connection(s, &seen, &*reply, once));
            }
        });
        Self { addr, heads }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn canned_connection(
    mut s: std::net::TcpStream,
    seen: &Mutex<Vec<String>>,
    reply: &Reply,
    once: bool,
) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    for answered in 0.. {
        // One byte at a time: no read-ahead into the next request.
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        if once && answered > 0 {
            return;
        }
        let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        buf.clear();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap_or(0));
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(head.clone());
        let (bytes, close) = reply(&head);
        if s.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// One frame of a response, as the client read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub len: usize,
}

pub const HEADERS: u8 = 1;
pub const DATA: u8 = 0;
pub const END_STREAM: u8 = 1;

/// An HPACK literal field without indexing, its name and value not Huffman-coded.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// An HTTP/2 frame: its 9-byte header and payload.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Send one request over a new HTTP/2 connection, frame by frame (`body`: none ends the stream
/// with HEADERS), and return the frames of its response on stream 1 up to the one that ends
/// it (END_STREAM, or a reset), within 5 s.
pub fn h2_frames(
    port: u16,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<Frame> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]);
    let mut block = Vec::new();
    for (k, v) in [
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "x"),
    ] {
        literal(&mut block, k, v);
    }
    for (k, v) in fields {
        literal(&mut block, k, v);
    }
    let end = if body.is_none() { END_STREAM } else { 0 };
    frame(&mut out, HEADERS, 4 | end, 1, &block);
    if let Some(b) = body {
        frame(&mut out, DATA, END_STREAM, 1, b);
    }
    s.write_all(&out).unwrap();
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            return frames;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        if kind == 4 && flags & 1 == 0 {
            let mut ack = Vec::new();
            frame(&mut ack, 4, 1, 0, &[]);
            s.write_all(&ack).unwrap();
        }
        if stream != 1 {
            continue;
        }
        frames.push(Frame { kind, flags, len });
        // RST_STREAM, or END_STREAM on HEADERS or DATA.
        if kind == 3 || (kind <= HEADERS && flags & END_STREAM != 0) {
            return frames;
        }
    }
}

/// A call's response, its request body (still open) and its connection's client handle (the
/// connection stays open while it is held).
pub type OpenCall = (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    h2::client::SendRequest<bytes::Bytes>,
);

/// A gRPC call to `path` opened on a new raw HTTP/2 connection to hydrus (with the user id
/// header when given).
pub async fn open_call(port: u16, path: &str, user: Option<&str>) -> OpenCall {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(user) = user {
        req = req.header("x-user-id", user);
    }
    let (response, send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    (response, send, client)
}
