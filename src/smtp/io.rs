//! The connection's byte stream (plain TCP or TLS over it) with an input
//! buffer and a reply buffer. Replies are batched and flushed only when the
//! server must wait for more input, which is exactly RFC 2920's rule for
//! pipelined replies.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory pipe: a test drives a whole session without a socket.
    Memory(tokio::io::DuplexStream),
    /// Placeholder while the TCP stream is handed to the TLS handshake.
    Closed,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("client closed the connection")]
    Eof,
    #[error("timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A line read from the client.
pub enum Line {
    /// Without its line ending.
    Text(Vec<u8>),
    /// Longer than the limit; the rest up to LF was discarded.
    TooLong,
}

/// One non-blocking read of at most [`READ_CHUNK`] bytes, appended to `buf`
/// (a small read grows it by a few bytes, not by a whole chunk).
fn read_plain(tcp: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; READ_CHUNK];
    let n = tcp.try_read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

pub struct Conn {
    pub stream: Stream,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// The command being answered, for `sluice_smtp_replies_total`.
    pub metrics_command: usize,
}

const READ_CHUNK: usize = 16 * 1024;

impl Conn {
    pub fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            rbuf: Vec::with_capacity(1024),
            rpos: 0,
            wbuf: Vec::with_capacity(512),
            metrics_command: 0,
        }
    }

    pub fn queue_reply(&mut self, text: &str) {
        crate::metrics::smtp_reply(self.metrics_command, text);
        self.wbuf.extend_from_slice(text.as_bytes());
    }

    pub async fn flush(&mut self) -> Result<(), IoError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Bytes received but not consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos >= self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Drop everything buffered (STARTTLS: nothing sent before the
    /// handshake may be read as a command after it).
    pub fn discard_input(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.rbuf.clear();
        self.rpos = 0;
        n
    }

    /// Flush pending replies, then read more input.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, IoError> {
        self.flush().await?;
        if self.rpos > 0 && self.rpos * 2 >= self.rbuf.len() {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_CHUNK {
            // An idle connection should not pin a large buffer.
            self.rbuf = Vec::new();
        }
        // Plain TCP: wait for readiness without holding a read buffer, then
        // read through the stack, so the buffer only grows by what arrived:
        // thousands of idle or trickling clients cost little memory.
        if let Stream::Plain(tcp) = &self.stream {
            if self.rbuf.is_empty() {
                self.rbuf = Vec::new();
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match tokio::time::timeout_at(deadline, tcp.readable()).await {
                    Err(_) => return Err(IoError::Timeout),
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(())) => {}
                }
                match read_plain(tcp, &mut self.rbuf) {
                    Ok(0) => return Err(IoError::Eof),
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // read_buf fills spare capacity: no zeroing of the chunk per read.
        self.rbuf.reserve(READ_CHUNK);
        match tokio::time::timeout(timeout, self.stream.read_buf(&mut self.rbuf)).await {
            Err(_) => Err(IoError::Timeout),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(0)) => Err(IoError::Eof),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// Read one line (ended by LF; a CR before it is removed). Lines over
    /// `max` bytes (with CRLF) are discarded up to their LF. `timeout` bounds
    /// the whole line, not each read: a client trickling a byte at a time
    /// cannot hold the connection past it (RFC 5321 §4.5.3.2.7).
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, IoError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut too_long = false;
        loop {
            let buf = &self.rbuf[self.rpos..];
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                if too_long || i + 1 > max {
                    self.consume(i + 1);
                    return Ok(Line::TooLong);
                }
                let mut line = buf[..i].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.consume(i + 1);
                return Ok(Line::Text(line));
            }
            if buf.len() > max {
                // Keep memory bounded: forget what we have, remember it was too long.
                too_long = true;
                let n = buf.len();
                self.consume(n);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(IoError::Timeout);
            }
            self.fill(left).await?;
        }
    }

    /// Read exactly `n` bytes, handing them to `sink` as they arrive.
    pub async fn read_exact_into(
        &mut self,
        mut n: u64,
        timeout: Duration,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), IoError> {
        loop {
            let avail = (self.rbuf.len() - self.rpos) as u64;
            let take = avail.min(n) as usize;
            if take > 0 {
                sink(&self.rbuf[self.rpos..self.rpos + take]);
                self.consume(take);
                n -= take as u64;
            }
            if n == 0 {
                return Ok(());
            }
            self.fill(timeout).await?;
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
