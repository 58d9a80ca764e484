//! A gRPC server for the benchmarks (`benches/grpc.sh`): tonic with the gRPC health service
//! (`grpc.health.v1.Health/Check` answers SERVING), on one runtime thread. SIGTERM or SIGINT
//! shut it down gracefully (in-flight calls finish, then GOAWAY), as a restarted replica would.
//!
//! Usage: grpc_upstream ADDR
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tonic::transport::Server;

fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()
        .expect("ADDR");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (_reporter, service) = tonic_health::server::health_reporter();
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        Server::builder()
            .add_service(service)
            .serve_with_shutdown(addr, stop)
            .await
            .expect("serve");
    });
}
