//! Translate warnings as Kubernetes Events (type Warning) on the object they
//! concern, through kube-runtime's recorder. A warning is published once
//! when it appears, not again on every resync while it persists; once it
//! has been gone for [`REPUBLISH_AFTER`], it is published again if it comes
//! back, and so is every warning when this replica leads again after
//! another did (it could not see them come and go meanwhile). The wait
//! keeps a warning that comes and goes (the endpoints of a crash-looping
//! backend, behind many paths) from costing a write per path each time,
//! as client-go's recorder limits such repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::time::Instant;

use super::writes::{RoundEnd, WriteFailure, outcome};
use crate::metrics::Metrics;
use crate::routes::Warning;
use crate::snapshot::ClusterSnapshot;

/// Event notes are limited to 1 kB by the API.
const MAX_NOTE: usize = 1000;

/// How long a published warning must have been gone before it is
/// published again when it comes back.
const REPUBLISH_AFTER: Duration = Duration::from_secs(300);

pub struct EventPublisher {
    recorder: Recorder,
    /// The warnings published, and when each was last found.
    published: HashMap<String, Instant>,
    metrics: Arc<Metrics>,
}

impl EventPublisher {
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: "switchyard".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
            published: HashMap::new(),
            metrics,
        }
    }

    /// Forgets which warnings were published: each is published again by
    /// the next round that finds it.
    pub fn forget(&mut self) {
        self.published.clear();
    }

    /// Publishes the warnings not published yet. Like a status round, it
    /// stops at the first write the API server is not taking and as soon
    /// as `leading` says this replica no longer leads.
    pub async fn publish(
        &mut self,
        warnings: &[Warning],
        snapshot: &ClusterSnapshot,
        leading: impl Fn() -> bool,
    ) -> RoundEnd {
        let mut end = RoundEnd::Written;
        let now = Instant::now();
        for warning in warnings {
            let key = warning.to_string();
            if let Some(seen) = self.published.get_mut(&key) {
                *seen = now;
                continue;
            }
            // Once stopped, the warnings left are published by a later
            // round; those published before are still remembered above.
            if end == RoundEnd::Stopped || !leading() {
                end = RoundEnd::Stopped;
                continue;
            }
            let Some(mut reference) = object_reference(warning, snapshot) else {
                continue;
            };
            // Part of the key kube's recorder groups repeats by: without
            // it, a second warning of one reason on one object (two paths
            // to missing Services) would be taken for a repeat of the
            // first, and only its count would reach the API server.
            reference.field_path = field_of(&warning.message);
            let mut note = warning.message.clone();
            if note.len() > MAX_NOTE {
                let mut end = MAX_NOTE;
                while !note.is_char_boundary(end) {
                    end -= 1;
                }
                note.truncate(end);
            }
            let event = Event {
                type_: EventType::Warning,
                reason: warning.reason.as_str().into(),
                note: Some(note),
                action: "Translate".into(),
                secondary: None,
            };
            match outcome(self.recorder.publish(&event, &reference).await) {
                Ok(()) => {
                    self.metrics
                        .events
                        .with_label_values(&[warning.reason.as_str()])
                        .inc();
                    self.published.insert(key, now);
                }
                Err(WriteFailure::Refused(error)) => {
                    end = end.max(RoundEnd::Incomplete);
                    tracing::warn!(%error, object = %warning.object, "cannot publish event; will retry")
                }
                Err(WriteFailure::Unavailable(error)) => {
                    end = RoundEnd::Stopped;
                    tracing::warn!(%error, object = %warning.object, "the API server is not taking writes; will retry the round")
                }
            }
        }
        self.published
            .retain(|_, seen| now.duration_since(*seen) < REPUBLISH_AFTER);
        end
    }
}

/// The field a warning's message starts with (`spec.rules[0]...`), as an
/// Event's `regarding.fieldPath`.
fn field_of(message: &str) -> Option<String> {
    let field = message.split([':', ' ']).next()?;
    (field.starts_with("spec.") || field.starts_with("metadata.")).then(|| field.to_string())
}

fn object_reference(
    warning: &Warning,
    snapshot: &ClusterSnapshot,
) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let object = &warning.object;
    let matches = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.name.as_deref() == Some(object.name.as_str())
            && meta.namespace.as_deref() == object.namespace.as_deref()
    };
    match object.kind.as_str() {
        "Ingress" => snapshot
            .ingresses
            .iter()
            .find(|i| matches(&i.metadata))
            .map(|i| i.object_ref(&())),
        "Service" => snapshot
            .services
            .iter()
            .find(|s| matches(&s.metadata))
            .map(|s| s.object_ref(&())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use k8s_openapi::api::networking::v1::Ingress;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::routes::warning::{ObjectRef, WarningReason};
    use crate::source::kube::mock_api::{Answer, MockApi};

    /// Warnings on the Ingresses `names`, and a snapshot holding them.
    fn warnings_on(names: &[&str]) -> (Vec<Warning>, ClusterSnapshot) {
        let warnings = names
            .iter()
            .map(|name| Warning {
                object: ObjectRef {
                    kind: "Ingress".into(),
                    namespace: Some("ns".into()),
                    name: (*name).into(),
                },
                reason: WarningReason::BackendNotFound,
                message: format!(
                    "{name}: spec.defaultBackend.service.name \"gone\": no such Service"
                ),
            })
            .collect();
        let snapshot = ClusterSnapshot {
            ingresses: names
                .iter()
                .map(|name| {
                    Arc::new(Ingress {
                        metadata: ObjectMeta {
                            name: Some((*name).into()),
                            namespace: Some("ns".into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    })
                })
                .collect(),
            ..Default::default()
        };
        (warnings, snapshot)
    }

    /// Publishes warnings on `names` once; the requests made and the result.
    async fn publish_once(
        names: &[&str],
        leading: impl Fn() -> bool + Send + 'static,
        answer: impl FnMut(&str) -> Answer,
    ) -> (Vec<String>, RoundEnd) {
        let (client, api) = MockApi::new();
        let mut events = EventPublisher::new(client, Some("pod".into()), Arc::new(Metrics::new()));
        let (warnings, snapshot) = warnings_on(names);
        let publish =
            tokio::spawn(async move { events.publish(&warnings, &snapshot, leading).await });
        let requests = api.serve(answer).await;
        (requests, publish.await.unwrap())
    }

    const CREATE: &str = "POST /apis/events.k8s.io/v1/namespaces/ns/events";

    #[tokio::test]
    async fn every_new_warning_is_published() {
        let (requests, end) =
            publish_once(&["a", "b", "c"], || true, |_| Answer::event_created()).await;
        assert_eq!(requests, [CREATE; 3]);
        assert_eq!(end, RoundEnd::Written);
    }

    #[tokio::test]
    async fn two_warnings_of_one_reason_on_one_object_are_two_events() {
        let (client, api) = MockApi::new();
        let mut events = EventPublisher::new(client, Some("pod".into()), Arc::new(Metrics::new()));
        let (mut warnings, snapshot) = warnings_on(&["a", "a"]);
        for (i, warning) in warnings.iter_mut().enumerate() {
            warning.message = format!(
                "spec.rules[0].http.paths[{i}].backend.service: Service ns/s{i} not found; requests get 503"
            );
        }
        let publish =
            tokio::spawn(async move { events.publish(&warnings, &snapshot, || true).await });
        let requests = api.serve(|_| Answer::event_created()).await;
        assert_eq!(
            requests, [CREATE; 2],
            "the second is an Event of its own, not a repeat"
        );
        assert_eq!(publish.await.unwrap(), RoundEnd::Written);
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_back_soon_after_it_went_is_not_published_again() {
        let (client, api) = MockApi::new();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = writes.clone();
        let server = tokio::spawn(api.serve(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            Answer::event_created()
        }));
        let mut events = EventPublisher::new(client, Some("pod".into()), Arc::new(Metrics::new()));
        let (warnings, snapshot) = warnings_on(&["a"]);
        let written = || writes.load(Ordering::SeqCst);

        events.publish(&warnings, &snapshot, || true).await;
        assert_eq!(written(), 1);
        // Gone, and back a little later: the Event already says it.
        events.publish(&[], &snapshot, || true).await;
        tokio::time::advance(REPUBLISH_AFTER / 2).await;
        events.publish(&warnings, &snapshot, || true).await;
        assert_eq!(written(), 1, "published again after a short absence");
        // Gone for longer: published again when it comes back.
        events.publish(&[], &snapshot, || true).await;
        tokio::time::advance(REPUBLISH_AFTER).await;
        events.publish(&[], &snapshot, || true).await;
        events.publish(&warnings, &snapshot, || true).await;
        assert_eq!(written(), 2);
        drop(events);
        server.await.unwrap();
    }

    #[test]
    fn the_field_path_is_the_field_a_message_starts_with() {
        assert_eq!(
            field_of("spec.rules[1].host \"a_b\": not a valid host").as_deref(),
            Some("spec.rules[1].host")
        );
        assert_eq!(
            field_of("metadata.annotations[\"x\"]: bad").as_deref(),
            Some("metadata.annotations[\"x\"]")
        );
        assert_eq!(
            field_of("--default-backend-service: Service x/y not found"),
            None
        );
    }

    #[tokio::test]
    async fn publishing_stops_at_the_first_event_that_gets_no_answer() {
        let mut answers = [Answer::Refused, Answer::Silence, Answer::event_created()].into_iter();
        let (requests, end) =
            publish_once(&["a", "b", "c", "d"], || true, |_| answers.next().unwrap()).await;
        assert_eq!(requests, [CREATE; 2], "a refusal goes on, no answer stops");
        assert_eq!(end, RoundEnd::Stopped);
    }

    #[tokio::test]
    async fn a_replica_that_stops_leading_publishes_no_more() {
        let leading = Arc::new(AtomicBool::new(true));
        let still_leading = {
            let leading = leading.clone();
            move || leading.load(Ordering::SeqCst)
        };
        let answer = |_: &str| {
            leading.store(false, Ordering::SeqCst);
            Answer::event_created()
        };
        let (requests, end) = publish_once(&["a", "b", "c"], still_leading, answer).await;
        assert_eq!(requests, [CREATE; 1]);
        assert_eq!(end, RoundEnd::Stopped);
    }
}
