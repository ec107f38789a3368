//! The whole benchmark, one figure after another, each target started
//! fresh: the figures of BENCHMARKS.md with the load average, the CPU
//! other processes used and the CPU the hypervisor took (steal) while
//! each was measured. A figure disturbed by either is measured again once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{
    self, BurstResult, CpuPerRequest, HttpResult, RateResult, RttResult, Target, Until, Window,
};
use crate::sysstat::{self, CoreWindow, Disturbance};
use crate::targets::{Kind, Running, Setup};
use crate::translate_bench::{self, TranslateResult};

/// CPU taken by others (other processes and steal) above which a figure
/// is measured again.
const DISTURBED_CORES: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct Plan {
    pub figure_seconds: u64,
    pub concurrency: Vec<usize>,
    pub idle_tunnels: usize,
    pub changes: usize,
    /// Which targets to measure (all four by default).
    pub targets: Vec<Kind>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FigureLoad {
    pub figure: String,
    pub load_average: f64,
    pub other_cores: f64,
    /// CPU the hypervisor gave to other machines meanwhile (steal).
    pub stolen_cores: f64,
    pub measured_again: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleTunnels {
    /// Why fewer tunnels than planned were opened, if so.
    pub refused: Option<String>,
    pub count: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub bytes_per_tunnel: f64,
    /// (tunnels open, RSS bytes), for the plot.
    pub samples: Vec<(usize, u64)>,
}

/// How busy the proxy's CPUs and the load generator's were while a figure
/// ran, as shares of their time (0 to 1). The backend runs on the
/// generator's CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CoreUse {
    pub proxy: f64,
    pub generator: f64,
}

/// The CPUs a target's proxy runs on and the ones the generator runs on.
struct Cpus {
    proxy: Vec<usize>,
    generator: Vec<usize>,
}

impl Cpus {
    fn of(setup: &Setup) -> Self {
        let proxy = sysstat::parse_cpu_list(&setup.proxy_cpu);
        let generator = sysstat::own_cpus()
            .into_iter()
            .filter(|cpu| !proxy.contains(cpu))
            .collect();
        Self { proxy, generator }
    }
}

/// Runs `figure` and measures how busy each side's CPUs were meanwhile.
async fn with_core_use<T, E>(
    cpus: &Cpus,
    figure: impl Future<Output = Result<T, E>>,
) -> Result<(T, CoreUse), E> {
    let proxy = CoreWindow::start(&cpus.proxy);
    let generator = CoreWindow::start(&cpus.generator);
    let result = figure.await?;
    let use_ = CoreUse {
        proxy: proxy.busy(),
        generator: generator.busy(),
    };
    Ok((result, use_))
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResults {
    pub kind: Kind,
    pub start_to_ready_ms: f64,
    pub idle_rss_bytes: u64,
    /// First responses to [`BURST_CONNECTIONS`] new connections at once,
    /// measured first, while the proxy holds at most the backend connection
    /// its readiness check made.
    pub burst: BurstResult,
    pub http: Vec<HttpResult>,
    pub bodies: Vec<HttpResult>,
    pub websocket_sessions: RateResult,
    pub tunnel_up_mb_s: f64,
    pub tunnel_down_mb_s: f64,
    /// CPU use during the tunnel transfers, for the report's account of
    /// what limits them.
    pub tunnel_up_cores: CoreUse,
    pub tunnel_down_cores: CoreUse,
    pub tunnel_rtt: RttResult,
    pub idle_tunnels: Option<IdleTunnels>,
    pub config: Option<String>,
    pub loads: Vec<FigureLoad>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconfig {
    pub kind: Kind,
    pub changes: usize,
    pub change_to_serving_ms_median: f64,
    pub change_to_serving_ms_max: f64,
    pub requests: u64,
    pub failed_requests: u64,
    pub tunnels: usize,
    pub broken_tunnels: u64,
    pub rss_before: u64,
    pub rss_after: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub targets: Vec<TargetResults>,
    pub reconfig: Vec<Reconfig>,
    pub translate: TranslateResult,
    pub nofile_limit: u64,
}

/// Connections opened at once in the burst figure: as many as the largest
/// keep-alive figure uses.
pub const BURST_CONNECTIONS: usize = 256;

/// Transfers per tunnel throughput figure, which reports their median:
/// one transfer takes well under a second, and single runs on a shared
/// machine were seen to vary by half.
pub const TUNNEL_TRANSFERS: usize = 5;

/// The median of `n` runs of `run`.
async fn median_of<F, Fut>(n: usize, mut run: F) -> std::io::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<f64>>,
{
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(run().await?);
    }
    values.sort_by(f64::total_cmp);
    Ok(values[n / 2])
}

/// Runs `figure` and measures it again once if other processes, or other
/// machines on the same host (steal), used more than [`DISTURBED_CORES`]
/// meanwhile.
async fn measured<T, F, Fut>(
    name: &str,
    ours: &[u32],
    loads: &mut Vec<FigureLoad>,
    mut figure: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut measured_again = false;
    loop {
        let window = Disturbance::start(ours.to_vec());
        let result = figure().await;
        let taken = record_load(name, &window, loads, measured_again);
        if taken <= DISTURBED_CORES || measured_again {
            return result;
        }
        eprintln!("  {name}: others took {taken:.2} cores; measuring again");
        measured_again = true;
    }
}

/// Records the load while a figure ran; returns the CPU others took
/// (other processes and steal), in cores.
fn record_load(
    name: &str,
    window: &Disturbance,
    loads: &mut Vec<FigureLoad>,
    measured_again: bool,
) -> f64 {
    let other_cores = window.others_cores();
    let stolen_cores = window.stolen_cores();
    loads.push(FigureLoad {
        figure: name.to_string(),
        load_average: sysstat::load_average(),
        other_cores,
        stolen_cores,
        measured_again,
    });
    other_cores + stolen_cores
}

pub async fn run(setup: &Setup, plan: &Plan, backend_pid: u32) -> anyhow::Result<Results> {
    let nofile_limit = sysstat::raise_nofile_limit();
    let mut targets = Vec::new();
    for &kind in &plan.targets {
        eprintln!("{}:", kind.name());
        targets.push(measure_target(kind, setup, plan, backend_pid).await?);
    }
    let mut reconfig = Vec::new();
    for kind in [Kind::Switchyard, Kind::Nginx]
        .into_iter()
        .filter(|k| plan.targets.contains(k))
    {
        eprintln!("{} reconfiguration:", kind.name());
        reconfig.push(reconfiguration(kind, setup, plan).await?);
    }
    eprintln!("translate:");
    let translate = translate_bench::run(&setup.switchyard, &setup.workdir).await?;
    Ok(Results {
        targets,
        reconfig,
        translate,
        nofile_limit,
    })
}

async fn measure_target(
    kind: Kind,
    setup: &Setup,
    plan: &Plan,
    backend_pid: u32,
) -> anyhow::Result<TargetResults> {
    let running = Running::start(kind, setup).await?;
    let target = running.target.clone();
    let mut ours = vec![std::process::id(), backend_pid];
    ours.extend(running.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_bytes = running.rss_bytes();
    let seconds = Duration::from_secs(plan.figure_seconds);
    let mut loads = Vec::new();

    // Measured once however disturbed: a second burst would find the
    // backend connections the first one made.
    let disturbance = Disturbance::start(ours.to_vec());
    let burst = client::connection_burst(&target, BURST_CONNECTIONS).await;
    record_load("connection burst", &disturbance, &mut loads, false);
    eprintln!(
        "  burst of {} connections: first response p50 {} us, max {} us ({} errors)",
        burst.connections, burst.p50_us, burst.max_us, burst.errors
    );
    let window = Window {
        warm_up: client::WARM_UP,
        measure: seconds,
    };
    let proxy_pids = running.pid().map(sysstat::process_tree).unwrap_or_default();
    let mut http = Vec::new();
    for &c in &plan.concurrency {
        let r = measured(&format!("http c={c}"), &ours, &mut loads, || async {
            let mut before = (0, 0);
            let mut r = client::http_load(&target, c, window, 0, || {
                before = sysstat::cpu_split_ticks(&proxy_pids);
            })
            .await;
            let after = sysstat::cpu_split_ticks(&proxy_pids);
            if !proxy_pids.is_empty() && r.requests > 0 {
                let us = |ticks: u64| {
                    ticks as f64 / sysstat::ticks_per_second() * 1e6 / r.requests as f64
                };
                r.proxy_cpu = Some(CpuPerRequest {
                    user_us: us(after.0.saturating_sub(before.0)),
                    kernel_us: us(after.1.saturating_sub(before.1)),
                });
            }
            r
        })
        .await;
        eprintln!(
            "  http c={c}: {:.0} req/s p99 {} us ({} errors)",
            r.rps, r.p99_us, r.errors
        );
        http.push(r);
    }
    let mut bodies = Vec::new();
    for (size, c) in [(64 * 1024, 8), (1024 * 1024, 4)] {
        let r = measured(&format!("body {size}"), &ours, &mut loads, || {
            client::http_load(&target, c, window, size, || {})
        })
        .await;
        eprintln!("  body {size}: {:.0} MB/s", r.mb_per_s);
        bodies.push(r);
    }
    let websocket_sessions = measured("websocket sessions", &ours, &mut loads, || {
        client::ws_handshakes(&target, 16, seconds)
    })
    .await;
    eprintln!(
        "  websocket sessions: {:.0}/s",
        websocket_sessions.per_second
    );
    let cpus = Cpus::of(setup);
    let (tunnel_up_mb_s, tunnel_up_cores) = measured("tunnel up", &ours, &mut loads, || {
        with_core_use(
            &cpus,
            median_of(TUNNEL_TRANSFERS, || client::tunnel_upload(&target)),
        )
    })
    .await?;
    let (tunnel_down_mb_s, tunnel_down_cores) = measured("tunnel down", &ours, &mut loads, || {
        with_core_use(
            &cpus,
            median_of(TUNNEL_TRANSFERS, || client::tunnel_download(&target)),
        )
    })
    .await?;
    let tunnel_rtt = measured("tunnel rtt", &ours, &mut loads, || {
        client::tunnel_rtt(&target, 5000)
    })
    .await?;
    eprintln!(
        "  tunnel: up {tunnel_up_mb_s:.0} MB/s, down {tunnel_down_mb_s:.0} MB/s, rtt p50 {} us",
        tunnel_rtt.p50_us
    );

    let idle_tunnels = if kind == Kind::Direct {
        None
    } else {
        let tunnels = idle_tunnels(&running, plan.idle_tunnels).await?;
        eprintln!(
            "  {} idle tunnels: {:.0} bytes each",
            tunnels.count, tunnels.bytes_per_tunnel
        );
        Some(tunnels)
    };
    Ok(TargetResults {
        kind,
        start_to_ready_ms: running.start_to_ready.as_secs_f64() * 1000.0,
        idle_rss_bytes,
        burst,
        http,
        bodies,
        websocket_sessions,
        tunnel_up_mb_s,
        tunnel_down_mb_s,
        tunnel_up_cores,
        tunnel_down_cores,
        tunnel_rtt,
        idle_tunnels,
        config: running.config_text(),
        loads,
    })
}

/// RSS growth while `count` idle tunnels are open, sampled on the way.
async fn idle_tunnels(running: &Running, count: usize) -> anyhow::Result<IdleTunnels> {
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let rss_before = running.rss_bytes();
    let mut samples = vec![(0, rss_before)];
    let mut open = Vec::with_capacity(count);
    let step = (count / 8).max(1);
    let mut refused = None;
    while open.len() < count {
        let batch = step.min(count - open.len());
        match client::open_idle_tunnels(&running.target, batch).await {
            Ok(tunnels) => open.extend(tunnels),
            // A proxy that cannot hold this many is a finding, not a crash:
            // report what it held.
            Err((tunnels, error)) => {
                open.extend(tunnels);
                refused = Some(format!("stopped at {} tunnels: {error}", open.len()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push((open.len(), running.rss_bytes()));
    }
    tokio::time::sleep(settle).await;
    let rss_after = running.rss_bytes();
    let count = open.len().max(1);
    drop(open);
    if let Some(why) = &refused {
        eprintln!("  idle tunnels: {why}");
    }
    Ok(IdleTunnels {
        refused,
        count,
        rss_before,
        rss_after,
        bytes_per_tunnel: rss_after.saturating_sub(rss_before) as f64 / count as f64,
        samples,
    })
}

/// `changes` route additions under load, with open tunnels pinging.
async fn reconfiguration(kind: Kind, setup: &Setup, plan: &Plan) -> anyhow::Result<Reconfig> {
    let mut running = Running::start(kind, setup).await?;
    let target = running.target.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let target = target.clone();
        let until = Until::Stopped(stop.clone());
        tokio::spawn(async move { client::http_load_until(&target, 8, until, 0).await })
    };
    const TUNNELS: usize = 50;
    let broken = Arc::new(AtomicU64::new(0));
    let mut pingers = Vec::new();
    for _ in 0..TUNNELS {
        let mut stream = client::upgrade(&target, "/echo").await?;
        let (stop, broken) = (stop.clone(), broken.clone());
        pingers.push(tokio::spawn(async move {
            let mut back = [0u8; 8];
            while !stop.load(Ordering::Relaxed) {
                let ok = stream.write_all(b"pingpong").await.is_ok()
                    && stream.read_exact(&mut back).await.is_ok();
                if !ok {
                    broken.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let rss_before = running.rss_bytes();
    let mut delays = Vec::with_capacity(plan.changes);
    for i in 0..plan.changes {
        let host = format!("r{i}.bench.test");
        let start = Instant::now();
        running.add_host(&host, setup.backend)?;
        let probe = Target {
            addr: target.addr,
            host: host.clone(),
        };
        if !client::wait_serving(&probe, Duration::from_secs(10), client::POLL).await {
            anyhow::bail!("{}: {host} not served 10s after the change", kind.name());
        }
        delays.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let rss_after = running.rss_bytes();
    stop.store(true, Ordering::Relaxed);
    let load = load.await?;
    for p in pingers {
        p.await?;
    }
    delays.sort_by(f64::total_cmp);
    let result = Reconfig {
        kind,
        changes: plan.changes,
        change_to_serving_ms_median: delays[delays.len() / 2],
        change_to_serving_ms_max: *delays.last().unwrap_or(&0.0),
        requests: load.requests + load.errors,
        failed_requests: load.errors,
        tunnels: TUNNELS,
        broken_tunnels: broken.load(Ordering::Relaxed),
        rss_before,
        rss_after,
    };
    eprintln!(
        "  {} changes: median {:.0} ms to serving, {} of {} requests failed, {} of {} tunnels broken",
        result.changes,
        result.change_to_serving_ms_median,
        result.failed_requests,
        result.requests,
        result.broken_tunnels,
        result.tunnels
    );
    Ok(result)
}

/// The backend's address from its first line of output.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening ")?.parse().ok()
}
