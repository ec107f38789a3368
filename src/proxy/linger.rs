//! Lingering close: after answering a client that is still sending (an
//! upload refused before its body was read, a request with more behind
//! it), the proxy half-closes its side and reads on, discarding, until the
//! client closes too or [`LINGER_TIME`] passes.
//!
//! Closing a socket whose receive queue holds unread bytes, or that gets
//! more after the close, makes the kernel send a reset instead of a
//! clean end (RFC 9112 section 9.6). A client still writing its body then
//! fails with "connection reset" and never reads the answer waiting for
//! it: a 413 or 404 becomes an error the user cannot explain. nginx
//! (`lingering_close`) and Go's server do the same.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Sleep, sleep};

/// The longest a closing connection is read on. Long enough for a client
/// that has seen the answer to stop and close; short enough that a client
/// that never does holds its socket only briefly (nginx's
/// `lingering_timeout` is also 5 s).
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// Bytes discarded per read.
const DISCARD: usize = 16 * 1024;

thread_local! {
    /// Where discarded bytes go: one buffer per thread, none per
    /// connection.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; DISCARD].into_boxed_slice());
}

/// Reads what is there now and throws it away: `Ok(0)` at the client's
/// end of stream.
fn discard(stream: &TcpStream) -> io::Result<usize> {
    SCRATCH.with_borrow_mut(|scratch| stream.try_read(scratch))
}

/// The client's side of a half-closed connection, read and discarded until
/// it ends, fails or `deadline` comes.
pub fn poll_drain(stream: &TcpStream, cx: &mut Context<'_>, deadline: Pin<&mut Sleep>) -> Poll<()> {
    if deadline.poll(cx).is_ready() {
        return Poll::Ready(());
    }
    loop {
        if ready!(stream.poll_read_ready(cx)).is_err() {
            return Poll::Ready(());
        }
        match discard(stream) {
            Ok(0) => return Poll::Ready(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Poll::Ready(()),
        }
    }
}

/// Half-closes `stream` (the answer has been written) and reads on until
/// the client closes, for at most [`LINGER_TIME`].
pub async fn close(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut deadline = Box::pin(sleep(LINGER_TIME));
    poll_fn(|cx| poll_drain(stream, cx, deadline.as_mut())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_sockets::socket_pair;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_still_writing_gets_the_answer_and_a_clean_end() {
        let (mut server, mut client) = socket_pair().await;
        // More than the socket buffers hold: the server must read on for
        // the client's writes to finish.
        let upload = vec![b'x'; 32 << 20];
        let writer = tokio::spawn(async move {
            client.write_all(&upload).await?;
            client.shutdown().await?;
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await?;
            io::Result::Ok(answer)
        });
        server.write_all(b"refused").await.unwrap();
        close(&mut server).await;
        drop(server);
        let answer = writer.await.unwrap().expect("no reset while uploading");
        assert_eq!(answer, b"refused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_read_for_the_linger_time_only() {
        let (mut server, mut client) = socket_pair().await;
        client.write_all(b"more").await.unwrap();
        let started = tokio::time::Instant::now();
        close(&mut server).await;
        assert_eq!(started.elapsed(), LINGER_TIME);
        let mut end = [0u8; 1];
        assert_eq!(client.read(&mut end).await.unwrap(), 0, "half-closed");
    }
}
