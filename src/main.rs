//! The `switchyard` binary: parses the command line and hands over to
//! [`switchyard::runtime`].

use std::process::ExitCode;
use std::time::Duration;

/// mimalloc: faster than the system allocator for many small, short-lived
/// allocations across threads, and it hands freed memory back to the OS
/// instead of keeping it in per-thread arenas. Built without its requests
/// for huge pages: see [`switchyard::memory`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use switchyard::busy_poll::BusyPoll;
use switchyard::cli::{Cli, Command, LogFormat};
use switchyard::serving::Serving;
use switchyard::{config, descriptors, logging, memory, runtime};

fn main() -> ExitCode {
    // First, so that every allocation from here on gets small pages.
    let small_pages = memory::use_small_pages();
    let args = match config::merged_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let command = Cli::parse_from(args).command;
    if let Err(e) = command.source().check_consistent() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Before anything starts a thread: see `descriptors`.
    let descriptors = match &command {
        Command::Run(run) => Some((
            descriptors::prepare(run.max_connections),
            run.max_connections,
        )),
        Command::Check(_) | Command::Routes(_) => None,
    };
    let (format, filter) = match &command {
        Command::Run(run) => (run.log_format, run.log_level.as_str()),
        // check and routes print reports; keep the log to warnings.
        Command::Check(_) | Command::Routes(_) => (LogFormat::Text, "warn"),
    };
    if let Err(e) = logging::init(format, filter) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some((prepared, max_connections)) = &descriptors {
        prepared.log(*max_connections);
    }
    if let Err(error) = small_pages {
        tracing::warn!(%error, "transparent huge pages left as they were");
    }
    let workers = match &command {
        Command::Run(run) => run.worker_threads,
        Command::Check(_) | Command::Routes(_) => None,
    }
    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let busy_poll_window = match &command {
        Command::Run(run) => run.busy_poll,
        Command::Check(_) | Command::Routes(_) => Duration::ZERO,
    };
    let serving = Serving::choose(workers, busy_poll_window);
    // Busy polling on this runtime's one thread; with more threads the
    // serving threads poll (see `serving`).
    let busy_poll =
        (workers <= 1 && !busy_poll_window.is_zero()).then(|| BusyPoll::new(busy_poll_window));
    // One core: a current-thread runtime has no work-stealing to pay for.
    // With serving threads this runtime keeps the rest (admin, sources,
    // shutdown), which needs no more than one thread.
    let runtime = if workers <= 1 || serving != Serving::InRuntime {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if let Some(busy_poll) = &busy_poll {
            builder.on_thread_unpark(busy_poll.unpark_hook());
        }
        builder.enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let result = runtime.block_on(async move {
        if let Some(busy_poll) = busy_poll {
            tokio::spawn(busy_poll.run());
        }
        match command {
            Command::Run(args) => runtime::run(*args, serving).await.map(|()| 0),
            Command::Check(args) => runtime::check(args).await,
            Command::Routes(args) => runtime::routes(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
