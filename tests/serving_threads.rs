//! Serving threads (busy polling with more than one thread): every thread
//! takes new connections from the shared address, serves requests and
//! tunnels from a runtime of its own, and ends with the drain.

mod common;

use std::time::Duration;

use common::TestProxy;
use common::backends::{self, read_body, read_head};
use common::client::upgrade_request;
use common::manifests::route;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const THREADS: usize = 2;
const WINDOW: Duration = Duration::from_micros(50);

/// Sends one keep-alive request on `stream` and returns the response body.
async fn exchange(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let (head, rest) = read_head(stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_body(stream, &head, rest).await
}

#[tokio::test]
async fn new_connections_are_spread_over_the_serving_threads_and_each_serves_its_own() {
    let echo = backends::echo("echo").await;
    let (proxy, threads) =
        TestProxy::start_on_threads(&route("r", "h", "/", &[echo.addr]), THREADS, WINDOW);
    let idle: Vec<usize> = threads
        .iter()
        .map(|t| t.runtime.metrics().num_alive_tasks())
        .collect();

    // Each connection is served by a task on the runtime of the thread
    // whose listening socket the kernel gave it to. With 32 of them, all
    // on one of two sockets would be a 1 in 2^31 chance.
    let mut connections = Vec::new();
    for _ in 0..32 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(exchange(&mut stream).await.starts_with("echo\n"));
        connections.push(stream);
    }
    for (index, (thread, idle)) in threads.iter().zip(idle).enumerate() {
        let alive = thread.runtime.metrics().num_alive_tasks();
        assert!(
            alive > idle,
            "serving thread {index} has {alive} tasks, as many as before any connection"
        );
    }
    // Keep-alive goes on on every connection, each through its own
    // thread's backend pool.
    for stream in &mut connections {
        assert!(exchange(stream).await.starts_with("echo\n"));
    }
}

#[tokio::test]
async fn a_tunnel_on_a_serving_thread_carries_data_and_the_drain_ends_the_threads() {
    let echo = backends::echo("echo").await;
    let (proxy, threads) =
        TestProxy::start_on_threads(&route("r", "h", "/", &[echo.addr]), THREADS, WINDOW);
    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    tunnel
        .write_all(upgrade_request("h", "/ws", "websocket", &[]).as_bytes())
        .await
        .unwrap();
    let (head, rest) = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty());
    // A masked text frame "hi"; the echo backend answers it unmasked.
    tunnel
        .write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .unwrap();
    let mut frame = [0u8; 4];
    tunnel.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame, [0x81, 2, b'h', b'i']);

    proxy.shutdown.run(Duration::from_millis(100)).await;
    proxy.wait_tunnel_closed("shutdown").await;
    // Hang guard only: the threads end once their connections have.
    for _ in 0..200 {
        if threads.iter().all(|t| t.thread.is_finished()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("serving threads still running 10 s after the drain");
}
