//! The sendmail macros each milter stage receives, with Postfix's default
//! sets (`milter_connect_macros` & co.). Values come from the session's
//! connection and transaction; it reads them and changes nothing.

use crate::envelope::{Address, ConnectionInfo, TransactionInfo};

use super::protocol::cmd;

/// What macros are built from.
pub struct MacroSource<'a> {
    /// Our host name (`j`, `{daemon_name}`).
    pub hostname: &'a str,
    pub conn: &'a ConnectionInfo,
    pub tx: Option<&'a TransactionInfo>,
    /// RCPT stage: the recipient being asked about.
    pub rcpt: Option<&'a str>,
}

fn push(out: &mut Vec<(String, String)>, k: &str, v: impl Into<String>) {
    out.push((k.to_string(), v.into()));
}

/// The macros sent (SMFIC_MACRO) before the command `stage`.
pub fn for_stage(stage: u8, s: &MacroSource) -> Vec<(String, String)> {
    let mut m = Vec::new();
    let c = s.conn;
    match stage {
        cmd::CONNECT => {
            push(&mut m, "j", s.hostname);
            push(&mut m, "{daemon_name}", s.hostname);
            push(&mut m, "{daemon_addr}", c.localip.clone());
            push(&mut m, "{daemon_port}", c.localport.to_string());
            push(&mut m, "v", "Sluice");
            let name = c.remoteptr.clone().unwrap_or_else(|| "unknown".into());
            let lit = if c.remoteip.contains(':') {
                format!("[IPv6:{}]", c.remoteip)
            } else {
                format!("[{}]", c.remoteip)
            };
            push(&mut m, "_", format!("{name} {lit}"));
            push(&mut m, "{client_addr}", c.remoteip.clone());
            push(&mut m, "{client_port}", c.remoteport.to_string());
            push(&mut m, "{client_name}", name.clone());
            push(&mut m, "{client_ptr}", name);
            push(
                &mut m,
                "{client_resolve}",
                if c.remoteptr.is_some() { "OK" } else { "FAIL" },
            );
            push(&mut m, "{if_addr}", c.localip.clone());
        }
        cmd::HELO => {
            if let Some(t) = &c.tls {
                push(&mut m, "{tls_version}", t.protocol.clone());
                push(&mut m, "{cipher}", t.cipher.clone());
                push(&mut m, "{cipher_bits}", t.keysize.to_string());
            }
        }
        cmd::MAIL => {
            if let Some(tx) = s.tx {
                push(&mut m, "i", tx.id.clone());
                let a = &tx.senderaddress;
                push(&mut m, "{mail_addr}", tx.sender.clone());
                push(&mut m, "{mail_host}", a.domain.clone());
                push(&mut m, "{mail_mailer}", "smtp");
            }
            if let Some(a) = &c.auth {
                push(&mut m, "{auth_type}", a.mechanism.clone());
                push(&mut m, "{auth_authen}", a.username.clone());
            }
            if let Some(t) = &c.tls {
                push(&mut m, "{tls_version}", t.protocol.clone());
                push(&mut m, "{cipher}", t.cipher.clone());
            }
        }
        cmd::RCPT => {
            if let Some(r) = s.rcpt {
                let a = Address::split(r);
                push(&mut m, "{rcpt_addr}", r);
                push(&mut m, "{rcpt_host}", a.domain);
                push(&mut m, "{rcpt_mailer}", "smtp");
            }
        }
        cmd::DATA | cmd::EOH | cmd::BODYEOB => {
            if let Some(tx) = s.tx {
                push(&mut m, "i", tx.id.clone());
            }
        }
        _ => {}
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_macros_name_the_client() {
        let conn = ConnectionInfo {
            id: "c1".into(),
            remoteip: "192.0.2.7".into(),
            remoteport: 4000,
            localip: "127.0.0.1".into(),
            localport: 25,
            ..Default::default()
        };
        let m = for_stage(
            cmd::CONNECT,
            &MacroSource {
                hostname: "mx.example.org",
                conn: &conn,
                tx: None,
                rcpt: None,
            },
        );
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("j"), Some("mx.example.org"));
        assert_eq!(get("{client_addr}"), Some("192.0.2.7"));
        assert_eq!(get("_"), Some("unknown [192.0.2.7]"));
    }
}
