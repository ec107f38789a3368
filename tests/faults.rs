//! Backend faults over real sockets: refused connections and retries on
//! another endpoint, resets before and during a response, slow and
//! non-reading backends, and passive health (ejection, back-off, return).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::TestProxy;
use common::backends::{
    self, head_value, read_body, read_head, read_until_closed, reset, write_head,
};
use common::client::{get, raw_exchange};
use common::manifests::route;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::proxy::ProxyConfig;
use switchyard::proxy::linger::LINGER_TIME;
use switchyard::routes::PassiveHealthConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Route labels of a route built with `route(name, ..)`.
fn labels(name: &str) -> [(&str, &str); 2] {
    [("ingress", name), ("service", name)]
}

fn without_ejection() -> ProxyConfig {
    ProxyConfig {
        passive_health: PassiveHealthConfig {
            failures: 0,
            ..PassiveHealthConfig::default()
        },
        ..ProxyConfig::default()
    }
}

/// Sends `method` to host `h` with `body` (none when `None`); the status.
async fn send(proxy: SocketAddr, method: Method, body: Option<&'static str>) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}/"))
        .header(header::HOST, "h")
        .body(body.map(Full::from).unwrap_or_default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

/// A backend that counts the connections it accepts and runs `script` on each.
async fn counting<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = backends::scripted(move |stream| {
        counter.fetch_add(1, Ordering::SeqCst);
        script(stream)
    })
    .await;
    (addr, accepted)
}

/// A backend that reads each request head, then resets the connection.
async fn resetting() -> (SocketAddr, Arc<AtomicUsize>) {
    counting(|mut s| async move {
        read_head(&mut s).await;
        reset(s);
    })
    .await
}

#[tokio::test]
async fn a_refused_endpoint_is_retried_elsewhere_only_for_idempotent_bodiless_requests() {
    let good = backends::echo("good").await;
    let refused = backends::refused().await;
    // Ejection off, so that every other request really meets the refused
    // endpoint first.
    let yaml = route("r", "h", "/", &[refused, good.addr]);
    let proxy = TestProxy::start_with(without_ejection(), &yaml).await;

    // Round-robin: of two requests in a row, one is sent to the refused
    // endpoint first. A POST (with or without a body) or a request with a
    // body is not sent again: that one gets a 502.
    for (method, body) in [
        (Method::POST, Some("x")),
        (Method::POST, None),
        (Method::PUT, Some("x")),
    ] {
        let mut statuses = vec![
            send(proxy.addr, method.clone(), body).await,
            send(proxy.addr, method.clone(), body).await,
        ];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::BAD_GATEWAY],
            "{method} {body:?}"
        );
    }
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("r")),
        3.0
    );

    // Idempotent requests without a body go to the other endpoint.
    for method in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ] {
        for _ in 0..2 {
            assert_eq!(
                send(proxy.addr, method.clone(), None).await,
                StatusCode::OK,
                "{method}"
            );
        }
    }
    // Half of those met the refused endpoint first.
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("r")),
        9.0
    );
    assert_eq!(
        proxy.metric("switchyard_requests_total", &[("code_class", "5xx")]),
        3.0
    );
}

#[tokio::test]
async fn retries_stop_at_the_number_of_endpoints_and_at_three_attempts() {
    let mut four = Vec::new();
    for _ in 0..4 {
        four.push(backends::refused().await);
    }
    let two = [backends::refused().await, backends::refused().await];
    let yaml = route("four", "four.test", "/", &four) + &route("two", "two.test", "/", &two);
    let proxy = TestProxy::start_with(without_ejection(), &yaml).await;

    assert_eq!(
        get(proxy.addr, "two.test", "/", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("two")),
        2.0
    );
    assert_eq!(
        get(proxy.addr, "four.test", "/", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("four")),
        3.0
    );
}

#[tokio::test]
async fn a_reset_before_the_response_is_a_502() {
    let (backend, accepted) = resetting().await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let answer = get(proxy.addr, "h", "/", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(answer.body.starts_with("502"), "{}", answer.body);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The connection was opened: not a connect error, nor a timeout.
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("r")),
        0.0
    );
    assert_eq!(
        proxy.metric("switchyard_upstream_timeouts_total", &labels("r")),
        0.0
    );
}

#[tokio::test]
async fn a_reset_mid_response_truncates_it_and_closes_the_client_connection() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 1000"]).await;
        s.write_all(b"0123456789").await.unwrap();
        // Let the ten bytes reach the proxy before the reset.
        tokio::time::sleep(Duration::from_millis(100)).await;
        reset(s);
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;

    let (mut client, head, rest) =
        raw_exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(head_value(&head, "content-length").as_deref(), Some("1000"));
    // EOF or an error within a bounded wait (read_until_closed panics
    // after 10 s): the client is never left hanging.
    let mut body = rest;
    body.extend(read_until_closed(&mut client).await);
    assert!(body.len() < 1000, "{} body bytes", body.len());
    assert!(body.starts_with(b"0123456789") || body.is_empty());
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("HTTP/1."), "a second status line: {text:?}");
}

#[tokio::test]
async fn a_backend_that_stops_mid_body_is_cut_off_at_the_response_timeout() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 1000"]).await;
        s.write_all(b"0123456789").await.unwrap();
        // Then nothing, with the connection open.
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[backend])).await;

    let (mut client, head, rest) =
        raw_exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = rest;
    body.extend(read_until_closed(&mut client).await);
    // read_until_closed fails the test after 10 s: the close came from
    // the proxy, long before the backend's 30 s were over.
    assert_eq!(body, b"0123456789", "the bytes sent, then the close");
    assert_eq!(
        proxy.metric("switchyard_upstream_timeouts_total", &labels("r")),
        1.0
    );
}

#[tokio::test]
async fn a_slow_first_byte_is_a_504_at_the_response_timeout_and_is_not_retried() {
    let slow = || {
        counting(|mut s| async move {
            read_head(&mut s).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        })
    };
    let (a, a_accepted) = slow().await;
    let (b, b_accepted) = slow().await;
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[a, b])).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), get(proxy.addr, "h", "/", &[]))
        .await
        .expect("an answer within 10s");
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(answer.body.starts_with("504"), "{}", answer.body);
    assert_eq!(
        proxy.metric("switchyard_upstream_timeouts_total", &labels("r")),
        1.0
    );
    // A GET, and another endpoint was there: still one attempt only.
    assert_eq!(
        a_accepted.load(Ordering::SeqCst) + b_accepted.load(Ordering::SeqCst),
        1
    );
}

/// A backend that accepts and then reads nothing at all.
async fn deaf() -> SocketAddr {
    backends::scripted(|s| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await
}

#[tokio::test]
async fn a_backend_that_never_reads_a_small_body_gets_a_504() {
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[deaf().await])).await;
    // The request fits in the socket buffers: sent, then never answered.
    let exchange = raw_exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n",
        b"0123456789",
    );
    let (mut client, head, rest) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10s");
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(read_body(&mut client, &head, rest).await.starts_with("504"));
    assert_eq!(
        proxy.metric("switchyard_upstream_timeouts_total", &labels("r")),
        1.0
    );
}

#[tokio::test]
async fn a_backend_that_stops_taking_a_large_body_gets_a_504_and_the_connection_ends() {
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[deaf().await])).await;
    // More than every socket buffer on the way holds: the upload stalls
    // when the backend's buffers are full.
    const LENGTH: usize = 256 << 20;
    let (mut reader, mut writer) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    let upload = tokio::spawn(async move {
        let head = format!("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {LENGTH}\r\n\r\n");
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        while sent < LENGTH {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after 10s; got {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer:?}");
    // The proxy reads on, discarding, for a while after its answer (so
    // that a client still sending gets the answer rather than a reset),
    // then closes: the upload ends either way, it is never left hanging.
    tokio::time::timeout(Duration::from_secs(10) + LINGER_TIME, upload)
        .await
        .expect("the upload ends once the proxy closed")
        .unwrap();
}

#[tokio::test]
async fn a_slow_upload_to_a_backend_that_reads_it_is_not_a_response_timeout() {
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("upload", config).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\n\r\n")
        .await
        .unwrap();
    // The upload takes longer than the response timeout; the time the
    // proxy waits for the client does not count against the backend.
    for _ in 0..4 {
        client.write_all(b"0123456789").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (head, rest) = tokio::time::timeout(Duration::from_secs(10), read_head(&mut client))
        .await
        .expect("an answer within 10s");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = read_body(&mut client, &head, rest).await;
    assert!(body.contains("body-bytes: 40"), "{body}");
}

fn ejection_after(failures: u32, backoff: Duration) -> ProxyConfig {
    ProxyConfig {
        passive_health: PassiveHealthConfig {
            failures,
            backoff,
            max_backoff: Duration::from_secs(60),
        },
        ..ProxyConfig::default()
    }
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_ejected_then_tried_again_after_the_backoff() {
    let good = backends::echo("good").await;
    let (bad, bad_accepted) = resetting().await;
    // Long enough for the six requests that must find it ejected, short
    // enough for wait_metric's 10 s below.
    let config = ejection_after(3, Duration::from_secs(5));
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[bad, good.addr])).await;
    let ejections = |p: &TestProxy| p.metric("switchyard_upstream_ejections_total", &labels("r"));
    let ejected = |p: &TestProxy| p.metric("switchyard_upstream_ejected_endpoints", &labels("r"));

    // Every other request meets the bad endpoint first, and is retried.
    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "h", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(bad_accepted.load(Ordering::SeqCst), 3);
    assert_eq!(ejections(&proxy), 1.0);
    assert_eq!(ejected(&proxy), 1.0);

    // Ejected: no more attempts on it, no more retries.
    for _ in 0..6 {
        assert_eq!(get(proxy.addr, "h", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(bad_accepted.load(Ordering::SeqCst), 3);

    // After the back-off it is back in rotation; on probation, its next
    // failure ejects it again at once.
    proxy
        .wait_metric("switchyard_upstream_ejected_endpoints", &labels("r"), 0.0)
        .await;
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "h", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(bad_accepted.load(Ordering::SeqCst), 4);
    assert_eq!(ejections(&proxy), 2.0);
    assert_eq!(ejected(&proxy), 1.0);
}

#[tokio::test]
async fn when_every_endpoint_is_ejected_requests_still_go_to_them() {
    let (bad, accepted) = resetting().await;
    let config = ejection_after(3, Duration::from_secs(60));
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[bad])).await;
    for _ in 0..5 {
        assert_eq!(
            get(proxy.addr, "h", "/", &[]).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    // Ejected after the third failure, and picked anyway: a 502 from the
    // backend rather than a 503 without trying.
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    assert_eq!(
        proxy.metric("switchyard_upstream_ejections_total", &labels("r")),
        1.0
    );
}

#[tokio::test]
async fn an_ejection_survives_a_route_table_swap() {
    let good = backends::echo("good").await;
    let (bad, bad_accepted) = resetting().await;
    let config = ejection_after(1, Duration::from_secs(60));
    let yaml = route("r", "h", "/", &[bad, good.addr]);
    let proxy = TestProxy::start_with(config, &yaml).await;
    for _ in 0..2 {
        assert_eq!(get(proxy.addr, "h", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(bad_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxy.metric("switchyard_upstream_ejected_endpoints", &labels("r")),
        1.0
    );

    // An unrelated change: a new table, new routes, the same endpoints.
    let other = backends::echo("other").await;
    let changed = yaml + &route("o", "other.test", "/", &[other.addr]);
    assert!(proxy.routes.swap_if_changed(translated(&changed)));
    for _ in 0..4 {
        assert_eq!(get(proxy.addr, "h", "/", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(bad_accepted.load(Ordering::SeqCst), 1);
}

fn translated(yaml: &str) -> switchyard::routes::RouteTableSpec {
    let snapshot =
        switchyard::source::manifest::parse_snapshot(yaml, std::path::Path::new("test.yaml"))
            .unwrap();
    switchyard::routes::translate(&snapshot, &switchyard::routes::TranslateOptions::default()).spec
}

#[tokio::test]
async fn an_upgrade_whose_endpoint_refuses_is_connected_to_the_next_one() {
    let good = backends::echo("good").await;
    let refused = backends::refused().await;
    let yaml = route("r", "h", "/", &[refused, good.addr]);
    let proxy = TestProxy::start_with(without_ejection(), &yaml).await;
    for _ in 0..2 {
        let request = common::client::upgrade_request("h", "/ws", "websocket", &[]);
        let (_client, head, _) = raw_exchange(proxy.addr, &request, b"").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    assert_eq!(
        proxy.metric("switchyard_upstream_connect_errors_total", &labels("r")),
        1.0
    );
    assert_eq!(
        proxy.metric("switchyard_upgrades_total", &[("result", "switched")]),
        2.0
    );
}
