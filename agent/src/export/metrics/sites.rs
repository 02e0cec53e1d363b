//! Per goroutine site (the top sites of each process, the rest folded into `other`):
//! live and blocked goroutines, creations and exits, the oldest one's age, the leak
//! model's trend and verdict, and the lifetime histogram.

use prometheus::proto::{self, Bucket, MetricFamily};

use super::{histogram_family, labelled_series, series_families, SeriesValue};
use crate::export::fold::{fold, ranked_sites, Counters, JudgedSite, Series, Site, SiteCounters};
use crate::export::Snapshot;
use crate::model::bucket_upper_seconds;

/// The sums of the goroutine sites that share one series.
#[derive(Debug, Default)]
struct SiteSeries {
    live: u64,
    waiting: u64,
    leaked: u64,
    counters: SiteCounters,
    oldest: f64,
    growth: f64,
    suspected: bool,
}

impl Series<JudgedSite<'_>> for SiteSeries {
    fn add(&mut self, s: &JudgedSite<'_>) {
        self.live += s.site.live;
        self.waiting += s.site.waiting;
        self.leaked += s.site.leaked;
        self.counters.add(&s.counters());
        self.oldest = self.oldest.max(s.site.oldest_age_seconds);
        self.growth += s.verdict.growth_per_second;
        self.suspected |= s.verdict.suspected;
    }

    fn counters_mut(&mut self) -> &mut SiteCounters {
        &mut self.counters
    }
}

const VALUES: [SeriesValue<SiteSeries>; 8] = [
    ("goroscope_site_goroutines", |a| a.live as f64),
    ("goroscope_site_goroutines_waiting", |a| a.waiting as f64),
    ("goroscope_site_goroutines_leaked", |a| a.leaked as f64),
    ("goroscope_site_goroutines_created_total", |a| {
        a.counters.created as f64
    }),
    ("goroscope_site_goroutines_exited_total", |a| {
        a.counters.exited as f64
    }),
    ("goroscope_site_oldest_goroutine_age_seconds", |a| a.oldest),
    ("goroscope_site_goroutines_growth_per_second", |a| a.growth),
    ("goroscope_site_leak_suspected", |a| {
        f64::from(u8::from(a.suspected))
    }),
];

/// Kernel lifetime buckets exported as upper bounds: every 4th, 1 µs … 275 s (then
/// +Inf, which the encoders add).
const EXPORTED_BUCKETS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];

/// The exported lifetime histogram of a series (cumulative at the exported bounds).
fn lifetime(c: &SiteCounters) -> proto::Histogram {
    let mut buckets = Vec::with_capacity(EXPORTED_BUCKETS.len());
    let mut cumulative = 0u64;
    let mut next = 0usize;
    for b in EXPORTED_BUCKETS {
        while next <= b {
            cumulative += c.buckets[next];
            next += 1;
        }
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(bucket_upper_seconds(b).unwrap_or(f64::INFINITY));
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let mut h = proto::Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(c.buckets.iter().sum());
    h.set_sample_sum(c.lifetime_sum);
    h
}

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    let series = labelled_series(snap, |r| {
        let other = r.other.as_ref().map(|o| &o.sites);
        fold::<_, SiteSeries>(&ranked_sites(r, snap.top_sites), other)
    });
    series_families(&series, &VALUES, out);
    out.push(histogram_family(
        "goroscope_site_goroutine_lifetime_seconds",
        series
            .into_iter()
            .map(|(labels, a)| (labels, lifetime(&a.counters))),
    ));
}
