//! Clients for tests: plain HTTP requests through the proxy and raw
//! upgrade handshakes.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::backends::read_head;

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// `GET http://proxy/path` with `Host: host` and extra headers.
pub async fn get(proxy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::get(format!("http://{proxy}{path}")).header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A WebSocket-style upgrade request for `host` + `path`.
pub fn upgrade_request(host: &str, path: &str, protocol: &str, extra: &[&str]) -> String {
    let mut text = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        text += h;
        text += "\r\n";
    }
    text + "\r\n"
}

/// Sends `request` (plus `trailing` bytes in the same write) on a new
/// connection and reads the response head.
pub async fn raw_exchange(
    proxy: SocketAddr,
    request: &str,
    trailing: &[u8],
) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut bytes = request.as_bytes().to_vec();
    bytes.extend_from_slice(trailing);
    stream.write_all(&bytes).await.unwrap();
    let (head, rest) = read_head(&mut stream).await;
    (stream, head, rest)
}
