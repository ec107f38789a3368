//! Putting a snapshot in force: translate it, swap the table in unless it
//! equals the one in force, and keep the bookkeeping every source shares
//! (metrics, and warnings logged once when they appear and when they go).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::routes::class::ClassFilter;
use crate::routes::{RouteStore, TranslateOptions, Translation, Warning, WarningReason, translate};
use crate::snapshot::ClusterSnapshot;

pub struct Applier {
    options: TranslateOptions,
    routes: Arc<RouteStore>,
    metrics: Arc<Metrics>,
    current_warnings: BTreeSet<String>,
}

impl Applier {
    pub fn new(options: TranslateOptions, routes: Arc<RouteStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            options,
            routes,
            metrics,
            current_warnings: BTreeSet::new(),
        }
    }

    /// Which Ingresses of `snapshot` are ours.
    pub fn class_filter(&self, snapshot: &ClusterSnapshot) -> ClassFilter {
        ClassFilter::new(&self.options.ingress_class, &snapshot.ingress_classes)
    }

    /// Translates `snapshot` and swaps the result in unless it is the table
    /// already in force. Returns the translation's warnings.
    pub fn apply(&mut self, snapshot: &ClusterSnapshot) -> Vec<Warning> {
        let Translation { spec, warnings } = translate(snapshot, &self.options);

        for reason in WarningReason::ALL {
            let count = warnings.iter().filter(|w| w.reason == reason).count();
            self.metrics
                .translate_warnings
                .with_label_values(&[reason.as_str()])
                .set(count as i64);
        }
        let now: BTreeSet<String> = warnings.iter().map(|w| w.to_string()).collect();
        for new in now.difference(&self.current_warnings) {
            tracing::warn!(target: "switchyard::translate", "{new}");
        }
        for gone in self.current_warnings.difference(&now) {
            tracing::info!(target: "switchyard::translate", "resolved: {gone}");
        }
        self.current_warnings = now;

        let routes = spec.hosts.iter().map(|h| h.paths.len()).sum::<usize>();
        if self.routes.swap_if_changed(spec) {
            self.metrics.route_table_swaps.inc();
            self.metrics.routes.set(routes as i64);
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.metrics.route_table_last_swap.set(unix);
            tracing::info!(routes, warnings = warnings.len(), "route table swapped");
        } else {
            self.metrics.route_table_unchanged.inc();
            tracing::debug!("route table unchanged");
        }
        warnings
    }
}
