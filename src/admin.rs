//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the
//! process is up), `/readyz` (200 only once a complete route table is in
//! force, 503 while draining) and `/routes` (the table in force as JSON).
//!
//! The same state can also be served metrics-only (`--metrics-addr`), so a
//! deployment can expose metrics to a scraper without exposing the route
//! table.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::routes::RouteStore;
use crate::shutdown::Shutdown;

/// What the admin endpoints report on.
pub struct AdminState {
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Set once the first complete snapshot's table is in force.
    pub synced: AtomicBool,
}

impl AdminState {
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire) && !self.shutdown.is_draining()
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
        self.refresh_ready_gauge();
    }

    pub fn refresh_ready_gauge(&self) {
        self.metrics.ready.set(i64::from(self.is_ready()));
    }
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/metrics`, `/healthz`, `/readyz` and `/routes`.
    All,
    /// `/metrics` only.
    MetricsOnly,
}

/// Serves the admin endpoints until the process exits (they stay up while
/// draining, so `/readyz` can say 503).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, scope: Scope) {
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // On the runtime that also runs the sources.
                crate::proxy::listener::after_failed_accept(&e, "admin accept failed").await;
                continue;
            }
        };
        let state = state.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request, scope)) }
            });
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>, scope: Scope) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if scope == Scope::MetricsOnly && request.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match request.uri().path() {
        "/metrics" => {
            state.refresh_ready_gauge();
            let mut response = Response::new(Full::from(state.metrics.encode()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if state.shutdown.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n"),
        "/routes" => {
            let table = state.routes.load();
            let json = serde_json::to_vec_pretty(table.spec()).expect("route table serializes");
            let mut response = Response::new(Full::from(json));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
