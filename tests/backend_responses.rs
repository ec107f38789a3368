//! What a backend's HTTP/1 answer becomes for the client: every way a
//! response body can be framed, interim responses, early answers to a
//! request whose body is still on its way, and answers that are not HTTP.
//! The backends are scripted over raw sockets, so the exact bytes on the
//! wire are the test's.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestProxy;
use common::backends::{self, head_value, read_body, read_head, read_until_closed, write_head};
use common::client::{get, raw_exchange};
use common::manifests::route;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that answers every request on a connection with `response`
/// and counts its connections.
async fn answering(response: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = backends::scripted(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                let Some((head, rest)) = read_head_or_close(&mut s).await else {
                    return;
                };
                if head_value(&head, "content-length").is_some() {
                    read_body(&mut s, &head, rest).await;
                }
                if s.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

/// [`read_head`], or `None` once the proxy has closed the connection.
async fn read_head_or_close(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut probe = [0u8; 1];
    let n = stream.peek(&mut probe).await.ok()?;
    (n > 0).then_some(())?;
    Some(read_head(stream).await)
}

/// Two GETs on one client connection: the answers' heads and bodies.
async fn two_gets(proxy: &TestProxy) -> Vec<(String, String)> {
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut client).await;
        let body = if head_value(&head, "content-length").is_some() {
            read_body(&mut client, &head, rest).await
        } else {
            dechunk(&mut client, rest).await
        };
        answers.push((head, body));
    }
    answers
}

/// Reads a chunked body the proxy sent (its own framing, so simple).
async fn dechunk(stream: &mut TcpStream, mut buf: Vec<u8>) -> String {
    let mut body = Vec::new();
    loop {
        while let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16)
                .expect("a chunk size");
            if buf.len() < line_end + 2 + size + 2 {
                break;
            }
            if size == 0 {
                return String::from_utf8(body).unwrap();
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside a chunked body");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_chunked_response_reaches_the_client_whole_and_its_connection_is_kept() {
    let (backend, accepted) = answering(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for (head, body) in two_gets(&proxy).await {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "hello, world");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection");
}

#[tokio::test]
async fn a_response_with_both_framings_is_read_as_chunked_without_its_length_and_not_trusted_again()
{
    // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and a
    // proxy must not pass the length on.
    let (backend, accepted) = answering(
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
         2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for (head, body) in two_gets(&proxy).await {
        assert_ne!(
            head_value(&head, "content-length").as_deref(),
            Some("100"),
            "{head}"
        );
        assert_eq!(body, "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a fresh connection each time"
    );
}

#[tokio::test]
async fn a_response_delimited_by_the_close_is_relayed_whole() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            .await
            .unwrap();
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for _ in 0..2 {
        let answer = get(proxy.addr, "h", "/", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "until the end");
    }
}

#[tokio::test]
async fn interim_responses_are_not_relayed() {
    let (backend, _) = answering(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsent",
    )
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, rest) =
        raw_exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head_value(&head, "link").is_none(), "{head}");
    assert_eq!(rest, b"sent");
}

#[tokio::test]
async fn an_unusual_reason_phrase_reaches_the_client() {
    let (backend, _) = answering("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, _) =
        raw_exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{head}");
}

#[tokio::test]
async fn a_head_request_reads_no_body_and_keeps_the_connection() {
    let (backend, accepted) = answering("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        client
            .write_all(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(head_value(&head, "content-length").as_deref(), Some("1234"));
        assert!(rest.is_empty());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_length_listed_twice_reaches_the_client_once_and_the_connection_is_kept() {
    // RFC 9110 8.6 lets a recipient take `5, 5` as 5; the client must get
    // one plain length, not the list and not a closed connection.
    let (backend, accepted) =
        answering("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for (head, body) in two_gets(&proxy).await {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(head_value(&head, "content-length").as_deref(), Some("5"));
        assert_eq!(body, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one backend connection");
}

#[tokio::test]
async fn a_malformed_length_on_an_answer_to_head_is_left_out_not_fatal() {
    let (backend, _) = answering("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, rest) =
        raw_exchange(proxy.addr, "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(head_value(&head, "content-length"), None, "{head}");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn an_answer_that_is_not_http_is_a_502() {
    for garbage in [
        "SSH-2.0-OpenSSH_9.2\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let backend = backends::scripted(move |mut s| async move {
            read_head(&mut s).await;
            let _ = s.write_all(garbage.as_bytes()).await;
            let _ = read_until_closed(&mut s).await;
        })
        .await;
        let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
        let answer = get(proxy.addr, "h", "/", &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{garbage:?}");
    }
}

#[tokio::test]
async fn a_malformed_chunk_cuts_the_response_off() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n")
            .await;
        let _ = read_until_closed(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    // The head may or may not have gone out before the bad chunk was
    // read; either way the connection closes and the body never ends.
    let text = String::from_utf8_lossy(&read_until_closed(&mut client).await).into_owned();
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut body was ended cleanly: {text:?}"
    );
    assert!(text.matches("HTTP/1.1").count() <= 1, "{text:?}");
}

#[tokio::test]
async fn an_early_answer_to_an_upload_reaches_the_client_at_once() {
    // Refuses the upload after its head, without reading the body.
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(
            &mut s,
            "HTTP/1.1 413 Payload Too Large",
            &["Content-Length: 0", "Connection: close"],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, _) = raw_exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n",
        b"the start of a large upload",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn a_chunked_upload_goes_to_the_backend_chunked_with_its_end_to_end_trailers() {
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let backend = backends::scripted(move |mut s| {
        let tx = tx.clone();
        async move {
            let (head, mut rest) = read_head(&mut s).await;
            let mut wire = head.into_bytes();
            // The whole chunked body, up to its last line.
            while !rest.ends_with(b"\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                rest.extend_from_slice(&chunk[..n]);
            }
            wire.extend_from_slice(&rest);
            write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 0"]).await;
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(wire);
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, _) = raw_exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n",
        // A trailer may not carry what the proxy vouches for or what frames,
        // routes or authorizes the request: a backend that merges trailers
        // into the head would take them as the proxy's.
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\nX-Real-IP: 6.6.6.6\r\n\
          X-Forwarded-For: 6.6.6.6\r\nAuthorization: Bearer x\r\nContent-Length: 9\r\n\
          Host: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let wire = String::from_utf8(rx.await.unwrap()).unwrap();
    let (head, body) = wire.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    let mut data = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            assert_eq!(after, "x-sum: 5\r\n\r\n");
            break;
        }
        data.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    assert_eq!(data, "abcde");
}

#[tokio::test]
async fn an_http_1_0_backend_is_answered_in_the_proxys_own_version_on_both_servers() {
    // RFC 9110 6.2: an intermediary sends its own version. A backend's
    // HTTP/1.0 reaching the client would also cost it keep-alive.
    let (backend, _) = answering("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    // A GET (switchyard's own HTTP/1 server), then a chunked upload, which
    // hyper's server serves from there on the same connection.
    let requests: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    for request in requests {
        client.write_all(request).await.unwrap();
        let (head, rest) = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(read_body(&mut client, &head, rest).await, "ok");
    }
}
