//! Ordinary (non-upgrade) requests: rewrite for the backend, send through
//! the keep-alive pool, relay the answer.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::Proxy;
use super::body::{ResponseBody, TimeoutBody};
use super::headers::{set_forwarded, strip_hop_by_hop};
use super::upstream::UpstreamError;

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

pub async fn forward(
    proxy: &Proxy,
    endpoint: SocketAddr,
    request: Request<Incoming>,
    origin: &Origin<'_>,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let (mut parts, body) = request.into_parts();
    prepare_headers(&mut parts, origin);
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(endpoint.to_string())
        .path_and_query(path_and_query(&parts.uri))
        .build()
        .expect("socket address and path form a valid URI");
    let request = Request::from_parts(
        parts,
        TimeoutBody::new(body, proxy.config.body_read_timeout),
    );

    let response = tokio::time::timeout(
        proxy.config.upstream_response_timeout,
        proxy.client.request(request),
    )
    .await
    .map_err(|_| UpstreamError::ResponseTimeout)?
    .map_err(UpstreamError::from_client)?;
    Ok(relay(response))
}

/// A backend response on its way to the client, hop-by-hop headers removed.
pub fn relay(response: Response<Incoming>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, ResponseBody::upstream(body))
}
