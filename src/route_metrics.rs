//! Each route's metric series, resolved once and kept on its
//! [`Route`](crate::routes::Route) instead of looked up by label values on
//! every request and tunnel: a lookup hashes every label value and takes a
//! lock (a WebSocket session spent about 1,600 instructions in the seven it
//! made). A series whose last label varies (a status class, a close reason)
//! is created by its first use, as a lookup would create it, so values
//! never seen are not exported.
//!
//! The label values with a fixed set (status classes, upgrade results,
//! close reasons) are defined here, so that a route can hold one series per
//! value in an array.
//!
//! The routes of one label set share one [`RouteMetrics`], in every table
//! that has them ([`SeriesRegistry`]): a table swap neither resets nor
//! resolves them again. Once no route of any table has that label set (an
//! Ingress deleted, a Service renamed, and the requests and tunnels of the
//! tables before all ended), its series are removed from `/metrics`, as
//! ingress-nginx removes those of deleted Ingresses: an ingress serving
//! short-lived Ingresses (one per pull request, say) would otherwise export
//! ever more series.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::metrics::{Metrics, TUNNEL_DIRECTIONS, route_values};
use crate::routes::RouteLabels;

/// A label whose values are a fixed set: `ALL` lists them, each at its
/// [`index`](FixedLabel::index).
pub trait FixedLabel: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn index(self) -> usize;
}

/// The `code_class` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl CodeClass {
    pub fn of(status: http::StatusCode) -> Self {
        match status.as_u16() {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

impl FixedLabel for CodeClass {
    const ALL: &'static [Self] = &[
        Self::Informational,
        Self::Success,
        Self::Redirection,
        Self::ClientError,
        Self::ServerError,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How an upgrade handshake ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResult {
    /// 101 relayed; the connections are a tunnel now.
    Switched,
    /// The backend answered with something other than 101.
    Declined,
    /// The backend's 101 was not the switch offered: a protocol the client
    /// did not ask for, no `Connection: upgrade`, or not HTTP/1.1.
    ProtocolMismatch,
    /// No protocol the client asked for is allowed on the route; the
    /// request was forwarded without its upgrade headers.
    NotAllowed,
    ConnectError,
    Timeout,
    Failed,
}

impl FixedLabel for UpgradeResult {
    const ALL: &'static [Self] = &[
        Self::Switched,
        Self::Declined,
        Self::ProtocolMismatch,
        Self::NotAllowed,
        Self::ConnectError,
        Self::Timeout,
        Self::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Switched => "switched",
            Self::Declined => "declined",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::NotAllowed => "not_allowed",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a tunnel closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both ends closed their side cleanly.
    Completed,
    /// Reading from or writing to the client failed (a reset, say).
    ClientError,
    /// Reading from or writing to the backend failed.
    BackendError,
    IdleTimeout,
    MaxLifetime,
    /// The drain period after SIGTERM ran out.
    Shutdown,
}

impl CloseReason {
    pub fn is_error(self) -> bool {
        self != Self::Completed
    }
}

impl FixedLabel for CloseReason {
    const ALL: &'static [Self] = &[
        Self::Completed,
        Self::ClientError,
        Self::BackendError,
        Self::IdleTimeout,
        Self::MaxLifetime,
        Self::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientError => "client_error",
            Self::BackendError => "backend_error",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxLifetime => "max_lifetime",
            Self::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A route's series of a counter family labelled by route and one
/// [`FixedLabel`] `L` with `N` values, each created by its first use.
struct ByLabel<L, const N: usize> {
    series: [OnceLock<IntCounter>; N],
    label: PhantomData<L>,
}

impl<L: FixedLabel, const N: usize> ByLabel<L, N> {
    fn new() -> Self {
        const { assert!(L::ALL.len() == N, "one series per label value") };
        Self {
            series: std::array::from_fn(|_| OnceLock::new()),
            label: PhantomData,
        }
    }

    fn get(&self, family: &IntCounterVec, route: &RouteLabels, value: L) -> &IntCounter {
        self.series[value.index()].get_or_init(|| {
            let [ns, ingress, service] = route_values(route);
            family.with_label_values(&[ns, ingress, service, value.as_str()])
        })
    }
}

type ByClass = ByLabel<CodeClass, { CodeClass::ALL.len() }>;
type ByResult = ByLabel<UpgradeResult, { UpgradeResult::ALL.len() }>;
type ByReason = ByLabel<CloseReason, { CloseReason::ALL.len() }>;

/// All of a route's series. Each group is created by the route's first
/// use of it: most routes never tunnel, and their tunnel series cost one
/// pointer.
pub struct RouteMetrics {
    requests: OnceLock<RequestSeries>,
    upgrades: OnceLock<Box<ByResult>>,
    tunnels: OnceLock<Box<TunnelSeries>>,
    /// Where to say that the last route of this label set is gone.
    retire: Option<Retire>,
}

struct Retire {
    registry: Arc<SeriesRegistry>,
    labels: RouteLabels,
}

/// The [`RouteMetrics`] of every label set that some route has now.
pub struct SeriesRegistry {
    /// The families series are removed from.
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<RouteLabels, Weak<RouteMetrics>>>,
}

impl SeriesRegistry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// The series of `labels`, shared with every route that has them.
    pub fn series(self: &Arc<Self>, labels: &RouteLabels) -> Arc<RouteMetrics> {
        let mut live = self.live.lock().expect("series registry lock");
        if let Some(shared) = live.get(labels).and_then(Weak::upgrade) {
            return shared;
        }
        let series = Arc::new(RouteMetrics::retired_by(Some(Retire {
            registry: self.clone(),
            labels: labels.clone(),
        })));
        live.insert(labels.clone(), Arc::downgrade(&series));
        series
    }
}

impl Drop for RouteMetrics {
    fn drop(&mut self) {
        let Some(Retire { registry, labels }) = self.retire.take() else {
            return;
        };
        // Under the lock a new route of these labels would take to share
        // the series: it either finds them still live, or registers after
        // they are removed and creates them anew.
        let mut live = registry.live.lock().expect("series registry lock");
        if live
            .get(&labels)
            .is_some_and(|shared| shared.strong_count() > 0)
        {
            return;
        }
        live.remove(&labels);
        registry.metrics.remove_route_series(&labels);
    }
}

struct RequestSeries {
    by_class: ByClass,
    duration: Histogram,
}

/// A route's tunnel series: the ones every tunnel feeds are resolved
/// together, when the route's first tunnel opens.
pub struct TunnelSeries {
    pub active: IntGauge,
    pub bytes: TunnelBytes,
    closes: ByReason,
    errors: ByReason,
    duration: Histogram,
}

/// The byte counters a tunnel feeds as data moves, so long-lived tunnels
/// show up in metrics before they close.
#[derive(Clone)]
pub struct TunnelBytes {
    pub client_to_backend: IntCounter,
    pub backend_to_client: IntCounter,
}

impl RouteMetrics {
    /// Series of a route of its own, never removed (tables compiled for
    /// `check`, `routes` and tests).
    pub fn new() -> Self {
        Self::retired_by(None)
    }

    fn retired_by(retire: Option<Retire>) -> Self {
        Self {
            requests: OnceLock::new(),
            upgrades: OnceLock::new(),
            tunnels: OnceLock::new(),
            retire,
        }
    }

    /// Counts one answered request and how long it took.
    pub fn count_request(
        &self,
        metrics: &Metrics,
        route: &RouteLabels,
        status: http::StatusCode,
        elapsed: Duration,
    ) {
        let series = self.requests.get_or_init(|| RequestSeries {
            by_class: ByLabel::new(),
            duration: metrics
                .request_duration
                .with_label_values(&route_values(route)),
        });
        series
            .by_class
            .get(&metrics.requests, route, CodeClass::of(status))
            .inc();
        series.duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_upgrade(&self, metrics: &Metrics, route: &RouteLabels, result: UpgradeResult) {
        self.upgrades
            .get_or_init(|| Box::new(ByLabel::new()))
            .get(&metrics.upgrades, route, result)
            .inc();
    }

    pub fn tunnels(&self, metrics: &Metrics, route: &RouteLabels) -> &TunnelSeries {
        self.tunnels
            .get_or_init(|| Box::new(TunnelSeries::new(metrics, route)))
    }
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").finish_non_exhaustive()
    }
}

impl TunnelSeries {
    pub fn new(metrics: &Metrics, route: &RouteLabels) -> Self {
        let values = route_values(route);
        let [ns, ingress, service] = values;
        let bytes = |direction| {
            metrics
                .tunnel_bytes
                .with_label_values(&[ns, ingress, service, direction])
        };
        Self {
            active: metrics.tunnels_active.with_label_values(&values),
            bytes: TunnelBytes {
                client_to_backend: bytes(TUNNEL_DIRECTIONS[0]),
                backend_to_client: bytes(TUNNEL_DIRECTIONS[1]),
            },
            closes: ByLabel::new(),
            errors: ByLabel::new(),
            duration: metrics.tunnel_duration.with_label_values(&values),
        }
    }

    /// Counts a closed tunnel: its reason (also as an error unless it was
    /// a clean close) and its lifetime.
    pub fn count_close(
        &self,
        metrics: &Metrics,
        route: &RouteLabels,
        reason: CloseReason,
        lifetime: Duration,
    ) {
        self.closes.get(&metrics.tunnel_closes, route, reason).inc();
        if reason.is_error() {
            self.errors.get(&metrics.tunnel_errors, route, reason).inc();
        }
        self.duration.observe(lifetime.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexed_in_order<L: FixedLabel + std::fmt::Debug + PartialEq>() {
        for (i, value) in L::ALL.iter().enumerate() {
            assert_eq!(value.index(), i, "{value:?} is not at its index");
        }
        let mut names: Vec<_> = L::ALL.iter().map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), L::ALL.len(), "label values are distinct");
    }

    #[test]
    fn every_fixed_label_lists_its_values_at_their_index() {
        indexed_in_order::<CodeClass>();
        indexed_in_order::<UpgradeResult>();
        indexed_in_order::<CloseReason>();
    }

    #[test]
    fn status_codes_fall_in_their_class() {
        let class = |code| CodeClass::of(http::StatusCode::from_u16(code).unwrap()).as_str();
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(308), "3xx");
        assert_eq!(class(499), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(999), "5xx");
    }

    fn labels() -> RouteLabels {
        RouteLabels {
            namespace: "ns".into(),
            ingress: "web".into(),
            service: "svc".into(),
        }
    }

    fn exposition(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).unwrap()
    }

    #[test]
    fn a_value_is_exported_once_used_and_counts_into_the_labelled_series() {
        let metrics = Metrics::new();
        let route = RouteMetrics::new();
        route.count_upgrade(&metrics, &labels(), UpgradeResult::Declined);
        route.count_upgrade(&metrics, &labels(), UpgradeResult::Declined);
        let text = exposition(&metrics);
        assert!(
            text.contains(
                r#"switchyard_upgrades_total{ingress="web",namespace="ns",result="declined",service="svc"} 2"#
            ),
            "{text}"
        );
        assert!(
            !text.contains(r#"result="switched""#),
            "unused values stay unexported"
        );
    }

    #[test]
    fn a_tunnel_close_counts_its_reason_its_error_and_its_lifetime() {
        let metrics = Metrics::new();
        let route = RouteMetrics::new();
        let tunnels = route.tunnels(&metrics, &labels());
        tunnels.count_close(
            &metrics,
            &labels(),
            CloseReason::Completed,
            Duration::from_secs(2),
        );
        tunnels.count_close(
            &metrics,
            &labels(),
            CloseReason::IdleTimeout,
            Duration::ZERO,
        );
        let text = exposition(&metrics);
        for series in [
            r#"switchyard_tunnel_closes_total{ingress="web",namespace="ns",reason="completed",service="svc"} 1"#,
            r#"switchyard_tunnel_closes_total{ingress="web",namespace="ns",reason="idle_timeout",service="svc"} 1"#,
            r#"switchyard_tunnel_errors_total{ingress="web",namespace="ns",reason="idle_timeout",service="svc"} 1"#,
            r#"switchyard_tunnel_duration_seconds_count{ingress="web",namespace="ns",service="svc"} 2"#,
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
        assert!(!text.contains(
            r#"switchyard_tunnel_errors_total{ingress="web",namespace="ns",reason="completed""#
        ));
    }

    #[test]
    fn requests_count_by_class_with_their_duration() {
        let metrics = Metrics::new();
        let route = RouteMetrics::new();
        let ok = http::StatusCode::OK;
        route.count_request(&metrics, &labels(), ok, Duration::from_millis(3));
        route.count_request(&metrics, &labels(), ok, Duration::from_millis(3));
        let text = exposition(&metrics);
        assert!(text.contains(
            r#"switchyard_requests_total{code_class="2xx",ingress="web",namespace="ns",service="svc"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"switchyard_request_duration_seconds_count{ingress="web",namespace="ns",service="svc"} 2"#
        ), "{text}");
    }
}
