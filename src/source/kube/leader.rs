//! Leader election on a `coordination.k8s.io/v1` Lease, through
//! kube-lease-manager. Every replica serves traffic; only the leader writes
//! Ingress status and Events. Leadership is logged when it changes and
//! exported as `switchyard_leader`.
//!
//! The manager says who holds the Lease as far as it last read it. A
//! replica that holds it also needs a renewal the API server took recently
//! enough ([`LEADERSHIP_LAPSE`]): one cut off from the API server stops
//! leading before another replica may take the Lease over, where the
//! manager alone would go on saying it leads until it can read the Lease
//! again.
//!
//! A replica that does not hold the Lease reads it again every
//! [`FOLLOWER_LOOK`]: the manager alone would wait for the expiry it last
//! read, up to a Lease's duration, and so take a Lease the leader gave up
//! on shutdown no sooner than one it let expire.

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::{RwLock, watch};
use tokio::time::Instant;

use super::lease_writes::Confirmations;
use super::writes::API_WRITE_LIMIT;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease (the pod's namespace).
    pub namespace: String,
    /// This replica's identity (the pod's name).
    pub identity: String,
}

/// How long to wait before trying again to set up the lease.
const RETRY: Duration = Duration::from_secs(5);

/// How long to wait after a failed renewal (or read of the Lease) before
/// the next. Fixed: kube-lease-manager's own loop doubles its pause after
/// each error up to 30 s and only starts again from 1 s when the holder
/// changes, so a few failures spread over days would leave a leader
/// unable to retry a failed renewal before its Lease expired.
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// How often a replica that does not hold the Lease reads it again: two
/// reads each time (the manager's, made afresh), against client-go's
/// leader election reading every 2 s.
const FOLLOWER_LOOK: Duration = Duration::from_secs(5);

/// How often a spell of failed renewals is logged as a warning.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How long a Lease holds after its last renewal, and how long before
/// that the holder renews it: time for a renewal that fails as late as a
/// write can ([`API_WRITE_LIMIT`]) to be sent once more before the
/// leadership lapses.
pub const LEASE_DURATION_SECONDS: u64 = 30;
pub const LEASE_GRACE_SECONDS: u64 = 15;

/// How long after its last confirmed renewal this replica goes on leading
/// without another: 2 s short of the Lease's expiry, which leaves that
/// much for the replicas' clocks to differ.
pub const LEADERSHIP_LAPSE: Duration = Duration::from_secs(LEASE_DURATION_SECONDS - 2);

/// When the renewal after a confirmed one is sent.
const NEXT_RENEWAL: u64 = LEASE_DURATION_SECONDS - LEASE_GRACE_SECONDS;

// A renewal sent on schedule that goes through comes before the lapse.
const _: () = assert!(NEXT_RENEWAL + API_WRITE_LIMIT.as_secs() < LEADERSHIP_LAPSE.as_secs());
// So does the try after a failed one.
const _: () = assert!(
    NEXT_RENEWAL + 2 * API_WRITE_LIMIT.as_secs() + RENEW_RETRY.as_secs()
        <= LEADERSHIP_LAPSE.as_secs()
);

/// Starts the election on `client`, whose Lease writes `confirmations`
/// reports (see [`lease_client`](super::lease_writes::lease_client)); the
/// receiver says whether this replica leads now. When `shutdown` begins
/// draining, this replica stops leading and gives the Lease up, so that
/// another replica takes over at once rather than after the Lease
/// expires (a rolling update would otherwise leave status and Events
/// unwritten for up to 30 s); the drain waits for that.
pub fn elect(
    client: Client,
    mut confirmations: Confirmations,
    settings: LeaderSettings,
    metrics: Arc<Metrics>,
    shutdown: &Shutdown,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let set = move |leading: bool| {
        if tx.send_replace(leading) != leading {
            metrics.leader.set(i64::from(leading));
            if leading {
                tracing::info!("became the leader: writing Ingress status and Events");
            } else {
                tracing::info!("not leading: writing no Ingress status or Events");
            }
        }
    };
    let shutdown = shutdown.clone();
    let tracker = shutdown.tracker().clone();
    tracker.spawn(async move {
        let build = || {
            LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
                .with_namespace(&settings.namespace)
                .with_identity(&settings.identity)
                .with_duration(LEASE_DURATION_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                .build()
        };
        let mut reported_failure = false;
        let manager = loop {
            match build().await {
                Ok(manager) => break manager,
                Err(e) if !reported_failure => {
                    reported_failure = true;
                    tracing::warn!(error = %e, lease = %settings.lease_name, namespace = %settings.namespace, "cannot use the leader Lease; retrying");
                }
                Err(e) => tracing::debug!(error = %e, "leader Lease still unavailable"),
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.draining() => return,
            }
        };
        let (holds, mut holder) = watch::channel(false);
        // Replaced while following (see `FOLLOWER_LOOK`); used by this
        // task alone, one step at a time.
        let manager = RwLock::new(manager);
        let renewing = async {
            // A renewal that goes through does not return from `changed`:
            // failures are told apart by time, a warning for the first of
            // a spell and every minute while it lasts.
            let mut warned: Option<Instant> = None;
            loop {
                // Returns when the holder changes; renews (or waits for an
                // expiry) in between.
                let current = manager.read().await;
                let changed = if *holds.borrow() {
                    Some(current.changed().await)
                } else {
                    tokio::time::timeout(FOLLOWER_LOOK, current.changed()).await.ok()
                };
                drop(current);
                let Some(changed) = changed else {
                    // Read the Lease afresh: it may have been given up.
                    match build().await {
                        Ok(fresh) => *manager.write().await = fresh,
                        Err(error) => tracing::debug!(%error, "cannot read the leader Lease again"),
                    }
                    continue;
                };
                match changed {
                    Ok(now_holds) => {
                        holds.send_replace(now_holds);
                    }
                    Err(error) => {
                        if warned.is_none_or(|at| at.elapsed() >= FAILURE_WARNING_EVERY) {
                            warned = Some(Instant::now());
                            tracing::warn!(%error, lease = %settings.lease_name, "cannot renew or read the leader Lease; retrying every second");
                        } else {
                            tracing::debug!(%error, "leader Lease still unavailable");
                        }
                        tokio::time::sleep(RENEW_RETRY).await;
                    }
                }
            }
        };
        tokio::select! {
            () = renewing => return,
            () = follow(&mut holder, &mut confirmations, &set) => return,
            () = shutdown.draining() => {}
        }
        // Both loops are gone: nothing else holds the Lease's state.
        set(false);
        if !*holder.borrow() {
            return;
        }
        let manager = manager.into_inner();
        match manager.release().await {
            Ok(()) => tracing::info!(lease = %settings.lease_name, "released the leader Lease"),
            Err(error) => {
                tracing::warn!(%error, lease = %settings.lease_name, "could not release the leader Lease; it expires by itself")
            }
        }
    });
    rx
}

/// Leads while the manager says this replica holds the Lease and its last
/// confirmed renewal is less than [`LEADERSHIP_LAPSE`] old; returns once
/// the manager has stopped.
async fn follow(
    holder: &mut watch::Receiver<bool>,
    confirmations: &mut Confirmations,
    set: &impl Fn(bool),
) {
    loop {
        let holds = *holder.borrow_and_update();
        let lapses = confirmations
            .borrow_and_update()
            .map(|sent| sent + LEADERSHIP_LAPSE);
        let leads = holds && lapses.is_some_and(|at| Instant::now() < at);
        set(leads);
        let lapse = async {
            match lapses {
                Some(at) if leads => {
                    tokio::time::sleep_until(at).await;
                    tracing::warn!(
                        "no renewal of the leader Lease went through in time: writing no status or Events until one does"
                    );
                }
                _ => pending().await,
            }
        };
        let confirmed = async {
            // The sender lives in the client the manager renews with.
            if confirmations.changed().await.is_err() {
                pending::<()>().await;
            }
        };
        tokio::select! {
            changed = holder.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = confirmed => {}
            () = lapse => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `follow` on channels the test drives, its verdict in the receiver.
    fn following() -> (
        watch::Sender<bool>,
        watch::Sender<Option<Instant>>,
        watch::Receiver<bool>,
    ) {
        let (holder, mut held) = watch::channel(false);
        let (confirm, mut confirmations) = watch::channel(None);
        let (verdict, leads) = watch::channel(false);
        tokio::spawn(async move {
            follow(&mut held, &mut confirmations, &|leading| {
                verdict.send_replace(leading);
            })
            .await;
        });
        (holder, confirm, leads)
    }

    /// Lets the spawned `follow` see what the test just sent.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_leads_until_its_last_confirmed_renewal_lapses() {
        let (holder, confirm, leads) = following();
        confirm.send_replace(Some(Instant::now()));
        holder.send_replace(true);
        settle().await;
        assert!(*leads.borrow());
        tokio::time::sleep(LEADERSHIP_LAPSE - Duration::from_secs(1)).await;
        assert!(*leads.borrow(), "still within the lapse");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!*leads.borrow(), "no renewal confirmed in time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_confirmed_later_makes_the_holder_lead_again() {
        let (holder, confirm, leads) = following();
        confirm.send_replace(Some(Instant::now()));
        holder.send_replace(true);
        tokio::time::sleep(LEADERSHIP_LAPSE + Duration::from_secs(5)).await;
        assert!(!*leads.borrow());
        confirm.send_replace(Some(Instant::now()));
        settle().await;
        assert!(*leads.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_holder_leading_past_one_lapse() {
        let (holder, confirm, leads) = following();
        confirm.send_replace(Some(Instant::now()));
        holder.send_replace(true);
        for _ in 0..3 {
            // Renewed on the manager's schedule, each answered at once.
            tokio::time::sleep(Duration::from_secs(NEXT_RENEWAL)).await;
            confirm.send_replace(Some(Instant::now()));
            settle().await;
            assert!(*leads.borrow());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_the_manager_does_not_name_never_leads() {
        let (holder, confirm, leads) = following();
        // A write it made (releasing an expired Lease) went through.
        confirm.send_replace(Some(Instant::now()));
        settle().await;
        assert!(!*leads.borrow());
        holder.send_replace(true);
        settle().await;
        assert!(*leads.borrow());
        holder.send_replace(false);
        settle().await;
        assert!(!*leads.borrow(), "another replica took the Lease");
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_with_no_confirmed_write_does_not_lead() {
        // The Lease named this replica before it wrote anything (a restart
        // under the same name): it leads from its first renewal.
        let (holder, confirm, leads) = following();
        holder.send_replace(true);
        settle().await;
        assert!(!*leads.borrow());
        confirm.send_replace(Some(Instant::now()));
        settle().await;
        assert!(*leads.borrow());
    }
}
