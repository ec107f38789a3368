//! The per-request pipeline, in phases:
//!
//! 1. validate: reject what no correct proxy should forward (400);
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
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::forward::{Origin, forward};
use super::headers::{X_REQUEST_ID, ensure_request_id};
use super::observe::{AccessFields, RequestRecord};
use super::responses::LocalReply;
use super::upgrade::{self, UpgradeRequest, UpgradeResult};
use super::{ConnInfo, Proxy};
use crate::metrics::route_values;
use crate::routes::Route;

pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut exchange = Exchange {
        start: Instant::now(),
        route: None,
        request_id: None,
        access: None,
    };
    let authority = request_authority(&request);
    if proxy.config.access_log {
        exchange.access = Some(Box::new(AccessFields {
            method: request.method().clone(),
            host: authority.clone().unwrap_or_default(),
            path: request.uri().path().to_string(),
            client: conn.remote,
            request_id: None,
            upstream: None,
        }));
    }

    // 1. validate
    let upgrade = upgrade::classify(request.version(), request.headers());
    if let UpgradeRequest::Invalid(why) = upgrade {
        return Ok(exchange.local(&proxy, LocalReply::BadRequest(why)));
    }
    if request.method() == Method::CONNECT {
        return Ok(exchange.local(&proxy, LocalReply::BadRequest("CONNECT is not supported")));
    }
    let Some(authority) = authority else {
        return Ok(exchange.local(&proxy, LocalReply::BadRequest("missing Host header")));
    };

    // 2. route: the table is read once; a swap from here on changes nothing
    // for this request.
    let Some(route) = proxy
        .routes
        .load()
        .lookup(&authority, request.uri().path())
        .cloned()
    else {
        return Ok(exchange.local(&proxy, LocalReply::NoRoute));
    };
    exchange.route = Some(route.clone());

    // 3. policy
    let protocols = match upgrade {
        UpgradeRequest::Protocols(requested) => {
            let allowed: Vec<String> = requested
                .into_iter()
                .filter(|p| route.allows_upgrade(p))
                .collect();
            if allowed.is_empty() {
                // Forwarded as a plain request: the upgrade headers are
                // hop-by-hop and do not reach the backend.
                upgrade::count(&proxy, &route, UpgradeResult::NotAllowed);
            }
            allowed
        }
        _ => Vec::new(),
    };

    // 4. endpoint
    let Some(endpoint) = route.backend.pick() else {
        return Ok(exchange.local(&proxy, LocalReply::NoEndpoints));
    };
    if let Some(access) = exchange.access.as_mut() {
        access.upstream = Some(endpoint);
    }
    exchange.request_id = Some(ensure_request_id(request.headers_mut()));

    // 5. forward or upgrade
    let origin = Origin {
        client: conn.remote.ip(),
        authority: &authority,
    };
    let result = if protocols.is_empty() {
        forward(&proxy, endpoint, request, &origin).await
    } else {
        upgrade::upgrade(&proxy, &conn, &route, endpoint, request, protocols, &origin).await
    };

    // 6. respond
    match result {
        Ok(response) => Ok(exchange.respond(&proxy, response)),
        Err(error) => {
            let [ns, ingress, service] = route_values(&route.labels);
            if error.is_connect() {
                proxy
                    .metrics
                    .upstream_connect_errors
                    .with_label_values(&[ns, ingress, service])
                    .inc();
            }
            if error.is_timeout() {
                proxy
                    .metrics
                    .upstream_timeouts
                    .with_label_values(&[ns, ingress, service])
                    .inc();
            }
            tracing::debug!(%endpoint, %error, "upstream request failed");
            Ok(exchange.local(&proxy, error.reply()))
        }
    }
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form)
/// or the `Host` header.
fn request_authority(request: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
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
        response.map(|body| body.with_record(record))
    }
}
