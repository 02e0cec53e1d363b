#![allow(dead_code)]
//! TEMPORARY (deleted once the new encoders are checked against it): the hand-written
//! renderer the collector replaces.
//!
//! Prometheus text (0.0.4) and OpenMetrics (1.0.0) rendering of a [`Snapshot`].
//!
//! Cardinality is bounded: per process only the `top_sites` sites ranked by (suspected,
//! live, created) get their own `site`/`function` series; the rest are summed into
//! `site="other",function="other"`, whose counters add up what each site did while it was
//! folded (see [`super::OtherFold`]), so they never go down when sites move in or out of
//! the top. Goids and
//! addresses never become labels: a site whose source location is unknown is labelled
//! `site="unknown"`.

use std::collections::BTreeMap;
use std::fmt::Write;

use goroscope_common::LIFETIME_BUCKETS;

use super::{ProcessReport, Snapshot};
use crate::detect::leak::Verdict;
use crate::model::{bucket_upper_seconds, ContextSiteView, SiteView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

impl Format {
    /// Picks the format from an HTTP `Accept` header (OpenMetrics when it is asked for).
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a)
                if a.split(',').any(|part| {
                    let mut it = part.split(';');
                    let media = it.next().unwrap_or("").trim();
                    let q_zero = it.any(|p| {
                        p.trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.parse::<f64>().ok())
                            == Some(0.0)
                    });
                    media == "application/openmetrics-text" && !q_zero
                }) =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
    Info,
}

/// Every metric goroscope exports: (name as written in samples, kind, labels, help).
/// Counters end in `_total`, infos in `_info`, histograms are the base name. The
/// metric-list test pins this table.
pub const METRICS: &[(&str, Kind, &[&str], &str)] = &[
    ("goroscope_build_info", Kind::Info, &["version"], "goroscope's version."),
    ("goroscope_traced_processes", Kind::Gauge, &[], "Processes whose goroutines are traced."),
    ("goroscope_target_attached", Kind::Gauge, &["target"], "Whether the probes of a configured target are attached (1) or not (0)."),
    ("goroscope_target_waiting", Kind::Gauge, &["target"], "1 for an executable target whose file does not exist (yet) on this node: nothing to attach to, attached when it appears."),
    ("goroscope_attach_failures_total", Kind::Counter, &[], "Processes or targets that could not be traced."),
    ("goroscope_map_fill_ratio", Kind::Gauge, &["map"], "Fill ratio of a bounded kernel map (0..1); when full, events are lost and counted."),
    ("goroscope_refresh_duration_seconds", Kind::Gauge, &[], "Time the last refresh of the goroutine tables took."),
    ("goroscope_last_refresh_timestamp_seconds", Kind::Gauge, &[], "Unix time of the last refresh of the goroutine tables."),
    ("goroscope_scrape_duration_seconds", Kind::Gauge, &[], "Time rendering the previous /metrics response took."),
    ("goroscope_process_info", Kind::Info, &["pid", "exe", "go_version"], "A traced process."),
    ("goroscope_process_goroutines", Kind::Gauge, &["pid", "exe"], "Live goroutines of a traced process."),
    ("goroscope_process_goroutines_by_state", Kind::Gauge, &["pid", "exe", "state"], "Live goroutines by state (running, runnable, syscall, or the wait reason)."),
    ("goroscope_process_lost_events_total", Kind::Counter, &["pid", "exe", "reason"], "Probe events not recorded: read_error (goroutine unreadable), live_map_full, site_map_full, context_map_full, context_site_map_full."),
    ("goroscope_site_goroutines", Kind::Gauge, &["pid", "exe", "site", "function"], "Live goroutines created at a `go` statement (site = file:line)."),
    ("goroscope_site_goroutines_waiting", Kind::Gauge, &["pid", "exe", "site", "function"], "Live goroutines created at the site that are blocked (channel, select, sleep, IO, lock)."),
    ("goroscope_site_goroutines_created_total", Kind::Counter, &["pid", "exe", "site", "function"], "Goroutines created at the site since goroscope attached."),
    ("goroscope_site_goroutines_exited_total", Kind::Counter, &["pid", "exe", "site", "function"], "Goroutines created at the site that exited since goroscope attached."),
    ("goroscope_site_goroutine_lifetime_seconds", Kind::Histogram, &["pid", "exe", "site", "function"], "Lifetime of goroutines created at the site (created while attached)."),
    ("goroscope_site_oldest_goroutine_age_seconds", Kind::Gauge, &["pid", "exe", "site", "function"], "Age of the oldest live goroutine created at the site (a lower bound for goroutines older than goroscope's attach)."),
    ("goroscope_site_goroutines_growth_per_second", Kind::Gauge, &["pid", "exe", "site", "function"], "Trend of the site's live goroutines over the leak window (least squares), goroutines per second."),
    ("goroscope_site_leak_suspected", Kind::Gauge, &["pid", "exe", "site", "function"], "1 when the leak model suspects the site of leaking goroutines (see README, Leak model)."),
    ("goroscope_context_site_created_total", Kind::Counter, &["pid", "exe", "site", "function"], "Cancelable contexts created at a call into package context (site = file:line) since goroscope attached."),
    ("goroscope_context_site_cancelled_total", Kind::Counter, &["pid", "exe", "site", "function"], "Contexts created at the site (while attached) that were cancelled."),
    ("goroscope_context_site_uncancelled", Kind::Gauge, &["pid", "exe", "site", "function"], "Contexts created at the site (while attached) not cancelled yet."),
    ("goroscope_context_site_oldest_uncancelled_age_seconds", Kind::Gauge, &["pid", "exe", "site", "function"], "Age of the oldest uncancelled context created at the site."),
    ("goroscope_context_site_lost_cancel", Kind::Gauge, &["pid", "exe", "site", "function"], "Uncancelled contexts of the site whose creating goroutine has exited (cancel func most likely lost)."),
    ("goroscope_context_site_waiting_goroutines", Kind::Gauge, &["pid", "exe", "site", "function"], "Goroutines blocked on the done channel of an uncancelled context created at the site."),
    ("goroscope_context_children_map_size", Kind::Gauge, &["pid", "exe", "site", "function"], "Largest children map among parent contexts whose uncancelled children were mostly created at the site."),
];

/// Sums of the context sites that share one label pair.
#[derive(Default)]
struct CtxAgg {
    created: u64,
    cancelled: u64,
    uncancelled: u64,
    oldest: f64,
    lost: u64,
    waiting: u64,
    children: u64,
}

/// A process's context sites, ranked by (uncancelled, created), each with whether it is
/// in the top `top` (its own series) or folded into "other".
pub fn ranked_contexts(p: &ProcessReport, top: usize) -> Vec<(&ContextSiteView, bool)> {
    let mut ranked: Vec<_> = p.table.contexts.iter().collect();
    ranked.sort_by(|a, b| {
        b.uncancelled
            .cmp(&a.uncancelled)
            .then(b.created.cmp(&a.created))
            .then(a.pc.cmp(&b.pc))
    });
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c, i < top))
        .collect()
}

/// Folds a process's context sites like [`fold_sites`].
fn fold_context_sites(p: &ProcessReport, top: usize) -> BTreeMap<(String, String), CtxAgg> {
    let mut out: BTreeMap<(String, String), CtxAgg> = BTreeMap::new();
    let mut own = std::collections::HashMap::new();
    for (c, in_top) in ranked_contexts(p, top) {
        let key = series_key(in_top, &c.function, &c.file, c.line);
        own.insert(c.location(), key.clone());
        let a = out.entry(key).or_default();
        a.created += c.created;
        a.cancelled += c.cancelled;
        a.uncancelled += c.uncancelled;
        a.oldest = a.oldest.max(c.oldest_uncancelled_age_seconds);
        a.lost += c.lost_cancel;
        a.waiting += c.waiting_goroutines;
    }
    if let (Some(o), Some(a)) = (&p.other, out.get_mut(&other_key())) {
        a.created = o.contexts.created;
        a.cancelled = o.contexts.cancelled;
    }
    for parent in &p.table.context_parents {
        let (Some(n), Some(key)) = (parent.children_map_len, own.get(&parent.children_site)) else {
            continue;
        };
        if let Some(a) = out.get_mut(key) {
            a.children = a.children.max(n);
        }
    }
    out
}

/// Upper bounds (histogram bucket indexes) exported for lifetimes: every 4th kernel
/// bucket, 1 µs … 275 s, then +Inf.
const EXPORTED_BUCKETS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];

/// Sums of the sites that share one label pair.
#[derive(Default)]
struct SiteAgg {
    live: u64,
    waiting: u64,
    created: u64,
    exited: u64,
    buckets: [u64; LIFETIME_BUCKETS],
    lifetime_sum: f64,
    oldest: f64,
    growth: f64,
    suspected: bool,
}

/// The label pair of the folded series.
fn other_key() -> (String, String) {
    ("other".to_string(), "other".to_string())
}

/// The `(site, function)` label pair of a site: its own (`file:line`, or `unknown` when
/// the source location is not known) in the top, else the folded series.
fn series_key(in_top: bool, function: &str, file: &str, line: u32) -> (String, String) {
    if !in_top {
        other_key()
    } else if file.is_empty() {
        ("unknown".to_string(), "unknown".to_string())
    } else {
        (format!("{file}:{line}"), function.to_string())
    }
}

/// A process's sites, ranked by (suspected, live, created), each with its verdict and
/// whether it is in the top `top` (its own series) or folded into "other".
pub fn ranked_sites(p: &ProcessReport, top: usize) -> Vec<(&SiteView, Verdict, bool)> {
    let mut ranked: Vec<_> = p.table.sites.iter().map(|s| (s, p.verdict(s))).collect();
    ranked.sort_by(|(a, va), (b, vb)| {
        vb.suspected
            .cmp(&va.suspected)
            .then(b.live.cmp(&a.live))
            .then(b.created.cmp(&a.created))
            .then(a.gopc.cmp(&b.gopc))
    });
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, (s, v))| (s, v, i < top))
        .collect()
}

/// Folds a process's sites into at most `top + 1` label pairs `(site, function)`.
fn fold_sites(p: &ProcessReport, top: usize) -> BTreeMap<(String, String), SiteAgg> {
    let mut out: BTreeMap<(String, String), SiteAgg> = BTreeMap::new();
    for (s, v, in_top) in ranked_sites(p, top) {
        let key = series_key(in_top, &s.function, &s.file, s.line);
        let a = out.entry(key).or_default();
        a.live += s.live;
        a.waiting += s.waiting;
        a.created += s.created.unwrap_or(0);
        a.exited += s.exited.unwrap_or(0);
        if let Some(l) = &s.lifetime {
            for (b, (_, n)) in l.buckets.iter().enumerate().take(LIFETIME_BUCKETS) {
                a.buckets[b] += n;
            }
            a.lifetime_sum += l.sum_seconds;
        }
        a.oldest = a.oldest.max(s.oldest_age_seconds);
        a.growth += v.growth_per_second;
        a.suspected |= v.suspected;
    }
    // Counters of "other": what its sites added while they were in it (monotonic).
    if let (Some(o), Some(a)) = (&p.other, out.get_mut(&other_key())) {
        a.created = o.sites.created;
        a.exited = o.sites.exited;
        a.buckets = o.sites.buckets;
        a.lifetime_sum = o.sites.lifetime_sum;
    }
    out
}

struct Enc {
    out: String,
    format: Format,
}

fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// `k="v",…` with values escaped.
fn label_set(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    s
}

/// The labels of a per-site series (goroutine and context sites alike).
fn site_label_set(pid: &str, exe: &str, site: &str, function: &str) -> String {
    label_set(&[
        ("pid", pid),
        ("exe", exe),
        ("site", site),
        ("function", function),
    ])
}

fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Enc {
    fn header(&mut self, name: &str) {
        let (_, kind, _, help) = METRICS
            .iter()
            .find(|m| m.0 == name)
            .unwrap_or_else(|| panic!("metric {name} not in METRICS"));
        let (family, ty) = match (kind, self.format) {
            (Kind::Counter, Format::OpenMetrics) => (name.trim_end_matches("_total"), "counter"),
            (Kind::Counter, Format::Prometheus) => (name, "counter"),
            (Kind::Info, Format::OpenMetrics) => (name.trim_end_matches("_info"), "info"),
            (Kind::Info, Format::Prometheus) => (name, "gauge"),
            (Kind::Gauge, _) => (name, "gauge"),
            (Kind::Histogram, _) => (name, "histogram"),
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {ty}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let l = label_set(labels);
        self.sample_with(name, &l, "", v);
    }

    /// A sample whose labels are already rendered (`k="v",…`, escaped), plus `extra`
    /// (rendered too, may be empty).
    fn sample_with(&mut self, name: &str, labels: &str, extra: &str, v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() || !extra.is_empty() {
            self.out.push('{');
            self.out.push_str(labels);
            if !labels.is_empty() && !extra.is_empty() {
                self.out.push(',');
            }
            self.out.push_str(extra);
            self.out.push('}');
        }
        self.out.push(' ');
        if v.fract() == 0.0 && v.abs() < 1e15 {
            let _ = write!(self.out, "{}", v as i64);
        } else {
            self.out.push_str(&value(v));
        }
        self.out.push('\n');
    }

    /// A family with one sample per item.
    fn family<T>(&mut self, name: &str, items: &[T], f: impl Fn(&T) -> (Vec<(&str, &str)>, f64)) {
        self.header(name);
        for it in items {
            let (labels, v) = f(it);
            self.sample(name, &labels, v);
        }
    }
}

/// Renders the snapshot; `scrape_seconds` is how long the previous render took.
pub fn render(snap: &Snapshot, format: Format, scrape_seconds: f64) -> String {
    let mut e = Enc {
        out: String::with_capacity(64 * 1024),
        format,
    };
    e.family("goroscope_build_info", &[()], |_| {
        (vec![("version", env!("CARGO_PKG_VERSION"))], 1.0)
    });
    e.family("goroscope_traced_processes", &[()], |_| {
        (vec![], snap.processes.len() as f64)
    });
    e.family("goroscope_target_attached", &snap.targets, |t| {
        (
            vec![("target", t.target.as_str())],
            f64::from(u8::from(t.attached)),
        )
    });
    e.family("goroscope_target_waiting", &snap.targets, |t| {
        (
            vec![("target", t.target.as_str())],
            f64::from(u8::from(t.waiting)),
        )
    });
    e.family("goroscope_attach_failures_total", &[()], |_| {
        (vec![], snap.attach_failures as f64)
    });
    e.family("goroscope_map_fill_ratio", &snap.fill.ratios(), |(m, v)| {
        (vec![("map", *m)], *v)
    });
    e.family("goroscope_refresh_duration_seconds", &[()], |_| {
        (vec![], snap.refresh_seconds)
    });
    e.family("goroscope_last_refresh_timestamp_seconds", &[()], |_| {
        (vec![], snap.refreshed_at_unix)
    });
    e.family("goroscope_scrape_duration_seconds", &[()], |_| {
        (vec![], scrape_seconds)
    });

    // Per process.
    struct P<'a> {
        pid: String,
        exe: &'a str,
        report: &'a ProcessReport,
        states: BTreeMap<&'a str, u64>,
        sites: BTreeMap<(String, String), SiteAgg>,
        contexts: BTreeMap<(String, String), CtxAgg>,
    }
    let procs: Vec<P> = snap
        .processes
        .iter()
        .map(|r| {
            let mut states = BTreeMap::new();
            for g in &r.table.goroutines {
                *states.entry(g.state.as_str()).or_default() += 1;
            }
            P {
                pid: r.table.pid.to_string(),
                exe: &r.table.exe,
                report: r,
                states,
                sites: fold_sites(r, snap.top_sites),
                contexts: fold_context_sites(r, snap.top_sites),
            }
        })
        .collect();
    e.family("goroscope_process_info", &procs, |p| {
        (
            vec![
                ("pid", p.pid.as_str()),
                ("exe", p.exe),
                ("go_version", p.report.table.go_version.as_str()),
            ],
            1.0,
        )
    });
    e.family("goroscope_process_goroutines", &procs, |p| {
        (
            vec![("pid", p.pid.as_str()), ("exe", p.exe)],
            p.report.table.live as f64,
        )
    });
    e.header("goroscope_process_goroutines_by_state");
    for p in &procs {
        for (state, n) in &p.states {
            e.sample(
                "goroscope_process_goroutines_by_state",
                &[("pid", &p.pid), ("exe", p.exe), ("state", state)],
                *n as f64,
            );
        }
    }
    e.header("goroscope_process_lost_events_total");
    for p in &procs {
        let c = p.report.table.counters.clone().unwrap_or_default();
        for (reason, n) in c.lost.iter() {
            e.sample(
                "goroscope_process_lost_events_total",
                &[("pid", &p.pid), ("exe", p.exe), ("reason", reason.name())],
                n as f64,
            );
        }
    }

    // Per site.
    type Get = fn(&SiteAgg) -> f64;
    let site_gauges: [(&str, Get); 7] = [
        ("goroscope_site_goroutines", |a| a.live as f64),
        ("goroscope_site_goroutines_waiting", |a| a.waiting as f64),
        ("goroscope_site_goroutines_created_total", |a| {
            a.created as f64
        }),
        ("goroscope_site_goroutines_exited_total", |a| {
            a.exited as f64
        }),
        ("goroscope_site_oldest_goroutine_age_seconds", |a| a.oldest),
        ("goroscope_site_goroutines_growth_per_second", |a| a.growth),
        ("goroscope_site_leak_suspected", |a| {
            f64::from(u8::from(a.suspected))
        }),
    ];
    // Label sets of every (process, site), rendered once.
    let site_labels: Vec<Vec<(String, &SiteAgg)>> = procs
        .iter()
        .map(|p| {
            p.sites
                .iter()
                .map(|((site, function), a)| (site_label_set(&p.pid, p.exe, site, function), a))
                .collect()
        })
        .collect();
    for (name, get) in site_gauges {
        e.header(name);
        for (labels, a) in site_labels.iter().flatten() {
            e.sample_with(name, labels, "", get(a));
        }
    }
    let h = "goroscope_site_goroutine_lifetime_seconds";
    e.header(h);
    let bucket_name = format!("{h}_bucket");
    let sum_name = format!("{h}_sum");
    let count_name = format!("{h}_count");
    let les: Vec<String> = EXPORTED_BUCKETS
        .iter()
        .map(|b| {
            format!(
                "le=\"{}\"",
                value(bucket_upper_seconds(*b).unwrap_or(f64::INFINITY))
            )
        })
        .collect();
    for (labels, a) in site_labels.iter().flatten() {
        let total: u64 = a.buckets.iter().sum();
        let mut cumulative = 0u64;
        let mut next = 0usize;
        for (b, le) in EXPORTED_BUCKETS.iter().zip(&les) {
            while next <= *b {
                cumulative += a.buckets[next];
                next += 1;
            }
            e.sample_with(&bucket_name, labels, le, cumulative as f64);
        }
        e.sample_with(&bucket_name, labels, "le=\"+Inf\"", total as f64);
        e.sample_with(&sum_name, labels, "", a.lifetime_sum);
        e.sample_with(&count_name, labels, "", total as f64);
    }
    // Per context site.
    type CtxGet = fn(&CtxAgg) -> f64;
    let ctx_families: [(&str, CtxGet); 7] = [
        ("goroscope_context_site_created_total", |a| a.created as f64),
        ("goroscope_context_site_cancelled_total", |a| {
            a.cancelled as f64
        }),
        ("goroscope_context_site_uncancelled", |a| {
            a.uncancelled as f64
        }),
        (
            "goroscope_context_site_oldest_uncancelled_age_seconds",
            |a| a.oldest,
        ),
        ("goroscope_context_site_lost_cancel", |a| a.lost as f64),
        ("goroscope_context_site_waiting_goroutines", |a| {
            a.waiting as f64
        }),
        ("goroscope_context_children_map_size", |a| a.children as f64),
    ];
    let ctx_labels: Vec<(String, &CtxAgg)> = procs
        .iter()
        .flat_map(|p| {
            p.contexts
                .iter()
                .map(|((site, function), a)| (site_label_set(&p.pid, p.exe, site, function), a))
        })
        .collect();
    for (name, get) in ctx_families {
        e.header(name);
        for (labels, a) in &ctx_labels {
            e.sample_with(name, labels, "", get(a));
        }
    }
    if format == Format::OpenMetrics {
        e.out.push_str("# EOF\n");
    }
    e.out
}
