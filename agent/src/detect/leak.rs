//! The leak model: which creation sites are suspected of leaking goroutines.
//!
//! A leaked goroutine never finishes, so a site that leaks has a *floor* (the lowest live
//! count over a stretch of time) that only rises: goroutines that finish normally make the
//! live count go up and down, leaked ones stay. A site is **suspected** when, over the
//! last `window_seconds`:
//!
//! 1. its floor rises in each third of the window (lowest live count of the first third <
//!    of the middle third < of the last third) and by at least `min_growth` goroutines in
//!    total — a pool that filled up once and then stays flat is not growing;
//! 2. its oldest goroutine is older than `min_age_seconds` — goroutines that are all young
//!    are traffic, not a leak;
//! 3. at least `min_waiting_ratio` of its goroutines are blocked (Go status `_Gwaiting`:
//!    channel, select, sleep, IO wait, mutex…) — busy goroutines are work in progress.
//!
//! Once suspected, a site stays suspected while its floor is still higher at the end of
//! the window than at its start and its goroutines are still mostly blocked, so the
//! verdict does not flap between refreshes. Sites of the Go runtime itself (`runtime.*`)
//! are never suspected.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{ProcessTable, SiteView};

/// Thresholds of the leak model (config section `[leak]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakConfig {
    /// Length of the history a verdict looks at.
    pub window_seconds: f64,
    /// Least rise of the live floor over the window.
    pub min_growth: u64,
    /// Least age of the site's oldest goroutine.
    pub min_age_seconds: f64,
    /// Least share of the site's goroutines that are blocked (0..1).
    pub min_waiting_ratio: f64,
}

impl Default for LeakConfig {
    fn default() -> Self {
        LeakConfig {
            window_seconds: 30.0,
            min_growth: 10,
            min_age_seconds: 20.0,
            min_waiting_ratio: 0.8,
        }
    }
}

impl LeakConfig {
    /// Checks every threshold; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(5.0..=86_400.0).contains(&self.window_seconds) {
            anyhow::bail!(
                "leak.window_seconds must be between 5 and 86400, not {}",
                self.window_seconds
            );
        }
        if self.min_growth == 0 {
            anyhow::bail!("leak.min_growth must be at least 1");
        }
        if !(0.0..=86_400.0 * 365.0).contains(&self.min_age_seconds) {
            anyhow::bail!(
                "leak.min_age_seconds must be between 0 and one year, not {}",
                self.min_age_seconds
            );
        }
        if !(0.0..=1.0).contains(&self.min_waiting_ratio) {
            anyhow::bail!(
                "leak.min_waiting_ratio must be between 0 and 1, not {}",
                self.min_waiting_ratio
            );
        }
        Ok(())
    }
}

/// The verdict on one site.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub suspected: bool,
    /// Trend of the live count over the window (least squares), goroutines per second;
    /// 0 until the history covers the window.
    pub growth_per_second: f64,
    /// Lowest live count in the first and last third of the window.
    pub floor_start: u64,
    pub floor_end: u64,
    /// Share of the site's live goroutines that are blocked.
    pub waiting_ratio: f64,
    /// Seconds since the site was first suspected (this episode).
    pub suspected_for_seconds: f64,
}

/// A suspected leak, as logged and served by `/debug/goroutines`.
#[derive(Debug, Clone, Serialize)]
pub struct Suspicion {
    pub pid: u32,
    /// Link-time address of the site (not a label: for matching only).
    #[serde(skip)]
    pub gopc: u64,
    pub exe: String,
    /// `function file:line` of the `go` statement.
    pub site: String,
    pub live: u64,
    pub growth_per_minute: f64,
    pub oldest_age_seconds: f64,
    pub dominant_wait_reason: String,
}

#[derive(Default)]
struct SiteHistory {
    samples: VecDeque<(u64, u64)>,
    suspected_since: Option<u64>,
}

/// Keeps the history of every site of every traced process and judges them.
pub struct LeakDetector {
    cfg: LeakConfig,
    /// By (pid, process start time): a reused pid starts a new history.
    procs: HashMap<(u32, u64), HashMap<u64, SiteHistory>>,
}

impl LeakDetector {
    pub fn new(cfg: LeakConfig) -> LeakDetector {
        LeakDetector {
            cfg,
            procs: HashMap::new(),
        }
    }

    pub fn config(&self) -> &LeakConfig {
        &self.cfg
    }

    /// Adds the tables of one refresh taken at `now_ns` (CLOCK_MONOTONIC) and returns the
    /// verdict for every site of every table, by gopc. Processes absent from `tables` are
    /// forgotten.
    pub fn observe<'a>(
        &mut self,
        now_ns: u64,
        tables: impl IntoIterator<Item = &'a ProcessTable>,
    ) -> Vec<HashMap<u64, Verdict>> {
        let tables: Vec<&ProcessTable> = tables.into_iter().collect();
        let keys: Vec<(u32, u64)> = tables.iter().map(|t| (t.pid, t.start_time)).collect();
        self.procs.retain(|k, _| keys.contains(k));
        let window_ns = (self.cfg.window_seconds * 1e9) as u64;
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            let hist = self.procs.entry((t.pid, t.start_time)).or_default();
            // Sites not seen this time have no live goroutine: record a zero sample.
            let present: HashMap<u64, &SiteView> = t.sites.iter().map(|s| (s.gopc, s)).collect();
            hist.retain(|gopc, h| present.contains_key(gopc) || h.samples.iter().any(|s| s.1 > 0));
            for gopc in present.keys() {
                hist.entry(*gopc).or_default();
            }
            let mut verdicts = HashMap::with_capacity(hist.len());
            for (gopc, h) in hist.iter_mut() {
                let site = present.get(gopc).copied();
                let live = site.map_or(0, |s| s.live);
                h.samples.push_back((now_ns, live));
                // Keep one sample at or before the window's start, so the history covers it.
                while h.samples.len() > 2 && now_ns - h.samples[1].0 >= window_ns {
                    h.samples.pop_front();
                }
                let v = judge(&self.cfg, now_ns, window_ns, h, site);
                if site.is_some() {
                    verdicts.insert(*gopc, v);
                }
            }
            out.push(verdicts);
        }
        out
    }
}

fn judge(
    cfg: &LeakConfig,
    now: u64,
    window_ns: u64,
    h: &mut SiteHistory,
    site: Option<&SiteView>,
) -> Verdict {
    let (Some(site), Some(&(t0, _))) = (site, h.samples.front()) else {
        h.suspected_since = None;
        return Verdict::default();
    };
    let waiting_ratio = if site.live == 0 {
        0.0
    } else {
        site.waiting as f64 / site.live as f64
    };
    let span = now - t0;
    // The history must cover the window (a refresh may come a little early).
    if span < window_ns - window_ns / 10 || h.samples.len() < 3 || site.system {
        h.suspected_since = None;
        return Verdict {
            waiting_ratio,
            ..Verdict::default()
        };
    }
    let third = |i: u64| {
        h.samples
            .iter()
            .filter(|(t, _)| {
                let pos = (t - t0) * 3 / span.max(1);
                pos.min(2) == i
            })
            .map(|(_, n)| *n)
            .min()
    };
    let (Some(f1), Some(f2), Some(f3)) = (third(0), third(1), third(2)) else {
        h.suspected_since = None;
        return Verdict {
            waiting_ratio,
            ..Verdict::default()
        };
    };
    let growth_per_second = slope(&h.samples);
    let blocked = waiting_ratio >= cfg.min_waiting_ratio;
    let suspected = if h.suspected_since.is_some() {
        f3 > f1 && blocked
    } else {
        f1 < f2
            && f2 < f3
            && f3 - f1 >= cfg.min_growth
            && site.oldest_age_seconds >= cfg.min_age_seconds
            && blocked
    };
    if !suspected {
        h.suspected_since = None;
    } else if h.suspected_since.is_none() {
        h.suspected_since = Some(now);
    }
    Verdict {
        suspected,
        growth_per_second,
        floor_start: f1,
        floor_end: f3,
        waiting_ratio,
        suspected_for_seconds: h.suspected_since.map_or(0.0, |s| (now - s) as f64 / 1e9),
    }
}

/// Least-squares slope of `(t ns, n)` samples, per second.
fn slope(samples: &VecDeque<(u64, u64)>) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let t0 = samples[0].0;
    let xs = samples.iter().map(|(t, _)| (t - t0) as f64 / 1e9);
    let mx = xs.clone().sum::<f64>() / n;
    let my = samples.iter().map(|(_, y)| *y as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, (_, y)) in xs.zip(samples.iter()) {
        sxy += (x - mx) * (*y as f64 - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn site(gopc: u64, live: u64, waiting: u64, oldest: f64) -> SiteView {
        SiteView {
            gopc,
            function: "main.f".into(),
            file: "main.go".into(),
            line: 1,
            system: false,
            start_function: "main.g".into(),
            live,
            waiting,
            created: Some(live),
            exited: Some(0),
            oldest_age_seconds: oldest,
            oldest_age_is_lower_bound: false,
            growth_per_minute: None,
            states: BTreeMap::new(),
            dominant_state: "chan receive".into(),
            lifetime: None,
            sample_goids: vec![],
        }
    }

    fn table(sites: Vec<SiteView>) -> ProcessTable {
        ProcessTable {
            pid: 7,
            start_time: 1,
            exe: "x".into(),
            go_version: "go1.27".into(),
            attached_seconds: 0.0,
            live: sites.iter().map(|s| s.live).sum(),
            sites,
            goroutines: vec![],
            counters: None,
            inventory_error: None,
            contexts: vec![],
            context_parents: vec![],
            ..Default::default()
        }
    }

    const S: u64 = 1_000_000_000;

    /// Feeds `live(t)` every 5 s for `secs` and returns the verdicts over time.
    fn run(secs: u64, live: impl Fn(u64) -> u64, waiting_share: f64) -> Vec<(u64, bool)> {
        run_aged(secs, |t| (live(t), t as f64), waiting_share)
    }

    /// Like `run`, with `(live, oldest age)` at time t.
    fn run_aged(secs: u64, f: impl Fn(u64) -> (u64, f64), waiting_share: f64) -> Vec<(u64, bool)> {
        let mut d = LeakDetector::new(LeakConfig::default());
        let mut out = vec![];
        for t in (0..=secs).step_by(5) {
            let (n, oldest) = f(t);
            let w = (n as f64 * waiting_share) as u64;
            let v = d.observe(t * S, [&table(vec![site(1, n, w, oldest)])]);
            out.push((t, v[0][&1].suspected));
        }
        out
    }

    fn first_suspected(v: &[(u64, bool)]) -> Option<u64> {
        v.iter().find(|(_, s)| *s).map(|(t, _)| *t)
    }

    #[test]
    fn steady_leak_is_flagged_once_the_window_is_covered() {
        let v = run(120, |t| 10 * t, 1.0);
        assert_eq!(first_suspected(&v), Some(30));
        assert!(v.iter().filter(|(t, _)| *t >= 30).all(|(_, s)| *s));
    }

    #[test]
    fn pool_that_filled_once_is_not_flagged() {
        // 200 keep-alive connections opened in the first 10 s, then idle forever.
        let v = run(300, |t| (t * 20).min(200), 1.0);
        assert_eq!(first_suspected(&v), None);
    }

    #[test]
    fn busy_goroutines_are_not_flagged() {
        assert_eq!(first_suspected(&run(120, |t| 10 * t, 0.5)), None);
    }

    #[test]
    fn burst_that_drains_is_not_flagged() {
        // Every 60 s: 500 goroutines within 5 s, drained over the next 15 s.
        let v = run_aged(
            600,
            |t| match t % 60 {
                p @ 0..5 => (100 * p, p as f64),
                p @ 5..20 => (500 - 500 * (p - 5) / 15, p as f64),
                _ => (0, 0.0),
            },
            1.0,
        );
        assert_eq!(first_suspected(&v), None);
    }

    #[test]
    fn fast_leak_then_slower_leak_stays_flagged() {
        let v = run(
            300,
            |t| if t < 60 { 10 * t } else { 600 + (t - 60) / 2 },
            1.0,
        );
        assert!(v.iter().filter(|(t, _)| *t >= 30).all(|(_, s)| *s));
    }

    #[test]
    fn oscillating_traffic_is_not_flagged() {
        let v = run(600, |t| if (t / 5) % 2 == 0 { 500 } else { 20 }, 1.0);
        assert_eq!(first_suspected(&v), None);
    }

    #[test]
    fn suspicion_clears_when_the_leak_stops() {
        let v = run(200, |t| 10 * t.min(60), 1.0);
        assert_eq!(first_suspected(&v), Some(30));
        // Leak stopped at 60 s: flat from then on, cleared once the window is flat.
        assert!(v.iter().any(|(t, s)| *t > 60 && *t <= 95 && *s));
        assert!(v.iter().filter(|(t, _)| *t >= 100).all(|(_, s)| !*s));
    }

    #[test]
    fn slow_growth_below_min_growth_is_not_flagged() {
        // 1 goroutine per 5 s: 6 over the window, below min_growth 10.
        assert_eq!(first_suspected(&run(300, |t| t / 5, 1.0)), None);
    }

    #[test]
    fn validation_names_the_key() {
        let bad = LeakConfig {
            min_waiting_ratio: 1.5,
            ..LeakConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("leak.min_waiting_ratio"));
        assert!(LeakConfig::default().validate().is_ok());
    }
}
