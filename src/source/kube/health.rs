//! How the watches are doing, per kind: errors are counted, logged once per
//! class of failure (not once per retry), and turned into a last-sync time
//! and a staleness gauge, so a table kept in force while the API server is
//! unreachable is visible as such.
//!
//! A kind watched in several namespaces has one watch per namespace, each
//! failing and recovering on its own (RBAC taken away in one of them, say):
//! health is kept per watch, and a kind's staleness is its stalest watch's,
//! so events from a healthy namespace cannot hide a failing one there. (The
//! last-sync time is the kind's latest event, from whichever watch.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kube::runtime::watcher;

use crate::metrics::Metrics;

#[derive(Default)]
struct KindHealth {
    last_ok: Option<(Instant, f64)>,
    /// The class of the failure in progress, if any.
    failing: Option<String>,
    failing_since: Option<Instant>,
}

/// One watch: a kind, in one namespace or in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchScope {
    pub kind: &'static str,
    pub namespace: Option<String>,
}

pub struct SourceHealth {
    metrics: Arc<Metrics>,
    kinds: Mutex<HashMap<WatchScope, KindHealth>>,
    started: Instant,
}

impl SourceHealth {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            kinds: Mutex::new(HashMap::new()),
            started: Instant::now(),
        })
    }

    /// The watch `scope` delivered an event: it is current.
    pub fn ok(&self, scope: &WatchScope) {
        let kind = scope.kind;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let mut kinds = self.kinds.lock().expect("health lock");
        let health = kinds.entry(scope.clone()).or_default();
        health.last_ok = Some((Instant::now(), unix));
        if let Some(class) = health.failing.take() {
            tracing::info!(kind, namespace = scope.namespace.as_deref(), after = %class, "watch recovered");
        }
        health.failing_since = None;
        self.metrics
            .source_last_sync
            .with_label_values(&[kind])
            .set(unix);
    }

    /// The watch `scope` failed; it is retried with back-off by the watcher.
    pub fn error(&self, scope: &WatchScope, error: &watcher::Error) {
        let kind = scope.kind;
        let namespace = scope.namespace.as_deref();
        self.metrics.source_errors.with_label_values(&[kind]).inc();
        let class = classify(error);
        let mut kinds = self.kinds.lock().expect("health lock");
        let health = kinds.entry(scope.clone()).or_default();
        if health.failing.as_deref() == Some(class.as_str()) {
            tracing::debug!(kind, namespace, %error, "watch still failing; retrying with back-off");
        } else {
            tracing::warn!(kind, namespace, %error, "watch failed ({class}); retrying with back-off, the route table in force is kept");
            health.failing = Some(class);
        }
        health.failing_since.get_or_insert_with(Instant::now);
    }

    /// Updates the staleness gauges: seconds since the last good contact
    /// for a kind whose watch is failing, 0 for a healthy one.
    pub fn refresh(&self) {
        let kinds = self.kinds.lock().expect("health lock");
        let mut stalest: HashMap<&'static str, f64> = HashMap::new();
        for (scope, health) in kinds.iter() {
            let stale = match (&health.failing, health.last_ok) {
                (None, _) => 0.0,
                (Some(_), Some((at, _))) => at.elapsed().as_secs_f64(),
                (Some(_), None) => self.started.elapsed().as_secs_f64(),
            };
            let kind = stalest.entry(scope.kind).or_default();
            *kind = kind.max(stale);
        }
        for (kind, stale) in stalest {
            self.metrics
                .source_staleness
                .with_label_values(&[kind])
                .set(stale);
        }
    }
}

/// A short, stable name for a kind of failure, so that a retry loop
/// against an unreachable API server logs once, not once per attempt.
fn classify(error: &watcher::Error) -> String {
    let client = |stage: &str, e: &kube::Error| match e {
        kube::Error::Api(status) => format!("{stage}: {} {}", status.code, status.reason),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            format!("{stage}: API server unreachable")
        }
        _ => format!("{stage}: client error"),
    };
    match error {
        watcher::Error::InitialListFailed(e) => client("list", e),
        watcher::Error::WatchStartFailed(e) => client("watch", e),
        watcher::Error::WatchFailed(e) => client("watch stream", e),
        watcher::Error::WatchError(status) => format!("watch: {} {}", status.code, status.reason),
        watcher::Error::NoResourceVersion => "list without resourceVersion".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staleness(metrics: &Metrics, kind: &str) -> f64 {
        metrics.source_staleness.with_label_values(&[kind]).get()
    }

    #[test]
    fn a_failing_namespace_stays_stale_while_another_delivers_events() {
        let metrics = Arc::new(Metrics::new());
        let health = SourceHealth::new(metrics.clone());
        let scope = |namespace: &str| WatchScope {
            kind: "Ingress",
            namespace: Some(namespace.to_string()),
        };
        health.ok(&scope("a"));
        health.ok(&scope("b"));
        health.error(&scope("b"), &watcher::Error::NoResourceVersion);
        std::thread::sleep(std::time::Duration::from_millis(20));
        health.ok(&scope("a"));
        health.refresh();
        assert!(staleness(&metrics, "Ingress") >= 0.02, "b is failing");

        health.ok(&scope("b"));
        health.refresh();
        assert_eq!(staleness(&metrics, "Ingress"), 0.0, "both current");
    }
}
