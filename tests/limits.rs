//! Limits per client address over real sockets: connections over
//! `--max-connections-per-client` are closed on accept, requests over
//! `--max-requests-per-client-per-second` get 429, and another address is
//! not affected by either. 127.0.0.1 and 127.0.0.2 are the two clients
//! (all of 127.0.0.0/8 is loopback on Linux).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::TestProxy;
use common::backends::{self, head_value, read_body, read_head, read_until_closed};
use common::manifests::route;
use switchyard::proxy::ProxyConfig;
use switchyard::proxy::client_limits::ClientLimitConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const FIRST: [u8; 4] = [127, 0, 0, 1];
const SECOND: [u8; 4] = [127, 0, 0, 2];

/// A connection to `proxy` from the client address `from`.
async fn connect_from(from: [u8; 4], proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(proxy).await.unwrap()
}

/// One keep-alive `GET /` for host `h`: the response head and body.
async fn keep_alive_get(stream: &mut TcpStream) -> (String, String) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, rest) = read_head(stream).await;
    let body = read_body(stream, &head, rest).await;
    (head, body)
}

fn rejections(proxy: &TestProxy, limit: &str) -> f64 {
    proxy.metric(
        "switchyard_client_limit_rejections_total",
        &[("limit", limit)],
    )
}

#[tokio::test]
async fn a_client_over_its_connection_limit_is_closed_while_another_address_is_served() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(60),
        client_limits: ClientLimitConfig {
            max_connections: 2,
            ..ClientLimitConfig::default()
        },
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("limits", config).await;
    assert_eq!(rejections(&proxy, "connections"), 0.0);

    // The first client holds two connections open (keep-alive).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(FIRST, proxy.addr).await;
        let (head, _) = keep_alive_get(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }

    // Its third is closed at once, its request unanswered.
    let mut third = connect_from(FIRST, proxy.addr).await;
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let answer = read_until_closed(&mut third).await;
    assert!(
        answer.is_empty(),
        "over-limit connection got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(rejections(&proxy, "connections"), 1.0);
    assert_eq!(
        proxy.metric("switchyard_connections_rejected_total", &[]),
        0.0,
        "the global cap was not reached"
    );

    // Another address gets its own two connections meanwhile.
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(SECOND, proxy.addr).await;
        let (head, body) = keep_alive_get(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.starts_with("limits"), "{body}");
        others.push(stream);
    }

    // The first client's held connections are still served.
    for stream in &mut held {
        let (head, _) = keep_alive_get(stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }

    // Once one of them closes, the first client may open another (as soon
    // as the proxy notices the close).
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut stream = connect_from(FIRST, proxy.addr).await;
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await;
        if read_until_closed(&mut stream)
            .await
            .starts_with(b"HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "no connection served after one of the two closed");
    assert_eq!(proxy.metric("switchyard_connections_active", &[]), 3.0);
}

#[tokio::test]
async fn a_client_over_its_request_rate_gets_429_and_recovers_when_its_bucket_refills() {
    let config = ProxyConfig {
        client_limits: ClientLimitConfig {
            requests_per_second: 2,
            burst: 3,
            ..ClientLimitConfig::default()
        },
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("rate", config).await;
    let mut client = connect_from(FIRST, proxy.addr).await;

    // The bucket starts full: the burst is served.
    for _ in 0..3 {
        let (head, _) = keep_alive_get(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Then requests in a row outrun 2 per second: a 429 comes (with no
    // bound on how fast this machine is, only that 50 requests in a row
    // cannot all find a token).
    let mut refused = None;
    for _ in 0..50 {
        let (head, body) = keep_alive_get(&mut client).await;
        if head.starts_with("HTTP/1.1 429") {
            refused = Some((head, body));
            break;
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let (head, body) = refused.expect("a 429 among 50 requests in a row");
    assert!(body.starts_with("429 Too Many Requests"), "{body}");
    assert!(body.len() < 200, "{body}");
    assert_eq!(head_value(&head, "retry-after").as_deref(), Some("1"));
    assert!(
        head_value(&head, "content-type")
            .unwrap()
            .starts_with("text/plain"),
        "{head}"
    );
    assert_ne!(head_value(&head, "connection").as_deref(), Some("close"));
    assert!(rejections(&proxy, "requests") >= 1.0);
    assert_eq!(rejections(&proxy, "connections"), 0.0);

    // Another address has a bucket of its own.
    let mut other = connect_from(SECOND, proxy.addr).await;
    let (head, _) = keep_alive_get(&mut other).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The same connection is served again once a token is back.
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (head, _) = keep_alive_get(&mut client).await;
        if head.starts_with("HTTP/1.1 200") {
            recovered = true;
            break;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    }
    assert!(recovered, "still refused after 10s");
}

#[tokio::test]
async fn without_client_limits_no_connection_or_request_is_refused() {
    let echo = backends::echo("off").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from(FIRST, proxy.addr).await;
        let (head, _) = keep_alive_get(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        streams.push(stream);
    }
    assert_eq!(rejections(&proxy, "connections"), 0.0);
    assert_eq!(rejections(&proxy, "requests"), 0.0);
}
