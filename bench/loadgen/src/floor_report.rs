//! The report's floor section: what a forwarder that does nothing but pass
//! bytes on ([`crate::floor`]) reached in the same rounds as the proxies,
//! and what that says of the targets. A ratio the floor itself does not
//! reach is out of any proxy's reach on this machine: whatever a proxy
//! does beyond passing bytes on only adds to the floor's cost.

use std::fmt::Write as _;

use crate::client::HttpResult;
use crate::report::{
    RATE_OVER_HAPROXY, RATE_OVER_NGINX, TUNNEL_OVER_DIRECT, cell, ratio_of, target,
};
use crate::suite::{FloorResults, Results, TargetResults};
use crate::targets::Kind;

fn at(http: &[HttpResult], concurrency: usize) -> Option<&HttpResult> {
    http.iter().find(|h| h.concurrency == concurrency)
}

/// One row: the floor's figure, each target's, the floor's ratios to
/// nginx, HAProxy and direct, and switchyard's to the floor.
fn row(
    out: &mut String,
    name: &str,
    floor: Option<f64>,
    results: &Results,
    value: impl Fn(&TargetResults) -> Option<f64>,
) {
    let get = |kind| target(results, kind).and_then(&value);
    let (sy, ng, ha, direct) = (
        get(Kind::Switchyard),
        get(Kind::Nginx),
        get(Kind::Haproxy),
        get(Kind::Direct),
    );
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        cell(floor),
        cell(sy),
        cell(ng),
        cell(ha),
        cell(direct),
        ratio_of(floor, ng),
        ratio_of(floor, ha),
        ratio_of(floor, direct),
        ratio_of(sy, floor),
    );
}

/// The section's markdown, or nothing when the floor was not measured.
pub fn section(results: &Results) -> String {
    let mut out = String::new();
    let Some(floor) = &results.floor else {
        return out;
    };
    let _ = writeln!(
        out,
        "\n### The floor\n\n\
         \"floor\" is `loadgen floor`: a forwarder that pairs each client connection with a \
         backend connection of its own and passes bytes between them, one read and one \
         write per readiness event, and does nothing else (no HTTP parsing, routing, pool, \
         timers or metrics). It ran pinned like the proxies and went round with them in the \
         keep-alive and tunnel throughput figures (not the burst: it connects to the backend \
         inline, one new client at a time). What it spends is almost all the \
         kernel's, which every proxy pays; a proxy's cost above it is its own work. So a \
         ratio the floor does not reach is out of any proxy's reach on this machine.\n"
    );
    let _ = writeln!(
        out,
        "| figure | floor | switchyard | nginx | HAProxy | direct | floor ÷ nginx | floor ÷ HAProxy | floor ÷ direct | switchyard ÷ floor |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let levels: Vec<usize> = floor.http.iter().map(|h| h.concurrency).collect();
    for &c in &levels {
        let http = |t: &TargetResults| at(&t.http, c).map(|h| h.rps);
        let own = at(&floor.http, c).map(|h| h.rps);
        row(
            &mut out,
            &format!("keep-alive, {c} conn: req/s"),
            own,
            results,
            http,
        );
    }
    for &c in &levels {
        let p99 = |t: &TargetResults| at(&t.http, c).map(|h| h.p99_us as f64);
        let own = at(&floor.http, c).map(|h| h.p99_us as f64);
        row(
            &mut out,
            &format!("latency p99 / {c} conn (µs)"),
            own,
            results,
            p99,
        );
    }
    for &c in &levels {
        for kernel in [false, true] {
            let part = |h: &HttpResult| {
                let cpu = h.proxy_cpu?;
                Some(if kernel { cpu.kernel_us } else { cpu.user_us })
            };
            let name = format!(
                "proxy CPU per request / {c} conn, {} (µs)",
                if kernel { "kernel" } else { "user" }
            );
            let own = at(&floor.http, c).and_then(part);
            row(&mut out, &name, own, results, |t| {
                at(&t.http, c).and_then(part)
            });
        }
    }
    row(
        &mut out,
        "tunnel client→backend (MB/s)",
        Some(floor.tunnel_up_mb_s),
        results,
        |t| Some(t.tunnel_up_mb_s),
    );
    row(
        &mut out,
        "tunnel backend→client (MB/s)",
        Some(floor.tunnel_down_mb_s),
        results,
        |t| Some(t.tunnel_down_mb_s),
    );
    out.push('\n');
    for line in reach(results, floor) {
        let _ = writeln!(out, "- {line}");
    }
    out
}

/// Whether the targets are within the floor's reach, figure by figure.
fn reach(results: &Results, floor: &FloorResults) -> Vec<String> {
    let mut lines = Vec::new();
    let within = |ok: bool| {
        if ok {
            "within the floor's reach"
        } else {
            "beyond even the floor"
        }
    };
    if let (Some(ng), Some(ha)) = (target(results, Kind::Nginx), target(results, Kind::Haproxy)) {
        for own in &floor.http {
            let c = own.concurrency;
            let (Some(n), Some(a)) = (at(&ng.http, c), at(&ha.http, c)) else {
                continue;
            };
            let (over_n, over_a) = (own.rps / n.rps, own.rps / a.rps);
            lines.push(format!(
                "{c} connection{}: the floor served {over_n:.2}× nginx's rate and {over_a:.2}× HAProxy's; \
                 the rate target ({RATE_OVER_NGINX:.1}× nginx's and {RATE_OVER_HAPROXY:.1}× HAProxy's) is {}.",
                if c == 1 { "" } else { "s" },
                within(over_n >= RATE_OVER_NGINX && over_a >= RATE_OVER_HAPROXY),
            ));
        }
    }
    if let Some(direct) = target(results, Kind::Direct) {
        let up = floor.tunnel_up_mb_s / direct.tunnel_up_mb_s;
        let down = floor.tunnel_down_mb_s / direct.tunnel_down_mb_s;
        lines.push(format!(
            "Tunnels: the floor moved {up:.2}× as much as the backend reached directly client to \
             backend and {down:.2}× backend to client; the tunnel target ({TUNNEL_OVER_DIRECT:.1}×) \
             is {}.",
            within(up >= TUNNEL_OVER_DIRECT && down >= TUNNEL_OVER_DIRECT),
        ));
    }
    lines
}

/// For the targets list, after a rate target's line: what the floor
/// reached of the same ratios at `concurrency`.
pub fn rate_note(results: &Results, concurrency: usize) -> String {
    let floor = results
        .floor
        .as_ref()
        .and_then(|f| at(&f.http, concurrency));
    let ng = target(results, Kind::Nginx).and_then(|t| at(&t.http, concurrency));
    let ha = target(results, Kind::Haproxy).and_then(|t| at(&t.http, concurrency));
    match (floor, ng, ha) {
        (Some(f), Some(n), Some(a)) => format!(
            " (the floor: {:.2}× nginx, {:.2}× HAProxy)",
            f.rps / n.rps,
            f.rps / a.rps
        ),
        _ => String::new(),
    }
}

/// For the targets list, after the tunnel target's line.
pub fn tunnel_note(results: &Results) -> String {
    match (&results.floor, target(results, Kind::Direct)) {
        (Some(f), Some(d)) => format!(
            " (the floor: {:.2}× up, {:.2}× down)",
            f.tunnel_up_mb_s / d.tunnel_up_mb_s,
            f.tunnel_down_mb_s / d.tunnel_down_mb_s
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::CpuPerRequest;
    use crate::report::tests::{measured, results};
    use crate::suite::{CoreUse, FigureLoad};

    /// A floor with one keep-alive figure at 16 connections and the
    /// given tunnel throughput.
    fn floor(rps: f64, up: f64, down: f64) -> FloorResults {
        FloorResults {
            http: vec![HttpResult {
                concurrency: 16,
                rps,
                proxy_cpu: Some(CpuPerRequest {
                    user_us: 0.3,
                    kernel_us: 13.0,
                }),
                ..HttpResult::default()
            }],
            tunnel_up_mb_s: up,
            tunnel_down_mb_s: down,
            tunnel_up_cores: CoreUse::default(),
            tunnel_down_cores: CoreUse::default(),
            loads: Vec::new(),
        }
    }

    /// The three proxies and direct at 16 connections (nginx 50,000 and
    /// HAProxy 52,000 requests a second; direct tunnels 2,000 MB/s each
    /// way) with `floor`.
    fn with_floor(floor: Option<FloorResults>) -> Results {
        let mut direct = measured(Kind::Direct, 64_000.0, 0.0, 0.0);
        direct.tunnel_up_mb_s = 2000.0;
        direct.tunnel_down_mb_s = 2000.0;
        let mut results = results(vec![
            measured(Kind::Switchyard, 51_000.0, 4.5, 14.0),
            measured(Kind::Nginx, 50_000.0, 4.0, 15.0),
            measured(Kind::Haproxy, 52_000.0, 4.2, 14.5),
            direct,
        ]);
        results.floor = floor;
        results
    }

    #[test]
    fn without_the_floor_there_is_no_section_and_no_notes() {
        let results = with_floor(None);
        assert_eq!(section(&results), "");
        assert_eq!(rate_note(&results, 16), "");
        assert_eq!(tunnel_note(&results), "");
    }

    #[test]
    fn a_rate_the_floor_does_not_reach_is_beyond_any_proxy() {
        // 55,000 is 1.10× nginx's 50,000: short of 1.2×.
        let results = with_floor(Some(floor(55_000.0, 1500.0, 1900.0)));
        let text = section(&results);
        assert!(
            text.contains(
                "16 connections: the floor served 1.10× nginx's rate and 1.06× HAProxy's; \
                 the rate target (1.2× nginx's and 1.0× HAProxy's) is beyond even the floor."
            ),
            "{text}"
        );
        assert_eq!(
            rate_note(&results, 16),
            " (the floor: 1.10× nginx, 1.06× HAProxy)"
        );
        // 1,500 and 1,900 of direct's 2,000: 0.75× and 0.95×.
        assert!(
            text.contains("0.75× as much as the backend reached directly client to backend and 0.95× backend to client; the tunnel target (0.9×) is beyond even the floor."),
            "{text}"
        );
        assert_eq!(tunnel_note(&results), " (the floor: 0.75× up, 0.95× down)");
    }

    #[test]
    fn a_rate_the_floor_reaches_is_said_to_be_within_it() {
        let results = with_floor(Some(floor(65_000.0, 1900.0, 1900.0)));
        let text = section(&results);
        assert!(
            text.contains("1.30× nginx's rate and 1.25× HAProxy's; the rate target (1.2× nginx's and 1.0× HAProxy's) is within the floor's reach."),
            "{text}"
        );
        assert!(
            text.contains("the tunnel target (0.9×) is within the floor's reach."),
            "{text}"
        );
    }

    #[test]
    fn the_table_sets_the_floor_beside_each_target_with_its_ratios() {
        let results = with_floor(Some(floor(65_000.0, 1000.0, 1500.0)));
        let text = section(&results);
        // floor, switchyard, nginx, HAProxy, direct; floor ÷ nginx,
        // ÷ HAProxy, ÷ direct; switchyard ÷ floor.
        assert!(
            text.contains(
                "| keep-alive, 16 conn: req/s | 65000 | 51000 | 50000 | 52000 | 64000 | 1.30 | 1.25 | 1.02 | 0.78 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| proxy CPU per request / 16 conn, user (µs) | 0.3 | 4.5 | 4.0 | 4.2 | 0.0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| tunnel client→backend (MB/s) | 1000 | 0.0 | 0.0 | 0.0 | 2000 | - | - | 0.50 | 0.00 |"),
            "{text}"
        );
        // The floor connects to the backend one new client at a time: its
        // burst would be no floor, and the table has none.
        assert!(!text.contains("| burst of"), "{text}");
    }

    #[test]
    fn the_load_table_has_the_floors_rounds() {
        let mut own = floor(65_000.0, 1000.0, 1500.0);
        own.loads = vec![FigureLoad {
            figure: "http c=16".into(),
            load_average: 1.5,
            other_cores: 0.01,
            stolen_cores: 0.02,
            rounds: 5,
            measured_again: 1,
            spread: Some(1.25),
        }];
        let mut out = String::new();
        crate::report::load_table(&with_floor(Some(own)), &mut out);
        assert!(
            out.contains("| floor | http c=16 | 5 | 1.25 | 1.50 | 0.01 | 0.02 | 1 |"),
            "{out}"
        );
    }
}
