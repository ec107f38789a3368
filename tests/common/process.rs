//! The real `switchyard` binary, started by a test on OS-chosen ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

pub struct Switchyard {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The metrics-only listener, when `--metrics-addr` was given.
    pub metrics: Option<SocketAddr>,
    /// Every line the process wrote to stderr (its log), as it arrives.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The thread copying stderr into `log`: joined once the process has
    /// exited, so that `log` then holds every line.
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Switchyard {
    /// `switchyard run --manifests DIR` plus `extra` flags, on port 0.
    pub fn start(manifests: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--manifests"])
            .arg(manifests)
            .args(extra);
        Self::spawn(command)
    }

    /// As [`start`](Self::start), run from directory `cwd` with
    /// `manifests` as written (relative to it, say).
    pub fn start_in(cwd: &Path, manifests: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .current_dir(cwd)
            .args(["run", "--manifests"])
            .arg(manifests)
            .args(extra);
        Self::spawn(command)
    }

    /// As [`start`](Self::start), from a shell that first runs `limits`
    /// (`ulimit` commands) and then execs the binary in its place.
    pub fn start_with_limits(manifests: &Path, limits: &str, extra: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{limits} && exec \"$0\" \"$@\""))
            .args([BIN, "run", "--manifests"])
            .arg(manifests)
            .args(extra);
        Self::spawn(command)
    }

    /// `switchyard run` in cluster mode against the API server that
    /// `kubeconfig` names, as pod `pod` of namespace `ingress`.
    pub fn start_cluster(kubeconfig: &Path, pod: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", "ingress");
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchyard starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addrs = line
            .trim()
            .strip_prefix("switchyard listening: ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {:?}",
                    log.lock().unwrap()
                )
            });
        let addr = |key: &str| -> Option<SocketAddr> {
            addrs
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|a| a.parse().unwrap())
        };
        Self {
            http: addr("http=").unwrap(),
            admin: addr("admin=").unwrap(),
            metrics: addr("metrics="),
            child,
            log,
            log_reader: Some(log_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (up to `limit`) for the process to exit; returns its exit
    /// code. The log then holds every line the process wrote.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.log_reader.take() {
                    // Ends at the end of stderr, which the exit closed.
                    let _ = reader.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("switchyard did not exit within {limit:?}");
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// CPU time (user + system) the process has used so far, in clock
    /// ticks (USER_HZ, 100 a second).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
