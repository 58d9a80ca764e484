//! TLS on both sides, from PEM files read when a config is compiled:
//!
//! - the listener's (`tls:`): certificate chain, key, optional client CA (mTLS), ALPN `h2` and
//!   `http/1.1`. Each connection's handshake uses the running config's, so a reload (SIGHUP, or
//!   an edit of the config file) brings in rotated certificates without touching open
//!   connections;
//! - a cluster's (`clusters.NAME.tls`): the CA its endpoints are verified against (or the
//!   system's roots), the name sent as SNI and checked, an optional client certificate.
//!
//! Every certificate is parsed here with the parser pingora uses on the upstream side, which
//! panics on what it cannot parse: a bad file is a config error naming it, never a panic.

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{CertKey, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `tls:`: the proxy's listener speaks TLS (HTTP/1.1 and HTTP/2 by ALPN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Require a client certificate signed by one of these CAs (PEM): mutual TLS.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `clusters.NAME.tls`: connections to the cluster's endpoints use TLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// CAs the endpoints' certificates are verified against (PEM); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The server name sent (SNI) and verified; default: the host of each endpoint as written.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the endpoints' certificates and names (turn off only for testing).
    #[serde(default = "yes")]
    pub verify: bool,
    /// A client certificate chain for endpoints that require one (PEM), with its key.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key in it ({detail})")]
    NoKey { path: String, detail: String },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file, each checked to parse as X.509.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let shown = || path.display().to_string();
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid {
            path: shown(),
            detail: format!("not PEM: {}", pem_error(&e)),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate { path: shown() });
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref()).map_err(|e| PemError::Invalid {
            path: shown(),
            detail: format!("certificate {} is not X.509: {e}", i + 1),
        })?;
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| PemError::NoKey {
        path: path.display().to_string(),
        detail: pem_error(&e),
    })
}

/// A PEM error as text (the parser's own shows the marker lines as byte lists).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a section is missing its end line `{}` (a half-written file?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => {
            format!("bad section start `{}`", String::from_utf8_lossy(line))
        }
        other => other.to_string(),
    }
}

/// Why a certificate chain's first certificate is not valid now, if it is not (expired, or
/// not yet valid): a warning, since clients will refuse it.
pub fn validity_problem(path: &Path) -> Option<String> {
    let certs = read_certificates(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    let v = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if v.not_after < now {
        Some(format!("the certificate expired on {}", v.not_after))
    } else if v.not_before > now {
        Some(format!(
            "the certificate is not valid before {}",
            v.not_before
        ))
    } else {
        None
    }
}

/// What a TLS section names, with the field each file came from (for errors).
pub type FieldError = (&'static str, PemError);

/// A CA file as a root store.
fn roots(path: &Path) -> Result<RootCertStore, PemError> {
    roots_of(path, read_certificates(path)?)
}

/// CA certificates (read from `path`) as a root store.
fn roots_of(path: &Path, certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, PemError> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store.add(c).map_err(|e| PemError::Invalid {
            path: path.display().to_string(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listener's TLS configuration from its section (paths already resolved).
pub fn server_config(cfg: &ListenerTlsConfig) -> Result<Arc<ServerConfig>, FieldError> {
    let certs = read_certificates(&cfg.cert_file).map_err(|e| ("cert_file", e))?;
    let key = read_key(&cfg.key_file).map_err(|e| ("key_file", e))?;
    let invalid = |field: &'static str, path: &Path, detail: String| {
        (
            field,
            PemError::Invalid {
                path: path.display().to_string(),
                detail,
            },
        )
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| invalid("cert_file", &cfg.cert_file, e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let store = roots(ca).map_err(|e| ("client_ca_file", e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                .build()
                .map_err(|e| invalid("client_ca_file", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        invalid(
            "key_file",
            &cfg.key_file,
            format!("cannot be used with the certificate in cert_file: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A cluster's TLS, ready for pingora's peers.
#[derive(Clone)]
pub struct UpstreamTls {
    /// `None`: the system's roots.
    pub ca: Option<Arc<CaType>>,
    pub client: Option<Arc<CertKey>>,
    pub verify: bool,
    /// The configured SNI, if any (else each endpoint's host).
    pub sni: Option<String>,
    /// The files' contents, so that a reload notices a rotated file.
    pub fingerprint: Vec<u8>,
    /// A hash of the trust (CA, verification): pooled connections are shared only between
    /// peers with the same.
    pub pool_key: u64,
}

impl UpstreamTls {
    pub fn load(cfg: &UpstreamTlsConfig) -> Result<Self, FieldError> {
        let mut fingerprint = Vec::new();
        let ca = match &cfg.ca_file {
            Some(p) => {
                let certs = read_certificates(p).map_err(|e| ("ca_file", e))?;
                roots_of(p, certs.clone()).map_err(|e| ("ca_file", e))?;
                let wrapped: Vec<WrappedX509> = certs
                    .iter()
                    .map(|c| {
                        fingerprint.extend_from_slice(c.as_ref());
                        WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509)
                    })
                    .collect();
                Some(Arc::from(wrapped.into_boxed_slice()))
            }
            None => None,
        };
        let client = match (&cfg.client_cert_file, &cfg.client_key_file) {
            (Some(c), Some(k)) => {
                let certs = read_certificates(c).map_err(|e| ("client_cert_file", e))?;
                let key = read_key(k).map_err(|e| ("client_key_file", e))?;
                for c in &certs {
                    fingerprint.extend_from_slice(c.as_ref());
                }
                fingerprint.extend_from_slice(key.secret_der());
                let der: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
                Some(Arc::new(CertKey::new(der, key.secret_der().to_vec())))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "client_key_file",
                    PemError::NoKey {
                        path: String::new(),
                        detail: "client_cert_file needs client_key_file".into(),
                    },
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "client_cert_file",
                    PemError::NoCertificate {
                        path: "client_key_file needs client_cert_file".into(),
                    },
                ))
            }
        };
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fingerprint.hash(&mut h);
            cfg.verify.hash(&mut h);
            cfg.ca_file.is_some().hash(&mut h);
            h.finish()
        };
        Ok(Self {
            ca,
            client,
            verify: cfg.verify,
            sni: cfg.sni.clone(),
            fingerprint,
            pool_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn bad_files_are_errors_naming_the_field_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = write(dir.path(), "junk.pem", "not a certificate\n");
        let cfg = ListenerTlsConfig {
            cert_file: junk.clone(),
            key_file: junk.clone(),
            client_ca_file: None,
        };
        let (field, e) = server_config(&cfg).expect_err("junk");
        assert_eq!(field, "cert_file");
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let missing = ListenerTlsConfig {
            cert_file: dir.path().join("nope.pem"),
            ..cfg
        };
        let (_, e) = server_config(&missing).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_certificate_with_its_key_makes_a_listener_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = write(dir.path(), "c.pem", &ck.cert.pem());
        let key = write(dir.path(), "k.pem", &ck.signing_key.serialize_pem());
        let other = rcgen::generate_simple_self_signed(vec!["x".into()]).expect("cert");
        let other_key = write(dir.path(), "o.pem", &other.signing_key.serialize_pem());
        let cfg = ListenerTlsConfig {
            cert_file: cert.clone(),
            key_file: key,
            client_ca_file: Some(cert.clone()),
        };
        let sc = server_config(&cfg).expect("valid");
        assert_eq!(sc.alpn_protocols[0], b"h2");
        // A key of another certificate is refused.
        let (field, _) = server_config(&ListenerTlsConfig {
            key_file: other_key,
            ..cfg
        })
        .expect_err("mismatch");
        assert_eq!(field, "key_file");
        let up = UpstreamTls::load(&UpstreamTlsConfig {
            ca_file: Some(cert),
            sni: None,
            verify: true,
            client_cert_file: None,
            client_key_file: None,
        })
        .expect("valid");
        assert_eq!(up.ca.as_ref().map(|c| c.len()), Some(1));
    }
}
