//! Per context site (the top sites of each process, the rest folded into `other`):
//! contexts created, cancelled and not cancelled, the oldest uncancelled one's age, lost
//! cancel funcs, goroutines waiting on them, and the largest children map of their
//! parents.

use std::collections::{BTreeMap, HashMap};

use prometheus::proto::MetricFamily;

use super::{labelled_series, series_families, SeriesValue};
use crate::export::fold::{
    fold, ranked_contexts, ContextCounters, Counters, JudgedContext, Series, SeriesLabels, Site,
};
use crate::export::{ProcessReport, Snapshot};

/// The sums of the context sites that share one series.
#[derive(Debug, Default)]
struct ContextSeries {
    counters: ContextCounters,
    uncancelled: u64,
    oldest: f64,
    lost_cancel: u64,
    waiting: u64,
    /// Largest children map of a parent whose uncancelled children are mostly from here.
    children: u64,
    suspected: bool,
}

impl Series<JudgedContext<'_>> for ContextSeries {
    fn add(&mut self, j: &JudgedContext<'_>) {
        self.counters.add(&j.counters());
        self.suspected |= j.verdict.suspected;
        let c = j.ctx;
        self.uncancelled += c.uncancelled;
        self.oldest = self.oldest.max(c.oldest_uncancelled_age_seconds);
        self.lost_cancel += c.lost_cancel;
        self.waiting += c.waiting_goroutines;
    }

    fn counters_mut(&mut self) -> &mut ContextCounters {
        &mut self.counters
    }
}

const VALUES: [SeriesValue<ContextSeries>; 8] = [
    ("goroscope_context_site_created_total", |a| {
        a.counters.created as f64
    }),
    ("goroscope_context_site_cancelled_total", |a| {
        a.counters.cancelled as f64
    }),
    ("goroscope_context_site_uncancelled", |a| {
        a.uncancelled as f64
    }),
    (
        "goroscope_context_site_oldest_uncancelled_age_seconds",
        |a| a.oldest,
    ),
    ("goroscope_context_site_lost_cancel", |a| {
        a.lost_cancel as f64
    }),
    ("goroscope_context_site_waiting_goroutines", |a| {
        a.waiting as f64
    }),
    ("goroscope_context_children_map_size", |a| a.children as f64),
    ("goroscope_context_site_leak_suspected", |a| {
        f64::from(u8::from(a.suspected))
    }),
];

/// A process's context series, with the children maps of the parents attributed to the
/// series of their children's site.
fn fold_process(r: &ProcessReport, top: usize) -> BTreeMap<SeriesLabels, ContextSeries> {
    let ranked = ranked_contexts(r, top);
    let other = r.other.as_ref().map(|o| &o.contexts);
    let mut series = fold::<_, ContextSeries>(&ranked, other);
    let by_location: HashMap<String, SeriesLabels> = ranked
        .iter()
        .map(|(c, in_top)| (c.ctx.location(), SeriesLabels::of(c, *in_top)))
        .collect();
    for parent in &r.table.context_parents {
        let (Some(n), Some(key)) = (
            parent.children_map_len,
            by_location.get(&parent.children_site),
        ) else {
            continue;
        };
        if let Some(a) = series.get_mut(key) {
            a.children = a.children.max(n);
        }
    }
    series
}

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    let series = labelled_series(snap, |r| fold_process(r, snap.top_sites));
    series_families(&series, &VALUES, out);
}
