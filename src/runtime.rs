//! Wiring for the three commands. `run` connects source → translate →
//! swap → proxy and handles shutdown; `check` and `routes` run the same
//! source and translation once and report.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::cli::{CheckArgs, OutputFormat, RoutesArgs, RunArgs, SourceArgs};
use crate::metrics::Metrics;
use crate::proxy::tunnel::TunnelLimits;
use crate::proxy::{Proxy, ProxyConfig};
use crate::routes::{RouteStore, TranslateOptions, Translation, WarningReason, translate};
use crate::shutdown::{self, Shutdown};
use crate::snapshot::ClusterSnapshot;
use crate::source::files::{self, FileSource, LoadReport};

/// Turns snapshots into the route table in force, with the bookkeeping
/// every source shares: metrics, and warnings logged once when they appear.
pub struct Applier {
    options: TranslateOptions,
    namespaces: Vec<String>,
    routes: Arc<RouteStore>,
    metrics: Arc<Metrics>,
    current_warnings: BTreeSet<String>,
}

impl Applier {
    pub fn new(source: &SourceArgs, routes: Arc<RouteStore>, metrics: Arc<Metrics>) -> Self {
        Self {
            options: translate_options(source),
            namespaces: source.watch_namespaces.clone(),
            routes,
            metrics,
            current_warnings: BTreeSet::new(),
        }
    }

    /// Translates `snapshot` and swaps the result in unless it is the table
    /// already in force.
    pub fn apply(&mut self, mut snapshot: ClusterSnapshot) {
        snapshot.retain_namespaces(&self.namespaces);
        let Translation { spec, warnings } = translate(&snapshot, &self.options);

        for reason in WarningReason::ALL {
            let count = warnings.iter().filter(|w| w.reason == reason).count();
            self.metrics
                .translate_warnings
                .with_label_values(&[reason.as_str()])
                .set(count as i64);
        }
        let now: BTreeSet<String> = warnings.iter().map(|w| w.to_string()).collect();
        for new in now.difference(&self.current_warnings) {
            tracing::warn!(target: "switchyard::translate", "{new}");
        }
        for gone in self.current_warnings.difference(&now) {
            tracing::info!(target: "switchyard::translate", "resolved: {gone}");
        }
        self.current_warnings = now;

        let routes = spec.hosts.iter().map(|h| h.paths.len()).sum::<usize>();
        if self.routes.swap_if_changed(spec) {
            self.metrics.route_table_swaps.inc();
            self.metrics.routes.set(routes as i64);
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.metrics.route_table_last_swap.set(unix);
            tracing::info!(routes, warnings = warnings.len(), "route table swapped");
        } else {
            self.metrics.route_table_unchanged.inc();
            tracing::debug!("route table unchanged");
        }
    }
}

fn translate_options(source: &SourceArgs) -> TranslateOptions {
    TranslateOptions {
        ingress_class: source.ingress_class.clone(),
        fallback: source.default_backend_service.clone(),
    }
}

fn report_load_errors(report: &LoadReport, metrics: &Metrics) {
    for error in &report.errors {
        tracing::warn!(target: "switchyard::source", "{error}; the last good version stays in force");
    }
    metrics
        .source_errors
        .with_label_values(&["manifest"])
        .inc_by(report.errors.len() as u64);
}

/// The listeners `run` serves on, bound before anything else so that a
/// busy port fails fast.
pub struct Listeners {
    pub http: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(http: SocketAddr, admin: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            http: TcpListener::bind(http)
                .await
                .with_context(|| format!("cannot listen on --http-addr {http}"))?,
            admin: TcpListener::bind(admin)
                .await
                .with_context(|| format!("cannot listen on --admin-addr {admin}"))?,
        })
    }
}

pub fn proxy_config(args: &RunArgs) -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        upstream_connect_timeout: args.upstream_connect_timeout,
        upstream_response_timeout: args.upstream_response_timeout,
        tunnel: TunnelLimits {
            idle_timeout: args.tunnel_idle_timeout,
            max_lifetime: args.tunnel_max_lifetime,
        },
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        access_log: args.access_log,
    }
}

/// `switchyard run`: serves until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let listeners = Listeners::bind(args.http_addr, args.admin_addr).await?;
    let http_addr = listeners.http.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;

    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(RouteStore::default());
    let shutdown = Shutdown::new();
    let admin = Arc::new(AdminState {
        routes: routes.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        synced: Default::default(),
    });
    tokio::spawn(admin::serve(listeners.admin, admin.clone()));

    // Watch before the first read, so that no change slips in between.
    let (watcher, mut changes) =
        files::watch(&args.source.manifests).context("cannot watch the manifest directories")?;
    let mut source = FileSource::new(args.source.manifests.clone());
    let mut applier = Applier::new(&args.source, routes.clone(), metrics.clone());
    let report = source.load();
    report_load_errors(&report, &metrics);
    tracing::info!(
        files = report.files,
        "loaded manifests: {}",
        report.snapshot.summary()
    );
    applier.apply(report.snapshot);
    admin.mark_synced();

    let proxy = Proxy::new(
        routes,
        metrics.clone(),
        proxy_config(&args),
        shutdown.clone(),
    );
    tokio::spawn(proxy.serve(listeners.http));
    tracing::info!(%http_addr, %admin_addr, "switchyard is serving");
    // Tests and scripts read the bound addresses from this line.
    println!("switchyard listening: http={http_addr} admin={admin_addr}");
    let _ = std::io::stdout().flush();

    let reload_metrics = metrics.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        while changes.recv().await.is_some() {
            let (returned, report) = tokio::task::spawn_blocking(move || {
                let report = source.load();
                (source, report)
            })
            .await
            .expect("manifest loading does not panic");
            source = returned;
            report_load_errors(&report, &reload_metrics);
            applier.apply(report.snapshot);
        }
    });

    shutdown::signal().await;
    tracing::info!(drain_timeout = %crate::units::format_duration(args.drain_timeout), "shutting down: draining");
    let drain = shutdown.run(args.drain_timeout);
    admin.refresh_ready_gauge();
    drain.await;
    tracing::info!("shutdown complete");
    Ok(())
}

fn load_once(source: &SourceArgs) -> (LoadReport, Translation) {
    let mut report = FileSource::new(source.manifests.clone()).load();
    report.snapshot.retain_namespaces(&source.watch_namespaces);
    let translation = translate(&report.snapshot, &translate_options(source));
    (report, translation)
}

/// `switchyard check`: returns the process exit code (1 on errors).
pub fn check(args: CheckArgs) -> i32 {
    let (report, translation) = load_once(&args.source);
    match args.output {
        OutputFormat::Json => {
            let json = serde_json::json!({
                "errors": report.errors,
                "warnings": translation.warnings,
                "skipped": report.skipped,
                "files": report.files,
                "routes": translation.spec.hosts.iter().map(|h| h.paths.len()).sum::<usize>(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("report serializes")
            );
        }
        OutputFormat::Text => {
            for e in &report.errors {
                println!("error: {e}");
            }
            for w in &translation.warnings {
                println!("warning: {w}");
            }
            for s in &report.skipped {
                println!("skipped: {}: {}", s.location, s.what);
            }
            println!(
                "{} files, {} errors, {} warnings, {} routes",
                report.files,
                report.errors.len(),
                translation.warnings.len(),
                translation
                    .spec
                    .hosts
                    .iter()
                    .map(|h| h.paths.len())
                    .sum::<usize>()
            );
        }
    }
    i32::from(!report.errors.is_empty())
}

/// `switchyard routes`: prints the table; returns 1 if a manifest failed.
pub fn routes(args: RoutesArgs) -> i32 {
    let (report, translation) = load_once(&args.source);
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&translation.spec).expect("route table serializes")
        ),
        OutputFormat::Text => print!("{}", translation.spec.to_text()),
    }
    i32::from(!report.errors.is_empty())
}
