//! The cardinality bound, one for goroutine sites and context sites: per process, the
//! `top` sites that [`rank`] puts first get their own `site`/`function` series, and
//! [`fold`] sums the rest into `site="other",function="other"`.
//!
//! A kind of site says what ranking and folding need of it through [`Site`]: its pc,
//! its rank, its source location and its [`Counters`]. The counters of `other` are not
//! the plain sums of the folded sites (a site moving into the top would take its whole
//! history out of `other`, and Prometheus would see a counter reset): [`OtherFold`] adds
//! up what each site counted *while* it was folded, so they never go down.
//!
//! Goids and addresses never become labels: a site whose source location is unknown is
//! labelled `site="unknown"`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Sub;

use goroscope_common::LIFETIME_BUCKETS;

use super::ProcessReport;
use crate::detect::leak::Verdict;
use crate::model::{ContextSiteView, SiteView};

/// What only goes up while a site's process lives (created, exited, …).
pub trait Counters: Clone + Default {
    /// Adds what `now` counted since `before` (all of `now` where it is smaller than
    /// `before`: that counter restarted).
    fn add_since(&mut self, now: &Self, before: &Self);

    /// Adds all of `c` (a plain sum).
    fn add(&mut self, c: &Self) {
        self.add_since(c, &Self::default());
    }
}

/// Increment of a counter from `before` to `now` (a smaller value: it restarted).
fn increment<T: PartialOrd + Sub<Output = T> + Copy>(now: T, before: T) -> T {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// A creation site as ranking and folding see it: goroutine sites ([`JudgedSite`]) and
/// context sites ([`ContextSiteView`]).
pub trait Site {
    type Counters: Counters;
    /// Ranking key: the greatest ranks first.
    type Rank: Ord;

    /// Link-time pc: the site's identity across refreshes (never a label).
    fn pc(&self) -> u64;
    fn rank(&self) -> Self::Rank;
    /// `(function, file, line)`; an empty file when the location is unknown.
    fn source(&self) -> (&str, &str, u32);
    fn counters(&self) -> Self::Counters;
}

/// The `site` and `function` labels of a series. Field order is the series order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesLabels {
    pub site: String,
    pub function: String,
}

impl SeriesLabels {
    /// The labels of the folded series.
    pub fn other() -> SeriesLabels {
        SeriesLabels {
            site: "other".into(),
            function: "other".into(),
        }
    }

    /// A site's own labels (`file:line`, or `unknown` when the source location is not
    /// known) in the top, else the folded series'.
    pub fn of(site: &impl Site, in_top: bool) -> SeriesLabels {
        let (function, file, line) = site.source();
        if !in_top {
            SeriesLabels::other()
        } else if file.is_empty() {
            SeriesLabels {
                site: "unknown".into(),
                function: "unknown".into(),
            }
        } else {
            SeriesLabels {
                site: format!("{file}:{line}"),
                function: function.to_string(),
            }
        }
    }
}

/// `sites` ranked (greatest [`Site::rank`] first, ties by pc), each with whether it is
/// in the top `top` (its own series) or folded into `other`.
pub fn rank<S: Site>(sites: impl IntoIterator<Item = S>, top: usize) -> Vec<(S, bool)> {
    let mut ranked: Vec<S> = sites.into_iter().collect();
    ranked.sort_by_key(|s| (Reverse(s.rank()), s.pc()));
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, i < top))
        .collect()
}

/// The sums of the sites that share one series.
pub trait Series<S: Site>: Default {
    /// Adds one site (its counters too).
    fn add(&mut self, site: &S);
    fn counters_mut(&mut self) -> &mut S::Counters;
}

/// Folds ranked sites into at most `top + 1` series. `other`: the counters of the
/// folded series kept by [`OtherFold`] (None: the plain sums).
pub fn fold<S: Site, A: Series<S>>(
    ranked: &[(S, bool)],
    other: Option<&S::Counters>,
) -> BTreeMap<SeriesLabels, A> {
    let mut out: BTreeMap<SeriesLabels, A> = BTreeMap::new();
    for (s, in_top) in ranked {
        out.entry(SeriesLabels::of(s, *in_top)).or_default().add(s);
    }
    if let (Some(o), Some(a)) = (other, out.get_mut(&SeriesLabels::other())) {
        *a.counters_mut() = o.clone();
    }
    out
}

/// A goroutine site with the leak model's verdict on it.
#[derive(Debug, Clone)]
pub struct JudgedSite<'a> {
    pub site: &'a SiteView,
    pub verdict: Verdict,
}

/// Counters of a goroutine site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteCounters {
    pub created: u64,
    pub exited: u64,
    /// Lifetime histogram, per kernel bucket (not cumulative).
    pub buckets: [u64; LIFETIME_BUCKETS],
    pub lifetime_sum: f64,
}

impl Counters for SiteCounters {
    fn add_since(&mut self, now: &Self, before: &Self) {
        self.created += increment(now.created, before.created);
        self.exited += increment(now.exited, before.exited);
        for (b, n) in self.buckets.iter_mut().enumerate() {
            *n += increment(now.buckets[b], before.buckets[b]);
        }
        self.lifetime_sum += increment(now.lifetime_sum, before.lifetime_sum);
    }
}

impl Site for JudgedSite<'_> {
    type Counters = SiteCounters;
    /// Suspected first, then by live goroutines, then by creations.
    type Rank = (bool, u64, Option<u64>);

    fn pc(&self) -> u64 {
        self.site.gopc
    }

    fn rank(&self) -> Self::Rank {
        (self.verdict.suspected, self.site.live, self.site.created)
    }

    fn source(&self) -> (&str, &str, u32) {
        (&self.site.function, &self.site.file, self.site.line)
    }

    fn counters(&self) -> SiteCounters {
        let s = self.site;
        let mut c = SiteCounters {
            created: s.created.unwrap_or(0),
            exited: s.exited.unwrap_or(0),
            ..Default::default()
        };
        if let Some(l) = &s.lifetime {
            for (b, (_, n)) in l.buckets.iter().enumerate().take(LIFETIME_BUCKETS) {
                c.buckets[b] = *n;
            }
            c.lifetime_sum = l.sum_seconds;
        }
        c
    }
}

/// Counters of a context site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextCounters {
    pub created: u64,
    pub cancelled: u64,
}

impl Counters for ContextCounters {
    fn add_since(&mut self, now: &Self, before: &Self) {
        self.created += increment(now.created, before.created);
        self.cancelled += increment(now.cancelled, before.cancelled);
    }
}

/// A context site with the leak model's verdict on it.
#[derive(Debug, Clone)]
pub struct JudgedContext<'a> {
    pub ctx: &'a ContextSiteView,
    pub verdict: Verdict,
}

impl Site for JudgedContext<'_> {
    type Counters = ContextCounters;
    /// Suspected first, then by uncancelled contexts, then by creations.
    type Rank = (bool, u64, u64);

    fn pc(&self) -> u64 {
        self.ctx.pc
    }

    fn rank(&self) -> Self::Rank {
        (
            self.verdict.suspected,
            self.ctx.uncancelled,
            self.ctx.created,
        )
    }

    fn source(&self) -> (&str, &str, u32) {
        (&self.ctx.function, &self.ctx.file, self.ctx.line)
    }

    fn counters(&self) -> ContextCounters {
        ContextCounters {
            created: self.ctx.created,
            cancelled: self.ctx.cancelled,
        }
    }
}

/// A process's goroutine sites, ranked.
pub fn ranked_sites(r: &ProcessReport, top: usize) -> Vec<(JudgedSite<'_>, bool)> {
    let judged = r.table.sites.iter().map(|site| JudgedSite {
        site,
        verdict: r.verdict(site),
    });
    rank(judged, top)
}

/// A process's context sites, ranked.
pub fn ranked_contexts(r: &ProcessReport, top: usize) -> Vec<(JudgedContext<'_>, bool)> {
    let judged = r.table.contexts.iter().map(|ctx| JudgedContext {
        ctx,
        verdict: r.context_verdict(ctx),
    });
    rank(judged, top)
}

/// Counters of a process's `other` series, by kind of site.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherCounters {
    pub sites: SiteCounters,
    pub contexts: ContextCounters,
}

/// What one kind of site has added to `other`, and each site's counters as last seen.
#[derive(Debug, Default)]
struct Accumulated<C> {
    last_seen: HashMap<u64, C>,
    other: C,
}

impl<C: Counters> Accumulated<C> {
    fn update<S: Site<Counters = C>>(&mut self, ranked: &[(S, bool)]) -> C {
        for (s, in_top) in ranked {
            let now = s.counters();
            if !in_top {
                let before = self.last_seen.get(&s.pc()).cloned().unwrap_or_default();
                self.other.add_since(&now, &before);
            }
            self.last_seen.insert(s.pc(), now);
        }
        self.other.clone()
    }
}

/// What a process's `other` series have accumulated; kept by the daemon across
/// refreshes, one per process.
#[derive(Debug, Default)]
pub struct OtherFold {
    sites: Accumulated<SiteCounters>,
    contexts: Accumulated<ContextCounters>,
}

impl OtherFold {
    /// Adds the increments of the sites folded into `other` this time.
    pub fn update(&mut self, r: &ProcessReport, top: usize) -> OtherCounters {
        OtherCounters {
            sites: self.sites.update(&ranked_sites(r, top)),
            contexts: self.contexts.update(&ranked_contexts(r, top)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::{self, Format};
    use crate::export::Snapshot;
    use crate::model::ProcessTable;

    fn site(gopc: u64, live: u64, created: u64, exited: u64) -> SiteView {
        SiteView {
            gopc,
            function: format!("main.f{gopc}"),
            file: "/src/main.go".into(),
            line: gopc as u32,
            live,
            created: Some(created),
            exited: Some(exited),
            ..Default::default()
        }
    }

    fn context(pc: u64, uncancelled: u64, created: u64, cancelled: u64) -> ContextSiteView {
        ContextSiteView {
            pc,
            function: format!("main.c{pc}"),
            file: "/src/ctx.go".into(),
            line: pc as u32,
            uncancelled,
            created,
            cancelled,
            ..Default::default()
        }
    }

    fn report(sites: Vec<SiteView>, contexts: Vec<ContextSiteView>) -> ProcessReport {
        ProcessReport {
            table: ProcessTable {
                pid: 7,
                sites,
                contexts,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Value of `name` for `site="other"` in the rendered text (top 1).
    fn other_value(r: ProcessReport, name: &str) -> f64 {
        let snap = Snapshot {
            processes: vec![r],
            top_sites: 1,
            ..Default::default()
        };
        let text = metrics::render(&snap, Format::Prometheus, 0.0).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("site=\"other\""))
            .expect("other series");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn other_counters_never_go_down_when_sites_change_rank() {
        let mut fold = OtherFold::default();
        let mut seen = Vec::new();
        // (live, created, exited) of sites 1 and 2 at three refreshes; top 1 is the one
        // with more live goroutines.
        for (a, b) in [
            ((5, 100, 95), (1, 3, 2)),     // 1 on top, 2 folded: other = 3
            ((0, 100, 100), (10, 20, 10)), // 2 on top, 1 folded (no new creations): 3
            ((20, 130, 110), (1, 25, 24)), // 1 on top, 2 folded (+5): 8
        ] {
            let mut r = report(vec![site(1, a.0, a.1, a.2), site(2, b.0, b.1, b.2)], vec![]);
            r.other = Some(fold.update(&r, 1));
            let other = r.other.clone().unwrap().sites;
            seen.push((other.created, other.exited));
            let plain = ProcessReport {
                other: None,
                ..r.clone()
            };
            // A plain sum shows the folded site's whole history instead.
            let folded_site = if a.0 > b.0 { b.1 } else { a.1 };
            let created = "goroscope_site_goroutines_created_total";
            assert_eq!(other_value(plain, created), folded_site as f64);
            assert_eq!(other_value(r, created), seen.last().unwrap().0 as f64);
        }
        // Exits: 2 then +5 (site 1, 95 → 100 while folded) then +14 (site 2, 10 → 24).
        assert_eq!(seen, vec![(3, 2), (3, 7), (8, 21)]);
    }

    /// The same folding for context sites: ranked by uncancelled, `other` monotonic.
    #[test]
    fn context_other_counters_never_go_down_when_sites_change_rank() {
        let mut fold = OtherFold::default();
        let mut seen = Vec::new();
        // (uncancelled, created, cancelled) of context sites 1 and 2.
        for (a, b) in [
            ((5, 10, 5), (1, 4, 3)),  // 1 on top, 2 folded: created 4, cancelled 3
            ((0, 10, 10), (9, 9, 0)), // 2 on top, 1 folded (+5 cancelled): 4, 8
            ((7, 20, 13), (1, 9, 8)), // 1 on top, 2 folded (+8 cancelled): 4, 16
        ] {
            let mut r = report(
                vec![],
                vec![context(1, a.0, a.1, a.2), context(2, b.0, b.1, b.2)],
            );
            r.other = Some(fold.update(&r, 1));
            let other = r.other.clone().unwrap().contexts;
            seen.push((other.created, other.cancelled));
            let name = "goroscope_context_site_cancelled_total";
            assert_eq!(other_value(r, name), other.cancelled as f64);
        }
        assert_eq!(seen, vec![(4, 3), (4, 8), (4, 16)]);
    }

    #[test]
    fn ranking_and_labels_are_shared_by_both_kinds() {
        let mut unknown = site(9, 1, 1, 0);
        unknown.file.clear();
        let r = ProcessReport {
            verdicts: HashMap::from([(
                3,
                Verdict {
                    suspected: true,
                    ..Default::default()
                },
            )]),
            ..report(
                vec![
                    site(1, 5, 1, 0),
                    site(2, 5, 2, 0),
                    unknown,
                    site(3, 0, 0, 0),
                ],
                vec![context(4, 0, 9, 9), context(5, 1, 0, 0)],
            )
        };
        let order: Vec<_> = ranked_sites(&r, 3)
            .iter()
            .map(|(s, top)| (s.pc(), *top, SeriesLabels::of(s, *top).site))
            .collect();
        assert_eq!(
            order,
            vec![
                (3, true, "/src/main.go:3".to_string()),
                (2, true, "/src/main.go:2".to_string()),
                (1, true, "/src/main.go:1".to_string()),
                (9, false, "other".to_string()),
            ]
        );
        let mut top_unknown = r.clone();
        top_unknown.table.sites.truncate(3);
        let labels = SeriesLabels::of(&ranked_sites(&top_unknown, 9)[2].0, true);
        assert_eq!(
            (labels.site.as_str(), labels.function.as_str()),
            ("unknown", "unknown")
        );
        let ctx: Vec<_> = ranked_contexts(&r, 1)
            .iter()
            .map(|(c, top)| (c.ctx.pc, *top))
            .collect();
        assert_eq!(ctx, vec![(5, true), (4, false)]);
    }

    #[test]
    fn increments_restart_with_the_counter() {
        assert_eq!(increment(10u64, 4), 6);
        assert_eq!(increment(3u64, 4), 3);
        assert_eq!(increment(2.5f64, 1.0), 1.5);
        let mut c = ContextCounters::default();
        c.add(&ContextCounters {
            created: 2,
            cancelled: 1,
        });
        assert_eq!((c.created, c.cancelled), (2, 1));
    }
}
