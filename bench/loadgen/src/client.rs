//! The load generator's clients: keep-alive HTTP load with latency
//! histograms, WebSocket handshakes, tunnel throughput and round trips,
//! and idle tunnels. Raw sockets and pre-built requests, so the generator
//! costs the shared core as little as possible; the same code drives every
//! proxy and the backend itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{discard, read_head};

/// Where to send load: an address and the Host header routes expect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpResult {
    pub concurrency: usize,
    pub body_bytes: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Request payload throughput, MB/s (bodies only).
    pub mb_per_s: f64,
    /// CPU the proxy spent per request, when a proxy was measured.
    pub proxy_cpu: Option<CpuPerRequest>,
    /// The latencies the percentiles are read from (corrected, see
    /// [`collect`]), for merging rounds.
    #[serde(skip)]
    pub latencies: Option<Histogram<u64>>,
}

impl HttpResult {
    /// Sets the percentiles from `latencies`.
    pub fn read_percentiles(&mut self, latencies: &Histogram<u64>) {
        self.p50_us = latencies.value_at_quantile(0.50);
        self.p99_us = latencies.value_at_quantile(0.99);
        self.p999_us = latencies.value_at_quantile(0.999);
    }
}

/// A proxy's CPU time per unit of work over one figure (a request, or a
/// WebSocket session), in user space and in the kernel (where loopback TCP
/// is processed, for the sender's side).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerRequest {
    pub user_us: f64,
    pub kernel_us: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// When a load stops: after a fixed time, or when a flag is raised.
#[derive(Clone)]
pub enum Until {
    Elapsed(Duration),
    Stopped(Arc<AtomicBool>),
}

impl Until {
    fn done(&self, start: Instant) -> bool {
        self.done_at(start, Instant::now())
    }

    fn done_at(&self, start: Instant, now: Instant) -> bool {
        match self {
            Until::Elapsed(d) => now.duration_since(start) >= *d,
            Until::Stopped(flag) => flag.load(Ordering::Relaxed),
        }
    }
}

/// How long a keep-alive figure runs: first `warm_up`, whose exchanges are
/// not counted, then `measure`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warm_up: Duration,
    pub measure: Duration,
}

/// The part of a keep-alive figure before its measured window: the
/// connections are opened and the proxy's backend connections made, so
/// that the figure is the steady state ([`connection_burst`] measures the
/// start on its own). The burst figure's 256 new connections get their
/// first responses within 10-70 ms, so a quarter of a second leaves the
/// start well behind. A longer warm-up only lengthens the run: the suite
/// waits it out about 180 times (every round of the keep-alive, body and
/// WebSocket session figures), so each 100 ms here is 18 s of it.
pub const WARM_UP: Duration = Duration::from_millis(250);

/// Keep-alive requests from `concurrency` connections: `GET /small`, or
/// `POST /upload` with a `body_bytes` body. `at_measure_start` runs when
/// the warm-up ends (to read CPU counters, say); rates and latencies are
/// of the measured window alone.
pub async fn http_load(
    target: &Target,
    concurrency: usize,
    window: Window,
    body_bytes: usize,
    at_measure_start: impl FnOnce(),
) -> HttpResult {
    let start = Instant::now();
    let measure_from = start + window.warm_up;
    let until = Until::Elapsed(window.warm_up + window.measure);
    let workers = spawn_load(target, concurrency, until, body_bytes, start, measure_from);
    tokio::time::sleep_until(measure_from.into()).await;
    at_measure_start();
    collect(workers, concurrency, body_bytes, measure_from).await
}

/// As [`http_load`] with no warm-up, for as long as `until` says. A failed
/// exchange counts as an error and the connection is opened again;
/// requests are not retried.
pub async fn http_load_until(
    target: &Target,
    concurrency: usize,
    until: Until,
    body_bytes: usize,
) -> HttpResult {
    let start = Instant::now();
    let workers = spawn_load(target, concurrency, until, body_bytes, start, start);
    collect(workers, concurrency, body_bytes, start).await
}

type Worker = tokio::task::JoinHandle<(Histogram<u64>, u64)>;

/// The load's connections, each sending requests from `start` until
/// `until`; exchanges started before `measure_from` are not counted.
fn spawn_load(
    target: &Target,
    concurrency: usize,
    until: Until,
    body_bytes: usize,
    start: Instant,
    measure_from: Instant,
) -> Vec<Worker> {
    let request: Arc<Vec<u8>> = Arc::new(if body_bytes == 0 {
        format!("GET /small HTTP/1.1\r\nHost: {}\r\n\r\n", target.host).into_bytes()
    } else {
        let mut r = format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {body_bytes}\r\n\r\n",
            target.host
        )
        .into_bytes();
        r.resize(r.len() + body_bytes, b'b');
        r
    });
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let request = request.clone();
        let addr = target.addr;
        let until = until.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut errors = 0u64;
            let mut buf = Vec::with_capacity(4096);
            let mut stream: Option<TcpStream> = None;
            while !until.done(start) {
                let conn = match stream.as_mut() {
                    Some(s) => s,
                    None => match TcpStream::connect(addr).await {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            stream.insert(s)
                        }
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let t0 = Instant::now();
                if until.done_at(start, t0) {
                    break;
                }
                let outcome = exchange(conn, &request, &mut buf).await;
                if t0 < measure_from {
                    // Warming up: neither counted nor timed.
                } else if outcome == Exchange::Failed {
                    errors += 1;
                } else {
                    latencies.saturating_record(t0.elapsed().as_micros() as u64);
                }
                if outcome != Exchange::Ok {
                    stream = None;
                    buf.clear();
                }
            }
            (latencies, errors)
        }));
    }
    workers
}

/// The workers' counts and latencies, as rates over the time since
/// `measured_from`.
async fn collect(
    workers: Vec<Worker>,
    concurrency: usize,
    body_bytes: usize,
    measured_from: Instant,
) -> HttpResult {
    let mut requests = 0;
    let mut corrected = histogram();
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await.expect("load worker");
        requests += h.len();
        add_corrected(&mut corrected, &h);
        errors += e;
    }
    let elapsed = measured_from.elapsed().as_secs_f64();
    let mut result = HttpResult {
        concurrency,
        body_bytes,
        requests,
        errors,
        rps: requests as f64 / elapsed,
        mb_per_s: (requests as f64 * body_bytes as f64) / elapsed / 1e6,
        ..HttpResult::default()
    };
    result.read_percentiles(&corrected);
    result.latencies = Some(corrected);
    result
}

/// Adds one connection's latencies to `all`, corrected for coordinated
/// omission. A connection sends its next request only once the answer is
/// in, so a stall also hides the requests it would have sent meanwhile:
/// they are added as HdrHistogram corrects for it, at the connection's
/// mean latency as the interval it kept. Without this, one 30 ms stall
/// among 40,000 requests over 64 connections is 64 samples and leaves p99
/// untouched.
fn add_corrected(all: &mut Histogram<u64>, connection: &Histogram<u64>) {
    let interval = connection.mean().round() as u64;
    all.add_correct(connection, interval)
        .expect("same histogram bounds");
}

/// First responses to a burst of new connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BurstResult {
    pub connections: usize,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// `connections` new connections opened at once, each sending one
/// request: the time from its connect to its complete response, as a
/// client arriving in a burst sees it. Run on a freshly started proxy, it
/// also times the proxy opening its backend connections.
pub async fn connection_burst(target: &Target, connections: usize) -> BurstResult {
    let request =
        Arc::new(format!("GET /small HTTP/1.1\r\nHost: {}\r\n\r\n", target.host).into_bytes());
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            let addr = target.addr;
            tokio::spawn(async move {
                let start = Instant::now();
                let mut stream = TcpStream::connect(addr).await.ok()?;
                let _ = stream.set_nodelay(true);
                let mut buf = Vec::new();
                let outcome = exchange(&mut stream, &request, &mut buf).await;
                (outcome != Exchange::Failed).then(|| start.elapsed())
            })
        })
        .collect();
    let mut latencies = histogram();
    let mut errors = 0;
    for client in clients {
        match client.await.expect("burst client") {
            Some(took) => latencies.saturating_record(took.as_micros() as u64),
            None => errors += 1,
        }
    }
    BurstResult {
        connections,
        errors,
        p50_us: latencies.value_at_quantile(0.50),
        p99_us: latencies.value_at_quantile(0.99),
        max_us: latencies.max(),
    }
}

/// How a keep-alive exchange ended.
#[derive(PartialEq)]
enum Exchange {
    /// A 200; the connection may carry the next request.
    Ok,
    /// A 200 with `Connection: close` (nginx after `keepalive_requests`):
    /// a success, and the next request needs a new connection.
    OkClosing,
    Failed,
}

/// One request and its 200 response on a keep-alive connection.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Exchange {
    if stream.write_all(request).await.is_err() {
        return Exchange::Failed;
    }
    match read_head(stream, buf).await {
        // A status line parses as method "HTTP/1.1", path "200".
        Ok(Some(head)) if head.method == "HTTP/1.1" && head.path == "200" => {
            match discard(stream, &head.rest, head.content_length).await {
                Ok(_) if head.close => Exchange::OkClosing,
                Ok(rest) => {
                    buf.extend_from_slice(&rest);
                    Exchange::Ok
                }
                Err(_) => Exchange::Failed,
            }
        }
        _ => Exchange::Failed,
    }
}

/// Opens a connection and upgrades it on `path`; returns the raw stream
/// and any tunnel bytes that arrived with the 101.
pub async fn upgrade_with_rest(
    target: &Target,
    path: &str,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(target.addr).await?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    match read_head(&mut stream, &mut buf).await? {
        Some(head) if head.path == "101" => Ok((stream, head.rest)),
        Some(head) => Err(std::io::Error::other(format!(
            "upgrade answered {}",
            head.path
        ))),
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// As [`upgrade_with_rest`], for tunnels where the backend speaks second.
pub async fn upgrade(target: &Target, path: &str) -> std::io::Result<TcpStream> {
    let (stream, rest) = upgrade_with_rest(target, path).await?;
    if !rest.is_empty() {
        return Err(std::io::Error::other(
            "unexpected bytes right after the 101",
        ));
    }
    Ok(stream)
}

/// A masked WebSocket text frame ("hello") and a masked close frame.
const FRAME: &[u8] = &[
    0x81,
    0x85,
    1,
    2,
    3,
    4,
    b'h' ^ 1,
    b'e' ^ 2,
    b'l' ^ 3,
    b'l' ^ 4,
    b'o' ^ 1,
];
const CLOSE: &[u8] = &[0x88, 0x80, 1, 2, 3, 4];

#[derive(Debug, Clone, Default, Serialize)]
pub struct RateResult {
    pub concurrency: usize,
    pub completed: u64,
    pub errors: u64,
    pub per_second: f64,
    /// The proxy's CPU per session (none for the backend reached
    /// directly), filled in by the suite.
    pub proxy_cpu: Option<CpuPerRequest>,
    /// How busy the proxy's and the generator's CPUs were, filled in by
    /// the suite: which of them set the pace.
    pub cores: crate::suite::CoreUse,
}

/// New WebSocket sessions per second: connect, 101, one message echoed,
/// close.
pub async fn ws_handshakes(target: &Target, concurrency: usize, duration: Duration) -> RateResult {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                match ws_session(&target).await {
                    Ok(()) => done += 1,
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let (mut completed, mut errors) = (0, 0);
    for w in workers {
        let (d, e) = w.await.expect("handshake worker");
        completed += d;
        errors += e;
    }
    RateResult {
        concurrency,
        completed,
        errors,
        per_second: completed as f64 / start.elapsed().as_secs_f64(),
        ..RateResult::default()
    }
}

async fn ws_session(target: &Target) -> std::io::Result<()> {
    let mut stream = upgrade(target, "/echo").await?;
    let mut back = [0u8; 16];
    stream.write_all(FRAME).await?;
    stream.read_exact(&mut back[..FRAME.len()]).await?;
    stream.write_all(CLOSE).await?;
    stream.read_exact(&mut back[..CLOSE.len()]).await?;
    stream.shutdown().await?;
    // Done once the proxy has closed its end too, cleanly: a reset or a
    // connection left open is not a completed session.
    let end = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut back)).await;
    match end {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(_)) => Err(std::io::Error::other("data after the close frame")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("the proxy kept the connection open")),
    }
}

/// Bytes moved through one tunnel in each direction.
pub const TUNNEL_BYTES: u64 = 512 * 1024 * 1024;

/// Client-to-backend tunnel throughput, MB/s.
pub async fn tunnel_upload(target: &Target) -> std::io::Result<f64> {
    let mut stream = upgrade(target, &format!("/sink?bytes={TUNNEL_BYTES}")).await?;
    let chunk = vec![b'u'; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < TUNNEL_BYTES {
        stream.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(std::io::Error::other(format!(
            "backend got {received} of {sent} bytes"
        )));
    }
    Ok(received as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// Backend-to-client tunnel throughput, MB/s.
pub async fn tunnel_download(target: &Target) -> std::io::Result<f64> {
    let start = Instant::now();
    let (mut stream, rest) =
        upgrade_with_rest(target, &format!("/source?bytes={TUNNEL_BYTES}")).await?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received = rest.len() as u64;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    if received != TUNNEL_BYTES {
        return Err(std::io::Error::other(format!(
            "got {received} of {TUNNEL_BYTES} bytes"
        )));
    }
    Ok(received as f64 / start.elapsed().as_secs_f64() / 1e6)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RttResult {
    pub round_trips: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Round trips of 64-byte messages through one tunnel.
pub async fn tunnel_rtt(target: &Target, round_trips: u64) -> std::io::Result<RttResult> {
    let mut stream = upgrade(target, "/echo").await?;
    let message = [b'r'; 64];
    let mut back = [0u8; 64];
    let mut latencies = histogram();
    for _ in 0..round_trips {
        let t0 = Instant::now();
        stream.write_all(&message).await?;
        stream.read_exact(&mut back).await?;
        latencies.saturating_record(t0.elapsed().as_micros() as u64);
    }
    Ok(RttResult {
        round_trips,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

/// Opens `count` idle tunnels (64 at a time) and returns them open; on a
/// failure, the tunnels opened so far and the error.
pub async fn open_idle_tunnels(
    target: &Target,
    count: usize,
) -> Result<Vec<TcpStream>, (Vec<TcpStream>, std::io::Error)> {
    let mut open = Vec::with_capacity(count);
    let mut failed = None;
    while open.len() < count && failed.is_none() {
        let batch = (count - open.len()).min(64);
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            let target = target.clone();
            tasks.push(tokio::spawn(async move { upgrade(&target, "/idle").await }));
        }
        for t in tasks {
            match t.await.expect("upgrade task") {
                Ok(stream) => open.push(stream),
                Err(e) => failed = Some(e),
            }
        }
    }
    match failed {
        None => Ok(open),
        Some(e) => Err((open, e)),
    }
}

/// How often [`wait_serving`] tries where a few milliseconds do not
/// matter.
pub const POLL: Duration = Duration::from_millis(5);

/// Waits until a plain request to `target` answers 200 (or `limit`
/// passes), trying `every` so often.
pub async fn wait_serving(target: &Target, limit: Duration, every: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let request = format!(
        "GET /small HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    );
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(target.addr).await {
            let mut buf = Vec::new();
            if exchange(&mut s, request.as_bytes(), &mut buf).await != Exchange::Failed {
                return true;
            }
        }
        tokio::time::sleep(every).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tokio::net::TcpListener;

    #[test]
    fn a_stall_counts_the_requests_it_kept_from_being_sent() {
        // One connection: 999 answers in 100 µs, one after a 30 ms stall.
        let mut connection = histogram();
        connection.record_n(100, 999).unwrap();
        connection.record(30_000).unwrap();
        assert_eq!(connection.value_at_quantile(0.99), 100, "raw: hidden");
        let mut all = histogram();
        add_corrected(&mut all, &connection);
        // At the ~130 µs it kept, the stall held back about 230 requests,
        // waiting from 30 ms down: a fifth of all, so p99 is in the stall.
        assert!(all.len() > 1_200, "{}", all.len());
        assert!(all.value_at_quantile(0.99) > 20_000);
        assert_eq!(all.value_at_quantile(0.50), 100, "the rest as it was");
    }

    /// A backend answering every request with a small 200, counting the
    /// requests it answered.
    async fn counting_backend() -> (Target, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            addr: listener.local_addr().unwrap(),
            host: "bench.test".into(),
        };
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Ok(Some(_)) = read_head(&mut stream, &mut buf).await {
                        count.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (target, answered)
    }

    #[tokio::test]
    async fn exchanges_of_the_warm_up_are_answered_but_not_counted() {
        let (target, answered) = counting_backend().await;
        let window = Window {
            warm_up: Duration::from_millis(200),
            measure: Duration::ZERO,
        };
        let mut warmed_up = false;
        let result = http_load(&target, 2, window, 0, || warmed_up = true).await;
        assert!(warmed_up, "the measured window was announced");
        assert!(
            answered.load(Ordering::SeqCst) > 0,
            "the warm-up sent requests"
        );
        assert_eq!(result.requests, 0, "none of them counted");
        assert_eq!(result.errors, 0);
    }

    #[tokio::test]
    async fn exchanges_of_the_measured_window_are_counted() {
        let (target, answered) = counting_backend().await;
        let window = Window {
            warm_up: Duration::ZERO,
            measure: Duration::from_millis(200),
        };
        let result = http_load(&target, 2, window, 0, || {}).await;
        assert!(result.requests > 0);
        assert_eq!(result.requests, answered.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_burst_times_one_request_on_each_new_connection() {
        let (target, answered) = counting_backend().await;
        let burst = connection_burst(&target, 8).await;
        assert_eq!(burst.connections, 8);
        assert_eq!(burst.errors, 0);
        assert_eq!(answered.load(Ordering::SeqCst), 8);
        assert!(burst.p50_us <= burst.max_us);
    }
}
