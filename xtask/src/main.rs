//! `cargo xtask …`: everything that is not plain cargo, one module per task.
//!
//! - `setup`       installs what the build and tests need (Debian packages, bpf-linker, Go
//!   toolchains for the fixtures, the deploy/ tests' tools, the real Go programs of the oracle
//!   tests); idempotent and quick when all is there.
//! - `fixtures`    builds the Go test programs for every Go version of the matrix.
//! - `test`        setup + fixtures + lint + `cargo test` (the README's test command).
//! - `lint`        `cargo fmt --check` and `cargo clippy -- -D warnings`.
//! - `gen-offsets` regenerates the built-in runtime offsets table from DWARF.
//! - `gen-cri`     regenerates the CRI client from the committed `api.proto`.
//! - `bench …`     benchmarks (root), reports in `target/bench/`.
//!
//! `project` holds what they share (paths, the Go matrix, running commands).

mod bench;
mod check;
mod deploy_tools;
mod fixtures;
mod gen_cri;
mod gen_offsets;
mod project;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "goroscope project tasks",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing build and test dependencies (apt, bpf-linker, Go toolchains, real
    /// Go programs from npm).
    Setup,
    /// Build the Go fixtures for every Go version of the matrix (incremental).
    Fixtures,
    /// The full test run: setup, fixtures, lint, cargo test. This is what CI runs.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy --all-targets -- -D warnings`.
    Lint,
    /// Regenerate agent/src/gobin/offsets_table.rs from DWARF of the fixture builds.
    GenOffsets,
    /// Regenerate agent/src/discover/cri/runtime_v1.rs (the CRI client) from
    /// agent/proto/cri-api/api.proto.
    GenCri,
    /// Benchmarks (need root); results go to target/bench/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// ns per goroutine of a 1,000,000-goroutine churn: no probes, empty programs at
    /// goroscope's sites (the floor), goroscope, empty programs at function entry.
    Overhead {
        /// Runs per mode (the median is reported).
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// Goroutines per run.
        #[arg(long, default_value_t = 1_000_000)]
        goroutines: u64,
        /// Go version of the fixture.
        #[arg(long, default_value = "1.26.6")]
        go: String,
        /// Skip the (slow) entry-probe mode.
        #[arg(long)]
        no_entry: bool,
        /// GOMAXPROCS of the fixture (0: Go's default, one per CPU). With 1 the creating
        /// goroutine never yields and a million goroutines pile up: not representative.
        #[arg(long, default_value_t = 0)]
        gomaxprocs: u32,
    },
    /// ns per context of creating and cancelling 1,000,000 contexts (no probes, empty
    /// programs at goroscope's sites, goroscope), and requests per second of a loopback
    /// HTTP server deriving a WithTimeout context per request (the same, plus empty
    /// programs at the goroutine sites only and goroscope with `contexts = false`).
    Contexts {
        /// Runs per mode (the median is reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Contexts per run.
        #[arg(long, default_value_t = 1_000_000)]
        contexts: u64,
        /// Seconds of HTTP load per run.
        #[arg(long, default_value_t = 5)]
        http_seconds: u64,
    },
    /// `goroscope run` with no target on a host with many processes: latency until a
    /// new Go process is traced, cost of a /proc scan, agent CPU and memory.
    Discovery {
        /// Processes started by the benchmark (Go ones included).
        #[arg(long, default_value_t = 200)]
        processes: usize,
        /// Of which Go processes (the rest: `sleep`).
        #[arg(long, default_value_t = 50)]
        go_processes: usize,
        /// New Go processes whose discovery latency is measured (one at a time).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Cost of `goroscope run` on a service with many goroutines: agent peak RSS,
    /// refresh time, CPU per minute and scrape time for each number of goroutines.
    Scale {
        /// Runs per size (sizes interleaved; medians and spreads reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Numbers of blocked goroutines, comma-separated (the smallest is the base).
        #[arg(long, value_delimiter = ',', default_values_t = [0u64, 10_000, 100_000, 1_000_000])]
        sizes: Vec<u64>,
        /// Seconds after the agent first counted them, before measuring.
        #[arg(long, default_value_t = 30)]
        warmup: u64,
        /// Seconds measured per run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Short goroutines started per second beside the blocked ones.
        #[arg(long, default_value_t = 10_000)]
        churn: u64,
    },
    /// Time of a /metrics scrape of `goroscope run` tracing many processes with many
    /// `go` sites each.
    Scrape {
        /// Traced processes (each with 100 sites).
        #[arg(long, default_value_t = 20)]
        processes: usize,
        /// Scrapes measured (the median is reported).
        #[arg(long, default_value_t = 100)]
        scrapes: usize,
    },
}

fn main() {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::all(),
        Cmd::Fixtures => setup::go().and_then(|_| fixtures::build()),
        Cmd::Test {
            no_lint,
            cargo_args,
        } => check::test(no_lint, &cargo_args),
        Cmd::Lint => check::lint(),
        Cmd::GenOffsets => gen_offsets::generate(),
        Cmd::GenCri => gen_cri::generate(),
        Cmd::Bench { which } => match which {
            Bench::Overhead {
                runs,
                goroutines,
                go,
                no_entry,
                gomaxprocs,
            } => bench::overhead::run(runs, goroutines, &go, no_entry, gomaxprocs),
            Bench::Contexts {
                runs,
                contexts,
                http_seconds,
            } => bench::contexts::run(runs, contexts, http_seconds),
            Bench::Scale {
                runs,
                sizes,
                warmup,
                seconds,
                churn,
            } => bench::scale::run(runs, &sizes, warmup, seconds, churn),
            Bench::Scrape { processes, scrapes } => bench::scrape::run(processes, scrapes),
            Bench::Discovery {
                processes,
                go_processes,
                rounds,
            } => bench::discovery::run(processes, go_processes, rounds),
        },
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
