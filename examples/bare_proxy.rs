//! A bare pingora reverse proxy (one upstream, no filters), the floor hydrus is measured
//! against in `benches/load.sh` and `benches/grpc.sh`: `bare_proxy LISTEN UPSTREAM THREADS [h2c]`
//! (`h2c`: HTTP/2 in clear text on both sides, for gRPC). Its runtime is hydrus's default, one
//! per thread without work stealing; `BARE_WORK_STEALING=1` gives pingora's own default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Bare(SocketAddr, bool);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.0, false, String::new());
        if self.1 {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).expect("LISTEN").clone();
    let upstream: SocketAddr = args.get(2).expect("UPSTREAM").parse().expect("IP:PORT");
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let h2c = args.get(4).is_some_and(|a| a == "h2c");
    let conf = ServerConf {
        threads,
        work_stealing: std::env::var("BARE_WORK_STEALING").is_ok_and(|v| v == "1"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare(upstream, h2c));
    if h2c {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = true;
        proxy.app_logic_mut().expect("proxy app").server_options = Some(options);
    }
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
