//! `cargo xtask bench discovery`: `goroscope run` with no target on a host with many
//! processes (some of them Go): how long until a new Go process is traced, what a scan of
//! `/proc` costs, and the agent's CPU and memory meanwhile. Writes
//! `target/bench/discovery.md`.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::driven::Driven;
use super::report::Report;
use super::{median, sample};
use crate::project::{fixtures_dir, GO_MATRIX};

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ).
const USER_HZ: f64 = 100.0;

pub fn run(processes: usize, go_processes: usize, rounds: usize) -> Result<()> {
    let agent_bin = super::prepare(
        "discovery",
        &[
            ("--processes", processes as u64),
            ("--go-processes", go_processes as u64),
            ("--rounds", rounds as u64),
        ],
    )?;
    if go_processes > processes {
        bail!("--go-processes must not exceed --processes");
    }
    // Go processes of several distinct binaries (every Go version × build variant).
    let binaries: Vec<_> = GO_MATRIX
        .iter()
        .flat_map(|v| {
            ["default", "stripped", "pie"]
                .map(|variant| fixtures_dir().join(format!("go{v}/blockers-{variant}")))
        })
        .collect();
    let mut procs = Vec::new();
    for i in 0..go_processes {
        let mut p = Driven::start(&mut Command::new(&binaries[i % binaries.len()]))?;
        p.ready_pid()?;
        procs.push(p);
    }
    for _ in go_processes..processes {
        procs.push(Driven::start(Command::new("sleep").arg("3600"))?);
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let t_start = Instant::now();
    let agent =
        Driven::start(Command::new(&agent_bin).args(["run", "--listen", &addr, "--log", "warn"]))?;
    let apid = agent.pid();
    let http = ureq::Agent::config_builder()
        .proxy(None)
        .build()
        .new_agent();
    let metrics = || -> Option<String> {
        http.get(format!("http://{addr}/metrics"))
            .call()
            .ok()?
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .ok()
    };
    let pids: Vec<u32> = procs.iter().take(go_processes).map(Driven::pid).collect();
    wait(Duration::from_secs(120), || {
        let m = metrics()?;
        pids.iter()
            .all(|p| m.contains(&format!("goroscope_process_info{{pid=\"{p}\"")))
            .then_some(())
    })
    .context("the agent did not trace every Go process")?;
    let all_traced = t_start.elapsed().as_secs_f64();

    // Steady state: CPU and memory over a minute, scan time at every refresh.
    let (cpu0, t0) = (cpu_seconds(apid)?, Instant::now());
    let mut scans = Vec::new();
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(5));
        if let Some(v) =
            metrics().and_then(|m| sample(&m, "goroscope_discovery_scan_duration_seconds"))
        {
            scans.push(v * 1e3);
        }
    }
    let cpu = (cpu_seconds(apid)? - cpu0) / t0.elapsed().as_secs_f64();
    let (rss, hwm) = (status_kb(apid, "VmRSS")?, status_kb(apid, "VmHWM")?);
    let seen = metrics().unwrap_or_default();
    let kind = |k: &str| {
        sample(
            &seen,
            &format!("goroscope_discovery_processes{{kind=\"{k}\"}}"),
        )
    };

    // Latency: a new Go process (a binary with no probes yet), from its start to its
    // first series.
    let mut latency = Vec::new();
    for r in 0..rounds {
        let bin = &binaries[(go_processes + r) % binaries.len()];
        let t = Instant::now();
        let mut p = Driven::start(&mut Command::new(bin))?;
        p.ready_pid()?;
        let pid = p.pid();
        wait(Duration::from_secs(60), || {
            metrics()?
                .contains(&format!("goroscope_process_info{{pid=\"{pid}\""))
                .then_some(())
        })
        .context("a new process was not traced")?;
        latency.push(t.elapsed().as_secs_f64());
        p.finish()?;
    }
    drop(agent);
    for p in procs {
        drop(p);
    }

    let mut report = Report::new("discovery", "Discovery benchmark");
    report.paragraph(&format!(
        "`goroscope run` with no target and the default settings (refresh and scan every \
         5 s, minimum process age 5 s) on this host plus {processes} processes started by \
         the benchmark: {go_processes} Go processes of {} distinct binaries (the `blockers` \
         fixture of every Go version × default/stripped/PIE), the rest `sleep`. The scan \
         reads `/proc` (a `stat` of `/proc/PID/exe` per process, the ELF section headers \
         once per new binary).",
        binaries.len().min(go_processes)
    ));
    let mut latency_sorted = latency.clone();
    let lat_median = median(&mut latency_sorted);
    let lat_max = latency.iter().copied().fold(0.0, f64::max);
    let row = |what: &str, v: String| vec![what.to_string(), v];
    report.table(
        &["", "value"],
        &[
            row(
                "processes with an executable / Go, seen by the scan",
                format!(
                    "{} / {}",
                    kind("all").unwrap_or(f64::NAN),
                    kind("go").unwrap_or(f64::NAN)
                ),
            ),
            row(
                "traced / untraceable (e.g. Go < 1.21) / excluded",
                format!(
                    "{} / {} / {}",
                    kind("traced").unwrap_or(f64::NAN),
                    kind("untraceable").unwrap_or(f64::NAN),
                    kind("excluded").unwrap_or(f64::NAN)
                ),
            ),
            row(
                "agent start to every Go process traced",
                format!("{all_traced:.1} s"),
            ),
            row(
                &format!("scan of /proc, median of {} refreshes", scans.len()),
                format!("{:.2} ms", median(&mut scans.clone())),
            ),
            row(
                &format!("new Go process to its first series, median of {rounds}"),
                format!("{lat_median:.1} s"),
            ),
            row(
                "new Go process to its first series, max",
                format!("{lat_max:.1} s"),
            ),
            row(
                "agent CPU, steady state (1 min)",
                format!("{:.2}% of a core", cpu * 100.0),
            ),
            row(
                "agent RSS now / peak",
                format!("{:.1} / {:.1} MB", rss / 1024.0, hwm / 1024.0),
            ),
        ],
    );
    report.line(
        "Latency = minimum process age (5 s) + up to one refresh (5 s). A \
         sched_process_exec tracepoint would see a process at once but would still have \
         to wait for the minimum age; /proc polling costs the scan above every 5 s.",
    );
    report.write()
}

fn wait<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// User + system CPU time of `pid` (all its threads), seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `rest` starts at field 3.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / USER_HZ)
}

/// A `/proc/PID/status` value in kB.
fn status_kb(pid: u32, key: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .with_context(|| format!("{key} of pid {pid}"))
}
