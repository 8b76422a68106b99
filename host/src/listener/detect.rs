//! Which HTTP version a new connection speaks, decided once per connection:
//! ALPN's answer on a TLS listener, else whether the client's first bytes
//! are the HTTP/2 connection preface (prior knowledge, RFC 9113 §3.3).
//! The bytes read to decide are handed back to the server first
//! ([`Prefixed`]), so nothing is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1 request
/// line (most often the first read holds the whole request), within
/// `timeout`.
///
/// # Errors
/// The client closed or sent nothing in time: there is nothing to serve.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<(Protocol, Bytes)> {
    let mut seen = BytesMut::with_capacity(4096);
    let decide = async {
        loop {
            if stream.read_buf(&mut seen).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let n = seen.len().min(PREFACE.len());
            if seen[..n] != PREFACE[..n] {
                return Ok(Protocol::Http1);
            }
            if n == PREFACE.len() {
                return Ok(Protocol::Http2);
            }
        }
    };
    let protocol = tokio::time::timeout(timeout, decide)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok((protocol, seen.freeze()))
}

/// A stream whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    async fn sniffed(chunks: &[&[u8]]) -> io::Result<(Protocol, Vec<u8>)> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        for chunk in chunks {
            client.write_all(chunk).await.unwrap();
        }
        drop(client);
        let mut server = server;
        let (protocol, prefix) = sniff(&mut server, Duration::from_secs(1)).await?;
        let mut again = Vec::new();
        Prefixed::new(prefix, server)
            .read_to_end(&mut again)
            .await
            .unwrap();
        Ok((protocol, again))
    }

    #[tokio::test]
    async fn an_http1_request_is_http1_and_every_byte_is_read_again() {
        let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let (protocol, again) = sniffed(&[req]).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(again, req);
    }

    #[tokio::test]
    async fn the_preface_is_http2_even_split_over_reads() {
        let (protocol, again) = sniffed(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\nFRAMES"])
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Http2);
        assert_eq!(again, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nFRAMES");
    }

    #[tokio::test]
    async fn a_method_starting_like_the_preface_is_http1() {
        let (protocol, _) = sniffed(&[b"PRIX / HTTP/1.1\r\n\r\n"]).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_not_served() {
        assert!(sniffed(&[]).await.is_err());
        assert!(sniffed(&[b"PRI * HTTP/2"]).await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_times_out() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let err = sniff(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
