//! STARTTLS (RFC 3207): the handshake, and forgetting everything learnt in
//! clear text (pipelined input, HELO, the transaction).

use tracing::{info, warn};

use super::settings::Extension;
use super::{Flow, Session};
use crate::config::ListenerTls;
use crate::smtp::io::Stream;

impl Session {
    pub(super) fn starttls_available(&self) -> bool {
        self.listener.tls == ListenerTls::Starttls
            && self.info.tls.is_none()
            && self.ctx.tls.get().is_some()
    }

    pub(super) async fn cmd_starttls(&mut self) -> Flow {
        if self.info.tls.is_some() {
            return self.error(503, "5.5.1", "TLS already active");
        }
        if !self.starttls_available() || !self.extension_allowed(Extension::StartTls) {
            return self.error(502, "5.5.1", "STARTTLS not available");
        }
        let Some(sc) = self.ctx.tls.get() else {
            return self.error(454, "4.7.0", "TLS not available");
        };
        self.send(220, "2.0.0", "Ready to start TLS");
        if self.conn.flush().await.is_err() {
            return Flow::Close;
        }
        // RFC 3207 §4.2 / CVE-2011-0411: whatever was pipelined after
        // STARTTLS arrived in clear text and must not be executed.
        let injected = self.conn.discard_input();
        if injected > 0 {
            warn!(conn = %self.info.id, bytes = injected, "discarded input sent before the TLS handshake");
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.conn.stream, Stream::Closed) else {
            return Flow::Close;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(sc);
        let hs = tokio::time::timeout(
            self.ctx.config.limits.handshake_timeout,
            acceptor.accept(tcp),
        )
        .await;
        match hs {
            Ok(Ok(tls)) => {
                let ti = crate::tls::session_info(tls.get_ref().1);
                info!(conn = %self.info.id, protocol = %ti.protocol, cipher = %ti.cipher, "starttls");
                self.info.tls = Some(ti);
                self.conn.stream = Stream::Tls(Box::new(tls));
                // RFC 3207 §4.2: forget everything learnt before TLS.
                self.info.helo = None;
                self.extended = false;
                self.reset_transaction();
                Flow::Continue
            }
            Ok(Err(e)) => {
                info!(conn = %self.info.id, error = %e, "TLS handshake failed");
                Flow::Close
            }
            Err(_) => {
                info!(conn = %self.info.id, "TLS handshake timeout");
                Flow::Close
            }
        }
    }
}
