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
use super::writes::RoundEnd;
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
                let mut end = RoundEnd::Written;
                if let Some(status) = &status {
                    let ownership = |i: &_| translated.classes.ownership(i);
                    end = status
                        .sync(&translated.snapshot, ownership, still_leading)
                        .await;
                }
                if end != RoundEnd::Stopped {
                    let published = events
                        .publish(&translated.warnings, &translated.snapshot, still_leading)
                        .await;
                    end = end.max(published);
                }
                let written = end == RoundEnd::Written;
                (!written).then(|| retry.map_or(RETRY_FIRST, |pause| (pause * 2).min(RETRY_MAX)))
            }
            (false, _) => {
                // What changes while another replica leads is not seen
                // here: a warning that went away and came back meanwhile is
                // published again when this one leads again.
                events.forget();
                None
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{Ingress, IngressSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::metrics::Metrics;
    use crate::routes::WarningReason;
    use crate::routes::warning::ObjectRef;
    use crate::source::kube::mock_api::{Answer, MockApi};
    use crate::source::kube::status::{Address, PublishAddresses};

    /// Ingress `ns/web`, of our class, with no status yet and one warning.
    fn translated() -> Translated {
        let ingress = Ingress {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: Some("switchyard".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Translated {
            snapshot: ClusterSnapshot {
                ingresses: vec![Arc::new(ingress)],
                ..Default::default()
            },
            warnings: vec![Warning {
                object: ObjectRef {
                    kind: "Ingress".into(),
                    namespace: Some("ns".into()),
                    name: "web".into(),
                },
                reason: WarningReason::BackendNotFound,
                message: "spec.defaultBackend.service.name \"gone\": no such Service".into(),
            }],
            classes: ClassFilter::new("switchyard", &[]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_leads_again_publishes_its_warnings_again() {
        let (client, mut api) = MockApi::new();
        let events = EventPublisher::new(client, Some("pod".into()), Arc::new(Metrics::new()));
        let (leader, leading) = watch::channel(true);
        let latest = spawn(None, events, leading);
        latest.send_replace(Some(Arc::new(translated())));
        let post = "POST /apis/events.k8s.io/v1/namespaces/ns/events";
        assert_eq!(api.next(|_| Answer::event_created()).await.unwrap(), post);
        // Another replica leads for a while: the warning may have gone and
        // come back meanwhile, unseen here.
        leader.send_replace(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        leader.send_replace(true);
        let again = tokio::time::timeout(
            Duration::from_secs(10),
            api.next(|_| Answer::event_created()),
        )
        .await;
        // kube's recorder sends a repeat as the next of its series.
        let again = again.expect("published again").unwrap();
        assert!(
            again.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/ns/events/"),
            "{again}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_write_that_gets_no_answer_holds_the_events_back_to_the_next_round() {
        let (client, mut api) = MockApi::new();
        let metrics = Arc::new(Metrics::new());
        let addresses = [Address::parse("10.0.0.1")].into_iter().collect();
        let status = StatusWriter::new(
            client.clone(),
            PublishAddresses::Fixed(addresses),
            metrics.clone(),
        );
        let events = EventPublisher::new(client, Some("pod".into()), metrics);
        let (_leader, leading) = watch::channel(true);
        let latest = spawn(Some(status), events, leading);
        latest.send_replace(Some(Arc::new(translated())));

        let status_write = "PATCH /apis/networking.k8s.io/v1/namespaces/ns/ingresses/web/status";
        assert_eq!(api.next(|_| Answer::Silence).await.unwrap(), status_write);
        // The round stopped there: after the pause, status comes first
        // again, with no Event tried in between.
        assert_eq!(api.next(|_| Answer::Silence).await.unwrap(), status_write);
        let written = serde_json::to_value(&*translated().snapshot.ingresses[0]).unwrap();
        assert_eq!(
            api.next(|_| Answer::Ok(written)).await.unwrap(),
            status_write
        );
        // Once status is written, the round goes on to the Event.
        assert_eq!(
            api.next(|_| Answer::event_created()).await.unwrap(),
            "POST /apis/events.k8s.io/v1/namespaces/ns/events"
        );
    }
}
