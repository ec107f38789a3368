//! Bodies on the way through: request bodies with a read timeout (and a
//! record of whether the backend or the client holds them up), and the
//! response body that records the exchange (metrics and access log) when
//! it has been sent or abandoned.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::client_body::ClientBody;
use super::h1::BackendBody;
use super::observe::RequestRecord;
use super::stall::StallTimer;

/// A client that stops sending its request body for longer than this is cut off.
#[derive(Debug)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body read timed out")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// The client's request body failed: malformed chunked framing (an invalid
/// chunk size, a bare LF, ...) or a client gone mid-body. Marked so that
/// the answer blames the client (400), not the backend (502).
#[derive(Debug)]
pub struct ClientBodyError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body could not be read: {}", self.0)
    }
}

impl ClientBodyError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `error` was caused by the client's request body failing.
pub fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<ClientBodyError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Who a request body on its way to a backend is waiting for, so that the
/// wait for the response only counts the time the *backend* holds things
/// up: a backend that stops taking the body times out like one that never
/// answers, while a large upload that the client sends slowly does not.
///
/// The body marks every frame it hands on (the backend took the previous
/// one) and every time it waits for the client. This relies on hyper's
/// HTTP/1 client polling the body again as soon as the client's data is
/// there, which it does as long as its write buffer has room: the buffer
/// only shrinks between two polls.
#[derive(Debug)]
pub struct BodyProgress {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last frame handed on, with
    /// [`WAITING_ON_CLIENT`] set while the client is the one waited for.
    state: AtomicU64,
}

const WAITING_ON_CLIENT: u64 = 1 << 63;

impl Default for BodyProgress {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            state: AtomicU64::new(0),
        }
    }
}

impl BodyProgress {
    fn frame_handed_on(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(WAITING_ON_CLIENT - 1);
        self.state.store(ms, Ordering::Relaxed);
    }

    fn waiting_on_client(&self) {
        self.state.fetch_or(WAITING_ON_CLIENT, Ordering::Relaxed);
    }

    /// When a backend that has held things up since the last frame would
    /// time out; `None` while the body is waiting for the client (which
    /// the body read timeout governs).
    pub fn backend_deadline(&self, timeout: Duration) -> Option<Instant> {
        let state = self.state.load(Ordering::Relaxed);
        (state & WAITING_ON_CLIENT == 0)
            .then(|| self.epoch + Duration::from_millis(state) + timeout)
    }
}

/// A request body that fails with [`BodyReadTimeout`] when no frame arrives
/// for `timeout`, and with [`ClientBodyError`] when the body itself fails.
pub struct TimeoutBody<B> {
    inner: B,
    stall: StallTimer,
    progress: Option<Arc<BodyProgress>>,
}

impl<B> TimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            stall: StallTimer::new(timeout),
            progress: None,
        }
    }

    /// Reports to `progress` who the body is waiting for.
    pub fn with_progress(mut self, progress: Arc<BodyProgress>) -> Self {
        self.progress = Some(progress);
        self
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.stall.progress();
            if let Some(progress) = &this.progress {
                progress.frame_handed_on();
            }
            return Poll::Ready(
                frame.map(|r| r.map_err(|e| Box::new(ClientBodyError(e.into())) as Self::Error)),
            );
        }
        if let Some(progress) = &this.progress {
            progress.waiting_on_client();
        }
        ready!(this.stall.poll_stalled(cx));
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a request sent through the backend pool: none (a request
/// without a body, which can be sent again), or the client's, streamed.
pub enum UpstreamBody {
    Empty,
    Streamed(TimeoutBody<ClientBody>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Streamed(body) => body.size_hint(),
        }
    }
}

/// A backend stopped sending its response body part-way, for longer than
/// the response timeout: the client gets a cut-off response (the
/// connection is closed, as for any body that fails).
#[derive(Debug)]
pub struct BackendBodyStalled;

impl std::fmt::Display for BackendBodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the backend stopped sending its response body")
    }
}

impl std::error::Error for BackendBodyStalled {}

/// A backend's response body on its way, with the longest the backend
/// may pause between two frames. (The body itself gives its connection
/// back to the pool at its end.)
struct FromBackend {
    body: BackendBody,
    stall: StallTimer,
}

impl FromBackend {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            self.stall.progress();
            return Poll::Ready(frame);
        }
        ready!(self.stall.poll_stalled(cx));
        Poll::Ready(Some(Err(Box::new(BackendBodyStalled))))
    }
}

/// The error of every body on the way through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

enum Inner {
    Upstream(FromBackend),
    Full(Option<Bytes>),
}

/// The body of every response switchyard sends: a backend's, or one of
/// its own. Carries the [`RequestRecord`], finished at the end of the body
/// or when the client goes away.
pub struct ResponseBody {
    inner: Inner,
    record: Option<RequestRecord>,
}

impl ResponseBody {
    /// A backend's body; `stall_limit` is the longest the backend may
    /// pause between two frames.
    pub fn upstream(body: BackendBody, stall_limit: Duration) -> Self {
        Self {
            inner: Inner::Upstream(FromBackend {
                body,
                stall: StallTimer::new(stall_limit),
            }),
            record: None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
            record: None,
        }
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Set where the body is: taking the response apart and putting it
    /// back would move all of it twice.
    pub fn set_record(&mut self, record: RequestRecord) {
        self.record = Some(record);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Upstream(from) => ready!(from.poll_frame(cx)),
            Inner::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(record)) = (f.data_ref(), this.record.as_mut()) {
                    record.add_body_bytes(data.len());
                }
            }
            Some(Err(error)) => {
                if let Some(record) = this.record.as_mut() {
                    record.mark_truncated();
                    if error.is::<BackendBodyStalled>() {
                        record.count_upstream_timeout();
                    }
                }
                this.record = None;
            }
            None => this.record = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(from) => from.body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(from) => from.body.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
