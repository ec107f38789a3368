//! Real backends on real sockets: an HTTP + WebSocket echo, and scripted
//! raw-TCP backends for the cases no well-behaved server produces.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../../examples/shared/websocket_echo.rs"]
mod websocket_echo;

/// An echo backend: HTTP requests are answered with `name`, the request
/// line and headers; WebSocket upgrades echo every message.
/// `GET /slow` waits 500 ms before answering.
pub struct Echo {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

pub async fn echo(name: &'static str) -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(move |request| async move {
                    Ok::<_, Infallible>(echo_response(name, request).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Echo { addr, connections }
}

async fn echo_response(name: &str, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(switching) = websocket_echo::accept(&mut request) {
        return switching;
    }
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut text = format!("{name}\n{} {}\n", request.method(), request.uri());
    for (k, v) in request.headers() {
        text += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    text += &format!("body-bytes: {}\n", body.len());
    Response::builder()
        .header("x-backend", name)
        .body(Full::from(text))
        .unwrap()
}

/// A backend that runs `script` on every accepted connection.
pub async fn scripted<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream));
        }
    });
    addr
}

/// An address nothing listens on (connections are refused).
pub async fn refused() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Reads up to the end of an HTTP head; returns the head and whatever
/// bytes came after it in the same reads.
pub async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    next_head(stream).await.unwrap_or_else(|partial| {
        panic!("connection closed before the end of the head: {partial:?}")
    })
}

/// As [`read_head`], for a connection the peer may close between heads:
/// what arrived before the close, if it did.
pub async fn next_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        match stream.read(&mut chunk).await {
            Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
            _ => return Err(String::from_utf8_lossy(&buf).into_owned()),
        }
    }
}

/// Reads exactly `n` bytes, starting with `already` (bytes read with the head).
pub async fn read_exactly(stream: &mut TcpStream, mut already: Vec<u8>, n: usize) -> Vec<u8> {
    let mut rest = vec![0u8; n.saturating_sub(already.len())];
    stream.read_exact(&mut rest).await.unwrap();
    already.extend_from_slice(&rest);
    already
}

/// The value of `name` in a raw response head (case-insensitive name).
pub fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads a body framed by `Content-Length`, starting with `rest`.
pub async fn read_body(stream: &mut TcpStream, head: &str, rest: Vec<u8>) -> String {
    let length: usize = head_value(head, "content-length")
        .expect("content-length")
        .parse()
        .unwrap();
    String::from_utf8_lossy(&read_exactly(stream, rest, length).await).into_owned()
}

/// Reads until EOF or an error (both count as closed); returns what
/// arrived. Panics if the connection is still open after 10 s.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "connection still open after 10s; got {:?}",
                String::from_utf8_lossy(&all)
            ),
        }
    }
}

/// Writes a response head (`status line`, then headers) with no body.
pub async fn write_head(stream: &mut TcpStream, status_line: &str, headers: &[&str]) {
    let mut text = format!("{status_line}\r\n");
    for h in headers {
        text += h;
        text += "\r\n";
    }
    text += "\r\n";
    stream.write_all(text.as_bytes()).await.unwrap();
}

/// Closes with a TCP reset instead of a FIN.
pub fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}
