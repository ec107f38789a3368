//! DESIGN.md's upgrade rules, each proved over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::TestProxy;
use common::backends::{
    self, read_body, read_exactly, read_head, read_until_closed, reset, write_head,
};
use common::client::{get, raw_exchange, upgrade_request};
use common::manifests::{ingress, route, service};
use futures_util::{SinkExt, StreamExt};
use switchyard::proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SWITCH: &str = "HTTP/1.1 101 Switching Protocols";

/// Upgrades a new connection to `proxy` (host `h`, path `/`) and checks
/// the 101; returns the client's end and the bytes that came behind it.
async fn open_tunnel(proxy: &TestProxy) -> (TcpStream, Vec<u8>) {
    let (client, head, rest) = raw_exchange(
        proxy.addr,
        &upgrade_request("h", "/", "websocket", &[]),
        b"",
    )
    .await;
    assert!(head.starts_with(SWITCH), "{head}");
    (client, rest)
}

/// A scripted backend's side of a WebSocket upgrade: reads the request
/// head, answers 101; returns bytes the client sent behind its head.
async fn switch_to_websocket(stream: &mut TcpStream) -> Vec<u8> {
    let (_, early) = read_head(stream).await;
    write_head(
        stream,
        SWITCH,
        &["Upgrade: websocket", "Connection: Upgrade"],
    )
    .await;
    early
}

async fn websocket(
    proxy: &TestProxy,
    host: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let mut request = format!("ws://{}{path}", proxy.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn a_real_websocket_client_talks_to_a_real_websocket_server() {
    let echo = backends::echo("ws").await;
    let proxy = TestProxy::start(&route("ws", "chat.test", "/", &[echo.addr])).await;
    let mut ws = websocket(&proxy, "chat.test", "/socket").await;
    for text in ["hello", "through", "switchyard"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {} // the server's close reply, then EOF
    drop(ws);
    let ns = [
        ("namespace", "default"),
        ("ingress", "ws"),
        ("service", "ws"),
    ];
    proxy
        .wait_metric(
            "switchyard_tunnel_closes_total",
            &[ns[0], ns[1], ns[2], ("reason", "completed")],
            1.0,
        )
        .await;
    assert_eq!(
        proxy.metric("switchyard_upgrades_total", &[("result", "switched")]),
        1.0
    );
    assert_eq!(proxy.metric("switchyard_tunnels_active", &ns), 0.0);
    assert!(
        proxy.metric(
            "switchyard_tunnel_bytes_total",
            &[("direction", "client_to_backend")]
        ) > 0.0
    );
    assert!(
        proxy.metric(
            "switchyard_tunnel_bytes_total",
            &[("direction", "backend_to_client")]
        ) > 0.0
    );
}

#[tokio::test]
async fn a_backend_reset_mid_tunnel_reaches_metrics_never_the_client() {
    let backend = backends::scripted(|mut s| async move {
        switch_to_websocket(&mut s).await;
        s.write_all(b"tunnel bytes").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        reset(s);
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (mut client, rest) = open_tunnel(&proxy).await;
    let mut after = rest;
    after.extend(read_until_closed(&mut client).await);
    assert_eq!(
        after, b"tunnel bytes",
        "nothing but tunnel bytes after the 101"
    );
    proxy
        .wait_metric(
            "switchyard_tunnel_errors_total",
            &[("reason", "backend_error")],
            1.0,
        )
        .await;
}

#[tokio::test]
async fn a_client_reset_mid_tunnel_leaves_the_proxy_healthy() {
    let echo = backends::echo("echo").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let (client, _) = open_tunnel(&proxy).await;
    reset(client);
    proxy
        .wait_metric(
            "switchyard_tunnel_errors_total",
            &[("reason", "client_error")],
            1.0,
        )
        .await;
    let answer = get(proxy.addr, "h", "/after", &[]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("GET /after"));
}

/// A backend that upgrades, reads to EOF, then answers with what it read.
async fn half_close_backend() -> std::net::SocketAddr {
    backends::scripted(|mut s| async move {
        let early = switch_to_websocket(&mut s).await;
        let mut got = early;
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(b"backend got: ").await.unwrap();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await
}

#[tokio::test]
async fn a_client_half_close_reaches_the_backend_and_replies_still_flow() {
    let proxy = TestProxy::start(&route("r", "h", "/", &[half_close_backend().await])).await;
    let (mut client, _) = open_tunnel(&proxy).await;
    client.write_all(b"request-data").await.unwrap();
    client.shutdown().await.unwrap(); // half-close: we still read
    assert_eq!(
        read_until_closed(&mut client).await,
        b"backend got: request-data"
    );
    proxy.wait_tunnel_closed("completed").await;
}

#[tokio::test]
async fn a_backend_half_close_reaches_the_client_and_client_bytes_still_flow() {
    // What the backend read after its half-close, reported to the test (a
    // failed assertion in the backend's task would go unseen).
    let (report, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let backend = backends::scripted(move |mut s| {
        let report = report.clone();
        async move {
            switch_to_websocket(&mut s).await;
            s.write_all(b"bye").await.unwrap();
            let (mut read, mut write) = s.into_split();
            write.shutdown().await.unwrap(); // half-close towards the client
            let mut got = Vec::new();
            let _ = read.read_to_end(&mut got).await;
            let _ = report.send(got);
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (mut client, rest) = open_tunnel(&proxy).await;
    let mut got = rest;
    // The backend's FIN arrives as EOF while our direction stays open.
    got.extend(read_until_closed(&mut client).await);
    assert_eq!(got, b"bye");
    client.write_all(b"still talking").await.unwrap();
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), reported.recv()).await;
    assert_eq!(got.unwrap().unwrap(), b"still talking");
    proxy.wait_tunnel_closed("completed").await;
}

#[tokio::test]
async fn a_backend_half_close_loses_no_client_bytes_on_a_connection_whose_first_segment_was_a_bare_p()
 {
    // Plain requests are answered; the upgrade half-closes towards the
    // client and reports what the client still sent.
    let (report, mut reported) = tokio::sync::mpsc::unbounded_channel();
    let backend = backends::scripted(move |mut s| {
        let report = report.clone();
        async move {
            while let Ok((head, _)) = backends::next_head(&mut s).await {
                if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                    write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 0"]).await;
                    continue;
                }
                write_head(
                    &mut s,
                    SWITCH,
                    &["Upgrade: websocket", "Connection: Upgrade"],
                )
                .await;
                let (mut read, mut write) = s.into_split();
                write.shutdown().await.unwrap();
                let mut got = Vec::new();
                let _ = read.read_to_end(&mut got).await;
                let _ = report.send(got);
                return;
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // A first segment that could still be the HTTP/2 preface.
    client.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .write_all(b"OST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    client
        .write_all(upgrade_request("h", "/", "websocket", &[]).as_bytes())
        .await
        .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert!(head.starts_with(SWITCH), "{head}");
    // The backend's FIN arrives as EOF while our direction stays open.
    let mut got = rest;
    got.extend(read_until_closed(&mut client).await);
    assert!(got.is_empty(), "{got:?}");
    // Enough, in small writes, that some of it would arrive while the
    // tunnel looks at its half-closed side.
    let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    for chunk in sent.chunks(1024) {
        client.write_all(chunk).await.unwrap();
    }
    client.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), reported.recv())
        .await
        .expect("the backend saw the client's close")
        .expect("the backend reported");
    assert!(
        got == sent,
        "the backend got {} of {} bytes",
        got.len(),
        sent.len()
    );
    proxy.wait_tunnel_closed("completed").await;
}

#[tokio::test]
async fn a_backend_that_switches_before_the_body_is_a_502_that_ejects_no_endpoint() {
    // Answers 101 to every upgrade at once, without waiting for its body.
    let backend = backends::scripted(|mut s| async move {
        if backends::next_head(&mut s).await.is_ok() {
            write_head(
                &mut s,
                SWITCH,
                &["Upgrade: websocket", "Connection: Upgrade"],
            )
            .await;
            let _ = read_until_closed(&mut s).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    // More than the failures in a row that eject an endpoint (3).
    for _ in 0..4 {
        let request = upgrade_request("h", "/", "websocket", &["Content-Length: 5"]);
        let (mut client, head, _) = raw_exchange(proxy.addr, &request, b"").await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        drop(client.write_all(b"hello").await);
    }
    assert_eq!(
        proxy.metric("switchyard_upstream_ejections_total", &[]),
        0.0,
        "a client sending a body with its upgrade cannot get endpoints ejected"
    );
}

#[tokio::test]
async fn bytes_sent_right_behind_the_upgrade_request_are_delivered() {
    let proxy = TestProxy::start(&route("r", "h", "/", &[half_close_backend().await])).await;
    let (mut client, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("h", "/", "websocket", &[]),
        b"EARLY-BYTES",
    )
    .await;
    assert!(head.starts_with(SWITCH), "{head}");
    client.shutdown().await.unwrap();
    assert_eq!(
        read_until_closed(&mut client).await,
        b"backend got: EARLY-BYTES"
    );
}

#[tokio::test]
async fn bytes_behind_an_upgrade_reach_the_backend_on_a_connection_hyper_serves() {
    // A chunked upload first: switchyard's own server hands the connection
    // to hyper's, which then parses the upgrade, holding what came behind
    // it in its own buffer.
    let backend = backends::scripted(|mut s| async move {
        let (head, mut rest) = read_head(&mut s).await;
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            write_head(
                &mut s,
                SWITCH,
                &["Upgrade: websocket", "Connection: Upgrade"],
            )
            .await;
            let _ = s.read_to_end(&mut rest).await;
            let _ = s.write_all(b"backend got: ").await;
            let _ = s.write_all(&rest).await;
            let _ = s.shutdown().await;
            return;
        }
        while !rest.ends_with(b"0\r\n\r\n") {
            let mut more = [0u8; 1024];
            let n = s.read(&mut more).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&more[..n]);
        }
        write_head(&mut s, "HTTP/1.1 200 OK", &["Content-Length: 0"]).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty());
    let upgrade = upgrade_request("h", "/", "websocket", &[]) + "EARLY-BYTES";
    client.write_all(upgrade.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut client).await;
    assert!(head.starts_with(SWITCH), "{head}");
    client.write_all(b"+LATER").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = rest;
    got.extend(read_until_closed(&mut client).await);
    assert_eq!(got, b"backend got: EARLY-BYTES+LATER");
}

#[tokio::test]
async fn bytes_a_backend_sends_right_behind_its_101_are_delivered() {
    let backend = backends::scripted(|mut stream| async move {
        let _ = read_head(&mut stream).await;
        // The 101 and the first tunnel bytes in one write: the proxy reads
        // them together and must pass the bytes on before anything else.
        let answer =
            format!("{SWITCH}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO-FIRST");
        stream.write_all(answer.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
        let _ = read_until_closed(&mut stream).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (mut client, rest) = open_tunnel(&proxy).await;
    let mut got = rest;
    got.extend(read_until_closed(&mut client).await);
    assert_eq!(got, b"HELLO-FIRST");
}

#[tokio::test]
async fn megabytes_each_way_cross_a_tunnel_intact() {
    // Many full reads each way, and more than the sockets buffer.
    let proxy = TestProxy::start(&route("r", "h", "/", &[half_close_backend().await])).await;
    let (client, rest) = open_tunnel(&proxy).await;
    assert!(rest.is_empty());
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut reader, mut writer) = client.into_split();
    let sent = data.clone();
    let sending = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    sending.await.unwrap();
    let mut expected = b"backend got: ".to_vec();
    expected.extend_from_slice(&data);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "every byte, in order");
}

#[tokio::test]
async fn a_declined_upgrade_is_relayed_and_the_connection_stays_http() {
    for (status, body) in [
        ("426 Upgrade Required", "upgrade refused"),
        ("200 OK", "plain answer"),
    ] {
        // Each backend connection answers one request, keep-alive; the one
        // the upgrade came on reports what else it was sent, which would
        // be a request smuggled onto a connection never to be used again.
        let (report, mut reported) = tokio::sync::mpsc::unbounded_channel();
        let backend = backends::scripted(move |mut s| {
            let report = report.clone();
            async move {
                let (head, _) = read_head(&mut s).await;
                let length = format!("Content-Length: {}", body.len());
                write_head(
                    &mut s,
                    &format!("HTTP/1.1 {status}"),
                    &[&length, "Connection: keep-alive"],
                )
                .await;
                s.write_all(body.as_bytes()).await.unwrap();
                if head.to_ascii_lowercase().contains("upgrade: websocket") {
                    let mut extra = Vec::new();
                    let _ = s.read_to_end(&mut extra).await;
                    let _ = report.send(extra);
                }
            }
        })
        .await;
        let proxy = TestProxy::start(&route("ws", "h", "/", &[backend])).await;
        let (mut client, head, rest) = raw_exchange(
            proxy.addr,
            &upgrade_request("h", "/ws", "websocket", &[]),
            b"",
        )
        .await;
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        assert_eq!(
            read_exactly(&mut client, rest, body.len()).await,
            body.as_bytes()
        );

        // The client's connection is HTTP still: its next request, to the
        // same backend, is answered over a new backend connection.
        client
            .write_all(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_head(&mut client));
        let (head, rest) = answer.await.expect("the next request answered");
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head}");
        assert_eq!(read_body(&mut client, &head, rest).await, body);
        let extra = tokio::time::timeout(Duration::from_secs(10), reported.recv()).await;
        assert_eq!(
            extra.unwrap().unwrap(),
            b"",
            "the refused upgrade's backend connection was used again"
        );
        assert_eq!(
            proxy.metric("switchyard_upgrades_total", &[("result", "declined")]),
            1.0
        );
    }
}

#[tokio::test]
async fn a_101_that_is_not_the_switch_offered_is_a_502_and_an_endpoint_failure() {
    // Another protocol; no `Connection: upgrade` (the proxy must not make
    // it valid with its own); an HTTP/1.0 101.
    let answers: [(&'static str, &'static [&'static str]); 3] = [
        (SWITCH, &["Upgrade: h2c", "Connection: Upgrade"]),
        (SWITCH, &["Upgrade: websocket"]),
        (
            "HTTP/1.0 101 Switching Protocols",
            &["Upgrade: websocket", "Connection: Upgrade"],
        ),
    ];
    for (status_line, fields) in answers {
        let backend = backends::scripted(move |mut s| async move {
            read_head(&mut s).await;
            write_head(&mut s, status_line, fields).await;
            let _ = s
                .write_all(b"new-protocol bytes that must not reach the client")
                .await;
        })
        .await;
        let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
        // The passive health default: three failures in a row eject.
        for attempt in 1..=3 {
            let (mut client, head, rest) = raw_exchange(
                proxy.addr,
                &upgrade_request("h", "/", "websocket", &[]),
                b"",
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 502"), "{fields:?}: {head}");
            let mut body = rest;
            body.extend(read_rest_or_keepalive(&mut client).await);
            assert!(!String::from_utf8_lossy(&body).contains("new-protocol"));
            assert_eq!(
                proxy.metric(
                    "switchyard_upgrades_total",
                    &[("result", "protocol_mismatch")]
                ),
                f64::from(attempt),
                "{fields:?}"
            );
        }
        assert_eq!(
            proxy.metric("switchyard_upstream_ejections_total", &[]),
            1.0,
            "{status_line} {fields:?}: the endpoint is taken out of rotation"
        );
    }
}

#[tokio::test]
async fn a_backend_connection_switched_without_being_asked_is_not_used_again() {
    // A backend that answers a plain request with a 101 has left HTTP on
    // that connection: another request sent on it would be read as the
    // other protocol's bytes.
    let reused = Arc::new(AtomicBool::new(false));
    let flag = reused.clone();
    let backend = backends::scripted(move |mut s| {
        let flag = flag.clone();
        async move {
            read_head(&mut s).await;
            write_head(&mut s, SWITCH, &["Upgrade: h2c", "Connection: Upgrade"]).await;
            let mut byte = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await
            {
                flag.store(true, Ordering::SeqCst);
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for _ in 0..3 {
        let answer = get(proxy.addr, "h", "/", &[]).await;
        assert_eq!(answer.status, 502, "an unasked switch is refused");
    }
    assert!(
        !reused.load(Ordering::SeqCst),
        "a request went out on a connection switched to another protocol"
    );
    // The endpoint's failure, three in a row: out of rotation.
    assert_eq!(
        proxy.metric("switchyard_upstream_ejections_total", &[]),
        1.0
    );
}

/// Reads whatever is buffered for a moment (the connection may stay open).
async fn read_rest_or_keepalive(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&chunk[..n]);
    }
    all
}

/// A backend that answers every request with the request head it saw.
async fn head_reporting_backend() -> std::net::SocketAddr {
    backends::scripted(|mut s| async move {
        let (head, _) = read_head(&mut s).await;
        let length = format!("Content-Length: {}", head.len());
        write_head(&mut s, "HTTP/1.1 200 OK", &[&length, "Connection: close"]).await;
        s.write_all(head.as_bytes()).await.unwrap();
    })
    .await
}

#[tokio::test]
async fn h2c_upgrades_are_not_forwarded_unless_the_route_allows_them() {
    let backend = head_reporting_backend().await;
    let yaml = service("b", &[backend])
        + &ingress("plain", "plain.test", "/", "b", &[])
        + &ingress(
            "h2c",
            "h2c.test",
            "/",
            "b",
            &[("switchyard.dev/upgrade-protocols", "websocket, h2c")],
        );
    let proxy = TestProxy::start(&yaml).await;
    let h2c = |host: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
    };

    let (mut client, head, rest) = raw_exchange(proxy.addr, &h2c("plain.test"), b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = read_body(&mut client, &head, rest).await;
    let seen = seen.to_ascii_lowercase();
    assert!(!seen.contains("upgrade"), "backend saw an upgrade: {seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");
    assert_eq!(
        proxy.metric("switchyard_upgrades_total", &[("result", "not_allowed")]),
        1.0
    );

    let (mut client, head, rest) = raw_exchange(proxy.addr, &h2c("h2c.test"), b"").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = read_body(&mut client, &head, rest).await;
    let seen = seen.to_ascii_lowercase();
    assert!(
        seen.contains("upgrade: h2c"),
        "allowed h2c is forwarded: {seen}"
    );
    // A server may switch to h2c only with the client's settings, listed
    // in `Connection` (RFC 7540 section 3.2).
    assert!(
        seen.contains("connection: upgrade, http2-settings\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("http2-settings: aamaaabkaaqaap__\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_from_the_101() {
    let backend = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(
            &mut s,
            SWITCH,
            &[
                "Upgrade: websocket",
                "Connection: Upgrade, X-Hop-Secret",
                "X-Hop-Secret: 1",
                "Keep-Alive: timeout=5",
                "Proxy-Connection: keep-alive",
                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            ],
        )
        .await;
        let _ = read_until_closed(&mut s).await;
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("h", "/", "websocket", &[]),
        b"",
    )
    .await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    for gone in ["x-hop-secret", "keep-alive", "proxy-connection"] {
        assert!(!head.contains(gone), "{gone} leaked: {head}");
    }
    assert!(head.contains("connection: upgrade"));
    assert!(head.contains("upgrade: websocket"));
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
}

/// A backend that switches to `protocol` when `accepts` the upgrade
/// request's head (as it read it), and answers 400 otherwise.
async fn switches_if(protocol: &'static str, accepts: fn(&str) -> bool) -> SocketAddr {
    backends::scripted(move |mut s| async move {
        let (head, _) = read_head(&mut s).await;
        let status = if accepts(&head) {
            "101 Switching Protocols"
        } else {
            "400 Bad Request"
        };
        write_head(
            &mut s,
            &format!("HTTP/1.1 {status}"),
            &[
                &format!("Upgrade: {protocol}"),
                "Connection: Upgrade",
                "Content-Length: 0",
            ],
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_from_the_upgrade_request() {
    let backend = switches_if("websocket", |head| {
        let head = head.to_ascii_lowercase();
        !head.contains("x-hop-secret")
            && !head.contains("keep-alive")
            && head.contains("upgrade: websocket")
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let extra = [
        "Connection: X-Hop-Secret",
        "X-Hop-Secret: 1",
        "Keep-Alive: 300",
    ];
    let (_client, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("h", "/", "websocket", &extra),
        b"",
    )
    .await;
    assert!(head.starts_with(SWITCH), "{head}");
}

#[tokio::test]
async fn the_backend_is_offered_the_protocol_as_the_client_wrote_it() {
    // Exactly one of each, the protocol in the client's case.
    let backend = switches_if("WebSocket", |head| {
        let lower = head.to_ascii_lowercase();
        head.matches("\r\nupgrade: WebSocket\r\n").count() == 1
            && lower.matches("\r\nupgrade:").count() == 1
            && lower.matches("\r\nconnection:").count() == 1
            && head.contains("\r\nconnection: upgrade\r\n")
    })
    .await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    let (_client, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("h", "/", "WebSocket", &[]),
        b"",
    )
    .await;
    assert!(head.starts_with(SWITCH), "{head}");
    // And the backend's own case goes back to the client.
    assert!(head.contains("\r\nupgrade: WebSocket\r\n"), "{head}");
}

#[tokio::test]
async fn upgrade_failures_before_the_101_are_ordinary_http_errors() {
    let refused = backends::refused().await;
    let silent = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let config = ProxyConfig {
        upstream_response_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    };
    let yaml = route("down", "down", "/", &[refused]) + &route("slow", "slow", "/", &[silent]);
    let proxy = TestProxy::start_with(config, &yaml).await;
    let (_c, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("down", "/", "websocket", &[]),
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let (_c, head, _) = raw_exchange(
        proxy.addr,
        &upgrade_request("slow", "/", "websocket", &[]),
        b"",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert_eq!(
        proxy.metric("switchyard_upgrades_total", &[("result", "connect_error")]),
        1.0
    );
    assert_eq!(
        proxy.metric("switchyard_upgrades_total", &[("result", "timeout")]),
        1.0
    );
    assert_eq!(
        proxy.metric(
            "switchyard_upstream_connect_errors_total",
            &[("service", "down")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_route_table_swap_never_touches_an_open_tunnel_or_an_in_flight_request() {
    let echo = backends::echo("v1").await;
    let proxy = TestProxy::start(&route("app", "h", "/", &[echo.addr])).await;
    let mut ws = websocket(&proxy, "h", "/").await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let slow = tokio::spawn(get(proxy.addr, "h", "/slow", &[]));
    // Routed once it has reached the backend: the tunnel holds one
    // backend connection, `/slow` another.
    while echo.connections.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The route disappears entirely while both are open.
    let other = backends::echo("other").await;
    proxy.set_routes(&route("other", "elsewhere", "/", &[other.addr]));
    assert_eq!(
        get(proxy.addr, "h", "/", &[]).await.status,
        404,
        "new requests see the new table"
    );

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("v1\nGET /slow"));
}

#[tokio::test]
async fn idle_tunnels_close_with_reason_idle_timeout() {
    let echo = backends::echo("echo").await;
    let mut config = ProxyConfig::default();
    config.tunnel.idle_timeout = Duration::from_millis(200);
    let proxy = TestProxy::start_with(config, &route("r", "h", "/", &[echo.addr])).await;
    let mut ws = websocket(&proxy, "h", "/").await;
    proxy.wait_tunnel_closed("idle_timeout").await;
    assert!(
        ws.next()
            .await
            .is_none_or(|m| m.is_err() || m.unwrap().is_close())
    );
}

#[tokio::test]
async fn on_shutdown_tunnels_get_the_drain_period_then_close_with_reason_shutdown() {
    let echo = backends::echo("echo").await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[echo.addr])).await;
    let mut ws = websocket(&proxy, "h", "/").await;
    let shutdown = proxy.shutdown.clone();
    let drain = tokio::spawn(async move { shutdown.run(Duration::from_secs(3)).await });
    proxy.shutdown.draining().await;
    // Still inside the drain period: the tunnel works.
    ws.send(Message::text("draining")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("draining"));
    drain.await.unwrap();
    proxy.wait_tunnel_closed("shutdown").await;
    assert!(
        TcpStream::connect(proxy.addr).await.is_err() || get_fails(proxy.addr).await,
        "listener closed"
    );
}

async fn get_fails(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn inconsistent_upgrade_headers_are_refused_with_400() {
    let backend = head_reporting_backend().await;
    let proxy = TestProxy::start(&route("r", "h", "/", &[backend])).await;
    for request in [
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let (_c, head, _) = raw_exchange(proxy.addr, request, b"").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{request:?}: {head}");
    }
}
