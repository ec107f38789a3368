//! Leader election on a `coordination.k8s.io/v1` Lease, through
//! kube-lease-manager. Every replica serves traffic; only the leader writes
//! Ingress status and Events. Leadership is logged when it changes and
//! exported as `switchyard_leader`.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::metrics::Metrics;

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

/// How long a Lease holds after its last renewal, and how long before
/// that the holder renews it (kube-lease-manager's defaults, spelled out
/// because [`API_WRITE_TIMEOUT`](super::writes::API_WRITE_TIMEOUT) is
/// chosen against them).
pub const LEASE_DURATION_SECONDS: u64 = 30;
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Starts the election; the receiver says whether this replica leads now.
pub fn elect(
    client: Client,
    settings: LeaderSettings,
    metrics: Arc<Metrics>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let set = move |leading: bool| {
        if tx.send_replace(leading) != leading {
            metrics.leader.set(i64::from(leading));
            if leading {
                tracing::info!("became the leader: writing Ingress status and Events");
            } else {
                tracing::info!("not the leader: another replica writes Ingress status and Events");
            }
        }
    };
    tokio::spawn(async move {
        let mut reported_failure = false;
        loop {
            let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
                .with_namespace(&settings.namespace)
                .with_identity(&settings.identity)
                .with_duration(LEASE_DURATION_SECONDS)
                .with_grace(LEASE_GRACE_SECONDS)
                .build()
                .await;
            match manager {
                Ok(manager) => {
                    reported_failure = false;
                    let (mut leading, task) = manager.watch().await;
                    loop {
                        set(*leading.borrow_and_update());
                        if leading.changed().await.is_err() {
                            break;
                        }
                    }
                    set(false);
                    if let Ok(Err(e)) = task.await {
                        tracing::warn!(error = %e, lease = %settings.lease_name, "leader election stopped; starting over");
                    }
                }
                Err(e) if !reported_failure => {
                    reported_failure = true;
                    tracing::warn!(error = %e, lease = %settings.lease_name, namespace = %settings.namespace, "cannot use the leader Lease; retrying");
                }
                Err(e) => tracing::debug!(error = %e, "leader Lease still unavailable"),
            }
            tokio::time::sleep(RETRY).await;
        }
    });
    rx
}
