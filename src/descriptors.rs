//! Open-file descriptors for `switchyard run`: the process's limit raised
//! to what the system grants, and the kernel's descriptor table sized for
//! `--max-connections` before the first connection arrives.
//!
//! Every client connection holds a descriptor and so does every backend
//! connection: a tunnel or a proxied request in flight takes two. The soft
//! limit a shell or a container runtime hands a process is often 1,024,
//! far below `--max-connections`; the hard limit is what the system
//! actually allows, so the soft limit is raised to it, as nginx's
//! `worker_rlimit_nofile` and Go's runtime do.
//!
//! Linux grows a process's descriptor table by doubling it, and in a
//! process with more than one thread every growth waits for an RCU grace
//! period (`expand_fdtable` calls `synchronize_rcu`). The event loop
//! stops for that long (14 ms was measured on a 2-core VM when the
//! 256th descriptor was opened), always during a burst of new
//! connections, which is exactly when latency matters. Growing the table
//! once, before any thread exists, costs no such wait. The table is kernel
//! memory: 8 bytes per slot, rounded up to a power of two by the kernel
//! (256 KiB for the default of 10,000 connections).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors beyond two per connection: listeners, the event loop's own,
/// file watches, API server connections, logs.
pub const HEADROOM: u64 = 256;

/// Descriptors `switchyard run` wants with `max_connections` clients.
pub fn wanted(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(HEADROOM)
}

/// What [`prepare`] did, for the log once logging is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The soft limit in force now (`None`: unlimited).
    pub limit: Option<u64>,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
    /// Slots the descriptor table was grown to hold (0: left as it was).
    pub table_slots: u64,
    /// Why the limit could not be raised or the table grown, if so.
    pub failures: Vec<String>,
    /// [`wanted`] for the configured connection limit.
    pub wanted: u64,
}

impl Prepared {
    /// Logs what was done, and what the limit means for the configured
    /// connection limit (see [`Shortfall`]).
    pub fn log(&self, max_connections: usize) {
        for failure in &self.failures {
            tracing::warn!(%failure, "open-files limit or descriptor table left as it was");
        }
        let advice = "raise the hard limit (ulimit -Hn, or the container runtime's nofile \
                      limit) or lower --max-connections";
        match shortfall(self.limit, max_connections) {
            Shortfall::Connections(allowed) => tracing::warn!(
                limit = self.limit,
                max_connections,
                "the open-files limit allows about {allowed} connections, fewer than \
                 --max-connections; {advice}"
            ),
            Shortfall::Tunnels(allowed) => tracing::info!(
                limit = self.limit,
                max_connections,
                "the open-files limit allows about {allowed} tunnels (two descriptors each), \
                 fewer than --max-connections; plain requests share pooled backend \
                 connections and are not limited by it; {advice}"
            ),
            Shortfall::None => tracing::debug!(
                limit = ?self.limit,
                raised_from = ?self.raised_from,
                table_slots = self.table_slots,
                "open-files limit"
            ),
        }
    }
}

/// How far an open-files limit falls short of `--max-connections`.
#[derive(Debug, PartialEq, Eq)]
enum Shortfall {
    None,
    /// Every client connection fits, but not every one as a tunnel (which
    /// holds a backend connection too): about this many tunnels fit.
    Tunnels(u64),
    /// Not even the client connections fit: past about this many,
    /// accepting fails (the listener logs `accept failed`).
    Connections(u64),
}

fn shortfall(limit: Option<u64>, max_connections: usize) -> Shortfall {
    let Some(limit) = limit else {
        return Shortfall::None;
    };
    let usable = limit.saturating_sub(HEADROOM);
    if usable < max_connections as u64 {
        Shortfall::Connections(usable)
    } else if limit < wanted(max_connections) {
        Shortfall::Tunnels(usable / 2)
    } else {
        Shortfall::None
    }
}

/// The soft limit to raise to (the hard one), or `None` to keep it. An
/// unlimited hard limit is left alone: Linux caps open files at
/// `fs.nr_open` and refuses an unlimited soft limit.
fn raised_soft_limit(current: Rlimit) -> Option<u64> {
    match (current.current, current.maximum) {
        (Some(soft), Some(hard)) if soft < hard => Some(hard),
        _ => None,
    }
}

/// Slots to grow the table to: what is wanted, within the limit.
fn table_slots(wanted: u64, limit: Option<u64>) -> u64 {
    limit.map_or(wanted, |limit| wanted.min(limit))
}

/// The open-files soft limit after [`raise_open_files_limit`].
#[derive(Debug)]
pub struct OpenFilesLimit {
    /// The soft limit in force now (`None`: unlimited).
    pub limit: Option<u64>,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
    /// Why it could not be raised, if so (it is then as it was).
    pub failure: Option<rustix::io::Errno>,
}

/// Raises the open-files soft limit to the hard limit. Children inherit
/// it (the benchmark raises its own limit, and its proxies', with this).
pub fn raise_open_files_limit() -> OpenFilesLimit {
    let current = getrlimit(Resource::Nofile);
    let mut raised = OpenFilesLimit {
        limit: current.current,
        raised_from: None,
        failure: None,
    };
    if let Some(soft) = raised_soft_limit(current) {
        let new = Rlimit {
            current: Some(soft),
            maximum: current.maximum,
        };
        match setrlimit(Resource::Nofile, new) {
            Ok(()) => {
                raised.raised_from = current.current;
                raised.limit = Some(soft);
            }
            Err(e) => raised.failure = Some(e),
        }
    }
    raised
}

/// Raises the open-files soft limit to the hard limit and grows the
/// descriptor table for `max_connections`. Call it first thing in `main`,
/// while the process has one thread. Failures leave things as they were
/// and are reported, not fatal: the proxy works, with fewer connections or
/// the occasional pause.
pub fn prepare(max_connections: usize) -> Prepared {
    let wanted = wanted(max_connections);
    let raised = raise_open_files_limit();
    let mut prepared = Prepared {
        limit: raised.limit,
        raised_from: raised.raised_from,
        table_slots: 0,
        failures: Vec::new(),
        wanted,
    };
    if let Some(e) = raised.failure {
        prepared
            .failures
            .push(format!("raising the open-files limit: {e}"));
    }
    let slots = table_slots(wanted, prepared.limit);
    match grow_table(slots) {
        Ok(()) => prepared.table_slots = slots,
        Err(e) => prepared.failures.push(format!(
            "growing the descriptor table to {slots} slots: {e}"
        )),
    }
    prepared
}

/// Makes the table hold at least `slots` descriptors by placing one, for a
/// moment, in its last slot (`F_DUPFD` takes the lowest free descriptor at
/// or above the one asked for). The table never shrinks.
fn grow_table(slots: u64) -> rustix::io::Result<()> {
    let Some(highest) = slots.checked_sub(1) else {
        return Ok(());
    };
    let highest = i32::try_from(highest).unwrap_or(i32::MAX);
    let (reader, _writer) = rustix::pipe::pipe()?;
    let placed = rustix::io::fcntl_dupfd_cloexec(&reader, highest)?;
    drop(placed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection_and_headroom_are_wanted() {
        assert_eq!(wanted(10_000), 20_256);
        assert_eq!(wanted(0), HEADROOM);
        assert_eq!(wanted(usize::MAX), u64::MAX);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one_only_when_below_it() {
        let limit = |current, maximum| Rlimit { current, maximum };
        assert_eq!(
            raised_soft_limit(limit(Some(1024), Some(20_000))),
            Some(20_000)
        );
        assert_eq!(raised_soft_limit(limit(Some(1024), None)), None);
        assert_eq!(raised_soft_limit(limit(Some(20_000), Some(20_000))), None);
        assert_eq!(raised_soft_limit(limit(None, None)), None);
    }

    #[test]
    fn a_limit_short_of_tunnels_is_told_apart_from_one_short_of_connections() {
        assert_eq!(shortfall(Some(20_000), 10_000), Shortfall::Tunnels(9_872));
        assert_eq!(shortfall(Some(1_000), 3_000), Shortfall::Connections(744));
        assert_eq!(shortfall(Some(1 << 20), 10_000), Shortfall::None);
        assert_eq!(shortfall(None, 10_000), Shortfall::None);
    }

    #[test]
    fn the_table_is_grown_for_what_is_wanted_within_the_limit() {
        assert_eq!(table_slots(20_256, Some(20_000)), 20_000);
        assert_eq!(table_slots(20_256, Some(1 << 20)), 20_256);
        assert_eq!(table_slots(20_256, None), 20_256);
    }
}
