//! Graceful shutdown in two phases. `drain` starts at SIGTERM/Ctrl-C:
//! readiness turns 503, listeners stop accepting and HTTP connections
//! finish their in-flight requests. `force` comes when the drain period is
//! over: whatever is still open, tunnels included, is closed (tunnels with
//! reason `shutdown`).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    force: CancellationToken,
    /// Client connections and the tunnels they turned into.
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves when draining has begun.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Drives `work` until it ends (`Some` of its output) or draining
    /// begins (`None`; `work` is left as it is, to be wound down).
    ///
    /// For work woken over and over, a client connection above all: the
    /// drain signal is polled once, to be told when it fires, and after
    /// that only once it has fired (or the task's waker changed), not at
    /// every wake-up as `select!` would.
    pub async fn until_draining<F: Future>(&self, mut work: Pin<&mut F>) -> Option<F::Output> {
        let draining = self.drain.cancelled();
        tokio::pin!(draining);
        let mut heard = Heard::default();
        poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if heard.fired(cx, &self.drain, draining.as_mut()) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Resolves when the drain period is over and everything must close.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// A token that fires when everything must close (for poll-based code).
    pub fn force_token(&self) -> CancellationToken {
        self.force.clone()
    }

    /// Tracks a connection or tunnel task, so that shutdown can wait for it.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Drains: waits up to `period` for connections and tunnels to finish,
    /// then forces the rest closed and waits briefly for them to record
    /// their outcome.
    pub async fn run(&self, period: Duration) {
        self.drain.cancel();
        self.tasks.close();
        if tokio::time::timeout(period, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tasks.len(),
                "drain period over; closing what is still open"
            );
        }
        self.force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Whether a token has fired, for work that asks at every wake-up of its
/// task: the token's future is polled once, to be told when it fires,
/// and after that only once the token has fired (or the task's waker
/// changed), since that poll takes the token's lock.
#[derive(Default)]
pub struct Heard {
    /// The waker the token will wake.
    told: Option<Waker>,
}

impl Heard {
    /// Whether `token`, whose `cancelled` future this is, has fired.
    pub fn fired(
        &mut self,
        cx: &mut Context<'_>,
        token: &CancellationToken,
        cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> bool {
        let unheard = self.told.as_ref().is_none_or(|w| !w.will_wake(cx.waker()));
        if unheard || token.is_cancelled() {
            if cancelled.poll(cx).is_ready() {
                return true;
            }
            self.told = Some(cx.waker().clone());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_that_ends_first_gives_its_output() {
        let shutdown = Shutdown::new();
        let work = std::pin::pin!(async { 7 });
        assert_eq!(shutdown.until_draining(work).await, Some(7));
    }

    #[tokio::test]
    async fn draining_ends_the_wait_for_work_woken_many_times_meanwhile() {
        let shutdown = Shutdown::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // Never ends: wakes on every message, as a connection on every
        // request.
        let work = std::pin::pin!(async move { while rx.recv().await.is_some() {} });
        let drainer = shutdown.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                tx.send(()).await.unwrap();
                tokio::task::yield_now().await;
            }
            drainer.drain.cancel();
            std::future::pending::<()>().await;
        });
        let waited = tokio::time::timeout(Duration::from_secs(5), shutdown.until_draining(work));
        assert_eq!(waited.await.expect("draining was noticed"), None);
    }
}
