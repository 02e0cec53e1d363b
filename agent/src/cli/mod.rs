//! The `goroscope` command line.

pub mod inspect;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "goroscope",
    version,
    about = "Watch goroutines inside live Go programs with eBPF",
    long_about = "goroscope attaches uprobes to the Go runtime of running programs, without \
                  restarting or rebuilding them, to see goroutines being created and exiting."
)]
pub struct Cli {
    /// Log level filter (e.g. info, debug, goroscope=trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn", env = "GOROSCOPE_LOG")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Analyse a Go binary: Go version, module, runtime struct offsets and the probe sites
    /// goroscope would use (needs no privileges).
    InspectBinary {
        /// Path to the Go executable.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Attach to a running Go process and print goroutines created and exited per interval
    /// (needs root or CAP_BPF+CAP_PERFMON).
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
