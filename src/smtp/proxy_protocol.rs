//! HAProxy PROXY protocol v1 (text) and v2 (binary) header parsing, so a
//! listener behind a load balancer sees the real client address.
//! Reads exactly the header bytes and nothing of the SMTP stream after it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("PROXY header: {0}")]
    Malformed(&'static str),
    #[error("PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// The addresses the proxy reported; `None` for LOCAL / UNKNOWN (health checks).
pub type ProxiedAddrs = Option<(SocketAddr, SocketAddr)>;

pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxiedAddrs, ProxyError> {
    let mut first = [0u8; 12];
    r.read_exact(&mut first[..5]).await?;
    if &first[..5] == b"PROXY" {
        return read_v1(r).await;
    }
    r.read_exact(&mut first[5..]).await?;
    if &first != V2_SIG {
        return Err(ProxyError::Malformed("no PROXY v1 or v2 signature"));
    }
    read_v2(r).await
}

async fn read_v1<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxiedAddrs, ProxyError> {
    // v1 headers are at most 107 bytes including "PROXY" and CRLF.
    let mut line = Vec::with_capacity(108);
    line.extend_from_slice(b"PROXY");
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        line.push(b[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() >= 107 {
            return Err(ProxyError::Malformed("v1 header too long"));
        }
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyError::Malformed("v1 header is not text"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", fam, src, dst, sport, dport] => {
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError::Malformed("bad destination address"))?;
            let ok = match *fam {
                "TCP4" => src.is_ipv4() && dst.is_ipv4(),
                "TCP6" => src.is_ipv6() && dst.is_ipv6(),
                _ => false,
            };
            if !ok {
                return Err(ProxyError::Malformed("bad v1 protocol family"));
            }
            let port = |s: &str| -> Result<u16, ProxyError> {
                if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
                    return Err(ProxyError::Malformed("bad port"));
                }
                s.parse().map_err(|_| ProxyError::Malformed("bad port"))
            };
            Ok(Some((
                SocketAddr::new(src, port(sport)?),
                SocketAddr::new(dst, port(dport)?),
            )))
        }
        _ => Err(ProxyError::Malformed(
            "v1 header has the wrong number of fields",
        )),
    }
}

async fn read_v2<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxiedAddrs, ProxyError> {
    let mut hdr = [0u8; 4];
    r.read_exact(&mut hdr).await?;
    let ver_cmd = hdr[0];
    let fam = hdr[1];
    let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version is not 2"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}
        _ => return Err(ProxyError::Malformed("v2 command unknown")),
    }
    match fam >> 4 {
        0 => Ok(None), // AF_UNSPEC
        1 => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("v2 IPv4 block too short"));
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            let sp = u16::from_be_bytes([body[8], body[9]]);
            let dp = u16::from_be_bytes([body[10], body[11]]);
            Ok(Some((
                SocketAddr::new(src.into(), sp),
                SocketAddr::new(dst.into(), dp),
            )))
        }
        2 => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("v2 IPv6 block too short"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[0..16]);
            d.copy_from_slice(&body[16..32]);
            let sp = u16::from_be_bytes([body[32], body[33]]);
            let dp = u16::from_be_bytes([body[34], body[35]]);
            Ok(Some((
                SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                SocketAddr::new(Ipv6Addr::from(d).into(), dp),
            )))
        }
        // AF_UNIX and others carry no IP client address.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_and_v2() {
        let mut r: &[u8] = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n";
        let (src, dst) = read_header(&mut r).await.unwrap().unwrap();
        assert_eq!(src.to_string(), "192.0.2.7:40000");
        assert_eq!(dst.port(), 25);
        assert_eq!(r, b"EHLO x\r\n");

        let mut v2 = V2_SIG.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x1f, 0x90, 0, 25,
        ]);
        v2.extend_from_slice(b"QUIT\r\n");
        let mut r: &[u8] = &v2;
        let (src, _) = read_header(&mut r).await.unwrap().unwrap();
        assert_eq!(src.to_string(), "198.51.100.9:8080");
        assert_eq!(r, b"QUIT\r\n");

        let mut r: &[u8] = b"PROXY UNKNOWN\r\n";
        assert!(read_header(&mut r).await.unwrap().is_none());
        let mut r: &[u8] = b"EHLO hello there\r\n";
        assert!(read_header(&mut r).await.is_err());
        let mut r: &[u8] = b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n";
        assert!(read_header(&mut r).await.is_err());
    }
}
