//! An idle limit for HTTP/2 connections. hyper's HTTP/2 server has no
//! timeout between requests (hyper#1628): a client that sent its preface
//! and then nothing kept its connection, and its `--max-connections` slot,
//! for ever, so a few clients could take every slot. An HTTP/1 connection
//! is closed once it has waited `--header-read-timeout` for its next
//! request; an HTTP/2 connection is shut down gracefully (GOAWAY, streams
//! in flight finish) once it has had no open stream for as long.
//!
//! A stream counts as open from its request until its response body ends
//! or is dropped: a long download is not idle.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// A connection's open streams and when the last one ended, together so
/// that a look sees both as one moment left them.
#[derive(Debug)]
pub struct Streams {
    state: Mutex<StreamState>,
}

#[derive(Debug)]
struct StreamState {
    open: usize,
    last_closed: Instant,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(StreamState {
                open: 0,
                last_closed: Instant::now(),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().expect("streams lock")
    }

    /// A stream opens; it is open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> OpenStream {
        self.state().open += 1;
        OpenStream {
            streams: self.clone(),
        }
    }

    /// Counts idle time from now on, as if a stream had just ended.
    pub fn restart_idle(&self) {
        self.state().last_closed = Instant::now();
    }

    /// Resolves once no stream has been open for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            // Busy, or not idle long enough yet: look again when it could
            // be (a stream opened and closed meanwhile moves that on).
            let next = {
                let state = self.state();
                let idle_until = state.last_closed + limit;
                match state.open {
                    0 if Instant::now() >= idle_until => return,
                    0 => idle_until,
                    _ => Instant::now() + limit,
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One open stream.
#[derive(Debug)]
pub struct OpenStream {
    streams: Arc<Streams>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut state = self.streams.state();
        state.open -= 1;
        state.last_closed = Instant::now();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its stream open until it ends or is
    /// dropped.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        stream: Option<OpenStream>,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, stream: OpenStream) -> Self {
        Self {
            body,
            stream: Some(stream),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            this.stream.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_once_no_stream_has_been_open_for_the_limit() {
        let limit = Duration::from_secs(10);
        let streams = Streams::new();
        let stream = streams.open();
        let idle = streams.idle_for(limit);
        tokio::pin!(idle);
        // An open stream is never idle, however long it lasts.
        assert!(
            tokio::time::timeout(limit * 3, idle.as_mut())
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(stream);
        let closed_at = Instant::now();
        idle.await;
        assert_eq!(
            closed_at.elapsed(),
            limit,
            "counted from the last stream's end"
        );
        // Idle long since, then counted again from a restart.
        tokio::time::sleep(limit).await;
        streams.restart_idle();
        let restarted = Instant::now();
        streams.idle_for(limit).await;
        assert_eq!(restarted.elapsed(), limit);
    }
}
