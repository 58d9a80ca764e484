//! HTTP/2 and TLS on both sides: curl speaks HTTP/2 to hydrus in clear text (prior knowledge)
//! and over TLS (ALPN) on the same listener as HTTP/1.1; mutual TLS refuses a client without a
//! certificate; certificates rotate on reload while open connections keep working; hydrus
//! calls a gRPC server over TLS (HTTP/2, verified against the cluster's CA, with the cluster's
//! client certificate, by the configured SNI). Certificates are made in the test (rcgen).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A test CA that issues certificates for `127.0.0.1` and `localhost`.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate named `cn` for the loopback names: (certificate PEM, key PEM).
    fn issue(&self, cn: &str) -> (String, String) {
        self.issue_for(&["localhost", "127.0.0.1"], cn)
    }

    /// A certificate named `cn` for `names` only: (certificate PEM, key PEM).
    fn issue_for(&self, names: &[&str], cn: &str) -> (String, String) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Write the CA and a certificate named `cn` into `dir` as `ca.pem`, `PREFIX.pem`,
    /// `PREFIX.key`.
    fn write(&self, dir: &Path, prefix: &str, cn: &str) {
        let (cert, key) = self.issue(cn);
        std::fs::write(dir.join("ca.pem"), &self.pem).unwrap();
        write_atomic(&dir.join(format!("{prefix}.pem")), &cert);
        write_atomic(&dir.join(format!("{prefix}.key")), &key);
    }
}

/// `curl` with `args`: (HTTP version, status) as curl saw them, or its exit code.
fn curl(args: &[&str]) -> Result<String, i32> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_version} %{http_code}"])
        .args(args)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        code => Err(code.unwrap_or(-1)),
    }
}

fn passthrough(up: &Upstream, tls: &str) -> String {
    let mut c = Config::new().cluster("ranking", &[up.addr]);
    if !tls.is_empty() {
        c = c.top(tls);
    }
    c.route(route("all", "ranking")).template()
}

fn start_with_certs(template: &str, ca: &Ca, cn: &str) -> Hydrus {
    let dir = tempfile::tempdir().unwrap();
    ca.write(dir.path(), "server", cn);
    Hydrus::start_in(dir, template)
}

fn file(h: &Hydrus, name: &str) -> String {
    h.path(name).display().to_string()
}

#[test]
fn curl_speaks_http2_in_clear_text_and_over_tls_on_one_listener() {
    let up = Upstream::start("ranking");
    let clear = Hydrus::start(&passthrough(&up, ""));
    let url = clear.url("/rank");
    assert_eq!(curl(&["--http2-prior-knowledge", &url]), Ok("2 200".into()));
    assert_eq!(curl(&[&url]), Ok("1.1 200".into()));
    assert_eq!(up.take().len(), 2);

    let ca = Ca::new("hydrus test CA");
    let tls = "tls:\n  cert_file: server.pem\n  key_file: server.key";
    let h = start_with_certs(&passthrough(&up, tls), &ca, "first");
    let url = format!("https://127.0.0.1:{}/rank", h.port);
    let ca_file = file(&h, "ca.pem");
    assert_eq!(curl(&["--cacert", &ca_file, &url]), Ok("2 200".into()));
    assert_eq!(
        curl(&["--http1.1", "--cacert", &ca_file, &url]),
        Ok("1.1 200".into())
    );
    // Without the CA, curl refuses hydrus's certificate (hydrus does not make one up).
    assert!(curl(&[&url]).is_err());
    assert_eq!(up.take().len(), 2);
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let up = Upstream::start("ranking");
    let ca = Ca::new("hydrus test CA");
    let tls = "tls:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem";
    let h = start_with_certs(&passthrough(&up, tls), &ca, "server");
    let url = format!("https://127.0.0.1:{}/rank", h.port);
    let ca_file = file(&h, "ca.pem");
    assert!(curl(&["--cacert", &ca_file, &url]).is_err());
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // A client certificate from another CA is refused too.
    let other = Ca::new("another CA");
    std::fs::create_dir_all(h.path("other")).unwrap();
    other.write(&h.path("other"), "client", "client");
    assert!(curl(&[
        "--cacert",
        &ca_file,
        "--cert",
        &file(&h, "other/client.pem"),
        "--key",
        &file(&h, "other/client.key"),
        &url
    ])
    .is_err());
    ca.write(&h.path(""), "client", "client");
    let with_cert = curl(&[
        "--cacert",
        &ca_file,
        "--cert",
        &file(&h, "client.pem"),
        "--key",
        &file(&h, "client.key"),
        &url,
    ]);
    assert_eq!(with_cert, Ok("2 200".into()));
    assert_eq!(up.count(), 1);
    assert!(
        h.metric("hydrus_downstream_connections_closed_total{reason=\"tls_handshake\"}") >= 1.0
    );
}

/// A TLS client connection that trusts `ca_pem`, speaking HTTP/1.1 with keep-alive.
struct TlsClient {
    conn: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl TlsClient {
    fn connect(port: u16, ca_pem: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            conn: rustls::StreamOwned::new(conn, tcp),
        }
    }

    /// One request on this connection: the response's status line.
    fn get(&mut self) -> String {
        self.conn
            .write_all(b"GET /rank HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
            let n = self.conn.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed");
            out.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        // The test upstream answers with a small Content-Length body; read it off.
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut have = body.len();
        while have < len {
            have += self.conn.read(&mut buf).unwrap();
        }
        head.lines().next().unwrap().to_string()
    }

    /// The common name of the certificate the server presented.
    fn server_cn(&self) -> String {
        let certs = self.conn.conn.peer_certificates().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        cn.as_str().unwrap().to_string()
    }
}

use rustls::pki_types::pem::PemObject;

#[test]
fn certificates_rotate_on_reload_without_dropping_connections() {
    let up = Upstream::start("ranking");
    let ca = Ca::new("hydrus test CA");
    let tls = "tls:\n  cert_file: server.pem\n  key_file: server.key";
    let h = start_with_certs(&passthrough(&up, tls), &ca, "first");
    let ca_pem = std::fs::read_to_string(h.path("ca.pem")).unwrap();
    let mut open = TlsClient::connect(h.port, &ca_pem);
    assert_eq!(open.get(), "HTTP/1.1 200 OK");
    assert_eq!(open.server_cn(), "first");

    // Rotate: new files, then a reload (SIGHUP; an edit of the config does the same).
    ca.write(&h.path(""), "server", "second");
    h.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || {
        let mut fresh = TlsClient::connect(h.port, &ca_pem);
        fresh.get() == "HTTP/1.1 200 OK" && fresh.server_cn() == "second"
    }));
    // The connection opened before goes on with the certificate it was opened with.
    assert_eq!(open.get(), "HTTP/1.1 200 OK");
    assert_eq!(open.server_cn(), "first");

    // A broken key file is refused by the reload: the running certificate stays.
    write_atomic(&h.path("server.key"), "not a key\n");
    h.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let mut after = TlsClient::connect(h.port, &ca_pem);
    assert_eq!(after.get(), "HTTP/1.1 200 OK");
    assert_eq!(after.server_cn(), "second");
}

/// A tonic server with the health service over TLS, with `cert` and `key`; with `client_ca`,
/// it requires a client certificate that CA signed.
fn tonic_tls_server(
    rt: &tokio::runtime::Runtime,
    cert: &str,
    key: &str,
    client_ca: Option<&str>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, service) = tonic_health::server::health_reporter();
    let identity = tonic::transport::Identity::from_pem(cert, key);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (addr, stop)
}

#[test]
fn grpc_over_tls_to_the_upstream_verified_against_the_clusters_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new("upstream CA");
    let (cert, key) = ca.issue("ranking");
    let (addr, _stop) = tonic_tls_server(&rt, &cert, &key, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), &Ca::new("other").pem).unwrap();
    let template = Config::new()
        .cluster_with(
            "verified",
            &[addr],
            "    protocol: h2\n    tls: { ca_file: upstream-ca.pem }",
        )
        .cluster_with(
            "untrusted",
            &[addr],
            "    protocol: h2\n    tls: { ca_file: other-ca.pem }",
        )
        .route(route("untrusted", "untrusted").matching("{ header: x-untrusted }"))
        .route(route("verified", "verified"))
        .template();
    let h = Hydrus::start_in(dir, &template);
    let mut c = rt
        .block_on(
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", h.port))
                .unwrap()
                .connect(),
        )
        .map(tonic_health::pb::health_client::HealthClient::new)
        .unwrap();
    let ask = |untrusted: bool| {
        let mut r = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        if untrusted {
            r.metadata_mut().insert("x-untrusted", "1".parse().unwrap());
        }
        r
    };
    let ok = rt.block_on(c.check(ask(false))).unwrap();
    assert_eq!(
        ok.get_ref().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // An upstream whose certificate the cluster's CA did not sign: UNAVAILABLE, not a call.
    let err = rt.block_on(c.check(ask(true))).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// A health check call through hydrus (on a new connection), with metadata `header: 1` when
/// given: the serving status, or the call's error.
fn check_through(
    rt: &tokio::runtime::Runtime,
    port: u16,
    header: Option<&'static str>,
) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
    let mut c = rt
        .block_on(
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect(),
        )
        .map(tonic_health::pb::health_client::HealthClient::new)
        .unwrap();
    let mut r = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    if let Some(h) = header {
        r.metadata_mut().insert(h, "1".parse().unwrap());
    }
    rt.block_on(c.check(r)).map(|a| a.get_ref().status())
}

/// What hydrus answers a call it could not proxy: UNAVAILABLE, said by hydrus (a gRPC status,
/// not an HTTP error the client would read as another code).
fn assert_unavailable_from_hydrus(r: Result<impl std::fmt::Debug, tonic::Status>) {
    let err = r.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("hydrus"), "{err:?}");
}

#[test]
fn an_upstream_requiring_a_client_certificate_gets_the_clusters() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new("upstream CA");
    let (cert, key) = ca.issue("ranking");
    let (addr, _stop) = tonic_tls_server(&rt, &cert, &key, Some(&ca.pem));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca.pem).unwrap();
    let (client_cert, client_key) = ca.issue_for(&["hydrus"], "hydrus");
    std::fs::write(dir.path().join("client.pem"), client_cert).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key).unwrap();
    // The same pair from a CA the upstream does not trust.
    let (other_cert, other_key) = Ca::new("other").issue_for(&["hydrus"], "hydrus");
    std::fs::write(dir.path().join("other.pem"), other_cert).unwrap();
    std::fs::write(dir.path().join("other.key"), other_key).unwrap();
    let cluster =
        |client: &str| format!("    protocol: h2\n    tls: {{ ca_file: upstream-ca.pem{client} }}");
    let template = Config::new()
        .cluster_with(
            "with_cert",
            &[addr],
            &cluster(", client_cert_file: client.pem, client_key_file: client.key"),
        )
        .cluster_with("without_cert", &[addr], &cluster(""))
        .cluster_with(
            "other_cert",
            &[addr],
            &cluster(", client_cert_file: other.pem, client_key_file: other.key"),
        )
        .route(route("without", "without_cert").matching("{ header: x-without }"))
        .route(route("other", "other_cert").matching("{ header: x-other }"))
        .route(route("with", "with_cert"))
        .template();
    let h = Hydrus::start_in(dir, &template);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    // No client certificate: the upstream refuses the connection, the call gets UNAVAILABLE.
    assert_unavailable_from_hydrus(check_through(&rt, h.port, Some("x-without")));
    assert_unavailable_from_hydrus(check_through(&rt, h.port, Some("x-other")));
    assert_eq!(check_through(&rt, h.port, None).unwrap(), serving);
    // (Not by a connection the cluster with the certificate opened.)
    assert_unavailable_from_hydrus(check_through(&rt, h.port, Some("x-without")));
    assert_eq!(check_through(&rt, h.port, None).unwrap(), serving);
}

#[test]
fn sni_names_an_upstream_reached_by_address() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = Ca::new("upstream CA");
    // Issued for the name only: not for 127.0.0.1, where hydrus reaches it.
    let (cert, key) = ca.issue_for(&["ranker.test"], "ranker");
    let (addr, _stop) = tonic_tls_server(&rt, &cert, &key, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca.pem).unwrap();
    let template = Config::new()
        .cluster_with(
            "named",
            &[addr],
            "    protocol: h2\n    tls: { ca_file: upstream-ca.pem, sni: ranker.test }",
        )
        .cluster_with(
            "by_address",
            &[addr],
            "    protocol: h2\n    tls: { ca_file: upstream-ca.pem }",
        )
        .route(route("by_address", "by_address").matching("{ header: x-by-address }"))
        .route(route("named", "named"))
        .template();
    let h = Hydrus::start_in(dir, &template);
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving;
    // Verified as 127.0.0.1: the certificate does not name it.
    assert_unavailable_from_hydrus(check_through(&rt, h.port, Some("x-by-address")));
    // Verified as ranker.test, the name sent.
    assert_eq!(check_through(&rt, h.port, None).unwrap(), serving);
    assert_unavailable_from_hydrus(check_through(&rt, h.port, Some("x-by-address")));
}

#[test]
fn bad_tls_files_are_config_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "junk\n").unwrap();
    let cfg = dir.path().join("hydrus.yaml");
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = Config::new()
        .top("tls:\n  cert_file: junk.pem\n  key_file: missing.key")
        .cluster_with(
            "c",
            &[up],
            "    protocol: h2c\n    tls: { ca_file: junk.pem }",
        )
        .route(route("all", "c"))
        .template();
    std::fs::write(&cfg, render(&text, 1, 2, dir.path())).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tls.cert_file") && err.contains("junk.pem"),
        "{err}"
    );
    assert!(err.contains("clusters.c.protocol"), "{err}");
}
