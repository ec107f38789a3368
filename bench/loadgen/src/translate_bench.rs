//! Translation at scale: 10,000 Ingresses with 10,000 Services and
//! EndpointSlices — parse, translate and compile times in process, and the
//! resident memory of a switchyard serving them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard::routes::{RouteTable, TranslateOptions, translate};
use switchyard::source::manifest;

use crate::suite::{DISTURBED_CORES, FigureLoad};
use crate::sysstat::{self, Disturbance};

pub const OBJECTS: usize = 10_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct TranslateResult {
    pub ingresses: usize,
    pub parse_ms: f64,
    /// Best of three, or of six when others disturbed the first three.
    pub translate_ms: f64,
    /// The load while the translations were timed (the last three's).
    pub load: Option<FigureLoad>,
    pub compile_ms: f64,
    pub routes: usize,
    pub warnings: usize,
    /// switchyard run on these manifests: spawn to serving, and its RSS.
    pub process_start_to_ready_ms: f64,
    pub process_rss_bytes: u64,
}

fn manifests(count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        text += &format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns{ns}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}\n  namespace: ns{ns}\n  labels: {{kubernetes.io/service-name: s{i}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"{ip}\"]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: i{i}, namespace: ns{ns}}}\nspec:\n  ingressClassName: switchyard\n  rules:\n  - host: h{i}.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {{service: {{name: s{i}, port: {{number: 80}}}}}}\n",
            ns = i % 100
        );
    }
    text
}

/// `ours`: the processes whose CPU is not a disturbance.
pub async fn run(
    switchyard: &Path,
    workdir: &Path,
    ours: Vec<u32>,
) -> anyhow::Result<TranslateResult> {
    let dir = workdir.join("translate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let text = manifests(OBJECTS);
    std::fs::write(dir.join("objects.yaml"), &text)?;

    let start = Instant::now();
    let snapshot = manifest::parse_snapshot(&text, Path::new("objects.yaml"))
        .map_err(|e| anyhow::anyhow!("generated manifests do not parse: {:?}", e.first()))?;
    let parse_ms = start.elapsed().as_secs_f64() * 1000.0;

    let options = TranslateOptions::default();
    let mut translate_ms = f64::MAX;
    let mut translation = None;
    let mut load = None;
    for again in 0..2 {
        let window = Disturbance::start(ours.clone());
        for _ in 0..3 {
            let start = Instant::now();
            let t = translate(&snapshot, &options);
            translate_ms = translate_ms.min(start.elapsed().as_secs_f64() * 1000.0);
            translation = Some(t);
        }
        let (other_cores, stolen_cores) = (window.others_cores(), window.stolen_cores());
        load = Some(FigureLoad {
            figure: "translate".into(),
            load_average: sysstat::load_average(),
            other_cores,
            stolen_cores,
            rounds: 1,
            measured_again: again,
            spread: None,
        });
        let taken = other_cores + stolen_cores;
        if taken <= DISTURBED_CORES {
            break;
        }
        if again == 0 {
            eprintln!("  translate: others took {taken:.2} cores; measuring again");
        }
    }
    let translation = translation.expect("translated");
    let warnings = translation.warnings.len();
    let start = Instant::now();
    let table = RouteTable::compile(translation.spec);
    let compile_ms = start.elapsed().as_secs_f64() * 1000.0;
    let routes = table.route_count();
    eprintln!(
        "  parse {parse_ms:.0} ms, translate {translate_ms:.1} ms, compile {compile_ms:.1} ms, {routes} routes, {warnings} warnings"
    );

    let spawned = Instant::now();
    let mut child = Command::new(switchyard)
        .arg("run")
        .arg("--manifests")
        .arg(&dir)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // The file source loads and translates before printing its first line.
    crate::targets::first_line(&mut child)?;
    let process_start_to_ready_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let process_rss_bytes = sysstat::rss_bytes(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "  switchyard with {OBJECTS} ingresses: ready in {process_start_to_ready_ms:.0} ms, RSS {} MiB",
        process_rss_bytes / (1 << 20)
    );
    Ok(TranslateResult {
        ingresses: OBJECTS,
        parse_ms,
        translate_ms,
        load,
        compile_ms,
        routes,
        warnings,
        process_start_to_ready_ms,
        process_rss_bytes,
    })
}
