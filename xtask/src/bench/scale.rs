//! `cargo xtask bench scale`: what `goroscope run` costs on a service with many goroutines
//! (the `scale` fixture, Go 1.27: N goroutines blocked forever at four sites plus 10,000
//! short goroutines a second), for each N: the agent's peak memory (RSS), the duration of
//! its refresh, its CPU time per minute and the time of a /metrics scrape. The sizes are
//! interleaved run after run (the order rotates), so a slow spell of the VM hits every
//! size; medians and their spread (min–max) are reported. Writes `target/bench/scale.md`
//! and `scale.json`.

use std::fs;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::driven::Driven;
use super::report::Report;
use super::scrape::Scraper;
use super::{sample, Samples};
use crate::project::fixtures_dir;

/// What one run of one size measured.
struct Run {
    /// Peak and final resident memory of the agent, MB.
    hwm_mb: f64,
    rss_mb: f64,
    /// `goroscope_refresh_duration_seconds` at each scrape of the window, s.
    refresh: Vec<f64>,
    /// Agent CPU (user + system) over the window, % of one core.
    cpu_pct: f64,
    /// Wall time of each /metrics scrape of the window, ms.
    scrape_ms: Vec<f64>,
    /// Live goroutines the agent counted (at the last scrape).
    live: f64,
    untracked: f64,
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

pub fn run(runs: usize, sizes: &[u64], warmup: u64, window: u64, churn: u64) -> Result<()> {
    let agent = super::prepare(
        "scale",
        &[
            ("--runs", runs as u64),
            ("--seconds", window),
            ("--churn", 1),
        ],
    )?;
    if sizes.is_empty() {
        bail!("--sizes must list at least one size");
    }
    let fixture = fixtures_dir().join("go1.27.3/scale-default");
    let mut all: Vec<(u64, Run)> = Vec::new();
    for r in 0..runs {
        for i in 0..sizes.len() {
            let n = sizes[(i + r) % sizes.len()];
            crate::project::step(&format!("scale: run {}/{runs}, N = {n}", r + 1));
            let m = one(&agent, &fixture, n, churn, warmup, window)?;
            crate::project::step(&format!(
                "  peak RSS {:.1} MB, refresh {:?} s, CPU {:.2}%, scrape {:?} ms",
                m.hwm_mb, m.refresh, m.cpu_pct, m.scrape_ms
            ));
            all.push((n, m));
        }
    }
    report(runs, sizes, churn, warmup, window, &all).write()
}

/// Scrapes per measured window (one every 15 s, as a Prometheus would).
const SCRAPE_EVERY: Duration = Duration::from_secs(15);

fn one(
    agent: &std::path::Path,
    fixture: &std::path::Path,
    n: u64,
    churn: u64,
    warmup: u64,
    window: u64,
) -> Result<Run> {
    let mut target = Driven::start(Command::new(fixture).args([
        "-blocked",
        &n.to_string(),
        "-churn",
        &churn.to_string(),
    ]))?;
    let pid = target.ready_pid()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let a = Driven::start(
        Command::new(agent).args(["run", "--pid", &pid, "--listen", &addr, "--log", "warn"]),
    )?;
    let apid = a.pid();
    let scraper = Scraper::new(&addr);
    // Ready: the first refresh has counted the blocked goroutines.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(body) = scraper.metrics() {
            let live = goroutines(&body);
            if live.0 + live.1 >= n as f64 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not count {n} goroutines within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(warmup));
    let cpu0 = cpu_ticks(apid)?;
    let t0 = Instant::now();
    let mut refresh = Vec::new();
    let mut scrape_ms = Vec::new();
    let mut live = (0.0, 0.0);
    let end = t0 + Duration::from_secs(window);
    let mut next = t0 + SCRAPE_EVERY;
    while next <= end {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let body = scraper.metrics()?;
        scrape_ms.push(t.elapsed().as_secs_f64() * 1e3);
        refresh.extend(sample(&body, "goroscope_refresh_duration_seconds"));
        live = goroutines(&body);
        next += SCRAPE_EVERY;
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu1 = cpu_ticks(apid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let (hwm_mb, rss_mb) = memory(apid)?;
    drop(a);
    target.finish()?;
    Ok(Run {
        hwm_mb,
        rss_mb,
        refresh,
        cpu_pct: (cpu1 - cpu0) / TICKS / elapsed * 100.0,
        scrape_ms,
        live: live.0,
        untracked: live.1,
    })
}

/// `(live, untracked)` goroutines of the traced process in a scrape.
fn goroutines(body: &str) -> (f64, f64) {
    let first = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        first("goroscope_process_goroutines"),
        first("goroscope_process_goroutines_untracked"),
    )
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from the 3rd field on.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok(utime + stime)
}

/// `(VmHWM, VmRSS)` of a process, MB.
fn memory(pid: u32) -> Result<(f64, f64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> Result<f64> {
        let l = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("{key} in /proc/{pid}/status"))?;
        Ok(l[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()?)
    };
    Ok((kb("VmHWM:")? / 1e3, kb("VmRSS:")? / 1e3))
}

/// `median (min–max)` of values, with `digits` decimals.
fn spread(v: &[f64], digits: usize) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.last()) {
        (Some(lo), Some(hi)) => {
            format!("{:.digits$} ({lo:.digits$}–{hi:.digits$})", s[s.len() / 2])
        }
        _ => "—".into(),
    }
}

fn report(
    runs: usize,
    sizes: &[u64],
    churn: u64,
    warmup: u64,
    window: u64,
    all: &[(u64, Run)],
) -> Report {
    let mut r = Report::new("scale", "Scale benchmark");
    r.paragraph(&format!(
        "`goroscope run --pid` (release build, default settings: refresh every 5 s) on the \
         `scale` fixture (Go 1.27.3): N goroutines blocked forever at four `go` sites plus \
         {churn} short goroutines a second. Per run: {warmup} s after the agent first counted \
         the N goroutines, then a {window} s window with a /metrics scrape every 15 s. \
         {runs} runs per size, sizes interleaved (the order rotates each run); each cell is \
         the median over the runs (refresh and scrape: over every scrape of every run) with \
         the min–max in parentheses."
    ));
    let mut s = Samples::default();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    let base = all
        .iter()
        .filter(|(n, _)| *n == sizes.iter().copied().min().unwrap_or(0))
        .map(|(_, m)| m.hwm_mb)
        .fold(f64::INFINITY, f64::min);
    for &n in sizes {
        let ms: Vec<&Run> = all
            .iter()
            .filter(|(k, _)| *k == n)
            .map(|(_, m)| m)
            .collect();
        let col = |f: &dyn Fn(&Run) -> Vec<f64>| ms.iter().flat_map(|m| f(m)).collect::<Vec<f64>>();
        let hwm = col(&|m| vec![m.hwm_mb]);
        let refresh = col(&|m| m.refresh.clone());
        let cpu = col(&|m| vec![m.cpu_pct]);
        let scrape = col(&|m| m.scrape_ms.clone());
        let live = col(&|m| vec![m.live]);
        let untracked = col(&|m| vec![m.untracked]);
        for v in &hwm {
            s.push("hwm", *v);
        }
        let mut h = hwm.clone();
        let over = super::median(&mut h) - base;
        let per_g = if n > 0 {
            over * 1e6 / n as f64
        } else {
            f64::NAN
        };
        rows.push(vec![
            format!("{n}"),
            spread(&live, 0),
            spread(&untracked, 0),
            spread(&hwm, 1),
            if n > 0 {
                format!("{over:.1} ({per_g:.0} B per goroutine)")
            } else {
                "— (the base)".into()
            },
            spread(&refresh, 3),
            format!(
                "{} = {:.1} s a minute",
                spread(&cpu, 2),
                super::median(&mut cpu.clone()) * 0.6
            ),
            spread(&scrape, 1),
        ]);
        json_rows.push(json!({
            "goroutines": n, "peak_rss_mb": hwm, "refresh_seconds": refresh,
            "cpu_percent": cpu, "scrape_ms": scrape, "live": live, "untracked": untracked,
            "final_rss_mb": col(&|m| vec![m.rss_mb]),
        }));
    }
    r.table(
        &[
            "N blocked",
            "live counted",
            "of which untracked",
            "agent peak RSS (MB)",
            "over the smallest N (MB)",
            "refresh (s)",
            "agent CPU (% of a core)",
            "scrape (ms)",
        ],
        &rows,
    );
    r.json(
        json!({ "churn_per_second": churn, "runs": runs, "warmup_seconds": warmup,
                   "window_seconds": window, "sizes": json_rows }),
    );
    r
}
