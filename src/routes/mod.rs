//! Routes: the pure translation from cluster objects to a route table, the
//! compiled table the proxy looks requests up in, and the store that swaps
//! tables atomically (and keeps endpoint health across swaps).

pub mod annotations;
pub mod backend;
pub mod class;
pub mod host;
pub mod passive_health;
pub mod path;
pub mod request_path;
pub mod retire;
pub mod spec;
pub mod table;
pub mod translate;
pub mod warning;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::route_metrics::SeriesRegistry;

pub use passive_health::{HealthRegistry, PassiveHealthConfig};
pub use spec::RouteTableSpec;
pub use table::{Backend, Pick, Route, RouteLabels, RouteTable};
pub use translate::{TranslateOptions, Translation, translate};
pub use warning::{Warning, WarningReason};

/// The route table in force. A request takes the route it looks up and
/// keeps it to its end (a tunnel's too), so a swap never changes anything
/// under them; the table it replaced is freed by the swapping thread (see
/// [`retire`]).
/// Endpoint health and metric series outlive tables: a new table's
/// endpoints take over the state of the same addresses in the table
/// before, and its routes the series of the same labels.
pub struct RouteStore {
    current: ArcSwap<RouteTable>,
    health: HealthRegistry,
    series: Arc<SeriesRegistry>,
}

impl RouteStore {
    /// An empty table in force; routes' series go to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: ArcSwap::from_pointee(RouteTable::default()),
            health: HealthRegistry::default(),
            series: SeriesRegistry::new(metrics),
        }
    }

    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Puts `spec` in force unless it equals the table already in force.
    /// Returns whether a swap happened. It may wait up to
    /// [`RETIRE_WAIT`](retire::RETIRE_WAIT) to free the table it replaced:
    /// call it off the threads that serve requests.
    pub fn swap_if_changed(&self, spec: RouteTableSpec) -> bool {
        if *self.current.load().spec() == spec {
            return false;
        }
        let table = RouteTable::compile_sharing(spec, &self.health, Some(&self.series));
        let replaced = self.current.swap(Arc::new(table));
        retire::retire(replaced, retire::RETIRE_WAIT);
        true
    }
}
