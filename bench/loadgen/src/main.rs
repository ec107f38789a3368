//! `loadgen`: the benchmark backend, the load generator and the report
//! writer for comparing switchyard with nginx and HAProxy. `bench/run.sh`
//! is the one command that installs what is needed and runs it all.

mod backend;
mod busy_report;
mod chart;
mod client;
mod floor;
mod floor_report;
mod report;
mod soak;
mod suite;
mod sysstat;
mod targets;
mod translate_bench;

/// The allocator switchyard's binary ships with: the translation figure is
/// measured in this process, and with the system allocator it measured
/// an allocator switchyard does not use (a fifth of the instructions of
/// translating 10,000 Ingresses went to glibc's malloc and free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "switchyard benchmark: backend, load generator, report")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The switchyard binary under test and where proxies run.
#[derive(clap::Args)]
struct ProxyArgs {
    /// The switchyard binary (a release build).
    #[arg(long)]
    switchyard: PathBuf,
    /// CPU for the proxies under test (taskset list).
    #[arg(long, default_value = "0")]
    proxy_cpu: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark backend.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
    /// The floor: a forwarder that only passes bytes between each client
    /// connection and a backend connection of its own, the least a proxy
    /// can cost here (the benchmark runs it beside the proxies).
    Floor {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// The backend it forwards to.
        #[arg(long)]
        backend: SocketAddr,
    },
    /// Soak switchyard: mixed load, manifest changes and a backend killed
    /// every 20 s; samples RSS and descriptors; fails on growth or loss.
    Soak {
        /// The switchyard binary (a release build).
        #[arg(long)]
        switchyard: PathBuf,
        /// Length of the run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Seconds before the level that growth is measured from (default:
        /// a quarter of the run, at most 60).
        #[arg(long)]
        warmup: Option<u64>,
        #[arg(long, default_value = "bench/soak.csv")]
        csv: PathBuf,
        #[arg(long, default_value = "bench/soak.png")]
        png: PathBuf,
    },
    /// The connection-burst figure alone, on freshly started targets,
    /// repeated: a quick before/after for changes to the accept path.
    Burst {
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Fresh starts per target.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Targets to measure, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "switchyard,nginx,haproxy"
        )]
        targets: Vec<targets::Kind>,
    },
    /// Two switchyard binaries side by side, every load figure going round
    /// the two: the before and after of a change, from one run.
    Compare {
        // `--switchyard` is the binary with the change.
        #[command(flatten)]
        proxy: ProxyArgs,
        /// The binary to compare it with.
        #[arg(long)]
        baseline: PathBuf,
        /// Seconds each binary is measured per round of a load figure.
        #[arg(long, default_value_t = 1)]
        seconds: u64,
        /// Start the new binary with busy polling (`--busy-poll 50us`)
        /// and the baseline without: what the setting costs or saves.
        #[arg(long)]
        busy_polling: bool,
    },
    /// Tunnel throughput alone: the backend directly, the switchyard
    /// binary and any baseline binaries, going round them.
    Tunnels {
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Other switchyard binaries to compare with (repeatable).
        #[arg(long)]
        baseline: Vec<PathBuf>,
        /// Transfers each way per target.
        #[arg(long, default_value_t = 5)]
        transfers: usize,
        /// Leave out the backend reached directly (for profiling a proxy).
        #[arg(long)]
        without_direct: bool,
        /// Other targets to go round too, comma-separated (nginx, haproxy, floor),
        /// configured as the benchmark runs them.
        #[arg(long, value_delimiter = ',')]
        others: Vec<targets::Kind>,
    },
    /// Each load of the benchmark for a second against one switchyard,
    /// then stop it: the training run of `scripts/pgo.sh`, whose
    /// instrumented binary writes its profile as it exits.
    Train {
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Where the instrumented switchyard writes its profile
        /// (`LLVM_PROFILE_FILE` for it alone, `%p` for its process id), so
        /// that an instrumented load generator's own counts stay apart.
        #[arg(long)]
        profile_file: Option<PathBuf>,
    },
    /// Print the configuration the benchmark runs a proxy with (switchyard's
    /// manifests, nginx.conf or haproxy.cfg), for scripts that run the
    /// proxies on their own, such as `scripts/instructions.sh`.
    Config {
        proxy: targets::Kind,
        /// The backend it proxies to.
        #[arg(long)]
        backend: SocketAddr,
        /// The port nginx or HAProxy listens on (switchyard's comes from
        /// its command line).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// nginx's directory for its pid file, logs and temporary files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run every figure against every target and write the report.
    Suite {
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Seconds each target is measured per round of a load figure
        /// (five rounds each, five transfers for tunnel throughput).
        #[arg(long, default_value_t = 1)]
        seconds: u64,
        /// Idle tunnels to hold open at once (default: as many as the
        /// open-files limit allows with two descriptors per tunnel).
        #[arg(long)]
        tunnels: Option<usize>,
        /// Route changes in the reconfiguration figure.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        #[arg(long, default_value = "bench/plots")]
        plots: PathBuf,
        #[arg(long, default_value = "bench/results.json")]
        json: PathBuf,
        /// Targets to measure, comma-separated (for a partial look; the
        /// report is only complete with all five).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "direct,switchyard,nginx,haproxy,floor"
        )]
        targets: Vec<targets::Kind>,
        /// Shown in the report as the command that produced it.
        #[arg(long, default_value = "bench/run.sh")]
        command: String,
        /// Shown in the report after switchyard's version: how the binary
        /// was built.
        #[arg(long, default_value = "release build")]
        build: String,
        /// When the command running the suite began, in seconds since the
        /// Unix epoch (`date +%s`): the report then holds the whole run,
        /// installing and building included, to the time it must fit in.
        #[arg(long)]
        started_at: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Built by the commands that need one: the floor runs on its own
    // thread with none beside it.
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    };
    match cli.command {
        Cmd::Backend { addr } => runtime()?.block_on(backend::serve(addr)),
        Cmd::Floor { addr, backend } => floor::serve(addr, backend),
        Cmd::Soak {
            switchyard,
            seconds,
            warmup,
            csv,
            png,
        } => {
            // The soak drives more at once than the figures: two workers.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let settings = soak::Settings {
                switchyard,
                seconds,
                warmup: warmup.unwrap_or((seconds / 4).min(60)),
                csv,
                png,
            };
            soak::run(&settings, &runtime)
        }
        Cmd::Burst {
            proxy,
            repeat,
            targets,
        } => {
            let (mut backend, setup) = start_backend(proxy)?;
            let result = runtime()?.block_on(suite::bursts(&setup, &targets, repeat));
            let _ = backend.kill();
            let _ = std::fs::remove_dir_all(&setup.workdir);
            result
        }
        Cmd::Compare {
            proxy,
            baseline,
            seconds,
            busy_polling,
        } => {
            sysstat::raise_nofile_limit();
            let (mut backend, mut new) = start_backend(proxy)?;
            let baseline = targets::Setup {
                switchyard: baseline,
                workdir: new.workdir.join("baseline"),
                ..new.clone()
            };
            new.busy_polling = busy_polling;
            let plan = suite::Plan {
                figure_seconds: seconds,
                concurrency: vec![1, 16, 64, 256],
                idle_tunnels: 0,
                changes: 0,
                targets: vec![targets::Kind::Switchyard],
            };
            let result = runtime()?.block_on(suite::compare(&new, &baseline, &plan, backend.id()));
            let _ = backend.kill();
            let _ = std::fs::remove_dir_all(&new.workdir);
            result
        }
        Cmd::Tunnels {
            proxy,
            baseline,
            transfers,
            without_direct,
            others,
        } => {
            let (mut backend, setup) = start_backend(proxy)?;
            let mut targets = vec![
                ("direct".to_string(), targets::Kind::Direct, setup.clone()),
                ("new".to_string(), targets::Kind::Switchyard, setup.clone()),
            ];
            for (i, baseline) in baseline.into_iter().enumerate() {
                let label = format!("baseline {}", i + 1);
                let baseline = targets::Setup {
                    workdir: setup.workdir.join(label.replace(' ', "-")),
                    switchyard: baseline,
                    ..setup.clone()
                };
                targets.push((label, targets::Kind::Switchyard, baseline));
            }
            for kind in others {
                targets.push((kind.name().to_string(), kind, setup.clone()));
            }
            if without_direct {
                targets.remove(0);
            }
            let generator = [std::process::id(), backend.id()];
            let result = runtime()?.block_on(suite::tunnels(&targets, transfers, &generator));
            let _ = backend.kill();
            let _ = std::fs::remove_dir_all(&setup.workdir);
            result
        }
        Cmd::Train {
            proxy,
            profile_file,
        } => {
            let (mut backend, mut setup) = start_backend(proxy)?;
            setup.switchyard_profile = profile_file;
            let result = runtime()?.block_on(suite::train(&setup, backend.id()));
            let _ = backend.kill();
            let _ = std::fs::remove_dir_all(&setup.workdir);
            result
        }
        Cmd::Config {
            proxy,
            backend,
            port,
            dir,
        } => {
            let text = match proxy {
                targets::Kind::Switchyard => targets::manifests(backend, targets::HOST),
                targets::Kind::Nginx => targets::nginx_conf(port, backend, targets::HOST, &dir),
                targets::Kind::Haproxy => targets::haproxy_cfg(port, backend, false),
                targets::Kind::Direct => {
                    anyhow::bail!("direct: the backend reached directly has no configuration")
                }
                targets::Kind::Floor => {
                    anyhow::bail!(
                        "floor: no configuration; it runs as `loadgen floor --backend ADDR`"
                    )
                }
            };
            print!("{text}");
            Ok(())
        }
        Cmd::Suite {
            proxy,
            seconds,
            tunnels,
            changes,
            out,
            plots,
            json,
            command,
            build,
            targets,
            started_at,
        } => {
            let measuring_since = Instant::now();
            let before_measuring = started_at.map(|started| {
                let started = SystemTime::UNIX_EPOCH + Duration::from_secs(started);
                SystemTime::now()
                    .duration_since(started)
                    .unwrap_or_default()
            });
            let limit = sysstat::raise_nofile_limit() as usize;
            // The proxy holds two descriptors per tunnel, plus listeners,
            // the pool and its own files.
            let tunnels = tunnels.unwrap_or(limit.saturating_sub(400) / 2).min(9800);
            let (mut backend, setup) = start_backend(proxy)?;
            let workdir = setup.workdir.clone();
            let plan = suite::Plan {
                figure_seconds: seconds,
                concurrency: vec![1, 16, 64, 256],
                idle_tunnels: tunnels,
                changes,
                targets,
            };
            let results = runtime()?.block_on(suite::run(&setup, &plan, backend.id()));
            let _ = backend.kill();
            let _ = std::fs::remove_dir_all(&workdir);
            let results = results?;
            std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
            report::register_font()?;
            report::plots(&results, &plots)?;
            let ctx = report::Context {
                date: shell("date -u +%Y-%m-%d"),
                machine: machine(),
                versions: versions(&setup.switchyard, &build),
                command,
                run_time: report::RunTime {
                    before_measuring,
                    measuring: measuring_since.elapsed(),
                },
            };
            std::fs::write(&out, report::markdown(&results, &ctx))?;
            eprintln!(
                "wrote {}, {} and {}",
                out.display(),
                plots.display(),
                json.display()
            );
            Ok(())
        }
    }
}

/// Starts the benchmark backend; the setup the targets are started with.
fn start_backend(proxy: ProxyArgs) -> anyhow::Result<(std::process::Child, targets::Setup)> {
    let mut backend = Command::new(std::env::current_exe()?)
        .arg("backend")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the backend")?;
    let line = targets::first_line(&mut backend)?;
    let backend_addr = suite::parse_listening(&line).context("backend printed no address")?;
    let setup = targets::Setup {
        switchyard: proxy.switchyard,
        backend: backend_addr,
        proxy_cpu: proxy.proxy_cpu,
        workdir: std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id())),
        busy_polling: false,
        switchyard_profile: None,
    };
    Ok((backend, setup))
}

fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
                + String::from_utf8_lossy(&o.stderr).trim()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    format!(
        "- CPU: {} ({} CPUs)\n- Memory: {}\n- Kernel: {}",
        cpu.trim(),
        // `--all`: the load generator runs pinned to one CPU, and plain
        // `nproc` counts only the CPUs it may use.
        shell("nproc --all"),
        shell("free -h | awk '/Mem:/ {print $2}'"),
        shell("uname -sr")
    )
}

fn versions(switchyard: &std::path::Path, build: &str) -> String {
    format!(
        "- {} ({build})\n- {}\n- {}",
        shell(&format!("{} --version", switchyard.display())),
        shell("nginx -v"),
        shell("haproxy -v | head -1")
    )
}
