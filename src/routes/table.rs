//! The route table compiled for lookup: hosts in hash maps (exact, and
//! wildcards by suffix), paths in hash maps keyed so that a lookup costs
//! one probe per path element and allocates nothing.
//!
//! Host selection comes first: an exact host beats a wildcard, which beats
//! rules without a host. Only the selected host's paths are searched (as a
//! virtual host in nginx); a request whose path matches none of them goes
//! to the default backend, then the fallback, else 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::host::{HostPattern, normalize_request_host, wildcard_suffix};
use super::passive_health::{EndpointHealth, HealthGeneration, HealthRegistry, LazyNow};
use super::path::{prefix_candidates, rule_key};
use super::spec::{RouteSpec, RouteTableSpec};
use crate::route_metrics::{RouteMetrics, SeriesRegistry};

/// The table's maps. Lookups hash the request's host and path, so the
/// hash is on the hot path; foldhash is several times cheaper than the
/// standard SipHash. Hash flooding needs inserts, and only configuration
/// inserts here (and the seed is random per process all the same).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One route: where requests go and what policy applies. The place later
/// per-route policy (timeouts, limits, rewrites, ...) is added.
#[derive(Debug)]
pub struct Route {
    pub labels: RouteLabels,
    pub backend: Backend,
    /// Lower-case upgrade tokens this route may tunnel.
    pub upgrades: Box<[Box<str>]>,
    /// This route's metric series, resolved by their first use and shared
    /// with the routes of the same labels (see [`SeriesRegistry`]).
    pub metrics: Arc<RouteMetrics>,
}

impl Route {
    fn compile(spec: &RouteSpec, shared: &mut Shared<'_>) -> Self {
        let labels = RouteLabels {
            namespace: spec.backend.namespace.clone(),
            ingress: spec
                .ingress
                .as_deref()
                .and_then(|i| i.split_once('/'))
                .map(|(_, name)| name.to_string())
                .unwrap_or_default(),
            service: spec.backend.service.clone(),
        };
        let metrics = match shared.series {
            Some(registry) => registry.series(&labels),
            None => Arc::new(RouteMetrics::new()),
        };
        Self {
            labels,
            backend: Backend::new(&spec.backend.endpoints, &mut shared.health),
            upgrades: spec.upgrades.iter().map(|u| u.as_str().into()).collect(),
            metrics,
        }
    }

    /// Whether this route may tunnel `protocol` (case-insensitive).
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        self.upgrades
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(protocol))
    }
}

/// What a table being compiled shares with the tables before it.
struct Shared<'a> {
    health: HealthGeneration<'a>,
    /// `None` for a table of its own.
    series: Option<&'a Arc<SeriesRegistry>>,
}

/// Metric labels of a route: bounded, never a path or a client address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
}

/// A route's endpoints, chosen round-robin, skipping those that passive
/// health checking ejected (see [`super::passive_health`]).
#[derive(Debug)]
pub struct Backend {
    endpoints: Box<[SocketAddr]>,
    /// The health of `endpoints[i]`, shared with every route that lists the
    /// same address.
    health: Box<[Arc<EndpointHealth>]>,
    next: AtomicUsize,
}

/// An endpoint chosen for one attempt of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Its position in the backend's endpoints.
    pub index: usize,
    pub addr: SocketAddr,
}

impl Backend {
    fn new(endpoints: &[SocketAddr], health: &mut HealthGeneration<'_>) -> Self {
        Self {
            endpoints: endpoints.into(),
            health: endpoints.iter().map(|addr| health.get(*addr)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in turn that is not ejected, or `None` when there
    /// is no endpoint at all (503). An ejected endpoint's turn goes to the
    /// next one; when every endpoint is ejected, the one whose turn it is
    /// is picked anyway: an attempt that may fail beats failing them all.
    pub fn pick(&self) -> Option<Pick> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut now = LazyNow::default();
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !self.health[i].is_ejected(&mut now))
            .unwrap_or(start);
        Some(self.at(index))
    }

    /// The endpoint for another attempt of a request that tried `tried`
    /// (in order, not empty): the next one after the last tried that has
    /// not been tried and is not ejected, else the next untried one, else
    /// `None`.
    pub fn pick_retry(&self, tried: &[usize]) -> Option<Pick> {
        let n = self.endpoints.len();
        let after = tried.last().map_or(0, |last| last + 1);
        let mut untried = (0..n)
            .map(|k| (after + k) % n)
            .filter(|i| !tried.contains(i));
        let first_untried = untried.clone().next()?;
        let mut now = LazyNow::default();
        let index = untried
            .find(|&i| !self.health[i].is_ejected(&mut now))
            .unwrap_or(first_untried);
        Some(self.at(index))
    }

    fn at(&self, index: usize) -> Pick {
        Pick {
            index,
            addr: self.endpoints[index],
        }
    }

    /// The health of a picked endpoint.
    pub fn health(&self, pick: Pick) -> &Arc<EndpointHealth> {
        &self.health[pick.index]
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

/// Rule keys of one kind, and which lengths they come in: a path of a
/// length no key has is not hashed and probed for (a host with only `/`
/// probes once per request, where each path element was a probe).
#[derive(Default)]
struct Keys {
    routes: HashMap<Box<str>, Arc<Route>>,
    lengths: KeyLengths,
}

impl Keys {
    fn insert(&mut self, key: Box<str>, route: Arc<Route>) {
        self.lengths.insert(key.len());
        self.routes.insert(key, route);
    }

    fn get(&self, key: &str) -> Option<&Arc<Route>> {
        if self.lengths.may_hold(key.len()) {
            self.routes.get(key)
        } else {
            None
        }
    }
}

/// The lengths of a set of keys: exactly, below 64 bytes; above, only
/// whether there are any.
#[derive(Default, Clone, Copy)]
struct KeyLengths {
    short: u64,
    long: bool,
}

impl KeyLengths {
    fn insert(&mut self, len: usize) {
        match Self::bit(len) {
            Some(bit) => self.short |= bit,
            None => self.long = true,
        }
    }

    fn may_hold(self, len: usize) -> bool {
        match Self::bit(len) {
            Some(bit) => self.short & bit != 0,
            None => self.long,
        }
    }

    /// The bit of `short` for a length below 64.
    fn bit(len: usize) -> Option<u64> {
        u32::try_from(len)
            .ok()
            .and_then(|len| 1u64.checked_shl(len))
    }
}

#[derive(Default)]
struct HostRoutes {
    exact: Keys,
    prefix: Keys,
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            // An exact match is as long as the request path itself, so no
            // prefix can be longer, and Exact wins a tie.
            return Some(route);
        }
        prefix_candidates(path).find_map(|candidate| self.prefix.get(candidate))
    }
}

/// An immutable, compiled route table.
#[derive(Default)]
pub struct RouteTable {
    spec: RouteTableSpec,
    exact_hosts: HashMap<Box<str>, HostRoutes>,
    wildcard_hosts: HashMap<Box<str>, HostRoutes>,
    any_host: Option<HostRoutes>,
    default_backend: Option<Arc<Route>>,
    fallback: Option<Arc<Route>>,
}

impl RouteTable {
    /// Compiles `spec` with endpoint health and metric series of its own
    /// (for `check`, `routes` and tests: nothing is shared with another
    /// table).
    pub fn compile(spec: RouteTableSpec) -> Self {
        Self::compile_sharing(spec, &HealthRegistry::default(), None)
    }

    /// Compiles `spec`; endpoints share their health state with earlier
    /// tables compiled with the same `health`, and routes their metric
    /// series with those of the same labels compiled with `series`.
    pub fn compile_sharing(
        spec: RouteTableSpec,
        health: &HealthRegistry,
        series: Option<&Arc<SeriesRegistry>>,
    ) -> Self {
        let mut shared = Shared {
            health: health.generation(),
            series,
        };
        let mut table = RouteTable::default();
        for host in &spec.hosts {
            let mut routes = HostRoutes::default();
            for path in &host.paths {
                let route = Arc::new(Route::compile(&path.route, &mut shared));
                let key: Box<str> = rule_key(&path.path, path.path_type).into();
                let map = if path.path_type.is_exact() {
                    &mut routes.exact
                } else {
                    &mut routes.prefix
                };
                map.insert(key, route);
            }
            match &host.host {
                HostPattern::Exact(h) => {
                    table.exact_hosts.insert(h.as_str().into(), routes);
                }
                HostPattern::Wildcard(s) => {
                    table.wildcard_hosts.insert(s.as_str().into(), routes);
                }
                HostPattern::Any => table.any_host = Some(routes),
            }
        }
        table.default_backend = spec
            .default_backend
            .as_ref()
            .map(|r| Arc::new(Route::compile(r, &mut shared)));
        table.fallback = spec
            .fallback
            .as_ref()
            .map(|r| Arc::new(Route::compile(r, &mut shared)));
        table.spec = spec;
        table
    }

    /// The plain-data form this table was compiled from.
    pub fn spec(&self) -> &RouteTableSpec {
        &self.spec
    }

    /// Number of host+path routes.
    pub fn route_count(&self) -> usize {
        self.spec.hosts.iter().map(|h| h.paths.len()).sum()
    }

    /// The route for a request's Host header (or `:authority`) and path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_request_host(host);
        let routes = self
            .exact_hosts
            .get(host.as_ref())
            .or_else(|| wildcard_suffix(&host).and_then(|s| self.wildcard_hosts.get(s)))
            .or(self.any_host.as_ref());
        routes
            .and_then(|r| r.find(path))
            .or(self.default_backend.as_ref())
            .or(self.fallback.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::routes::PassiveHealthConfig;

    fn backend(n: u16) -> Backend {
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], i)))
            .collect();
        Backend::new(&addrs, &mut HealthRegistry::default().generation())
    }

    fn eject(backend: &Backend, index: usize) {
        let config = PassiveHealthConfig {
            failures: 1,
            backoff: Duration::from_secs(600),
            max_backoff: Duration::from_secs(600),
        };
        let pick = backend.at(index);
        assert!(backend.health(pick).record_failure(&config).is_some());
    }

    fn picks(backend: &Backend, n: usize) -> Vec<usize> {
        (0..n).map(|_| backend.pick().unwrap().index).collect()
    }

    #[test]
    fn key_lengths_hold_exactly_what_was_inserted_below_64_bytes() {
        let mut lengths = KeyLengths::default();
        for len in [0, 5, 63] {
            lengths.insert(len);
        }
        for len in 0..64 {
            assert_eq!(lengths.may_hold(len), [0, 5, 63].contains(&len), "{len}");
        }
        assert!(!lengths.may_hold(64), "no long key yet");
        lengths.insert(200);
        assert!(lengths.may_hold(64) && lengths.may_hold(usize::MAX));
        assert!(!lengths.may_hold(6), "short lengths still exact");
    }

    #[test]
    fn pick_skips_ejected_endpoints_unless_all_are() {
        let b = backend(3);
        assert_eq!(picks(&b, 4), [0, 1, 2, 0]);
        eject(&b, 1);
        // Endpoint 1's turn goes to endpoint 2.
        assert_eq!(picks(&b, 3), [2, 2, 0]);
        eject(&b, 0);
        eject(&b, 2);
        // All ejected: round-robin as if none were.
        assert_eq!(picks(&b, 3), [1, 2, 0]);
    }

    #[test]
    fn a_retry_goes_to_the_next_untried_endpoint_preferring_healthy_ones() {
        let b = backend(4);
        let retry = |tried: &[usize]| b.pick_retry(tried).map(|p| p.index);
        assert_eq!(retry(&[1]), Some(2));
        assert_eq!(retry(&[3]), Some(0));
        assert_eq!(retry(&[3, 0]), Some(1));
        eject(&b, 2);
        assert_eq!(retry(&[1]), Some(3));
        assert_eq!(retry(&[1, 3, 0]), Some(2), "only an ejected one is left");
        assert_eq!(retry(&[0, 1, 2, 3]), None);
        assert_eq!(backend(1).pick_retry(&[0]), None);
    }
}
