//! "No progress for this long": the timer behind every stall limit of the
//! data plane (a client's request body, a backend that takes no request
//! bytes, a backend that stops sending its response body).
//!
//! It is armed when the watched thing returns `Pending` and disarmed by any
//! progress, so a busy stream never touches the timer wheel, and its sleep
//! is allocated on the first stall only and then reset, not remade.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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
