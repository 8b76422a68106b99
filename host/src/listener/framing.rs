//! Strict HTTP/1 framing on the client's connection: what hyper accepts
//! leniently but a proxy in front might read differently (so a request
//! could be smuggled past it) is refused. hyper's parser takes a bare LF for
//! CRLF and merges equal `Content-Length`s before the sidecar sees the
//! head, so the bytes are checked as hyper reads them: [`StrictFraming`]
//! follows the request heads and body framing of the connection and
//! records the first violation, which the request handler answers with 400
//! and a closed connection (see `server`). What the head says about its
//! framing otherwise (`Transfer-Encoding` other than `chunked`, both
//! framings) is checked on the parsed head, in `convert::check_head`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first framing violation seen on a connection, shared with its
/// requests (an extension on each).
#[derive(Debug, Clone, Default)]
pub struct Violation(Arc<OnceLock<&'static str>>);

impl Violation {
    /// What was wrong, once something was.
    pub fn get(&self) -> Option<&'static str> {
        self.0.get().copied()
    }

    fn set(&self, why: &'static str) {
        let _ = self.0.set(why);
    }
}

/// Longest prefix of a head line kept to tell which field it is.
const NAME_BYTES: usize = 32;

#[derive(Debug)]
enum State {
    /// In a request head (or the trailers of a chunked body).
    Head {
        trailers: bool,
        /// Lines seen in this head, the request line included.
        lines: u32,
        /// The start of the current line, lower-cased.
        line: Vec<u8>,
        length: Option<u64>,
        lengths: u32,
        chunked: bool,
        upgrade: bool,
    },
    Body(u64),
    /// A chunk-size line: the size so far, and whether an extension began.
    ChunkSize(u64, bool),
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its bytes came.
    ChunkEnd(u8),
    /// An upgraded connection (a tunnel), or one already refused: not HTTP
    /// framing any more.
    Off,
}

impl State {
    fn head(trailers: bool) -> Self {
        Self::Head {
            trailers,
            lines: 0,
            line: Vec::new(),
            length: None,
            lengths: 0,
            chunked: false,
            upgrade: false,
        }
    }
}

/// The client connection's read side, checked; see the module docs.
#[derive(Debug)]
pub struct StrictFraming<S> {
    inner: S,
    state: State,
    /// The byte before, across reads (a CR before an LF).
    prev: u8,
    violation: Violation,
}

impl<S> StrictFraming<S> {
    pub fn new(inner: S, violation: Violation) -> Self {
        Self {
            inner,
            state: State::head(false),
            prev: 0,
            violation,
        }
    }

    fn refuse(&mut self, why: &'static str) {
        self.violation.set(why);
        self.state = State::Off;
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (left, chunk) = match &mut self.state {
                State::Off => return,
                State::Body(left) => (left, false),
                State::ChunkData(left) => (left, true),
                _ => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.byte(b);
                    self.prev = b;
                    continue;
                }
            };
            // Body bytes are skipped whole: LFs in a body are data.
            let n = (*left).min(bytes.len() as u64);
            *left -= n;
            bytes = &bytes[n as usize..];
            if *left == 0 {
                self.state = if chunk {
                    State::ChunkEnd(0)
                } else {
                    State::head(false)
                };
            }
            self.prev = 0;
        }
    }

    fn byte(&mut self, b: u8) {
        if b == b'\n' && self.prev != b'\r' {
            return self.refuse("a line ends with LF alone, not CRLF");
        }
        match &mut self.state {
            State::ChunkEnd(seen) => {
                let want = if *seen == 0 { b'\r' } else { b'\n' };
                if b != want {
                    return self.refuse("chunk data is not followed by CRLF");
                }
                *seen += 1;
                if *seen == 2 {
                    self.state = State::ChunkSize(0, false);
                }
            }
            State::ChunkSize(size, extension) => match b {
                b'\n' => {
                    self.state = if *size == 0 {
                        State::head(true)
                    } else {
                        State::ChunkData(*size)
                    };
                }
                b'\r' => {}
                b';' => *extension = true,
                _ if *extension => {}
                _ => match (b as char).to_digit(16) {
                    Some(d) if *size < (1 << 56) => *size = *size * 16 + u64::from(d),
                    Some(_) => self.refuse("a chunk size is too large"),
                    // Whitespace: not a digit, not framing either.
                    None => {}
                },
            },
            State::Head { line, .. } => {
                if b == b'\n' {
                    self.end_of_line();
                } else if b != b'\r' && line.len() < NAME_BYTES {
                    line.push(b.to_ascii_lowercase());
                }
            }
            State::Body(_) | State::ChunkData(_) | State::Off => {}
        }
    }

    fn end_of_line(&mut self) {
        let State::Head {
            trailers,
            lines,
            line,
            length,
            lengths,
            chunked,
            upgrade,
        } = &mut self.state
        else {
            return;
        };
        if line.is_empty() {
            if *lines == 0 && !*trailers {
                // Empty lines before a request line are tolerated (RFC 9112).
                return;
            }
            if *trailers {
                self.state = State::head(false);
                return;
            }
            if *lengths > 1 {
                return self.refuse("content-length given more than once");
            }
            // hyper drops the length and goes by the chunks; a proxy in
            // front may have gone by the length.
            if *lengths > 0 && *chunked {
                return self.refuse("both transfer-encoding and content-length");
            }
            self.state = if *upgrade {
                State::Off
            } else if *chunked {
                State::ChunkSize(0, false)
            } else {
                match *length {
                    Some(n) if n > 0 => State::Body(n),
                    _ => State::head(false),
                }
            };
            return;
        }
        *lines += 1;
        if *lines > 1 && !*trailers {
            let text = String::from_utf8_lossy(line);
            if let Some((name, value)) = text.split_once(':') {
                match name {
                    "content-length" => {
                        *lengths += 1;
                        *length = value.trim().parse().ok();
                    }
                    "transfer-encoding" => *chunked = value.contains("chunked"),
                    "upgrade" => *upgrade = true,
                    _ => {}
                }
            }
        }
        line.clear();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StrictFraming<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.scan(&buf.filled()[before..]);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StrictFraming<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the checker says of `bytes`, fed `step` bytes at a time.
    fn verdict(bytes: &[u8], step: usize) -> Option<&'static str> {
        let mut s = StrictFraming::new((), Violation::default());
        for piece in bytes.chunks(step) {
            s.scan(piece);
        }
        s.violation.get()
    }

    fn each_split(bytes: &[u8]) -> Vec<Option<&'static str>> {
        [1, 2, 7, bytes.len()]
            .iter()
            .map(|&n| verdict(bytes, n))
            .collect()
    }

    #[test]
    fn well_framed_requests_pass_however_they_are_split() {
        let pipelined = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\na\nb\nc\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\na\nb\r\n0\r\nT: 1\r\n\r\n\
            \r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(each_split(pipelined).iter().all(Option::is_none));
    }

    #[test]
    fn refuses_a_bare_lf_in_any_head_of_the_connection() {
        let first = b"GET /a HTTP/1.1\nHost: x\r\n\r\n";
        assert!(each_split(first).iter().all(Option::is_some));
        // The bare LF comes in the head after a body that holds LFs itself.
        let later =
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\na\nbGET /b HTTP/1.1\r\nHost: x\n\r\n";
        assert_eq!(
            each_split(later),
            vec![Some("a line ends with LF alone, not CRLF"); 4]
        );
    }

    #[test]
    fn refuses_two_content_lengths_even_equal_ones() {
        let twice = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            each_split(twice),
            vec![Some("content-length given more than once"); 4]
        );
    }

    #[test]
    fn refuses_a_length_beside_chunked() {
        let both =
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(
            each_split(both),
            vec![Some("both transfer-encoding and content-length"); 4]
        );
    }

    #[test]
    fn refuses_chunk_data_without_its_crlf() {
        let bad = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n";
        assert!(each_split(bad).iter().all(Option::is_some));
    }

    #[test]
    fn stops_checking_once_a_connection_upgrades() {
        let ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nframes\n\n";
        assert!(each_split(ws).iter().all(Option::is_none));
    }
}
