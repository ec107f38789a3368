//! Ordinary (non-upgrade) requests: rewrite for the backend, send through
//! the keep-alive pool, try another endpoint when an attempt fails and the
//! request allows it, relay the answer.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Response, Uri, Version};
use hyper::body::Body;

use super::body::{BodyProgress, ResponseBody, TimeoutBody, UpstreamBody};
use super::client_body::ClientBody;
use super::h1::{BackendBody, Outgoing, ProxyFields, RequestFraming};
use super::headers::strip_hop_by_hop;
use super::upstream::{self, Attempts, UpstreamError, may_retry, record_attempt};
use super::{ClientRequest, Proxy, ProxyConfig};
use crate::routes::{Pick, Route};

/// Rewrites a request head for the backend: hop-by-hop headers removed,
/// HTTP/1.1. (`Host` and the forwarding headers are the encoder's: see
/// [`ProxyFields`].)
fn prepare_headers(request: &mut ClientRequest) {
    strip_hop_by_hop(request.headers_mut());
    *request.version_mut() = Version::HTTP_11;
}

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// A request taken apart for a backend, forwarded or upgraded alike:
/// headers rewritten ([`prepare_headers`]), its target in origin form, how
/// its body is framed, and the body when it has one.
pub struct ForBackend {
    /// The request without its body, in the box the pipeline was given it
    /// in: its head is read where it is, never moved.
    head: Box<ClientRequest>,
    target: PathAndQuery,
    framing: RequestFraming,
    pub body: Option<ClientBody>,
}

impl ForBackend {
    /// Fails on a `Content-Length` that is not a single number. Inlined:
    /// built in place in the caller's state rather than moved into it.
    #[inline(always)]
    pub fn new(mut head: Box<ClientRequest>) -> Result<Self, UpstreamError> {
        let body = head.body_mut().take();
        prepare_headers(&mut head);
        let target = path_and_query(head.uri());
        let bodiless = body.as_ref().is_none_or(Body::is_end_stream);
        let framing = RequestFraming::of(head.headers(), bodiless)
            .ok_or_else(UpstreamError::invalid_content_length)?;
        Ok(Self {
            head,
            target,
            framing,
            body: body.filter(|_| !bodiless),
        })
    }

    /// The request as the exchange writes it, with the fields the proxy
    /// sets.
    pub fn outgoing<'a>(&'a self, proxy_fields: &ProxyFields<'a>) -> Outgoing<'a> {
        Outgoing {
            method: self.head.method(),
            headers: self.head.headers(),
            target: &self.target,
            framing: self.framing,
            proxy_fields: *proxy_fields,
        }
    }
}

/// Forwards `request` to `first`, and on a failure that allows it to
/// other endpoints of the route (see [`Attempts`]). Returns the endpoint
/// of the last attempt with its result.
pub async fn forward(
    proxy: &Proxy,
    route: &Route,
    first: Pick,
    request: Box<ClientRequest>,
    proxy_fields: &ProxyFields<'_>,
) -> (SocketAddr, Result<Response<ResponseBody>, UpstreamError>) {
    let mut request = match ForBackend::new(request) {
        Ok(request) => request,
        Err(error) => return (first.addr, Err(error)),
    };
    let bodiless = request.body.is_none();
    let mut attempts = Attempts::new(
        &route.backend,
        first,
        may_retry(request.head.method(), bodiless),
    );
    // A body is sent once: a request with one is never retried.
    let (mut streamed, progress) = match request.body.take() {
        None => (None, None),
        Some(body) => {
            let progress = Arc::new(BodyProgress::default());
            let body = TimeoutBody::new(body, proxy.config.body_read_timeout)
                .with_progress(progress.clone());
            (Some(UpstreamBody::Streamed(body)), Some(progress))
        }
    };
    let outgoing = request.outgoing(proxy_fields);
    let mut endpoint = first;
    loop {
        let body = streamed.take().unwrap_or(UpstreamBody::Empty);
        let result = send(proxy, endpoint.addr, &outgoing, body, progress.as_deref()).await;
        record_attempt(proxy, route, endpoint, result.as_ref().map(|_| ()));
        match result {
            Ok(response) => return (endpoint.addr, Ok(relay(response, &proxy.config))),
            Err(error) => match attempts.retry(&route.backend, &error) {
                Some(next) => endpoint = next,
                None => return (endpoint.addr, Err(error)),
            },
        }
    }
}

async fn send(
    proxy: &Proxy,
    addr: SocketAddr,
    request: &Outgoing<'_>,
    body: UpstreamBody,
    progress: Option<&BodyProgress>,
) -> Result<Response<BackendBody>, UpstreamError> {
    let response = upstream::within_response_timeout(
        proxy.pool.send(addr, request, body),
        proxy.config.upstream_response_timeout,
        progress,
    )
    .await
    .ok_or(UpstreamError::ResponseTimeout)??;
    // Never asked for here (an upgrade goes by `upgrade`): a backend
    // switching on its own (to an h2c the route does not allow, from the
    // headers stripped) would be relayed as a 101 with no tunnel behind it.
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamError::SwitchNotOffered);
    }
    Ok(response)
}

/// A backend response on its way to the client, hop-by-hop headers
/// removed. The backend may pause its body for at most the response
/// timeout at a time.
pub fn relay(response: Response<BackendBody>, config: &ProxyConfig) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = ResponseBody::upstream(body, config.upstream_response_timeout);
    Response::from_parts(parts, body)
}
