//! AUTH PLAIN and LOGIN (RFC 4954), offered only over TLS and only when an
//! auth script exists: the auth hook checks the credentials.

use tracing::info;

use super::{Flow, Session};
use crate::envelope::AuthInfo;
use crate::policy::{Hook, HookArguments, HookVerdict};
use crate::proto::reply::SmtpReply;
use crate::smtp::io::{IoError, Line};

impl Session {
    pub(super) fn auth_available(&self) -> bool {
        self.info.tls.is_some() && self.ctx.policy.has_hook(Hook::Auth)
    }

    /// Send a 334 challenge and read the client's answer (base64 text).
    pub(super) async fn sasl_challenge(&mut self, challenge: &str) -> Result<String, Flow> {
        self.conn.queue_reply(&format!("334 {challenge}\r\n"));
        let max = self.ctx.config.limits.command_line_length.max(12288);
        match self
            .conn
            .read_line(max, self.ctx.config.limits.command_timeout)
            .await
        {
            Ok(Line::Text(l)) => Ok(String::from_utf8_lossy(&l).trim().to_string()),
            Ok(Line::TooLong) => {
                Err(self.error(500, "5.5.6", "Authentication exchange line is too long"))
            }
            Err(IoError::Timeout) => {
                self.send(421, "4.4.2", "Timeout exceeded, closing connection");
                Err(Flow::Close)
            }
            Err(_) => Err(Flow::Close),
        }
    }

    pub(super) async fn cmd_auth(&mut self, mechanism: String, initial: Option<String>) -> Flow {
        use base64::Engine;
        if !self.auth_available() || !self.extended {
            return self.error(503, "5.5.1", "AUTH not available");
        }
        if self.info.auth.is_some() {
            return self.error(503, "5.5.1", "Already authenticated");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| -> Option<String> {
            if s == "=" {
                return Some(String::new());
            }
            b64.decode(s).ok().and_then(|v| String::from_utf8(v).ok())
        };
        let (username, password) = match mechanism.as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(i) => i,
                    None => match self.sasl_challenge("").await {
                        Ok(r) => r,
                        Err(f) => return f,
                    },
                };
                if resp == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                let Some(text) = decode(&resp) else {
                    return self.error(501, "5.5.2", "Invalid base64 data");
                };
                let parts: Vec<&str> = text.split('\0').collect();
                if parts.len() != 3 || parts[1].is_empty() {
                    return self.error(501, "5.5.2", "Malformed PLAIN response");
                }
                (parts[1].to_string(), parts[2].to_string())
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => i,
                    None => match self.sasl_challenge("VXNlcm5hbWU6").await {
                        Ok(r) => r,
                        Err(f) => return f,
                    },
                };
                if user == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                let pass = match self.sasl_challenge("UGFzc3dvcmQ6").await {
                    Ok(r) => r,
                    Err(f) => return f,
                };
                if pass == "*" {
                    return self.error(501, "5.0.0", "Authentication cancelled");
                }
                match (decode(&user), decode(&pass)) {
                    (Some(u), Some(p)) => (u, p),
                    _ => return self.error(501, "5.5.2", "Invalid base64 data"),
                }
            }
            _ => return self.error(504, "5.5.4", "Unrecognized authentication type"),
        };
        let args = HookArguments::Auth {
            mechanism: mechanism.clone(),
            username: username.clone(),
            password,
        };
        let tx = self.transaction_view();
        let out = self.run_hook(Hook::Auth, args, Some(tx)).await;
        match out.map(|o| o.verdict) {
            Some(HookVerdict::Accept { reply, .. }) => {
                info!(conn = %self.info.id, mechanism = %mechanism, user = %username, "authenticated");
                self.info.auth = Some(AuthInfo {
                    mechanism,
                    username,
                });
                self.reply(&reply);
                Flow::Continue
            }
            Some(v) => {
                let reply = v.reply().cloned().unwrap_or_else(|| {
                    SmtpReply::with(535, "5.7.8", "Authentication credentials invalid")
                });
                info!(conn = %self.info.id, mechanism = %mechanism, user = %username, reply = %reply, "authentication failed");
                self.reply(&reply);
                self.errors += 1;
                if v.disconnect() || self.errors >= self.ctx.config.limits.errors {
                    self.send(421, "4.7.0", "Too many errors, closing connection");
                    return Flow::Close;
                }
                Flow::Continue
            }
            None => self.error(503, "5.5.1", "AUTH not available"),
        }
    }
}
