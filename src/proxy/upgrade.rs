//! The upgrade handshake (WebSocket and any protocol a route allows).
//!
//! Until the 101 is sent to the client the exchange is ordinary HTTP: a
//! connect failure is a 502, a timeout a 504, and any answer other than 101
//! is relayed as a normal response with the client connection staying
//! HTTP. A 101 is only passed on when its `Upgrade` token is one the client
//! asked for; then both connections are handed to a [`Tunnel`], whose
//! outcome can only reach metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::body::Body;

use super::body::{ResponseBody, TimeoutBody, UpstreamBody};
use super::client_upgrade::ClientUpgrade;
use super::forward::{ForBackend, relay};
use super::h1::{BackendBody, Connection, ProxyFields, UpgradeOffer};
use super::headers::{connection_has, only_upgrade_hop_fields, tokens, value_tokens};
use super::tunnel::{Tunnel, TunnelEnd, TunnelOutcome};
use super::upstream::{self, Attempts, UpstreamError, may_retry, record_attempt};
use super::{ClientRequest, ConnInfo, Proxy};
use crate::busy_poll::Work;
use crate::route_metrics::UpgradeResult;
use crate::routes::{Pick, Route};

/// What a request asks for in the way of an upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeRequest {
    None,
    /// `Connection: upgrade` without `Upgrade`, or the reverse.
    Invalid(&'static str),
    Protocols(Requested),
}

/// The protocols a client asked to switch to: its `Upgrade` value as it
/// sent it (several fields joined into one), which is what goes to the
/// backend when the route allows them all. Kept as the value rather than
/// as a list of lower-cased tokens: the list, its strings and the value
/// made again from them were four allocations per upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct Requested(HeaderValue);

impl Requested {
    /// The protocol tokens, in the client's order and case.
    fn tokens(&self) -> impl Iterator<Item = &str> {
        value_tokens(&self.0)
    }

    /// What to offer the backend: the protocols `allows` lets through, or
    /// `None` when it lets none through.
    pub fn allowed(self, allows: impl Fn(&str) -> bool) -> Option<HeaderValue> {
        if self.tokens().all(&allows) {
            return Some(self.0);
        }
        let kept: Vec<&str> = self.tokens().filter(|p| allows(p)).collect();
        if kept.is_empty() {
            return None;
        }
        Some(HeaderValue::from_str(&kept.join(", ")).expect("tokens of a header value"))
    }
}

/// Reads a request's upgrade headers. Only HTTP/1.1 has upgrades; in
/// HTTP/1.0 the headers are hop-by-hop noise and are dropped like any other.
pub fn classify(version: Version, headers: &HeaderMap) -> UpgradeRequest {
    if version != Version::HTTP_11 {
        return UpgradeRequest::None;
    }
    let wants_upgrade = connection_has(headers, "upgrade");
    let mut values = headers.get_all(header::UPGRADE).iter();
    let requested = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(one), None) => value_tokens(one).next().is_some().then(|| one.clone()),
        (Some(_), Some(_)) => {
            let all: Vec<&str> = tokens(headers, &header::UPGRADE).collect();
            (!all.is_empty())
                .then(|| HeaderValue::from_str(&all.join(", ")).expect("tokens of a header value"))
        }
    };
    match (wants_upgrade, requested) {
        (false, None) => UpgradeRequest::None,
        (true, None) => UpgradeRequest::Invalid("Connection: upgrade without an Upgrade header"),
        (false, Some(_)) => UpgradeRequest::Invalid("Upgrade header without Connection: upgrade"),
        (true, Some(value)) => UpgradeRequest::Protocols(Requested(value)),
    }
}

/// The client's `HTTP2-Settings` for an offer of `h2c`: only a single one
/// that its `Connection` lists, as RFC 7540 section 3.2 asks of a request
/// a server may switch on.
fn h2c_settings(headers: &HeaderMap, offered: &HeaderValue) -> Option<HeaderValue> {
    if !value_tokens(offered).any(|p| p.eq_ignore_ascii_case("h2c")) {
        return None;
    }
    let mut values = headers.get_all(HTTP2_SETTINGS).iter();
    match (values.next(), values.next()) {
        (Some(one), None) if connection_has(headers, HTTP2_SETTINGS) => Some(one.clone()),
        _ => None,
    }
}

const HTTP2_SETTINGS: &str = "http2-settings";

pub fn count(proxy: &Proxy, route: &Route, result: UpgradeResult) {
    route
        .metrics
        .count_upgrade(&proxy.metrics, &route.labels, result);
}

/// Performs the handshake with the backend over a fresh connection to
/// `first`, or to other endpoints of the route when connecting fails and
/// the request allows it (see [`Attempts`]; once connected, the request is
/// spent). `offered` are the requested protocols the route allows (at
/// least one), as the request's `Upgrade` to the backend. Returns the
/// endpoint of the last attempt with its result.
pub async fn upgrade(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    route: &Arc<Route>,
    first: Pick,
    request: Box<ClientRequest>,
    offered: HeaderValue,
    proxy_fields: &ProxyFields<'_>,
) -> (SocketAddr, Result<Response<ResponseBody>, UpstreamError>) {
    let retryable = may_retry(
        request.method(),
        request.body().as_ref().is_none_or(Body::is_end_stream),
    );
    let mut attempts = Attempts::new(&route.backend, first, retryable);
    let mut endpoint = first;
    let connected = loop {
        match upstream::connect(endpoint.addr, proxy.config.upstream_connect_timeout).await {
            Ok(stream) => break Ok(stream),
            Err(error) => {
                record_attempt(proxy, route, endpoint, Err(&error));
                match attempts.retry(&route.backend, &error) {
                    Some(next) => endpoint = next,
                    None => break Err(error),
                }
            }
        }
    };
    let result = match connected {
        Ok(stream) => {
            // Never pooled: once this exchange is over (a relayed refusal,
            // a failed check, the tunnel's end) the connection closes.
            let backend = Connection::new(stream, endpoint.addr);
            let result =
                handshake(proxy, conn, route, backend, request, &offered, proxy_fields).await;
            record_attempt(proxy, route, endpoint, result.as_ref().map(|_| ()));
            result
        }
        Err(error) => Err(error),
    };
    let outcome = match &result {
        Ok((_, outcome)) => *outcome,
        Err(UpstreamError::SwitchNotOffered) => UpgradeResult::ProtocolMismatch,
        Err(e) if e.is_timeout() => UpgradeResult::Timeout,
        Err(e) if e.is_connect() => UpgradeResult::ConnectError,
        Err(_) => UpgradeResult::Failed,
    };
    count(proxy, route, outcome);
    (endpoint.addr, result.map(|(response, _)| response))
}

async fn handshake(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnInfo>,
    route: &Arc<Route>,
    mut backend: Box<Connection>,
    mut request: Box<ClientRequest>,
    offered: &HeaderValue,
    proxy_fields: &ProxyFields<'_>,
) -> Result<(Response<ResponseBody>, UpgradeResult), UpstreamError> {
    // Taken before the request is consumed: resolves to the client's raw
    // connection (with any bytes it sent behind the request) once our 101
    // has been written, by whichever server parsed the request.
    let client_upgrade = ClientUpgrade::of(&mut request);
    // Hop-by-hop, so taken before the client's such fields are removed.
    let http2_settings = h2c_settings(request.headers(), offered);

    let mut request = ForBackend::new(request)?;
    // `Connection: upgrade` and the protocols go on the wire with the
    // other fields the proxy sets, not into the request's header map.
    let proxy_fields = ProxyFields {
        upgrade: Some(UpgradeOffer {
            protocols: offered,
            http2_settings: http2_settings.as_ref(),
        }),
        ..*proxy_fields
    };
    let body = match request.body.take() {
        None => UpstreamBody::Empty,
        Some(body) => {
            UpstreamBody::Streamed(TimeoutBody::new(body, proxy.config.body_read_timeout))
        }
    };

    let timeout = proxy.config.upstream_response_timeout;
    let (head, body_sent) = upstream::within_response_timeout(
        backend.exchange(&request.outgoing(&proxy_fields), body, timeout),
        timeout,
        None,
    )
    .await
    .ok_or(UpstreamError::ResponseTimeout)??;

    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        let response = head.into_response(|framing| BackendBody::new(framing, backend, None));
        return Ok((relay(response, &proxy.config), UpgradeResult::Declined));
    }
    // A 101 is HTTP/1.1's, and lists `Upgrade` in its `Connection` (RFC
    // 9110 7.8; a WebSocket client fails one that does not, RFC 6455
    // 4.1): the client must not get a switch it would refuse, made valid
    // by the proxy's own `Connection: upgrade`.
    let switched = (head.version == Version::HTTP_11 && connection_has(&head.headers, "upgrade"))
        .then(|| switched_protocol(&head.headers, offered))
        .flatten();
    let Some(protocol) = switched else {
        return Err(UpstreamError::SwitchNotOffered);
    };
    // The backend would read the rest of the request body as the new
    // protocol: a switch before the body was sent is no switch to relay.
    // Not counted against the endpoint (`Local`): any client can send a
    // body with an upgrade, and would otherwise get a WebSocket server
    // that switches at once taken out of rotation.
    if !body_sent {
        return Err(UpstreamError::Local(
            "the backend switched protocols before the request body was sent".into(),
        ));
    }
    // What the backend sent behind its 101 is the new protocol's first
    // bytes, for the client.
    let (backend, to_client) = backend.into_parts();

    let mut response = head.into_response(|_| ResponseBody::empty());
    only_upgrade_hop_fields(response.headers_mut(), protocol);

    let tunnel_proxy = proxy.clone();
    let tunnel_conn = conn.clone();
    let tunnel_route = route.clone();
    let tunnel = async move {
        let proxy = tunnel_proxy;
        let route = tunnel_route;
        let series = route.metrics.tunnels(&proxy.metrics, &route.labels);
        series.active.inc();
        let outcome = match client_upgrade.connection().await {
            Ok((client, to_backend)) => {
                Tunnel::new(
                    client,
                    TunnelEnd::Socket(backend),
                    proxy.config.tunnel,
                    proxy.shutdown.force_token(),
                    series.bytes.clone(),
                )
                .with_early_data(to_backend, to_client)
                .run()
                .await
            }
            Err(e) => TunnelOutcome::client_gone(e),
        };
        series.active.dec();
        outcome.record(&proxy.metrics, &route, proxy.config.access_log);
        // The client connection's slot is given back only now.
        drop(tunnel_conn);
    };
    // Boxed: moved by pointer rather than by value into the task.
    proxy.shutdown.tracker().spawn(Work::new(Box::pin(tunnel)));
    Ok((response, UpgradeResult::Switched))
}

/// The backend's `Upgrade` token when it is one of those `offered`.
fn switched_protocol(headers: &HeaderMap, offered: &HeaderValue) -> Option<HeaderValue> {
    // `tokens`' walk, keeping the first field to share below.
    let mut values = headers.get_all(header::UPGRADE).iter();
    let first = values.next()?;
    let mut switched = value_tokens(first).chain(values.flat_map(value_tokens));
    let protocol = switched.next()?;
    if switched.next().is_some() {
        return None; // a 101 switches to exactly one protocol
    }
    if !value_tokens(offered).any(|o| o.eq_ignore_ascii_case(protocol)) {
        return None;
    }
    if first.as_bytes() == protocol.as_bytes() {
        // The field as the backend sent it when it is just the token (it
        // usually is): shared, not copied.
        Some(first.clone())
    } else {
        HeaderValue::from_str(protocol).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn h2c_settings_go_on_only_once_listed_and_only_for_h2c() {
        let h2c = HeaderValue::from_static("h2c");
        let listed = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert_eq!(h2c_settings(&listed, &h2c).unwrap(), "AAMAAABkAAQAAP__");
        let websocket = HeaderValue::from_static("websocket");
        assert!(
            h2c_settings(&listed, &websocket).is_none(),
            "not offered h2c"
        );
        let unlisted = headers(&[
            ("connection", "upgrade"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(h2c_settings(&unlisted, &h2c).is_none());
        let mut twice = listed.clone();
        twice.append("http2-settings", HeaderValue::from_static("AAMAAABk"));
        assert!(h2c_settings(&twice, &h2c).is_none());
    }

    #[test]
    fn classify_needs_both_headers_on_http11() {
        let both = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(
            classify(Version::HTTP_11, &both),
            UpgradeRequest::Protocols(Requested(HeaderValue::from_static("WebSocket")))
        );
        assert_eq!(classify(Version::HTTP_10, &both), UpgradeRequest::None);
        assert!(matches!(
            classify(Version::HTTP_11, &headers(&[("connection", "upgrade")])),
            UpgradeRequest::Invalid(_)
        ));
        assert!(matches!(
            classify(Version::HTTP_11, &headers(&[("upgrade", "websocket")])),
            UpgradeRequest::Invalid(_)
        ));
        assert_eq!(
            classify(Version::HTTP_11, &HeaderMap::new()),
            UpgradeRequest::None
        );
    }

    #[test]
    fn several_upgrade_fields_are_one_list_and_empty_ones_ask_for_nothing() {
        let mut two = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        two.append(header::UPGRADE, HeaderValue::from_static(" , h2c"));
        assert_eq!(
            classify(Version::HTTP_11, &two),
            UpgradeRequest::Protocols(Requested(HeaderValue::from_static("websocket, h2c")))
        );
        let empty = headers(&[("connection", "upgrade"), ("upgrade", " , ")]);
        assert!(matches!(
            classify(Version::HTTP_11, &empty),
            UpgradeRequest::Invalid(_)
        ));
    }

    #[test]
    fn the_backend_is_offered_what_the_route_allows_of_what_was_asked() {
        let asked = || Requested(HeaderValue::from_static("WebSocket, h2c"));
        let all = asked().allowed(|_| true).unwrap();
        assert_eq!(all, "WebSocket, h2c", "all allowed: the client's value");
        let websocket = asked().allowed(|p| p.eq_ignore_ascii_case("websocket"));
        assert_eq!(websocket.unwrap(), "WebSocket");
        assert_eq!(asked().allowed(|p| p == "h2c").unwrap(), "h2c");
        assert!(asked().allowed(|_| false).is_none());
    }

    #[test]
    fn a_101_must_switch_to_one_requested_protocol() {
        let offered = HeaderValue::from_static("websocket");
        let ok = switched_protocol(&headers(&[("upgrade", "WebSocket")]), &offered);
        assert_eq!(ok.unwrap(), "WebSocket");
        let padded = switched_protocol(&headers(&[("upgrade", " websocket ,")]), &offered);
        assert_eq!(padded.unwrap(), "websocket", "the token, not the field");
        assert!(switched_protocol(&headers(&[("upgrade", "h2c")]), &offered).is_none());
        assert!(switched_protocol(&HeaderMap::new(), &offered).is_none());
        assert!(switched_protocol(&headers(&[("upgrade", "websocket, h2c")]), &offered).is_none());
        let two = HeaderValue::from_static("h2c, websocket");
        let second = switched_protocol(&headers(&[("upgrade", "websocket")]), &two);
        assert_eq!(second.unwrap(), "websocket");
    }
}
