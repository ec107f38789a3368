//! The whole benchmark: every target started fresh and met with a burst
//! of new connections, then the load figures going round the targets (the
//! floor, [`crate::floor`], taking the keep-alive and tunnel throughput
//! ones and no burst), then idle tunnels, reconfiguration and translation. Each figure
//! records the load average, the CPU other processes used and the CPU the
//! hypervisor took (steal) while it ran; a round disturbed by either is
//! measured again once.

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
pub const DISTURBED_CORES: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct Plan {
    /// Seconds each target is measured per round of a load figure.
    pub figure_seconds: u64,
    pub concurrency: Vec<usize>,
    pub idle_tunnels: usize,
    pub changes: usize,
    /// Which targets to measure (all five by default).
    pub targets: Vec<Kind>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FigureLoad {
    pub figure: String,
    pub load_average: f64,
    pub other_cores: f64,
    /// CPU the hypervisor gave to other machines meanwhile (steal).
    pub stolen_cores: f64,
    /// Rounds the figure was measured in on this target; the load shown is
    /// the most disturbed one's.
    pub rounds: usize,
    /// Rounds measured again because others disturbed them.
    pub measured_again: usize,
    /// The best round's figure over the worst's (rate, throughput, or
    /// the inverse for a round trip): how far apart this target's rounds
    /// were, which no load figure shows. `None` for a single round.
    pub spread: Option<f64>,
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

    fn windows(&self) -> CoreWindows {
        CoreWindows {
            proxy: CoreWindow::start(&self.proxy),
            generator: CoreWindow::start(&self.generator),
        }
    }
}

/// Runs `figure` and measures how busy each side's CPUs were meanwhile.
async fn with_core_use<T, E>(
    cpus: &Cpus,
    figure: impl Future<Output = Result<T, E>>,
) -> Result<(T, CoreUse), E> {
    let windows = cpus.windows();
    let result = figure.await?;
    Ok((result, windows.use_()))
}

/// Both sides' CPU time from a start, for a [`CoreUse`] at the end.
struct CoreWindows {
    proxy: CoreWindow,
    generator: CoreWindow,
}

impl CoreWindows {
    fn use_(&self) -> CoreUse {
        CoreUse {
            proxy: self.proxy.busy(),
            generator: self.generator.busy(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResults {
    pub kind: Kind,
    pub start_to_ready_ms: f64,
    pub idle_rss_bytes: u64,
    /// The same as proportional set size (shared pages counted once).
    pub idle_pss_bytes: u64,
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

/// The floor ([`crate::floor`]): the figures it takes, measured in the
/// same rounds as the targets'.
#[derive(Debug, Clone, Serialize)]
pub struct FloorResults {
    pub http: Vec<HttpResult>,
    pub tunnel_up_mb_s: f64,
    pub tunnel_down_mb_s: f64,
    pub tunnel_up_cores: CoreUse,
    pub tunnel_down_cores: CoreUse,
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

/// A proxy that can busy-poll, measured with it on (see
/// [`busy_polling`]).
#[derive(Debug, Clone, Serialize)]
pub struct BusyPolled {
    pub kind: Kind,
    /// Keep-alive figures at [`BUSY_POLLING_CONCURRENCY`].
    pub http: Vec<HttpResult>,
    pub tunnel_rtt: RttResult,
    /// Tunnel throughput, client to backend and backend to client (MB/s).
    pub tunnel_mb_s: [f64; 2],
    /// The backend reached directly, in the same rounds as `tunnel_mb_s`.
    pub direct_tunnel_mb_s: Option<[f64; 2]>,
    /// The rounds of the backend reached directly beside this proxy.
    pub direct_loads: Vec<FigureLoad>,
    /// The proxy's CPU while no traffic comes, in cores.
    pub idle_cores: f64,
    pub loads: Vec<FigureLoad>,
}

/// Busy polling saves wake-ups where the proxy's core waits between
/// requests: with few connections. With more the core is busy anyway.
pub const BUSY_POLLING_CONCURRENCY: [usize; 2] = [1, 16];

/// How long a proxy is watched with no traffic for its idle CPU.
const IDLE_WATCH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub targets: Vec<TargetResults>,
    pub floor: Option<FloorResults>,
    pub busy_polling: Vec<BusyPolled>,
    pub reconfig: Vec<Reconfig>,
    pub translate: TranslateResult,
    pub nofile_limit: u64,
    /// Seconds each target is measured per round of a load figure.
    pub figure_seconds: u64,
}

/// Connections opened at once in the burst figure: as many as the largest
/// keep-alive figure uses.
pub const BURST_CONNECTIONS: usize = 256;

/// Transfers per tunnel throughput figure and target, one per round, which
/// reports their median: one transfer takes well under a second, and
/// single runs on a shared machine were seen to vary by half.
pub const TUNNEL_TRANSFERS: usize = 5;

/// Rounds of every other load figure.
pub const ROUNDS: usize = 5;

/// Runs `figure` and measures it again once if other processes, or other
/// machines on the same host (steal), used more than [`DISTURBED_CORES`]
/// meanwhile.
async fn measured<T>(
    name: &str,
    ours: &[u32],
    loads: &mut Vec<FigureLoad>,
    mut figure: impl AsyncFnMut() -> T,
) -> T {
    let mut again = false;
    loop {
        let window = Disturbance::start(ours.to_vec());
        let result = figure().await;
        let taken = record_load(name, &window, loads, 1, usize::from(again));
        if taken <= DISTURBED_CORES || again {
            return result;
        }
        eprintln!("  {name}: others took {taken:.2} cores; measuring again");
        again = true;
    }
}

/// Records the load while a figure ran; returns the CPU others took
/// (other processes and steal), in cores.
fn record_load(
    name: &str,
    window: &Disturbance,
    loads: &mut Vec<FigureLoad>,
    rounds: usize,
    measured_again: usize,
) -> f64 {
    let other_cores = window.others_cores();
    let stolen_cores = window.stolen_cores();
    loads.push(FigureLoad {
        figure: name.to_string(),
        load_average: sysstat::load_average(),
        other_cores,
        stolen_cores,
        rounds,
        measured_again,
        spread: None,
    });
    other_cores + stolen_cores
}

pub async fn run(setup: &Setup, plan: &Plan, backend_pid: u32) -> anyhow::Result<Results> {
    let nofile_limit = sysstat::raise_nofile_limit();
    // Every target is started, and meets its burst, before any is loaded:
    // the burst finds each proxy fresh, and the load figures can then go
    // round the targets.
    let mut runs = Vec::new();
    for &kind in &plan.targets {
        eprintln!("{}:", kind.name());
        runs.push(TargetRun::start(kind, setup, backend_pid).await?);
    }
    // The floor last, where the load figures look for it.
    runs.sort_by_key(|run| run.kind == Kind::Floor);
    let (load, floor_load) = load_figures(&mut runs, setup, plan).await?;
    let floor = runs
        .pop_if(|run| run.kind == Kind::Floor)
        .zip(floor_load)
        .map(|(mut run, load)| FloorResults {
            http: load.http,
            tunnel_up_mb_s: load.tunnel_up.0,
            tunnel_down_mb_s: load.tunnel_down.0,
            tunnel_up_cores: load.tunnel_up.1,
            tunnel_down_cores: load.tunnel_down.1,
            loads: std::mem::take(&mut run.loads),
        });
    let mut targets = Vec::new();
    for (run, load) in runs.iter_mut().zip(load) {
        let idle_tunnels = if run.kind == Kind::Direct {
            None
        } else {
            let tunnels = idle_tunnels(&run.running, plan.idle_tunnels).await?;
            eprintln!(
                "{}: {} idle tunnels, {:.0} bytes each",
                run.kind.name(),
                tunnels.count,
                tunnels.bytes_per_tunnel
            );
            Some(tunnels)
        };
        targets.push(TargetResults {
            kind: run.kind,
            start_to_ready_ms: run.running.start_to_ready.as_secs_f64() * 1000.0,
            idle_rss_bytes: run.idle_rss_bytes,
            idle_pss_bytes: run.idle_pss_bytes,
            burst: run
                .burst
                .clone()
                .expect("every target but the floor meets the burst"),
            http: load.http,
            bodies: load.bodies,
            websocket_sessions: load.websocket_sessions,
            tunnel_up_mb_s: load.tunnel_up.0,
            tunnel_down_mb_s: load.tunnel_down.0,
            tunnel_up_cores: load.tunnel_up.1,
            tunnel_down_cores: load.tunnel_down.1,
            tunnel_rtt: load.tunnel_rtt,
            idle_tunnels,
            config: run.running.config_text(),
            loads: std::mem::take(&mut run.loads),
        });
    }
    // The busy-polling and reconfiguration figures start their own proxies
    // in the same places.
    drop(runs);
    let busy_polling = busy_polling(setup, plan, backend_pid).await?;
    let mut reconfig = Vec::new();
    for kind in [Kind::Switchyard, Kind::Nginx]
        .into_iter()
        .filter(|k| plan.targets.contains(k))
    {
        eprintln!("{} reconfiguration:", kind.name());
        reconfig.push(reconfiguration(kind, setup, plan).await?);
    }
    eprintln!("translate:");
    let ours = vec![std::process::id(), backend_pid];
    let translate = translate_bench::run(&setup.switchyard, &setup.workdir, ours).await?;
    Ok(Results {
        targets,
        floor,
        busy_polling,
        reconfig,
        translate,
        nofile_limit,
        figure_seconds: plan.figure_seconds,
    })
}

/// switchyard with `--busy-poll` and HAProxy with `busy-polling`: the
/// keep-alive figures at [`BUSY_POLLING_CONCURRENCY`] and the tunnel round
/// trip, which wait for wake-ups that busy polling saves, then the CPU each
/// takes while no traffic comes. One proxy at a time, not going round
/// them: HAProxy's poller keeps its core busy all the time, which would
/// slow whatever else ran there.
async fn busy_polling(
    setup: &Setup,
    plan: &Plan,
    backend_pid: u32,
) -> anyhow::Result<Vec<BusyPolled>> {
    let setup = Setup {
        busy_polling: true,
        workdir: setup.workdir.join("busy-polling"),
        ..setup.clone()
    };
    let window = Window {
        warm_up: client::WARM_UP,
        measure: Duration::from_secs(plan.figure_seconds),
    };
    // The backend reached directly goes round with each busy-polled proxy
    // in its tunnel transfers: a ratio to direct from minutes apart would
    // carry the host's drift. (Direct does not use the proxies' core, which
    // HAProxy's poller keeps busy.)
    let mut direct = if plan.targets.contains(&Kind::Direct) {
        Some(TargetRun::start(Kind::Direct, &setup, backend_pid).await?)
    } else {
        None
    };
    let mut polled = Vec::new();
    for kind in [Kind::Switchyard, Kind::Haproxy] {
        if !plan.targets.contains(&kind) {
            continue;
        }
        eprintln!("{} busy polling:", kind.name());
        let mut runs = vec![TargetRun::start(kind, &setup, backend_pid).await?];
        let http = keep_alive_figures(&mut runs[..1], &BUSY_POLLING_CONCURRENCY, window)
            .await
            .pop()
            .expect("one target's figures");
        let rtt = tunnel_rtt_rounds(&mut runs[..1])
            .await
            .pop()
            .expect("one target's rounds");
        runs.extend(direct.take());
        let (up, down) = tunnel_throughput_rounds(&mut runs, &setup).await;
        let mut medians = up.into_iter().zip(down).map(|(up, down)| {
            anyhow::Ok([
                median_by(collect(up)?, |r| r.0).0,
                median_by(collect(down)?, |r| r.0).0,
            ])
        });
        let tunnel_mb_s = medians.next().expect("the proxy's transfers")?;
        let direct_tunnel_mb_s = medians.next().transpose()?;
        direct = runs.pop_if(|run| run.kind == Kind::Direct);
        let direct_loads = direct
            .as_mut()
            .map(|d| std::mem::take(&mut d.loads))
            .unwrap_or_default();
        let mut run = runs.pop().expect("the busy-polled proxy");
        let idle_cores = idle_cores(&run.probe.proxy_pids).await;
        eprintln!(
            "{}: tunnel up {:.0} MB/s, down {:.0} MB/s; {idle_cores:.2} cores idle",
            kind.name(),
            tunnel_mb_s[0],
            tunnel_mb_s[1]
        );
        polled.push(BusyPolled {
            kind,
            http,
            tunnel_rtt: median_by(collect(rtt)?, |r| r.p50_us as f64),
            tunnel_mb_s,
            direct_tunnel_mb_s,
            direct_loads,
            idle_cores,
            loads: std::mem::take(&mut run.loads),
        });
    }
    Ok(polled)
}

/// Each of the benchmark's loads, briefly, against one switchyard: the
/// training run of a profile-guided build (`scripts/pgo.sh`), whose
/// instrumented binary writes its profile when it is stopped at the end.
/// What the profile needs is which code runs how often, not figures, so
/// each load runs a second (one transfer each way for tunnels) and only
/// its errors are reported.
pub async fn train(setup: &Setup, backend_pid: u32) -> anyhow::Result<()> {
    // Starting it meets it with the burst of new connections too.
    let run = TargetRun::start(Kind::Switchyard, setup, backend_pid).await?;
    let target = &run.probe.target;
    let window = Window {
        warm_up: Duration::ZERO,
        measure: Duration::from_secs(1),
    };
    let mut errors = run.burst.as_ref().map_or(0, |b| b.errors);
    for c in [1, 16, 64, 256] {
        errors += client::http_load(target, c, window, 0, || {}).await.errors;
    }
    for (size, c) in [(64 * 1024, 8), (1024 * 1024, 4)] {
        errors += client::http_load(target, c, window, size, || {})
            .await
            .errors;
    }
    errors += client::ws_handshakes(target, 16, window.measure)
        .await
        .errors;
    client::tunnel_upload(target).await?;
    client::tunnel_download(target).await?;
    client::tunnel_rtt(target, 2000).await?;
    eprintln!("trained: every load ran, {errors} failed exchanges");
    if errors > 0 {
        anyhow::bail!("{errors} exchanges failed while training");
    }
    // Dropping the run stops switchyard with SIGTERM: it drains, exits and
    // writes its profile.
    drop(run);
    Ok(())
}

/// The CPU `pids` take over [`IDLE_WATCH`] with no traffic, in cores;
/// after a moment for the last figure's connections to close.
async fn idle_cores(pids: &[u32]) -> f64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sysstat::cpu_ticks(pids);
    tokio::time::sleep(IDLE_WATCH).await;
    let ticks = sysstat::cpu_ticks(pids).saturating_sub(before);
    ticks as f64 / sysstat::ticks_per_second() / IDLE_WATCH.as_secs_f64()
}

/// Two switchyard binaries side by side: the burst, then every load
/// figure going round the two as [`run`] goes round the targets. Prints
/// each figure for both and their ratio, for the before and after of a
/// change measured in one run.
pub async fn compare(
    new: &Setup,
    baseline: &Setup,
    plan: &Plan,
    backend_pid: u32,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for (setup, label) in [(new, "new"), (baseline, "baseline")] {
        eprintln!("{label} ({}):", setup.switchyard.display());
        let mut run = TargetRun::start(Kind::Switchyard, setup, backend_pid).await?;
        run.label = label;
        runs.push(run);
    }
    let (figures, _) = load_figures(&mut runs, new, plan).await?;
    let burst = |run: &TargetRun| run.burst.clone().expect("switchyard meets the burst");
    let rows = comparison(&burst(&runs[0]), &burst(&runs[1]), &figures[0], &figures[1]);
    println!("| figure | new | baseline | new ÷ baseline |\n|---|---|---|---|");
    for (figure, new, baseline) in rows {
        println!(
            "| {figure} | {new:.1} | {baseline:.1} | {:.2} |",
            new / baseline
        );
    }
    Ok(())
}

/// (figure, new, baseline) for [`compare`]'s table.
fn comparison(
    new_burst: &BurstResult,
    baseline_burst: &BurstResult,
    new: &LoadFigures,
    baseline: &LoadFigures,
) -> Vec<(String, f64, f64)> {
    let mut rows = vec![(
        "burst: first response p50 (µs)".to_string(),
        new_burst.p50_us as f64,
        baseline_burst.p50_us as f64,
    )];
    for (n, b) in new.http.iter().zip(&baseline.http) {
        let c = n.concurrency;
        rows.push((format!("keep-alive {c} conn: req/s"), n.rps, b.rps));
        rows.push((
            format!("keep-alive {c} conn: p99 (µs)"),
            n.p99_us as f64,
            b.p99_us as f64,
        ));
        rows.push((
            format!("keep-alive {c} conn: p99.9 (µs)"),
            n.p999_us as f64,
            b.p999_us as f64,
        ));
        if let (Some(nc), Some(bc)) = (n.proxy_cpu, b.proxy_cpu) {
            rows.push((
                format!("keep-alive {c} conn: CPU per request, user + kernel (µs)"),
                nc.user_us + nc.kernel_us,
                bc.user_us + bc.kernel_us,
            ));
        }
    }
    for (n, b) in new.bodies.iter().zip(&baseline.bodies) {
        rows.push((
            format!("{} byte bodies (MB/s)", n.body_bytes),
            n.mb_per_s,
            b.mb_per_s,
        ));
    }
    rows.push((
        "WebSocket sessions/s".to_string(),
        new.websocket_sessions.per_second,
        baseline.websocket_sessions.per_second,
    ));
    rows.push((
        "tunnel up (MB/s)".to_string(),
        new.tunnel_up.0,
        baseline.tunnel_up.0,
    ));
    rows.push((
        "tunnel down (MB/s)".to_string(),
        new.tunnel_down.0,
        baseline.tunnel_down.0,
    ));
    rows.push((
        "tunnel round trip p50 (µs)".to_string(),
        new.tunnel_rtt.p50_us as f64,
        baseline.tunnel_rtt.p50_us as f64,
    ));
    rows
}

/// The burst figure alone, `repeat` times on each target, each time on a
/// fresh start (going round the targets); prints each burst and the
/// medians.
pub async fn bursts(setup: &Setup, kinds: &[Kind], repeat: usize) -> anyhow::Result<()> {
    let mut p50s: Vec<Vec<u64>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut maxes = p50s.clone();
    for round in 1..=repeat {
        for ((&kind, p50s), maxes) in kinds.iter().zip(&mut p50s).zip(&mut maxes) {
            let running = Running::start(kind, setup).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let burst = client::connection_burst(&running.target, BURST_CONNECTIONS).await;
            eprintln!(
                "{} burst {round}: first response p50 {} us, max {} us ({} errors)",
                kind.name(),
                burst.p50_us,
                burst.max_us,
                burst.errors
            );
            p50s.push(burst.p50_us);
            maxes.push(burst.max_us);
        }
    }
    for ((&kind, p50s), maxes) in kinds.iter().zip(p50s).zip(maxes) {
        println!(
            "{}: median of {repeat} bursts of {BURST_CONNECTIONS}: first response p50 {} us, max {} us",
            kind.name(),
            median_by(p50s, |v| *v as f64),
            median_by(maxes, |v| *v as f64)
        );
    }
    Ok(())
}

/// Tunnel throughput alone, `transfers` times each way on each target
/// (going round them): a quick before/after for changes to the tunnel.
/// `targets` pairs each label with how to start it; prints every transfer
/// and each target's median by MB/s, with how busy both CPUs were, the
/// proxy process's CPU per MB, the generator CPU's, and the context
/// switches per MB of `generator_pids` (the load generator and backend).
pub async fn tunnels(
    targets: &[(String, Kind, Setup)],
    transfers: usize,
    generator_pids: &[u32],
) -> anyhow::Result<()> {
    let mut running = Vec::new();
    for (label, kind, setup) in targets {
        eprintln!("starting {label}");
        let run = Running::start(*kind, setup).await?;
        let pids = run.pid().map(sysstat::process_tree).unwrap_or_default();
        running.push((run, pids));
    }
    let cpus = Cpus::of(&targets[0].2);
    // [target][direction] -> every transfer
    let mut results: Vec<[Vec<Transfer>; 2]> =
        targets.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    let mb = client::TUNNEL_BYTES as f64 / 1e6;
    for round in 1..=transfers {
        for (((label, _, _), (run, pids)), out) in targets.iter().zip(&running).zip(&mut results) {
            for (direction, out) in out.iter_mut().enumerate() {
                let ticks = sysstat::cpu_ticks(pids);
                let switches = sysstat::context_switches(generator_pids);
                let transfer = async {
                    if direction == 0 {
                        client::tunnel_upload(&run.target).await
                    } else {
                        client::tunnel_download(&run.target).await
                    }
                };
                let (mb_s, use_) = with_core_use(&cpus, transfer).await?;
                let cpu_s = (sysstat::cpu_ticks(pids) - ticks) as f64 / sysstat::ticks_per_second();
                let us_per_mb = cpu_s * 1e6 / mb;
                let switches_per_mb =
                    (sysstat::context_switches(generator_pids) - switches) as f64 / mb;
                eprintln!(
                    "{label} {} {round}: {mb_s:.0} MB/s, CPU busy proxy {:.0} % generator {:.0} %, proxy {us_per_mb:.0} µs/MB, generator and backend {switches_per_mb:.1} context switches/MB",
                    ["up", "down"][direction],
                    use_.proxy * 100.0,
                    use_.generator * 100.0
                );
                out.push(Transfer {
                    mb_s,
                    use_,
                    us_per_mb,
                    switches_per_mb,
                });
            }
        }
    }
    for ((label, _, _), out) in targets.iter().zip(results) {
        for (direction, rounds) in out.into_iter().enumerate() {
            let Transfer {
                mb_s,
                use_,
                us_per_mb,
                switches_per_mb,
            } = median_by(rounds, |r| r.mb_s);
            // A CPU busy for a fraction f while MB/s go by spends f / (MB/s)
            // seconds per MB.
            println!(
                "{label} {}: median {mb_s:.0} MB/s (CPU busy proxy {:.0} % generator {:.0} %; per MB: proxy process {us_per_mb:.0} µs, generator CPU {:.0} µs, generator and backend context switches {switches_per_mb:.1})",
                ["up", "down"][direction],
                use_.proxy * 100.0,
                use_.generator * 100.0,
                use_.generator * 1e6 / mb_s
            );
        }
    }
    Ok(())
}

/// One tunnel transfer of `loadgen tunnels`.
struct Transfer {
    mb_s: f64,
    use_: CoreUse,
    /// The proxy process's CPU per MB.
    us_per_mb: f64,
    /// The load generator's and the backend's context switches per MB.
    switches_per_mb: f64,
}

/// A target kept running through the load figures.
struct TargetRun {
    kind: Kind,
    /// How progress lines name it: the kind, or which binary in a
    /// comparison.
    label: &'static str,
    running: Running,
    probe: Probe,
    /// Processes whose CPU is not a disturbance: the generator, the
    /// backend and this target's proxy.
    ours: Vec<u32>,
    idle_rss_bytes: u64,
    idle_pss_bytes: u64,
    /// None for the floor, which connects to the backend inline, one new
    /// client at a time: its burst would be no floor for anyone's.
    burst: Option<BurstResult>,
    loads: Vec<FigureLoad>,
}

/// What a load figure needs of its target.
struct Probe {
    target: Target,
    /// The proxy's processes, for its CPU per request.
    proxy_pids: Vec<u32>,
}

impl TargetRun {
    /// Starts `kind` and measures what only a fresh proxy shows: its idle
    /// memory and how it meets a burst of new connections. Measured once
    /// however disturbed: a second burst would find the backend
    /// connections the first one made.
    async fn start(kind: Kind, setup: &Setup, backend_pid: u32) -> anyhow::Result<Self> {
        let running = Running::start(kind, setup).await?;
        let mut ours = vec![std::process::id(), backend_pid];
        ours.extend(running.pid());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss_bytes = running.rss_bytes();
        let idle_pss_bytes = running.pss_bytes();
        let mut loads = Vec::new();
        let mut burst = None;
        if kind != Kind::Floor {
            let disturbance = Disturbance::start(ours.clone());
            let measured = client::connection_burst(&running.target, BURST_CONNECTIONS).await;
            record_load("connection burst", &disturbance, &mut loads, 1, 0);
            eprintln!(
                "  burst of {} connections: first response p50 {} us, max {} us ({} errors)",
                measured.connections, measured.p50_us, measured.max_us, measured.errors
            );
            burst = Some(measured);
        }
        let probe = Probe {
            target: running.target.clone(),
            proxy_pids: running.pid().map(sysstat::process_tree).unwrap_or_default(),
        };
        Ok(Self {
            kind,
            label: kind.name(),
            running,
            probe,
            ours,
            idle_rss_bytes,
            idle_pss_bytes,
            burst,
            loads,
        })
    }
}

/// The floor's load figures, each its median round.
struct FloorFigures {
    http: Vec<HttpResult>,
    tunnel_up: (f64, CoreUse),
    tunnel_down: (f64, CoreUse),
}

/// One target's load figures, each its median round.
struct LoadFigures {
    http: Vec<HttpResult>,
    bodies: Vec<HttpResult>,
    websocket_sessions: RateResult,
    tunnel_up: (f64, CoreUse),
    tunnel_down: (f64, CoreUse),
    tunnel_rtt: RttResult,
}

/// The load figures, in rounds: each figure is measured on every target
/// in turn, [`ROUNDS`] times over ([`TUNNEL_TRANSFERS`] for tunnel
/// throughput), so that a slow spell of the shared host falls on all
/// targets alike instead of on whichever one was being measured. The
/// floor, if it is the last of `runs`, goes round with them in the
/// keep-alive and tunnel throughput figures only, and its figures come
/// apart.
async fn load_figures(
    runs: &mut [TargetRun],
    setup: &Setup,
    plan: &Plan,
) -> anyhow::Result<(Vec<LoadFigures>, Option<FloorFigures>)> {
    let window = Window {
        warm_up: client::WARM_UP,
        measure: Duration::from_secs(plan.figure_seconds),
    };
    let with_floor = runs.last().is_some_and(|run| run.kind == Kind::Floor);
    let proxies = runs.len() - usize::from(with_floor);
    let mut http = keep_alive_figures(runs, &plan.concurrency, window).await;
    let mut bodies: Vec<Vec<HttpResult>> = (0..proxies).map(|_| Vec::new()).collect();
    for (size, c) in [(64 * 1024, 8), (1024 * 1024, 4)] {
        let figure = rounds(
            &format!("body {size}"),
            &mut runs[..proxies],
            ROUNDS,
            |r: &HttpResult| Some(r.mb_per_s),
            async |probe: &Probe| client::http_load(&probe.target, c, window, size, || {}).await,
        )
        .await;
        for ((run, rounds), bodies) in runs.iter().zip(figure).zip(&mut bodies) {
            let r = median_by(rounds, |r| r.mb_per_s);
            eprintln!("{}: body {size}: {:.0} MB/s", run.label, r.mb_per_s);
            bodies.push(r);
        }
    }
    let per_second = |r: &RateResult| Some(r.per_second);
    let cpus = Cpus::of(setup);
    let sessions = rounds(
        "websocket sessions",
        &mut runs[..proxies],
        ROUNDS,
        per_second,
        async |probe: &Probe| websocket_sessions(probe, &cpus, window).await,
    )
    .await;
    let (mut up, mut down) = tunnel_throughput_rounds(runs, setup).await;
    let rtt = tunnel_rtt_rounds(&mut runs[..proxies]).await;
    let floor = if with_floor {
        let http = http.pop().expect("the floor's keep-alive figures");
        let up = up.pop().expect("the floor's transfers up");
        let down = down.pop().expect("the floor's transfers down");
        Some(FloorFigures {
            http,
            tunnel_up: median_by(collect(up)?, |r| r.0),
            tunnel_down: median_by(collect(down)?, |r| r.0),
        })
    } else {
        None
    };

    let mut figures = Vec::new();
    let per_target = http
        .into_iter()
        .zip(bodies)
        .zip(sessions)
        .zip(up)
        .zip(down)
        .zip(rtt);
    for (run, (((((http, bodies), sessions), up), down), rtt)) in runs.iter().zip(per_target) {
        let websocket_sessions = median_by(sessions, |r| r.per_second);
        let tunnel_up = median_by(collect(up)?, |r| r.0);
        let tunnel_down = median_by(collect(down)?, |r| r.0);
        let tunnel_rtt = median_by(collect(rtt)?, |r| r.p50_us as f64);
        eprintln!(
            "{}: websocket sessions {:.0}/s; tunnel up {:.0} MB/s, down {:.0} MB/s, rtt p50 {} us",
            run.label, websocket_sessions.per_second, tunnel_up.0, tunnel_down.0, tunnel_rtt.p50_us
        );
        figures.push(LoadFigures {
            http,
            bodies,
            websocket_sessions,
            tunnel_up,
            tunnel_down,
            tunnel_rtt,
        });
    }
    Ok((figures, floor))
}

/// The keep-alive figure at each of `concurrency`, in rounds: for each
/// target, its median round at each concurrency.
async fn keep_alive_figures(
    runs: &mut [TargetRun],
    concurrency: &[usize],
    window: Window,
) -> Vec<Vec<HttpResult>> {
    let mut http: Vec<Vec<HttpResult>> = runs.iter().map(|_| Vec::new()).collect();
    for &c in concurrency {
        let figure = rounds(
            &format!("http c={c}"),
            runs,
            ROUNDS,
            |r: &HttpResult| Some(r.rps),
            async |probe: &Probe| keep_alive(probe, c, window).await,
        )
        .await;
        for ((run, rounds), http) in runs.iter().zip(figure).zip(&mut http) {
            // The rate of the median round; the percentiles of all rounds
            // together, so that a stall in a round the median leaves out
            // still shows.
            let mut all = rounds.iter().filter_map(|r| r.latencies.as_ref());
            let merged = all.next().cloned().map(|mut merged| {
                for more in all {
                    merged.add(more).expect("same histogram bounds");
                }
                merged
            });
            let mut r = median_by(rounds, |r| r.rps);
            if let Some(merged) = &merged {
                r.read_percentiles(merged);
            }
            eprintln!(
                "{}: http c={c}: {:.0} req/s p99 {} us ({} errors)",
                run.label, r.rps, r.p99_us, r.errors
            );
            http.push(r);
        }
    }
    http
}

/// A tunnel transfer's MB/s with how busy both CPUs were, or its error.
type TunnelRound = std::io::Result<(f64, CoreUse)>;

/// Tunnel throughput client to backend and backend to client, in
/// [`TUNNEL_TRANSFERS`] rounds (each target's transfers, not yet reduced
/// to a median).
async fn tunnel_throughput_rounds(
    runs: &mut [TargetRun],
    setup: &Setup,
) -> (Vec<Vec<TunnelRound>>, Vec<Vec<TunnelRound>>) {
    let cpus = Cpus::of(setup);
    let throughput = |r: &TunnelRound| r.as_ref().ok().map(|r| r.0);
    let up = rounds(
        "tunnel up",
        runs,
        TUNNEL_TRANSFERS,
        throughput,
        async |probe: &Probe| with_core_use(&cpus, client::tunnel_upload(&probe.target)).await,
    )
    .await;
    let down = rounds(
        "tunnel down",
        runs,
        TUNNEL_TRANSFERS,
        throughput,
        async |probe: &Probe| with_core_use(&cpus, client::tunnel_download(&probe.target)).await,
    )
    .await;
    (up, down)
}

/// The tunnel round trip of small messages, in rounds (each target's
/// rounds, not yet reduced to a median).
async fn tunnel_rtt_rounds(runs: &mut [TargetRun]) -> Vec<Vec<std::io::Result<RttResult>>> {
    // A round trip is better when shorter: spread by its inverse.
    let speed =
        |r: &std::io::Result<RttResult>| r.as_ref().ok().map(|r| 1.0 / r.p50_us.max(1) as f64);
    rounds("tunnel rtt", runs, ROUNDS, speed, async |probe: &Probe| {
        client::tunnel_rtt(&probe.target, 5000).await
    })
    .await
}

/// A keep-alive figure with the proxy's CPU per request.
async fn keep_alive(probe: &Probe, c: usize, window: Window) -> HttpResult {
    let pids = &probe.proxy_pids;
    let mut before = (0, 0);
    let mut r = client::http_load(&probe.target, c, window, 0, || {
        before = sysstat::cpu_split_ticks(pids);
    })
    .await;
    let after = sysstat::cpu_split_ticks(pids);
    r.proxy_cpu = cpu_per(r.requests, before, after, pids);
    r
}

/// WebSocket sessions from 16 connections at a time, with the proxy's CPU
/// per session and how busy each side's CPUs were: whether the proxy or
/// the generator (which opens, and as the backend accepts, two
/// connections per session) set the pace.
async fn websocket_sessions(probe: &Probe, cpus: &Cpus, window: Window) -> RateResult {
    let pids = &probe.proxy_pids;
    let before = sysstat::cpu_split_ticks(pids);
    let windows = cpus.windows();
    let mut r = client::ws_handshakes(&probe.target, 16, window.measure).await;
    r.cores = windows.use_();
    let after = sysstat::cpu_split_ticks(pids);
    r.proxy_cpu = cpu_per(r.completed, before, after, pids);
    r
}

/// CPU time per unit of work between two readings of `pids`' user and
/// kernel ticks; none without processes (the backend reached directly)
/// or without work.
fn cpu_per(
    done: u64,
    before: (u64, u64),
    after: (u64, u64),
    pids: &[u32],
) -> Option<CpuPerRequest> {
    if pids.is_empty() || done == 0 {
        return None;
    }
    let us = |ticks: u64| ticks as f64 / sysstat::ticks_per_second() * 1e6 / done as f64;
    Some(CpuPerRequest {
        user_us: us(after.0.saturating_sub(before.0)),
        kernel_us: us(after.1.saturating_sub(before.1)),
    })
}

/// Measures `figure` `count` times on every target, going round the
/// targets; returns each target's rounds, in the order of `runs`. The
/// load of each target's rounds is recorded as one entry: the most
/// disturbed round's, with the spread of the rounds by `key` (higher is
/// better; `None` for a failed round).
async fn rounds<T>(
    name: &str,
    runs: &mut [TargetRun],
    count: usize,
    key: impl Fn(&T) -> Option<f64>,
    mut figure: impl AsyncFnMut(&Probe) -> T,
) -> Vec<Vec<T>> {
    let mut results: Vec<Vec<T>> = runs.iter().map(|_| Vec::with_capacity(count)).collect();
    let mut loads: Vec<Vec<FigureLoad>> = runs.iter().map(|_| Vec::new()).collect();
    for _ in 0..count {
        for ((run, out), loads) in runs.iter().zip(&mut results).zip(&mut loads) {
            out.push(measured(name, &run.ours, loads, async || figure(&run.probe).await).await);
        }
    }
    for ((run, loads), out) in runs.iter_mut().zip(loads).zip(&results) {
        if let Some(mut worst) = most_disturbed(loads, count) {
            worst.spread = spread(out.iter().filter_map(&key));
            run.loads.push(worst);
        }
    }
    results
}

/// The largest of `values` over the smallest, for two or more positive
/// values.
fn spread(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut low, mut high, mut count) = (f64::INFINITY, 0.0_f64, 0);
    for value in values.filter(|v| *v > 0.0) {
        low = low.min(value);
        high = high.max(value);
        count += 1;
    }
    (count > 1).then(|| high / low)
}

/// The entry of the round others disturbed most, with how many rounds
/// there were and how many were measured again.
fn most_disturbed(loads: Vec<FigureLoad>, rounds: usize) -> Option<FigureLoad> {
    let measured_again = loads.iter().filter(|l| l.measured_again > 0).count();
    let mut worst = loads.into_iter().max_by(|a, b| {
        (a.other_cores + a.stolen_cores).total_cmp(&(b.other_cores + b.stolen_cores))
    })?;
    worst.rounds = rounds;
    worst.measured_again = measured_again;
    Some(worst)
}

/// The middle value of `values` by `key` (the upper middle of an even
/// count).
fn median_by<T>(mut values: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    values.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = values.len() / 2;
    values.swap_remove(middle)
}

fn collect<T>(rounds: Vec<std::io::Result<T>>) -> std::io::Result<Vec<T>> {
    rounds.into_iter().collect()
}

/// How many batches idle tunnels are opened in, memory sampled after each.
pub const IDLE_TUNNEL_BATCHES: usize = 8;

/// RSS growth while `count` idle tunnels are open, sampled on the way.
async fn idle_tunnels(running: &Running, count: usize) -> anyhow::Result<IdleTunnels> {
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let rss_before = running.rss_bytes();
    let mut samples = vec![(0, rss_before)];
    let mut open = Vec::with_capacity(count);
    let step = (count / IDLE_TUNNEL_BATCHES).max(1);
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
    samples.push((open.len(), rss_after));
    drop(open);
    let bytes_per_tunnel = bytes_per_tunnel(&samples);
    if let Some(why) = &refused {
        eprintln!("  idle tunnels: {why}");
    }
    Ok(IdleTunnels {
        refused,
        count,
        rss_before,
        rss_after,
        bytes_per_tunnel,
        samples,
    })
}

/// Memory per tunnel from `(tunnels open, bytes)` samples, the first with
/// none open and the last with all: the growth from the first batch on,
/// over the tunnels added after it. The first tunnels can reuse memory
/// the load figures before them freed, which would make every proxy look
/// cheaper per tunnel than it is. With no batch before the last, the
/// growth from none.
fn bytes_per_tunnel(samples: &[(usize, u64)]) -> f64 {
    let (Some(&(_, none)), Some(&(all, last))) = (samples.first(), samples.last()) else {
        return 0.0;
    };
    match samples.get(1) {
        Some(&(first, at_first)) if all > first => {
            last.saturating_sub(at_first) as f64 / (all - first) as f64
        }
        _ => last.saturating_sub(none) as f64 / all.max(1) as f64,
    }
}

/// How long load and pings go on after the last change.
const RECONFIG_TAIL: Duration = Duration::from_secs(1);

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
            // The stop is looked at after a ping: each tunnel is pinged
            // once more after the changes and the tail after them.
            loop {
                let ok = stream.write_all(b"pingpong").await.is_ok()
                    && stream.read_exact(&mut back).await.is_ok();
                if !ok {
                    broken.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if stop.load(Ordering::Relaxed) {
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
    // Load and pings go on for a while after the last change: what the
    // last change breaks (an old nginx worker closing its connections,
    // say) would otherwise go uncounted.
    tokio::time::sleep(RECONFIG_TAIL).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_tunnel_leaves_out_the_first_batch() {
        // The first 100 tunnels cost 1,000 bytes each (reused memory), the
        // next 700 2,000 each.
        let samples = [
            (0, 10_000_000),
            (100, 10_100_000),
            (400, 10_700_000),
            (800, 11_500_000),
        ];
        assert_eq!(bytes_per_tunnel(&samples), 2_000.0);
        // Stopped in the first batch: counted from none.
        assert_eq!(
            bytes_per_tunnel(&[(0, 1_000), (10, 21_000), (10, 21_000)]),
            2_000.0
        );
        assert_eq!(bytes_per_tunnel(&[(0, 1_000)]), 0.0);
    }

    fn load(other_cores: f64, stolen_cores: f64, measured_again: usize) -> FigureLoad {
        FigureLoad {
            figure: "http c=16".into(),
            load_average: 1.0,
            other_cores,
            stolen_cores,
            rounds: 1,
            measured_again,
            spread: None,
        }
    }

    fn figures(rps: f64, sessions: f64) -> LoadFigures {
        LoadFigures {
            http: vec![HttpResult {
                concurrency: 16,
                rps,
                ..HttpResult::default()
            }],
            bodies: Vec::new(),
            websocket_sessions: RateResult {
                per_second: sessions,
                ..RateResult::default()
            },
            tunnel_up: (1000.0, CoreUse::default()),
            tunnel_down: (900.0, CoreUse::default()),
            tunnel_rtt: RttResult::default(),
        }
    }

    #[test]
    fn a_comparison_pairs_each_figure_of_the_new_binary_with_the_baselines() {
        let burst = |p50_us| BurstResult {
            p50_us,
            ..BurstResult::default()
        };
        let rows = comparison(
            &burst(12_000),
            &burst(15_000),
            &figures(50_000.0, 6_000.0),
            &figures(40_000.0, 6_500.0),
        );
        let row = |name: &str| {
            rows.iter()
                .find(|(figure, _, _)| figure == name)
                .map(|(_, new, baseline)| (*new, *baseline))
                .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
        };
        assert_eq!(row("burst: first response p50 (µs)"), (12_000.0, 15_000.0));
        assert_eq!(row("keep-alive 16 conn: req/s"), (50_000.0, 40_000.0));
        assert_eq!(row("WebSocket sessions/s"), (6_000.0, 6_500.0));
        assert_eq!(row("tunnel down (MB/s)"), (900.0, 900.0));
    }

    #[test]
    fn a_figure_is_its_median_round_by_the_key_given() {
        let rounds = vec![(3.0, "slow"), (9.0, "fast"), (5.0, "middle")];
        assert_eq!(median_by(rounds, |r| r.0).1, "middle");
        // An even count takes the upper middle.
        assert_eq!(median_by(vec![4.0, 1.0, 3.0, 2.0], |r| *r), 3.0);
    }

    #[test]
    fn the_load_shown_is_the_most_disturbed_rounds_with_the_count_measured_again() {
        // Round two was disturbed (others and steal together), measured
        // again, and its second attempt was quiet.
        let loads = vec![
            load(0.0, 0.05, 0),
            load(0.1, 0.3, 0),
            load(0.0, 0.0, 1),
            load(0.02, 0.0, 0),
        ];
        let worst = most_disturbed(loads, 3).expect("rounds were recorded");
        assert_eq!((worst.other_cores, worst.stolen_cores), (0.1, 0.3));
        assert_eq!(worst.rounds, 3);
        assert_eq!(worst.measured_again, 1);
        assert!(most_disturbed(Vec::new(), 3).is_none());
    }

    #[test]
    fn cpu_per_unit_of_work_splits_user_and_kernel_ticks_and_needs_processes_and_work() {
        let per_second = sysstat::ticks_per_second();
        // One second of user time and two of kernel time over 1,000 sessions.
        let ticks = |seconds: f64| (seconds * per_second) as u64;
        let cpu = cpu_per(1000, (5, 7), (5 + ticks(1.0), 7 + ticks(2.0)), &[42])
            .expect("processes and work");
        assert!((cpu.user_us - 1000.0).abs() < 1e-6, "{cpu:?}");
        assert!((cpu.kernel_us - 2000.0).abs() < 1e-6, "{cpu:?}");
        assert!(cpu_per(1000, (0, 0), (10, 10), &[]).is_none());
        assert!(cpu_per(0, (0, 0), (10, 10), &[42]).is_none());
    }

    #[test]
    fn the_spread_of_rounds_is_the_best_over_the_worst() {
        let spread_of = |values: &[f64]| spread(values.iter().copied());
        assert_eq!(spread_of(&[40.0, 50.0, 45.0]), Some(1.25));
        assert_eq!(spread_of(&[45.0, 45.0]), Some(1.0));
        assert_eq!(spread_of(&[45.0]), None, "one round has no spread");
        assert_eq!(
            spread_of(&[0.0, 45.0]),
            None,
            "a round that measured nothing is left out"
        );
        assert_eq!(spread_of(&[]), None);
    }
}
