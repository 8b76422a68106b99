//! A message body that streams unless someone asks to read it.
//!
//! [`Body`] holds what has been buffered so far (for the policies that asked)
//! and the rest of the stream, untouched. [`Body::into_stream`] hands both on
//! as one `http_body::Body`: the buffered prefix first, then the rest as it
//! arrives. Nothing is copied for a body nobody read.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body stream of any origin (the client's, the upstream's, a policy's).
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What reading a body up to a size found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// The whole body, as one buffer (cheap to clone).
    Complete(Bytes),
    /// More than the size asked for. What was read stays buffered and goes on
    /// ahead of the rest.
    TooLarge,
}

/// Why a body could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    /// The stream broke off (the peer reset, or sent a malformed body).
    #[error("the body stream failed: {0}")]
    Stream(String),
    /// Nothing arrived for too long.
    #[error("no body data within {0:?}")]
    Timeout(std::time::Duration),
    /// Data came, but slower than the least pace allowed (bytes per second).
    #[error("the body arrived slower than {0} bytes per second")]
    TooSlow(u64),
}

impl BodyError {
    /// The `BodyError` behind `e`, if a body stream's failure caused it
    /// (through hyper's, axum's or a boxed error's sources).
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut next = Some(e);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(found.clone());
            }
            next = e.source();
        }
        None
    }

    fn from_stream(e: &BoxError) -> Self {
        Self::find(&**e).unwrap_or_else(|| Self::Stream(e.to_string()))
    }
}

/// A body: a buffered prefix, then the rest of the stream (if any).
#[derive(Default)]
pub struct Body {
    /// Read so far, in order.
    buffered: VecDeque<Bytes>,
    buffered_len: usize,
    /// The rest of the stream; `None` once it ended (or was replaced).
    rest: Option<BoxBody>,
    /// Trailers, once the stream ended with some.
    trailers: Option<HeaderMap>,
    /// Set when reading failed: the body cannot be sent on whole.
    failed: Option<BodyError>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("buffered_len", &self.buffered_len)
            .field("streaming", &self.rest.is_some())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Body {
    /// No body at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A body that is all there.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let mut body = Self::default();
        if !bytes.is_empty() {
            body.buffered_len = bytes.len();
            body.buffered.push_back(bytes);
        }
        body
    }

    /// A body that streams from `stream`.
    pub fn stream(stream: BoxBody) -> Self {
        if stream.is_end_stream() {
            return Self::empty();
        }
        Self {
            rest: Some(stream),
            ..Self::default()
        }
    }

    /// Whether all of it is buffered (nothing left to read).
    pub fn is_buffered(&self) -> bool {
        self.rest.is_none()
    }

    /// Bytes buffered so far.
    pub fn buffered_len(&self) -> usize {
        self.buffered_len
    }

    /// Why reading failed, if it did.
    pub fn failure(&self) -> Option<&BodyError> {
        self.failed.as_ref()
    }

    /// The body's length, when it is known without reading it: all
    /// buffered, or a stream that announced its length.
    pub fn known_len(&self) -> Option<u64> {
        match &self.rest {
            None => Some(self.buffered_len as u64),
            Some(rest) => rest
                .size_hint()
                .exact()
                .map(|n| n + self.buffered_len as u64),
        }
    }

    /// Reads until more than `max` bytes are buffered or the stream ends,
    /// waiting at most `idle` for each piece.
    ///
    /// # Errors
    /// [`BodyError`] if the stream fails or stalls; the body then cannot be
    /// sent on (see [`Body::failure`]).
    pub async fn fill(
        &mut self,
        max: usize,
        idle: std::time::Duration,
    ) -> Result<Filled, BodyError> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        // A stream that announced more than `max` need not be read at all.
        if self.known_len().is_some_and(|n| n > max as u64) {
            return Ok(Filled::TooLarge);
        }
        while self.buffered_len <= max {
            let Some(rest) = self.rest.as_mut() else {
                return Ok(Filled::Complete(self.contiguous()));
            };
            let frame = match tokio::time::timeout(idle, rest.frame()).await {
                Err(_) => Err(BodyError::Timeout(idle)),
                Ok(None) => {
                    self.rest = None;
                    continue;
                }
                Ok(Some(Err(e))) => Err(BodyError::from_stream(&e)),
                Ok(Some(Ok(frame))) => Ok(frame),
            };
            match frame {
                Err(e) => {
                    self.rest = None;
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                Ok(frame) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            self.buffered_len += data.len();
                            self.buffered.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
        Ok(Filled::TooLarge)
    }

    /// The whole body if it is buffered.
    pub fn complete(&self) -> Option<Bytes> {
        (self.rest.is_none() && self.failed.is_none()).then(|| self.contiguous())
    }

    /// What is buffered, as one buffer (joined once if it came in pieces,
    /// and kept joined).
    fn contiguous(&self) -> Bytes {
        match self.buffered.len() {
            0 => Bytes::new(),
            1 => self.buffered[0].clone(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.buffered_len);
                for piece in &self.buffered {
                    joined.extend_from_slice(piece);
                }
                joined.freeze()
            }
        }
    }

    /// Replaces the whole body (the rest of a stream is dropped unread).
    pub fn replace(&mut self, bytes: impl Into<Bytes>) {
        *self = Self::full(bytes);
    }

    /// A copy that can be sent again (a retry), when the body is all here.
    pub fn try_clone(&self) -> Option<Self> {
        if self.rest.is_some() || self.failed.is_some() {
            return None;
        }
        Some(Self {
            buffered: self.buffered.clone(),
            buffered_len: self.buffered_len,
            rest: None,
            trailers: self.trailers.clone(),
            failed: None,
        })
    }

    /// The body as a stream: the buffered prefix, then the rest. A body whose
    /// reading failed yields that failure after what was read.
    pub fn into_stream(self) -> BoxBody {
        let stream = Stream {
            len: self.known_len(),
            buffered: self.buffered,
            rest: self.rest,
            trailers: self.trailers,
            failed: self.failed,
        };
        BoxBody::new(stream)
    }
}

/// `body`, failing with [`BodyError::Timeout`] when the reader has waited
/// `idle` for the next frame: a stalled upstream's body ends instead of
/// holding the client (and the connection) forever. A [`paced`] body with
/// no least rate: time the reader spends not reading does not count.
pub fn idle_timeout(body: BoxBody, idle: std::time::Duration) -> BoxBody {
    BoxBody::new(paced(body, idle, 0))
}

/// A client's request body held to a pace: it fails with
/// [`BodyError::Timeout`] when the sidecar has waited `idle` for the next
/// piece, and with [`BodyError::TooSlow`] when, after `idle` of waiting in
/// all, it came slower than `min_rate` bytes per second of waiting. Only
/// time spent waiting on the client counts: an upstream that reads slowly
/// (backpressure) is not the client's fault.
pub fn paced(body: BoxBody, idle: std::time::Duration, min_rate: u64) -> Paced {
    Paced {
        inner: body,
        idle,
        min_rate,
        first: None,
        waiting_since: None,
        waited: std::time::Duration::ZERO,
        received: 0,
        timer: Box::pin(tokio::time::sleep(idle)),
        failed: false,
    }
}

/// See [`paced`].
pub struct Paced {
    inner: BoxBody,
    idle: std::time::Duration,
    min_rate: u64,
    /// A frame read ahead by [`Paced::started`], handed out first.
    first: Option<Frame<Bytes>>,
    waiting_since: Option<tokio::time::Instant>,
    waited: std::time::Duration,
    received: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
    failed: bool,
}

impl Paced {
    /// Waits (within the pace) until the body's first piece has arrived, or
    /// it ended; the piece is kept and handed out first. A request whose
    /// client sent only a head waits here, before it takes any slot.
    ///
    /// # Errors
    /// As the body would fail: the client stalled, or the stream broke.
    pub async fn started(&mut self) -> Result<(), BodyError> {
        if self.first.is_some() || self.inner.is_end_stream() {
            return Ok(());
        }
        match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_inner(cx)).await {
            None => Ok(()),
            Some(Ok(frame)) => {
                self.first = Some(frame);
                Ok(())
            }
            Some(Err(e)) => Err(BodyError::from_stream(&e)),
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                let now = tokio::time::Instant::now();
                if self.waiting_since.is_none() {
                    self.waiting_since = Some(now);
                    self.timer.as_mut().reset(now + self.idle);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => self.fail(BodyError::Timeout(self.idle)),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                let least = self.min_rate as f64 * self.waited.as_secs_f64();
                if self.min_rate > 0 && self.waited > self.idle && (self.received as f64) < least {
                    return self.fail(BodyError::TooSlow(self.min_rate));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.failed || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + first);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + first);
        }
        hint
    }
}

/// [`Body::into_stream`]'s stream.
struct Stream {
    buffered: VecDeque<Bytes>,
    rest: Option<BoxBody>,
    trailers: Option<HeaderMap>,
    failed: Option<BodyError>,
    len: Option<u64>,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(piece) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(rest) = this.rest.as_mut() {
            let polled = Pin::new(rest).poll_frame(cx);
            if let Poll::Ready(None) = polled {
                this.rest = None;
            } else {
                return polled;
            }
        }
        if let Some(failed) = this.failed.take() {
            return Poll::Ready(Some(Err(Box::new(failed))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
            && self.trailers.is_none()
            && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => {
                let ahead: u64 = self.buffered.iter().map(|b| b.len() as u64).sum();
                let mut hint = self
                    .rest
                    .as_ref()
                    .map(|r| r.size_hint())
                    .unwrap_or_default();
                hint.set_lower(hint.lower() + ahead);
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A stream of the given frames, one per poll.
    struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }
    }

    fn frames(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> BoxBody {
        BoxBody::new(Frames(frames.into()))
    }

    fn chunked(pieces: &[&'static [u8]]) -> BoxBody {
        frames(
            pieces
                .iter()
                .map(|p| Ok(Frame::data(Bytes::from_static(p))))
                .collect(),
        )
    }

    const IDLE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_body_larger_than_asked_goes_on_whole() {
        let mut body = Body::stream(chunked(&[b"abc", b"def", b"ghi"]));
        assert_eq!(body.fill(4, IDLE).await.unwrap(), Filled::TooLarge);
        let all = body.into_stream().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefghi");
    }

    #[tokio::test]
    async fn a_body_within_the_ask_is_complete_and_can_be_replaced() {
        let mut body = Body::stream(chunked(&[b"abc", b"def"]));
        assert_eq!(
            body.fill(6, IDLE).await.unwrap(),
            Filled::Complete(Bytes::from_static(b"abcdef"))
        );
        // A later, smaller ask of a complete body is too large for it.
        assert_eq!(body.fill(2, IDLE).await.unwrap(), Filled::TooLarge);
        body.replace(Bytes::from_static(b"new"));
        assert_eq!(body.known_len(), Some(3));
        let all = body.into_stream().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"new");
    }

    #[tokio::test]
    async fn an_unread_stream_passes_untouched() {
        let body = Body::stream(chunked(&[b"x", b"y"]));
        assert!(!body.is_buffered());
        let all = body.into_stream().collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"xy");
    }

    #[tokio::test]
    async fn a_failed_stream_fails_the_body_it_is_sent_in() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("reset".into()),
        ];
        let mut body = Body::stream(self::frames(frames));
        assert!(matches!(
            body.fill(10, IDLE).await,
            Err(BodyError::Stream(_))
        ));
        assert!(body.failure().is_some());
        assert!(body.into_stream().collect().await.is_err());
    }
}
