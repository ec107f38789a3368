//! The per-request pipeline, in phases:
//!
//! 1. validate: reject what no correct proxy should forward (400). hyper's
//!    parser has refused most malformed heads before this point, answering
//!    400 (or 431 for an oversized head) and closing; this phase refuses
//!    what it lets through;
//!    then the client address's request rate (429), before any lookup;
//! 2. route: look the host and path up in the table in force (404);
//! 3. policy: per-route policy applies here, before anything is sent
//!    (today: which upgrade protocols the route allows);
//! 4. pick an endpoint (503 when there is none);
//! 5. forward, or perform the upgrade handshake;
//! 6. respond, with a record that counts and logs the exchange when the
//!    response body is done.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, Version};

use super::body::{ResponseBody, client_body_failed};
use super::forward::forward;
use super::h1::ProxyFields;
use super::headers::{SeenFields, X_REQUEST_ID, request_id, tokens};
use super::observe::{AccessFields, RequestRecord};
use super::responses::LocalReply;
use super::upgrade::{self, UpgradeRequest};
use super::upstream::UpstreamError;
use super::{ClientRequest, ConnInfo, Proxy};
use crate::route_metrics::UpgradeResult;
use crate::routes::{Route, request_path};

pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    request: Box<ClientRequest>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut exchange = Exchange {
        start: Instant::now(),
        route: None,
        request_id: None,
        access: None,
    };
    let mut seen = SeenFields::of(request.headers());
    // Both forms, made once: the value is sent on as it is, and the text
    // (for validation, routing and the log) would otherwise be checked to
    // be a string again at each use.
    let authority_value = request_authority(&request, seen.host.take());
    let authority = authority_value.as_ref().and_then(|v| v.to_str().ok());
    if proxy.config.access_log {
        exchange.access = Some(Box::new(AccessFields {
            method: request.method().clone(),
            host: authority.unwrap_or_default().to_string(),
            path: request.uri().path().to_string(),
            client: conn.remote,
            request_id: None,
            upstream: None,
        }));
    }

    // 1. validate
    let upgrade = if seen.connection_may_upgrade || seen.upgrade {
        upgrade::classify(request.version(), request.headers())
    } else {
        UpgradeRequest::None
    };
    if let UpgradeRequest::Invalid(why) = upgrade {
        return Ok(exchange.local(&proxy, LocalReply::BadRequest(why)));
    }
    if let Err(why) = validate(&request, authority, &seen) {
        return Ok(exchange.local(&proxy, LocalReply::BadRequest(why)));
    }
    let (authority, authority_value) = match (authority, authority_value.as_ref()) {
        (Some(authority), Some(value)) => (authority, value),
        // Only HTTP/1.1 must name a host (RFC 9112 §3.2); an older request
        // without one has a target with no authority. It is routed by the
        // rules for any host (and the default backend), and sent on with
        // the empty `Host` RFC 9112 gives such a target.
        _ if no_host_field(&request) && request.version() < Version::HTTP_11 => ("", &HOSTLESS),
        _ if no_host_field(&request) => {
            return Ok(exchange.local(&proxy, LocalReply::BadRequest("missing Host header")));
        }
        // Named, but not as text.
        _ => return Ok(exchange.local(&proxy, LocalReply::BadRequest("invalid Host header"))),
    };
    if let Err(refusal) = proxy.client_limits.request(conn.remote.ip()) {
        proxy
            .metrics
            .client_limit_rejections
            .with_label_values(&[refusal.label()])
            .inc();
        return Ok(exchange.local(&proxy, LocalReply::TooManyRequests));
    }

    // 2. route: the table is read once; a swap from here on changes nothing
    // for this request. Matched as the path names a resource, forwarded
    // as it came (see `request_path`).
    let path = match request_path::for_matching(request.uri().path()) {
        Ok(path) => path,
        Err(refusal) => {
            return Ok(exchange.local(&proxy, LocalReply::BadRequest(refusal.reason())));
        }
    };
    let Some(route) = proxy.routes.load().lookup(authority, &path).cloned() else {
        return Ok(exchange.local(&proxy, LocalReply::NoRoute));
    };
    exchange.route = Some(route.clone());

    // 3. policy
    let offered = match upgrade {
        UpgradeRequest::Protocols(requested) => {
            let allowed = requested.allowed(|p| route.allows_upgrade(p));
            if allowed.is_none() {
                // Forwarded as a plain request: the upgrade headers are
                // hop-by-hop and do not reach the backend.
                upgrade::count(&proxy, &route, UpgradeResult::NotAllowed);
            }
            allowed
        }
        _ => None,
    };

    // 4. endpoint: round-robin, skipping endpoints passive health ejected
    let Some(endpoint) = route.backend.pick() else {
        return Ok(exchange.local(&proxy, LocalReply::NoEndpoints));
    };
    let request_id = request_id(seen.request_id.take());
    exchange.request_id = Some(request_id.clone());

    // 5. forward or upgrade; a failed attempt may go to another endpoint
    // (upstream::Attempts), and each one is counted as it ends
    let proxy_fields = ProxyFields {
        host: authority_value,
        forwarded_for: &conn.forwarded_for,
        forwarded_proto: "http",
        request_id: &request_id,
        upgrade: None,
    };
    let (endpoint, result) = if let Some(offered) = offered {
        // Boxed: the handshake's future is the larger one, and every
        // request's future would otherwise be as large as an upgrade's.
        super::boxed_in_place(|| {
            upgrade::upgrade(
                &proxy,
                &conn,
                &route,
                endpoint,
                request,
                offered,
                &proxy_fields,
            )
        })
        .await
    } else {
        forward(&proxy, &route, endpoint, request, &proxy_fields).await
    };
    if let Some(access) = exchange.access.as_mut() {
        access.upstream = Some(endpoint);
    }

    // 6. respond
    match result {
        Ok(response) => Ok(exchange.respond(&proxy, response)),
        // The client's body broke (an invalid chunk size, a bare LF in the
        // chunked framing, a client gone mid-body): the client's fault, and
        // the connection cannot be trusted further. The backend connection
        // was aborted before the request completed, so the backend never
        // saw a complete request.
        Err(error) if client_body_broke(&error) => {
            tracing::debug!(%endpoint, %error, "request body failed");
            Ok(exchange.local(
                &proxy,
                LocalReply::BadRequest("malformed or incomplete request body"),
            ))
        }
        Err(error) => {
            tracing::debug!(%endpoint, %error, "upstream request failed");
            Ok(exchange.local(&proxy, error.reply()))
        }
    }
}

/// Whether an exchange failed because the client's request body did.
fn client_body_broke(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Local(e) | UpstreamError::Other(e) => client_body_failed(e.as_ref()),
        _ => false,
    }
}

/// What hyper lets through that no careful proxy forwards (RFC 9112).
/// Every refusal is a 400 that closes the connection.
fn validate(
    request: &ClientRequest,
    authority: Option<&str>,
    seen: &SeenFields,
) -> Result<(), &'static str> {
    if request.method() == Method::CONNECT {
        return Err("CONNECT is not supported");
    }
    let http1 = matches!(
        request.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    // Absolute-form (`GET http://host/ HTTP/1.1`) and authority-form
    // targets are for forward proxies. A request naming a host in its
    // target and another in `Host` must not be routed by either.
    if http1 && request.uri().authority().is_some() {
        return Err("absolute-form request targets are not accepted");
    }
    if seen.hosts > 1 {
        return Err("more than one Host header");
    }
    if let Some(authority) = authority
        && (authority.contains('@') || authority.parse::<Authority>().is_err())
    {
        return Err("invalid Host header");
    }
    // hyper refuses a Transfer-Encoding whose last coding is not chunked
    // (`chunked, identity`, `xchunked`). The body is re-framed for the
    // backend, so any other coding listed before `chunked` would be dropped
    // silently on the way: only `chunked` alone is accepted. (RFC 9112
    // suggests 501 for a coding it does not know; these lists are framing
    // obfuscation far more often than real codings, so 400, and close.)
    if seen.transfer_encoding {
        let mut codings = tokens(request.headers(), &header::TRANSFER_ENCODING);
        let chunked_alone = matches!(
            (codings.next(), codings.next()),
            (Some(coding), None) if coding.eq_ignore_ascii_case("chunked")
        );
        if !chunked_alone {
            return Err("unsupported Transfer-Encoding");
        }
    }
    Ok(())
}

/// Whether `request` names no host in a `Host` field (read only when it
/// has no usable authority, which is rare).
fn no_host_field(request: &ClientRequest) -> bool {
    request
        .headers()
        .get(header::HOST)
        .is_none_or(HeaderValue::is_empty)
}

/// The `Host` sent on for a request whose target has no authority.
static HOSTLESS: HeaderValue = HeaderValue::from_static("");

/// The host a request is for: the URI's authority (HTTP/2) or the `Host`
/// header (`host`, the first one), as a header value (sent on as `Host`
/// and `X-Forwarded-Host` without a copy) that is known to be a non-empty
/// string.
fn request_authority(request: &ClientRequest, host: Option<HeaderValue>) -> Option<HeaderValue> {
    let value = match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok()?,
        None => host?,
    };
    value
        .to_str()
        .is_ok_and(|host| !host.is_empty())
        .then_some(value)
}

/// What is known about a request so far, for its record.
struct Exchange {
    start: Instant,
    route: Option<Arc<Route>>,
    request_id: Option<HeaderValue>,
    access: Option<Box<AccessFields>>,
}

impl Exchange {
    fn local(self, proxy: &Proxy, reply: LocalReply) -> Response<ResponseBody> {
        self.respond(proxy, reply.into_response())
    }

    fn respond(
        mut self,
        proxy: &Proxy,
        mut response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if let Some(id) = &self.request_id {
            response
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), id.clone());
        }
        if let Some(access) = self.access.as_mut() {
            access.request_id = self.request_id.take();
        }
        let record = RequestRecord::new(
            proxy.metrics.clone(),
            self.route,
            self.start,
            response.status(),
            self.access,
        );
        response.body_mut().set_record(record);
        response
    }
}
