//! Writing back to the API server what the last translation found: Ingress
//! status and warning Events, while this replica leads.
//!
//! It runs as a task of its own, handed only the latest translation: the
//! loop that swaps route tables in never waits on an API write. One status
//! PATCH per Ingress after an address change, or a write stuck on a
//! half-open connection, would otherwise hold back every route change
//! behind it (pods of a rollout going away, say) for as long as it took.
//! A round that could not write everything is tried again after a growing
//! pause, without waiting for the next change in the cluster.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::events::EventPublisher;
use super::status::StatusWriter;
use crate::routes::Warning;
use crate::routes::class::ClassFilter;
use crate::snapshot::ClusterSnapshot;

/// The first pause before a round that failed is tried again; it doubles
/// with each failure in a row, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One translation: what the status and Events are made from.
pub struct Translated {
    pub snapshot: ClusterSnapshot,
    pub warnings: Vec<Warning>,
    pub classes: ClassFilter,
}

/// Where the translate loop puts its latest result.
pub type Latest = watch::Sender<Option<Arc<Translated>>>;

/// Starts the writer. It writes on each new translation and when this
/// replica becomes leader, and ends when the returned sender or the
/// leadership channel is dropped.
pub fn spawn(
    status: Option<StatusWriter>,
    events: EventPublisher,
    leading: watch::Receiver<bool>,
) -> Latest {
    let (latest, receiver) = watch::channel(None);
    tokio::spawn(run(receiver, leading, status, events));
    latest
}

async fn run(
    mut latest: watch::Receiver<Option<Arc<Translated>>>,
    mut leading: watch::Receiver<bool>,
    status: Option<StatusWriter>,
    mut events: EventPublisher,
) {
    let mut retry: Option<Duration> = None;
    loop {
        let leader = *leading.borrow_and_update();
        let current = latest.borrow_and_update().clone();
        retry = match (leader, current) {
            (true, Some(translated)) => {
                // Leadership can move while a round is under way; a
                // replica that lost it stops writing at once.
                let still_leading = || *leading.borrow();
                let mut written = true;
                if let Some(status) = &status {
                    let ownership = |i: &_| translated.classes.ownership(i);
                    written &= status
                        .sync(&translated.snapshot, ownership, still_leading)
                        .await;
                }
                written &= events
                    .publish(&translated.warnings, &translated.snapshot, still_leading)
                    .await;
                (!written).then(|| retry.map_or(RETRY_FIRST, |pause| (pause * 2).min(RETRY_MAX)))
            }
            _ => None,
        };
        let pause = async {
            match retry {
                Some(pause) => tokio::time::sleep(pause).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
            () = pause => {}
        }
    }
}
