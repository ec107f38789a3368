//! The things under test, started the same way: switchyard, nginx and
//! HAProxy as equivalent reverse proxies (keep-alive to the backend,
//! WebSocket support, one worker, access logs off, pinned to one core),
//! "direct", the backend itself, as the physical baseline, and "floor",
//! a forwarder that does nothing but pass bytes on ([`crate::floor`]), as
//! the least a proxy can cost.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{Target, wait_serving};
use crate::sysstat;

/// The Host every route answers for; other hosts get 404.
pub const HOST: &str = "bench.test";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Kind {
    Direct,
    Switchyard,
    Nginx,
    Haproxy,
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Switchyard => "switchyard",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Floor => "floor",
        }
    }
}

/// How to start the proxies.
#[derive(Clone)]
pub struct Setup {
    pub switchyard: PathBuf,
    pub backend: SocketAddr,
    /// CPU list for `taskset` (the proxy's core).
    pub proxy_cpu: String,
    pub workdir: PathBuf,
    /// Whether the proxies that can busy-poll do: switchyard with
    /// `--busy-poll` [`BUSY_POLL_WINDOW`], HAProxy with `busy-polling`
    /// (nginx has no such setting).
    pub busy_polling: bool,
    /// Where an instrumented switchyard writes what it counted
    /// (`LLVM_PROFILE_FILE`), when the load generator is instrumented too
    /// and writes its own counts elsewhere: the training run of
    /// `scripts/pgo.sh`.
    pub switchyard_profile: Option<PathBuf>,
}

/// switchyard's `--busy-poll` window when the benchmark busy-polls: long
/// enough that the backend's answer mostly arrives within it here (with
/// 20 µs one connection got 12,000-15,000 requests a second, with 50 µs
/// and 200 µs alike about 18,000).
pub const BUSY_POLL_WINDOW: &str = "50us";

pub struct Running {
    pub kind: Kind,
    pub target: Target,
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    /// From spawn to the first request answered through it.
    pub start_to_ready: Duration,
    hosts: Vec<String>,
}

/// Starts per proxy for the start-to-first-answer figure.
pub const STARTS: usize = 5;

/// The first line `child` prints on its piped stdout: where it listens.
pub fn first_line(child: &mut Child) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    Ok(line)
}

/// `program` on the proxies' CPU.
fn pinned(setup: &Setup, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &setup.proxy_cpu]).arg(program);
    command
}

/// switchyard as the benchmark runs it, pinned, on the manifests in
/// `manifests`; with `LLVM_PROFILE_FILE` set for it alone when the setup
/// says where its profile goes.
fn switchyard_command(setup: &Setup, manifests: &Path) -> Command {
    let mut command = pinned(setup, &setup.switchyard);
    command
        .arg("run")
        .arg("--manifests")
        .arg(manifests)
        .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args([
            "--access-log",
            "false",
            "--log-level",
            "warn",
            "--max-connections",
            "20000",
        ])
        .args(
            setup
                .busy_polling
                .then_some(["--busy-poll", BUSY_POLL_WINDOW])
                .into_iter()
                .flatten(),
        );
    if let Some(profile) = &setup.switchyard_profile {
        command.env("LLVM_PROFILE_FILE", profile);
    }
    command
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Running {
    /// Starts `kind` [`STARTS`] times (stopping all but the last), so
    /// `start_to_ready` is the median of several starts: one start is a
    /// few milliseconds, and a single one was seen to vary threefold.
    pub async fn start(kind: Kind, setup: &Setup) -> anyhow::Result<Self> {
        let mut times = Vec::with_capacity(STARTS);
        loop {
            let mut running = Self::launch(kind, setup).await?;
            times.push(running.start_to_ready);
            if times.len() == STARTS || kind == Kind::Direct {
                times.sort();
                running.start_to_ready = times[times.len() / 2];
                return Ok(running);
            }
        }
    }

    async fn launch(kind: Kind, setup: &Setup) -> anyhow::Result<Self> {
        let dir = setup.workdir.join(kind.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("manifests"))?;
        let mut running = Self {
            kind,
            target: Target {
                addr: setup.backend,
                host: HOST.into(),
            },
            child: None,
            port: 0,
            dir,
            start_to_ready: Duration::ZERO,
            hosts: vec![HOST.into()],
        };
        let spawned = Instant::now();
        match kind {
            Kind::Direct => {}
            Kind::Switchyard => running.start_switchyard(setup)?,
            Kind::Nginx => running.start_nginx(setup)?,
            Kind::Haproxy => running.start_haproxy(setup)?,
            Kind::Floor => running.start_floor(setup)?,
        }
        let poll_every = Duration::from_millis(1);
        if !wait_serving(&running.target, Duration::from_secs(30), poll_every).await {
            bail!("{} did not start serving within 30s", kind.name());
        }
        running.start_to_ready = spawned.elapsed();
        Ok(running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the proxy's whole process tree.
    pub fn rss_bytes(&self) -> u64 {
        self.pid().map_or(0, sysstat::tree_rss_bytes)
    }

    pub fn pss_bytes(&self) -> u64 {
        self.pid().map_or(0, sysstat::tree_pss_bytes)
    }

    fn start_switchyard(&mut self, setup: &Setup) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.join("manifests/bench.yaml"),
            manifests(setup.backend, HOST),
        )?;
        let mut child = switchyard_command(setup, &self.dir.join("manifests"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting switchyard")?;
        let line = first_line(&mut child)?;
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .context("switchyard printed no address")?;
        self.target.addr = http.parse()?;
        self.port = self.target.addr.port();
        self.child = Some(child);
        Ok(())
    }

    fn start_nginx(&mut self, setup: &Setup) -> anyhow::Result<()> {
        self.port = free_port()?;
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        std::fs::write(self.dir.join("nginx.conf"), self.nginx_conf(setup.backend))?;
        let child = pinned(setup, "nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        self.target.addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        self.child = Some(child);
        Ok(())
    }

    fn nginx_conf(&self, backend: SocketAddr) -> String {
        nginx_conf(self.port, backend, &self.hosts.join(" "), &self.dir)
    }

    fn start_haproxy(&mut self, setup: &Setup) -> anyhow::Result<()> {
        self.port = free_port()?;
        std::fs::write(
            self.dir.join("haproxy.cfg"),
            haproxy_cfg(self.port, setup.backend, setup.busy_polling),
        )?;
        let child = pinned(setup, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(self.dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")?;
        self.target.addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        self.child = Some(child);
        Ok(())
    }

    /// The floor, pinned like the proxies, on a port it picks and prints.
    fn start_floor(&mut self, setup: &Setup) -> anyhow::Result<()> {
        let mut child = pinned(setup, std::env::current_exe()?)
            .arg("floor")
            .arg("--backend")
            .arg(setup.backend.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the floor")?;
        let line = first_line(&mut child)?;
        self.target.addr =
            crate::suite::parse_listening(&line).context("the floor printed no address")?;
        self.port = self.target.addr.port();
        self.child = Some(child);
        Ok(())
    }

    /// Adds a route for `host` the way an operator of this proxy would:
    /// a new manifest file for switchyard, a config change and
    /// `nginx -s reload` for nginx.
    pub fn add_host(&mut self, host: &str, backend: SocketAddr) -> anyhow::Result<()> {
        self.hosts.push(host.to_string());
        match self.kind {
            Kind::Switchyard => {
                let file = self.dir.join(format!("manifests/{host}.yaml"));
                std::fs::write(file, manifests(backend, host))?;
            }
            Kind::Nginx => {
                std::fs::write(self.dir.join("nginx.conf"), self.nginx_conf(backend))?;
                let status = Command::new("nginx")
                    .arg("-p")
                    .arg(&self.dir)
                    .arg("-c")
                    .arg(self.dir.join("nginx.conf"))
                    .args(["-s", "reload"])
                    .stderr(Stdio::null())
                    .status()?;
                if !status.success() {
                    bail!("nginx -s reload failed");
                }
            }
            Kind::Direct | Kind::Haproxy | Kind::Floor => {
                bail!("{} is not reconfigured in this benchmark", self.kind.name())
            }
        }
        Ok(())
    }

    /// The configuration file, for the report.
    pub fn config_text(&self) -> Option<String> {
        let file = match self.kind {
            Kind::Nginx => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
            Kind::Switchyard => "manifests/bench.yaml",
            Kind::Direct | Kind::Floor => return None,
        };
        std::fs::read_to_string(self.dir.join(file)).ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first, so nginx's master takes its workers down.
            // SAFETY: kill only sends a signal to our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Service with one endpoint (the backend) and an Ingress for `host`.
pub fn manifests(backend: SocketAddr, host: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: bench\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"{ip}\"]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  ingressClassName: switchyard\n  rules:\n  - host: {host}\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {{service: {{name: {name}, port: {{number: 80}}}}}}\n",
        port = backend.port(),
        ip = backend.ip()
    )
}

/// nginx as an equivalent reverse proxy: one worker, keep-alive to the
/// backend, WebSocket upgrades passed through, no access log, no request
/// buffering (switchyard streams bodies too), unknown hosts get 404. As
/// switchyard (and ingress-nginx) does, it sets `X-Forwarded-For`, `-Host`
/// and `-Proto`, `X-Real-IP` and an `X-Request-ID`, and keeps a connection for any
/// number of requests on both sides (nginx's default of 1,000 would make
/// it reconnect where the others do not).
pub fn nginx_conf(port: u16, backend: SocketAddr, hosts: &str, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream backend {{ server {backend}; keepalive 256; keepalive_requests 1000000; }}
    server {{ listen 127.0.0.1:{port} default_server; return 404; }}
    server {{
        listen 127.0.0.1:{port};
        server_name {hosts};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"#
    )
}

/// HAProxy as an equivalent reverse proxy: one thread, keep-alive and
/// connection reuse to the backend (WebSocket is native in HTTP mode),
/// the same forwarding fields and request id as switchyard sets; with
/// `busy_polling`, its poller never waits (`busy-polling`).
pub fn haproxy_cfg(port: u16, backend: SocketAddr, busy_polling: bool) -> String {
    let busy_polling = if busy_polling {
        "\n    busy-polling"
    } else {
        ""
    };
    format!(
        r#"global
    nbthread 1
    maxconn 9900{busy_polling}
defaults
    mode http
    maxconn 9900
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    acl bench hdr(host) -i {HOST}
    http-request deny deny_status 404 unless bench
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Real-IP %[src]
    unique-id-format %[uuid()]
    unique-id-header X-Request-ID
    use_backend be if bench
backend be
    server b1 {backend}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(switchyard_profile: Option<PathBuf>) -> Setup {
        Setup {
            switchyard: PathBuf::from("switchyard"),
            backend: "127.0.0.1:8080".parse().unwrap(),
            proxy_cpu: "0".into(),
            workdir: PathBuf::from("work"),
            busy_polling: false,
            switchyard_profile,
        }
    }

    fn profile_file(command: &Command) -> Option<Option<&std::ffi::OsStr>> {
        command
            .get_envs()
            .find(|(name, _)| *name == "LLVM_PROFILE_FILE")
            .map(|(_, value)| value)
    }

    #[test]
    fn a_training_switchyard_alone_is_told_where_its_profile_goes() {
        let training = switchyard_command(
            &setup(Some("profiles/switchyard-%p.profraw".into())),
            Path::new("m"),
        );
        assert_eq!(
            profile_file(&training),
            Some(Some(std::ffi::OsStr::new("profiles/switchyard-%p.profraw")))
        );
        // Otherwise it inherits the load generator's environment.
        let measured = switchyard_command(&setup(None), Path::new("m"));
        assert_eq!(profile_file(&measured), None);
    }

    #[test]
    fn switchyard_runs_pinned_on_the_manifests_given() {
        let command = switchyard_command(&setup(None), Path::new("m"));
        assert_eq!(command.get_program(), "taskset");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args[..5], ["-c", "0", "switchyard", "run", "--manifests"]);
        assert_eq!(args[5], "m");
        assert!(!args.contains(&std::ffi::OsStr::new("--busy-poll")));
    }
}
