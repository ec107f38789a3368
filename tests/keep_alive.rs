//! Client keep-alive connections over real sockets: requests without a
//! body or with one of a `Content-Length` are served by switchyard's own
//! HTTP/1 server, and the first request that is not (a chunked body, say)
//! hands the connection to hyper with what was already read. Pipelining,
//! bodies, response framing, the idle limit, `Connection: close` and
//! draining.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestProxy;
use common::backends::{
    self, head_value, next_head, read_exactly, read_head, read_until_closed, write_head,
};
use common::manifests::route;
use switchyard::proxy::ProxyConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Reads one response framed by `Content-Length` or chunked, starting
/// with `rest` (bytes already read); returns its head and body, and the
/// bytes read past it.
async fn read_response(stream: &mut TcpStream, mut rest: Vec<u8>) -> (String, Vec<u8>, Vec<u8>) {
    let end = loop {
        if let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        rest = read_exactly(stream, rest.clone(), rest.len() + 1).await;
    };
    let after = rest.split_off(end + 4);
    let head = String::from_utf8(rest).unwrap();
    if let Some(length) = head_value(&head, "content-length") {
        let length: usize = length.parse().unwrap();
        let mut all = read_exactly(stream, after, length).await;
        let past = all.split_off(length);
        return (head, all, past);
    }
    assert_eq!(
        head_value(&head, "transfer-encoding").as_deref(),
        Some("chunked"),
        "{head}"
    );
    let mut data = after;
    let mut body = Vec::new();
    loop {
        while !data.windows(2).any(|w| w == b"\r\n") {
            data = read_exactly(stream, data.clone(), data.len() + 1).await;
        }
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap(), 16).unwrap();
        let need = line_end + 2 + size + 2;
        let mut all = read_exactly(stream, data, need).await;
        let past = all.split_off(need);
        if size == 0 {
            return (head, body, past);
        }
        body.extend_from_slice(&all[line_end + 2..line_end + 2 + size]);
        data = past;
    }
}

/// Asserts that the answer whose head is `head` said `connection: close`
/// and that nothing came after it before the connection closed.
async fn closes_after(head: &str, stream: &mut TcpStream) {
    assert_eq!(
        head_value(head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    assert!(
        read_until_closed(stream).await.is_empty(),
        "nothing after the answer"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_chunked_body_hands_the_rest_to_hyper() {
    let echo = backends::echo("e").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /d HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await
        .unwrap();
    let mut rest = Vec::new();
    for (expected, body_bytes) in [
        ("GET /a", None),
        ("POST /b", Some(5)),
        ("POST /c", Some(3)),
        ("GET /d", None),
    ] {
        let (head, body, past) = read_response(&mut client, rest).await;
        rest = past;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(&format!("e\n{expected}\n")), "{body}");
        if let Some(n) = body_bytes {
            assert!(body.contains(&format!("body-bytes: {n}")), "{body}");
        }
    }
}

/// A backend that answers every request with its body, byte for byte.
async fn body_mirror() -> std::net::SocketAddr {
    backends::scripted(|mut s| async move {
        let mut rest = Vec::new();
        loop {
            // `read_head` reads from the socket only; bytes past the last
            // body are the next head's start.
            let (head, more) = if rest.is_empty() {
                match tokio::time::timeout(Duration::from_secs(5), read_head(&mut s)).await {
                    Ok(got) => got,
                    Err(_) => return,
                }
            } else {
                let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                let more = rest.split_off(end + 4);
                (String::from_utf8(std::mem::take(&mut rest)).unwrap(), more)
            };
            let length: usize =
                head_value(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            let mut body = read_exactly(&mut s, more, length).await;
            rest = body.split_off(length);
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
            if s.write_all(answer.as_bytes()).await.is_err() || s.write_all(&body).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_large_body_arriving_in_pieces_reaches_the_backend_intact_and_the_next_request_follows() {
    let backend = body_mirror().await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Many reads' worth after the bytes read with the head, odd so that no
    // read size divides it.
    let body: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut wire = format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n");
    for piece in wire.chunks(300_001) {
        client.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (head, echoed, rest) = read_response(&mut client, Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the backend got the body byte for byte");
    let (head, after, _) = read_response(&mut client, rest).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the request behind the body: {head}"
    );
    assert!(after.is_empty());
}

#[tokio::test]
async fn a_body_that_stalls_after_whole_frames_went_on_gets_408_and_the_connection_closes() {
    let backend = body_mirror().await;
    let config = ProxyConfig {
        body_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    // More than two whole frames, which go on to the backend, then
    // nothing more (tests/http.rs stalls a body within its first frame).
    client.write_all(&vec![b'x'; 600_000]).await.unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        read_response(&mut client, Vec::new()),
    );
    let (head, _, _) = answer.await.expect("an answer within 10s");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    closes_after(&head, &mut client).await;
}

#[tokio::test]
async fn a_body_the_pipeline_did_not_read_closes_the_connection_after_the_answer() {
    let echo = backends::echo("e").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // No route for this host: answered before a byte of the body is read,
    // which would otherwise be taken for the next request.
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: nowhere\r\nContent-Length: 10\r\n\r\nGET / HTTP")
        .await
        .unwrap();
    let (head, _, _) = read_response(&mut client, Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    closes_after(&head, &mut client).await;
}

#[tokio::test]
async fn responses_keep_their_framing_large_and_chunked() {
    let big = "x".repeat(100_000);
    let chunked = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let backend = backends::scripted(move |mut s| {
        let big = big.clone();
        async move {
            let mut rest = Vec::new();
            loop {
                let (head, more) = match tokio::time::timeout(Duration::from_secs(5), async {
                    read_head(&mut s).await
                })
                .await
                {
                    Ok(got) => got,
                    Err(_) => return,
                };
                rest.extend_from_slice(&more);
                let answer = if head.starts_with("GET /big ") {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{big}",
                        big.len()
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}")
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\nGET /chunked HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, body, rest) = read_response(&mut client, Vec::new()).await;
    assert_eq!(
        head_value(&head, "content-length").as_deref(),
        Some("100000")
    );
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|&b| b == b'x'));
    let (head, body, _) = read_response(&mut client, rest).await;
    assert_eq!(
        head_value(&head, "transfer-encoding").as_deref(),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(body, b"hello world");
    assert!(head_value(&head, "date").is_some(), "{head}");
}

#[tokio::test]
async fn the_first_head_has_one_header_read_timeout_from_the_connect() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_secs(2),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("e", config).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let connected = tokio::time::Instant::now();
    // The first byte late, then the rest a byte at a time: a slow head.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for byte in b"GET / HTTP/1.1\r\nHost: h\r\n" {
        if client.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(read_until_closed(&mut client).await.is_empty());
    // Counted from the first bytes, the head would have had until
    // 1.5 + 2 s; from the connect it has 2 s.
    let open_for = connected.elapsed();
    assert!(
        open_for < Duration::from_millis(3000),
        "open for {open_for:?}"
    );
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_the_connection_closed() {
    let echo = backends::echo("e").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _, _) = read_response(&mut client, Vec::new()).await;
    closes_after(&head, &mut client).await;
}

#[tokio::test]
async fn a_keep_alive_connection_idle_past_the_header_read_timeout_is_closed_unanswered() {
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let (_echo, proxy) = TestProxy::with_echo("e", config).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, _, rest) = read_response(&mut client, Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty());
    // Then half a head, and nothing more: the same limit applies.
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(read_until_closed(&mut client).await.is_empty());
    proxy
        .wait_metric("switchyard_connections_active", &[], 0.0)
        .await;
}

#[tokio::test]
async fn draining_closes_idle_connections_at_once_and_busy_ones_after_their_response() {
    // `/slow` is answered only once the test says so, after the idle
    // connections have closed: they cannot have waited for it.
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let backend = {
        let (arrived, release) = (arrived.clone(), release.clone());
        backends::scripted(move |mut stream| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                // Requests here have no body; the proxy closes the
                // connection at the drain.
                while let Ok((head, _)) = next_head(&mut stream).await {
                    let body = if head.starts_with("GET /slow") {
                        arrived.notify_one();
                        release.notified().await;
                        "slow"
                    } else {
                        "fast"
                    };
                    let length = format!("Content-Length: {}", body.len());
                    write_head(&mut stream, "HTTP/1.1 200 OK", &[&length]).await;
                    if stream.write_all(body.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    };
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut idle, Vec::new()).await;
    // Connected, nothing sent yet: as idle as the one between requests.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut busy = TcpStream::connect(proxy.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    arrived.notified().await;
    let shutdown = proxy.shutdown.clone();
    let drain = tokio::spawn(async move { shutdown.run(Duration::from_secs(30)).await });

    // Bounds only against a hang: `/slow` is held until both are closed.
    let closed = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut idle))
        .await
        .expect("the idle connection closes at once");
    assert!(closed.is_empty());
    let closed = tokio::time::timeout(Duration::from_secs(10), read_until_closed(&mut silent))
        .await
        .expect("a connection that sent nothing closes at once");
    assert!(closed.is_empty());
    release.notify_one();
    let (head, body, _) = read_response(&mut busy, Vec::new()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"slow");
    closes_after(&head, &mut busy).await;
    drain.await.unwrap();
}
