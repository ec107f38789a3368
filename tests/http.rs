//! Ordinary (non-upgrade) HTTP through the proxy, over real sockets:
//! local error answers, forwarding headers, hop-by-hop rules, load
//! balancing, pooling, HTTP/2, and the limits that protect the proxy.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::TestProxy;
use common::backends::{self, head_value, read_body, read_head, read_until_closed, write_head};
use common::client::{Answer, get, raw_exchange};
use common::manifests::{ingress, route, service};
use http::{Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every value the echo backend reports for request header `name`.
fn echoed<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    body.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

fn assert_plain_text(answer: &Answer) {
    let content_type = answer.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type}"
    );
    assert!(
        !answer.body.is_empty() && answer.body.len() < 200,
        "{:?}",
        answer.body
    );
}

#[tokio::test]
async fn a_request_no_route_matches_gets_a_plain_text_404_counted_as_4xx() {
    let echo = backends::echo("known").await;
    let proxy = TestProxy::start(&route("r", "known.test", "/", &[echo.addr])).await;
    let answer = get(proxy.addr, "unknown.test", "/", &[]).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_plain_text(&answer);
    assert!(answer.body.starts_with("404"), "{}", answer.body);
    proxy
        .wait_metric("switchyard_requests_total", &[("code_class", "4xx")], 1.0)
        .await;
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
}

/// Sends `GET {target}` for host `h` on a new connection; the status line
/// and the body (the echo backends' answers are small and whole).
async fn raw_get(proxy: SocketAddr, target: &str) -> (String, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let (mut stream, head, mut body) = raw_exchange(proxy, &request, b"").await;
    body.extend(read_until_closed(&mut stream).await);
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn other_spellings_of_a_path_are_routed_as_the_path_they_name_and_forwarded_as_sent() {
    let admin = backends::echo("admin").await;
    let app = backends::echo("app").await;
    let manifests = service("admin", &[admin.addr])
        + &service("app", &[app.addr])
        + &ingress("admin", "h", "/admin", "admin", &[])
        + &ingress("app", "h", "/", "app", &[]);
    let proxy = TestProxy::start(&manifests).await;
    for target in [
        "/admin/x",
        "//admin/x",
        "/app/../admin/x",
        "/%61dmin/x",
        "/./admin//x",
    ] {
        let (status, body) = raw_get(proxy.addr, target).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{target}: {status}");
        let mut lines = body.lines();
        assert_eq!(lines.next(), Some("admin"), "{target} reached {body}");
        // As ingress-nginx does, the backend gets the path as sent.
        assert_eq!(
            lines.next(),
            Some(format!("GET {target}").as_str()),
            "{target}"
        );
    }
    let (status, body) = raw_get(proxy.addr, "/admin%2").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status} {body}");
    let (status, body) = raw_get(proxy.addr, "/../admin").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status} {body}");
    assert_eq!(app.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_backend_connection_is_a_plain_text_502_and_a_connect_error() {
    let proxy = TestProxy::start(&route("r", "h", "/", &[backends::refused().await])).await;
    let labels = [("ingress", "r"), ("service", "r")];
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels),
        0.0
    );
    let answer = get(proxy.addr, "h", "/", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_plain_text(&answer);
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels),
        1.0
    );
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_a_504_after_the_response_timeout() {
    let silent = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        // Hold the connection open and say nothing.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    })
    .await;
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[silent])).await;
    let labels = [("ingress", "r"), ("service", "r")];
    let answer = get(proxy.addr, "h", "/", &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_plain_text(&answer);
    assert_eq!(
        proxy.metric("switchyard_upstream_timeouts_total", &labels),
        1.0
    );
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels),
        0.0
    );
}

#[tokio::test]
async fn a_route_whose_service_has_no_endpoints_answers_503() {
    let yaml = service("x", &[]) + &ingress("x", "h", "/", "x", &[]);
    let proxy = TestProxy::start(&yaml).await;
    let answer = get(proxy.addr, "h", "/", &[]).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_plain_text(&answer);
}

#[tokio::test]
async fn forwarding_headers_are_set_by_the_proxy_and_host_is_preserved() {
    let echo = backends::echo("fwd").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;

    // A Host with a port still routes to host `h`; a client-sent
    // X-Forwarded-For is replaced, not appended to.
    // The same goes for X-Real-IP, which ingress-nginx also sets, and
    // the client's Forwarded is dropped.
    let answer = get(
        proxy.addr,
        "h:8080",
        "/headers",
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6;proto=https"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["x-backend"], "fwd");
    let body = &answer.body;
    assert_eq!(echoed(body, "host"), ["h:8080"], "{body}");
    assert_eq!(echoed(body, "x-forwarded-for"), ["127.0.0.1"], "{body}");
    assert_eq!(echoed(body, "x-real-ip"), ["127.0.0.1"], "{body}");
    assert!(echoed(body, "forwarded").is_empty(), "{body}");
    assert_eq!(echoed(body, "x-forwarded-proto"), ["http"], "{body}");
    assert_eq!(echoed(body, "x-forwarded-host"), ["h:8080"], "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");

    // A request id is generated when absent, and the client gets the
    // same value the backend saw.
    let ids = echoed(body, "x-request-id");
    assert_eq!(ids.len(), 1, "{body}");
    assert!(!ids[0].is_empty());
    assert_eq!(answer.headers["x-request-id"], ids[0]);

    // ... and kept when the client sent one.
    let answer = get(proxy.addr, "h", "/", &[("X-Request-Id", "client-id-42")]).await;
    assert_eq!(echoed(&answer.body, "x-request-id"), ["client-id-42"]);
    assert_eq!(answer.headers["x-request-id"], "client-id-42");

    // Of several, the first, and the backend gets that one alone.
    let answer = get(
        proxy.addr,
        "h",
        "/",
        &[("X-Request-Id", "first"), ("X-Request-Id", "second")],
    )
    .await;
    assert_eq!(echoed(&answer.body, "x-request-id"), ["first"]);
    assert_eq!(answer.headers["x-request-id"], "first");
}

#[tokio::test]
async fn an_http10_request_without_host_goes_by_the_rules_for_any_host() {
    let any = backends::echo("any").await;
    let named = backends::echo("named").await;
    let yaml = route("any", "", "/", &[any.addr]) + &route("named", "h", "/", &[named.addr]);
    let proxy = TestProxy::start(&yaml).await;
    let (mut client, head, rest) = raw_exchange(proxy.addr, "GET /old HTTP/1.0\r\n\r\n", b"").await;
    assert!(head.contains(" 200 "), "{head}");
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.starts_with("any\nGET /old\n"), "{body}");
    assert_eq!(
        echoed(&body, "host"),
        [""],
        "sent on with an empty Host: {body}"
    );
    assert_eq!(echoed(&body, "x-forwarded-host"), Vec::<&str>::new());
    assert_eq!(named.connections.load(Ordering::SeqCst), 0);

    // HTTP/1.1 must name its host; a host that is named must be valid.
    let (mut client, head, rest) = raw_exchange(proxy.addr, "GET /new HTTP/1.1\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.contains("missing Host header"), "{body}");
    let (mut client, head, rest) = raw_exchange(
        proxy.addr,
        "GET /old HTTP/1.0\r\nHost: h\u{e9}\r\n\r\n",
        b"",
    )
    .await;
    assert!(head.contains(" 400 "), "{head}");
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.contains("invalid Host header"), "{body}");
}

#[tokio::test]
async fn an_http10_request_without_host_finds_no_named_host() {
    let named = backends::echo("named").await;
    let proxy = TestProxy::start(&route("named", "h", "/", &[named.addr])).await;
    let (_, head, _) = raw_exchange(proxy.addr, "GET / HTTP/1.0\r\n\r\n", b"").await;
    assert!(head.contains(" 404 "), "{head}");
    assert_eq!(named.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_backend() {
    let echo = backends::echo("hop").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let request = "GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Custom\r\n\
                   X-Custom: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                   Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n";
    let (mut client, head, rest) = raw_exchange(proxy.addr, request, b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.starts_with("hop\nGET /hop\n"), "{body}");
    assert_eq!(echoed(&body, "x-kept"), ["yes"], "{body}");
    for name in [
        "x-custom",
        "keep-alive",
        "te",
        "proxy-connection",
        "connection",
    ] {
        assert_eq!(echoed(&body, name), Vec::<&str>::new(), "{name}: {body}");
    }
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(
            &mut s,
            "HTTP/1.1 200 OK",
            &[
                "Connection: X-Internal",
                "X-Internal: 1",
                "Keep-Alive: timeout=5",
                "X-Public: 1",
                "Content-Length: 2",
            ],
        )
        .await;
        s.write_all(b"ok").await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (mut client, head, rest) =
        raw_exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        head_value(&head, "x-public").as_deref(),
        Some("1"),
        "{head}"
    );
    assert_eq!(head_value(&head, "x-internal"), None, "{head}");
    assert_eq!(head_value(&head, "keep-alive"), None, "{head}");
    // hyper may add its own `Connection` header, but never the backend's.
    if let Some(connection) = head_value(&head, "connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-internal"),
            "{head}"
        );
    }
    assert_eq!(read_body(&mut client, &head, rest).await, "ok");
}

#[tokio::test]
async fn requests_alternate_between_endpoints_round_robin() {
    let a = backends::echo("a").await;
    let b = backends::echo("b").await;
    let proxy = TestProxy::start(&route("rr", "h", "/", &[a.addr, b.addr])).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let answer = get(proxy.addr, "h", "/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        seen.push(answer.headers["x-backend"].to_str().unwrap().to_string());
    }
    assert!(seen[0] == "a" || seen[0] == "b", "{seen:?}");
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "not alternating: {seen:?}");
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_backend_connection() {
    let echo = backends::echo("pool").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    for i in 0..5 {
        // Each `get` is a new client connection to the proxy; only the
        // proxy's upstream pool can make the backend connection shared.
        let answer = get(proxy.addr, "h", &format!("/{i}"), &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        // Let the pool take the idle connection back before the next request.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 1);
}

/// An HTTP/2 (prior knowledge) client connection to `proxy`, driven in
/// the background.
async fn http2_client<B>(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn http2_prior_knowledge_requests_are_routed_by_authority() {
    let echo = backends::echo("h2").await;
    let other = backends::echo("other").await;
    let yaml = route("r", "h", "/", &[echo.addr]) + &route("o", "other.test", "/", &[other.addr]);
    let proxy = TestProxy::start(&yaml).await;
    let mut sender = http2_client::<Empty<Bytes>>(proxy.addr).await;
    // h2 has no Host header: the host is the URI's authority (`:authority`).
    let request = Request::get("http://h/over-h2?q=1")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["x-backend"], "h2");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.starts_with("h2\nGET /over-h2?q=1\n"), "{body}");
    assert_eq!(echoed(&body, "host"), ["h"], "{body}");
    assert_eq!(echoed(&body, "x-forwarded-host"), ["h"], "{body}");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_http2_body_of_unknown_length_reaches_the_backend_chunked() {
    let echo = backends::echo("h2").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut sender = http2_client(proxy.addr).await;
    // No Content-Length: HTTP/2 frames the body itself, HTTP/1.1 to the
    // backend needs the chunked coding.
    let frames = ["abc", "defg"]
        .map(|part| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(part))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let request = Request::post("http://h/upload").body(body).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(echoed(&body, "transfer-encoding"), ["chunked"], "{body}");
    assert!(echoed(&body, "content-length").is_empty(), "{body}");
    assert!(body.contains("body-bytes: 7\n"), "{body}");
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_the_proxy_keeps_serving() {
    let config = ProxyConfig {
        max_header_bytes: 8192,
        ..ProxyConfig::default()
    };
    let (echo, proxy) = TestProxy::with_echo("big", config).await;
    let big = "a".repeat(20 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Big: {big}\r\n\r\n");
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // The proxy may close before reading everything; a failed write is fine.
    let _ = client.write_all(request.as_bytes()).await;
    let answer = read_until_closed(&mut client).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);

    let answer = get(proxy.addr, "h", "/after", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("GET /after"), "{}", answer.body);
}

/// Sends one keep-alive `GET` on `stream` and reads the whole answer.
async fn keep_alive_get(stream: &mut TcpStream, host: &str) -> (String, String) {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, rest) = read_head(stream).await;
    let body = read_body(stream, &head, rest).await;
    (head, body)
}

/// Whether a new connection to `addr` gets a `GET` answered.
async fn served(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut stream).await;
    answer.starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_without_a_response() {
    let config = ProxyConfig {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(60),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("cap", config).await;

    // The first connection is served and stays open (keep-alive).
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let (head, _) = keep_alive_get(&mut first, "h").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A second one is closed at once, its request unanswered.
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let answer = read_until_closed(&mut second).await;
    assert!(
        answer.is_empty(),
        "over-cap connection got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        proxy.metric("switchyard_connections_rejected_total", &[]),
        1.0
    );

    // The first connection is still served.
    let (head, _) = keep_alive_get(&mut first, "h").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Once it closes, its slot frees up (as soon as the proxy notices).
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        if served(proxy.addr).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no connection served after the first one closed");
}

#[tokio::test]
async fn a_client_that_stops_mid_head_is_disconnected() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let (echo, proxy) = TestProxy::with_echo("slow", config).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n")
        .await
        .unwrap();
    // Panics if the proxy is still holding the connection after 10 s.
    let answer = read_until_closed(&mut client).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_stops_mid_body_gets_408() {
    let config = ProxyConfig {
        body_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("body", config).await;
    // The echo backend reads the whole body before answering, so nothing
    // has been answered when the body stalls.
    let exchange = raw_exchange(
        proxy.addr,
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n",
        b"0123456789",
    );
    let (mut client, head, rest) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10s");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(
        head_value(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.starts_with("408"), "{body}");
    // The unread rest of the body makes the stream unusable: it closes.
    read_until_closed(&mut client).await;
}

#[tokio::test]
async fn a_large_request_body_is_forwarded_intact() {
    let echo = backends::echo("post").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let payload = vec![b'x'; 1024 * 1024];
    let request = Request::post(format!("http://{}/upload", proxy.addr))
        .header(header::HOST, "h")
        .body(Full::from(payload))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.starts_with("post\nPOST /upload\n"), "{body}");
    assert_eq!(echoed(&body, "body-bytes"), ["1048576"], "{body}");
}

#[tokio::test]
async fn a_prefix_path_matches_whole_segments_only() {
    let echo = backends::echo("api").await;
    let proxy = TestProxy::start(&route("api", "h", "/api", &[echo.addr])).await;
    for path in ["/api", "/api/", "/api/x"] {
        let answer = get(proxy.addr, "h", path, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(
            answer.body.starts_with(&format!("api\nGET {path}\n")),
            "{path}: {}",
            answer.body
        );
    }
    for path in ["/apix", "/ap", "/"] {
        let answer = get(proxy.addr, "h", path, &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("e", config).await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent).await.is_empty(),
        "closed without a byte"
    );
    proxy
        .wait_metric("switchyard_connections_active", &[], 0.0)
        .await;
}

/// Sends `head` and then `body` whole before reading anything, as many
/// clients upload, and returns everything the proxy answered.
async fn upload_then_read(proxy: SocketAddr, head: &str, body: Vec<u8>) -> std::io::Result<String> {
    let mut client = TcpStream::connect(proxy).await?;
    client.write_all(head.as_bytes()).await?;
    client.write_all(&body).await?;
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn an_upload_refused_before_its_body_is_read_gets_the_answer_not_a_reset() {
    let echo = backends::echo("known").await;
    let proxy = TestProxy::start(&route("r", "known.test", "/", &[echo.addr])).await;
    // More than the sockets' buffers hold, so the client is still writing
    // when the proxy has answered: a close without reading on would reset
    // the connection under the upload.
    let size = 32 << 20;
    let with_length =
        format!("POST / HTTP/1.1\r\nHost: elsewhere\r\nContent-Length: {size}\r\n\r\n");
    let answer = upload_then_read(proxy.addr, &with_length, vec![b'x'; size])
        .await
        .expect("the upload finishes");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:.200}");

    // The same through hyper's server, which serves chunked bodies.
    let mut chunked = format!("{size:x}\r\n").into_bytes();
    chunked.extend(std::iter::repeat_n(b'x', size));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = upload_then_read(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: elsewhere\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunked,
    )
    .await
    .expect("the chunked upload finishes");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:.200}");
}

/// One HTTP/2 frame: its type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads the next whole frame, or `None` once the connection has closed.
async fn next_frame(stream: &mut TcpStream) -> Option<Frame> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await.ok()?;
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: header[3],
        flags: header[4],
        stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
        payload,
    })
}

const GOAWAY: u8 = 7;
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const END_STREAM: u8 = 1;

/// A `GET http://h{path}` HEADERS frame on stream 1, ending the stream:
/// `:method GET` and `:scheme http` from the static table, `:path` and
/// `:authority` as literals.
fn get_frame(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 1, b'h']);
    let mut frame = vec![
        0,
        0,
        block.len() as u8,
        HEADERS,
        END_STREAM | 0x4,
        0,
        0,
        0,
        1,
    ];
    frame.extend_from_slice(&block);
    frame
}

/// Reads frames until stream 1 ends: its first header byte (0x88 for
/// `:status 200`) and its body.
async fn stream_one(client: &mut TcpStream) -> (Option<u8>, Vec<u8>) {
    let mut status = None;
    let mut body = Vec::new();
    while let Some(frame) = next_frame(client).await {
        if frame.stream != 1 {
            continue;
        }
        match frame.kind {
            HEADERS => status = frame.payload.first().copied(),
            DATA => body.extend_from_slice(&frame.payload),
            _ => {}
        }
        if frame.flags & END_STREAM != 0 {
            break;
        }
    }
    (status, body)
}

#[tokio::test]
async fn an_http2_preface_that_arrives_in_pieces_is_still_http2() {
    let backend = backends::echo("pieces").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend.addr])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for piece in [&b"P"[..], b"RI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"] {
        client.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.write_all(b"\0\0\0\x04\0\0\0\0\0").await.unwrap();
    client.write_all(&get_frame("/pieces")).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), stream_one(&mut client)).await;
    let (status, _) = answered.expect("stream 1 answered");
    assert_eq!(status, Some(0x88), "a 200 on stream 1");
}

/// A proxy whose HTTP/2 connections are idle after 1 s without a stream,
/// before a backend that answers `done` after `delay`.
async fn slow_backend_behind_a_1s_idle_limit(delay: Duration) -> TestProxy {
    let slow = backends::scripted(move |mut s| async move {
        read_head(&mut s).await;
        write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 4"]).await;
        tokio::time::sleep(delay).await;
        let _ = s.write_all(b"done").await;
        let _ = read_until_closed(&mut s).await;
    })
    .await;
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    TestProxy::start_with(config, &route("r", "h", "/", &[slow])).await
}

/// A connection that has sent the preface and an empty SETTINGS frame.
async fn http2_connection(proxy: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn an_http2_stream_opened_after_the_idle_goaway_is_served_before_the_connection_closes() {
    // Longer than the idle limit, so the end waits for this stream.
    let proxy = slow_backend_behind_a_1s_idle_limit(Duration::from_secs(2)).await;
    let mut client = http2_connection(proxy.addr).await;
    // Idle for the limit: the server says it is going away, and sends a
    // PING whose answer would let it end the connection at once. The
    // client never answers it, and opens a stream instead, as a client
    // may before the server's last GOAWAY.
    loop {
        let frame = next_frame(&mut client)
            .await
            .expect("the connection stays open until its GOAWAY");
        if frame.kind == GOAWAY {
            break;
        }
    }
    client.write_all(&get_frame("/slow")).await.unwrap();
    let mut answer = (None, Vec::new());
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        answer = stream_one(&mut client).await;
        // Then the connection closes, idle again and its PING unanswered.
        while next_frame(&mut client).await.is_some() {}
    })
    .await;
    let (status, body) = answer;
    assert_eq!(status, Some(0x88), "a 200 on stream 1");
    assert_eq!(body, b"done");
    assert!(ended.is_ok(), "the connection is still open after 15s");
}

#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_but_a_slow_stream_is_not_cut() {
    // The body comes well after the idle limit: its stream is open all
    // that time, so the connection is not idle.
    let proxy = slow_backend_behind_a_1s_idle_limit(Duration::from_secs(3)).await;

    // The preface and an empty SETTINGS frame, then nothing.
    let mut idle = http2_connection(proxy.addr).await;
    let mut kinds = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = next_frame(&mut idle).await {
            kinds.push(frame.kind);
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an idle HTTP/2 connection is still open after 10s"
    );
    // Told first: a GOAWAY among what the proxy sent.
    assert!(kinds.contains(&GOAWAY), "frame types {kinds:?}");

    let mut sender = http2_client::<Empty<Bytes>>(proxy.addr).await;
    let response = sender
        .send_request(Request::get("http://h/slow").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done");
}

/// A backend that answers with an endless body and reports, once, when
/// the proxy stops taking it (its connection closed under it).
async fn endless_backend() -> (SocketAddr, tokio::sync::mpsc::Receiver<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let backend = backends::scripted(move |mut s| {
        let tx = tx.clone();
        async move {
            let (_head, _) = read_head(&mut s).await;
            write_head(
                &mut s,
                "HTTP/1.1 200 OK",
                &["Content-Length: 1099511627776"],
            )
            .await;
            let block = vec![b'x'; 64 * 1024];
            while s.write_all(&block).await.is_ok() {}
            let _ = tx.send(()).await;
        }
    })
    .await;
    (backend, rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let (backend, mut gave_up) = endless_backend().await;
    let config = ProxyConfig {
        client_write_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[backend])).await;
    // A plain GET (switchyard's own HTTP/1 server), then a chunked upload
    // (hyper's): neither client reads a byte of its answer.
    let requests = [
        "GET /big HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for request in requests {
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(20), gave_up.recv()).await;
        assert!(
            matches!(closed, Ok(Some(()))),
            "{request:?}: the backend connection still streaming after 20 s"
        );
        // What the proxy sent is there to read, then the connection ends.
        let read = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut client));
        assert!(read.await.unwrap().len() > 64 * 1024, "{request:?}");
    }
}

#[tokio::test]
async fn an_http2_stream_whose_client_takes_nothing_is_reset_after_the_write_timeout() {
    let (backend, mut gave_up) = endless_backend().await;
    let other = backends::echo("other").await;
    let config = ProxyConfig {
        client_write_timeout: Duration::from_millis(500),
        ..ProxyConfig::default()
    };
    let yaml = route("r", "h", "/", &[backend]) + &route("o", "other.test", "/", &[other.addr]);
    let proxy = TestProxy::start_with(config, &yaml).await;
    let mut sender = http2_client::<Empty<Bytes>>(proxy.addr).await;
    // The client keeps reading its connection, but grants this stream no
    // more window once its first megabytes are in: it never reads them.
    let request = Request::get("http://h/big").body(Empty::new()).unwrap();
    let stalled = sender.send_request(request).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    let closed = tokio::time::timeout(Duration::from_secs(20), gave_up.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "the backend connection still streaming after 20 s"
    );
    // The stream was reset; the connection's other streams go on.
    let request = Request::get("http://other.test/")
        .body(Empty::new())
        .unwrap();
    let answer = sender.send_request(request).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(stalled.into_body().collect().await.is_err());
}
