use std::process::ExitCode;

use clap::Parser;
use goroscope::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::InspectBinary { path, json } => cli::inspect::run(&path, json),
        Command::Top {
            target,
            interval,
            iterations,
            all,
        } => cli::check_interval("interval", interval)
            .and_then(|i| cli::top::run(target.target(), i, iterations, all)),
        Command::Snapshot { pid, json } => cli::snapshot::run(pid, json),
        Command::BenchAttach { pid, mode } => cli::bench::run(pid, mode),
        Command::Watch {
            pid,
            interval,
            duration,
        } => cli::watch::run(pid, interval, duration),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("goroscope: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
