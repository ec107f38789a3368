//! Translate warnings as Kubernetes Events (type Warning) on the object they
//! concern, through kube-runtime's recorder. A warning is published once
//! when it appears, not again on every resync while it persists; once it
//! goes away, it is published again if it comes back.

use std::collections::HashSet;
use std::sync::Arc;

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::bounded_write;
use crate::metrics::Metrics;
use crate::routes::Warning;
use crate::snapshot::ClusterSnapshot;

/// Event notes are limited to 1 kB by the API.
const MAX_NOTE: usize = 1000;

pub struct EventPublisher {
    recorder: Recorder,
    published: HashSet<String>,
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
            published: HashSet::new(),
            metrics,
        }
    }

    /// Publishes the warnings not published yet; whether all of them were.
    pub async fn publish(&mut self, warnings: &[Warning], snapshot: &ClusterSnapshot) -> bool {
        let mut all_published = true;
        let mut still_present = HashSet::new();
        for warning in warnings {
            let key = warning.to_string();
            if self.published.contains(&key) {
                still_present.insert(key);
                continue;
            }
            let Some(reference) = object_reference(warning, snapshot) else {
                continue;
            };
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
            match bounded_write(self.recorder.publish(&event, &reference)).await {
                Ok(()) => {
                    self.metrics
                        .events
                        .with_label_values(&[warning.reason.as_str()])
                        .inc();
                    still_present.insert(key);
                }
                Err(e) => {
                    all_published = false;
                    tracing::warn!(error = %e, object = %warning.object, "cannot publish event; will retry")
                }
            }
        }
        self.published = still_present;
        all_published
    }
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
