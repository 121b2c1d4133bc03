//! The sendmail milter wire protocol, version 6, MTA side: packet framing
//! (a 4-byte big-endian length, one command byte, data), the commands we
//! send (SMFIC_*), the replies we read (SMFIR_*), option negotiation.
//!
//! It owns bytes on one socket; it must not know about sessions, messages
//! or config beyond the timeouts it is given. Values from libmilter's
//! `mfdef.h`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const VERSION: u32 = 6;
/// The largest body chunk SMFIC_BODY carries (MILTER_CHUNK_SIZE).
pub const CHUNK: usize = 65_535;
/// A reply larger than this is a protocol error (libmilter's own cap is
/// far lower except for SMFIR_REPLBODY chunks).
pub const MAX_PACKET: usize = 1 << 20;

pub mod cmd {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
}

pub mod reply {
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const SHUTDOWN: u8 = b'4';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CHGFROM: u8 = b'e';
    pub const CONN_FAIL: u8 = b'f';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const SETSYMLIST: u8 = b'l';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const QUARANTINE: u8 = b'q';
    pub const REJECT: u8 = b'r';
    pub const SKIP: u8 = b's';
    pub const TEMPFAIL: u8 = b't';
    pub const REPLYCODE: u8 = b'y';
}

/// SMFIF_*: what the milter may do at end of message.
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHGFROM: u32 = 0x40;
    pub const ADDRCPT_PAR: u32 = 0x80;
    pub const SETSYMLIST: u32 = 0x100;
    pub const ALL: u32 = 0x1ff;
}

/// SMFIP_*: what the milter does not want to see, or will not answer.
pub mod proto {
    pub const NOCONNECT: u32 = 0x1;
    pub const NOHELO: u32 = 0x2;
    pub const NOMAIL: u32 = 0x4;
    pub const NORCPT: u32 = 0x8;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// What we offer: every "don't send" and "no reply" bit, SKIP and
    /// leading-space headers; not RCPT_REJ (we never show a milter a
    /// recipient we refused).
    pub const OFFERED: u32 = 0x1fffff & !RCPT_REJ;
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("timed out waiting for the milter")]
    Timeout,
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the milter closed the connection")]
    Closed,
    #[error("malformed reply: {0}")]
    Malformed(String),
}

impl ProtocolError {
    /// The `kind` label of `sluice_scanner_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::Timeout => "timeout",
            ProtocolError::Io(_) | ProtocolError::Closed => "connection",
            ProtocolError::Malformed(_) => "protocol",
        }
    }
}

/// One packet: command or reply byte and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub code: u8,
    pub data: Vec<u8>,
}

/// Encode one packet.
pub fn encode(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    out.push(code);
    out.extend_from_slice(data);
    out
}

/// NUL-terminated strings, concatenated.
pub fn cstrings<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        // A NUL inside a value would shift every field after it.
        out.extend(p.as_ref().iter().copied().filter(|&b| b != 0));
        out.push(0);
    }
    out
}

/// Split NUL-terminated strings; an unterminated tail is an error.
pub fn split_cstrings(data: &[u8]) -> Result<Vec<&[u8]>, ProtocolError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if *data.last().unwrap_or(&1) != 0 {
        return Err(ProtocolError::Malformed("string not NUL-terminated".into()));
    }
    Ok(data[..data.len() - 1].split(|&b| b == 0).collect())
}

pub async fn write_packet<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u8,
    data: &[u8],
    timeout: Duration,
) -> Result<(), ProtocolError> {
    let buf = encode(code, data);
    match tokio::time::timeout(timeout, async {
        w.write_all(&buf).await?;
        w.flush().await
    })
    .await
    {
        Ok(r) => r.map_err(ProtocolError::from),
        Err(_) => Err(ProtocolError::Timeout),
    }
}

/// Read one packet, waiting at most until `deadline`.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    deadline: Instant,
) -> Result<Packet, ProtocolError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, read_packet_inner(r)).await {
        Ok(r) => r,
        Err(_) => Err(ProtocolError::Timeout),
    }
}

async fn read_packet_inner<R: AsyncRead + Unpin>(r: &mut R) -> Result<Packet, ProtocolError> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len).await {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        });
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(ProtocolError::Malformed("zero-length packet".into()));
    }
    if len > MAX_PACKET {
        return Err(ProtocolError::Malformed(format!(
            "packet of {len} bytes exceeds {MAX_PACKET}"
        )));
    }
    let mut buf = vec![0u8; len];
    if let Err(e) = r.read_exact(&mut buf).await {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed
        } else {
            e.into()
        });
    }
    let code = buf[0];
    buf.remove(0);
    Ok(Packet { code, data: buf })
}

/// What option negotiation settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
}

impl Negotiated {
    pub fn has(&self, proto_flag: u32) -> bool {
        self.protocol & proto_flag != 0
    }
    pub fn may(&self, action_flag: u32) -> bool {
        self.actions & action_flag != 0
    }
}

/// SMFIC_OPTNEG as we send it.
pub fn optneg_request() -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&VERSION.to_be_bytes());
    d.extend_from_slice(&action::ALL.to_be_bytes());
    d.extend_from_slice(&proto::OFFERED.to_be_bytes());
    d
}

/// The milter's SMFIC_OPTNEG answer: what it asks, within what we offered.
pub fn parse_optneg(p: &Packet) -> Result<Negotiated, ProtocolError> {
    if p.code != cmd::OPTNEG {
        return Err(ProtocolError::Malformed(format!(
            "expected option negotiation, got {:?}",
            p.code as char
        )));
    }
    if p.data.len() < 12 {
        return Err(ProtocolError::Malformed(
            "option negotiation shorter than 12 bytes".into(),
        ));
    }
    let word =
        |i: usize| u32::from_be_bytes([p.data[i], p.data[i + 1], p.data[i + 2], p.data[i + 3]]);
    let version = word(0);
    if !(2..=VERSION).contains(&version) {
        return Err(ProtocolError::Malformed(format!(
            "unsupported milter protocol version {version}"
        )));
    }
    let actions = word(4);
    let protocol = word(8);
    if protocol & !proto::OFFERED != 0 {
        return Err(ProtocolError::Malformed(format!(
            "the milter asks for protocol flags {:#x} we did not offer",
            protocol & !proto::OFFERED
        )));
    }
    Ok(Negotiated {
        version,
        actions: actions & action::ALL,
        protocol,
    })
}

/// SMFIC_CONNECT data.
pub fn connect_data(hostname: &str, ip: &str, port: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(hostname.bytes().filter(|&b| b != 0));
    d.push(0);
    let family = if ip.parse::<std::net::Ipv6Addr>().is_ok() {
        b'6'
    } else if ip.parse::<std::net::Ipv4Addr>().is_ok() {
        b'4'
    } else {
        b'U'
    };
    d.push(family);
    if family != b'U' {
        d.extend_from_slice(&port.to_be_bytes());
        d.extend(ip.bytes());
        d.push(0);
    }
    d
}

/// SMFIC_MACRO data for the command `for_cmd`.
pub fn macro_data(for_cmd: u8, macros: &[(String, String)]) -> Vec<u8> {
    let mut d = vec![for_cmd];
    for (k, v) in macros {
        d.extend_from_slice(&cstrings(&[k.as_bytes(), v.as_bytes()]));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let p = encode(cmd::HELO, b"example.org\0");
        assert_eq!(&p[..4], &13u32.to_be_bytes());
        assert_eq!(p[4], b'H');
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let mut r: &[u8] = &p;
            read_packet(&mut r, Instant::now() + Duration::from_secs(1)).await
        });
        assert_eq!(
            got.unwrap(),
            Packet {
                code: b'H',
                data: b"example.org\0".to_vec()
            }
        );
    }

    #[test]
    fn oversized_and_truncated_packets_are_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let big = ((MAX_PACKET + 1) as u32).to_be_bytes();
            let mut r: &[u8] = &big;
            let e = read_packet(&mut r, Instant::now() + Duration::from_secs(1)).await;
            assert!(matches!(e, Err(ProtocolError::Malformed(_))), "{e:?}");
            let mut r: &[u8] = &[0, 0, 0, 9, b'c'];
            let e = read_packet(&mut r, Instant::now() + Duration::from_secs(1)).await;
            assert!(matches!(e, Err(ProtocolError::Closed)), "{e:?}");
            let mut r: &[u8] = &[0, 0, 0, 0];
            let e = read_packet(&mut r, Instant::now() + Duration::from_secs(1)).await;
            assert!(matches!(e, Err(ProtocolError::Malformed(_))), "{e:?}");
        });
    }

    #[test]
    fn optneg_checks_flags() {
        let mut d = Vec::new();
        d.extend_from_slice(&6u32.to_be_bytes());
        d.extend_from_slice(&0x3u32.to_be_bytes());
        d.extend_from_slice(&(proto::NOHELO | proto::NR_HDR).to_be_bytes());
        let n = parse_optneg(&Packet {
            code: b'O',
            data: d.clone(),
        })
        .unwrap();
        assert!(n.has(proto::NOHELO) && n.has(proto::NR_HDR) && !n.has(proto::NOBODY));
        assert!(n.may(action::ADDHDRS) && !n.may(action::QUARANTINE));
        d[8..12].copy_from_slice(&proto::RCPT_REJ.to_be_bytes());
        assert!(parse_optneg(&Packet {
            code: b'O',
            data: d
        })
        .is_err());
        assert!(parse_optneg(&Packet {
            code: b'O',
            data: vec![0; 4]
        })
        .is_err());
    }

    #[test]
    fn connect_families() {
        assert_eq!(
            connect_data("h", "10.0.0.1", 25),
            b"h\x004\x00\x1910.0.0.1\x00".to_vec()
        );
        assert_eq!(connect_data("h", "::1", 25)[2], b'6');
        assert_eq!(split_cstrings(b"a\0bc\0").unwrap(), vec![&b"a"[..], b"bc"]);
        assert!(split_cstrings(b"a").is_err());
    }
}
