//! What the daemon serves: the latest [`Snapshot`] of every traced process with its leak
//! verdicts, rendered as Prometheus/OpenMetrics text ([`metrics`]) and served over HTTP
//! ([`http`]).
//!
//! Scrapes never touch the kernel or the traced processes: the daemon refreshes the
//! snapshot every interval and a scrape only renders the latest one.

pub mod http;
pub mod metrics;

use std::collections::HashMap;

use serde::Serialize;

use goroscope_common::LIFETIME_BUCKETS;

use crate::detect::leak::{Suspicion, Verdict};
use crate::model::{MapFill, ProcessTable, SiteView};

/// One configured target and whether its probes are attached.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub attached: bool,
    /// An `exe` target whose file does not exist (yet): probes are attached as soon as it
    /// appears. Not an error: a DaemonSet runs where the service may not.
    pub waiting: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// One traced process: its goroutine table, the verdict on each site (by gopc), and the
/// counters of its `site="other"` series.
#[derive(Debug, Clone, Default)]
pub struct ProcessReport {
    pub table: ProcessTable,
    pub verdicts: HashMap<u64, Verdict>,
    /// None: `other` counters are the sums of the folded sites (no history).
    pub other: Option<OtherCounters>,
}

/// Counters of a process's `site="other"` series: the sums of the *increments* each site
/// made while it was folded into "other", so they never go down when a site moves in or
/// out of the top N (a plain sum would, and Prometheus would see a counter reset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherCounters {
    pub created: u64,
    pub exited: u64,
    /// Lifetime histogram, per bucket (not cumulative).
    pub buckets: [u64; LIFETIME_BUCKETS],
    pub lifetime_sum: f64,
    pub ctx_created: u64,
    pub ctx_cancelled: u64,
}

/// A site's counters as last seen.
#[derive(Debug, Clone, Default)]
struct SiteCounters {
    created: u64,
    exited: u64,
    buckets: [u64; LIFETIME_BUCKETS],
    lifetime_sum: f64,
}

impl SiteCounters {
    fn of(s: &SiteView) -> SiteCounters {
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

/// What a process's "other" series has accumulated, and every site's counters as last
/// seen; kept by the daemon across refreshes, one per process.
#[derive(Debug, Default)]
pub struct OtherFold {
    sites: HashMap<u64, SiteCounters>,
    contexts: HashMap<u64, (u64, u64)>,
    acc: OtherCounters,
}

/// Increment of a counter since it was last seen (a smaller value: it restarted).
fn inc(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

impl OtherFold {
    /// Adds the increments of the sites folded into "other" this time.
    pub fn update(&mut self, r: &ProcessReport, top: usize) -> OtherCounters {
        for (s, _, in_top) in metrics::ranked_sites(r, top) {
            let now = SiteCounters::of(s);
            let before = self.sites.get(&s.gopc).cloned().unwrap_or_default();
            if !in_top {
                let a = &mut self.acc;
                a.created += inc(now.created, before.created);
                a.exited += inc(now.exited, before.exited);
                for (b, n) in now.buckets.iter().enumerate() {
                    a.buckets[b] += inc(*n, before.buckets[b]);
                }
                a.lifetime_sum += if now.lifetime_sum >= before.lifetime_sum {
                    now.lifetime_sum - before.lifetime_sum
                } else {
                    now.lifetime_sum
                };
            }
            self.sites.insert(s.gopc, now);
        }
        for (c, in_top) in metrics::ranked_contexts(r, top) {
            let now = (c.created, c.cancelled);
            let before = self.contexts.get(&c.pc).copied().unwrap_or_default();
            if !in_top {
                self.acc.ctx_created += inc(now.0, before.0);
                self.acc.ctx_cancelled += inc(now.1, before.1);
            }
            self.contexts.insert(c.pc, now);
        }
        self.acc.clone()
    }
}

impl ProcessReport {
    pub fn verdict(&self, site: &SiteView) -> Verdict {
        self.verdicts.get(&site.gopc).cloned().unwrap_or_default()
    }

    pub fn suspicions(&self) -> Vec<Suspicion> {
        self.table
            .sites
            .iter()
            .filter_map(|s| {
                let v = self.verdicts.get(&s.gopc)?;
                v.suspected.then(|| Suspicion {
                    pid: self.table.pid,
                    gopc: s.gopc,
                    exe: self.table.exe.clone(),
                    site: s.location(),
                    live: s.live,
                    growth_per_minute: v.growth_per_second * 60.0,
                    oldest_age_seconds: s.oldest_age_seconds,
                    dominant_wait_reason: s.dominant_state.clone(),
                })
            })
            .collect()
    }
}

/// Everything a scrape or a debug request can see.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessReport>,
    pub targets: Vec<TargetStatus>,
    pub attach_failures: u64,
    pub fill: MapFill,
    /// How long the last refresh took.
    pub refresh_seconds: f64,
    /// Unix time of the last refresh (0 before the first).
    pub refreshed_at_unix: f64,
    /// Sites per process with their own series.
    pub top_sites: usize,
}

impl Snapshot {
    /// Ready once a refresh has been taken and every target has its probes attached (or
    /// is an executable that does not exist yet, which is watched for).
    pub fn ready(&self) -> bool {
        self.refreshed_at_unix > 0.0 && self.targets.iter().all(|t| t.attached || t.waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn report(sites: Vec<SiteView>) -> ProcessReport {
        ProcessReport {
            table: ProcessTable {
                pid: 7,
                sites,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// `goroscope_site_goroutines_created_total` of `site="other"` in the rendered text.
    fn other_created(r: ProcessReport) -> f64 {
        let snap = Snapshot {
            processes: vec![r],
            top_sites: 1,
            ..Default::default()
        };
        let text = metrics::render(&snap, metrics::Format::Prometheus, 0.0);
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("goroscope_site_goroutines_created_total{")
                    && l.contains("site=\"other\"")
            })
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
            let mut r = report(vec![site(1, a.0, a.1, a.2), site(2, b.0, b.1, b.2)]);
            r.other = Some(fold.update(&r, 1));
            seen.push((
                r.other.clone().unwrap().created,
                r.other.clone().unwrap().exited,
            ));
            let plain = ProcessReport {
                other: None,
                ..r.clone()
            };
            // A plain sum shows the folded site's whole history instead.
            let folded_site = if a.0 > b.0 { b.1 } else { a.1 };
            assert_eq!(other_created(plain), folded_site as f64);
            assert_eq!(other_created(r), seen.last().unwrap().0 as f64);
        }
        // Exits: 2 then +5 (site 1, 95 → 100 while folded) then +14 (site 2, 10 → 24).
        assert_eq!(seen, vec![(3, 2), (3, 7), (8, 21)]);
    }
}
