//! Ordinary (non-upgrade) requests: rewrite for the backend, send through
//! the keep-alive pool, try another endpoint when an attempt fails and the
//! request allows it, relay the answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Body, Incoming};

use super::Proxy;
use super::body::{BodyProgress, ResponseBody, TimeoutBody, UpstreamBody};
use super::headers::{set_forwarded, strip_hop_by_hop};
use super::upstream::{self, Attempts, UpstreamError, may_retry, record_attempt};
use crate::routes::{Pick, Route};

/// What the backend is told about where a request came from.
pub struct Origin<'a> {
    pub client: IpAddr,
    /// The request's authority as the client sent it (port included).
    pub authority: &'a str,
}

/// Rewrites request headers for the backend: hop-by-hop headers removed,
/// `Host` set to what the client asked for (HTTP/2 carries it in
/// `:authority`), forwarding headers set.
pub fn prepare_headers(parts: &mut http::request::Parts, origin: &Origin<'_>) {
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(host) = HeaderValue::from_str(origin.authority) {
        parts.headers.insert(header::HOST, host);
    }
    set_forwarded(&mut parts.headers, origin.client, origin.authority, "http");
    parts.version = Version::HTTP_11;
}

pub fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Forwards `request` to `first`, and on a failure that allows it to
/// other endpoints of the route (see [`Attempts`]). Returns the endpoint
/// of the last attempt with its result.
pub async fn forward(
    proxy: &Proxy,
    route: &Route,
    first: Pick,
    request: Request<Incoming>,
    origin: &Origin<'_>,
) -> (SocketAddr, Result<Response<ResponseBody>, UpstreamError>) {
    let (mut parts, body) = request.into_parts();
    prepare_headers(&mut parts, origin);
    let path = path_and_query(&parts.uri);
    let bodiless = body.is_end_stream();
    let mut attempts = Attempts::new(&route.backend, first, may_retry(&parts.method, bodiless));
    // A body is sent once: a request with one is never retried.
    let (mut streamed, progress) = if bodiless {
        (None, None)
    } else {
        let progress = Arc::new(BodyProgress::default());
        let body =
            TimeoutBody::new(body, proxy.config.body_read_timeout).with_progress(progress.clone());
        (Some(UpstreamBody::Streamed(body)), Some(progress))
    };

    let mut head = Some(parts);
    let mut endpoint = first;
    loop {
        // Only a request that may be sent again costs a copy of its head.
        let mut parts = if attempts.is_last() {
            head.take().expect("the last attempt takes the head")
        } else {
            copy_head(head.as_ref().expect("the head is kept for retries"))
        };
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.addr.to_string())
            .path_and_query(path.clone())
            .build()
            .expect("socket address and path form a valid URI");
        let body = streamed.take().unwrap_or(UpstreamBody::Empty);
        let result = send(proxy, Request::from_parts(parts, body), progress.as_deref()).await;
        record_attempt(proxy, route, endpoint, result.as_ref().map(|_| ()));
        match result {
            Ok(response) => return (endpoint.addr, Ok(relay(response))),
            Err(error) => match attempts.retry(&route.backend, &error) {
                Some(next) => endpoint = next,
                None => return (endpoint.addr, Err(error)),
            },
        }
    }
}

async fn send(
    proxy: &Proxy,
    request: Request<UpstreamBody>,
    progress: Option<&BodyProgress>,
) -> Result<Response<Incoming>, UpstreamError> {
    upstream::within_response_timeout(
        proxy.client.request(request),
        proxy.config.upstream_response_timeout,
        progress,
    )
    .await
    .ok_or(UpstreamError::ResponseTimeout)?
    .map_err(UpstreamError::from_client)
}

/// The head of a request, for another attempt (extensions are not sent to
/// a backend, and are left out).
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// A backend response on its way to the client, hop-by-hop headers removed.
pub fn relay(response: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ResponseBody::upstream(body))
}
