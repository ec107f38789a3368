//! A client's request body as the pipeline takes it: hyper's, for the
//! requests hyper's server parsed, or [`LengthBody`], a body of one
//! `Content-Length` that switchyard's own HTTP/1 server lets the pipeline
//! read straight off the client's socket.

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

/// Most read from the socket for one frame. Large frames mean fewer
/// reads here and fewer, larger writes to the backend, whose wake-ups
/// are what bounds a fast upload: 1 MiB uploads went from 530 to 350
/// µs of proxy CPU per MB with 256 KiB frames instead of 64 KiB ones
/// (hyper's server, which grows its read buffer, took 330-460).
const READ_CHUNK: u64 = 256 * 1024;

/// A read that filled less than this share of its buffer is copied into
/// a frame of its own size, so that a slow client's body waiting on a
/// slow backend holds what it sent, not a whole `READ_CHUNK` per frame.
const SMALL_READ_DIVISOR: usize = 4;

/// The body of a client's request, from whichever server parsed it.
pub enum ClientBody {
    Hyper(Incoming),
    Own(LengthBody),
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
        let stream = &this.socket.stream;
        loop {
            if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(e.into())));
            }
            // Made once there is something to read: a body waiting on its
            // client holds no buffer.
            let mut buf = BytesMut::with_capacity(want);
            match stream.try_read_buf(&mut (&mut buf).limit(want)) {
                Ok(0) => {
                    let eof = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed before the end of its body",
                    );
                    return Poll::Ready(Some(Err(eof.into())));
                }
                Ok(n) => {
                    this.remaining -= n as u64;
                    this.handed_on(n);
                    let data = if n < want / SMALL_READ_DIVISOR {
                        Bytes::copy_from_slice(&buf)
                    } else {
                        buf.freeze()
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
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
    use crate::proxy::test_sockets::socket_pair;
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
