//! Every Prometheus family switchyard exports, registered once at start in
//! one registry. Names are part of the interface: prefix `switchyard_`,
//! units in names, counters end in `_total`, and labels are bounded
//! (namespace, ingress, service, a code class or a fixed reason; never a
//! raw path or a client address).

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routes::RouteLabels;

const ROUTE: &[&str] = &["namespace", "ingress", "service"];

/// Request latency buckets, in seconds: 1 ms to 60 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Tunnel lifetime buckets, in seconds: 100 ms to 1 day.
const TUNNEL_BUCKETS: &[f64] = &[
    0.1,
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status class (`2xx`, ...).
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_connect_errors: IntCounterVec,
    pub upstream_timeouts: IntCounterVec,
    /// Endpoints taken out of rotation by passive health checking.
    pub upstream_ejections: IntCounterVec,
    /// Endpoints out of rotation now, by the route whose request ejected them.
    pub upstream_ejected_endpoints: IntGaugeVec,
    /// Upgrade handshakes by `result` (see [`crate::route_metrics::UpgradeResult`]).
    pub upgrades: IntCounterVec,
    pub tunnels_active: IntGaugeVec,
    /// Tunnel payload by `direction`: `client_to_backend`, `backend_to_client`.
    pub tunnel_bytes: IntCounterVec,
    pub tunnel_duration: HistogramVec,
    /// Every tunnel close, by `reason`.
    pub tunnel_closes: IntCounterVec,
    /// Tunnel closes that were not a clean close by both ends, by `reason`.
    pub tunnel_errors: IntCounterVec,
    pub connections_active: IntGauge,
    pub connections_rejected: IntCounter,
    /// Connections and requests refused by a per-client limit, by `limit`
    /// (`connections`, `requests`).
    pub client_limit_rejections: IntCounterVec,
    pub route_table_swaps: IntCounter,
    pub route_table_unchanged: IntCounter,
    pub route_table_last_swap: Gauge,
    pub routes: IntGauge,
    /// Warnings of the route table in force, by `reason`.
    pub translate_warnings: IntGaugeVec,
    /// Source failures (a manifest that does not load, ...), by `kind`.
    pub source_errors: IntCounterVec,
    /// Unix time of the last successful watch event, by `kind` (kube mode).
    pub source_last_sync: GaugeVec,
    /// Seconds since the last good contact, for a kind with a failing watch
    /// (its stalest watch, when it is watched in several namespaces).
    pub source_staleness: GaugeVec,
    pub ready: IntGauge,
    /// 1 while this replica holds the leader Lease (kube mode).
    pub leader: IntGauge,
    /// Ingress status writes, by `result` (`updated`, `cleared`, `failed`).
    pub status_updates: IntCounterVec,
    /// Kubernetes Events published for translate warnings, by `reason`.
    pub events: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, ROUTE).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn float_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let route_and = |extra: &'static str| [ROUTE, &[extra]].concat();
        let last_swap = Gauge::new(
            "switchyard_route_table_last_swap_timestamp_seconds",
            "Unix time at which the route table in force was swapped in.",
        )
        .expect("valid metric");
        r.register(Box::new(last_swap.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
        let metrics = Self {
            requests: counter_vec(
                &r,
                "switchyard_requests_total",
                "HTTP requests answered, by route and status class.",
                &route_and("code_class"),
            ),
            request_duration: histogram_vec(
                &r,
                "switchyard_request_duration_seconds",
                "Time from request received to response body sent.",
                REQUEST_BUCKETS,
            ),
            upstream_connect_errors: counter_vec(
                &r,
                "switchyard_upstream_connect_errors_total",
                "Backend connections that could not be opened.",
                ROUTE,
            ),
            upstream_timeouts: counter_vec(
                &r,
                "switchyard_upstream_timeouts_total",
                "Backend connects, response heads and response bodies that timed out (each attempt).",
                ROUTE,
            ),
            upstream_ejections: counter_vec(
                &r,
                "switchyard_upstream_ejections_total",
                "Endpoints taken out of rotation after failing repeatedly.",
                ROUTE,
            ),
            upstream_ejected_endpoints: gauge_vec(
                &r,
                "switchyard_upstream_ejected_endpoints",
                "Endpoints out of rotation now, by the route whose requests ejected them.",
                ROUTE,
            ),
            upgrades: counter_vec(
                &r,
                "switchyard_upgrades_total",
                "Protocol upgrade handshakes, by result.",
                &route_and("result"),
            ),
            tunnels_active: gauge_vec(
                &r,
                "switchyard_tunnels_active",
                "Upgraded connections currently open.",
                ROUTE,
            ),
            tunnel_bytes: counter_vec(
                &r,
                "switchyard_tunnel_bytes_total",
                "Bytes carried through tunnels, by direction.",
                &route_and("direction"),
            ),
            tunnel_duration: histogram_vec(
                &r,
                "switchyard_tunnel_duration_seconds",
                "Lifetime of closed tunnels.",
                TUNNEL_BUCKETS,
            ),
            tunnel_closes: counter_vec(
                &r,
                "switchyard_tunnel_closes_total",
                "Tunnels closed, by reason.",
                &route_and("reason"),
            ),
            tunnel_errors: counter_vec(
                &r,
                "switchyard_tunnel_errors_total",
                "Tunnels closed by an error, a timeout or shutdown, by reason.",
                &route_and("reason"),
            ),
            connections_active: gauge(
                &r,
                "switchyard_connections_active",
                "Client connections currently open, upgraded ones included.",
            ),
            connections_rejected: counter(
                &r,
                "switchyard_connections_rejected_total",
                "Client connections closed at once because --max-connections was reached.",
            ),
            client_limit_rejections: counter_vec(
                &r,
                "switchyard_client_limit_rejections_total",
                "Connections closed at accept and requests answered 429 because a client address was over its limit, by limit.",
                &["limit"],
            ),
            route_table_swaps: counter(
                &r,
                "switchyard_route_table_swaps_total",
                "New route tables put in force.",
            ),
            route_table_unchanged: counter(
                &r,
                "switchyard_route_table_unchanged_total",
                "Translations that gave the table already in force (not swapped).",
            ),
            route_table_last_swap: last_swap,
            routes: gauge(
                &r,
                "switchyard_routes",
                "Host and path routes in the table in force.",
            ),
            translate_warnings: gauge_vec(
                &r,
                "switchyard_translate_warnings",
                "Warnings of the route table in force, by reason.",
                &["reason"],
            ),
            source_errors: counter_vec(
                &r,
                "switchyard_source_errors_total",
                "Failures reading cluster state, by kind.",
                &["kind"],
            ),
            source_last_sync: float_gauge_vec(
                &r,
                "switchyard_source_last_sync_timestamp_seconds",
                "Unix time of the last successful watch event, by kind.",
                &["kind"],
            ),
            source_staleness: float_gauge_vec(
                &r,
                "switchyard_source_staleness_seconds",
                "Seconds since the last good contact of a kind's stalest failing watch (0 when all are healthy).",
                &["kind"],
            ),
            ready: gauge(
                &r,
                "switchyard_ready",
                "1 when a complete route table is in force and the process is not draining.",
            ),
            leader: gauge(
                &r,
                "switchyard_leader",
                "1 while this replica holds the leader Lease and writes status and Events.",
            ),
            status_updates: counter_vec(
                &r,
                "switchyard_ingress_status_updates_total",
                "Ingress status writes, by result.",
                &["result"],
            ),
            events: counter_vec(
                &r,
                "switchyard_events_total",
                "Kubernetes Events published for translate warnings, by reason.",
                &["reason"],
            ),
            registry: r,
        };
        // Both series exist from the start, at 0.
        for limit in ["connections", "requests"] {
            metrics.client_limit_rejections.with_label_values(&[limit]);
        }
        metrics
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

impl Metrics {
    /// Takes every series of route `labels` out of the families, so they
    /// are no longer exported (see [`crate::route_metrics::SeriesRegistry`]).
    /// Handles still held elsewhere keep working, unexported.
    pub fn remove_route_series(&self, labels: &RouteLabels) {
        use crate::route_metrics::{CloseReason, CodeClass, FixedLabel, UpgradeResult};
        let route = route_values(labels);
        let [ns, ingress, service] = route;
        let with = |extra| [ns, ingress, service, extra];
        // Removing a series that was never created is an error to ignore.
        for class in CodeClass::ALL {
            let _ = self.requests.remove_label_values(&with(class.as_str()));
        }
        for result in UpgradeResult::ALL {
            let _ = self.upgrades.remove_label_values(&with(result.as_str()));
        }
        for reason in CloseReason::ALL {
            let _ = self
                .tunnel_closes
                .remove_label_values(&with(reason.as_str()));
            let _ = self
                .tunnel_errors
                .remove_label_values(&with(reason.as_str()));
        }
        for direction in TUNNEL_DIRECTIONS {
            let _ = self.tunnel_bytes.remove_label_values(&with(direction));
        }
        for family in [
            &self.upstream_connect_errors,
            &self.upstream_timeouts,
            &self.upstream_ejections,
        ] {
            let _ = family.remove_label_values(&route);
        }
        let _ = self.upstream_ejected_endpoints.remove_label_values(&route);
        let _ = self.tunnels_active.remove_label_values(&route);
        let _ = self.request_duration.remove_label_values(&route);
        let _ = self.tunnel_duration.remove_label_values(&route);
    }
}

/// The `direction` values of `switchyard_tunnel_bytes_total`.
pub const TUNNEL_DIRECTIONS: [&str; 2] = ["client_to_backend", "backend_to_client"];

/// The label values of a route, as metric families take them.
pub fn route_values(labels: &RouteLabels) -> [&str; 3] {
    [&labels.namespace, &labels.ingress, &labels.service]
}
