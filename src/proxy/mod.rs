//! The data plane: accepts client connections (HTTP/1.1, and HTTP/2 with
//! prior knowledge), routes each request through the table in force, and
//! forwards it or upgrades it into a tunnel.

pub mod body;
pub mod client_body;
pub mod client_io;
pub mod client_limits;
pub mod client_upgrade;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod idle_streams;
pub mod linger;
pub mod listener;
pub mod observe;
pub mod pool;
mod request_ids;
pub mod responses;
pub mod service;
pub mod stall;
pub mod stream_stall;
#[cfg(test)]
pub mod test_sockets;
pub mod timer;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::routes::{PassiveHealthConfig, RouteStore};
use crate::shutdown::Shutdown;
use client_limits::{ClientLimitConfig, ClientLimits, ClientSlot};
use pool::Pool;
use stream_stall::StreamExecutor;
use timer::ReusingTimer;
use tunnel::TunnelLimits;

/// Limits and timeouts of the data plane.
#[derive(Debug, Clone, Copy)]
pub struct ProxyConfig {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_response_timeout: Duration,
    /// How long a client may take none of its response before its
    /// connection is closed.
    pub client_write_timeout: Duration,
    pub tunnel: TunnelLimits,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub access_log: bool,
    /// When endpoints that keep failing are taken out of rotation.
    pub passive_health: PassiveHealthConfig,
    /// Connections and request rate per client address.
    pub client_limits: ClientLimitConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            client_write_timeout: Duration::from_secs(60),
            tunnel: TunnelLimits {
                idle_timeout: Duration::from_secs(3600),
                max_lifetime: None,
            },
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            access_log: true,
            passive_health: PassiveHealthConfig::default(),
            client_limits: ClientLimitConfig::default(),
        }
    }
}

/// A client's request as the pipeline takes it, from hyper's server or
/// switchyard's own; `None` when it has no body.
pub type ClientRequest = http::Request<Option<client_body::ClientBody>>;

/// Everything a connection needs, shared by all of them.
pub struct Proxy {
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    pub config: ProxyConfig,
    pub shutdown: Shutdown,
    pool: Arc<Pool>,
    /// HTTP/1 connections from their first request that `h1::server`
    /// does not serve (a chunked body, a malformed head), served by
    /// hyper directly so that an upgraded connection can be taken back as
    /// the socket it is (read and written without hyper's wrapper).
    http1: http1::Builder,
    /// HTTP/2 with prior knowledge: the listener hands a connection over
    /// once its whole preface is in.
    http2: http2::Builder<StreamExecutor>,
    connection_slots: Arc<Semaphore>,
    pub client_limits: Arc<ClientLimits>,
}

impl Proxy {
    pub fn new(
        routes: Arc<RouteStore>,
        metrics: Arc<Metrics>,
        config: ProxyConfig,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        // The head limit is `max_header_size` (exact: hyper checks it on
        // the parsed head); `max_buf_size` alone bounds a read buffer that
        // one large read can overshoot.
        let mut http1 = http1::Builder::new();
        http1
            .timer(ReusingTimer)
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_header_bytes)
            .max_buf_size(config.max_header_bytes.max(8192));
        let mut http2 = http2::Builder::new(StreamExecutor::new(config.client_write_timeout));
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        Arc::new(Self {
            pool: Pool::new(
                config.upstream_connect_timeout,
                config.upstream_response_timeout,
            ),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            client_limits: ClientLimits::new(config.client_limits),
            routes,
            metrics,
            config,
            shutdown,
            http1,
            http2,
        })
    }
}

impl Proxy {
    /// Another proxy for another serving thread ([`crate::serving`]): the
    /// same routes, metrics, settings, connection limits and shutdown,
    /// with a backend pool of its own, since a backend connection is
    /// polled by the runtime it was made in.
    pub fn sibling(&self) -> Arc<Self> {
        Arc::new(Self {
            pool: Pool::new(
                self.config.upstream_connect_timeout,
                self.config.upstream_response_timeout,
            ),
            connection_slots: self.connection_slots.clone(),
            client_limits: self.client_limits.clone(),
            routes: self.routes.clone(),
            metrics: self.metrics.clone(),
            config: self.config,
            shutdown: self.shutdown.clone(),
            http1: self.http1.clone(),
            http2: self.http2.clone(),
        })
    }
}

/// One client connection. It holds a connection slot until both the HTTP
/// connection and any tunnel it became are gone.
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// `remote`'s address as the `X-Forwarded-For` value, made once.
    pub forwarded_for: http::HeaderValue,
    _slot: OwnedSemaphorePermit,
    _client_slot: ClientSlot,
    metrics: Arc<Metrics>,
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        self.metrics.connections_active.dec();
    }
}

/// Boxes the future `make` builds, allocating first so that the future
/// can be written straight into the box. `Box::pin(f())` builds `f`'s
/// future on the stack and copies all of it into the box afterwards: the
/// size of its largest state, 6 KB for a client connection, though a
/// future that has not started holds only its arguments.
#[inline(always)]
pub fn boxed_in_place<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
