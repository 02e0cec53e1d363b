//! The `goroscope` command line.

pub mod bench;
pub mod inspect;
pub mod render;
pub mod snapshot;
pub mod top;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::session::Target;

#[derive(Parser, Debug)]
#[command(
    name = "goroscope",
    version,
    about = "Watch goroutines inside live Go programs with eBPF",
    long_about = "goroscope attaches uprobes to the Go runtime of running programs, without \
                  restarting or rebuilding them, to see which goroutines are alive, where \
                  they were created, and for how long."
)]
pub struct Cli {
    /// Log level filter (e.g. info, debug, goroscope=trace); also RUST_LOG
    /// [default: info for `run`, warn otherwise].
    #[arg(long, global = true, env = "GOROSCOPE_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Which processes to trace.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// Trace this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Trace every process running this Go executable, present and future.
    #[arg(long)]
    pub exe: Option<PathBuf>,
}

/// Flags of `goroscope serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The process to watch.
    #[arg(long)]
    pub pid: u32,
    /// Address of the page and API.
    #[arg(long, default_value = "127.0.0.1:9750")]
    pub listen: String,
    /// Show source lines from this directory (a checkout of the program's sources).
    #[arg(long, value_name = "DIR")]
    pub source_root: Option<PathBuf>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub interval_seconds: f64,
    /// TLS and basic auth of the page (a YAML web config, as for `run`).
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The daemon's configuration for one process, with the stacks of every site read.
    pub fn config(&self) -> anyhow::Result<crate::daemon::config::Config> {
        let mut cfg = crate::daemon::config::Config::resolve(&crate::daemon::config::RunArgs {
            pid: vec![self.pid],
            listen: Some(self.listen.clone()),
            source_root: self.source_root.clone(),
            interval_seconds: Some(self.interval_seconds),
            web_config_file: self.web_config_file.clone(),
            ..Default::default()
        })?;
        cfg.stacks_of_every_site = true;
        Ok(cfg)
    }
}

impl TargetArgs {
    pub fn target(&self) -> Target {
        match (&self.pid, &self.exe) {
            (Some(p), _) => Target::Pid(*p),
            (None, Some(e)) => Target::Exe(e.clone()),
            (None, None) => unreachable!("clap requires one of --pid/--exe"),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon: trace targets, judge leaks, serve Prometheus metrics, health and debug
    /// endpoints over HTTP (needs root). Flags and GOROSCOPE_* variables override the
    /// config file.
    Run(Box<crate::daemon::config::RunArgs>),
    /// The leak workbench for one process: a web page (and its JSON API, /api/v1) on
    /// loopback with the process's creation-site graph, leak verdicts, the stacks of
    /// every site's goroutines and, with --source-root, the source lines (needs root).
    Serve(ServeArgs),
    /// Analyse a Go binary: Go version, module, runtime struct offsets and the probe sites
    /// goroscope would use (needs no privileges).
    InspectBinary {
        /// Path to the Go executable.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Live view of a Go program's goroutines by creation site: live count, growth per
    /// minute, oldest age, dominant wait reason. `q` quits (needs root).
    Top {
        #[command(flatten)]
        target: TargetArgs,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until `q`, Ctrl-C or the target exits).
        #[arg(long)]
        iterations: Option<u64>,
        /// Also show goroutines created by the Go runtime itself.
        #[arg(long)]
        all: bool,
        /// Goroutines only: do not attach the context probes.
        #[arg(long)]
        no_contexts: bool,
        /// A second context probe, at cancel: cancellations exact and at once (default:
        /// one probe per context, cancellations read from memory at each refresh).
        #[arg(long, conflicts_with = "no_contexts")]
        context_cancel_probe: bool,
    },
    /// One-shot dump of a process's goroutines grouped by creation site, like
    /// `debug/pprof/goroutine?debug=1`, without any cooperation from the program (needs
    /// ptrace access to it: same user or root). With `--observe`, also contexts.
    Snapshot {
        /// Process id of the Go program.
        #[arg(long)]
        pid: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Attach the probes for this many seconds before the dump (needs root): adds
        /// goroutines created/exited per site and the contexts created meanwhile that
        /// nobody cancelled, by creation site, with the goroutines waiting on them.
        /// Without it the snapshot only reads memory, and contexts cannot be seen.
        #[arg(long, value_name = "SECONDS")]
        observe: Option<f64>,
    },
    /// Benchmark helper for `cargo xtask bench overhead`.
    #[command(hide = true)]
    BenchAttach {
        #[arg(long)]
        pid: u32,
        #[arg(long, value_enum)]
        mode: bench::Mode,
        #[arg(long, value_enum, default_value = "goroutines")]
        hooks: bench::Hooks,
    },
    /// Attach to a running Go process and print goroutines created and exited per interval
    /// (needs root).
    Watch {
        /// Process id of the Go program.
        #[arg(long)]
        pid: u32,
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many seconds (default: until Ctrl-C or the process exits).
        #[arg(long)]
        duration: Option<f64>,
    },
}

/// Validates an interval given in seconds.
pub fn check_interval(name: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    if !(0.05..=3600.0).contains(&v) {
        anyhow::bail!("--{name} must be between 0.05 and 3600 seconds, not {v}");
    }
    Ok(std::time::Duration::from_secs_f64(v))
}
