//! `loadgen soak`: a long run of switchyard under mixed, messy load, to find
//! leaks. `scripts/soak.sh` builds the release binaries and runs it.
//!
//! Two benchmark backends are started: `stable` stays up for the whole run,
//! `flaky` is killed every 20 s and restarted on the same address 2 s
//! later. Two hosts are routed: `stable.soak` to the stable backend only,
//! `mixed.soak` to both. For the duration:
//!
//! - keep-alive `GET /small` load on both hosts;
//! - WebSocket tunnels on both hosts, each opened, used for one echo round
//!   trip, held a moment and closed (every fourth by a TCP reset);
//! - clients that send a request (or half of one) and reset the
//!   connection without reading the answer;
//! - uploads to `stable.soak` on keep-alive connections: `Content-Length`
//!   bodies from none to 1 MB, each with a `GET` pipelined behind it (a
//!   body read a byte short or long would garble that answer), and every
//!   eighth cut off mid-body by a reset;
//! - the manifest rewritten every 3 s (an annotation value flips, an extra
//!   host comes and goes: each is a route-table swap).
//!
//! Every 5 s it samples the proxy's RSS and open descriptors (/proc) and
//! `switchyard_tunnels_active` and the error counters (/metrics) into a CSV
//! and, at the end, a PNG. It fails when, after the warm-up, RSS grows more
//! than max(20 %, 16 MiB) or descriptors more than 64 above the level at the
//! end of the warm-up, or when anything to `stable.soak` was lost.
//!
//! What counts as lost: a request or upload to `stable.soak` that did not
//! get a 200, or a tunnel to it that did not get its 101 and its echo. Nothing on that
//! path depends on the flaky backend, so none of these may fail. On
//! `mixed.soak`, a `GET` without a body is retried on the other endpoint
//! when the flaky one refuses or resets before the response head, so most
//! survive a kill; a response cut off mid-body by the kill cannot be retried
//! (its head was already relayed), and tunnels to the killed backend die
//! with it: those failures are counted and reported, not failed on.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{HttpResult, POLL, Target, Until, http_load_until, upgrade, wait_serving};
use crate::{backend, chart, report, suite, sysstat};

pub struct Settings {
    pub switchyard: PathBuf,
    pub seconds: u64,
    pub warmup: u64,
    pub csv: PathBuf,
    pub png: PathBuf,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const KILL_EVERY: Duration = Duration::from_secs(20);
const DOWN_FOR: Duration = Duration::from_secs(2);
const REWRITE_EVERY: Duration = Duration::from_secs(3);
const RSS_GROWTH_FRACTION: f64 = 0.20;
const RSS_GROWTH_FLOOR: u64 = 16 << 20;
const FD_GROWTH: u64 = 64;

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command`; it dies with us even if we are killed (PDEATHSIG).
fn spawn(mut command: Command) -> anyhow::Result<(Proc, String)> {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning a child")?;
    let line = crate::targets::first_line(&mut child)?;
    Ok((Proc(child), line))
}

fn start_backend(addr: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["backend", "--addr", &addr.to_string()]);
    let (proc, line) = spawn(command)?;
    let addr = suite::parse_listening(&line).context("backend printed no address")?;
    Ok((proc, addr))
}

fn service(name: &str, backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: soak}}\nspec:\n  ports: [{{name: http, port: 80}}]\n"
    );
    for (i, addr) in backends.iter().enumerate() {
        let _ = write!(
            yaml,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: soak\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n",
            addr.port(),
            addr.ip()
        );
    }
    yaml
}

fn ingress(name: &str, hosts: &[String], service: &str, protocols: &str) -> String {
    let mut rules = String::new();
    for host in hosts {
        let _ = write!(
            rules,
            "  - host: {host}\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n"
        );
    }
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: soak\n  annotations:\n    switchyard.dev/upgrade-protocols: \"{protocols}\"\nspec:\n  ingressClassName: switchyard\n  rules:\n{rules}"
    )
}

/// The manifest of generation `n`: the annotation flips and an extra host
/// (one of five) comes and goes, so that each rewrite is a swap.
fn manifest(stable: SocketAddr, flaky: SocketAddr, n: u64) -> String {
    let protocols = if n.is_multiple_of(2) {
        "websocket"
    } else {
        "websocket, h2c"
    };
    let mut stable_hosts = vec!["stable.soak".to_string()];
    if !n.is_multiple_of(3) {
        stable_hosts.push(format!("extra-{}.soak", n % 5));
    }
    service("stable", &[stable])
        + &service("mixed", &[stable, flaky])
        + &ingress("stable", &stable_hosts, "stable", protocols)
        + &ingress("mixed", &["mixed.soak".to_string()], "mixed", protocols)
}

#[derive(Default)]
struct Counters {
    tunnels_ok: AtomicU64,
    tunnels_failed: AtomicU64,
    resets: AtomicU64,
    uploads_ok: AtomicU64,
    uploads_failed: AtomicU64,
}

/// The body sizes uploads go round: none, a few bytes, within one read,
/// over many reads, and an odd size over a megabyte's worth of reads.
const UPLOAD_SIZES: [usize; 7] = [0, 1, 100, 4096, 65_536, 262_144, 1_000_003];

/// Uploads to `target` until `stop`, on a keep-alive connection: each
/// `POST /upload` goes out with a `GET /small` behind it in the same
/// write, and both answers must be 200s of the backend's lengths. Every
/// eighth upload is cut off mid-body by a reset instead (a client gone
/// mid-upload), and the next one opens a new connection.
async fn upload_loop(target: Target, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let body = vec![b'u'; UPLOAD_SIZES[UPLOAD_SIZES.len() - 1]];
    let mut stream: Option<TcpStream> = None;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let size = UPLOAD_SIZES[n % UPLOAD_SIZES.len()];
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {size}\r\n\r\n",
            target.host
        );
        let result = async {
            let conn = match stream.as_mut() {
                Some(conn) => conn,
                None => stream.insert(TcpStream::connect(target.addr).await?),
            };
            if n.is_multiple_of(8) && size > 1 {
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(&body[..size / 2]).await?;
                conn.set_zero_linger()?;
                stream = None;
                counters.resets.fetch_add(1, Ordering::Relaxed);
                return Ok(false);
            }
            let mut wire = head.into_bytes();
            wire.extend_from_slice(&body[..size]);
            wire.extend_from_slice(
                format!("GET /small HTTP/1.1\r\nHost: {}\r\n\r\n", target.host).as_bytes(),
            );
            conn.write_all(&wire).await?;
            let answers = async {
                let mut buf = Vec::new();
                for expected in [2, 64] {
                    let Some(answer) = backend::read_head(conn, &mut buf).await? else {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    };
                    if answer.path != "200" || answer.content_length != expected {
                        return Err(std::io::Error::other(format!(
                            "answer {} with {} bytes, wanted 200 with {expected}",
                            answer.path, answer.content_length
                        )));
                    }
                    let rest = backend::discard(conn, &answer.rest, expected).await?;
                    buf.extend_from_slice(&rest);
                }
                if buf.is_empty() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("bytes after the answers"))
                }
            };
            tokio::time::timeout(Duration::from_secs(10), answers)
                .await
                .map_err(|_| std::io::Error::other("answers timed out"))??;
            Ok::<_, std::io::Error>(true)
        }
        .await;
        match result {
            Ok(true) => {
                counters.uploads_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!(
                    "soak: upload of {size} bytes to {} failed: {e}",
                    target.host
                );
                stream = None;
                counters.uploads_failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens tunnels to `target` one after the other until `stop`: each one
/// echoes a few bytes, is held a moment and closed (every fourth reset).
async fn tunnel_loop(target: Target, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let result = async {
            let mut stream = upgrade(&target, "/echo").await?;
            stream.write_all(b"ping-soak").await?;
            let mut buf = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::other("echo timed out"))??;
            if &buf != b"ping-soak" {
                return Err(std::io::Error::other("wrong echo"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if n.is_multiple_of(4) {
                stream.set_zero_linger()?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        match result {
            Ok(()) => counters.tunnels_ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                counters.tunnels_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Clients that send a request (or half a head) and reset the connection
/// without reading the answer.
async fn reset_loop(proxy: SocketAddr, stop: Arc<AtomicBool>, counters: Arc<Counters>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Ok(mut stream) = TcpStream::connect(proxy).await {
            let request: &[u8] = if n.is_multiple_of(2) {
                b"GET /small HTTP/1.1\r\nHost: stable.soak\r\n\r\n"
            } else {
                b"GET /small HTTP/1.1\r\nHost: mix"
            };
            let _ = stream.write_all(request).await;
            let _ = stream.set_zero_linger();
            drop(stream);
            counters.resets.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /metrics` from the admin listener.
async fn metrics(admin: SocketAddr) -> String {
    let fetch = async {
        let mut stream = TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&all).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// Sum of every sample of `name` whose label text contains `filter`.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains(filter))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>()
        // An empty sum is -0.0.
        + 0.0
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    rss: u64,
    fds: u64,
    tunnels_active: f64,
    tunnel_errors: f64,
    connect_errors: f64,
    responses_5xx: f64,
    swaps: f64,
    tunnels_ok: u64,
    tunnels_failed: u64,
}

const CSV_HEADER: &str = "seconds,rss_bytes,open_fds,tunnels_active,tunnel_errors_total,upstream_connect_errors_total,responses_5xx_total,route_table_swaps_total,tunnels_ok,tunnels_failed\n";

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{}\n",
            self.t,
            self.rss,
            self.fds,
            self.tunnels_active,
            self.tunnel_errors,
            self.connect_errors,
            self.responses_5xx,
            self.swaps,
            self.tunnels_ok,
            self.tunnels_failed
        )
    }
}

pub fn run(settings: &Settings, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    sysstat::raise_nofile_limit();
    let (stable_proc, stable) = start_backend("127.0.0.1:0".parse()?)?;
    let (flaky_proc, flaky) = start_backend("127.0.0.1:0".parse()?)?;
    let dir = std::env::temp_dir().join(format!("switchyard-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let manifest_file = dir.join("soak.yaml");
    std::fs::write(&manifest_file, manifest(stable, flaky, 0))?;

    let mut command = Command::new(&settings.switchyard);
    command.args(["run", "--manifests"]).arg(&dir).args([
        "--http-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--access-log",
        "false",
        "--log-level",
        "warn",
        // Short ejections, so that the flaky endpoint is tried again
        // soon after each restart.
        "--upstream-eject-backoff",
        "1s",
        "--upstream-eject-max-backoff",
        "4s",
    ]);
    let (proxy_proc, line) = spawn(command)?;
    let (http, admin) = line
        .trim()
        .strip_prefix("switchyard listening: ")
        .and_then(|rest| rest.split_once(' '))
        .context("switchyard printed no listening line")?;
    let http: SocketAddr = http.trim_start_matches("http=").parse()?;
    let admin: SocketAddr = admin.trim_start_matches("admin=").parse()?;
    let pid = proxy_proc.0.id();
    eprintln!(
        "soak: switchyard pid {pid} http={http} admin={admin}; backends stable={stable} flaky={flaky}; {} s, warm-up {} s",
        settings.seconds, settings.warmup
    );

    let result = runtime.block_on(drive(
        settings,
        http,
        admin,
        pid,
        stable,
        flaky,
        flaky_proc,
        &manifest_file,
    ));
    drop(proxy_proc);
    drop(stable_proc);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    settings: &Settings,
    http: SocketAddr,
    admin: SocketAddr,
    pid: u32,
    stable: SocketAddr,
    flaky: SocketAddr,
    flaky_proc: Proc,
    manifest_file: &Path,
) -> anyhow::Result<()> {
    let stable_target = Target {
        addr: http,
        host: "stable.soak".into(),
    };
    let mixed_target = Target {
        addr: http,
        host: "mixed.soak".into(),
    };
    if !wait_serving(&stable_target, Duration::from_secs(10), POLL).await
        || !wait_serving(&mixed_target, Duration::from_secs(10), POLL).await
    {
        bail!("switchyard does not serve the soak routes");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stable_counters = Arc::new(Counters::default());
    let mixed_counters = Arc::new(Counters::default());
    let until = Until::Stopped(stop.clone());
    let stable_load = tokio::spawn({
        let (t, u) = (stable_target.clone(), until.clone());
        async move { http_load_until(&t, 4, u, 0).await }
    });
    let mixed_load = tokio::spawn({
        let (t, u) = (mixed_target.clone(), until.clone());
        async move { http_load_until(&t, 4, u, 0).await }
    });
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(tunnel_loop(
            stable_target.clone(),
            stop.clone(),
            stable_counters.clone(),
        )));
        tasks.push(tokio::spawn(tunnel_loop(
            mixed_target.clone(),
            stop.clone(),
            mixed_counters.clone(),
        )));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(upload_loop(
            stable_target.clone(),
            stop.clone(),
            stable_counters.clone(),
        )));
    }
    tasks.push(tokio::spawn(reset_loop(
        http,
        stop.clone(),
        stable_counters.clone(),
    )));
    // The manifest changer.
    tasks.push(tokio::spawn({
        let stop = stop.clone();
        let file = manifest_file.to_path_buf();
        async move {
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(REWRITE_EVERY).await;
                generation += 1;
                let _ = std::fs::write(&file, manifest(stable, flaky, generation));
            }
        }
    }));
    // The backend killer: first kill after 10 s, then every 20 s.
    let killer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut proc = Some(flaky_proc);
            let mut kills = 0u64;
            let mut next = Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if Instant::now() < next {
                    continue;
                }
                drop(proc.take());
                kills += 1;
                tokio::time::sleep(DOWN_FOR).await;
                match start_backend(flaky) {
                    Ok((p, _)) => proc = Some(p),
                    Err(e) => eprintln!("soak: restarting the flaky backend failed: {e:#}"),
                }
                next = Instant::now() + KILL_EVERY;
            }
            drop(proc);
            kills
        }
    });

    let mut csv = String::from(CSV_HEADER);
    let mut samples = Vec::new();
    let start = Instant::now();
    let end = start + Duration::from_secs(settings.seconds);
    let mut next_sample = start;
    loop {
        tokio::time::sleep_until(next_sample.into()).await;
        let text = metrics(admin).await;
        let sample = Sample {
            t: start.elapsed().as_secs_f64(),
            rss: sysstat::rss_bytes(pid),
            fds: open_fds(pid),
            tunnels_active: metric(&text, "switchyard_tunnels_active", ""),
            tunnel_errors: metric(&text, "switchyard_tunnel_errors_total", ""),
            connect_errors: metric(&text, "switchyard_upstream_connect_errors_total", ""),
            responses_5xx: metric(&text, "switchyard_requests_total", "code_class=\"5xx\""),
            swaps: metric(&text, "switchyard_route_table_swaps_total", ""),
            tunnels_ok: stable_counters.tunnels_ok.load(Ordering::Relaxed)
                + mixed_counters.tunnels_ok.load(Ordering::Relaxed),
            tunnels_failed: stable_counters.tunnels_failed.load(Ordering::Relaxed)
                + mixed_counters.tunnels_failed.load(Ordering::Relaxed),
        };
        if sample.rss == 0 {
            bail!("switchyard (pid {pid}) is gone");
        }
        eprintln!(
            "soak: t={:>5.0}s rss={:>6.1} MiB fds={:>4} tunnels_active={:>3} tunnel_errors={} connect_errors={} 5xx={} swaps={}",
            sample.t,
            sample.rss as f64 / 1048576.0,
            sample.fds,
            sample.tunnels_active,
            sample.tunnel_errors,
            sample.connect_errors,
            sample.responses_5xx,
            sample.swaps
        );
        csv += &sample.csv();
        samples.push(sample);
        next_sample += SAMPLE_EVERY;
        if next_sample > end {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let stable_http: HttpResult = stable_load.await?;
    let mixed_http: HttpResult = mixed_load.await?;
    for t in tasks {
        let _ = t.await;
    }
    let kills = killer.await?;

    if let Some(parent) = settings.csv.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&settings.csv, csv)?;
    report::register_font()?;
    plot(&samples, settings.warmup as f64, &settings.png)?;

    eprintln!(
        "soak: stable.soak: {} requests, {} failed; {} uploads, {} failed; {} tunnels, {} failed",
        stable_http.requests,
        stable_http.errors,
        stable_counters.uploads_ok.load(Ordering::Relaxed),
        stable_counters.uploads_failed.load(Ordering::Relaxed),
        stable_counters.tunnels_ok.load(Ordering::Relaxed),
        stable_counters.tunnels_failed.load(Ordering::Relaxed)
    );
    eprintln!(
        "soak: mixed.soak (flaky backend killed {kills} times): {} requests, {} failed (allowed: cut off mid-response by a kill); {} tunnels, {} failed (allowed: to the killed backend)",
        mixed_http.requests,
        mixed_http.errors,
        mixed_counters.tunnels_ok.load(Ordering::Relaxed),
        mixed_counters.tunnels_failed.load(Ordering::Relaxed)
    );
    eprintln!(
        "soak: {} client resets; wrote {} and {}",
        stable_counters.resets.load(Ordering::Relaxed),
        settings.csv.display(),
        settings.png.display()
    );

    let mut failures = Vec::new();
    if stable_http.errors > 0 {
        failures.push(format!(
            "{} requests to stable.soak failed",
            stable_http.errors
        ));
    }
    let stable_tunnel_failures = stable_counters.tunnels_failed.load(Ordering::Relaxed);
    if stable_tunnel_failures > 0 {
        failures.push(format!(
            "{stable_tunnel_failures} tunnels to stable.soak failed"
        ));
    }
    let stable_upload_failures = stable_counters.uploads_failed.load(Ordering::Relaxed);
    if stable_upload_failures > 0 {
        failures.push(format!(
            "{stable_upload_failures} uploads to stable.soak failed"
        ));
    }
    if stable_http.requests == 0
        || mixed_http.requests == 0
        || stable_counters.uploads_ok.load(Ordering::Relaxed) == 0
    {
        failures.push("no load went through".into());
    }
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= settings.warmup as f64 - 0.5)
        .collect();
    match warm.split_first() {
        None => failures.push("the run ended before the warm-up did".into()),
        Some((base, rest)) => {
            let rss_limit =
                base.rss + ((base.rss as f64 * RSS_GROWTH_FRACTION) as u64).max(RSS_GROWTH_FLOOR);
            let fd_limit = base.fds + FD_GROWTH;
            let max_rss = rest.iter().map(|s| s.rss).max().unwrap_or(base.rss);
            let max_fds = rest.iter().map(|s| s.fds).max().unwrap_or(base.fds);
            eprintln!(
                "soak: after warm-up (t={:.0}s): RSS {:.1} MiB, at most {:.1} MiB later (limit {:.1}); fds {}, at most {} later (limit {fd_limit})",
                base.t,
                base.rss as f64 / 1048576.0,
                max_rss as f64 / 1048576.0,
                rss_limit as f64 / 1048576.0,
                base.fds,
                max_fds
            );
            if max_rss > rss_limit {
                failures.push(format!(
                    "RSS grew from {} to {} bytes (limit {rss_limit})",
                    base.rss, max_rss
                ));
            }
            if max_fds > fd_limit {
                failures.push(format!(
                    "open descriptors grew from {} to {max_fds} (limit {fd_limit})",
                    base.fds
                ));
            }
        }
    }
    if failures.is_empty() {
        eprintln!("soak: PASS");
        Ok(())
    } else {
        bail!("soak FAILED: {}", failures.join("; "))
    }
}

fn plot(samples: &[Sample], warmup: f64, file: &Path) -> anyhow::Result<()> {
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = BitMapBackend::new(file, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.t, s.rss as f64 / 1048576.0))
        .collect();
    let fds: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.fds as f64)).collect();
    let tunnels: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.tunnels_active)).collect();
    let max_rss = rss.iter().map(|p| p.1).fold(1.0, f64::max);

    let rss_frame = chart::Frame {
        y_headroom: 1.2,
        ..chart::Frame::new(
            "switchyard soak: resident memory (dashed: end of warm-up)",
            "seconds",
            "RSS (MiB)",
        )
    };
    let rss_line = chart::Line {
        name: None,
        color: BLUE,
        points: rss,
        marker: 0,
    };
    let mut chart = chart::lines(&top, &rss_frame, vec![rss_line])?;
    chart.draw_series(DashedLineSeries::new(
        [(warmup, 0.0), (warmup, max_rss * 1.2)],
        6,
        4,
        BLACK.into(),
    ))?;

    let count_frame = chart::Frame {
        y_headroom: 1.2,
        ..chart::Frame::new("open descriptors and active tunnels", "seconds", "count")
    };
    let count_lines = vec![
        chart::Line {
            name: Some("open fds".into()),
            color: RED,
            points: fds,
            marker: 0,
        },
        chart::Line {
            name: Some("switchyard_tunnels_active".into()),
            color: GREEN,
            points: tunnels,
            marker: 0,
        },
    ];
    chart::lines(&bottom, &count_frame, count_lines)?;
    root.present()?;
    Ok(())
}
