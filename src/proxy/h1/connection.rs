//! One HTTP/1.1 connection to a backend and the exchange on it: write the
//! request head and body, read the response head. The body of the
//! response is read later by [`super::BackendBody`], which owns the
//! connection until then.
//!
//! The request body is sent while the response head is awaited, so a
//! backend that answers early (a 413 before the upload is over, a refusal
//! of `Expect: 100-continue`) is answered at once; its connection is not
//! used again, since the rest of the body was never sent.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::ProtocolError;
use super::decode::{self, ResponseHead};
use super::encode::{self, ProxyFields, RequestFraming};

use crate::proxy::body::{BoxError, TimeoutBody, UpstreamBody};
use crate::proxy::client_body::ClientBody;
use crate::proxy::headers;
use crate::proxy::stall::StallTimer;

/// What one read asks for while a head is awaited: most heads fit, and a
/// small response arrives whole with its head.
const HEAD_READ: usize = 8 * 1024;
/// A buffer larger than this is not kept by an idle connection.
const IDLE_BUFFER_KEPT: usize = 16 * 1024;

/// A backend connection between exchanges, or in one.
pub struct Connection {
    pub(super) stream: TcpStream,
    /// The backend's address, which the pool files the connection under.
    addr: SocketAddr,
    /// Bytes read from the backend and not handed on yet.
    pub(super) read: BytesMut,
    /// The request head being written (kept for its capacity).
    head: Vec<u8>,
}

/// A request as it goes to a backend: the head rewritten for it
/// (hop-by-hop fields gone), its target in origin form, how its body is
/// framed, and the fields the proxy sets. Borrowed, so that another
/// attempt costs no copy.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub target: &'a PathAndQuery,
    pub framing: RequestFraming,
    pub proxy_fields: ProxyFields<'a>,
}

/// Why an exchange produced no response head.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing or reading failed; `answered` when some of a response had
    /// arrived.
    #[error("backend connection failed: {error}")]
    Io { error: io::Error, answered: bool },
    #[error("backend closed the connection before its response")]
    Closed { answered: bool },
    /// The backend took no request bytes for the write stall limit.
    #[error("the backend took no request bytes in time")]
    Stalled,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The client's request body failed (or timed out).
    #[error("request body: {0}")]
    Body(BoxError),
    /// The client's body did not match the length it announced.
    #[error("request body does not match its Content-Length")]
    BodyLength,
}

impl ExchangeError {
    /// The backend closed a kept-alive connection just as the request was
    /// sent, before any of an answer: the request never reached it, and
    /// one that can be sent again may go on a fresh connection.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            Self::Closed { answered } => !answered,
            Self::Io { error, answered } => {
                !answered
                    && matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    )
            }
            _ => false,
        }
    }
}

impl Connection {
    /// Boxed once, when made: a connection is moved from the pool into an
    /// exchange, into the response's body and back for every request, and
    /// a box moves as a pointer (the connection itself is 128 bytes, each
    /// move of it a copy).
    pub fn new(stream: TcpStream, addr: SocketAddr) -> Box<Self> {
        Box::new(Self {
            stream,
            addr,
            read: BytesMut::new(),
            head: Vec::new(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the backend has neither closed this idle connection nor
    /// sent anything unasked since its last exchange. A non-blocking read,
    /// which costs no system call while the runtime has seen nothing
    /// arrive since the last read drained the socket.
    pub fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Ready to wait in the pool: unusually large buffers go.
    pub(super) fn idle(&mut self) {
        if self.read.capacity() > IDLE_BUFFER_KEPT {
            self.read = BytesMut::new();
        }
        if self.head.capacity() > IDLE_BUFFER_KEPT {
            self.head = Vec::new();
        }
    }

    /// The socket, and whatever the backend sent behind the response head
    /// (after a 101, the first bytes of the new protocol).
    pub fn into_parts(self) -> (TcpStream, bytes::Bytes) {
        (self.stream, self.read.freeze())
    }

    /// Sends `request` with `body` and reads the final response head.
    /// Returns it with whether the request body was sent to its end.
    /// `write_stall` is the longest the backend may take no request bytes.
    pub async fn exchange(
        &mut self,
        request: &Outgoing<'_>,
        body: UpstreamBody,
        write_stall: Duration,
    ) -> Result<(ResponseHead, bool), ExchangeError> {
        let Outgoing {
            method,
            headers,
            target,
            framing,
            proxy_fields,
        } = *request;
        self.head.clear();
        encode::request_head(
            &mut self.head,
            method,
            target,
            headers,
            framing,
            &proxy_fields,
        );
        let (mut reader, mut writer) = self.stream.split();
        let mut stall = StallTimer::new(write_stall);
        let body = match body {
            UpstreamBody::Empty => {
                write_all(&mut writer, &mut [IoSlice::new(&self.head)], &mut stall).await?;
                let head = read_head(&mut reader, &mut self.read, method).await?;
                return Ok((head, true));
            }
            UpstreamBody::Streamed(body) => body,
        };
        let send = send(&mut writer, &self.head, body, framing, &mut stall);
        let receive = read_head(&mut reader, &mut self.read, method);
        tokio::pin!(send, receive);
        tokio::select! {
            biased;
            head = &mut receive => {
                // Answered early; the body may still end in this turn.
                let whole = matches!((&mut send).now_or_never(), Some(Ok(())));
                Ok((head?, whole))
            }
            sent = &mut send => {
                sent?;
                Ok((receive.await?, true))
            }
        }
    }
}

/// Reads until `buf` starts with a complete final response head.
async fn read_head(
    reader: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    method: &http::Method,
) -> Result<ResponseHead, ExchangeError> {
    let mut answered = false;
    loop {
        if !buf.is_empty()
            && let Some(head) = decode::response_head(buf, method)?
        {
            return Ok(head);
        }
        buf.reserve(HEAD_READ);
        match reader.read_buf(buf).await {
            Ok(0) => return Err(ExchangeError::Closed { answered }),
            Ok(_) => answered = true,
            Err(error) => return Err(ExchangeError::Io { error, answered }),
        }
    }
}

/// Writes the head, then the client's body frames as they come, framed
/// as `framing` says.
async fn send(
    writer: &mut WriteHalf<'_>,
    head: &[u8],
    mut body: TimeoutBody<ClientBody>,
    framing: RequestFraming,
    stall: &mut StallTimer,
) -> Result<(), ExchangeError> {
    write_all(writer, &mut [IoSlice::new(head)], stall).await?;
    let mut sent = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ExchangeError::Body)?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok().map(|mut fields| {
                    headers::strip_from_trailers(&mut fields);
                    fields
                });
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Length(length) if sent <= length => {
                write_all(writer, &mut [IoSlice::new(&data)], stall).await?;
            }
            RequestFraming::Chunked => {
                let line = encode::chunk_size_line(data.len());
                let mut parts = [
                    IoSlice::new(line.as_ref()),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ];
                write_all(writer, &mut parts, stall).await?;
            }
            RequestFraming::Length(_) | RequestFraming::None => {
                return Err(ExchangeError::BodyLength);
            }
        }
    }
    match framing {
        RequestFraming::Length(length) if sent != length => Err(ExchangeError::BodyLength),
        RequestFraming::Chunked => {
            let mut end = Vec::new();
            encode::last_chunk(&mut end, &trailers.unwrap_or_default());
            write_all(writer, &mut [IoSlice::new(&end)], stall).await
        }
        _ => Ok(()),
    }
}

/// Writes all of `bufs`, failing with [`ExchangeError::Stalled`] once the
/// backend has taken nothing for the stall limit.
async fn write_all(
    writer: &mut WriteHalf<'_>,
    mut bufs: &mut [IoSlice<'_>],
    stall: &mut StallTimer,
) -> Result<(), ExchangeError> {
    poll_fn(|cx| {
        while !bufs.is_empty() {
            match Pin::new(&mut *writer).poll_write_vectored(cx, bufs) {
                Poll::Ready(Ok(0)) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero);
                    return Poll::Ready(Err(ExchangeError::Io {
                        error,
                        answered: false,
                    }));
                }
                Poll::Ready(Ok(n)) => {
                    stall.progress();
                    IoSlice::advance_slices(&mut bufs, n);
                }
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ExchangeError::Io {
                        error,
                        answered: false,
                    }));
                }
                Poll::Pending => {
                    return match stall.poll_stalled(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(ExchangeError::Stalled)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_sockets::socket_pair;

    /// A backend connection, and the backend's end of it.
    async fn pair() -> (Box<Connection>, TcpStream) {
        let (peer, stream) = socket_pair().await;
        let addr = stream.peer_addr().unwrap();
        (Connection::new(stream, addr), peer)
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_small_buffers_only() {
        let (mut conn, _peer) = pair().await;
        conn.read.reserve(4 * IDLE_BUFFER_KEPT);
        conn.head.reserve(4 * IDLE_BUFFER_KEPT);
        conn.idle();
        assert!(conn.read.capacity() <= IDLE_BUFFER_KEPT);
        assert!(conn.head.capacity() <= IDLE_BUFFER_KEPT);
        conn.read.reserve(1024);
        let kept = conn.read.capacity();
        conn.idle();
        assert_eq!(
            conn.read.capacity(),
            kept,
            "a small buffer is kept for the next exchange"
        );
    }

    #[tokio::test]
    async fn a_connection_is_open_until_its_backend_closes_or_speaks_unasked() {
        let (conn, peer) = pair().await;
        assert!(conn.is_open());
        drop(peer);
        // The close is seen once it has crossed the loopback.
        for _ in 0..100 {
            if !conn.is_open() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!conn.is_open());

        let (conn, mut peer) = pair().await;
        tokio::io::AsyncWriteExt::write_all(&mut peer, b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        for _ in 0..100 {
            if !conn.is_open() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("bytes nobody asked for left the connection looking usable");
    }
}
