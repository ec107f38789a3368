//! A client's request body as the pipeline takes it: hyper's, for the
//! requests hyper's server parsed, or [`LengthBody`], a body of one
//! `Content-Length` that switchyard's own HTTP/1 server lets the pipeline
//! read straight off the client's socket. A large one goes on to a plain
//! TCP backend by splice(2) ([`LengthBody::poll_splice`]), never copied
//! through this process, as tunnel data is.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::body::BoxError;
use super::splice::KernelPipe;

/// Most read from the socket for one frame.
const READ_CHUNK: u64 = 64 * 1024;

/// Below this many bytes still to come, a body is read as frames: a pipe
/// costs four system calls to make, size and close, and with 32 KiB 64 KiB
/// bodies went 13 % slower spliced (`loadgen compare`), 1 MiB ones 19 %
/// faster.
const SPLICE_FROM: u64 = 128 * 1024;

pub enum ClientBody {
    Hyper(Incoming),
    Own(LengthBody),
}

impl ClientBody {
    /// Whether the rest of the body is best moved by splice: all that is
    /// left of it is in the client's socket, and it is large.
    pub fn spliceable(&self) -> bool {
        matches!(self, Self::Own(body) if body.early.is_empty() && body.remaining >= SPLICE_FROM)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Own(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Own(body) => body.size_hint(),
        }
    }
}

/// The client connection while a request body on it is being read: the
/// own server takes the socket back once the body is gone, and learns
/// from `unread` whether the body was read to its end (else the
/// connection cannot carry another request).
pub struct BodySocket {
    pub stream: TcpStream,
    unread: AtomicU64,
}

impl BodySocket {
    /// Bytes of the body nobody read.
    pub fn unread(&self) -> u64 {
        self.unread.load(Ordering::Relaxed)
    }
}

/// Exactly `Content-Length` bytes: first those read with the head, then
/// from the socket, never a byte past the body (a pipelined request
/// behind it stays in the socket for the server).
pub struct LengthBody {
    socket: Arc<BodySocket>,
    early: Bytes,
    /// Still to be read from the socket.
    remaining: u64,
}

impl LengthBody {
    /// A body of `length` bytes, of which `early` (at most `length`) were
    /// read with the head. Returns the body and the socket's shared slot,
    /// which comes back whole ([`Arc::try_unwrap`]) once the body is gone.
    pub fn new(stream: TcpStream, early: Bytes, length: u64) -> (Self, Arc<BodySocket>) {
        debug_assert!(early.len() as u64 <= length);
        let socket = Arc::new(BodySocket {
            stream,
            unread: AtomicU64::new(length),
        });
        let body = Self {
            socket: socket.clone(),
            remaining: length - early.len() as u64,
            early,
        };
        (body, socket)
    }

    fn handed_on(&self, n: usize) {
        self.socket.unread.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Moves the next part of the body from the client's socket into the
    /// empty `pipe`, never a byte past the body; once the bytes read with
    /// the head have gone as a frame. The client closing first is an
    /// error, as for frames.
    pub fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &mut KernelPipe,
    ) -> Poll<io::Result<usize>> {
        debug_assert!(
            self.early.is_empty(),
            "the early bytes go first, as a frame"
        );
        let max = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        match ready!(pipe.poll_fill(cx, &self.socket.stream, max)) {
            Ok(0) => Poll::Ready(Err(client_gone())),
            Ok(n) => {
                self.remaining -= n as u64;
                self.handed_on(n);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Bytes of the body not yet handed on.
    pub fn left(&self) -> u64 {
        self.early.len() as u64 + self.remaining
    }
}

fn client_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "client closed before the end of its body",
    )
}

impl Body for LengthBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let early = std::mem::take(&mut this.early);
            this.handed_on(early.len());
            return Poll::Ready(Some(Ok(Frame::data(early))));
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this.remaining.min(READ_CHUNK) as usize;
        let mut buf = BytesMut::with_capacity(want);
        let stream = &this.socket.stream;
        loop {
            if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            match stream.try_read_buf(&mut (&mut buf).limit(want)) {
                Ok(0) => return Poll::Ready(Some(Err(client_gone().into()))),
                Ok(n) => {
                    this.remaining -= n as u64;
                    this.handed_on(n);
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
                // Readiness was cleared: the next poll waits for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.early.is_empty() && self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.early.len() as u64 + self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::splice::tests::socket_pair;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_body_is_its_length_and_what_follows_stays_in_the_socket() {
        let (mut client, server) = socket_pair().await;
        client.write_all(b"lo, worldGET /next").await.unwrap();
        let (body, socket) = LengthBody::new(server, Bytes::from_static(b"hel"), 12);
        assert_eq!(body.size_hint().exact(), Some(12));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello, world");
        let socket = Arc::try_unwrap(socket).ok().expect("the body is gone");
        assert_eq!(socket.unread(), 0);
        let mut next = [0u8; 9];
        let mut stream = socket.stream;
        stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"GET /next");
    }

    #[tokio::test]
    async fn a_spliced_body_moves_its_length_and_no_more() {
        let (mut client, server) = socket_pair().await;
        client.write_all(b"hello, worldGET /next").await.unwrap();
        let (mut body, socket) = LengthBody::new(server, Bytes::new(), 12);
        let mut pipe = KernelPipe::new().unwrap();
        let mut moved = 0;
        while body.left() > 0 {
            moved += std::future::poll_fn(|cx| body.poll_splice(cx, &mut pipe))
                .await
                .unwrap();
        }
        assert_eq!(moved, 12);
        drop(body);
        let socket = Arc::try_unwrap(socket).ok().expect("the body is gone");
        assert_eq!(socket.unread(), 0);
        let mut next = [0u8; 9];
        let mut stream = socket.stream;
        stream.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"GET /next");
    }

    #[tokio::test]
    async fn a_client_gone_mid_body_is_an_error_and_the_rest_is_unread() {
        let (mut client, server) = socket_pair().await;
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        let (mut body, socket) = LengthBody::new(server, Bytes::new(), 10);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        assert!(body.frame().await.unwrap().is_err());
        drop(body);
        assert_eq!(Arc::try_unwrap(socket).ok().unwrap().unread(), 7);
    }
}
