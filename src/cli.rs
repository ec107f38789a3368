//! The command line: `run`, `check` and `routes`, as DESIGN.md specifies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::routes::class::DEFAULT_CLASS_NAME;
use crate::routes::host::is_dns_label;
use crate::routes::translate::ServiceBackendRef;
use crate::units::{parse_duration, parse_size, parse_timeout};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A Kubernetes Ingress controller and upgrade-aware reverse proxy",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic for the Ingresses of our class.
    Run(Box<RunArgs>),
    /// Validate manifests: print errors and warnings; exit 1 on errors.
    Check(CheckArgs),
    /// Print the route table the manifests translate to.
    Routes(RoutesArgs),
}

/// Where objects come from and how they are translated.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// Directory (or file) of YAML manifests: Ingress, IngressClass,
    /// Service, EndpointSlice and kubernetes.io/tls Secret. Repeatable.
    /// Read recursively; changes are applied within about a second.
    /// Without it, objects come from the cluster (in-cluster config or
    /// KUBECONFIG).
    #[arg(long = "manifests", value_name = "DIR")]
    pub manifests: Vec<PathBuf>,

    /// The IngressClass name to serve; Ingresses of other classes are ignored.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CLASS_NAME)]
    pub ingress_class: String,

    /// Only read namespaced objects from this namespace. Repeatable; by
    /// default every namespace is read.
    #[arg(long = "watch-namespace", value_name = "NS")]
    pub watch_namespaces: Vec<String>,

    /// Cluster-wide fallback for requests that match no rule and no
    /// Ingress defaultBackend, as NAMESPACE/SERVICE:PORT (port number or
    /// name). Without it such requests get 404.
    #[arg(long, value_name = "NS/NAME:PORT")]
    pub default_backend_service: Option<ServiceBackendRef>,
}

impl SourceArgs {
    /// What the flags say that cannot be so: a fallback Service in a
    /// namespace `--watch-namespace` leaves out would never be read, and
    /// every request no rule matches would get 503 for it.
    pub fn check_consistent(&self) -> Result<(), String> {
        if let Some(fallback) = &self.default_backend_service
            && !self.watch_namespaces.is_empty()
            && !self.watch_namespaces.contains(&fallback.namespace)
        {
            return Err(format!(
                "--default-backend-service {}/{} is in namespace {}, which --watch-namespace \
                 leaves out: add --watch-namespace {}",
                fallback.namespace, fallback.name, fallback.namespace, fallback.namespace
            ));
        }
        Ok(())
    }
}

impl Command {
    pub fn source(&self) -> &SourceArgs {
        match self {
            Command::Run(run) => &run.source,
            Command::Check(check) => &check.source,
            Command::Routes(routes) => &routes.source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Address of the HTTP listener (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address of the admin listener: /metrics, /healthz, /readyz, /routes.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,

    /// Also serve `/metrics` alone on this address (and nothing else), so
    /// metrics can be exposed without the route table.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// YAML file of settings: keys are these flags' long names, e.g.
    /// `http-addr: 0.0.0.0:80`. Flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// On SIGTERM or Ctrl-C: how long in-flight requests and open tunnels
    /// get to finish before they are closed.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Longest time a client may take to send a request's headers (also
    /// the keep-alive idle limit between requests).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_timeout)]
    pub header_read_timeout: Duration,

    /// Longest pause while a client sends a request body (answered 408).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_timeout)]
    pub body_read_timeout: Duration,

    /// Longest time to open a backend connection (answered 504).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_timeout)]
    pub upstream_connect_timeout: Duration,

    /// Longest wait for a backend's response headers (answered 504), and
    /// the longest pause a backend may make while sending its response
    /// body (the client's response is then cut off).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_timeout)]
    pub upstream_response_timeout: Duration,

    /// Longest time a client may take none of its response (it stopped
    /// reading; over HTTP/2, also a stream it grants no window); its
    /// connection is then closed (HTTP/2: that stream is reset), and the
    /// backend's response left unread.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_timeout)]
    pub client_write_timeout: Duration,

    /// An upgraded connection (WebSocket) with no bytes either way for this
    /// long is closed.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_timeout)]
    pub tunnel_idle_timeout: Duration,

    /// Close upgraded connections after this long, busy or not. Default: no limit.
    #[arg(long, value_name = "DUR", value_parser = parse_timeout)]
    pub tunnel_max_lifetime: Option<Duration>,

    /// Most client connections open at once (upgraded ones included); a
    /// connection over the limit is closed as soon as it is accepted.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = parse_max_connections)]
    pub max_connections: usize,

    /// Passive health: an endpoint that fails this many attempts in a row
    /// (refused, timed out, reset or closed before the response head) gets
    /// no requests for a while. 0 turns ejection off.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub upstream_eject_after: u32,

    /// How long a first ejection lasts. An endpoint that fails again right
    /// after one is ejected for twice as long as the last time.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub upstream_eject_backoff: Duration,

    /// The longest an ejection lasts, however often the endpoint failed.
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_duration)]
    pub upstream_eject_max_backoff: Duration,

    /// Most connections one client address (an IPv6 client: its /64) may
    /// have open at once (upgraded ones included); more are closed as soon
    /// as they are accepted. 0 (the default): no limit per address, only
    /// --max-connections.
    /// Behind a load balancer or NAT that hides client addresses (a cloud
    /// LB, kube-proxy with externalTrafficPolicy: Cluster) every client
    /// shares a few addresses, so any fixed default could cap the whole
    /// site; set it where clients connect directly (a few hundred leaves
    /// room for browsers behind a shared office NAT).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_connections_per_client: u32,

    /// Requests per second one client address (IPv6: its /64) may make, on
    /// average; more are answered 429. 0 (the default): no limit, for the
    /// same reason as --max-connections-per-client.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_requests_per_client_per_second: u32,

    /// Requests a client address may make at once above its per-second
    /// rate (the token bucket's size). 0: the rate itself, at least 1.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub client_request_burst: u32,

    /// Largest request head (request line and headers); larger gets 431.
    /// At least 8k.
    #[arg(long, value_name = "SIZE", default_value = "32k", value_parser = parse_header_size)]
    pub max_header_bytes: usize,

    /// Threads serving traffic. Default: the CPUs this process may run on
    /// (its affinity, so `taskset` and cgroup CPU sets count). With 1, a
    /// single-threaded runtime is used, which is faster on one core.
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,

    /// After its last work, keep polling for I/O this long before a
    /// serving thread sleeps (`0s`: off). Saves the wake-up a sleeping
    /// thread needs for the next packet, tens of microseconds on a
    /// virtual machine, for up to this much CPU after each burst of work.
    /// With more than one worker thread, each serves connections from a
    /// listening socket of its own (SO_REUSEPORT).
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = parse_duration)]
    pub busy_poll: Duration,

    /// Log format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's syntax, e.g. `info` or
    /// `info,switchyard::access=off`.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log_level: String,

    /// Write an access log line per request and per closed tunnel.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Settings that only apply when objects come from the cluster.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Cluster mode (without --manifests)")]
pub struct ClusterArgs {
    /// Copy this Service's load-balancer addresses into the status of every
    /// Ingress we serve (NAMESPACE/NAME).
    #[arg(
        long,
        value_name = "NS/NAME",
        conflicts_with = "publish_status_address",
        value_parser = parse_namespaced_name
    )]
    pub publish_service: Option<String>,

    /// Publish these fixed addresses (IPs or host names, comma-separated)
    /// in Ingress status instead of a Service's.
    #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = parse_status_address)]
    pub publish_status_address: Vec<String>,

    /// The longest a burst of cluster changes is coalesced into one table
    /// swap, and the least time from the end of one translation to the
    /// start of the next. A burst settles once nothing else has changed for
    /// 25 ms (or this, if shorter).
    #[arg(long, value_name = "DUR", default_value = "200ms", value_parser = parse_duration)]
    pub sync_debounce: Duration,

    /// Name of the Lease replicas elect a leader on; only the leader writes
    /// Ingress status and Events.
    #[arg(long, value_name = "NAME", default_value = "switchyard-leader")]
    pub election_id: String,

    /// This replica's identity in the election (from the downward API).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Namespace of the leader Lease (from the downward API).
    #[arg(
        long,
        value_name = "NS",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    pub pod_namespace: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// The most connections there can be descriptors for: a process's
/// open-files limit is below 2^31 on Linux.
const MAX_CONNECTIONS: usize = 1 << 30;

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=MAX_CONNECTIONS) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of connections from 1 to {MAX_CONNECTIONS}"
        )),
    }
}

/// An address Ingress status can hold: an IP, or a lower-case DNS name
/// (the API server refuses any other, and every status write with it).
fn parse_status_address(text: &str) -> Result<String, String> {
    let is_dns_name = text.len() <= 253 && text.split('.').all(is_dns_label);
    if text.parse::<std::net::IpAddr>().is_ok() || is_dns_name {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is neither an IP address nor a lower-case DNS name"
        ))
    }
}

fn parse_header_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size < 8192 {
        return Err(format!("{text:?} is below the minimum of 8k"));
    }
    Ok(size)
}

/// `NAMESPACE/NAME` of an object, both DNS labels as Kubernetes names them.
fn parse_namespaced_name(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name)) if is_dns_label(namespace) && is_dns_label(name) => {
            Ok(text.to_string())
        }
        _ => Err(format!("{text:?} is not of the form NAMESPACE/NAME")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_need_only_manifests() {
        let cli = Cli::try_parse_from(["switchyard", "run", "--manifests", "m"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(args.drain_timeout, Duration::from_secs(30));
        assert_eq!(args.max_header_bytes, 32 * 1024);
        assert!(args.access_log);
    }

    #[test]
    fn published_addresses_are_ips_or_dns_names() {
        let parse = |value: &str| {
            let args = ["switchyard", "run", "--publish-status-address", value];
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Run(run) => run.cluster.publish_status_address,
                _ => unreachable!("run"),
            })
        };
        assert_eq!(
            parse("192.0.2.10,2001:db8::1,lb.example.com").unwrap(),
            ["192.0.2.10", "2001:db8::1", "lb.example.com"]
        );
        for bad in [
            "LB.example.com",
            "lb_1.example.com",
            "http://lb",
            "lb..example",
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("neither an IP address"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_fallback_in_a_namespace_not_watched_is_refused() {
        let consistent = |extra: &[&str]| {
            let args = ["switchyard", "check", "--manifests", "m"];
            let cli = Cli::try_parse_from(args.iter().chain(extra)).unwrap();
            cli.command.source().check_consistent()
        };
        let fallback = ["--default-backend-service", "fallback/default:80"];
        assert!(consistent(&fallback).is_ok(), "every namespace is watched");
        let watched = [&fallback[..], &["--watch-namespace", "fallback"]].concat();
        assert!(consistent(&watched).is_ok());
        let left_out = [&fallback[..], &["--watch-namespace", "app"]].concat();
        let error = consistent(&left_out).unwrap_err();
        assert!(error.contains("add --watch-namespace fallback"), "{error}");
    }

    #[test]
    fn a_zero_timeout_is_refused_and_a_zero_drain_is_not() {
        let run = |flag: &str, value: &str| {
            Cli::try_parse_from(["switchyard", "run", "--manifests", "m", flag, value])
        };
        for flag in [
            "--header-read-timeout",
            "--body-read-timeout",
            "--upstream-connect-timeout",
            "--upstream-response-timeout",
            "--client-write-timeout",
            "--tunnel-idle-timeout",
            "--tunnel-max-lifetime",
        ] {
            let error = run(flag, "0s").unwrap_err().to_string();
            assert!(
                error.contains(flag) && error.contains("above zero"),
                "{error}"
            );
        }
        assert!(
            run("--drain-timeout", "0s").is_ok(),
            "close at once on shutdown"
        );
        assert!(run("--drain-timeout", "18446744073709551615s").is_err());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        let error = Cli::try_parse_from([
            "switchyard",
            "run",
            "--manifests",
            "m",
            "--drain-timeout",
            "soon",
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("--drain-timeout"), "{error}");
        assert!(
            Cli::try_parse_from([
                "switchyard",
                "run",
                "--manifests",
                "m",
                "--max-header-bytes",
                "1k"
            ])
            .is_err()
        );
        for impossible in ["0", "18446744073709551615"] {
            let refused =
                Cli::try_parse_from(["switchyard", "run", "--max-connections", impossible]);
            assert!(refused.is_err(), "--max-connections {impossible} was taken");
        }
        let error = Cli::try_parse_from(["switchyard", "run", "--publish-service", "ingress-lb"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--publish-service"), "{error}");
        assert!(error.contains("NAMESPACE/NAME"), "{error}");
    }
}
