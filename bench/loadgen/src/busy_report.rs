//! The report's busy-polling section: switchyard with `--busy-poll` and
//! HAProxy with `busy-polling` beside the main table's figures for the
//! same loads without it, and what the rate targets say with it on.

use std::fmt::Write as _;

use crate::client::HttpResult;
use crate::report::{TUNNEL_OVER_DIRECT, cell, num, rate_target, ratio_of};
use crate::suite::{BusyPolled, Results};
use crate::targets::{BUSY_POLL_WINDOW, Kind};

fn polled(results: &Results, kind: Kind) -> Option<&BusyPolled> {
    results.busy_polling.iter().find(|p| p.kind == kind)
}

/// The main table's keep-alive figure of `kind` at `concurrency`.
fn unpolled(results: &Results, kind: Kind, concurrency: usize) -> Option<&HttpResult> {
    let target = results.targets.iter().find(|t| t.kind == kind)?;
    target.http.iter().find(|h| h.concurrency == concurrency)
}

fn cpu_us(h: &HttpResult) -> Option<f64> {
    h.proxy_cpu.map(|c| c.user_us + c.kernel_us)
}

/// The section's markdown, or nothing when no proxy was busy-polled.
pub fn section(results: &Results) -> String {
    let mut out = String::new();
    let Some(sy) = polled(results, Kind::Switchyard) else {
        return out;
    };
    let ha = polled(results, Kind::Haproxy);
    let _ = writeln!(
        out,
        "### Busy polling\n\n\
         switchyard's `--busy-poll` (off by default) keeps its thread polling for I/O for a \
         short while after its last work instead of sleeping at once; HAProxy's \
         `busy-polling` never lets its poller wait. Both save the wake-up a sleeping proxy \
         needs for the next packet, which on a virtual machine is much of a round trip \
         when connections are few. Measured after the main figures, one proxy at a time \
         (HAProxy's poller keeps its core busy, which would slow another proxy there), \
         switchyard with `--busy-poll {BUSY_POLL_WINDOW}`; the columns without busy polling \
         are the main table's, and nginx has no such setting. CPU per request includes the \
         polling.\n"
    );
    let _ = writeln!(
        out,
        "| figure | switchyard busy-poll | HAProxy busy-polling | switchyard | nginx | HAProxy | busy-poll ÷ nginx | busy-poll ÷ HAProxy busy-polling | busy-poll ÷ switchyard |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let mut row = |name: String, values: [Option<f64>; 5]| {
        let [sy, ha, plain, nginx, haproxy] = values;
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(sy),
            cell(ha),
            cell(plain),
            cell(nginx),
            cell(haproxy),
            ratio_of(sy, nginx),
            ratio_of(sy, ha),
            ratio_of(sy, plain),
        );
    };
    for (i, h) in sy.http.iter().enumerate() {
        let c = h.concurrency;
        let ha = ha.and_then(|p| p.http.get(i));
        let plain = [Kind::Switchyard, Kind::Nginx, Kind::Haproxy].map(|k| unpolled(results, k, c));
        let figure = |f: &dyn Fn(&HttpResult) -> Option<f64>| {
            [Some(h), ha, plain[0], plain[1], plain[2]].map(|h| h.and_then(f))
        };
        row(
            format!("keep-alive, {c} conn: req/s"),
            figure(&|h| Some(h.rps)),
        );
        row(
            format!("latency p50 / {c} conn (µs)"),
            figure(&|h| Some(h.p50_us as f64)),
        );
        row(
            format!("latency p99 / {c} conn (µs)"),
            figure(&|h| Some(h.p99_us as f64)),
        );
        row(
            format!("proxy CPU per request / {c} conn, user + kernel (µs)"),
            figure(&cpu_us),
        );
    }
    let rtt = |kind: Kind, p99: bool| {
        let t = results.targets.iter().find(|t| t.kind == kind)?;
        Some(if p99 {
            t.tunnel_rtt.p99_us
        } else {
            t.tunnel_rtt.p50_us
        } as f64)
    };
    for (p99, name) in [(false, "p50"), (true, "p99")] {
        let busy = |p: &BusyPolled| {
            let r = &p.tunnel_rtt;
            Some(if p99 { r.p99_us } else { r.p50_us } as f64)
        };
        row(
            format!("tunnel round trip {name} (µs)"),
            [
                busy(sy),
                ha.and_then(busy),
                rtt(Kind::Switchyard, p99),
                rtt(Kind::Nginx, p99),
                rtt(Kind::Haproxy, p99),
            ],
        );
    }
    let unpolled_tunnel = |kind: Kind, way: usize| {
        let t = results.targets.iter().find(|t| t.kind == kind)?;
        Some([t.tunnel_up_mb_s, t.tunnel_down_mb_s][way])
    };
    for (way, name) in ["client→backend", "backend→client"].into_iter().enumerate() {
        row(
            format!("tunnel {name} (MB/s)"),
            [
                Some(sy.tunnel_mb_s[way]),
                ha.map(|p| p.tunnel_mb_s[way]),
                unpolled_tunnel(Kind::Switchyard, way),
                unpolled_tunnel(Kind::Nginx, way),
                unpolled_tunnel(Kind::Haproxy, way),
            ],
        );
    }
    row(
        "CPU with no traffic (cores)".into(),
        [
            Some(sy.idle_cores),
            ha.map(|p| p.idle_cores),
            None,
            None,
            None,
        ],
    );
    out.push('\n');
    out
}

/// The rate targets with busy polling on: switchyard's figures against
/// nginx's (which cannot busy-poll) and HAProxy's with `busy-polling`,
/// with the same test as the main table's targets; and the tunnel target
/// against the backend reached directly in the same rounds.
pub fn target_lines(results: &Results, mark: impl Fn(bool) -> &'static str) -> Vec<String> {
    let Some(sy) = polled(results, Kind::Switchyard) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    if let Some(ha) = polled(results, Kind::Haproxy) {
        lines.extend(rate_lines(results, sy, ha, &mark));
    }
    if let Some(direct) = sy.direct_tunnel_mb_s {
        let [up, down] = [0, 1].map(|way| sy.tunnel_mb_s[way] / direct[way]);
        lines.push(format!(
            "{}: the same with `--busy-poll {BUSY_POLL_WINDOW}`: tunnel throughput ≥ \
             {TUNNEL_OVER_DIRECT:.1}× direct — {up:.2}× up, {down:.2}× down (direct {} and {} \
             MB/s in the same rounds)",
            mark(up >= TUNNEL_OVER_DIRECT && down >= TUNNEL_OVER_DIRECT),
            num(direct[0]),
            num(direct[1]),
        ));
    }
    lines
}

fn rate_lines(
    results: &Results,
    sy: &BusyPolled,
    ha: &BusyPolled,
    mark: &impl Fn(bool) -> &'static str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (h, a) in sy.http.iter().zip(&ha.http) {
        let Some(n) = unpolled(results, Kind::Nginx, h.concurrency) else {
            continue;
        };
        lines.push(rate_target(
            &format!(
                "the same with `--busy-poll {BUSY_POLL_WINDOW}` (off by default) against HAProxy's `busy-polling`"
            ),
            [h, n, a],
            mark,
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{CpuPerRequest, RttResult};
    use crate::report::tests::{measured, results};
    use crate::suite::FigureLoad;

    /// `kind` busy-polled: one keep-alive figure at 16 connections.
    fn busy(kind: Kind, rps: f64, p99_us: u64) -> BusyPolled {
        BusyPolled {
            kind,
            http: vec![HttpResult {
                concurrency: 16,
                rps,
                p99_us,
                proxy_cpu: Some(CpuPerRequest {
                    user_us: 20.0,
                    kernel_us: 40.0,
                }),
                ..HttpResult::default()
            }],
            tunnel_rtt: RttResult::default(),
            tunnel_mb_s: [900.0, 800.0],
            direct_tunnel_mb_s: Some([1000.0, 1000.0]),
            direct_loads: Vec::new(),
            idle_cores: if kind == Kind::Haproxy { 1.0 } else { 0.0 },
            loads: Vec::new(),
        }
    }

    /// The main table's three proxies at 16 connections, without busy
    /// polling, with p99 `unpolled_p99_us` each.
    fn with_main_table(busy_polling: Vec<BusyPolled>, unpolled_p99_us: u64) -> Results {
        let mut results = results(vec![
            measured(Kind::Switchyard, 6000.0, 8.0, 50.0),
            measured(Kind::Nginx, 5000.0, 8.0, 50.0),
            measured(Kind::Haproxy, 4000.0, 8.0, 50.0),
        ]);
        for t in &mut results.targets {
            t.http[0].p99_us = unpolled_p99_us;
        }
        results.busy_polling = busy_polling;
        results
    }

    #[test]
    fn each_busy_polled_figure_sits_beside_the_same_figure_without_it() {
        let results = with_main_table(
            vec![
                busy(Kind::Switchyard, 15000.0, 90),
                busy(Kind::Haproxy, 12000.0, 95),
            ],
            200,
        );
        let section = section(&results);
        assert!(
            section.contains(
                "| keep-alive, 16 conn: req/s | 15000 | 12000 | 6000 | 5000 | 4000 | 3.00 | 1.25 | 2.50 |"
            ),
            "{section}"
        );
        assert!(section.contains(
            "| proxy CPU per request / 16 conn, user + kernel (µs) | 60.0 | 60.0 | 58.0 | 58.0 | 58.0 |"
        ));
        assert!(section.contains("| CPU with no traffic (cores) | 0.0 | 1.0 | - | - | - |"));
    }

    #[test]
    fn the_rate_target_with_busy_polling_is_met_only_with_p99_no_worse() {
        let mark = |ok: bool| if ok { "met" } else { "missed" };
        let ahead = with_main_table(
            vec![
                busy(Kind::Switchyard, 15000.0, 90),
                busy(Kind::Haproxy, 12000.0, 95),
            ],
            200,
        );
        let lines = target_lines(&ahead, mark);
        assert_eq!(lines.len(), 2, "a rate line and the tunnel line: {lines:?}");
        assert!(lines[0].starts_with("met:"), "{}", lines[0]);
        let slower_tail = with_main_table(
            vec![
                busy(Kind::Switchyard, 15000.0, 120),
                busy(Kind::Haproxy, 12000.0, 95),
            ],
            200,
        );
        assert!(target_lines(&slower_tail, mark)[0].starts_with("missed:"));
    }

    #[test]
    fn busy_polled_tunnels_are_held_to_direct_from_the_same_rounds() {
        let mark = |ok: bool| if ok { "met" } else { "missed" };
        let mut sy = busy(Kind::Switchyard, 15000.0, 90);
        let mut results = with_main_table(vec![sy.clone(), busy(Kind::Haproxy, 12000.0, 95)], 200);
        for t in &mut results.targets {
            (t.tunnel_up_mb_s, t.tunnel_down_mb_s) = (700.0, 600.0);
        }
        let section = section(&results);
        assert!(
            section.contains(
                "| tunnel client→backend (MB/s) | 900 | 900 | 700 | 700 | 700 | 1.29 | 1.00 | 1.29 |"
            ),
            "{section}"
        );
        assert!(section.contains("| tunnel backend→client (MB/s) | 800 | 800 | 600 |"));
        let tunnel = |results: &Results| target_lines(results, mark).pop().unwrap();
        // 900 and 800 of direct's 1000: up reaches 0.9×, down does not.
        let line = tunnel(&results);
        assert!(line.starts_with("missed: the same with"), "{line}");
        assert!(
            line.contains("0.90× up, 0.80× down (direct 1000 and 1000 MB/s in the same rounds)"),
            "{line}"
        );
        sy.tunnel_mb_s = [950.0, 900.0];
        assert!(tunnel(&with_main_table(vec![sy.clone()], 200)).starts_with("met:"));
        // Without direct in the rounds there is nothing to hold them to.
        sy.direct_tunnel_mb_s = None;
        assert!(target_lines(&with_main_table(vec![sy], 200), mark).is_empty());
    }

    #[test]
    fn the_load_table_has_the_busy_polled_rounds_and_the_direct_ones_beside_them() {
        let load = |figure: &str, stolen_cores: f64| FigureLoad {
            figure: figure.into(),
            load_average: 1.5,
            other_cores: 0.0,
            stolen_cores,
            rounds: 5,
            measured_again: 0,
            spread: Some(1.25),
        };
        let mut sy = busy(Kind::Switchyard, 15000.0, 90);
        sy.loads = vec![load("tunnel up", 0.02)];
        sy.direct_loads = vec![load("tunnel up", 0.3)];
        let mut out = String::new();
        crate::report::load_table(&with_main_table(vec![sy], 200), &mut out);
        assert!(
            out.contains(
                "| switchyard busy-poll | tunnel up | 5 | 1.25 | 1.50 | 0.00 | 0.02 | 0 |"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                "| direct beside switchyard busy-poll | tunnel up | 5 | 1.25 | 1.50 | 0.00 | 0.30 | 0 |"
            ),
            "{out}"
        );
    }

    #[test]
    fn without_busy_polled_figures_there_is_no_section_and_no_target() {
        let results = with_main_table(Vec::new(), 200);
        assert_eq!(section(&results), "");
        assert!(target_lines(&results, |_| "met").is_empty());
    }
}
