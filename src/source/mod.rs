//! Sources of cluster state. Each one produces complete
//! [`ClusterSnapshot`](crate::snapshot::ClusterSnapshot)s; the rest of the
//! program does not know which source is running.

pub mod burst;
pub mod files;
pub mod kube;
pub mod manifest;
pub mod watch;
