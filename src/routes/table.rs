//! The route table compiled for lookup: hosts in hash maps (exact, and
//! wildcards by suffix), paths in hash maps keyed so that a lookup costs
//! one probe per path element and allocates nothing.
//!
//! Host selection comes first: an exact host beats a wildcard, which beats
//! rules without a host. Only the selected host's paths are searched (as a
//! virtual host in nginx); a request whose path matches none of them goes
//! to the default backend, then the fallback, else 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::host::{HostPattern, normalize_request_host, wildcard_suffix};
use super::path::{prefix_candidates, rule_key};
use super::spec::{RouteSpec, RouteTableSpec};

/// One route: where requests go and what policy applies. The place later
/// per-route policy (timeouts, limits, rewrites, ...) is added.
#[derive(Debug)]
pub struct Route {
    pub labels: RouteLabels,
    pub backend: Backend,
    /// Lower-case upgrade tokens this route may tunnel.
    pub upgrades: Box<[Box<str>]>,
}

impl Route {
    fn compile(spec: &RouteSpec) -> Self {
        Self {
            labels: RouteLabels {
                namespace: spec.backend.namespace.clone(),
                ingress: spec
                    .ingress
                    .as_deref()
                    .and_then(|i| i.split_once('/'))
                    .map(|(_, name)| name.to_string())
                    .unwrap_or_default(),
                service: spec.backend.service.clone(),
            },
            backend: Backend::new(spec.backend.endpoints.clone()),
            upgrades: spec.upgrades.iter().map(|u| u.as_str().into()).collect(),
        }
    }

    /// Whether this route may tunnel `protocol` (case-insensitive).
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        self.upgrades
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(protocol))
    }
}

/// Metric labels of a route: bounded, never a path or a client address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
}

/// A route's endpoints, chosen round-robin.
#[derive(Debug)]
pub struct Backend {
    endpoints: Box<[SocketAddr]>,
    next: AtomicUsize,
}

impl Backend {
    fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints: endpoints.into(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint in turn, or `None` when there is none (503).
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(self.endpoints[i])
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

#[derive(Default)]
struct HostRoutes {
    exact: HashMap<Box<str>, Arc<Route>>,
    prefix: HashMap<Box<str>, Arc<Route>>,
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
    pub fn compile(spec: RouteTableSpec) -> Self {
        let mut table = RouteTable::default();
        for host in &spec.hosts {
            let mut routes = HostRoutes::default();
            for path in &host.paths {
                let route = Arc::new(Route::compile(&path.route));
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
            .map(|r| Arc::new(Route::compile(r)));
        table.fallback = spec.fallback.as_ref().map(|r| Arc::new(Route::compile(r)));
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
