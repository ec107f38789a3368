//! A client connection as the HTTP server reads it: the socket, behind the
//! first bytes the listener read to tell HTTP/1 from HTTP/2. They are read
//! rather than peeked so that the request they usually hold whole is not
//! read from the kernel a second time (one system call less per
//! connection).
//!
//! hyper closes a connection through it: unless the client has closed its
//! side already, the close lingers ([`super::linger`]), so that a client
//! still sending (an upload the answer refused, at whatever pace it comes)
//! gets the answer rather than a reset; one that has nothing more to send
//! closes on the half-close, which ends the linger at once. hyper does not
//! say whether a body was left unread, and bytes of one may not have
//! arrived yet when it closes. So it is an HTTP server's connection only: a
//! tunnel takes the socket out ([`ClientIo::into_parts`]), since a
//! half-close there must not read (and throw away) what the client sends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Sleep, sleep};

use super::linger;
use super::stall::StallTimer;

pub struct ClientIo {
    /// Read from the socket, not yet handed on.
    first: Bytes,
    stream: TcpStream,
    /// Set once the socket is half-closed and lingering: until when.
    lingering: Option<Pin<Box<Sleep>>>,
    /// The client has closed its side: a close need not linger.
    ended: bool,
    /// The client write timeout.
    write_stall: StallTimer,
}

impl ClientIo {
    /// `write_limit`: how long the client may take none of what is
    /// written before writes fail.
    pub fn new(first: Bytes, stream: TcpStream, write_limit: Duration) -> Self {
        Self {
            first,
            stream,
            lingering: None,
            ended: false,
            write_stall: StallTimer::new(write_limit),
        }
    }

    /// The socket, and what was read from it that no reader has taken yet
    /// (it comes before anything still in the socket).
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.first)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            let room = buf.remaining();
            let read = Pin::new(&mut this.stream).poll_read(cx, buf);
            if matches!(read, Poll::Ready(Ok(()))) && room > 0 && buf.remaining() == room {
                this.ended = true;
            }
            return read;
        }
        let n = this.first.len().min(buf.remaining());
        buf.put_slice(&this.first[..n]);
        this.first.advance(n);
        if this.first.is_empty() {
            // Gives the buffer back now, not when the connection ends.
            this.first = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.write_stall.watch_write(cx, write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.write_stall.watch_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Half-closes the socket, then reads on until the client closes too
    /// (or the linger time passes), unless it has closed already.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let deadline = match this.lingering.as_mut() {
            Some(deadline) => deadline,
            None => {
                ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                if this.ended {
                    return Poll::Ready(Ok(()));
                }
                this.lingering.insert(Box::pin(sleep(linger::LINGER_TIME)))
            }
        };
        linger::poll_drain(&this.stream, cx, deadline.as_mut()).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn the_first_bytes_are_read_before_the_socket_and_writes_go_to_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        peer.write_all(b" world").await.unwrap();
        let mut io = ClientIo::new(
            Bytes::from_static(b"hello"),
            stream,
            Duration::from_secs(60),
        );

        // A reader with less room than the first bytes gets them in turn.
        let mut small = [0u8; 3];
        io.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = [0u8; 8];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"lo world");

        io.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        peer.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }

    #[tokio::test]
    async fn what_no_reader_took_comes_back_with_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(
            Bytes::from_static(b"GET / HTTP/1.1\r\n"),
            stream,
            Duration::from_secs(60),
        );
        let mut method = [0u8; 4];
        io.read_exact(&mut method).await.unwrap();
        let (_, unread) = io.into_parts();
        assert_eq!(&unread[..], b"/ HTTP/1.1\r\n");
    }

    // On the real clock: with a paused one the runtime may jump to the
    // linger limit while the client's last bytes are still on their way.
    #[tokio::test]
    async fn a_close_reads_on_until_the_client_closes() {
        let (stream, mut peer) = crate::proxy::test_sockets::socket_pair().await;
        let mut io = ClientIo::new(Bytes::new(), stream, Duration::from_secs(60));
        let client = tokio::spawn(async move {
            // Still uploading when the answer comes, done a second later.
            for _ in 0..10 {
                peer.write_all(&[b'x'; 1000]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peer.shutdown().await.unwrap();
            let mut answer = Vec::new();
            peer.read_to_end(&mut answer).await
        });
        let start = tokio::time::Instant::now();
        io.shutdown().await.unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited < linger::LINGER_TIME, "{waited:?}");
        assert!(client.await.unwrap().is_ok(), "the client saw no reset");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_stops_waiting_for_the_client_after_the_linger_time() {
        let (stream, _peer) = crate::proxy::test_sockets::socket_pair().await;
        let mut io = ClientIo::new(Bytes::new(), stream, Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        io.shutdown().await.unwrap();
        assert!(start.elapsed() >= linger::LINGER_TIME);
    }
}
