//! Shared test harness: an in-process proxy on an OS-chosen port, real
//! backends on real sockets, manifest builders and metric readers.
#![allow(dead_code)] // each test binary uses a different part of this

pub mod apiserver;
pub mod backends;
pub mod client;
pub mod manifests;
pub mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchyard::metrics::Metrics;
use switchyard::proxy::listener::bind_per_thread;
use switchyard::proxy::{Proxy, ProxyConfig};
use switchyard::routes::{RouteStore, TranslateOptions, translate};
use switchyard::serving::{self, ServingThread};
use switchyard::shutdown::Shutdown;
use switchyard::source::manifest;
use tokio::net::TcpListener;

/// A proxy running inside the test process.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub routes: Arc<RouteStore>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}

impl TestProxy {
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(ProxyConfig::default(), yaml).await
    }

    /// An echo backend named `name`, and a proxy with `config` routing
    /// `h` + `/` to it.
    pub async fn with_echo(name: &'static str, config: ProxyConfig) -> (backends::Echo, Self) {
        let echo = backends::echo(name).await;
        let proxy = Self::start_with(config, &manifests::route("r", "h", "/", &[echo.addr])).await;
        (echo, proxy)
    }

    pub async fn start_with(config: ProxyConfig, yaml: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (test, proxy) = Self::new(listener.local_addr().unwrap(), config, yaml);
        tokio::spawn(proxy.serve(listener));
        test
    }

    /// A proxy on `count` serving threads of its own, each busy polling
    /// for `busy_poll` (as `run --busy-poll` with more than one worker).
    pub fn start_on_threads(
        yaml: &str,
        count: usize,
        busy_poll: Duration,
    ) -> (Self, Vec<ServingThread>) {
        let listeners = bind_per_thread("127.0.0.1:0".parse().unwrap(), count).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (test, proxy) = Self::new(addr, ProxyConfig::default(), yaml);
        let threads = serving::start(listeners, &proxy, busy_poll).unwrap();
        (test, threads)
    }

    /// The proxy for `addr` with `yaml`'s routes in force, not yet serving.
    fn new(addr: SocketAddr, config: ProxyConfig, yaml: &str) -> (Self, Arc<Proxy>) {
        let metrics = Arc::new(Metrics::new());
        let routes = Arc::new(RouteStore::new(metrics.clone()));
        let shutdown = Shutdown::new();
        let proxy = Proxy::new(routes.clone(), metrics.clone(), config, shutdown.clone());
        let test = Self {
            addr,
            routes,
            metrics,
            shutdown,
        };
        test.set_routes(yaml);
        (test, proxy)
    }

    /// Translates `yaml` and swaps the result in, as a source would.
    pub fn set_routes(&self, yaml: &str) {
        let snapshot =
            manifest::parse_snapshot(yaml, Path::new("test.yaml")).expect("manifests parse");
        let translation = translate(&snapshot, &TranslateOptions::default());
        self.routes.swap_if_changed(translation.spec);
    }

    /// The value of one sample, 0 when it does not exist (yet).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(
            &String::from_utf8(self.metrics.encode()).unwrap(),
            name,
            labels,
        )
    }

    /// Waits (up to 10 s) for a sample to reach `expected`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        for _ in 0..200 {
            if self.metric(name, labels) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{name}{labels:?} is {} after 10s, expected {expected}\n{}",
            self.metric(name, labels),
            String::from_utf8_lossy(&self.metrics.encode())
        );
    }

    /// Waits until one tunnel has closed, for `reason`.
    pub async fn wait_tunnel_closed(&self, reason: &str) {
        self.wait_metric("switchyard_tunnel_closes_total", &[("reason", reason)], 1.0)
            .await;
    }
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
