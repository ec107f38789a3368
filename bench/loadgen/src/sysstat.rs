//! What the machine and the processes under test are doing, read from
//! /proc: resident memory, CPU time, load, and the disturbance from
//! processes outside the benchmark.

use std::collections::HashSet;

/// Resident set size of one process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A `Name:   123 kB` line of a /proc file, in bytes (0 if missing).
fn kb_field(path: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `pid` and all its descendants (nginx's master and workers, ...).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut seen: HashSet<u32> = HashSet::from([pid]);
    let mut grew = true;
    while grew {
        grew = false;
        for (child, parent) in all_parents() {
            if seen.contains(&parent) && seen.insert(child) {
                tree.push(child);
                grew = true;
            }
        }
    }
    tree
}

fn all_parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_field(pid, 4)?)))
        .map(|(pid, ppid)| (pid, ppid as u32))
        .collect()
}

/// Field number `field` (1-based, as proc(5) numbers them: 4 is the
/// parent pid, 14 and 15 user and system time) of /proc/PID/stat.
fn stat_field(pid: u32, field: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; field 3 follows ") ".
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name
        .split(' ')
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Total resident memory of a process tree, in bytes.
pub fn tree_rss_bytes(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(rss_bytes).sum()
}

/// Proportional set size of one process, in bytes: its resident pages,
/// each page it shares with other processes counted as its share of it.
pub fn pss_bytes(pid: u32) -> u64 {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// Total proportional set size of a process tree, in bytes: what summed
/// RSS says, but with the pages the processes share (nginx's master and
/// worker) counted once.
pub fn tree_pss_bytes(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(pss_bytes).sum()
}

/// User plus system CPU time of a set of processes, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|&p| stat_field(p, 14).unwrap_or(0) + stat_field(p, 15).unwrap_or(0))
        .sum()
}

/// Context switches of a set of processes, voluntary (a wait: each one is
/// a later wake-up) and not, summed over the threads alive when read: a
/// difference of two readings counts only while the processes keep their
/// threads, as the load generator's and the backend's runtimes do.
pub fn context_switches(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| switches_in(&status))
        .sum()
}

/// A thread's context switches, voluntary and not, from its status file.
fn switches_in(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// User and system CPU time of a set of processes, in clock ticks, apart.
pub fn cpu_split_ticks(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(user, system), &p| {
        (
            user + stat_field(p, 14).unwrap_or(0),
            system + stat_field(p, 15).unwrap_or(0),
        )
    })
}

/// Clock ticks the whole machine spent running processes (all CPUs).
///
/// Only user, nice and system time: interrupt and softirq time (where the
/// kernel processes loopback traffic) is charged to no process, so counting
/// it would make the benchmark's own packets look like someone else's work.
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    machine_fields(&stat).iter().take(3).sum()
}

/// Time the hypervisor gave the machine's CPUs to someone else (steal):
/// on a shared VM, the other processes that no process list shows.
pub fn machine_steal_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    machine_fields(&stat).get(7).copied().unwrap_or(0)
}

/// The all-CPU line of /proc/stat: user nice system idle iowait irq
/// softirq steal ...
fn machine_fields(stat: &str) -> Vec<u64> {
    stat.lines()
        .next()
        .filter(|line| line.starts_with("cpu "))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises the open-files soft limit to the hard limit (children inherit
/// it), as `switchyard run` does for itself; returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    switchyard::descriptors::raise_open_files_limit()
        .limit
        .unwrap_or(u64::MAX)
}

/// A window over which to account for CPU used outside the benchmark.
pub struct Disturbance {
    ours: Vec<u32>,
    busy: u64,
    mine: u64,
    steal: u64,
    at: std::time::Instant,
}

impl Disturbance {
    /// Starts accounting; `ours` are the benchmark's own processes.
    pub fn start(ours: Vec<u32>) -> Self {
        let all: Vec<u32> = ours.iter().flat_map(|&p| process_tree(p)).collect();
        Self {
            busy: machine_busy_ticks(),
            mine: cpu_ticks(&all),
            steal: machine_steal_ticks(),
            ours: all,
            at: std::time::Instant::now(),
        }
    }

    /// CPU used by other processes since `start`, in cores (1.0 = one core busy).
    pub fn others_cores(&self) -> f64 {
        let busy = machine_busy_ticks().saturating_sub(self.busy);
        let mine = cpu_ticks(&self.ours).saturating_sub(self.mine);
        let seconds = self.at.elapsed().as_secs_f64().max(0.001);
        busy.saturating_sub(mine) as f64 / ticks_per_second() / seconds
    }

    /// CPU the hypervisor took away since `start`, in cores.
    pub fn stolen_cores(&self) -> f64 {
        let stolen = machine_steal_ticks().saturating_sub(self.steal);
        let seconds = self.at.elapsed().as_secs_f64().max(0.001);
        stolen as f64 / ticks_per_second() / seconds
    }
}

/// CPUs named by a taskset list (`0`, `0,2`, `1-3`).
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.parse::<usize>(), last.parse::<usize>()) {
            cpus.extend(first..=last);
        }
    }
    cpus
}

/// The CPUs this process may run on (the load generator's, when it runs
/// pinned as `bench/run.sh` starts it).
pub fn own_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Busy and total clock ticks of `cpus`, from the text of /proc/stat.
///
/// Busy is user, nice, system, irq and softirq time. Unlike
/// [`machine_busy_ticks`], interrupt time counts here: this is about what
/// a CPU spent, and the kernel's loopback TCP work runs as softirq.
fn cpu_ticks_in(stat: &str, cpus: &[usize]) -> (u64, u64) {
    let mut busy = 0;
    let mut total = 0;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu")?.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user).
        let ticks: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        if ticks.len() == 8 {
            busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
            total += ticks.iter().sum::<u64>();
        }
    }
    (busy, total)
}

/// How busy some CPUs were over a window, all their time counted.
pub struct CoreWindow {
    cpus: Vec<usize>,
    start: (u64, u64),
}

impl CoreWindow {
    pub fn start(cpus: &[usize]) -> Self {
        Self {
            cpus: cpus.to_vec(),
            start: Self::ticks(cpus),
        }
    }

    /// The share of the CPUs' time spent busy since `start` (0 to 1).
    pub fn busy(&self) -> f64 {
        let (busy, total) = Self::ticks(&self.cpus);
        let total = total.saturating_sub(self.start.1);
        if total == 0 {
            return 0.0;
        }
        busy.saturating_sub(self.start.0) as f64 / total as f64
    }

    fn ticks(cpus: &[usize]) -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        cpu_ticks_in(&stat, cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_processs_pss_is_resident_and_at_most_its_rss() {
        let me = std::process::id();
        let (rss, pss) = (rss_bytes(me), pss_bytes(me));
        assert!(pss > 0, "no Pss read");
        // Shared pages count in full in RSS, as a share in PSS.
        assert!(pss <= rss, "pss {pss} > rss {rss}");
        assert_eq!(rss_bytes(u32::MAX), 0, "no such process");
    }

    #[test]
    fn taskset_lists_name_single_cpus_and_ranges() {
        assert_eq!(parse_cpu_list("0"), vec![0]);
        assert_eq!(parse_cpu_list("0,2"), vec![0, 2]);
        assert_eq!(parse_cpu_list("1-3, 6"), vec![1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }

    #[test]
    fn a_cpus_busy_time_includes_interrupts_but_not_idle_or_steal() {
        let stat = "cpu  900 0 900 900 0 0 0 0 0 0\n\
                    cpu0 100 1 20 300 4 5 60 7 0 0\n\
                    cpu1 800 0 880 600 0 0 0 0 0 0\n\
                    intr 12345\n";
        // user + nice + system + irq + softirq; all eight fields in total.
        assert_eq!(cpu_ticks_in(stat, &[0]), (186, 497));
        assert_eq!(cpu_ticks_in(stat, &[0, 1]), (186 + 1680, 497 + 2280));
        assert_eq!(cpu_ticks_in(stat, &[5]), (0, 0));
    }

    #[test]
    fn the_machine_line_gives_busy_time_and_steal() {
        let stat = "cpu  900 1 90 900 4 5 6 77 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let fields = machine_fields(stat);
        assert_eq!(fields.iter().take(3).sum::<u64>(), 991);
        assert_eq!(fields.get(7), Some(&77));
        assert!(
            machine_fields("cpu0 1 2 3\n").is_empty(),
            "not the all-CPU line"
        );
    }

    #[test]
    fn context_switches_are_both_kinds_of_a_threads_status() {
        let status = "Name:\tloadgen\nState:\tS (sleeping)\n\
                      voluntary_ctxt_switches:\t120\n\
                      nonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches_in(status), 127);
        assert_eq!(switches_in("Name:\tx\n"), 0);
        // A process that has run has switched; one that does not exist has
        // nothing to count. (Threads come and go, so the sum is not
        // compared between two readings here.)
        assert!(context_switches(&[std::process::id()]) > 0);
        assert_eq!(context_switches(&[u32::MAX]), 0);
    }

    #[test]
    fn this_process_may_run_on_some_cpu() {
        let cpus = own_cpus();
        assert!(!cpus.is_empty());
        let window = CoreWindow::start(&cpus);
        let busy = window.busy();
        assert!((0.0..=1.0).contains(&busy), "{busy}");
    }
}
