//! switchyard: a Kubernetes Ingress controller and upgrade-aware reverse
//! proxy in one process.
//!
//! Data flows one way: a [`source`] produces a [`snapshot::ClusterSnapshot`],
//! [`routes::translate`] turns it into a route table (pure, no IO), the
//! [`routes::RouteStore`] swaps it in atomically, and the [`proxy`] serves
//! requests and tunnels from whichever table was in force when they started.
//! [`metrics`] and [`admin`] observe all of it.

pub mod admin;
pub mod apply;
pub mod busy_poll;
pub mod cli;
pub mod config;
pub mod descriptors;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod route_metrics;
pub mod routes;
pub mod runtime;
pub mod serving;
pub mod shutdown;
pub mod snapshot;
pub mod source;
pub mod units;
pub mod yaml;
