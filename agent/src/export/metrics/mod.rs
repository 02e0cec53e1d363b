//! The metrics goroscope exports, built from a [`Snapshot`] and encoded as Prometheus
//! text (0.0.4) or OpenMetrics (1.0.0), whichever the scraper asks for (`Accept`).
//!
//! One model, two encoders. [`SnapshotCollector`], a `prometheus` crate `Collector`,
//! builds the crate's `MetricFamily` values from the snapshot, one file per family group
//! (in the order of [`METRICS`]): [`agent`] (the agent and its targets), [`process`]
//! (per traced process), [`sites`] (per goroutine site), [`contexts`] (per context
//! site). The Prometheus text format is the crate's `TextEncoder`; the crate has no
//! OpenMetrics encoder, so [`openmetrics`] writes the same families in OpenMetrics
//! (counter families named without `_total`, `info` families, `# EOF`). Both write the
//! same samples; numbers differ only where no exported value goes (the crate writes
//! infinities as `inf` and minus zero as `-0`).
//!
//! The collector is not put in a crate `Registry`: gathering there sorts each family's
//! series by label values (this exporter keeps them by process, then site) and drops
//! families without samples (this exporter serves their HELP and TYPE all the same).

mod agent;
mod contexts;
mod leaks;
mod openmetrics;
mod pods;
mod process;
mod sites;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::slice;
use std::sync::OnceLock;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::TextEncoder;

use super::fold::SeriesLabels;
use super::{ProcessReport, Snapshot};
use crate::model::ProcessTable;

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
    /// A gauge of value 1 whose labels are the information (`info` in OpenMetrics).
    Info,
}

/// Every metric goroscope exports: (name as written in samples, kind, labels, help).
/// Counters end in `_total`, infos in `_info`, histograms are the base name. The
/// metric-list test pins this table; families are served in its order.
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
    ("goroscope_discovery_processes", Kind::Gauge, &["kind"], "Processes seen by the last discovery scan of the host: all (with a readable executable), unreadable (executable not examinable: missing CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH), go (running a Go binary), and of those: traced, excluded (by the selectors), untraceable (e.g. an unsupported Go version), waiting_for_pod."),
    ("goroscope_discovery_scan_duration_seconds", Kind::Gauge, &[], "Time the last discovery scan of /proc took."),
    ("goroscope_cri_connected", Kind::Gauge, &[], "1 when the container runtime's CRI socket answered the last listing (pod identity), 0 when it failed or no socket was found."),
    ("goroscope_pod_info", Kind::Info, &["namespace", "pod", "pod_uid"], "A pod with a traced process; also carries the pod labels listed in [runtime] pod_labels, as label_<name>."),
    ("goroscope_process_info", Kind::Info, &["pid", "exe", "namespace", "pod", "container", "go_version"], "A traced process."),
    ("goroscope_process_goroutines", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container"], "Live goroutines of a traced process."),
    ("goroscope_process_goroutines_untracked", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container"], "Live goroutines beyond the limit of tracked goroutines per process or node (counted, not attributed to sites; see [limits])."),
    ("goroscope_process_goroutines_by_state", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "state"], "Live goroutines by state (running, runnable, syscall, or the wait reason)."),
    ("goroscope_process_lost_events_total", Kind::Counter, &["pid", "exe", "namespace", "pod", "container", "reason"], "Probe events not recorded: read_error (goroutine unreadable), live_map_full, site_map_full, context_map_full, context_site_map_full."),
    ("goroscope_site_goroutines", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Live goroutines created at a `go` statement (site = file:line)."),
    ("goroscope_site_goroutines_waiting", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Live goroutines created at the site that are blocked (channel, select, sleep, IO, lock)."),
    ("goroscope_site_goroutines_leaked", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Live goroutines created at the site that the Go runtime itself proved leaked (status _Gleaked, set by the GC cycle of a goroutineleak profile: Go 1.27, or 1.26 with GOEXPERIMENT=goroutineleakprofile); counted in goroscope_site_goroutines_waiting too."),
    ("goroscope_site_goroutines_created_total", Kind::Counter, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Goroutines created at the site since goroscope attached."),
    ("goroscope_site_goroutines_exited_total", Kind::Counter, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Goroutines created at the site that exited since goroscope attached."),
    ("goroscope_site_oldest_goroutine_age_seconds", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Age of the oldest live goroutine created at the site (a lower bound for goroutines older than goroscope's attach)."),
    ("goroscope_site_goroutines_growth_per_second", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Rise of the floor of the site's live goroutines over the window of the leak model's time scale that suspects it (else its fastest scale), goroutines per second."),
    ("goroscope_site_leak_suspected", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "1 when the leak model suspects the site of leaking goroutines (see README, Leak model)."),
    ("goroscope_site_goroutine_lifetime_seconds", Kind::Histogram, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Lifetime of goroutines created at the site (created while attached)."),
    ("goroscope_context_site_created_total", Kind::Counter, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Cancelable contexts created at a call into package context (site = file:line) since goroscope attached."),
    ("goroscope_context_site_cancelled_total", Kind::Counter, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Contexts created at the site (while attached) that were cancelled."),
    ("goroscope_context_site_uncancelled", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Contexts created at the site (while attached) not cancelled yet."),
    ("goroscope_context_site_oldest_uncancelled_age_seconds", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Age of the oldest uncancelled context created at the site."),
    ("goroscope_context_site_lost_cancel", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Uncancelled contexts of the site whose creating goroutine has exited (cancel func most likely lost)."),
    ("goroscope_context_site_waiting_goroutines", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Goroutines blocked on the done channel of an uncancelled context created at the site."),
    ("goroscope_context_children_map_size", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "Largest children map among parent contexts whose uncancelled children were mostly created at the site."),
    ("goroscope_context_site_leak_suspected", Kind::Gauge, &["pid", "exe", "namespace", "pod", "container", "site", "function"], "1 when the leak model suspects the site of leaking contexts: uncancelled contexts piling up (see README, Leak model)."),
    ("goroscope_leak_suspected_info", Kind::Info, &["pid", "exe", "namespace", "pod", "container", "kind", "site", "function", "scale", "blocked_at"], "One series per suspected site: kind (goroutines or contexts), the leak model's time scale that caught it (30s, 10m, 1h30m, runtime: proven by the Go runtime) and where most of its goroutines block (function file:line; empty when unknown)."),
];

impl Kind {
    /// The kind of metric `name` (a name of [`METRICS`]).
    pub fn of(name: &str) -> Kind {
        spec(name).1
    }
}

/// The [`METRICS`] entry of `name`; panics on a name not in the table (a programming
/// error the unit tests catch: every family is built by them).
fn spec(name: &str) -> &'static (&'static str, Kind, &'static [&'static str], &'static str) {
    METRICS
        .iter()
        .find(|m| m.0 == name)
        .unwrap_or_else(|| panic!("metric {name} not in METRICS"))
}

/// Builds the families of the latest snapshot, in the order of [`METRICS`].
pub struct SnapshotCollector<'a> {
    pub snapshot: &'a Snapshot,
    /// How long the previous scrape took (`goroscope_scrape_duration_seconds`).
    pub scrape_seconds: f64,
}

impl Collector for SnapshotCollector<'_> {
    fn desc(&self) -> Vec<&Desc> {
        static DESCS: OnceLock<Vec<Desc>> = OnceLock::new();
        DESCS
            .get_or_init(|| {
                METRICS
                    .iter()
                    .map(|(name, _, labels, help)| {
                        let labels = labels.iter().map(|l| l.to_string()).collect();
                        Desc::new(name.to_string(), help.to_string(), labels, HashMap::new())
                            .expect("METRICS holds valid names and help (unit-tested)")
                    })
                    .collect()
            })
            .iter()
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(METRICS.len());
        agent::families(self.snapshot, self.scrape_seconds, &mut out);
        pods::families(self.snapshot, &mut out);
        process::families(self.snapshot, &mut out);
        sites::families(self.snapshot, &mut out);
        contexts::families(self.snapshot, &mut out);
        leaks::families(self.snapshot, &mut out);
        out
    }
}

/// Encodes the snapshot; `scrape_seconds` is how long the previous scrape took.
pub fn render(
    snapshot: &Snapshot,
    format: Format,
    scrape_seconds: f64,
) -> prometheus::Result<String> {
    let families = SnapshotCollector {
        snapshot,
        scrape_seconds,
    }
    .collect();
    let mut out = String::with_capacity(64 * 1024);
    match format {
        Format::Prometheus => {
            let encoder = TextEncoder::new();
            for f in &families {
                // The crate's encoder refuses a family without samples.
                if f.get_metric().is_empty() {
                    header(&mut out, f.name(), type_name(f.get_field_type()), f.help());
                } else {
                    encoder.encode_utf8(slice::from_ref(f), &mut out)?;
                }
            }
        }
        Format::OpenMetrics => openmetrics::encode(&families, &mut out),
    }
    Ok(out)
}

/// `# HELP` and `# TYPE` lines (help as written in [`METRICS`]: nothing to escape).
fn header(out: &mut String, family: &str, type_name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {family} {help}");
    let _ = writeln!(out, "# TYPE {family} {type_name}");
}

/// The type of a family in the Prometheus text format.
fn type_name(t: MetricType) -> &'static str {
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

/// Label pairs, in this order.
/// The labels of a series of process `t` (`pid` its pid as text): `pid`, `exe` and its
/// pod (`namespace`, `pod`, `container`; empty outside Kubernetes), then `extra`.
fn process_labels(pid: &str, t: &ProcessTable, extra: &[(&str, &str)]) -> Vec<LabelPair> {
    let id = &t.identity;
    let mut l = labels(&[
        ("pid", pid),
        ("exe", &t.exe),
        ("namespace", &id.namespace),
        ("pod", &id.pod),
        ("container", &id.container),
    ]);
    l.extend(labels(extra));
    l
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name(name.to_string());
            l.set_value(value.to_string());
            l
        })
        .collect()
}

/// An empty family `name`, with its help and type from [`METRICS`].
fn empty_family(name: &str) -> MetricFamily {
    let (_, kind, _, help) = spec(name);
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(match kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge | Kind::Info => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    f
}

/// Family `name` (a gauge, counter or info) with one sample per `(labels, value)`.
fn family(name: &str, samples: impl IntoIterator<Item = (Vec<LabelPair>, f64)>) -> MetricFamily {
    let mut f = empty_family(name);
    let counter = f.get_field_type() == MetricType::COUNTER;
    f.set_metric(
        samples
            .into_iter()
            .map(|(labels, v)| {
                let mut m = proto::Metric::from_label(labels);
                if counter {
                    let mut c = proto::Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                } else {
                    let mut g = proto::Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
                m
            })
            .collect(),
    );
    f
}

/// Histogram family `name` with one histogram per set of labels.
fn histogram_family(
    name: &str,
    histograms: impl IntoIterator<Item = (Vec<LabelPair>, proto::Histogram)>,
) -> MetricFamily {
    let mut f = empty_family(name);
    f.set_metric(
        histograms
            .into_iter()
            .map(|(labels, h)| {
                let mut m = proto::Metric::from_label(labels);
                m.set_histogram(h);
                m
            })
            .collect(),
    );
    f
}

/// Every process's folded series of one kind of site (`fold_process`: the series of
/// one process), with their labels `pid`, `exe`, `site`, `function`.
fn labelled_series<A>(
    snap: &Snapshot,
    fold_process: impl Fn(&ProcessReport) -> BTreeMap<SeriesLabels, A>,
) -> Vec<(Vec<LabelPair>, A)> {
    let mut out = Vec::new();
    for r in &snap.processes {
        let pid = r.table.pid.to_string();
        for (key, series) in fold_process(r) {
            let labels = process_labels(
                &pid,
                &r.table,
                &[("site", &key.site), ("function", &key.function)],
            );
            out.push((labels, series));
        }
    }
    out
}

/// How a per-series family reads its value from a folded series.
type SeriesValue<A> = (&'static str, fn(&A) -> f64);

/// One family per `(name, value)` of `table`, one sample per series.
fn series_families<A>(
    series: &[(Vec<LabelPair>, A)],
    table: &[SeriesValue<A>],
    out: &mut Vec<MetricFamily>,
) {
    for (name, value) in table {
        out.push(family(
            name,
            series.iter().map(|(labels, a)| (labels.clone(), value(a))),
        ));
    }
}

#[cfg(test)]
mod tests;
