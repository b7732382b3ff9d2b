//! A request body that must arrive whole before a deadline, and that is read to its end even
//! when its handler answers without it.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What is read and dropped of a body its handler left unread, after the handler let go of it.
/// Past this the connection is closed with the rest unread (and the client may see a reset
/// instead of the answer).
pub const DRAIN_LIMIT: usize = 256 << 20;

/// The body of a request as handlers see it: the client's bytes, or an error once
/// `body_timeout` has passed since the request began (a client that stalls or drips its body
/// holds a connection for that long at most).
///
/// A handler that answers without reading the whole body (a 415, a 401, a 404, a size limit,
/// a proxy's early answer from upstream) drops it unread. Closing a socket with unread bytes
/// makes the kernel send a reset, which can destroy the answer before the client reads it: a
/// client that writes its whole body before reading (most do; the proxy forwarding to an
/// aggregator does) then sees a broken connection, not the 4xx, and retries what can never
/// succeed. So a body dropped unread is read to its end and discarded in the background, within
/// the same deadline and at most [`DRAIN_LIMIT`] bytes; the answer arrives whole and the
/// connection stays usable.
pub struct TimedBody {
    /// `None` once handed to the drain.
    inner: Option<Incoming>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
    /// The handler asked for a frame (and so, under `Expect: 100-continue`, the client was told
    /// to send the body).
    polled: bool,
    /// The end of the body, or an error, was seen: nothing is left to drain.
    finished: bool,
}

impl TimedBody {
    pub fn new(inner: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            timeout,
            expects_continue: false,
            polled: false,
            finished: false,
        }
    }

    /// Marks the request as sent with `Expect: 100-continue`: if the handler answers without
    /// ever reading the body, the body is not drained, since reading it would make the server
    /// send `100 Continue` after the final answer. The client, still waiting for the go-ahead,
    /// has not sent it.
    pub fn expecting_continue(mut self, expects: bool) -> TimedBody {
        self.expects_continue = expects;
        self
    }

    fn drains_on_drop(&self) -> bool {
        let unread = self.inner.as_ref().is_some_and(|b| !b.is_end_stream());
        unread && !self.finished && (self.polled || !self.expects_continue)
    }
}

/// The body did not arrive in time.
#[derive(Debug)]
pub struct BodyTimeout(Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within body_timeout ({:?})", self.0)
    }
}

impl std::error::Error for BodyTimeout {}

/// True when `error`, or any error it was caused by, is a [`TimedBody`] that ran out of time:
/// the client was too slow (408), not the server nor the network.
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cause = e.source();
    }
    false
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) {
                this.finished = true;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.finished = true;
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if !self.drains_on_drop() {
            return;
        }
        let (Some(body), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) else { return };
        runtime.spawn(drain(body, self.deadline.deadline()));
    }
}

/// Reads `body` to its end and drops it, until `deadline` or [`DRAIN_LIMIT`] bytes; the
/// connection then goes on to its next request (or closes, if the body did not end).
async fn drain(mut body: Incoming, deadline: Instant) {
    let mut left = DRAIN_LIMIT;
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let Some(rest) = left.checked_sub(data.len()) else { return };
                left = rest;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, read).await;
}
