//! `switchyard run` takes memory in small pages: transparent huge pages
//! are off for the whole process (src/memory.rs says why).

mod common;

use common::manifests::{dir_with, route};
use common::process::Switchyard;

#[test]
fn transparent_huge_pages_are_off_for_the_process() {
    let dir = dir_with(
        "r.yaml",
        route("r", "h", "/", &["127.0.0.1:9".parse().unwrap()]),
    );
    let proxy = Switchyard::start(dir.path(), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("a THP_enabled line (Linux 5.0 and later)");
    assert_eq!(
        thp.trim(),
        "0",
        "huge pages still allowed; log: {}",
        proxy.log_text()
    );
}
