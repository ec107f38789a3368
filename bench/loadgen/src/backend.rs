//! The benchmark backend: one port, a minimal HTTP/1.1 server on raw
//! sockets so that it costs the shared core as little as possible.
//!
//! - `GET /small`: 200 with a 64-byte body (keep-alive).
//! - `POST /upload`: reads a `Content-Length` body, answers 200 `ok`.
//! - An upgrade request answers 101, then by path: `/echo` echoes raw
//!   bytes, `/sink?bytes=N` reads N bytes then writes the 8-byte count
//!   (no half-close needed: nginx ends a tunnel on the first FIN),
//!   `/source?bytes=N` writes N bytes then closes, `/idle` just holds.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SMALL_BODY: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";

pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // switchyard's listening socket, whose backlog is larger than tokio's
    // 128: with that, the direct baseline's burst of 256 connections
    // overflowed the accept queue, and the refused ones came a second later.
    let listener = switchyard::proxy::listener::bind(addr)?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

/// A parsed request head: what the backend needs of it.
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`, if any.
    pub websocket_key: Option<String>,
    /// The peer asked to close after this message (`Connection: close`).
    pub close: bool,
    /// Bytes read past the head.
    pub rest: Vec<u8>,
}

/// Reads one request or response head; `None` on a clean EOF first.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Head>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            buf.clear();
            let mut lines = head.lines();
            let first = lines.next().unwrap_or_default();
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let path = parts.next().unwrap_or_default().to_string();
            let mut content_length = 0;
            let mut upgrade = false;
            let mut websocket_key = None;
            let mut close = false;
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let name = name.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                    websocket_key = Some(value.trim().to_string());
                } else if name.eq_ignore_ascii_case("connection") {
                    close |= value.to_ascii_lowercase().contains("close");
                }
            }
            return Ok(Some(Head {
                method,
                path,
                content_length,
                upgrade,
                websocket_key,
                close,
                rest,
            }));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and drops `n` body bytes, `already` of which came with the head.
pub async fn discard(stream: &mut TcpStream, already: &[u8], n: usize) -> std::io::Result<Vec<u8>> {
    if already.len() >= n {
        return Ok(already[n..].to_vec());
    }
    let mut left = n - already.len();
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(chunk.len());
        let got = stream.read(&mut chunk[..want]).await?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= got;
    }
    Ok(Vec::new())
}

async fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut small = Vec::new();
    small.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            SMALL_BODY.len()
        )
        .as_bytes(),
    );
    small.extend_from_slice(SMALL_BODY);
    while let Some(head) = read_head(&mut stream, &mut buf).await? {
        if head.upgrade {
            return tunnel(stream, head).await;
        }
        let rest = discard(&mut stream, &head.rest, head.content_length).await?;
        buf.extend_from_slice(&rest);
        if head.method == "POST" {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await?;
        } else {
            stream.write_all(&small).await?;
        }
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 4.2.2); HAProxy checks it.
fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

async fn tunnel(mut stream: TcpStream, head: Head) -> std::io::Result<()> {
    let accept = head
        .websocket_key
        .as_deref()
        .map(accept_key)
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    let path = head.path.as_str();
    let mut chunk = vec![0u8; 64 * 1024];
    if path.starts_with("/echo") {
        stream.write_all(&head.rest).await?;
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return stream.shutdown().await;
            }
            stream.write_all(&chunk[..n]).await?;
        }
    } else if let Some(bytes) = path.strip_prefix("/sink?bytes=") {
        let expected: u64 = bytes.parse().unwrap_or(0);
        let mut total = head.rest.len() as u64;
        while total < expected {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        stream.write_all(&total.to_be_bytes()).await?;
        stream.shutdown().await
    } else if let Some(bytes) = path.strip_prefix("/source?bytes=") {
        let mut left: u64 = bytes.parse().unwrap_or(0);
        chunk.fill(b'x');
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        stream.shutdown().await
    } else {
        // /idle: hold until the client goes away.
        while stream.read(&mut chunk).await? > 0 {}
        Ok(())
    }
}
