//! The `switchyard` binary: parses the command line and hands over to
//! [`switchyard::runtime`].

use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{Cli, Command};
use switchyard::{config, logging, runtime};

fn main() -> ExitCode {
    let args = match config::merged_args(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match Cli::parse_from(args).command {
        Command::Run(args) => {
            if let Err(e) = logging::init(args.log_format, &args.log_level) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(runtime::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => exit(runtime::check(args)),
        Command::Routes(args) => exit(runtime::routes(args)),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
