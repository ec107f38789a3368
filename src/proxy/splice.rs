//! Bulk tunnel data moved by the kernel: splice(2) from one TCP socket
//! into a pipe and from the pipe into the other socket, so the bytes are
//! never copied into (or out of) this process. Copying through user space
//! costs two copies per byte; on a busy tunnel that is most of the proxy's
//! work.
//!
//! A [`KernelPipe`] is made for a tunnel direction only once it carries
//! bulk data (see [`super::tunnel`]): an idle tunnel holds no pipe, so it
//! costs no descriptors and no memory beyond its two sockets.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked for per splice, and the pipe capacity asked for: larger
/// moves mean fewer wakeups on both sides. (Pipe memory counts against a
/// per-user limit, 64 MiB by default; past it the kernel gives smaller
/// pipes, which still work.)
const CHUNK: usize = 256 * 1024;

/// A pipe between two sockets, and how many bytes it holds.
pub struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
}

impl KernelPipe {
    pub fn new() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Best effort: the default 64 KiB works too.
        let _ = rustix::pipe::fcntl_setpipe_size(&write, CHUNK);
        Ok(Self {
            read,
            write,
            held: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Moves what `from` has into the pipe, which must be empty (so a
    /// would-block can only mean the socket has nothing). `Ok(0)` is the
    /// end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, from: &TcpStream) -> Poll<io::Result<usize>> {
        debug_assert!(self.is_empty(), "a pipe is filled only when empty");
        loop {
            ready!(from.poll_read_ready(cx))?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(from, None, &self.write, None, CHUNK, flags())?)
            });
            match moved {
                Ok(n) => {
                    self.held += n;
                    return Poll::Ready(Ok(n));
                }
                // Readiness was cleared: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves what the pipe holds into `to`, as far as `to` takes it now.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<usize>> {
        loop {
            ready!(to.poll_write_ready(cx))?;
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(&self.read, None, to, None, self.held, flags())?)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn flags() -> SpliceFlags {
    // MOVE is a hint (pages are moved where the kernel can); NONBLOCK makes
    // the pipe end of the call non-blocking, the sockets already are.
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two ends of a loopback TCP connection.
    pub async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        (accepted.unwrap().0, connected.unwrap())
    }

    #[tokio::test]
    async fn bytes_move_from_socket_to_socket_through_the_pipe() {
        let (mut writer, from) = socket_pair().await;
        let (to, mut reader) = socket_pair().await;
        let mut pipe = KernelPipe::new().unwrap();
        writer.write_all(b"spliced, not copied").await.unwrap();
        let n = poll_fn(|cx| pipe.poll_fill(cx, &from)).await.unwrap();
        assert_eq!(n, 19);
        assert!(!pipe.is_empty());
        while !pipe.is_empty() {
            poll_fn(|cx| pipe.poll_drain(cx, &to)).await.unwrap();
        }
        let mut got = [0u8; 19];
        reader.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"spliced, not copied");

        writer.shutdown().await.unwrap();
        let eof = poll_fn(|cx| pipe.poll_fill(cx, &from)).await.unwrap();
        assert_eq!(eof, 0, "end of stream");
    }
}
