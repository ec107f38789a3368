//! Wiring for the three commands. `run` connects a source (files or the
//! cluster) → translate → swap → proxy and handles shutdown; `check` and
//! `routes` read the same source once, translate and report.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::FutureExt;
use kube::runtime::reflector::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admin::{self, AdminState};
use crate::apply::Applier;
use crate::cli::{CheckArgs, ClusterArgs, OutputFormat, RoutesArgs, RunArgs, SourceArgs};
use crate::metrics::Metrics;
use crate::proxy::client_limits::ClientLimitConfig;
use crate::proxy::tunnel::TunnelLimits;
use crate::proxy::{Proxy, ProxyConfig};
use crate::routes::{PassiveHealthConfig, RouteStore, TranslateOptions, Translation, translate};
use crate::serving::Serving;
use crate::shutdown::{self, Shutdown};
use crate::snapshot::ClusterSnapshot;
use crate::source::burst::Pacing;
use crate::source::files::{FileSource, LoadReport};
use crate::source::kube::events::EventPublisher;
use crate::source::kube::health::SourceHealth;
use crate::source::kube::leader::{self, LeaderSettings};
use crate::source::kube::lease_writes::{Confirmations, lease_client};
use crate::source::kube::publish::{self, Translated};
use crate::source::kube::status::{Address, PublishAddresses, StatusWriter};
use crate::source::kube::writes::{API_WRITE_TIMEOUT, write_client};
use crate::source::kube::{Stores, reflect};
use crate::source::manifest::LoadError;
use crate::source::watch::ManifestWatcher;

/// How long `check` and `routes` wait for the cluster's initial lists.
const CLUSTER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn translate_options(source: &SourceArgs) -> TranslateOptions {
    TranslateOptions {
        ingress_class: source.ingress_class.clone(),
        fallback: source.default_backend_service.clone(),
    }
}

fn report_load_errors(errors: &[LoadError], metrics: &Metrics) {
    for error in errors {
        tracing::warn!(target: "switchyard::source", "{error}; the file's last good version stays in force (before it had one, what could be read of it)");
    }
    metrics
        .source_errors
        .with_label_values(&["manifest"])
        .inc_by(errors.len() as u64);
}

pub fn proxy_config(args: &RunArgs) -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        upstream_connect_timeout: args.upstream_connect_timeout,
        upstream_response_timeout: args.upstream_response_timeout,
        client_write_timeout: args.client_write_timeout,
        tunnel: TunnelLimits {
            idle_timeout: args.tunnel_idle_timeout,
            max_lifetime: args.tunnel_max_lifetime,
        },
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        access_log: args.access_log,
        passive_health: PassiveHealthConfig {
            failures: args.upstream_eject_after,
            backoff: args.upstream_eject_backoff,
            max_backoff: args.upstream_eject_max_backoff,
        },
        client_limits: ClientLimitConfig {
            max_connections: args.max_connections_per_client,
            requests_per_second: args.max_requests_per_client_per_second,
            burst: args.client_request_burst,
        },
    }
}

fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    crate::proxy::listener::bind(addr).with_context(|| format!("cannot listen on {flag} {addr}"))
}

/// The proxy's listening socket(s): one for the runtime `run` is on, or
/// one per serving thread.
enum HttpListeners {
    InRuntime(TcpListener),
    PerThread {
        listeners: Vec<std::net::TcpListener>,
        busy_poll: Duration,
    },
}

fn bind_http(addr: SocketAddr, serving: Serving) -> anyhow::Result<(HttpListeners, SocketAddr)> {
    match serving {
        Serving::InRuntime => {
            let listener = bind(addr, "--http-addr")?;
            let bound = listener.local_addr()?;
            Ok((HttpListeners::InRuntime(listener), bound))
        }
        Serving::Threads { count, busy_poll } => {
            let listeners = crate::proxy::listener::bind_per_thread(addr, count)
                .with_context(|| format!("cannot listen on --http-addr {addr}"))?;
            let bound = listeners[0].local_addr()?;
            Ok((
                HttpListeners::PerThread {
                    listeners,
                    busy_poll,
                },
                bound,
            ))
        }
    }
}

/// `switchyard run`: serves until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: RunArgs, serving: Serving) -> anyhow::Result<()> {
    let cluster_mode = args.source.manifests.is_empty();
    if !cluster_mode
        && (args.cluster.publish_service.is_some()
            || !args.cluster.publish_status_address.is_empty())
    {
        bail!("--publish-service and --publish-status-address need cluster mode (no --manifests)");
    }
    let (http, http_addr) = bind_http(args.http_addr, serving)?;
    let admin_listener = bind(args.admin_addr, "--admin-addr")?;
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(bind(addr, "--metrics-addr")?),
        None => None,
    };
    let admin_addr = admin_listener.local_addr()?;

    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(RouteStore::new(metrics.clone()));
    let shutdown = Shutdown::new();
    let admin = Arc::new(AdminState {
        routes: routes.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        synced: Default::default(),
    });
    tokio::spawn(admin::serve(
        admin_listener,
        admin.clone(),
        admin::Scope::All,
    ));
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    if let Some(listener) = metrics_listener {
        tokio::spawn(admin::serve(
            listener,
            admin.clone(),
            admin::Scope::MetricsOnly,
        ));
    }
    let applier = Applier::new(
        translate_options(&args.source),
        routes.clone(),
        metrics.clone(),
    );

    if cluster_mode {
        let identity = args
            .cluster
            .pod_name
            .clone()
            .unwrap_or_else(default_identity);
        let clients = ApiClients::infer(&identity).await?;
        tokio::spawn(run_cluster(
            clients,
            shutdown.clone(),
            args.source.watch_namespaces.clone(),
            args.cluster.clone(),
            applier,
            admin.clone(),
            metrics.clone(),
        ));
    } else {
        start_file_source(&args.source, applier, &admin, &metrics)?;
    }

    let proxy = Proxy::new(
        routes,
        metrics.clone(),
        proxy_config(&args),
        shutdown.clone(),
    );
    match http {
        HttpListeners::InRuntime(listener) => {
            tokio::spawn(proxy.serve(listener));
        }
        HttpListeners::PerThread {
            listeners,
            busy_poll,
        } => {
            // Left running on their own: they end once the drain has
            // seen their connections end, or with the process.
            let threads = crate::serving::start(listeners, &proxy, busy_poll)
                .context("cannot start the serving threads")?;
            tracing::info!(
                threads = threads.len(),
                "serving on threads of their own, each busy polling"
            );
        }
    }
    tracing::info!(%http_addr, %admin_addr, "switchyard is serving");
    // Tests and scripts read the bound addresses from this line.
    match &metrics_addr {
        Some(metrics) => {
            println!("switchyard listening: http={http_addr} admin={admin_addr} metrics={metrics}")
        }
        None => println!("switchyard listening: http={http_addr} admin={admin_addr}"),
    }
    let _ = std::io::stdout().flush();

    shutdown::signal().await;
    tracing::info!(drain_timeout = %crate::units::format_duration(args.drain_timeout), "shutting down: draining");
    let drain = shutdown.run(args.drain_timeout);
    admin.refresh_ready_gauge();
    drain.await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Loads the manifests once (ready at once), then applies every change the
/// watcher reports.
fn start_file_source(
    source: &SourceArgs,
    mut applier: Applier,
    admin: &Arc<AdminState>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    // Watch before the first read, so that no change slips in between.
    let mut watcher =
        ManifestWatcher::new(&source.manifests).context("cannot watch the manifest directories")?;
    let mut files = FileSource::new(source.manifests.clone());
    let namespaces = source.watch_namespaces.clone();
    let metrics = metrics.clone();
    let mut load_and_apply = move |still_writing: &[PathBuf]| {
        let mut report = files.load_holding(still_writing);
        report_load_errors(&report.errors, &metrics);
        report.snapshot.retain_namespaces(&namespaces);
        applier.apply(&report.snapshot);
        report.files
    };
    let loaded = load_and_apply(&[]);
    tracing::info!(files = loaded, "manifests loaded");
    admin.mark_synced();
    tokio::spawn(async move {
        while let Some(still_writing) = watcher.next_change().await {
            // Parsing and translating run on the blocking pool, off the
            // threads that serve requests; the closure comes back for the
            // next change.
            load_and_apply = tokio::task::spawn_blocking(move || {
                load_and_apply(&still_writing);
                load_and_apply
            })
            .await
            .expect("loading manifests does not panic");
        }
    });
    Ok(())
}

/// The two clients of the API server, on one configuration (in-cluster,
/// or KUBECONFIG).
struct ApiClients {
    /// For the watches, which stay open for minutes between events.
    client: kube::Client,
    /// For status and Events: no write waits for an answer longer than
    /// [`API_WRITE_TIMEOUT`].
    writes: kube::Client,
    /// For the Lease alone, as `writes`, with the renewals the API server
    /// took.
    lease: (kube::Client, Confirmations),
    /// This replica's name in the Lease and on its Events.
    identity: String,
}

impl ApiClients {
    /// `identity` is this replica's name in the Lease.
    async fn infer(identity: &str) -> anyhow::Result<Self> {
        const CONFIGURE: &str =
            "cannot configure the Kubernetes client (in-cluster config or KUBECONFIG)";
        let config = kube::Config::infer().await.context(CONFIGURE)?;
        Ok(Self {
            client: kube::Client::try_from(config.clone()).context(CONFIGURE)?,
            writes: write_client(config.clone(), API_WRITE_TIMEOUT).context(CONFIGURE)?,
            lease: lease_client(config, API_WRITE_TIMEOUT, identity).context(CONFIGURE)?,
            identity: identity.to_string(),
        })
    }
}

/// The cluster loop: waits for every reflector's initial list, then on
/// each settled burst of changes translates a fresh snapshot and, while
/// leader, writes Ingress status and Events.
async fn run_cluster(
    ApiClients {
        client,
        writes,
        lease: (lease, confirmations),
        identity,
    }: ApiClients,
    shutdown: Shutdown,
    namespaces: Vec<String>,
    cluster: ClusterArgs,
    mut applier: Applier,
    admin: Arc<AdminState>,
    metrics: Arc<Metrics>,
) {
    let changed = Arc::new(Notify::new());
    let health = SourceHealth::new(metrics.clone());
    let refresher = health.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            refresher.refresh();
        }
    });
    let stores = Stores::start(&client, &namespaces, &health, &changed);
    let publish = publish_addresses(&client, &cluster, &health, &changed);
    let leading = leader::elect(
        lease,
        confirmations,
        LeaderSettings {
            lease_name: cluster.election_id.clone(),
            namespace: cluster.pod_namespace.clone(),
            identity: identity.clone(),
        },
        metrics.clone(),
        &shutdown,
    );
    let status = publish.map(|p| StatusWriter::new(writes.clone(), p, metrics.clone()));
    let events = EventPublisher::new(writes, Some(identity), metrics);
    // Status and Events are written by a task of their own, from the
    // latest translation: a slow or stuck API write never holds back the
    // next route change.
    let written_back = publish::spawn(status, events, leading);

    tracing::info!("waiting for the initial list of every watched kind");
    stores.wait_until_ready().await;
    let mut pacing = Pacing::new(cluster.sync_debounce);
    loop {
        // Changes that arrived while we waited are in this snapshot.
        let _ = changed.notified().now_or_never();
        let snapshot = stores.snapshot();
        // Translation runs on the blocking pool, off the request threads.
        let (returned, snapshot, warnings) = tokio::task::spawn_blocking(move || {
            let warnings = applier.apply(&snapshot);
            (applier, snapshot, warnings)
        })
        .await
        .expect("translation does not panic");
        pacing.translated();
        applier = returned;
        if !admin.synced.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("initial sync complete: {}", snapshot.summary());
            admin.mark_synced();
        }
        let classes = applier.class_filter(&snapshot);
        written_back.send_replace(Some(Arc::new(Translated {
            snapshot,
            warnings,
            classes,
        })));
        pacing.next(&changed).await;
    }
}

fn publish_addresses(
    client: &kube::Client,
    cluster: &ClusterArgs,
    health: &Arc<SourceHealth>,
    changed: &Arc<Notify>,
) -> Option<PublishAddresses> {
    if !cluster.publish_status_address.is_empty() {
        let fixed = cluster
            .publish_status_address
            .iter()
            .map(|a| Address::parse(a.trim()))
            .collect();
        return Some(PublishAddresses::Fixed(fixed));
    }
    let (namespace, name) = cluster
        .publish_service
        .as_deref()?
        .split_once('/')
        .expect("--publish-service is NS/NAME, checked by its parser");
    let store: Store<_> = reflect::spawn(
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace),
        reflect::config().fields(&format!("metadata.name={name}")),
        "PublishService",
        health.clone(),
        changed.clone(),
    );
    Some(PublishAddresses::Service(store))
}

/// Outside a pod (no POD_NAME): the host name and process id.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "switchyard".into());
    format!("{host}-{}", std::process::id())
}

/// Reads the source once: manifests, or the cluster's current state.
async fn load_once(
    source: &SourceArgs,
) -> anyhow::Result<(
    Vec<LoadError>,
    Vec<crate::source::manifest::Skipped>,
    usize,
    ClusterSnapshot,
)> {
    if source.manifests.is_empty() {
        let client = kube::Client::try_default()
            .await
            .context("cannot configure the Kubernetes client (in-cluster config or KUBECONFIG)")?;
        let metrics = Arc::new(Metrics::new());
        let stores = Stores::start(
            &client,
            &source.watch_namespaces,
            &SourceHealth::new(metrics),
            &Arc::new(Notify::new()),
        );
        tokio::time::timeout(CLUSTER_READ_TIMEOUT, stores.wait_until_ready())
            .await
            .context("the cluster's objects could not be listed within 30s")?;
        return Ok((Vec::new(), Vec::new(), 0, stores.snapshot()));
    }
    let LoadReport {
        mut snapshot,
        errors,
        skipped,
        files,
    } = FileSource::new(source.manifests.clone()).load();
    snapshot.retain_namespaces(&source.watch_namespaces);
    Ok((errors, skipped, files, snapshot))
}

/// `switchyard check`: returns the process exit code (1 on errors).
pub async fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let (errors, skipped, files, snapshot) = load_once(&args.source).await?;
    let translation = translate(&snapshot, &translate_options(&args.source));
    let routes = translation
        .spec
        .hosts
        .iter()
        .map(|h| h.paths.len())
        .sum::<usize>();
    match args.output {
        OutputFormat::Json => {
            let json = serde_json::json!({
                "errors": errors,
                "warnings": translation.warnings,
                "skipped": skipped,
                "files": files,
                "routes": routes,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("report serializes")
            );
        }
        OutputFormat::Text => {
            for e in &errors {
                println!("error: {e}");
            }
            for w in &translation.warnings {
                println!("warning: {w}");
            }
            for s in &skipped {
                println!("skipped: {}: {}", s.location, s.what);
            }
            println!(
                "{files} files, {} errors, {} warnings, {routes} routes",
                errors.len(),
                translation.warnings.len(),
            );
        }
    }
    Ok(i32::from(!errors.is_empty()))
}

/// `switchyard routes`: prints the table; returns 1 if a manifest failed.
pub async fn routes(args: RoutesArgs) -> anyhow::Result<i32> {
    let (errors, _, _, snapshot) = load_once(&args.source).await?;
    let Translation { spec, .. } = translate(&snapshot, &translate_options(&args.source));
    for e in &errors {
        eprintln!("error: {e}");
    }
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&spec).expect("route table serializes")
        ),
        OutputFormat::Text => print!("{}", spec.to_text()),
    }
    Ok(i32::from(!errors.is_empty()))
}
