//! The binary as users run it: `check`, `routes`, and `run` with its file
//! watcher, admin endpoints, logs and graceful shutdown.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::backends;
use common::client::get;
use common::manifests::{dir_with, route, service};
use common::process::{BIN, Switchyard};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn switchyard(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits (up to 10 s) until `check` holds for the admin endpoint `path`.
async fn wait_admin(
    admin: std::net::SocketAddr,
    path: &str,
    check: impl Fn(u16, &str) -> bool,
) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let answer = get(admin, "admin", path, &[]).await;
        if check(answer.status.as_u16(), &answer.body) {
            return answer.body;
        }
        last = format!("{} {}", answer.status, answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never satisfied the check; last answer: {last}");
}

/// A WebSocket through the proxy at `http` to `/ws` on `host`.
async fn websocket(
    http: std::net::SocketAddr,
    host: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{http}/ws").into_client_request().unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

#[test]
fn help_documents_every_flag_of_the_contract() {
    let (code, help, _) = switchyard(&["run", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--manifests",
        "--http-addr",
        "--admin-addr",
        "--ingress-class",
        "--config",
        "--drain-timeout",
        "--watch-namespace",
        "--header-read-timeout",
        "--body-read-timeout",
        "--upstream-connect-timeout",
        "--upstream-response-timeout",
        "--tunnel-idle-timeout",
        "--max-connections",
        "--max-header-bytes",
        "--upstream-eject-after",
        "--upstream-eject-backoff",
        "--upstream-eject-max-backoff",
        "--max-connections-per-client",
        "--max-requests-per-client-per-second",
        "--client-request-burst",
        "--log-format",
        "--log-level",
        "--access-log",
        "--publish-service",
        "--publish-status-address",
        "--sync-debounce",
        "--election-id",
        "--metrics-addr",
        "--worker-threads",
        "--busy-poll",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
    for unbuilt in [
        "--https-addr",
        "--nginx-annotations",
        "--default-certificate",
    ] {
        assert!(
            !help.contains(unbuilt),
            "{unbuilt} is listed before it is built"
        );
    }
    for command in ["check", "routes"] {
        let (code, help, _) = switchyard(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(help.contains("--manifests") && help.contains("--output"));
    }
}

#[test]
fn check_passes_on_the_bundled_examples() {
    let (code, out, _) = switchyard(&["check", "--manifests", "examples/manifests"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 errors, 0 warnings, 2 routes"), "{out}");
}

#[test]
fn check_names_the_file_document_and_line_of_an_error_and_exits_1() {
    let dir = dir_with(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec:\n  ports:\n  - port: eighty\n",
    );
    let manifests = dir.path().to_str().unwrap();
    let (code, out, _) = switchyard(&["check", "--manifests", manifests]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.yaml: document 2 (line 5): Service: spec.ports[0].port"),
        "{out}"
    );

    let (code, json, _) = switchyard(&["check", "--manifests", manifests, "--output", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["errors"][0]["document"], 2);
    assert_eq!(report["errors"][0]["line"], 5);
}

#[test]
fn check_reports_warnings_but_exits_0() {
    let dir = dir_with(
        "ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\nspec:\n  ingressClassName: switchyard\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}\n",
    );
    let (code, out, _) = switchyard(&["check", "--manifests", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: Ingress shop/web: BackendNotFound: spec.rules[0].http.paths[0].backend.service: Service shop/missing not found"), "{out}");
}

#[test]
fn routes_prints_the_table_as_text_and_json() {
    let (code, text, _) = switchyard(&["routes", "--manifests", "examples/manifests"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("HOST"), "{text}");
    assert!(
        text.contains("echo.localhost")
            && text.contains("demo/echo:80")
            && text.contains("127.0.0.1:9000"),
        "{text}"
    );
    let (code, json, _) = switchyard(&[
        "routes",
        "--manifests",
        "examples/manifests",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0);
    let table: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(table["hosts"][0]["host"], "echo.localhost");
    assert_eq!(table["hosts"][0]["paths"][1]["pathType"], "Exact");
    assert_eq!(table["defaultBackend"]["backend"]["service"], "echo");
}

#[tokio::test]
async fn run_serves_watches_files_and_keeps_the_last_good_state() {
    let first = backends::echo("first").await;
    let second = backends::echo("second").await;
    let dir = dir_with(
        "first.yaml",
        route("first", "first.test", "/", &[first.addr]),
    );
    let proxy = Switchyard::start(dir.path(), &[]);

    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;
    assert_eq!(get(proxy.admin, "a", "/healthz", &[]).await.status, 200);
    assert_eq!(get(proxy.http, "first.test", "/", &[]).await.status, 200);

    // Reading the manifests is not a change: no reload without an edit
    // (file access events once made every reload trigger the next).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = get(proxy.admin, "a", "/metrics", &[]).await.body;
    assert_eq!(
        common::sample(&metrics, "switchyard_route_table_unchanged_total", &[]),
        0.0
    );
    assert_eq!(
        common::sample(&metrics, "switchyard_route_table_swaps_total", &[]),
        1.0
    );

    // A new file is picked up without a restart.
    let second_file = dir.path().join("second.yaml");
    std::fs::write(
        &second_file,
        route("second", "second.test", "/", &[second.addr]),
    )
    .unwrap();
    wait_admin(proxy.admin, "/routes", |_, body| {
        body.contains("second.test")
    })
    .await;
    let answer = get(proxy.http, "second.test", "/x", &[]).await;
    assert!(answer.body.starts_with("second\n"), "{}", answer.body);

    // A broken edit is reported and loses nothing.
    std::fs::write(&second_file, "apiVersion: v1\nkind: [broken\n").unwrap();
    wait_admin(proxy.admin, "/metrics", |_, body| {
        common::sample(
            body,
            "switchyard_source_errors_total",
            &[("kind", "manifest")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        get(proxy.http, "second.test", "/", &[]).await.status,
        200,
        "last good state stays in force"
    );
    wait_for_log(&proxy, "second.yaml: document 1").await;

    // Removing the file removes its routes.
    std::fs::remove_file(&second_file).unwrap();
    wait_admin(proxy.admin, "/routes", |_, body| {
        !body.contains("second.test")
    })
    .await;
    assert_eq!(get(proxy.http, "second.test", "/", &[]).await.status, 404);
}

#[tokio::test]
async fn a_relative_manifests_directory_is_watched_too() {
    let echo = backends::echo("late").await;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("m")).unwrap();
    let proxy = Switchyard::start_in(cwd.path(), Path::new("m"), &[]);
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;
    std::fs::write(
        cwd.path().join("m/late.yaml"),
        route("late", "late.test", "/", &[echo.addr]),
    )
    .unwrap();
    wait_admin(proxy.admin, "/routes", |_, body| body.contains("late.test")).await;
    assert_eq!(get(proxy.http, "late.test", "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_manifest_left_open_for_writing_keeps_serving_its_last_version() {
    let echo = backends::echo("echo").await;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("m")).unwrap();
    let file = cwd.path().join("m/r.yaml");
    std::fs::write(&file, route("r", "kept.test", "/", &[echo.addr])).unwrap();
    let proxy = Switchyard::start_in(cwd.path(), Path::new("m"), &[]);
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;

    // A slow writer truncates r.yaml and stalls; another file changes
    // beside it, and is served once the wait for the writer runs out.
    let text = route("r", "new.test", "/", &[echo.addr]);
    // The Service document alone parses: read now, the route would go.
    let (first, rest) = text.split_at(service("r", &[echo.addr]).len());
    let mut writer = std::fs::File::create(&file).unwrap();
    writer.write_all(first.as_bytes()).unwrap();
    let beside = route("b", "beside.test", "/", &[echo.addr]);
    std::fs::write(cwd.path().join("m/b.yaml"), beside).unwrap();
    wait_admin(proxy.admin, "/routes", |_, body| {
        body.contains("beside.test")
    })
    .await;
    assert_eq!(get(proxy.http, "kept.test", "/", &[]).await.status, 200);

    // Finished and closed: read as written.
    writer.write_all(rest.as_bytes()).unwrap();
    drop(writer);
    wait_admin(proxy.admin, "/routes", |_, body| body.contains("new.test")).await;
    assert_eq!(get(proxy.http, "kept.test", "/", &[]).await.status, 404);
}

#[tokio::test]
async fn metrics_output_passes_promtool() {
    let echo = backends::echo("echo").await;
    let dir = dir_with("r.yaml", route("r", "h", "/", &[echo.addr]));
    let proxy = Switchyard::start(dir.path(), &[]);
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;
    // Exercise request, upgrade and tunnel families so they have samples.
    assert_eq!(get(proxy.http, "h", "/", &[]).await.status, 200);
    assert_eq!(get(proxy.http, "nowhere", "/", &[]).await.status, 404);
    let mut ws = websocket(proxy.http, "h").await;
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);

    let metrics = wait_admin(proxy.admin, "/metrics", |_, body| {
        body.contains("switchyard_tunnel_closes_total{")
    })
    .await;
    for family in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_upgrades_total",
        "switchyard_tunnels_active",
        "switchyard_tunnel_bytes_total",
        "switchyard_tunnel_duration_seconds_bucket",
        "switchyard_route_table_swaps_total",
        "switchyard_route_table_last_swap_timestamp_seconds",
        "switchyard_translate_warnings",
        "switchyard_ready 1",
    ] {
        assert!(metrics.contains(family), "missing {family}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn metrics_can_be_served_alone_without_the_route_table() {
    let dir = dir_with("r.yaml", route("r", "h", "/", &[backends::refused().await]));
    let proxy = Switchyard::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let metrics = proxy.metrics.expect("metrics address printed");
    let answer = get(metrics, "m", "/metrics", &[]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("switchyard_routes 1"));
    for debug in ["/routes", "/readyz", "/healthz"] {
        assert_eq!(
            get(metrics, "m", debug, &[]).await.status,
            404,
            "{debug} on the metrics listener"
        );
    }
    assert_eq!(get(proxy.admin, "a", "/routes", &[]).await.status, 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_tunnels_then_exits_0() {
    let echo = backends::echo("echo").await;
    let dir = dir_with("r.yaml", route("r", "h", "/", &[echo.addr]));
    let mut proxy = Switchyard::start(
        dir.path(),
        &[
            "--drain-timeout",
            "3s",
            "--log-level",
            "debug",
            // The single-threaded runtime (one core) serves and drains too.
            "--worker-threads",
            "1",
        ],
    );
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;

    let mut ws = websocket(proxy.http, "h").await;
    let slow = tokio::spawn(get(proxy.http, "h", "/slow", &[]));
    // In flight once it has reached the backend: the tunnel holds one
    // backend connection, `/slow` another.
    while echo.connections.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.terminate();
    wait_admin(proxy.admin, "/readyz", |s, body| {
        s == 503 && body.contains("draining")
    })
    .await;
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finished");
    ws.send(Message::text("during drain")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during drain")
    );

    let code = tokio::task::spawn_blocking(move || {
        let code = proxy.wait_exit(Duration::from_secs(15));
        (code, proxy.log_text())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1);
    assert!(
        code.1.contains("reason=\"shutdown\"") || code.1.contains("reason=shutdown"),
        "{}",
        code.1
    );
    // After the drain period the tunnel was closed.
    assert!(
        ws.next()
            .await
            .is_none_or(|m| m.is_err() || m.unwrap().is_close())
    );
}

#[tokio::test]
async fn access_log_lines_are_json_when_asked_and_can_be_turned_off() {
    let echo = backends::echo("echo").await;
    let dir = dir_with("r.yaml", route("r", "h", "/", &[echo.addr]));

    let proxy = Switchyard::start(dir.path(), &["--log-format", "json"]);
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;
    get(
        proxy.http,
        "h",
        "/logged?q=1",
        &[("x-request-id", "req-42")],
    )
    .await;
    let line = wait_for_log(&proxy, "req-42").await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["target"], "switchyard::access");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["path"], "/logged");
    assert_eq!(entry["service"], "r");
    assert_eq!(entry["upstream"], echo.addr.to_string());

    let quiet = Switchyard::start(dir.path(), &["--access-log", "false"]);
    wait_admin(quiet.admin, "/readyz", |s, _| s == 200).await;
    get(quiet.http, "h", "/not-logged", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!quiet.log_text().contains("/not-logged"));
}

async fn wait_for_log(proxy: &Switchyard, needle: &str) -> String {
    for _ in 0..100 {
        if let Some(line) = proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return line.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needle}: {}", proxy.log_text());
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    assert_port_is_refused(addr, &[]);
    // Serving threads listen with SO_REUSEPORT, which the kernel would let
    // them share with another such listener of the same user.
    assert_port_is_refused(addr, &["--busy-poll", "50us", "--worker-threads", "2"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = runtime.enter();
    let shareable = tokio::net::TcpSocket::new_v4().unwrap();
    shareable.set_reuseport(true).unwrap();
    shareable.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listening = shareable.listen(16).unwrap();
    let addr = listening.local_addr().unwrap();
    assert_port_is_refused(addr, &["--busy-poll", "50us", "--worker-threads", "2"]);
}

/// `run` on `--http-addr addr` with `flags` fails and says why.
fn assert_port_is_refused(addr: std::net::SocketAddr, flags: &[&str]) {
    let addr = addr.to_string();
    let mut args = vec![
        "run",
        "--manifests",
        "examples/manifests",
        "--http-addr",
        &addr,
        "--admin-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(flags);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // One that listens anyway would serve until stopped.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
        panic!("switchyard {flags:?} is serving on {addr}, which was taken");
    }
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        err.contains(&format!("cannot listen on --http-addr {addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_busy_polling_proxy_serves_requests_and_tunnels_and_sleeps_when_idle() {
    serves_and_sleeps_when_idle(&["--busy-poll", "200us", "--worker-threads", "1"]).await;
}

#[tokio::test]
async fn busy_polling_serving_threads_serve_requests_and_tunnels_and_sleep_when_idle() {
    let (proxy, _manifests) =
        serves_and_sleeps_when_idle(&["--busy-poll", "200us", "--worker-threads", "2"]).await;
    let threads = thread_names(proxy.pid());
    for name in ["serve-0", "serve-1"] {
        assert!(
            threads.iter().any(|t| t == name),
            "no {name} in {threads:?}"
        );
    }
}

/// The names of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let comm = task.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect()
}

/// Starts switchyard with `flags`, sends requests (each on a connection of
/// its own) and WebSocket messages through it, and checks that it uses
/// next to no CPU over a second with no traffic.
async fn serves_and_sleeps_when_idle(flags: &[&str]) -> (Switchyard, tempfile::TempDir) {
    let echo = backends::echo("echo").await;
    let dir = dir_with("r.yaml", route("r", "h", "/", &[echo.addr]));
    let proxy = Switchyard::start(dir.path(), flags);
    wait_admin(proxy.admin, "/readyz", |s, _| s == 200).await;
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "h", "/", &[]).await.status, 200);
    }
    let mut ws = websocket(proxy.http, "h").await;
    ws.send(Message::text("polled")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("polled"));

    // With no traffic the polling stops: a thread that kept polling would
    // use a whole core (Linux counts 100 ticks a second); an idle one next
    // to nothing.
    let ticks_per_second = 100;
    let before = proxy.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = proxy.cpu_ticks() - before;
    assert!(
        used < ticks_per_second / 4,
        "{used} ticks of CPU in a second with no traffic"
    );
    // The tunnel opened before the quiet second still works.
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    (proxy, dir)
}

#[test]
fn a_fallback_service_in_a_namespace_left_out_is_refused_at_start() {
    let dir = dir_with("r.yaml", String::new());
    let manifests = dir.path().to_str().unwrap();
    let (code, _, stderr) = switchyard(&[
        "check",
        "--manifests",
        manifests,
        "--watch-namespace",
        "app",
        "--default-backend-service",
        "fallback/default:80",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .contains("error: --default-backend-service fallback/default is in namespace fallback"),
        "{stderr}"
    );
}
