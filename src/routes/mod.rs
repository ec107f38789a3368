//! Routes: the pure translation from cluster objects to a route table, the
//! compiled table the proxy looks requests up in, and the store that swaps
//! tables atomically.

pub mod annotations;
pub mod backend;
pub mod class;
pub mod host;
pub mod path;
pub mod spec;
pub mod table;
pub mod translate;
pub mod warning;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use spec::RouteTableSpec;
pub use table::{Route, RouteLabels, RouteTable};
pub use translate::{TranslateOptions, Translation, translate};
pub use warning::{Warning, WarningReason};

/// The route table in force. Readers take an `Arc` and keep it for the
/// whole request or tunnel, so a swap never changes anything under them.
pub struct RouteStore {
    current: ArcSwap<RouteTable>,
}

impl Default for RouteStore {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(RouteTable::default()),
        }
    }
}

impl RouteStore {
    pub fn load(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Puts `spec` in force unless it equals the table already in force.
    /// Returns whether a swap happened.
    pub fn swap_if_changed(&self, spec: RouteTableSpec) -> bool {
        if *self.current.load().spec() == spec {
            return false;
        }
        self.current.store(Arc::new(RouteTable::compile(spec)));
        true
    }
}
