//! Goroutines grouped by creation site: live counts and states from the inventory,
//! created/exited counts and lifetimes from the kernel, growth from the history of live
//! counts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use goroscope_common::{GoroutineInfo, SiteStats};

use crate::intake::goroutines::{STATUS_LEAKED, STATUS_WAITING};
use crate::model::{bucket_upper_seconds, AgeHistogram, Lifetime, SiteView};

/// Growth is measured against the oldest sample at most this old…
const GROWTH_SPAN_NS: u64 = 60_000_000_000;
/// …and at least this old.
const GROWTH_MIN_NS: u64 = 5_000_000_000;
/// Samples older than this are dropped.
const HISTORY_NS: u64 = 120_000_000_000;

/// Live goroutines per site (gopc) at past refreshes, oldest first.
#[derive(Debug, Default)]
pub struct History(VecDeque<(u64, HashMap<u64, u64>)>);

impl History {
    /// Records the live count of every site at `now`, dropping old samples.
    pub fn record(&mut self, now: u64, live: HashMap<u64, u64>) {
        self.0.push_back((now, live));
        while self
            .0
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > HISTORY_NS)
        {
            self.0.pop_front();
        }
    }

    /// The oldest sample of the last minute, if it is at least 5 s old.
    fn baseline(&self, now: u64) -> Option<&(u64, HashMap<u64, u64>)> {
        self.0
            .iter()
            .find(|(t, _)| now.saturating_sub(*t) <= GROWTH_SPAN_NS)
            .filter(|(t, _)| now.saturating_sub(*t) >= GROWTH_MIN_NS)
    }
}

/// How a goroutine's start function is known: from the binary by its start pc, or read
/// from its stack (goroutines started by wrappers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Start {
    Pc(u64),
    Read(Arc<str>),
}

/// Sample goids kept per site (the smallest).
const SAMPLE_GOIDS: usize = 5;

/// What the live goroutines of one site add up to, built one goroutine at a time (no
/// per-goroutine record is kept: its size does not grow with the site's goroutines, but
/// for the distinct states and start functions).
#[derive(Debug, Default)]
pub struct SiteAcc {
    live: u64,
    waiting: u64,
    leaked: u64,
    /// By `(status, wait reason)`: a few per site, looked up in a line.
    states: Vec<((u32, u8), u64)>,
    starts: Vec<(Start, u64)>,
    ages: AgeHistogram,
    /// Age (ns) of the oldest, and whether it is a lower bound.
    oldest: Option<(u64, bool)>,
    sample_goids: Vec<u64>,
}

impl SiteAcc {
    /// Adds a live goroutine: its state, start, age (ns, a lower bound or not, and its
    /// [`AgeHistogram`] bucket).
    pub fn add(
        &mut self,
        goid: u64,
        status: (u32, u8),
        start: Start,
        (age_ns, age_bucket, lower): (u64, usize, bool),
    ) {
        self.live += 1;
        if matches!(status.0, STATUS_WAITING | STATUS_LEAKED) {
            self.waiting += 1;
        }
        if status.0 == STATUS_LEAKED {
            self.leaked += 1;
        }
        count(&mut self.states, status);
        count(&mut self.starts, start);
        self.ages.add_to(age_bucket);
        if self.oldest.is_none_or(|(a, _)| age_ns >= a) {
            self.oldest = Some((age_ns, lower));
        }
        if self.sample_goids.len() < SAMPLE_GOIDS || goid < self.sample_goids[SAMPLE_GOIDS - 1] {
            let at = self.sample_goids.partition_point(|g| *g < goid);
            self.sample_goids.insert(at, goid);
            self.sample_goids.truncate(SAMPLE_GOIDS);
        }
    }
}

/// Counts one `key` in a short list of `(key, count)`.
fn count<K: PartialEq>(list: &mut Vec<(K, u64)>, key: K) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => list.push((key, 1)),
    }
}

/// Live goroutines per site.
pub fn live_by_site(sites: &foldhash::HashMap<u64, SiteAcc>) -> HashMap<u64, u64> {
    sites.iter().map(|(gopc, a)| (*gopc, a.live)).collect()
}

/// What the kernel knows about the sites of one process (None without probes).
pub struct KernelSites<'a> {
    pub stats: &'a HashMap<u64, SiteStats>,
    pub live: &'a HashMap<u64, GoroutineInfo>,
}

/// Where a site is, as the table shows it.
pub struct SiteName {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Names of what [`SiteAcc`] counts by key: states and start functions.
pub trait AccNames {
    fn state(&self, status: u32, wait_reason: u8) -> String;
    fn start(&self, start: &Start) -> String;
}

/// One view per site that has live goroutines or kernel records, most live first.
/// `goroutines` are the sites' live goroutines added up; `name(gopc)` locates a site.
pub fn views(
    now: u64,
    goroutines: &foldhash::HashMap<u64, SiteAcc>,
    kernel: Option<KernelSites<'_>>,
    history: &History,
    names: &dyn AccNames,
    mut name: impl FnMut(u64) -> SiteName,
) -> Vec<SiteView> {
    // Goroutines created while attached and still live, per site (from the kernel).
    let mut live_created: HashMap<u64, u64> = HashMap::new();
    for info in kernel.iter().flat_map(|k| k.live.values()) {
        *live_created.entry(info.gopc).or_default() += 1;
    }
    let mut keys: Vec<u64> = goroutines.keys().copied().collect();
    if let Some(k) = &kernel {
        keys.extend(k.stats.keys().filter(|s| !goroutines.contains_key(s)));
        keys.extend(
            live_created
                .keys()
                .filter(|s| !goroutines.contains_key(s) && !k.stats.contains_key(s)),
        );
    }
    let then = history.baseline(now);
    let empty = SiteAcc::default();
    let mut out: Vec<SiteView> = keys
        .into_iter()
        .map(|gopc| {
            let acc = goroutines.get(&gopc).unwrap_or(&empty);
            let mut v = acc_view(gopc, acc, names, name(gopc));
            if let Some(k) = &kernel {
                let ks = k.stats.get(&gopc);
                let live_new = live_created.get(&gopc).copied().unwrap_or(0);
                v.created = Some(ks.map_or(0, SiteStats::exited) + live_new);
                v.exited = Some(ks.map_or(0, |s| s.exited() + s.exited_untracked));
                v.lifetime = ks.map(lifetime);
            }
            v.growth_per_minute = then.map(|(t, past)| {
                let before = past.get(&gopc).copied().unwrap_or(0) as f64;
                (v.live as f64 - before) * 60e9 / (now - t) as f64
            });
            v
        })
        .collect();
    out.sort_by(|a, b| b.live.cmp(&a.live).then(a.gopc.cmp(&b.gopc)));
    out
}

/// The view of a site from its live goroutines alone.
fn acc_view(gopc: u64, acc: &SiteAcc, names: &dyn AccNames, name: SiteName) -> SiteView {
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    for ((status, reason), n) in &acc.states {
        *states.entry(names.state(*status, *reason)).or_default() += n;
    }
    let dominant_state = states
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| s.clone())
        .unwrap_or_default();
    let mut starts: BTreeMap<String, u64> = BTreeMap::new();
    for (start, n) in &acc.starts {
        *starts.entry(names.start(start)).or_default() += n;
    }
    SiteView {
        gopc,
        system: name.function.starts_with("runtime."),
        function: name.function,
        file: name.file,
        line: name.line,
        start_function: starts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| s.clone())
            .unwrap_or_default(),
        live: acc.live,
        waiting: acc.waiting,
        leaked: acc.leaked,
        created: None,
        exited: None,
        oldest_age_seconds: acc.oldest.map_or(0.0, |(a, _)| a as f64 / 1e9),
        oldest_age_is_lower_bound: acc.oldest.is_some_and(|(_, l)| l),
        growth_per_minute: None,
        states,
        dominant_state,
        lifetime: None,
        sample_goids: acc.sample_goids.clone(),
        ages: acc.ages.clone(),
    }
}

fn lifetime(s: &SiteStats) -> Lifetime {
    Lifetime {
        count: s.exited(),
        sum_seconds: s.lifetime_ns_sum as f64 / 1e9,
        buckets: s
            .lifetime_buckets
            .iter()
            .enumerate()
            .map(|(b, n)| (bucket_upper_seconds(b), *n))
            .collect(),
    }
}
