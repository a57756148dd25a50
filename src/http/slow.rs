//! Protection from slow clients: a client that trickles its body or never reads its
//! response must not hold a connection (and the memory behind it) forever.
//!
//! - Headers: hyper's own `header_read_timeout` (set in [`super::serve`]).
//! - Bodies: [`paced`] ends a body that sends nothing for `body_read_timeout_secs`,
//!   or that averages less than `min_body_bytes_per_sec` once that long has passed
//!   (a trickle of a byte now and then resets no idle timer for long): 408, and the
//!   connection closes. A body left unread by a refusal is discarded for a while
//!   after the answer (a lingering close).
//! - Responses: [`WriteTimeout`] fails a connection whose writes make no progress for
//!   `write_timeout_secs` (a client that stopped reading): hyper drops it.
//! - Connections: at most `max_connections` at once; more wait in the listen backlog.

use std::fmt;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::error::{Error, ErrorKind};

/// Why reading a request body stopped early.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed or the client sent a malformed body.
    Interrupted(hyper::Error),
    /// Nothing arrived for this long.
    Stalled(Duration),
    /// Less than this many bytes a second arrived on average.
    TooSlow(u64),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Interrupted(err) => write!(f, "reading the body failed: {err}"),
            BodyError::Stalled(idle) => write!(
                f,
                "the body stalled: nothing arrived for {} s",
                idle.as_secs()
            ),
            BodyError::TooSlow(rate) => write!(
                f,
                "the body is too slow: it must average at least {rate} bytes a second"
            ),
        }
    }
}

impl std::error::Error for BodyError {}

impl From<BodyError> for Error {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::Interrupted(_) => Error::bad_request("body_interrupted", err.to_string()),
            BodyError::Stalled(_) => {
                Error::new(ErrorKind::RequestTimeout, "body_timeout", err.to_string())
            }
            BodyError::TooSlow(_) => {
                Error::new(ErrorKind::RequestTimeout, "body_too_slow", err.to_string())
            }
        }
    }
}

/// How a request body must keep coming (from the settings' limits).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// The longest silence; also the grace period before the rate counts.
    pub idle: Duration,
    /// The least average rate after the grace period; 0 checks none.
    pub min_bytes_per_sec: u64,
}

impl Pace {
    /// Whether `received` bytes after `elapsed` are too few.
    fn too_slow(&self, received: u64, elapsed: Duration) -> bool {
        elapsed > self.idle
            && (received as f64) < self.min_bytes_per_sec as f64 * elapsed.as_secs_f64()
    }
}

/// A request body as chunks that fail with [`BodyError::Stalled`] when the client
/// sends nothing for `pace.idle`, and with [`BodyError::TooSlow`] when, that long
/// after the first poll, it has averaged less than `pace.min_bytes_per_sec`.
///
/// Dropped before its end (a request refused before its body was read: 413, 429,
/// 401), it goes on reading and discarding the rest in the background, up to
/// [`LINGER_BYTES`] or [`LINGER_TIME`], as nginx's lingering close does: a client
/// still sending would otherwise get a connection reset instead of the answer.
pub fn paced(body: Incoming, pace: Pace) -> RequestBody {
    // Most requests (GET, HEAD, DELETE) have no body: nothing to time or linger on.
    if hyper::body::Body::is_end_stream(&body) {
        return RequestBody { chunks: None };
    }
    let chunks = body.into_data_stream();
    let started = tokio::time::Instant::now();
    let state = Some((chunks, 0u64));
    let stream = futures::stream::unfold(state, move |state| async move {
        let (mut chunks, received) = state?;
        match tokio::time::timeout(pace.idle, chunks.next()).await {
            Ok(Some(Ok(chunk))) => {
                let received = received + chunk.len() as u64;
                if pace.too_slow(received, started.elapsed()) {
                    return Some((Err(BodyError::TooSlow(pace.min_bytes_per_sec)), None));
                }
                Some((Ok(chunk), Some((chunks, received))))
            }
            Ok(Some(Err(err))) => Some((Err(BodyError::Interrupted(err)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(BodyError::Stalled(pace.idle)), None)),
        }
    })
    .boxed();
    RequestBody {
        chunks: Some(stream),
    }
}

/// How much of an unread body is discarded after the response, at most.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// How long an unread body is discarded after the response, at most.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// See [`paced`].
pub struct RequestBody {
    /// `None` once the body has ended.
    chunks: Option<BoxStream<'static, Result<Bytes, BodyError>>>,
}

impl Stream for RequestBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(chunks) = self.chunks.as_mut() else {
            return Poll::Ready(None);
        };
        let next = chunks.poll_next_unpin(cx);
        if let Poll::Ready(None | Some(Err(_))) = next {
            self.chunks = None;
        }
        next
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(mut chunks) = self.chunks.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut discarded = 0u64;
                let _ = tokio::time::timeout(LINGER_TIME, async {
                    while let Some(Ok(chunk)) = chunks.next().await {
                        discarded += chunk.len() as u64;
                        if discarded > LINGER_BYTES {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    }
}

/// An I/O stream whose writes fail after making no progress for a while.
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write is pending; cleared when one goes through.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled_since: None,
        }
    }

    /// Called when a write is pending: arms the timer, or fails once it has run out.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for write_timeout_secs",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(
        &mut self,
        ready: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match ready {
            Poll::Ready(result) => {
                self.stalled_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stall(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ready = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(ready, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let ready = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(ready, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ready = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(ready, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ready = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(ready, cx)
    }
}
