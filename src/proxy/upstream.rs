//! Talking to backends: opening connections (kept alive by
//! [`super::pool`] for ordinary requests, dedicated for upgrades), the
//! classification of failures into the answer the client gets, when a
//! failed attempt is tried again on another endpoint, and what each
//! attempt tells passive health.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Method;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;

use super::Proxy;
use super::body::{BodyProgress, BodyReadTimeout, ClientBodyError};
use super::h1::ExchangeError;
use super::responses::LocalReply;
use super::timer::{self, Purpose, ReusedSleep};
use crate::metrics::route_values;
use crate::routes::passive_health::{Ejection, EndpointHealth};
use crate::routes::{Backend, Pick, Route};

/// Opens a connection to a backend: for the pool, or for an upgrade (never
/// pooled, so released the moment its exchange ends).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    match timer::timeout(Purpose::Connect, timeout, TcpStream::connect(addr)).await {
        None => Err(UpstreamError::ConnectTimeout),
        Some(Err(e)) => Err(UpstreamError::Connect(e)),
        Some(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

pin_project! {
    /// Waits for `response` (a backend's response head) as long as the
    /// backend is what holds it up: `timeout` from the start, or from the
    /// last frame of the request body the backend took (`progress`), not
    /// counting the time the body waits for the client. `None` when that
    /// time ran out.
    ///
    /// A future of its own rather than an `async fn`: pinning an argument
    /// inside an `async fn` keeps it twice in the state, and the exchange
    /// it waits for is most of every request's future.
    pub struct WithinResponseTimeout<'a, F> {
        #[pin]
        response: F,
        sleep: ReusedSleep,
        timeout: Duration,
        progress: Option<&'a BodyProgress>,
    }
}

pub fn within_response_timeout<F: Future>(
    response: F,
    timeout: Duration,
    progress: Option<&BodyProgress>,
) -> WithinResponseTimeout<'_, F> {
    WithinResponseTimeout {
        response,
        sleep: timer::sleep_until(
            Purpose::Response,
            tokio::time::Instant::now().into_std() + timeout,
        ),
        timeout,
        progress,
    }
}

impl<F: Future> Future for WithinResponseTimeout<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.response.poll(cx) {
            return Poll::Ready(Some(output));
        }
        loop {
            ready!(Pin::new(&mut *this.sleep).poll(cx));
            let now = std::time::Instant::now();
            let next = match this.progress.map(|p| p.backend_deadline(*this.timeout)) {
                // No body: the time is up.
                None => return Poll::Ready(None),
                // The client's body read timeout applies meanwhile.
                Some(None) => now + *this.timeout,
                Some(Some(deadline)) if deadline > now => deadline,
                Some(Some(_)) => return Poll::Ready(None),
            };
            this.sleep.reset(next);
        }
    }
}

/// At most this many attempts per request, whatever the number of
/// endpoints: with every endpoint down, a request costs at most three
/// connects (and three connect timeouts at worst) before it is answered.
pub const MAX_ATTEMPTS: usize = 3;

/// Whether a request may be sent again after a failed attempt: its method
/// is idempotent (RFC 9110: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
/// `DELETE`) and it has no body (or an empty one), so nothing is lost by
/// sending it twice and there is nothing to replay. Never a `POST`.
pub fn may_retry(method: &Method, bodiless: bool) -> bool {
    bodiless && method.is_idempotent()
}

/// The endpoints one request has tried, and whether it may try another:
/// at most [`MAX_ATTEMPTS`] attempts, never more than the route has
/// endpoints, each on a different endpoint, and only for a request
/// [`may_retry`] allows after a failure [`UpstreamError::is_retryable`].
pub struct Attempts {
    tried: [usize; MAX_ATTEMPTS],
    count: usize,
    limit: usize,
}

impl Attempts {
    pub fn new(backend: &Backend, first: Pick, retryable: bool) -> Self {
        let mut tried = [0; MAX_ATTEMPTS];
        tried[0] = first.index;
        let limit = if retryable {
            backend.endpoints().len().clamp(1, MAX_ATTEMPTS)
        } else {
            1
        };
        Self {
            tried,
            count: 1,
            limit,
        }
    }

    /// Whether the attempt under way is the last one allowed.
    fn is_last(&self) -> bool {
        self.count >= self.limit
    }

    /// The endpoint of the next attempt after one failed with `error`,
    /// or `None` when the request is answered with that error.
    pub fn retry(&mut self, backend: &Backend, error: &UpstreamError) -> Option<Pick> {
        if self.is_last() || !error.is_retryable() {
            return None;
        }
        let next = backend.pick_retry(&self.tried[..self.count])?;
        self.tried[self.count] = next.index;
        self.count += 1;
        Some(next)
    }
}

/// Books one attempt on `endpoint`: the failure metrics, and the
/// endpoint's passive health (which may eject it; see
/// [`crate::routes::passive_health`]).
pub fn record_attempt(
    proxy: &Proxy,
    route: &Route,
    endpoint: Pick,
    outcome: Result<(), &UpstreamError>,
) {
    let health = route.backend.health(endpoint);
    let Err(error) = outcome else {
        health.record_success();
        return;
    };
    let labels = route_values(&route.labels);
    if error.is_connect() {
        proxy
            .metrics
            .upstream_connect_errors
            .with_label_values(&labels)
            .inc();
    }
    if error.is_timeout() {
        proxy
            .metrics
            .upstream_timeouts
            .with_label_values(&labels)
            .inc();
    }
    tracing::debug!(endpoint = %endpoint.addr, %error, "upstream attempt failed");
    if !error.is_endpoint_failure() {
        return;
    }
    if let Some(ejection) = health.record_failure(&proxy.config.passive_health) {
        eject(proxy, route, endpoint.addr, health.clone(), ejection);
    }
}

/// Counts an ejection, and ends it when its time is up. The gauge is
/// raised and lowered with the labels of the route whose request caused
/// the ejection, even if other routes share the endpoint.
fn eject(
    proxy: &Proxy,
    route: &Route,
    endpoint: SocketAddr,
    health: Arc<EndpointHealth>,
    ejection: Ejection,
) {
    let labels = route_values(&route.labels);
    proxy
        .metrics
        .upstream_ejections
        .with_label_values(&labels)
        .inc();
    let ejected = proxy
        .metrics
        .upstream_ejected_endpoints
        .with_label_values(&labels);
    ejected.inc();
    tracing::warn!(
        %endpoint,
        namespace = labels[0],
        ingress = labels[1],
        service = labels[2],
        seconds = ejection.duration.as_secs_f64(),
        "endpoint keeps failing: out of rotation for a while"
    );
    // The route's series are held until the ejection ends: were they
    // removed meanwhile (the last route of these labels gone) and made
    // again, the gauge would show 0 for an endpoint still out.
    let series = route.metrics.clone();
    // Not a shutdown-tracked task: draining must not wait for a back-off.
    tokio::spawn(async move {
        tokio::time::sleep(ejection.duration).await;
        if health.end_ejection(ejection) {
            ejected.dec();
            tracing::info!(%endpoint, "endpoint back in rotation, on probation");
        }
        drop(series);
    });
}

/// Why a backend exchange failed before a response head arrived.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(io::Error),
    ConnectTimeout,
    ResponseTimeout,
    ClientBodyTimeout,
    /// The request could not be sent for a reason on this side: the
    /// client's body failed (the client went away mid-upload), ..., or
    /// what this request asked for (a backend that switched protocols
    /// before its body was sent): not the endpoint's failure.
    Local(Box<dyn StdError + Send + Sync>),
    /// The backend closed or reset the connection, or sent something that
    /// is not HTTP, before its response head.
    Other(Box<dyn StdError + Send + Sync>),
    /// The backend answered 101 with a switch nobody offered it: to a
    /// request that asked for none, to a protocol the client did not ask
    /// for, or without `Connection: upgrade` or HTTP/1.1. The endpoint's
    /// failure: no client can cause it.
    SwitchNotOffered,
}

impl UpstreamError {
    /// A request whose `Content-Length` is not one number: refused as the
    /// client's fault before anything is sent.
    pub fn invalid_content_length() -> Self {
        Self::Local(Box::new(ClientBodyError::new("invalid Content-Length")))
    }

    pub fn reply(&self) -> LocalReply {
        match self {
            Self::Connect(_) => LocalReply::UpstreamConnect,
            Self::ConnectTimeout | Self::ResponseTimeout => LocalReply::UpstreamTimeout,
            Self::ClientBodyTimeout => LocalReply::BodyTimeout,
            Self::Local(_) | Self::Other(_) => LocalReply::UpstreamFailed,
            Self::SwitchNotOffered => LocalReply::UpgradeMismatch,
        }
    }

    /// Whether the endpoint is to blame (for passive health): not when the
    /// client or this side made the exchange fail.
    pub fn is_endpoint_failure(&self) -> bool {
        !matches!(self, Self::ClientBodyTimeout | Self::Local(_))
    }

    /// Whether another endpoint may be tried (for a request that
    /// [`may_retry`]): after a failed connect (nothing was sent), or a
    /// close or reset before the response head. Not after a response
    /// timeout: the backend may still be working on it, and trying again
    /// would add load to a slow service and make the client wait twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::ConnectTimeout | Self::Other(_)
        )
    }

    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout)
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout | Self::ResponseTimeout)
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::ResponseTimeout => f.write_str("response timed out"),
            Self::ClientBodyTimeout => f.write_str("client request body timed out"),
            Self::Local(e) | Self::Other(e) => write!(f, "{e}"),
            Self::SwitchNotOffered => f.write_str("the backend switched protocols unasked"),
        }
    }
}

impl From<ExchangeError> for UpstreamError {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Stalled => Self::ResponseTimeout,
            ExchangeError::Body(e) if e.is::<BodyReadTimeout>() => Self::ClientBodyTimeout,
            // The body's errors are `ClientBodyError`s already.
            ExchangeError::Body(e) => Self::Local(e),
            ExchangeError::BodyLength => Self::Local(Box::new(ClientBodyError::new(error))),
            other => Self::Other(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connect_that_waits_times_it_with_a_timer_from_the_stock() {
        // A fresh timer would cost an eventfd write whenever it is the
        // runtime's earliest (see `timer`): the connect timeout is.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let before = timer::stocked_for(Purpose::Connect);
        let first = connect(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            timer::stocked_for(Purpose::Connect),
            before + 1,
            "the first connect's timer went to stock"
        );
        let second = connect(addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            timer::stocked_for(Purpose::Connect),
            before + 1,
            "the second connect took that timer and gave it back"
        );
        drop((first, second));
    }

    #[tokio::test]
    async fn a_backend_that_never_completes_the_handshake_is_a_connect_timeout() {
        // A listening socket that accepts nothing, with the shortest
        // accept queue: once it is full the kernel drops new handshakes,
        // so a connect there waits until something gives up.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
        {
            queued.push(stream);
            assert!(queued.len() < 16, "the accept queue never filled");
        }

        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            connect(addr, Duration::from_millis(100)),
        )
        .await
        .expect("the connect gave up by its own timeout");
        assert!(
            matches!(connected, Err(UpstreamError::ConnectTimeout)),
            "{connected:?}"
        );
    }
}
