//! Open files: `switchyard run` raises its soft open-files limit to the
//! hard one and sizes its descriptor table for `--max-connections` at
//! start, and says so when the limit is too low for that many connections.

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
