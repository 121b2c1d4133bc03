//! TLS configuration: the server config for STARTTLS and implicit-TLS
//! listeners (TLS 1.2+ only), loaded from the PEM files in `[tls]` and
//! swappable at runtime (SIGHUP) without dropping live sessions.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::envelope::TlsInfo;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e.to_string()))?
        .collect();
    let certs = certs.map_err(|e| file_err(path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e.to_string()))
}

/// Build a server config from the PEM files; TLS 1.2 and 1.3 only.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&cfg.certificate)?;
    let key = load_key(&cfg.private_key)?;
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| file_err(&cfg.private_key, e.to_string()))?;
    sc.alpn_protocols = vec![];
    Ok(Arc::new(sc))
}

/// The current server config; replaced whole on reload.
#[derive(Clone, Default)]
pub struct TlsStore {
    current: Arc<RwLock<Option<Arc<ServerConfig>>>>,
}

impl TlsStore {
    pub fn new(cfg: Option<Arc<ServerConfig>>) -> Self {
        TlsStore {
            current: Arc::new(RwLock::new(cfg)),
        }
    }
    pub fn get(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().expect("tls lock").clone()
    }
    pub fn set(&self, cfg: Arc<ServerConfig>) {
        *self.current.write().expect("tls lock") = Some(cfg);
    }
}

/// What scripts and the Received header see of a finished handshake.
pub fn session_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let (cipher, keysize) = match conn.negotiated_cipher_suite() {
        Some(cs) => {
            let name = cs.suite().as_str().unwrap_or("unknown").to_string();
            let bits = if name.contains("256") || name.contains("CHACHA20") {
                256
            } else {
                128
            };
            (name, bits)
        }
        None => (String::new(), 0),
    };
    let peercert = conn.peer_certificates().and_then(|c| c.first()).map(|c| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    });
    TlsInfo {
        protocol,
        cipher,
        keysize,
        sni: conn.server_name().map(|s| s.to_string()),
        peercert,
    }
}
