//! `cargo xtask bench overhead`: ns per goroutine of a goroutine churn (the `bench`
//! fixture) with no probes, empty programs at goroscope's sites (the floor), goroscope,
//! and empty programs at function entry. Writes `target/bench/overhead.md` and `.json`.

use std::collections::HashMap;
use std::process::Command;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::driven::Traced;
use super::report::Report;
use super::{prepare, Samples};
use crate::project::{fixtures_dir, step};

pub fn run(runs: usize, n: u64, go: &str, no_entry: bool, gomaxprocs: u32) -> Result<()> {
    let agent = prepare("overhead", &[("--runs", runs as u64), ("--goroutines", n)])?;
    let fixture = fixtures_dir().join(format!("go{go}/bench-default"));
    if !fixture.exists() {
        bail!(
            "{} not built (is {go} in the Go matrix?)",
            fixture.display()
        );
    }
    let all_modes = ["none", "floor", "goroscope", "entry"];
    let modes = &all_modes[..if no_entry { 3 } else { 4 }];
    let mut ns = Samples::default();
    let mut reports: HashMap<&str, Vec<Value>> = HashMap::new();
    // Modes take turns run by run, so drift of the machine hits them alike.
    for r in 0..runs {
        for &mode in modes {
            let mut cmd = Command::new(&fixture);
            if gomaxprocs > 0 {
                cmd.env("GOMAXPROCS", gomaxprocs.to_string());
            }
            let mut traced = Traced::start(&mut cmd, &agent, mode, "goroutines")?;
            let v = traced.target.reply_value(&format!("go {n}"), "ns")?;
            ns.push(mode, v);
            if let Some(report) = traced.finish()? {
                reports.entry(mode).or_default().push(report);
            }
            step(&format!("bench run {} {mode}: {v:.0} ns/goroutine", r + 1));
        }
    }
    let results: serde_json::Map<String, Value> = modes
        .iter()
        .map(|&mode| {
            let result = json!({
                "median_ns_per_goroutine": ns.median(mode),
                "runs_ns": ns.runs(mode),
                "agent": reports.get(mode).cloned().unwrap_or_default(),
            });
            (mode.to_string(), result)
        })
        .collect();
    let setting = Setting {
        runs,
        n,
        go,
        no_entry,
        gomaxprocs,
    };
    let goroscope = reports.get("goroscope").map_or(&[][..], Vec::as_slice);
    let mut report = setting.report(modes, &ns, goroscope);
    report.json(Value::Object(results));
    report.write()
}

/// The benchmark's arguments, as the report states them.
struct Setting<'a> {
    runs: usize,
    n: u64,
    go: &'a str,
    no_entry: bool,
    gomaxprocs: u32,
}

impl Setting<'_> {
    /// The Markdown report: medians per mode, the ratios against the goals, and what the
    /// agent's own reports (`goroscope` mode) say about events and its resources.
    fn report(&self, modes: &[&str], ns: &Samples, goroscope: &[Value]) -> Report {
        let Setting {
            runs,
            n,
            go,
            no_entry,
            gomaxprocs,
        } = *self;
        let base = ns.median("none");
        let added = |m: &str| ns.median(m) - base;
        let ratio_floor = added("goroscope") / added("floor");
        let ratio_entry = if no_entry {
            f64::NAN
        } else {
            added("entry") / added("goroscope")
        };
        let lost: u64 = goroscope.iter().filter_map(|r| r["lost"].as_u64()).sum();
        let created: Vec<u64> = goroscope
            .iter()
            .filter_map(|r| r["created"].as_u64())
            .collect();
        let cpu = goroscope
            .iter()
            .filter_map(|r| r["agent_cpu_seconds"].as_f64())
            .reduce(f64::max)
            .unwrap_or(0.0);
        let rss = goroscope
            .iter()
            .filter_map(|r| r["agent_max_rss_kib"].as_u64())
            .max()
            .unwrap_or(0);
        let gomaxprocs = if gomaxprocs == 0 {
            "default".to_string()
        } else {
            gomaxprocs.to_string()
        };
        let mut md = Report::new("overhead", "Overhead benchmark");
        md.paragraph(&format!(
            "Go {go} fixture `bench`: {n} goroutines created that exit at once, \
             GOMAXPROCS={gomaxprocs}; median of {runs} runs per mode, modes interleaved."
        ));
        let rows: Vec<Vec<String>> = modes
            .iter()
            .map(|&mode| {
                vec![
                    mode.to_string(),
                    format!("{:.0}", ns.median(mode)),
                    format!("{:+.0}", added(mode)),
                ]
            })
            .collect();
        md.table(&["mode", "ns per goroutine", "added vs none"], &rows);
        md.line(&format!(
            "- goroscope added cost / floor added cost: {ratio_floor:.2} (goal ≤ 1.5)"
        ));
        md.line(&format!(
            "- entry probes added cost / goroscope added cost: {ratio_entry:.1} (goal ≥ 10)"
        ));
        md.line(&format!(
            "- goroscope events: created per run {created:?}, lost {lost}"
        ));
        md.line(&format!(
            "- agent (goroscope mode, refreshing its table every 5 s): max CPU {cpu:.2} s \
             per run, peak RSS {rss} KiB"
        ));
        md
    }
}
