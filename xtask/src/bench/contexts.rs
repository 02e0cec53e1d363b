//! `cargo xtask bench contexts`: ns per context of creating and cancelling contexts, and
//! requests per second (and server CPU per request) of a loopback HTTP server deriving a
//! WithTimeout context per request (the `ctxbench` fixture), with no probes; goroscope's
//! default (one probe per context, at creation) and its floor (an empty program at the
//! creation site); goroscope with the cancel probe and its floor (empty programs at both
//! sites); the goroutine hooks only. Probe hits per context are counted by the floors'
//! programs (goroscope's own programs count nothing: the contexts it recorded are
//! reported instead). Writes `target/bench/contexts.md`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use super::driven::Traced;
use super::report::Report;
use super::{prepare, Samples};
use crate::project::{fixtures_dir, step};

/// `(name, bench-attach mode, hooks)`: the last two trace goroutines only (HTTP only).
const MODES: [(&str, &str, &str); 7] = [
    ("none", "none", "all"),
    ("floor", "floor", "created"),
    ("goroscope", "goroscope", "created"),
    ("floor-cancel", "floor", "all"),
    ("goroscope-cancel", "goroscope", "all"),
    ("floor-goroutines", "floor", "goroutines"),
    ("goroscope-no-contexts", "goroscope", "goroutines"),
];

/// The floor of a goroscope mode (same sites, empty programs).
fn floor_of(name: &str) -> Option<&'static str> {
    match name {
        "goroscope" => Some("floor"),
        "goroscope-cancel" => Some("floor-cancel"),
        _ => None,
    }
}

/// What the runs measured, per mode name.
#[derive(Default)]
struct Measured {
    /// ns per context created and cancelled.
    ns: Samples,
    /// HTTP requests per second.
    rps: Samples,
    /// µs of server CPU per HTTP request.
    cpu_req: Samples,
    /// Context probe hits per context of the loop (floors), or contexts recorded per
    /// context (goroscope).
    hits_ctx: Samples,
    /// The same per HTTP request.
    hits_req: Samples,
    /// The agent's reports of the `goroscope` runs.
    reports: Vec<Value>,
}

/// The benchmark's arguments and what it runs.
struct Setting {
    runs: usize,
    /// Contexts per run.
    n: u64,
    http_seconds: u64,
    /// The release agent.
    agent: PathBuf,
    fixture: PathBuf,
}

pub fn run(runs: usize, n: u64, http_seconds: u64) -> Result<()> {
    let agent = prepare(
        "contexts",
        &[
            ("--runs", runs as u64),
            ("--contexts", n),
            ("--http-seconds", http_seconds),
        ],
    )?;
    let setting = Setting {
        runs,
        n,
        http_seconds,
        agent,
        fixture: fixtures_dir().join("go1.27.3/ctxbench-default"),
    };
    let mut m = Measured::default();
    for r in 0..runs {
        for mode in MODES {
            m.run_once(&setting, r, mode)?;
        }
    }
    m.report(&setting).write()
}

impl Measured {
    /// Run `r` of one mode: contexts in a loop, then HTTP load.
    fn run_once(
        &mut self,
        s: &Setting,
        r: usize,
        (name, mode, hooks): (&'static str, &str, &str),
    ) -> Result<()> {
        let (fixture, http_seconds) = (&s.fixture, s.http_seconds);
        // Server (and the traced process) on CPU 0, load generator on CPU 1: the server's
        // own CPU is what the probes cost, the VM's scheduling noise less so.
        let mut traced = Traced::start(
            Command::new("taskset").args(["-c", "0"]).arg(fixture),
            &s.agent,
            mode,
            hooks,
        )?;
        let v = traced.target.reply_value(&format!("ctx {}", s.n), "ns")?;
        self.ns.push(name, v);
        let hits0 = context_hits(traced.ask_agent("hits")?.as_ref());
        if let Some(h) = hits0 {
            self.hits_ctx.push(name, h as f64 / s.n as f64);
        }
        // The server in the traced process, the load generator in its own (untraced).
        traced.target.send("serve")?;
        let l = traced.target.line()?;
        let url = l
            .strip_prefix("addr ")
            .with_context(|| format!("fixture said {l:?}"))?
            .to_string();
        // The server's own CPU time (all its threads, user + kernel, which includes the
        // probes) per request: steady where requests/s swing with the VM's load.
        let cpu_before = process_cpu_ns(&traced.pid)?;
        let out = Command::new("taskset")
            .args(["-c", "1"])
            .arg(fixture)
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
        self.rps.push(name, q);
        let cpu = (process_cpu_ns(&traced.pid)? - cpu_before) as f64;
        let requests = (q * http_seconds as f64).max(1.0);
        let us_per_req = cpu / 1e3 / requests;
        self.cpu_req.push(name, us_per_req);
        if let (Some(h0), Some(h1)) = (hits0, context_hits(traced.ask_agent("hits")?.as_ref())) {
            self.hits_req.push(name, (h1 - h0) as f64 / requests);
        }
        let report = traced.finish()?;
        if name.starts_with("goroscope") && hooks != "goroutines" {
            self.reports.extend(report);
        }
        step(&format!(
            "bench contexts run {r} {name}: {v:.0} ns/context, {q:.0} requests/s, \
             {us_per_req:.2} us of server CPU per request"
        ));
        Ok(())
    }

    /// Added ns per context of mode `name` over its floor's, per run: run `r` of each
    /// mode was taken in the same round, so each ratio compares neighbours in time.
    fn run_ratios(&self, name: &str) -> Vec<f64> {
        let Some(floor) = floor_of(name) else {
            return Vec::new();
        };
        let (none, f, g) = (
            self.ns.runs("none"),
            self.ns.runs(floor),
            self.ns.runs(name),
        );
        none.iter()
            .zip(f)
            .zip(g)
            .map(|((n, f), g)| (g - n) / (f - n))
            .collect()
    }

    /// HTTP cost of mode `name` against no probes, %: `(requests/s, CPU per request)`.
    fn costs(&self, name: &str) -> (f64, f64) {
        let (r, c) = (self.rps.median(name), self.cpu_req.median(name));
        let (r_none, c_none) = (self.rps.median("none"), self.cpu_req.median("none"));
        ((1.0 - r / r_none) * 100.0, (1.0 - c_none / c) * 100.0)
    }

    /// Added ns per context of mode `name` over the floor of its mode.
    fn floor_ratio(&self, name: &str) -> Option<f64> {
        let n_none = self.ns.median("none");
        floor_of(name).map(|f| (self.ns.median(name) - n_none) / (self.ns.median(f) - n_none))
    }

    /// The table row of mode `name` (with `hooks`): medians, and costs against no probes.
    fn row(&self, name: &str, hooks: &str) -> Vec<String> {
        let dash = || "—".to_string();
        let n_none = self.ns.median("none");
        let (ctx_ns, added) = match (hooks, name) {
            (_, "none") => (format!("{n_none:.0}"), dash()),
            ("goroutines", _) => (dash(), dash()),
            _ => {
                let v = self.ns.median(name);
                let ratio = self
                    .floor_ratio(name)
                    .map_or(String::new(), |r| format!(" ({r:.2}× its floor's)"));
                (format!("{v:.0}"), format!("{:+.0}{ratio}", v - n_none))
            }
        };
        let hits = |s: &Samples| {
            if s.runs(name).is_empty() {
                dash()
            } else {
                format!("{:.2}", s.median(name))
            }
        };
        let (rc, cc) = self.costs(name);
        let pct = |v: f64| {
            if name == "none" {
                dash()
            } else {
                format!("{v:.1}%")
            }
        };
        vec![
            label(name).to_string(),
            hits(&self.hits_ctx),
            ctx_ns,
            added,
            hits(&self.hits_req),
            format!("{:.0}", self.rps.median(name)),
            pct(rc),
            format!("{:.2} µs", self.cpu_req.median(name)),
            pct(cc),
        ]
    }

    /// The Markdown report: medians per mode against no probes, the goals, every run.
    fn report(&self, s: &Setting) -> Report {
        let Setting {
            runs,
            n,
            http_seconds,
            ..
        } = *s;
        let rows: Vec<Vec<String>> = MODES.iter().map(|m| self.row(m.0, m.2)).collect();
        let mut md = Report::new("contexts", "Contexts benchmark");
        md.paragraph(&format!(
            "Go 1.27.3 fixture `ctxbench`, median of {runs} runs per mode, modes interleaved. \
             HTTP: the server in the traced process on CPU 0, 8 keep-alive clients for \
             {http_seconds} s in an untraced process on CPU 1. Server CPU per request = CPU \
             time of all the server's threads (user + kernel, where the probes run) / \
             requests; its cost column is what a CPU-bound server would lose in requests/s."
        ));
        md.paragraph(
            "Hits: context probe hits per context of the loop, and per HTTP request, counted \
             by the empty programs (floors); for goroscope, the contexts it recorded per \
             context of the loop (1.00: every one, once) and per request.",
        );
        let ns_header = format!("ns per context (create + cancel, {n})");
        let header = [
            "mode",
            "hits per context",
            &ns_header,
            "added",
            "hits per request",
            "requests/s",
            "cost",
            "server CPU per request",
            "cost",
        ];
        md.table(&header, &rows);
        let lost: u64 = self.reports.iter().filter_map(|r| r["lost"].as_u64()).sum();
        let created: Vec<u64> = self
            .reports
            .iter()
            .filter_map(|r| r["contexts_created"].as_u64())
            .collect();
        for (name, goal) in [("goroscope", 1.2), ("goroscope-cancel", 1.5)] {
            let (rc, cc) = self.costs(name);
            md.line(&format!(
                "- {}: added cost per context / its floor's: {:.2} (goal ≤ {goal}); HTTP \
                 cost {rc:.1}% of requests/s, {cc:.1}% by server CPU per request",
                label(name),
                self.floor_ratio(name).unwrap_or(f64::NAN)
            ));
        }
        md.line(&format!(
            "- contexts recorded per goroscope run, both modes (ctx + HTTP): {created:?}; lost events: {lost}"
        ));
        for name in ["goroscope", "goroscope-cancel"] {
            let mut r = self.run_ratios(name);
            r.sort_by(f64::total_cmp);
            let r: Vec<String> = r.iter().map(|v| format!("{v:.2}")).collect();
            md.line(&format!(
                "- {name}: added cost per context / its floor's, run by run (each against the \
                 no-probe and floor runs next to it), sorted: [{}]",
                r.join(", ")
            ));
        }
        md.line("- every run, sorted:");
        for (name, _, _) in MODES {
            let ns = self.ns.sorted(name);
            if !ns.is_empty() {
                let ns: Vec<String> = ns.iter().map(|v| format!("{v:.0}")).collect();
                md.line(&format!("  - {name}: ns per context [{}]", ns.join(", ")));
            }
            let c: Vec<String> = self
                .cpu_req
                .sorted(name)
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect();
            md.line(&format!(
                "  - {name}: requests/s {:?}; µs per request [{}]",
                self.rps.sorted(name),
                c.join(", ")
            ));
        }
        md
    }
}

/// The row label of a mode.
fn label(name: &str) -> &'static str {
    match name {
        "none" => "no probes",
        "floor" => "floor: empty programs at goroscope's sites (context creation only)",
        "goroscope" => "goroscope (one probe per context)",
        "floor-cancel" => "floor with the cancel site too",
        "goroscope-cancel" => "goroscope with `context_cancel_probe = true`",
        "floor-goroutines" => "empty programs at the goroutine sites only",
        _ => "goroscope with `contexts = false`",
    }
}

/// Context probe hits in an agent's `hits` reply: creation + cancel hits of the empty
/// programs, or the contexts goroscope recorded.
fn context_hits(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    if let Some(n) = v["contexts_created"].as_u64() {
        return Some(n);
    }
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Some(n("context-create") + n("context-cancel"))
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
