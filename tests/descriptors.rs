//! Open files: `switchyard run` raises its soft open-files limit to the
//! hard one and sizes its descriptor table for `--max-connections` at
//! start, and says so when the limit is too low for that many connections;
//! out of descriptors, its listeners back off instead of spinning.

mod common;

use common::manifests::{dir_with, route};
use common::process::Switchyard;

/// A `/proc/PID/limits` row: (soft, hard) of "Max open files".
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-files row");
    let mut numbers = row.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// Slots in the process's descriptor table (`FDSize`).
fn descriptor_table_slots(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .expect("an FDSize line")
        .trim()
        .parse()
        .unwrap()
}

fn manifests() -> tempfile::TempDir {
    dir_with(
        "r.yaml",
        route("r", "h", "/", &["127.0.0.1:9".parse().unwrap()]),
    )
}

#[test]
fn the_soft_limit_is_raised_and_the_table_sized_for_max_connections() {
    let (_, hard) = open_files_limits("self");
    let dir = manifests();
    let proxy =
        Switchyard::start_with_limits(dir.path(), "ulimit -Sn 256", &["--max-connections", "3000"]);
    let (soft, child_hard) = open_files_limits(&proxy.pid().to_string());
    assert_eq!(child_hard, hard);
    assert_eq!(
        soft, hard,
        "the soft limit of 256 was raised to the hard limit"
    );
    // Two descriptors per connection and some headroom, within the limit.
    let wanted = (2 * 3000 + 256).min(hard);
    let slots = descriptor_table_slots(proxy.pid());
    assert!(
        slots >= wanted,
        "descriptor table of {slots} slots, {wanted} wanted; log: {}",
        proxy.log_text()
    );
}

#[test]
fn a_hard_limit_below_what_max_connections_needs_is_logged() {
    let dir = manifests();
    let proxy =
        Switchyard::start_with_limits(dir.path(), "ulimit -n 1000", &["--max-connections", "3000"]);
    assert_eq!(open_files_limits(&proxy.pid().to_string()), (1000, 1000));
    let warning = "the open-files limit allows about 744 connections, fewer than --max-connections";
    let logged = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        proxy.log_text().contains(warning)
    });
    assert!(logged, "{}", proxy.log_text());
    assert!(descriptor_table_slots(proxy.pid()) >= 1000);
}

/// An HTTP/1.1 GET of `path` on a new connection; the status line.
fn status_line(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn out_of_descriptors_the_listeners_back_off_and_serve_again_once_some_are_free() {
    let dir = manifests();
    // One serving thread: its descriptors at start do not depend on how
    // many CPUs the machine has.
    let proxy =
        Switchyard::start_with_limits(dir.path(), "ulimit -n 64", &["--worker-threads", "1"]);
    // More than the limit leaves room for: the rest wait in the listen
    // queue, where every accept of them fails with EMFILE.
    let mut held: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(proxy.http).unwrap())
        .collect();
    let failed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let log = proxy.log_text();
        log.lines()
            .any(|l| l.contains("accept failed") && !l.contains("admin accept failed"))
    });
    assert!(failed, "{}", proxy.log_text());
    // With every descriptor taken, the admin listener's accepts fail too.
    held.extend((0..5).map(|_| std::net::TcpStream::connect(proxy.admin).unwrap()));
    let admin_failed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        proxy.log_text().contains("admin accept failed")
    });
    assert!(admin_failed, "{}", proxy.log_text());

    // Retrying at once would keep a core busy for as long as the queue
    // is full; backing off uses next to none of it.
    let before = proxy.cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = proxy.cpu_ticks() - before;
    assert!(
        used < 30,
        "{used} ticks (hundredths of a second) of CPU in a second of failing accepts"
    );

    drop(held);
    let served = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        status_line(proxy.admin, "/healthz").contains(" 200 ")
    });
    assert!(served, "admin serves again: {}", proxy.log_text());
    assert!(
        status_line(proxy.http, "/").contains(" 404 "),
        "the proxy serves again"
    );
}
