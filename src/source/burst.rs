//! When a burst of source changes has settled enough to translate again.
//!
//! Changes come in bursts: a `kubectl apply` of several objects, a copy of
//! several manifest files, a Deployment rolling its pods. Translating at
//! every change wastes work on states that last milliseconds; waiting a
//! fixed time after the first change delays every lone edit by the whole
//! wait. So a burst settles once nothing has changed for a short quiet
//! time, and at the latest a limit after it began, so that changes that
//! never stop still get translated.
//!
//! [`Burst`] is the clock arithmetic, shared by the manifest watcher
//! (which also holds a burst open while a file is being written) and the
//! cluster's [`Pacing`], which also leaves a minimum interval between the
//! end of one translation and the start of the next: a cluster whose
//! endpoints change every few milliseconds would otherwise be translated
//! back to back, each translation of a large cluster taking most of a core
//! for tens of milliseconds.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout_at};

/// How long nothing may change for a cluster's burst to settle: the objects
/// of one `kubectl apply` reach the watches within a few milliseconds of
/// each other.
pub const CLUSTER_QUIET: Duration = Duration::from_millis(25);

/// One burst of changes, from its first.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    quiet: Duration,
    limit: Instant,
}

impl Burst {
    /// A burst whose first change is now, settling after `quiet` without
    /// changes and at the latest after `longest`.
    pub fn begin(quiet: Duration, longest: Duration) -> Self {
        Self {
            quiet,
            limit: Instant::now() + longest,
        }
    }

    /// Until when to wait for the burst's next change, from now; `None`
    /// once the burst is over at its limit. `held` (a write still in
    /// progress) waits until the limit rather than the quiet time.
    pub fn next_change_by(&self, held: bool) -> Option<Instant> {
        let now = Instant::now();
        if now >= self.limit {
            return None;
        }
        Some(if held {
            self.limit
        } else {
            (now + self.quiet).min(self.limit)
        })
    }
}

/// When the cluster's changes are translated: a burst settles after
/// [`CLUSTER_QUIET`] (or `interval`, if shorter) without changes, or at
/// most `interval` after it began, and a translation begins at least
/// `interval` after the one before ended.
#[derive(Debug)]
pub struct Pacing {
    quiet: Duration,
    interval: Duration,
    /// When the last translation ended; `None` before the first.
    last: Option<Instant>,
}

impl Pacing {
    pub fn new(interval: Duration) -> Self {
        Self {
            quiet: CLUSTER_QUIET.min(interval),
            interval,
            last: None,
        }
    }

    /// A translation has just ended.
    pub fn translated(&mut self) {
        self.last = Some(Instant::now());
    }

    /// Waits for the next change (one notified before the call counts)
    /// and for the time to translate it.
    pub async fn next(&mut self, changed: &Notify) {
        changed.notified().await;
        let burst = Burst::begin(self.quiet, self.interval);
        while let Some(by) = burst.next_change_by(false) {
            if timeout_at(by, changed.notified()).await.is_err() {
                break;
            }
        }
        if let Some(last) = self.last {
            sleep_until(last + self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const INTERVAL: Duration = Duration::from_millis(200);

    /// Time from the first of `changes` (milliseconds after the call, each
    /// after the one before) to `Pacing::next` returning, on tokio's paused
    /// clock; `previous` is how long before the call a translation ended.
    async fn translated_after(previous: u64, changes: Vec<u64>) -> Duration {
        let mut pacing = Pacing::new(INTERVAL);
        pacing.translated();
        tokio::time::sleep(Duration::from_millis(previous)).await;
        let changed = Arc::new(Notify::new());
        let start = Instant::now();
        let notifier = changed.clone();
        let sender = tokio::spawn(async move {
            for gap in changes {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                notifier.notify_one();
            }
        });
        pacing.next(&changed).await;
        sender.abort();
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_translated_after_the_quiet_time() {
        // Long after the last translation, the interval is no wait.
        assert_eq!(translated_after(500, vec![0]).await, CLUSTER_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_translated_once_the_quiet_time_after_its_last_change() {
        let elapsed = translated_after(500, vec![0, 10, 20, 5]).await;
        assert_eq!(elapsed, Duration::from_millis(35) + CLUSTER_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_never_stop_are_translated_at_the_interval() {
        let elapsed = translated_after(500, vec![10; 100]).await;
        assert_eq!(elapsed, Duration::from_millis(10) + INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_translation_begins_at_least_the_interval_after_the_last_ended() {
        // A translation ended 50 ms ago: the change waits for the
        // interval after it, not just the quiet time.
        let elapsed = translated_after(50, vec![0]).await;
        assert_eq!(elapsed, INTERVAL - Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_notified_before_the_wait_counts() {
        let mut pacing = Pacing::new(INTERVAL);
        let changed = Notify::new();
        changed.notify_one();
        let start = Instant::now();
        pacing.next(&changed).await;
        assert_eq!(
            start.elapsed(),
            CLUSTER_QUIET,
            "no translation to wait after"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_burst_waits_until_its_limit() {
        let burst = Burst::begin(CLUSTER_QUIET, INTERVAL);
        let start = Instant::now();
        assert_eq!(burst.next_change_by(true), Some(start + INTERVAL));
        assert_eq!(burst.next_change_by(false), Some(start + CLUSTER_QUIET));
        tokio::time::sleep(INTERVAL - Duration::from_millis(5)).await;
        assert_eq!(
            burst.next_change_by(false),
            Some(start + INTERVAL),
            "the quiet time is cut at the limit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(burst.next_change_by(false), None);
    }
}
