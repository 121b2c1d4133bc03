//! Outbound HTTP clients (reqwest on rustls with ring, `crate::tls::provider()`),
//! for whoever in the daemon talks HTTP to something else: the scripts'
//! `http()` (`crate::policy::api::http`), scanners (rspamd) and exporters.
//!
//! There is no process-default rustls provider; every client is built here
//! from a `rustls::ClientConfig` with the ring provider and the webpki
//! roots, so https:// never depends on one. Redirects are never followed
//! (a policy look-up that answers 30x says so to the caller); callers set
//! their own per-request timeouts.
//!
//! It owns client construction only, not requests or retries.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Options of a client; [`Default`] verifies certificates.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Verify the server's certificate against the webpki roots.
    pub tls_verify: bool,
    /// Connecting (TCP + TLS) gives up after this.
    pub connect_timeout: Duration,
    /// Idle connections kept per host for reuse.
    pub pool_max_idle_per_host: usize,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            connect_timeout: Duration::from_secs(5),
            pool_max_idle_per_host: 32,
            user_agent: format!("sluice/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The rustls client config with ring (and, unless `verify`, no
/// certificate checks at all).
pub fn tls_config(verify: bool) -> Result<rustls::ClientConfig, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut cfg = if verify {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A reqwest builder with our TLS and no redirects; add to it and build.
pub fn builder(o: &ClientOptions) -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(o.tls_verify)?)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(o.connect_timeout)
        .pool_max_idle_per_host(o.pool_max_idle_per_host)
        .user_agent(o.user_agent.clone()))
}

pub fn client(o: &ClientOptions) -> Result<reqwest::Client, String> {
    builder(o)?.build().map_err(|e| e.to_string())
}

/// `tls_verify = false`: accept any certificate (signatures still checked
/// with the provider's algorithms so the handshake is well-formed).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
