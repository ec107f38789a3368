//! Recording what happened: one [`RequestRecord`] per request, finished
//! when its response body ends (or the client leaves), which counts the
//! request in metrics and writes its access log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, StatusCode};

use crate::metrics::{Metrics, route_values};
use crate::route_metrics::{CodeClass, FixedLabel};
use crate::routes::{Route, RouteLabels};

/// The tracing target of access log lines, for filtering
/// (`--log-level switchyard::access=off`).
pub const ACCESS_TARGET: &str = "switchyard::access";

static NO_ROUTE: RouteLabels = RouteLabels {
    namespace: String::new(),
    ingress: String::new(),
    service: String::new(),
};

/// Counts a request hyper refused while parsing its head: hyper wrote the
/// 400, 414 or 431 itself and the pipeline never saw a request, so there is
/// no route, no duration and no access log line, only the status class.
pub fn record_parser_refusal(metrics: &Metrics) {
    let [ns, ingress, service] = route_values(&NO_ROUTE);
    metrics
        .requests
        .with_label_values(&[ns, ingress, service, CodeClass::ClientError.as_str()])
        .inc();
}

/// What the access log says about a request besides status and timing.
pub struct AccessFields {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub client: SocketAddr,
    pub request_id: Option<HeaderValue>,
    pub upstream: Option<SocketAddr>,
}

/// One request in flight. Dropping it records it.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    route: Option<Arc<Route>>,
    start: Instant,
    status: StatusCode,
    body_bytes: u64,
    truncated: bool,
    access: Option<Box<AccessFields>>,
}

impl RequestRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        route: Option<Arc<Route>>,
        start: Instant,
        status: StatusCode,
        access: Option<Box<AccessFields>>,
    ) -> Self {
        Self {
            metrics,
            route,
            start,
            status,
            body_bytes: 0,
            truncated: false,
            access,
        }
    }

    pub fn add_body_bytes(&mut self, n: usize) {
        self.body_bytes += n as u64;
    }

    /// The backend's body failed part-way: the client got a cut-off response.
    pub fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    /// The backend stopped sending the body for longer than the response
    /// timeout: counted as a backend timeout of the route.
    pub fn count_upstream_timeout(&self) {
        self.metrics
            .upstream_timeouts
            .with_label_values(&route_values(self.labels()))
            .inc();
    }

    fn labels(&self) -> &RouteLabels {
        self.route.as_deref().map_or(&NO_ROUTE, |r| &r.labels)
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let [ns, ingress, service] = route_values(self.labels());
        match &self.route {
            Some(route) => {
                route
                    .metrics
                    .count_request(&self.metrics, &route.labels, self.status, elapsed)
            }
            None => {
                let class = CodeClass::of(self.status).as_str();
                self.metrics
                    .requests
                    .with_label_values(&[ns, ingress, service, class])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[ns, ingress, service])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if let Some(a) = &self.access {
            tracing::info!(
                target: ACCESS_TARGET,
                client = %a.client,
                method = %a.method,
                host = %a.host,
                path = %a.path,
                status = self.status.as_u16(),
                namespace = ns,
                ingress,
                service,
                upstream = a.upstream.map(|u| u.to_string()).unwrap_or_default(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes = self.body_bytes,
                truncated = self.truncated,
                request_id = a.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
                "request"
            );
        }
    }
}
