//! The client write timeout for HTTP/2 streams. A client that stops
//! reading one stream need not stop reading its connection: it just grants
//! that stream no more flow-control window, and hyper then waits for window
//! before it asks the response body for more, with no limit. The stream,
//! and the backend connection streaming into it, would be held for as long
//! as the client likes, while the connection itself stays busy (so neither
//! [`super::stall::WriteStall`] on its socket nor its idle limit ends it).
//!
//! So each stream's task, which hyper spawns through [`StreamExecutor`],
//! runs inside a [`Watched`] future, and the response body inside a
//! [`Noted`] one that finds the watch through a task-local: the body notes
//! when it handed hyper data, and when hyper asked for more. A stream
//! whose data has waited for hyper's next ask for the whole limit is
//! dropped, which resets it (`RST_STREAM`, CANCEL) and closes its backend
//! connection; the connection's other streams go on. Time spent waiting for
//! the backend is not counted here: the backend's own stall limit has it.
//!
//! hyper asks for more once what it holds of the stream is mostly sent, so
//! what is measured is how long one handed piece takes to go out: the body
//! hands data in pieces of at most one HTTP/2 frame ([`PIECE`]), so that a
//! stream sharing a slow link with many others is not taken for one whose
//! client stopped reading. A client that reads slowly and grants window
//! in large steps (the h2 crate, for one, grants half its window at once)
//! goes as long between steps as it takes to read that half: such a
//! stream is reset too, as Varnish's `send_timeout` resets it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::stall::StallTimer;
use crate::busy_poll::Work;

/// The most data handed hyper at once: HTTP/2's default frame size.
const PIECE: usize = 16 * 1024;

tokio::task_local! {
    /// The watch of the stream task being polled.
    static CURRENT: Arc<Handed>;
}

/// When the stream's body last handed hyper data that hyper has not asked
/// past yet.
#[derive(Debug, Default)]
struct Handed {
    since: Mutex<Option<Instant>>,
}

impl Handed {
    fn set(&self, since: Option<Instant>) {
        *self.since.lock().expect("handed lock") = since;
    }

    fn since(&self) -> Option<Instant> {
        *self.since.lock().expect("handed lock")
    }
}

/// hyper's executor for an HTTP/2 connection's streams: each runs as a
/// [`Watched`] task, noted as work for busy polling as connections are.
#[derive(Clone, Copy, Debug)]
pub struct StreamExecutor {
    limit: Duration,
}

impl StreamExecutor {
    /// `limit`: the client write timeout.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(Work::new(Watched::new(task, self.limit)));
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, ended (`None`) once its body's data has waited for
    /// the limit without hyper asking for more.
    pub struct Watched<F> {
        #[pin]
        task: F,
        handed: Arc<Handed>,
        // Armed while handed data waits; each new hand-off is progress.
        stall: StallTimer,
        waiting_since: Option<Instant>,
    }
}

impl<F> Watched<F> {
    pub fn new(task: F, limit: Duration) -> Self {
        Self {
            task,
            handed: Arc::default(),
            stall: StallTimer::new(limit),
            waiting_since: None,
        }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let handed = this.handed.clone();
        let task = this.task;
        if let Poll::Ready(done) = CURRENT.sync_scope(handed, || task.poll(cx)) {
            return Poll::Ready(Some(done));
        }
        let since = this.handed.since();
        if since != *this.waiting_since {
            this.stall.progress();
            *this.waiting_since = since;
        }
        if since.is_none() {
            return Poll::Pending;
        }
        match this.stall.poll_stalled(cx) {
            Poll::Ready(()) => {
                tracing::debug!(
                    "HTTP/2 client took none of a stream's response for the write timeout; resetting the stream"
                );
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream's response body, noting for its [`Watched`] task when it
    /// hands hyper data and when hyper asks for more. Made while that task
    /// is polled (the listener wraps HTTP/2 responses only); made outside
    /// one, it notes nothing.
    pub struct Noted<B> {
        #[pin]
        body: B,
        handed: Option<Arc<Handed>>,
        // What is left of a data frame larger than a piece.
        rest: Bytes,
    }
}

impl<B> Noted<B> {
    /// Made while the stream's task is polled (its service's future).
    pub fn new(body: B) -> Self {
        Self {
            body,
            handed: CURRENT.try_with(Arc::clone).ok(),
            rest: Bytes::new(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Noted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = if this.rest.is_empty() {
            match this.body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > PIECE {
                            *this.rest = data.split_off(PIECE);
                        }
                        Frame::data(data)
                    }
                    Err(frame) => frame,
                }))),
                other => other,
            }
        } else {
            let piece = this.rest.split_to(this.rest.len().min(PIECE));
            Poll::Ready(Some(Ok(Frame::data(piece))))
        };
        if let Some(handed) = this.handed {
            // Asked: what was handed before has been taken. Data handed now
            // waits for the next ask.
            let data = matches!(&frame, Poll::Ready(Some(Ok(f))) if f.is_data());
            handed.set(data.then(Instant::now));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.remaining() as u64;
        let inner = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    use http_body_util::{BodyExt, Full};

    /// A stream task that asks its body for one frame and then waits for
    /// window that never comes, as hyper's does for a client that stopped
    /// reading the stream.
    async fn stream_that_gets_no_window() {
        let mut body = Noted::new(Full::new(Bytes::from_static(b"data")));
        let frame = body.frame().await;
        assert!(frame.is_some());
        poll_fn(|_| Poll::<()>::Pending).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_data_is_not_taken_ends_after_the_limit() {
        let start = Instant::now();
        let watched = Watched::new(stream_that_gets_no_window(), Duration::from_secs(60));
        assert_eq!(watched.await, None);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_for_its_backend_is_not_ended() {
        let waiting = async {
            let mut body = Noted::new(http_body_util::Empty::<Bytes>::new());
            // Asked, and nothing handed: the backend's turn.
            let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            tokio::time::sleep(Duration::from_secs(600)).await;
            "answered"
        };
        let watched = Watched::new(waiting, Duration::from_secs(60));
        assert_eq!(watched.await, Some("answered"));
    }

    #[tokio::test]
    async fn data_is_handed_in_pieces_of_a_frame_and_the_end_comes_after_the_last() {
        let whole: Bytes = (0..40_000u32).map(|i| i as u8).collect();
        let mut body = Noted::new(Full::new(whole.clone()));
        assert_eq!(body.size_hint().exact(), Some(40_000));
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap());
            assert_eq!(body.is_end_stream(), pieces.concat().len() == 40_000);
        }
        let sizes: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [PIECE, PIECE, 40_000 - 2 * PIECE]);
        assert_eq!(pieces.concat(), whole);
    }

    #[tokio::test]
    async fn a_body_outside_a_stream_task_notes_nothing() {
        let body = Noted::new(Full::new(Bytes::from_static(b"data")));
        assert!(body.handed.is_none());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "data");
    }
}
