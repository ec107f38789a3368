//! "No progress for this long": the timer behind every stall limit of the
//! data plane (a client's request body, a backend that takes no request
//! bytes, a backend that stops sending its response body, a client that
//! takes none of its response: [`WriteStall`], and over HTTP/2 one that
//! grants a stream no window: [`super::stream_stall`]).
//!
//! It is armed when the watched thing returns `Pending` and disarmed by any
//! progress, so a busy stream never touches the timer wheel, and its sleep
//! is allocated on the first stall only and then reset, not remade.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep, sleep_until};

pub struct StallTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// The watched thing moved: the next stall starts counting afresh.
    pub fn progress(&mut self) {
        self.armed = false;
    }

    /// The watched thing is pending: `Ready` once it has been so, with no
    /// progress in between, for the whole limit.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until(Instant::now() + limit)));
        if !self.armed {
            sleep.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        sleep.as_mut().poll(cx)
    }

    /// What a poll of a client write gives, once this limit has had its
    /// say: `TimedOut` when it has been pending with no progress for the
    /// whole limit.
    pub fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match write {
            Poll::Pending => match self.poll_stalled(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took none of its response for the write timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            done => {
                self.progress();
                done
            }
        }
    }
}

/// A writer whose writes fail with `TimedOut` once it has taken nothing
/// for `timer`'s limit: a client that stops reading (or a flood of
/// connections that never do) would otherwise hold its connection, and the
/// backend connection streaming to it, for ever. The timer is borrowed, so
/// that a connection keeps one for all its responses (its sleep made on
/// the first stall, not on each response's).
pub struct WriteStall<'t, W> {
    inner: W,
    timer: &'t mut StallTimer,
}

impl<'t, W> WriteStall<'t, W> {
    pub fn new(inner: W, timer: &'t mut StallTimer) -> Self {
        Self { inner, timer }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteStall<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timer.watch_write(cx, write)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let write = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timer.watch_write(cx, write)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flush = Pin::new(&mut this.inner).poll_flush(cx);
        this.timer.watch_write(cx, flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_limit_without_progress_not_before() {
        let mut timer = StallTimer::new(Duration::from_secs(10));
        let start = Instant::now();
        poll_fn(|cx| timer.poll_stalled(cx)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_takes_nothing_of_fails_after_the_limit() {
        use tokio::io::AsyncWriteExt;
        let (near, _far) = tokio::io::duplex(64);
        let mut timer = StallTimer::new(Duration::from_secs(10));
        let mut writer = WriteStall::new(near, &mut timer);
        writer
            .write_all(&[0; 64])
            .await
            .expect("room for the first 64 bytes");
        let start = Instant::now();
        let error = writer.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut taken = 0;
            let mut byte = [0; 16];
            // 16 bytes every 6 s: 1,024 bytes take over six minutes.
            while taken < 1024 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                taken += far.read(&mut byte).await.unwrap();
            }
        });
        let mut timer = StallTimer::new(Duration::from_secs(10));
        let mut writer = WriteStall::new(near, &mut timer);
        writer.write_all(&[0; 1024]).await.unwrap();
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn progress_starts_the_count_again() {
        let mut timer = StallTimer::new(Duration::from_secs(10));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(timer.poll_stalled(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(8)).await;
        timer.progress();
        assert!(timer.poll_stalled(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(
            timer.poll_stalled(&mut cx).is_pending(),
            "16 s in, but only 8 s since the last progress"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(timer.poll_stalled(&mut cx).is_ready());
    }
}
