//! BENCHMARKS.md and its plots from one run's results: absolute figures,
//! ratios against nginx, HAProxy and the direct baseline, the targets we
//! set ourselves and where we miss them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::chart;
use crate::client::{CpuPerRequest, HttpResult};
use crate::suite::{CoreUse, FigureLoad, FloorResults, Results, TargetResults};
use crate::targets::Kind;

pub struct Context {
    pub date: String,
    pub machine: String,
    pub versions: String,
    pub command: String,
    pub run_time: RunTime,
}

/// How long the run took, for the limit it must fit in.
pub struct RunTime {
    /// From the start of the command that ran the suite to the start of
    /// the measurement (`bench/run.sh`: installing and building), when
    /// that command said when it began.
    pub before_measuring: Option<Duration>,
    pub measuring: Duration,
}

/// The whole run, installing and building included, must finish within
/// this many minutes on 2 cores.
pub(crate) const RUN_MINUTES: f64 = 15.0;

/// The rate target: at least this many times nginx's rate, and HAProxy's.
pub(crate) const RATE_OVER_NGINX: f64 = 1.2;
pub(crate) const RATE_OVER_HAPROXY: f64 = 1.0;
/// The tunnel target: at least this share of the backend reached directly.
pub(crate) const TUNNEL_OVER_DIRECT: f64 = 0.9;

pub(crate) fn target(results: &Results, kind: Kind) -> Option<&TargetResults> {
    results.targets.iter().find(|t| t.kind == kind)
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

pub(crate) fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A table cell: the figure, or "-" where there is none.
pub(crate) fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), num)
}

/// The ratio of two figures, or "-" where either is missing.
pub(crate) fn ratio_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".into(),
    }
}

/// One table row: a figure for each target and switchyard's ratios.
fn row(
    out: &mut String,
    name: &str,
    results: &Results,
    value: impl Fn(&TargetResults) -> Option<f64>,
) {
    let get = |k| target(results, k).and_then(&value);
    let sy = get(Kind::Switchyard);
    let r = |other: Option<f64>| ratio_of(sy, other);
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
        cell(sy),
        cell(get(Kind::Nginx)),
        cell(get(Kind::Haproxy)),
        cell(get(Kind::Direct)),
        r(get(Kind::Nginx)),
        r(get(Kind::Haproxy)),
        r(get(Kind::Direct)),
    );
}

/// Two rows, the proxy's user and kernel CPU per `unit` of work.
fn cpu_rows(
    out: &mut String,
    unit: &str,
    results: &Results,
    cpu: impl Fn(&TargetResults) -> Option<CpuPerRequest>,
) {
    for kernel in [false, true] {
        let part = if kernel { "kernel" } else { "user" };
        row(
            out,
            &format!("proxy CPU per {unit}, {part} (µs)"),
            results,
            |t| {
                let cpu = cpu(t)?;
                Some(if kernel { cpu.kernel_us } else { cpu.user_us })
            },
        );
    }
}

pub fn markdown(results: &Results, ctx: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "switchyard, nginx and HAProxy side by side, measured in one run on one machine by\n`{}` on {}. This file is written by that command; rerun it rather than editing.\n",
        ctx.command, ctx.date
    );
    let _ = writeln!(out, "## Machine and method\n");
    let _ = writeln!(out, "{}\n", ctx.machine);
    let _ = writeln!(out, "{}\n", ctx.versions);
    let _ = writeln!(
        out,
        "- Each proxy runs alone, pinned to CPU 0 with one worker (switchyard's runtime sizes itself to the one CPU it may use; nginx `worker_processes 1`; HAProxy `nbthread 1`). The load generator and the backend share CPU 1. \"direct\" is the same load sent to the backend itself; \"floor\" is a forwarder that does nothing but pass bytes on, pinned like the proxies, as the least a proxy can cost (see The floor).\n\
         - Every proxy keeps connections to the backend alive (for any number of requests, on both sides), passes WebSocket upgrades through, sets `X-Forwarded-For`, `-Host` and `-Proto` and an `X-Request-ID` as an ingress does, has access logging off, and answers 404 for unknown hosts. The configurations are at the end.\n\
         - The load generator sends pre-built requests over raw sockets and does not retry; a failed exchange counts as an error.\n\
         - All targets are started before any is loaded, and every load figure goes round them: it is measured on each target in turn, {} times over, and each target's figure is its median round (by rate, throughput or median round trip). A slow spell of the shared host then falls on every target alike rather than on whichever was being measured. The keep-alive latency percentiles are of all rounds together, so that a stall in a round the median leaves out still shows.\n\
         - Each connection sends its next request only once the answer is in, so a stall would also hide the requests it kept from being sent (coordinated omission): request latencies are corrected for it as HdrHistogram does, with each connection's mean latency as the interval it would have kept.\n\
         - Memory is resident memory (RSS) summed over the proxy's processes: for nginx its master and worker, whose shared pages are so counted twice; idle memory is also given as proportional set size (PSS), which counts each shared page once, split between the processes sharing it. nginx's worker also allocates, when it starts, the 20,000 connection slots it is configured with for the idle-tunnel figure (ingress-nginx's own default is 16,384). Memory per idle tunnel is the growth from the first of {} batches of tunnels to all of them, divided by the tunnels added after the first batch: the first tunnels can reuse memory the load figures before them freed.\n\
         - Keep-alive and body figures are the steady state: in each round their connections send requests for {} ms first, not counted, then for {} s. How a proxy meets a burst of new clients is its own figure, measured first on each freshly started proxy (which holds at most the backend connection its readiness check made): {} connections opened at once, each timed from its connect to its first complete response.\n\
         - Tunnel throughput is the median of {} transfers of {} MiB each way, one per round; start to first answer is the median of {} starts.\n\
         - Each round records the load average, the CPU other processes used while it ran and the CPU the hypervisor gave to other machines (steal, which no process list shows on a shared VM); a round where these took more than a quarter of a core together is measured again once. The last table shows each target's most disturbed round of each figure, and how far apart its rounds were (best ÷ worst): rounds that none of these records as disturbed still differ, and a ratio between targets means little where that spread is as large.\n\
         - Open-files limit: {} (hard limit; the soft limit is raised to it).\n",
        crate::suite::ROUNDS,
        crate::suite::IDLE_TUNNEL_BATCHES,
        crate::client::WARM_UP.as_millis(),
        results.figure_seconds,
        crate::suite::BURST_CONNECTIONS,
        crate::suite::TUNNEL_TRANSFERS,
        crate::client::TUNNEL_BYTES / (1024 * 1024),
        crate::targets::STARTS,
        results.nofile_limit
    );

    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Higher is better unless the figure says latency, memory or time. Ratios are switchyard ÷ the other.\n"
    );
    let _ = writeln!(
        out,
        "| figure | switchyard | nginx | HAProxy | direct | ÷ nginx | ÷ HAProxy | ÷ direct |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let levels: Vec<usize> = results
        .targets
        .first()
        .map(|t| t.http.iter().map(|h| h.concurrency).collect())
        .unwrap_or_default();
    for (i, c) in levels.iter().enumerate() {
        row(
            &mut out,
            &format!("HTTP/1.1 keep-alive, {c} conn: req/s"),
            results,
            |t| t.http.get(i).map(|h| h.rps),
        );
    }
    for (i, c) in levels.iter().enumerate() {
        row(
            &mut out,
            &format!("latency p50 / {c} conn (µs)"),
            results,
            |t| t.http.get(i).map(|h| h.p50_us as f64),
        );
        row(
            &mut out,
            &format!("latency p99 / {c} conn (µs)"),
            results,
            |t| t.http.get(i).map(|h| h.p99_us as f64),
        );
        row(
            &mut out,
            &format!("latency p99.9 / {c} conn (µs)"),
            results,
            |t| t.http.get(i).map(|h| h.p999_us as f64),
        );
    }
    let burst = crate::suite::BURST_CONNECTIONS;
    row(
        &mut out,
        &format!("burst of {burst} new connections: first response p50 (µs)"),
        results,
        |t| Some(t.burst.p50_us as f64),
    );
    row(
        &mut out,
        &format!("burst of {burst} new connections: first response max (µs)"),
        results,
        |t| Some(t.burst.max_us as f64),
    );
    for (i, c) in levels.iter().enumerate() {
        cpu_rows(&mut out, &format!("request / {c} conn"), results, |t| {
            t.http.get(i)?.proxy_cpu
        });
    }
    row(&mut out, "64 KiB request bodies (MB/s)", results, |t| {
        t.bodies.first().map(|b| b.mb_per_s)
    });
    row(&mut out, "1 MiB request bodies (MB/s)", results, |t| {
        t.bodies.get(1).map(|b| b.mb_per_s)
    });
    row(
        &mut out,
        "WebSocket sessions/s (connect, 101, message, close)",
        results,
        |t| Some(t.websocket_sessions.per_second),
    );
    cpu_rows(&mut out, "WebSocket session", results, |t| {
        t.websocket_sessions.proxy_cpu
    });
    row(&mut out, "tunnel client→backend (MB/s)", results, |t| {
        Some(t.tunnel_up_mb_s)
    });
    row(&mut out, "tunnel backend→client (MB/s)", results, |t| {
        Some(t.tunnel_down_mb_s)
    });
    row(&mut out, "tunnel round trip p50 (µs)", results, |t| {
        Some(t.tunnel_rtt.p50_us as f64)
    });
    row(&mut out, "tunnel round trip p99 (µs)", results, |t| {
        Some(t.tunnel_rtt.p99_us as f64)
    });
    row(&mut out, "memory per idle tunnel (bytes)", results, |t| {
        t.idle_tunnels.as_ref().map(|i| i.bytes_per_tunnel)
    });
    row(&mut out, "idle RSS (MiB)", results, |t| {
        (t.kind != Kind::Direct).then(|| t.idle_rss_bytes as f64 / 1048576.0)
    });
    row(
        &mut out,
        "idle PSS, shared pages once (MiB)",
        results,
        |t| (t.kind != Kind::Direct).then(|| t.idle_pss_bytes as f64 / 1048576.0),
    );
    row(&mut out, "start to first answer (ms)", results, |t| {
        (t.kind != Kind::Direct).then_some(t.start_to_ready_ms)
    });
    let errors: u64 = results
        .targets
        .iter()
        .flat_map(|t| t.http.iter().chain(&t.bodies))
        .map(|h| h.errors)
        .sum::<u64>()
        + results
            .targets
            .iter()
            .map(|t| t.websocket_sessions.errors)
            .sum::<u64>();
    let tunnels = results
        .targets
        .iter()
        .filter_map(|t| {
            t.idle_tunnels.as_ref().map(|i| match &i.refused {
                Some(why) => format!("{} {} ({why})", t.kind.name(), i.count),
                None => format!("{} {}", t.kind.name(), i.count),
            })
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\nIdle tunnels held open at once: {tunnels}. Errors during the load figures: {errors}.\n"
    );

    let _ = writeln!(out, "### Reconfiguration under load\n");
    let _ = writeln!(
        out,
        "Each change adds a route for a new host (switchyard: a new manifest file; nginx: a config change and `nginx -s reload`), then waits until that host is served. Meanwhile 8 connections send keep-alive requests to an existing route and 50 open tunnels exchange a message every 100 ms.\n"
    );
    let _ = writeln!(
        out,
        "| proxy | changes | change → serving, median (ms) | max (ms) | failed requests | broken tunnels | RSS before → after (MiB) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &results.reconfig {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {} of {} | {} of {} | {:.1} → {:.1} |",
            r.kind.name(),
            r.changes,
            r.change_to_serving_ms_median,
            r.change_to_serving_ms_max,
            r.failed_requests,
            r.requests,
            r.broken_tunnels,
            r.tunnels,
            r.rss_before as f64 / 1048576.0,
            r.rss_after as f64 / 1048576.0
        );
    }
    let t = &results.translate;
    let _ = writeln!(out, "\n### Translation at scale\n");
    let _ = writeln!(
        out,
        "{} Ingresses with as many Services and EndpointSlices: YAML parse {:.0} ms, translate {:.1} ms (best of {}, in process with the allocator switchyard ships with), compile {:.1} ms, {} routes, {} warnings. `switchyard run` on them: serving after {:.0} ms with {:.0} MiB resident.{}\n",
        t.ingresses,
        t.parse_ms,
        t.translate_ms,
        t.load.as_ref().map_or(3, |l| 3 * (1 + l.measured_again)),
        t.compile_ms,
        t.routes,
        t.warnings,
        t.process_start_to_ready_ms,
        t.process_rss_bytes as f64 / 1048576.0,
        t.load.as_ref().map(translate_load).unwrap_or_default()
    );

    out.push_str(&crate::busy_report::section(results));
    let _ = writeln!(out, "## Targets\n");
    for line in targets(results)
        .into_iter()
        .chain([run_time_target(&ctx.run_time)])
    {
        let _ = writeln!(out, "- {line}");
    }
    out.push_str(&crate::floor_report::section(results));
    let budget = time_budget(results);
    if !budget.is_empty() {
        let _ = writeln!(
            out,
            "\n### Where the request time goes\n\n\
             When the proxy's core is busy all the time, the request rate is one over the \
             proxy CPU per request, so each rate target is a budget of CPU time per request. \
             All three proxies make the same system calls per request (one read and one \
             write on each side; nginx adds a getsockopt), and the kernel's part of that, \
             loopback TCP included, is most of the budget.\n"
        );
        for line in budget {
            let _ = writeln!(out, "- {line}");
        }
    }
    let tunnels = tunnel_limits(results);
    if !tunnels.is_empty() {
        let _ = writeln!(
            out,
            "\n### What limits tunnel throughput\n\n\
             The client and the backend share the generator's CPU; the proxy has its own. \
             Direct, each byte is written once and read once on that CPU. Through a proxy the \
             same writes and reads happen there, plus the loopback hops to and from the proxy \
             and a wake-up across CPUs at every hand-off. The generator's CPU time per MB \
             shows that cost, which also depends on how each proxy hands data on.\n"
        );
        for line in tunnels {
            let _ = writeln!(out, "- {line}");
        }
    }
    let sessions = session_limits(results);
    if !sessions.is_empty() {
        let _ = writeln!(
            out,
            "\n### What limits WebSocket sessions\n\n\
             Each session is two new TCP connections (client to proxy, proxy to backend), an \
             upgrade, one message each way and two closes. The client and the backend share \
             the generator's CPU; the proxy has its own. How busy each CPU was says which of \
             them set the pace.\n"
        );
        for line in sessions {
            let _ = writeln!(out, "- {line}");
        }
    }
    let _ = writeln!(
        out,
        "\n## Plots\n\n![Latency against load](bench/plots/latency.png)\n\n![Memory against open tunnels](bench/plots/memory.png)\n"
    );

    load_table(results, &mut out);
    let _ = writeln!(out, "\n## Configurations\n");
    for t in &results.targets {
        if let Some(config) = &t.config {
            let _ = writeln!(
                out,
                "{}:\n\n```\n{}\n```\n",
                t.kind.name(),
                config.trim_end()
            );
        }
    }
    out
}

/// The load while each target's figures were measured, busy-polled
/// proxies and the direct rounds beside them included.
pub(crate) fn load_table(results: &Results, out: &mut String) {
    let _ = writeln!(out, "## Load while measuring\n");
    let _ = writeln!(
        out,
        "| target | figure | rounds | best ÷ worst round | load average | other processes (cores) | stolen by the hypervisor (cores) | rounds measured again |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    // The busy-polled proxies' rounds too, named by their setting.
    let loads = results
        .targets
        .iter()
        .map(|t| (t.kind.name().to_string(), &t.loads))
        .chain(
            results
                .floor
                .iter()
                .map(|f| ("floor".to_string(), &f.loads)),
        )
        .chain(results.busy_polling.iter().flat_map(|p| {
            let setting = if p.kind == Kind::Haproxy {
                "busy-polling"
            } else {
                "busy-poll"
            };
            let polled = format!("{} {setting}", p.kind.name());
            let direct = format!("direct beside {polled}");
            [(polled, &p.loads), (direct, &p.direct_loads)]
        }));
    for (target, target_loads) in loads {
        for l in target_loads {
            let spread = l
                .spread
                .map_or_else(|| "-".to_string(), |s| format!("{s:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |",
                target,
                l.figure,
                l.rounds,
                spread,
                l.load_average,
                l.other_cores,
                l.stolen_cores,
                l.measured_again
            );
        }
    }
}

/// For each keep-alive figure: how busy the proxy's core was, the CPU time
/// per request the rate targets allow, and the kernel's share of it.
fn time_budget(results: &Results) -> Vec<String> {
    let (Some(sy), Some(ng), Some(ha)) = (
        target(results, Kind::Switchyard),
        target(results, Kind::Nginx),
        target(results, Kind::Haproxy),
    ) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (i, h) in sy.http.iter().enumerate() {
        let (Some(s), Some(n), Some(a)) = (
            h.proxy_cpu,
            ng.http.get(i).and_then(|r| r.proxy_cpu),
            ha.http.get(i).and_then(|r| r.proxy_cpu),
        ) else {
            continue;
        };
        let total = |c: &crate::client::CpuPerRequest| c.user_us + c.kernel_us;
        let busy = |rps: f64, c: &crate::client::CpuPerRequest| rps * total(c) / 1e4;
        // The CPU per request at which a fully busy core gives that rate.
        let nginx_budget = 1e6 / (RATE_OVER_NGINX * ng.http[i].rps);
        let haproxy_budget = 1e6 / ha.http[i].rps;
        let measured = format!(
            "{} connection{}: CPU per request (user + kernel) switchyard {:.1} + {:.1} µs, \
             nginx {:.1} + {:.1} µs, HAProxy {:.1} + {:.1} µs; core busy {:.0} % / {:.0} % / {:.0} %.",
            h.concurrency,
            if h.concurrency == 1 { "" } else { "s" },
            s.user_us,
            s.kernel_us,
            n.user_us,
            n.kernel_us,
            a.user_us,
            a.kernel_us,
            busy(h.rps, &s),
            busy(ng.http[i].rps, &n),
            busy(ha.http[i].rps, &a),
        );
        if busy(h.rps, &s) < 90.0 {
            lines.push(format!(
                "{measured} The core is not the limit here: the rate follows the round trip \
                 through the proxy and the backend."
            ));
            continue;
        }
        let haproxy_left = if haproxy_budget < s.kernel_us {
            "less than switchyard's kernel time alone".to_string()
        } else {
            format!(
                "which leaves {:.1} µs of user time (switchyard uses {:.1})",
                haproxy_budget - s.kernel_us,
                s.user_us
            )
        };
        lines.push(format!(
            "{measured} {RATE_OVER_NGINX:.1}× nginx's rate allows {:.1} µs per request, {} \
             switchyard's kernel time alone ({:.1} µs; nginx's: {:.1} µs); HAProxy's rate \
             allows {:.1} µs, {haproxy_left}.",
            nginx_budget,
            if nginx_budget < s.kernel_us {
                "less than"
            } else {
                "more than"
            },
            s.kernel_us,
            n.kernel_us,
            haproxy_budget,
        ));
    }
    lines
}

/// The share of its time a CPU is busy from which the report calls it
/// full: the one that set a figure's pace.
const FULL_CPU: f64 = 0.9;

/// For each tunnel direction: which CPU was full, and the generator's CPU
/// time per MB moved through each proxy against direct.
fn tunnel_limits(results: &Results) -> Vec<String> {
    let (Some(direct), Some(sy)) = (
        target(results, Kind::Direct),
        target(results, Kind::Switchyard),
    ) else {
        return Vec::new();
    };
    type Figure = fn(&TargetResults) -> (f64, CoreUse);
    type FloorFigure = fn(&FloorResults) -> (f64, CoreUse);
    let directions: [(&str, Figure, FloorFigure); 2] = [
        (
            "client→backend",
            |t| (t.tunnel_up_mb_s, t.tunnel_up_cores),
            |f| (f.tunnel_up_mb_s, f.tunnel_up_cores),
        ),
        (
            "backend→client",
            |t| (t.tunnel_down_mb_s, t.tunnel_down_cores),
            |f| (f.tunnel_down_mb_s, f.tunnel_down_cores),
        ),
    ];
    // Microseconds of the generator's CPU per MB moved.
    let cost = |(mb_s, cores): (f64, CoreUse)| cores.generator * 1e6 / mb_s;
    let mut lines = Vec::new();
    for (name, figure, floor_figure) in directions {
        let (direct_mb_s, _) = figure(direct);
        let (sy_mb_s, sy_cores) = figure(sy);
        if direct_mb_s <= 0.0 || sy_mb_s <= 0.0 || sy_cores.generator <= 0.0 {
            continue;
        }
        let others: String = [Kind::Nginx, Kind::Haproxy]
            .into_iter()
            .filter_map(|kind| {
                let measured = figure(target(results, kind)?);
                (measured.0 > 0.0).then(|| format!(", {} {:.0}", kind.name(), cost(measured)))
            })
            .chain(results.floor.as_ref().and_then(|floor| {
                let measured = floor_figure(floor);
                (measured.0 > 0.0).then(|| format!(", the floor {:.0}", cost(measured)))
            }))
            .collect();
        let measured = format!(
            "{name}: switchyard's CPU busy {:.0} %, the generator's {:.0} %. The generator's CPU \
             spent {:.0} µs per MB through switchyard and {:.0} direct{others}.",
            sy_cores.proxy * 100.0,
            sy_cores.generator * 100.0,
            cost(figure(sy)),
            cost(figure(direct)),
        );
        let verdict = if sy_cores.proxy >= FULL_CPU {
            " switchyard's CPU is the full one: the proxy is the limit here.".to_string()
        } else if sy_cores.generator >= 0.85 {
            // At the same cost per MB with its CPU busy all the time.
            let ceiling = sy_mb_s / direct_mb_s / sy_cores.generator;
            format!(
                " The generator's CPU is the full one, so its cost per MB, not switchyard's \
                 speed, sets the ratio to direct: with that CPU busy all the time it would be \
                 {ceiling:.2}×."
            )
        } else {
            " Neither CPU is full: the transfer waits on the hand-offs between them.".to_string()
        };
        lines.push(measured + &verdict);
    }
    lines
}

/// For each target: how busy the proxy's CPU and the generator's were
/// during the WebSocket sessions, and which one was full.
fn session_limits(results: &Results) -> Vec<String> {
    results
        .targets
        .iter()
        .filter(|t| t.websocket_sessions.per_second > 0.0)
        .map(|t| {
            let s = &t.websocket_sessions;
            let limit = match (s.cores.proxy >= FULL_CPU, s.cores.generator >= FULL_CPU) {
                (true, true) => "both CPUs are full",
                (true, false) => "the proxy's CPU is the full one",
                (false, true) => "the generator's CPU is the full one",
                (false, false) => "neither CPU is full",
            };
            let proxy = if t.kind == Kind::Direct {
                "no proxy".to_string()
            } else {
                format!("the proxy's CPU busy {:.0} %", s.cores.proxy * 100.0)
            };
            format!(
                "{}: {:.0} sessions/s, {proxy}, the generator's {:.0} %: {limit}.",
                t.kind.name(),
                s.per_second,
                s.cores.generator * 100.0
            )
        })
        .collect()
}

/// The goals from the performance issue, each met or not, with the numbers.
/// The rate target's line for switchyard's keep-alive figure against
/// nginx's and HAProxy's at the same concurrency, `name` saying which.
pub(crate) fn rate_target(
    name: &str,
    [h, n, a]: [&HttpResult; 3],
    mark: impl Fn(bool) -> &'static str,
) -> String {
    let ok = h.rps >= RATE_OVER_NGINX * n.rps
        && h.rps >= RATE_OVER_HAPROXY * a.rps
        && h.p99_us <= n.p99_us
        && h.p99_us <= a.p99_us;
    format!(
        "{}: {name}, {} connection{} — {:.2}× nginx, {:.2}× HAProxy, p99 {} µs vs {} / {} µs",
        mark(ok),
        h.concurrency,
        if h.concurrency == 1 { "" } else { "s" },
        h.rps / n.rps,
        h.rps / a.rps,
        h.p99_us,
        n.p99_us,
        a.p99_us
    )
}

fn targets(results: &Results) -> Vec<String> {
    let mut lines = Vec::new();
    let (Some(sy), Some(ng), Some(ha), Some(direct)) = (
        target(results, Kind::Switchyard),
        target(results, Kind::Nginx),
        target(results, Kind::Haproxy),
        target(results, Kind::Direct),
    ) else {
        return lines;
    };
    for (i, h) in sy.http.iter().enumerate() {
        lines.push(
            rate_target(
                &format!(
                    "request rate ≥ {RATE_OVER_NGINX:.1}× nginx and ≥ {RATE_OVER_HAPROXY:.1}× \
                     HAProxy with p99 no worse"
                ),
                [h, &ng.http[i], &ha.http[i]],
                mark,
            ) + &crate::floor_report::rate_note(results, h.concurrency),
        );
    }
    lines.extend(crate::busy_report::target_lines(results, mark));
    let up = sy.tunnel_up_mb_s / direct.tunnel_up_mb_s;
    let down = sy.tunnel_down_mb_s / direct.tunnel_down_mb_s;
    lines.push(format!(
        "{}: tunnel throughput ≥ {TUNNEL_OVER_DIRECT:.1}× direct — {up:.2}× up, \
         {down:.2}× down{}",
        mark(up >= TUNNEL_OVER_DIRECT && down >= TUNNEL_OVER_DIRECT),
        crate::floor_report::tunnel_note(results)
    ));
    if let Some(idle) = &sy.idle_tunnels {
        lines.push(format!(
            "{}: memory per idle tunnel ≤ 4 KiB — {:.0} bytes over {} tunnels",
            mark(idle.bytes_per_tunnel <= 4096.0),
            idle.bytes_per_tunnel,
            idle.count
        ));
    }
    if let Some(r) = results.reconfig.iter().find(|r| r.kind == Kind::Switchyard) {
        lines.push(format!(
            "{}: zero failures during reconfiguration — {} failed requests, {} broken tunnels",
            mark(r.failed_requests == 0 && r.broken_tunnels == 0),
            r.failed_requests,
            r.broken_tunnels
        ));
    }
    lines.push(format!(
        "{}: translate 10,000 Ingresses in under 100 ms — {:.1} ms",
        mark(results.translate.translate_ms < 100.0),
        results.translate.translate_ms
    ));
    lines
}

/// How a target line begins: whether this run met it.
fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The run against its time limit; judged only when the time before the
/// measurement (the build) is known.
fn run_time_target(time: &RunTime) -> String {
    let minutes = |d: Duration| d.as_secs_f64() / 60.0;
    let measuring = minutes(time.measuring);
    let limit = format!("the whole run within {RUN_MINUTES:.0} minutes on 2 cores");
    match time.before_measuring.map(minutes) {
        Some(before) => {
            let total = before + measuring;
            format!(
                "{}: {limit} — {total:.1} minutes: {before:.1} installing and building, \
                 {measuring:.1} measuring",
                mark(total <= RUN_MINUTES)
            )
        }
        None => format!(
            "not judged: {limit} — the measurement took {measuring:.1} minutes; what came \
             before it was not timed (`loadgen suite` without `--started-at`)"
        ),
    }
}

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Switchyard => RGBColor(0x1f, 0x77, 0xb4),
        Kind::Nginx => RGBColor(0x2c, 0xa0, 0x2c),
        Kind::Haproxy => RGBColor(0xd6, 0x27, 0x28),
        Kind::Direct => RGBColor(0x7f, 0x7f, 0x7f),
        Kind::Floor => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// Registers a TrueType font for plot text (plotters draws no text without one).
pub fn register_font() -> anyhow::Result<()> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT)
        .map_err(|e| anyhow::anyhow!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    Ok(())
}

pub fn plots(results: &Results, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    latency_plot(results, &dir.join("latency.png"))?;
    memory_plot(results, &dir.join("memory.png"))?;
    Ok(())
}

fn latency_plot(results: &Results, file: &Path) -> anyhow::Result<()> {
    let lines = results
        .targets
        .iter()
        .map(|t| (t.kind, &t.http))
        .chain(results.floor.iter().map(|f| (Kind::Floor, &f.http)))
        .map(|(kind, http)| {
            let points = http.iter().map(|h| (h.rps, h.p99_us as f64 / 1000.0));
            target_line(kind, points.collect(), 4)
        })
        .collect();
    let frame = chart::Frame::new(
        "p99 latency against request rate (each point: one concurrency level)",
        "requests per second",
        "p99 latency (ms)",
    );
    chart::png(file, &frame, lines)
}

fn memory_plot(results: &Results, file: &Path) -> anyhow::Result<()> {
    let lines = results
        .targets
        .iter()
        .filter_map(|t| {
            let samples = &t.idle_tunnels.as_ref()?.samples;
            let points = samples
                .iter()
                .map(|&(n, rss)| (n as f64, rss as f64 / 1048576.0));
            Some(target_line(t.kind, points.collect(), 3))
        })
        .collect();
    let frame = chart::Frame::new(
        "Resident memory against open idle tunnels",
        "open tunnels",
        "RSS (MiB)",
    );
    chart::png(file, &frame, lines)
}

/// A target's line, named and coloured after it.
fn target_line(kind: Kind, points: Vec<(f64, f64)>, marker: u32) -> chart::Line {
    chart::Line {
        name: Some(kind.name().to_string()),
        color: color(kind),
        points,
        marker,
    }
}

/// The load while the translations were timed, as a sentence.
fn translate_load(load: &FigureLoad) -> String {
    format!(
        " While the translations were timed: load average {:.2}, other processes {:.2} cores, the hypervisor {:.2} cores{}.",
        load.load_average,
        load.other_cores,
        load.stolen_cores,
        if load.measured_again > 0 {
            " (the first three were disturbed and measured again)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::{BurstResult, CpuPerRequest, HttpResult, RateResult, RttResult};
    use crate::translate_bench::TranslateResult;

    /// A target with one keep-alive figure at 16 connections.
    pub(crate) fn measured(kind: Kind, rps: f64, user_us: f64, kernel_us: f64) -> TargetResults {
        TargetResults {
            kind,
            start_to_ready_ms: 0.0,
            idle_rss_bytes: 0,
            idle_pss_bytes: 0,
            burst: BurstResult::default(),
            http: vec![HttpResult {
                concurrency: 16,
                rps,
                proxy_cpu: Some(CpuPerRequest { user_us, kernel_us }),
                ..HttpResult::default()
            }],
            bodies: Vec::new(),
            websocket_sessions: RateResult::default(),
            tunnel_up_mb_s: 0.0,
            tunnel_down_mb_s: 0.0,
            tunnel_up_cores: CoreUse::default(),
            tunnel_down_cores: CoreUse::default(),
            tunnel_rtt: RttResult::default(),
            idle_tunnels: None,
            config: None,
            loads: Vec::new(),
        }
    }

    pub(crate) fn results(targets: Vec<TargetResults>) -> Results {
        Results {
            targets,
            floor: None,
            busy_polling: Vec::new(),
            reconfig: Vec::new(),
            translate: TranslateResult::default(),
            nofile_limit: 0,
            figure_seconds: 1,
        }
    }

    #[test]
    fn a_kernel_time_above_haproxys_budget_is_said_to_leave_nothing() {
        // HAProxy at 40,000 req/s allows 25 µs; switchyard's kernel takes 26.
        let lines = time_budget(&results(vec![
            measured(Kind::Switchyard, 31_250.0, 6.0, 26.0),
            measured(Kind::Nginx, 31_250.0, 5.0, 27.0),
            measured(Kind::Haproxy, 40_000.0, 4.0, 21.0),
        ]));
        let line = &lines[0];
        assert!(
            line.contains(
                "HAProxy's rate allows 25.0 µs, less than switchyard's kernel time alone."
            ),
            "{line}"
        );
        assert!(!line.contains("which leaves"), "{line}");
    }

    #[test]
    fn a_saturated_core_turns_the_rate_targets_into_cpu_per_request() {
        // 50,000 req/s at 20 µs each: the core is busy all the time.
        let lines = time_budget(&results(vec![
            measured(Kind::Switchyard, 50_000.0, 6.0, 14.0),
            measured(Kind::Nginx, 62_500.0, 3.0, 13.0),
            measured(Kind::Haproxy, 62_500.0, 4.0, 12.0),
        ]));
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert!(line.contains("core busy 100 % / 100 % / 100 %"), "{line}");
        // 1.2 × 62,500 req/s on a busy core is 13.3 µs per request.
        assert!(
            line.contains("1.2× nginx's rate allows 13.3 µs per request, less than switchyard's kernel time alone (14.0 µs"),
            "{line}"
        );
        // 62,500 req/s is 16.0 µs per request, 2.0 of them left for user space.
        assert!(
            line.contains("HAProxy's rate allows 16.0 µs, which leaves 2.0 µs"),
            "{line}"
        );
    }

    #[test]
    fn a_core_with_time_to_spare_is_not_given_a_budget() {
        let lines = time_budget(&results(vec![
            measured(Kind::Switchyard, 5_000.0, 20.0, 50.0),
            measured(Kind::Nginx, 6_000.0, 8.0, 42.0),
            measured(Kind::Haproxy, 6_000.0, 16.0, 50.0),
        ]));
        assert!(lines[0].contains("core busy 35 %"), "{}", lines[0]);
        assert!(
            lines[0].contains("The core is not the limit here"),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains("allows"), "{}", lines[0]);
    }

    /// A target whose tunnel moved `mb_s` both ways with these CPUs busy.
    fn tunnelled(kind: Kind, mb_s: f64, proxy: f64, generator: f64) -> TargetResults {
        let cores = CoreUse { proxy, generator };
        TargetResults {
            tunnel_up_mb_s: mb_s,
            tunnel_down_mb_s: mb_s,
            tunnel_up_cores: cores,
            tunnel_down_cores: cores,
            ..measured(kind, 0.0, 0.0, 0.0)
        }
    }

    #[test]
    fn a_full_generator_cpu_sets_the_tunnel_ceiling_from_its_cost_per_mb() {
        let lines = tunnel_limits(&results(vec![
            tunnelled(Kind::Direct, 3000.0, 0.0, 1.0),
            tunnelled(Kind::Switchyard, 2000.0, 0.45, 0.9),
            tunnelled(Kind::Haproxy, 1500.0, 0.6, 0.9),
        ]));
        assert_eq!(lines.len(), 2, "one line per direction");
        let line = &lines[0];
        assert!(
            line.starts_with("client→backend: switchyard's CPU busy 45 %, the generator's 90 %"),
            "{line}"
        );
        // 0.9 s of CPU per 2,000 MB is 450 µs per MB; direct 1 s per 3,000 MB.
        assert!(
            line.contains("spent 450 µs per MB through switchyard and 333 direct, haproxy 600."),
            "{line}"
        );
        // 2000 / 3000 = 0.67× with the generator's CPU 90 % busy: 0.74× at 100 %.
        assert!(line.contains("it would be 0.74×"), "{line}");
    }

    #[test]
    fn the_generators_cost_per_mb_through_the_floor_follows_the_proxies() {
        let mut results = results(vec![
            tunnelled(Kind::Direct, 3000.0, 0.0, 1.0),
            tunnelled(Kind::Switchyard, 2000.0, 0.45, 0.9),
        ]);
        let through = CoreUse {
            proxy: 0.4,
            generator: 0.95,
        };
        results.floor = Some(FloorResults {
            http: Vec::new(),
            tunnel_up_mb_s: 2500.0,
            tunnel_down_mb_s: 2500.0,
            tunnel_up_cores: through,
            tunnel_down_cores: through,
            loads: Vec::new(),
        });
        let lines = tunnel_limits(&results);
        // 0.95 s of the generator's CPU per 2,500 MB: 380 µs per MB.
        assert!(
            lines[0].contains("through switchyard and 333 direct, the floor 380."),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn websocket_sessions_name_the_full_cpu_and_the_proxy_cpu_per_session() {
        let sessions = |kind, per_second, proxy, generator, user_us| {
            let mut t = measured(kind, 1.0, 1.0, 1.0);
            t.websocket_sessions = RateResult {
                per_second,
                proxy_cpu: (kind != Kind::Direct).then_some(CpuPerRequest {
                    user_us,
                    kernel_us: 100.0,
                }),
                cores: CoreUse { proxy, generator },
                ..RateResult::default()
            };
            t
        };
        let results = results(vec![
            sessions(Kind::Direct, 7000.0, 0.0, 0.98, 0.0),
            sessions(Kind::Switchyard, 6000.0, 0.95, 0.8, 25.0),
            sessions(Kind::Nginx, 6500.0, 0.6, 0.7, 12.0),
            sessions(Kind::Haproxy, 6800.0, 0.93, 0.91, 19.0),
        ]);
        let lines = session_limits(&results);
        assert_eq!(
            lines,
            [
                "direct: 7000 sessions/s, no proxy, the generator's 98 %: the generator's CPU is the full one.",
                "switchyard: 6000 sessions/s, the proxy's CPU busy 95 %, the generator's 80 %: the proxy's CPU is the full one.",
                "nginx: 6500 sessions/s, the proxy's CPU busy 60 %, the generator's 70 %: neither CPU is full.",
                "haproxy: 6800 sessions/s, the proxy's CPU busy 93 %, the generator's 91 %: both CPUs are full.",
            ]
        );
        let context = Context {
            date: String::new(),
            machine: String::new(),
            versions: String::new(),
            command: String::new(),
            run_time: RunTime {
                before_measuring: None,
                measuring: Duration::from_secs(360),
            },
        };
        let report = markdown(&results, &context);
        assert!(
            report.contains(
                "| proxy CPU per WebSocket session, user (µs) | 25.0 | 12.0 | 19.0 | - | 2.08 | 1.32 | - |"
            ),
            "{report}"
        );
        assert!(report.contains("### What limits WebSocket sessions"));
        // The run's time is among the targets, not judged without its start.
        assert!(
            report.contains(
                "- not judged: the whole run within 15 minutes on 2 cores — the measurement \
                 took 6.0 minutes"
            ),
            "{report}"
        );
    }

    #[test]
    fn the_whole_run_is_judged_against_its_limit_only_when_its_start_is_known() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let run = |before: Option<u64>| {
            run_time_target(&RunTime {
                before_measuring: before.map(minutes),
                measuring: minutes(6),
            })
        };
        assert_eq!(
            run(Some(7)),
            "met: the whole run within 15 minutes on 2 cores — 13.0 minutes: \
             7.0 installing and building, 6.0 measuring"
        );
        assert!(
            run(Some(10)).starts_with("**missed**: the whole run within 15 minutes"),
            "{}",
            run(Some(10))
        );
        assert!(
            run(None).starts_with("not judged: the whole run within 15 minutes"),
            "{}",
            run(None)
        );
        assert!(run(None).contains("the measurement took 6.0 minutes"));
    }

    #[test]
    fn a_full_proxy_cpu_is_named_as_the_tunnel_limit() {
        let lines = tunnel_limits(&results(vec![
            tunnelled(Kind::Direct, 3000.0, 0.0, 1.0),
            tunnelled(Kind::Switchyard, 1000.0, 0.97, 0.5),
        ]));
        assert!(
            lines[0].contains("the proxy is the limit here"),
            "{}",
            lines[0]
        );
        assert!(!lines[0].contains("would be"), "{}", lines[0]);
    }
}

#[cfg(test)]
mod translate_tests {
    use super::*;

    #[test]
    fn a_disturbed_translation_says_so_and_how_many_were_timed() {
        let load = FigureLoad {
            figure: "translate".into(),
            load_average: 1.5,
            other_cores: 0.1,
            stolen_cores: 0.4,
            rounds: 1,
            measured_again: 1,
            spread: None,
        };
        let text = translate_load(&load);
        assert!(text.contains("the hypervisor 0.40 cores"), "{text}");
        assert!(text.contains("measured again"), "{text}");
        let quiet = FigureLoad {
            measured_again: 0,
            ..load
        };
        assert!(!translate_load(&quiet).contains("measured again"));
    }
}
