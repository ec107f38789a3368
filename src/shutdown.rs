//! Graceful shutdown in two phases. `drain` starts at SIGTERM/Ctrl-C:
//! readiness turns 503, listeners stop accepting and HTTP connections
//! finish their in-flight requests. `force` comes when the drain period is
//! over: whatever is still open, tunnels included, is closed (tunnels with
//! reason `shutdown`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
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
