//! Rule 7: failed or refused upgrades release the backend connection at
//! once. After thousands of successful, declined, mismatched and failed
//! upgrades, the process holds no more file descriptors than before.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backends::{self, read_head, write_head};
use common::client::{get, raw_exchange, upgrade_request};
use common::manifests::{dir_with, route};
use common::process::Switchyard;
use tokio::io::AsyncWriteExt;

const ROUNDS: usize = 1008;
const PARALLEL: usize = 16;

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    common::sample(&get(admin, "admin", "/metrics", &[]).await.body, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_upgrades_leave_no_file_descriptor_behind() {
    let echo = backends::echo("ws").await;
    let declining = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(
            &mut s,
            "HTTP/1.1 426 Upgrade Required",
            &["Content-Length: 0"],
        )
        .await;
        let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
    })
    .await;
    let mismatched = backends::scripted(|mut s| async move {
        read_head(&mut s).await;
        write_head(
            &mut s,
            "HTTP/1.1 101 Switching Protocols",
            &["Upgrade: h2c", "Connection: Upgrade"],
        )
        .await;
        let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
    })
    .await;
    let refused = backends::refused().await;
    let yaml = route("ok", "ok", "/", &[echo.addr])
        + &route("declining", "declining", "/", &[declining])
        + &route("mismatched", "mismatched", "/", &[mismatched])
        + &route("refused", "refused", "/", &[refused]);
    let dir = dir_with("routes.yaml", yaml);
    let proxy = Switchyard::start(dir.path(), &["--access-log", "false"]);
    let http = proxy.http;

    let one_of_each = move || async move {
        for (host, expected) in [
            ("ok", "101"),
            ("declining", "426"),
            ("mismatched", "502"),
            ("refused", "502"),
        ] {
            let (mut client, head, _) =
                raw_exchange(http, &upgrade_request(host, "/", "websocket", &[]), b"").await;
            assert!(
                head.starts_with(&format!("HTTP/1.1 {expected}")),
                "{host}: {head}"
            );
            let _ = client.shutdown().await;
        }
    };
    let settle = |admin| async move {
        for _ in 0..200 {
            if metric(admin, "switchyard_connections_active").await == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("connections never drained");
    };

    // Warm up once (thread pools, the metrics registry, ...), then measure.
    one_of_each().await;
    settle(proxy.admin).await;
    let before = proxy.open_fds();

    let mut tasks = Vec::new();
    for _ in 0..PARALLEL {
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS / PARALLEL {
                one_of_each().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    settle(proxy.admin).await;
    let switched = common::sample(
        &get(proxy.admin, "admin", "/metrics", &[]).await.body,
        "switchyard_upgrades_total",
        &[("result", "switched")],
    );
    assert!(
        switched >= (ROUNDS / PARALLEL * PARALLEL) as f64,
        "upgrades happened: {switched}"
    );

    let mut after = proxy.open_fds();
    for _ in 0..100 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = proxy.open_fds();
    }
    assert!(
        after <= before,
        "file descriptors grew from {before} to {after}"
    );
}
