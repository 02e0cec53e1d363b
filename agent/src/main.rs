use std::process::ExitCode;

use clap::Parser;
use goroscope::cli::{self, Cli, Command};
use goroscope::daemon::config::{Config, LogFormat};

fn init_logs(level: Option<&str>, default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level.unwrap_or(default)))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        // The daemon's config decides its log format: read it first.
        Command::Run(args) => Config::resolve(args).and_then(|cfg| {
            init_logs(cli.log.as_deref(), "info", cfg.log_format);
            goroscope::daemon::run(cfg)
        }),
        Command::Serve(args) => args.config().and_then(|cfg| {
            init_logs(cli.log.as_deref(), "info", cfg.log_format);
            goroscope::daemon::run(cfg)
        }),
        _ => {
            init_logs(cli.log.as_deref(), "warn", LogFormat::Text);
            command(cli.command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("goroscope: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) | Command::Serve(_) => unreachable!("handled in main"),
        Command::InspectBinary { path, json } => cli::inspect::run(&path, json),
        Command::Top {
            target,
            interval,
            iterations,
            all,
            no_contexts,
            context_cancel_probe,
        } => cli::check_interval("interval", interval).and_then(|i| {
            let contexts = goroscope::session::ContextMode::of(!no_contexts, context_cancel_probe);
            cli::top::run(target.target(), i, iterations, all, contexts)
        }),
        Command::Snapshot { pid, json, observe } => cli::snapshot::run(pid, json, observe),
        Command::BenchAttach { pid, mode, hooks } => cli::bench::run(pid, mode, hooks),
        Command::Watch {
            pid,
            interval,
            duration,
        } => cli::watch::run(pid, interval, duration),
    }
}
