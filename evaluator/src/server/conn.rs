//! Connection hygiene: how long a client may take to send headers and bodies, how long an idle
//! connection stays open, how dead HTTP/2 peers are found, and how many connections are served.
//!
//! - Headers (HTTP/1.1): hyper closes a connection whose request headers are not complete within
//!   `header_read_timeout`.
//! - Bodies: a request body not complete within `body_read_timeout` of its headers fails; the
//!   request is answered with an error and, on HTTP/1.1, the connection closes.
//! - Idle: a connection with no request in flight for `idle_timeout` is closed gracefully (HTTP/1.1:
//!   closed between requests; HTTP/2: GOAWAY). This covers connections that never send a byte.
//! - HTTP/2 keep-alive: a PING every `keepalive_interval`; a peer that does not answer within
//!   `keepalive_timeout` is disconnected.
//! - `max_connections`: connections beyond the cap are closed as soon as they are accepted and
//!   counted in `pbflags_connections_rejected_total`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::time::{Instant, Sleep};

/// The connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a complete set of HTTP/1.1 request headers.
    pub header_read_timeout: Duration,
    /// Longest wait for a complete request body, from the request's arrival.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Duration,
    /// How long an HTTP/2 PING may go unanswered.
    pub keepalive_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
        }
    }
}

/// The requests in flight on one connection; [`Activity::idle`] resolves once none has been for
/// the given time. A request costs two atomic operations and a clock read: the idle wait checks
/// the counts when its timer fires instead of being woken by every request.
#[derive(Clone)]
pub(crate) struct Activity(Arc<ActivityState>);

pub(crate) struct ActivityState {
    in_flight: AtomicUsize,
    /// When the connection was accepted.
    start: Instant,
    /// When the last request ended, in milliseconds since `start`.
    last_end_ms: AtomicU64,
}

impl ActivityState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One request in flight; dropped when its response body is done (or dropped).
pub(crate) struct InFlight(Arc<ActivityState>);

impl Activity {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ActivityState {
            in_flight: AtomicUsize::new(0),
            start: Instant::now(),
            last_end_ms: AtomicU64::new(0),
        }))
    }

    /// Marks a request as started.
    pub(crate) fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.0.clone())
    }

    /// Resolves once no request has been in flight for `idle`; any request starting or ending
    /// restarts the wait.
    pub(crate) async fn idle(&self, idle: Duration) {
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            if self.0.in_flight.load(Ordering::Acquire) > 0 {
                wait = idle;
                continue;
            }
            let last = self.0.last_end_ms.load(Ordering::Acquire);
            let quiet = Duration::from_millis(self.0.now_ms().saturating_sub(last));
            if quiet >= idle {
                return;
            }
            wait = idle - quiet;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The end time first: whoever sees the count drop sees when it dropped.
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request body failed to arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails once its deadline passes. The timer is only created if the body is
/// not already complete on the first poll, so buffered bodies cost nothing.
pub(crate) struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Instant::now() + limit,
            limit,
            sleep: None,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Attaches `guard` to `body`: it is dropped when the body is.
pub(crate) fn hold_until_sent(body: axum::body::Body, guard: InFlight) -> axum::body::Body {
    axum::body::Body::new(body.map_frame(move |frame| {
        let _ = &guard;
        frame
    }))
}

/// Applies the settings hyper enforces itself to a connection builder.
pub(crate) fn configure(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_requests_to_finish_and_restarts_on_activity() {
        let a = Activity::new();
        let idle = Duration::from_secs(10);
        let r = a.begin();
        // Busy: never idle, however long.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), a.idle(idle))
                .await
                .is_err()
        );
        drop(r);
        let start = Instant::now();
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.idle(idle).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(a.begin()); // a request at t=5 restarts the wait
        waiter.await.expect("no panic");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        let (mut tx, body) = tokio_body();
        let mut b = DeadlineBody::new(body, Duration::from_secs(3));
        tx.send(Bytes::from_static(b"ab")).await;
        let first = b.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "ab");
        let err = b.frame().await.expect("frame").expect_err("deadline");
        assert!(err.to_string().contains("within 3s"), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_never_starts_a_timer() {
        let mut b = DeadlineBody::new(
            http_body_util::Full::new(Bytes::from_static(b"x")),
            Duration::from_secs(1),
        );
        let frame = b.frame().await.expect("frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), "x");
        assert!(b.frame().await.is_none());
        assert!(b.sleep.is_none());
    }

    /// A body fed through a channel, one chunk at a time.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);
    struct Sender(tokio::sync::mpsc::Sender<Bytes>);

    impl Sender {
        async fn send(&mut self, b: Bytes) {
            self.0.send(b).await.expect("receiver alive");
        }
    }

    fn tokio_body() -> (Sender, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (Sender(tx), ChannelBody(rx))
    }

    impl HttpBody for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }
}
