//! Goroutines grouped by creation site: live counts and states from the inventory,
//! created/exited counts and lifetimes from the kernel, growth from the history of live
//! counts.

use std::collections::{BTreeMap, HashMap, VecDeque};

use goroscope_common::{GoroutineInfo, SiteStats};

use crate::model::{bucket_upper_seconds, AgeHistogram, GoroutineView, Lifetime, SiteView};

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

/// Live goroutines per site.
pub fn live_by_site<'a>(
    goroutines: impl Iterator<Item = &'a (u64, GoroutineView)>,
) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for (gopc, _) in goroutines {
        *out.entry(*gopc).or_default() += 1;
    }
    out
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

/// One view per site that has live goroutines or kernel records, most live first.
/// `goroutines` are `(gopc, view)` pairs; `name(gopc)` locates a site.
pub fn views(
    now: u64,
    goroutines: &[(u64, GoroutineView)],
    kernel: Option<KernelSites<'_>>,
    history: &History,
    mut name: impl FnMut(u64) -> SiteName,
) -> Vec<SiteView> {
    let mut by_site: BTreeMap<u64, Vec<&GoroutineView>> = BTreeMap::new();
    for (gopc, g) in goroutines {
        by_site.entry(*gopc).or_default().push(g);
    }
    // Goroutines created while attached and still live, per site (from the kernel).
    let mut live_created: HashMap<u64, u64> = HashMap::new();
    for info in kernel.iter().flat_map(|k| k.live.values()) {
        *live_created.entry(info.gopc).or_default() += 1;
    }
    let mut keys: Vec<u64> = by_site.keys().copied().collect();
    if let Some(k) = &kernel {
        keys.extend(k.stats.keys().filter(|s| !by_site.contains_key(s)));
        keys.extend(
            live_created
                .keys()
                .filter(|s| !by_site.contains_key(s) && !k.stats.contains_key(s)),
        );
    }
    let then = history.baseline(now);
    let mut out: Vec<SiteView> = keys
        .into_iter()
        .map(|gopc| {
            let members = by_site.get(&gopc).map(Vec::as_slice).unwrap_or(&[]);
            let mut v = members_view(gopc, members, name(gopc));
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
fn members_view(gopc: u64, members: &[&GoroutineView], name: SiteName) -> SiteView {
    let mut states: BTreeMap<String, u64> = BTreeMap::new();
    let mut starts: HashMap<&str, u64> = HashMap::new();
    for g in members {
        *states.entry(g.state.clone()).or_default() += 1;
        *starts.entry(g.start_function.as_str()).or_default() += 1;
    }
    let dominant_state = states
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| s.clone())
        .unwrap_or_default();
    let mut ages = AgeHistogram::default();
    for g in members {
        ages.add(g.age_seconds);
    }
    let oldest = members
        .iter()
        .max_by(|a, b| a.age_seconds.total_cmp(&b.age_seconds));
    SiteView {
        gopc,
        system: name.function.starts_with("runtime."),
        function: name.function,
        file: name.file,
        line: name.line,
        start_function: starts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| s.to_string())
            .unwrap_or_default(),
        live: members.len() as u64,
        waiting: members.iter().filter(|g| g.waiting).count() as u64,
        leaked: members.iter().filter(|g| g.leaked).count() as u64,
        created: None,
        exited: None,
        oldest_age_seconds: oldest.map_or(0.0, |g| g.age_seconds),
        oldest_age_is_lower_bound: oldest.is_some_and(|g| g.age_is_lower_bound),
        growth_per_minute: None,
        states,
        dominant_state,
        lifetime: None,
        sample_goids: members.iter().take(5).map(|g| g.goid).collect(),
        ages,
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
