//! The leak model: which goroutine creation sites, and which context creation sites, are
//! suspected of leaking.
//!
//! A leaked goroutine never finishes (a leaked context is never cancelled), so a site
//! that leaks has a *floor* (the lowest live count over a stretch of time) that only
//! rises: goroutines that finish normally make the live count go up and down, leaked ones
//! stay. The model looks at each site on several **time scales** (by default 30 s, 10 min
//! and 1 h 30 min). A scale of window `W` cut into `K` buckets of `w = W/K` keeps, per site, only
//! the floor of each of its last `K` buckets (a compact history: no raw samples). A site is
//! suspected on that scale when:
//!
//! 1. **its floor rises in every bucket** (`f1 < f2 < … < fK`) and by at least the scale's
//!    `min_growth` over the window — a pool that filled and levelled off, traffic that
//!    comes and goes, are not rising in every bucket;
//! 2. **what made the floor is still there** (retention, `min_retained_ratio` = ρ): the
//!    goroutines created within the window and still alive (aged between one bucket and
//!    the window, plus a bucket of slack) are at least ρ × the rise of the floor from the
//!    first to the last-but-one bucket, and those older than `K-1` buckets at least ρ ×
//!    the first floor less the goroutines younger than a bucket (traffic) — a floor that
//!    rises with traffic (a daily ramp of short requests, connections that live minutes)
//!    is made of new goroutines every time;
//! 3. for goroutines, **at least `min_waiting_ratio` of the site is blocked** (`_Gwaiting`
//!    or `_Gleaked`) — busy goroutines are work in progress.
//!
//! Once suspected on a scale, a site stays suspected there while its last floor is above
//! its first and (goroutines) it is still mostly blocked, so the verdict does not flap.
//!
//! **Runtime proof.** Goroutines in status `_Gleaked` were proven unreachable-blocked by
//! the Go runtime's own leak detector (the GC cycle of a `goroutineleak` profile). A site
//! with proven leaks whose number rises within the fastest window (or that has at least
//! the fastest scale's `min_growth` of them at once) is suspected at once, on the scale
//! named `runtime`, and stays so until the fastest window has seen none.
//!
//! Sites of the Go runtime itself (`runtime.*`) are never suspected. The verdict names the
//! scale that caught the site first.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::{AgeHistogram, ContextSiteView, ProcessTable, SiteView};

/// One time scale of the model (config `[[leak.scales]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Length of the history the scale looks at.
    pub window_seconds: f64,
    /// Least rise of the floor over the window.
    pub min_growth: u64,
    /// Buckets the window is cut into (each keeps its floor).
    #[serde(default = "default_buckets")]
    pub buckets: u32,
}

fn default_buckets() -> u32 {
    6
}

impl Scale {
    /// `30s`, `10m`, `2h`, `1h30m`, `1.5s`.
    pub fn name(&self) -> String {
        scale_name(self.window_seconds)
    }

    fn bucket_ns(&self) -> u64 {
        ((self.window_seconds / f64::from(self.buckets)) * 1e9) as u64
    }
}

/// Name of a scale of `w` seconds.
pub fn scale_name(w: f64) -> String {
    let s = w.round() as u64;
    if (w - s as f64).abs() > 1e-9 || s == 0 {
        format!("{w}s")
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 3600 && s.is_multiple_of(60) {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Thresholds of the leak model (config section `[leak]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakConfig {
    /// The time scales, fastest first.
    pub scales: Vec<Scale>,
    /// Least share of a goroutine site's goroutines that are blocked (0..1).
    pub min_waiting_ratio: f64,
    /// Least share of the floor at the start of a window that must still be alive (0..1).
    pub min_retained_ratio: f64,
}

impl Default for LeakConfig {
    fn default() -> Self {
        LeakConfig {
            scales: vec![
                Scale {
                    window_seconds: 30.0,
                    min_growth: 10,
                    buckets: 3,
                },
                Scale {
                    window_seconds: 600.0,
                    min_growth: 20,
                    buckets: 6,
                },
                Scale {
                    window_seconds: 5400.0,
                    min_growth: 30,
                    buckets: 6,
                },
            ],
            min_waiting_ratio: 0.8,
            min_retained_ratio: 0.9,
        }
    }
}

impl LeakConfig {
    /// Checks every threshold; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.scales.is_empty() || self.scales.len() > 8 {
            anyhow::bail!(
                "leak.scales must have 1 to 8 scales, not {}",
                self.scales.len()
            );
        }
        for (i, s) in self.scales.iter().enumerate() {
            if !(1.0..=7.0 * 86_400.0).contains(&s.window_seconds) {
                anyhow::bail!(
                    "leak.scales[{i}].window_seconds must be between 1 and 604800 (a week), not {}",
                    s.window_seconds
                );
            }
            if s.min_growth == 0 {
                anyhow::bail!("leak.scales[{i}].min_growth must be at least 1");
            }
            if !(2..=60).contains(&s.buckets) {
                anyhow::bail!(
                    "leak.scales[{i}].buckets must be between 2 and 60, not {}",
                    s.buckets
                );
            }
            if i > 0 && s.window_seconds <= self.scales[i - 1].window_seconds {
                anyhow::bail!("leak.scales must be ordered by window_seconds, fastest first");
            }
        }
        if !(0.0..=1.0).contains(&self.min_waiting_ratio) {
            anyhow::bail!(
                "leak.min_waiting_ratio must be between 0 and 1, not {}",
                self.min_waiting_ratio
            );
        }
        if !(0.0..=1.0).contains(&self.min_retained_ratio) {
            anyhow::bail!(
                "leak.min_retained_ratio must be between 0 and 1, not {}",
                self.min_retained_ratio
            );
        }
        Ok(())
    }

    /// The fastest scale's window: the shortest bucket of history needed.
    pub fn fastest_window_seconds(&self) -> f64 {
        self.scales.first().map_or(30.0, |s| s.window_seconds)
    }

    /// Parses `--leak-scales`: `WINDOW_SECONDS:MIN_GROWTH[:BUCKETS],…`.
    pub fn parse_scales(text: &str) -> anyhow::Result<Vec<Scale>> {
        text.split(',')
            .map(|part| {
                let f: Vec<&str> = part.trim().split(':').collect();
                let bad = || {
                    anyhow::anyhow!(
                        "leak scales: {part:?} is not WINDOW_SECONDS:MIN_GROWTH[:BUCKETS] (e.g. 600:20:6)"
                    )
                };
                if !(2..=3).contains(&f.len()) {
                    return Err(bad());
                }
                Ok(Scale {
                    window_seconds: f[0].parse().map_err(|_| bad())?,
                    min_growth: f[1].parse().map_err(|_| bad())?,
                    buckets: match f.get(2) {
                        Some(b) => b.parse().map_err(|_| bad())?,
                        None => default_buckets(),
                    },
                })
            })
            .collect()
    }
}

/// The scale name of suspicions proven by the Go runtime.
pub const RUNTIME_SCALE: &str = "runtime";

/// The verdict on one site (goroutine or context creation site).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub suspected: bool,
    /// The time scale that caught it (`30s`, `10m`, `2h`, or `runtime` for leaks proven
    /// by the Go runtime); None when not suspected.
    pub scale: Option<String>,
    /// Rise of the floor over the window of that scale (or, when not suspected, of the
    /// fastest scale whose window is covered), per second; 0 until a window is covered.
    pub growth_per_second: f64,
    /// Floor of the first and last bucket of that window.
    pub floor_start: u64,
    pub floor_end: u64,
    /// Share of the site's live goroutines that are blocked (goroutine sites; 0 for
    /// contexts).
    pub waiting_ratio: f64,
    /// Live goroutines the Go runtime proved leaked (`_Gleaked`).
    pub proven_leaked: u64,
    /// Seconds since the site was first suspected (this episode).
    pub suspected_for_seconds: f64,
}

/// What kind of thing leaks at a suspected site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakKind {
    Goroutines,
    Contexts,
}

/// A suspected leak, as logged and served by `/debug/goroutines`.
#[derive(Debug, Clone, Serialize)]
pub struct Suspicion {
    pub kind: LeakKind,
    pub pid: u32,
    /// Link-time address of the site (not a label: for matching only).
    #[serde(skip)]
    pub pc: u64,
    pub exe: String,
    /// `function file:line` of the `go` statement, or of the call into package `context`.
    pub site: String,
    /// Live goroutines, or uncancelled contexts.
    pub live: u64,
    pub growth_per_minute: f64,
    pub oldest_age_seconds: f64,
    /// Most common state of the goroutines (goroutines), or `uncancelled` (contexts).
    pub dominant_state: String,
    /// The time scale that caught it.
    pub scale: String,
    /// `function file:line` where most of its goroutines block (goroutine sites whose
    /// stacks were read).
    pub blocked_at: Option<String>,
    /// Goroutines the Go runtime proved leaked.
    pub proven_leaked: u64,
    /// Contexts: uncancelled contexts whose creating goroutine has exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_cancel: Option<u64>,
    /// Contexts: goroutines blocked on their done channels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_goroutines: Option<u64>,
    /// Contexts: the creation site (`function file:line`) of most of those goroutines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_on_by: Option<String>,
}

/// The floors of one scale of one site.
#[derive(Debug, Default)]
struct ScaleHistory {
    /// Index of the bucket being filled (time since the site's first sample / w).
    bucket: u64,
    /// Lowest live count of that bucket so far (`u64::MAX`: no sample yet), and when.
    low: u64,
    low_at: u64,
    /// Floors of the last complete buckets, oldest first (at most K), and when each was
    /// seen (the growth is measured between those instants).
    floors: VecDeque<u64>,
    floors_at: VecDeque<u64>,
    /// When the site became suspected on this scale.
    since: Option<u64>,
}

/// Everything remembered about one site: a few words per scale.
#[derive(Debug, Default)]
struct SiteHistory {
    first_ns: u64,
    scales: Vec<ScaleHistory>,
    /// `(time, proven leaked)` samples within the fastest window.
    proven: VecDeque<(u64, u64)>,
    proven_since: Option<u64>,
}

impl SiteHistory {
    fn new(now: u64, scales: usize) -> SiteHistory {
        SiteHistory {
            first_ns: now,
            scales: (0..scales)
                .map(|_| ScaleHistory {
                    low: u64::MAX,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Whether the history still remembers live goroutines (or contexts).
    fn remembers_some(&self) -> bool {
        self.scales
            .iter()
            .any(|s| (s.low > 0 && s.low != u64::MAX) || s.floors.iter().any(|f| *f > 0))
    }
}

/// What the model needs of one site at one refresh.
struct Sample<'a> {
    live: u64,
    /// Blocked share (goroutine sites); None for contexts.
    waiting_ratio: Option<f64>,
    ages: &'a AgeHistogram,
    proven: u64,
    /// Never suspected (sites of the Go runtime).
    exempt: bool,
}

/// One kind of site (goroutines or contexts) of one process.
#[derive(Default)]
struct Sites {
    sites: HashMap<u64, SiteHistory>,
    /// Whether the process has been observed before (a site first seen later is new:
    /// it had nothing before).
    seen: bool,
}

/// The verdicts of one process.
#[derive(Debug, Clone, Default)]
pub struct ProcessVerdicts {
    /// By goroutine site (gopc).
    pub sites: HashMap<u64, Verdict>,
    /// By context site (pc).
    pub contexts: HashMap<u64, Verdict>,
}

/// Keeps the history of every site of every traced process and judges them.
pub struct LeakDetector {
    cfg: LeakConfig,
    /// By (pid, process start time): a reused pid starts a new history.
    procs: HashMap<(u32, u64), (Sites, Sites)>,
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
    /// verdicts for every site of every table. Processes absent from `tables` are
    /// forgotten.
    pub fn observe<'a>(
        &mut self,
        now_ns: u64,
        tables: impl IntoIterator<Item = &'a ProcessTable>,
    ) -> Vec<ProcessVerdicts> {
        let tables: Vec<&ProcessTable> = tables.into_iter().collect();
        let keys: Vec<(u32, u64)> = tables.iter().map(|t| (t.pid, t.start_time)).collect();
        self.procs.retain(|k, _| keys.contains(k));
        let mut out = Vec::with_capacity(tables.len());
        for t in tables {
            let (gs, cs) = self.procs.entry((t.pid, t.start_time)).or_default();
            let sites = gs.observe(
                &self.cfg,
                now_ns,
                t.sites.iter().map(|s| (s.gopc, goroutine_sample(s))),
            );
            let contexts = cs.observe(
                &self.cfg,
                now_ns,
                t.contexts.iter().map(|c| (c.pc, context_sample(c))),
            );
            out.push(ProcessVerdicts { sites, contexts });
        }
        out
    }
}

fn goroutine_sample(s: &SiteView) -> Sample<'_> {
    Sample {
        live: s.live,
        waiting_ratio: Some(if s.live == 0 {
            0.0
        } else {
            s.waiting as f64 / s.live as f64
        }),
        ages: &s.ages,
        proven: s.leaked,
        exempt: s.system,
    }
}

fn context_sample(c: &ContextSiteView) -> Sample<'_> {
    Sample {
        live: c.uncancelled,
        waiting_ratio: None,
        ages: &c.ages,
        proven: 0,
        exempt: false,
    }
}

impl Sites {
    fn observe<'a>(
        &mut self,
        cfg: &LeakConfig,
        now: u64,
        present: impl Iterator<Item = (u64, Sample<'a>)>,
    ) -> HashMap<u64, Verdict> {
        let present: HashMap<u64, Sample<'a>> = present.collect();
        // Sites not seen this time have nothing live: they get a zero sample while their
        // history remembers something.
        self.sites
            .retain(|pc, h| present.contains_key(pc) || h.remembers_some());
        for pc in present.keys() {
            let seen = self.seen;
            self.sites.entry(*pc).or_insert_with(|| {
                let mut h = SiteHistory::new(now, cfg.scales.len());
                if seen {
                    // A site new since the first observation had no proven leaks before.
                    h.proven.push_back((now.saturating_sub(1), 0));
                }
                h
            });
        }
        self.seen = true;
        // An empty histogram (no allocation) for sites with nothing live.
        let none = AgeHistogram::default();
        let mut verdicts = HashMap::with_capacity(present.len());
        for (pc, h) in self.sites.iter_mut() {
            let sample = present.get(pc);
            let zero = Sample {
                live: 0,
                waiting_ratio: Some(0.0),
                ages: &none,
                proven: 0,
                exempt: true,
            };
            let v = judge(cfg, now, h, sample.unwrap_or(&zero));
            if sample.is_some() {
                verdicts.insert(*pc, v);
            }
        }
        verdicts
    }
}

/// Adds a sample to a site's history and judges it on every scale.
fn judge(cfg: &LeakConfig, now: u64, h: &mut SiteHistory, s: &Sample<'_>) -> Verdict {
    let blocked = s.waiting_ratio.is_none_or(|r| r >= cfg.min_waiting_ratio);
    // (scale index or None for the runtime proof, since, growth, first floor, last floor)
    let mut best: Option<(Option<usize>, u64, f64, u64, u64)> = None;
    let mut fastest_covered: Option<(f64, u64, u64)> = None;
    for (i, (sc, st)) in cfg.scales.iter().zip(h.scales.iter_mut()).enumerate() {
        let w = sc.bucket_ns().max(1);
        let k = sc.buckets as usize;
        let bucket = now.saturating_sub(h.first_ns) / w;
        if bucket > st.bucket {
            // Buckets with no sample at all (the agent stalled) get the lowest of their
            // neighbours: a gap never makes a floor look higher.
            let gap_floor = st.low.min(s.live);
            if st.low != u64::MAX {
                st.floors.push_back(st.low);
                st.floors_at.push_back(st.low_at);
            }
            for b in st.bucket + 1..bucket.min(st.bucket + 1 + k as u64) {
                st.floors.push_back(gap_floor);
                st.floors_at.push_back(h.first_ns + b * w);
            }
            while st.floors.len() > k {
                st.floors.pop_front();
                st.floors_at.pop_front();
            }
            st.bucket = bucket;
            st.low = s.live;
            st.low_at = now;
        } else if s.live < st.low {
            st.low = s.live;
            st.low_at = now;
        }
        if st.floors.len() < k {
            st.since = None;
            continue;
        }
        let f1 = st.floors[0];
        let fk = st.floors[k - 1];
        let span_ns = st.floors_at[k - 1].saturating_sub(st.floors_at[0]);
        let growth = if span_ns == 0 {
            0.0
        } else {
            (fk as f64 - f1 as f64) / (span_ns as f64 / 1e9)
        };
        fastest_covered.get_or_insert((growth, f1, fk));
        let suspected = if s.exempt {
            false
        } else if st.since.is_some() {
            fk > f1 && blocked
        } else {
            let rising = st
                .floors
                .iter()
                .zip(st.floors.iter().skip(1))
                .all(|(a, b)| a < b);
            let w_s = w as f64 / 1e9;
            let older = |age: f64| s.ages.at_least(0.9 * age);
            let young = s.live.saturating_sub(older(w_s));
            let retained =
                |n: u64, age: f64| older(age) as f64 >= cfg.min_retained_ratio * n as f64;
            // Created within the window (with a bucket of slack) and still alive.
            let window_cohort = older(w_s).saturating_sub(older((k + 1) as f64 * w_s / 0.81));
            rising
                && fk.saturating_sub(f1) >= sc.min_growth
                && window_cohort as f64
                    >= cfg.min_retained_ratio * st.floors[k - 2].saturating_sub(f1) as f64
                && retained(f1.saturating_sub(young), (k - 1) as f64 * w_s)
                && blocked
        };
        if !suspected {
            st.since = None;
            continue;
        }
        let since = *st.since.get_or_insert(now);
        if best.is_none_or(|b| since < b.1) {
            best = Some((Some(i), since, growth, f1, fk));
        }
    }
    // The runtime's proof.
    let fastest_ns = (cfg.fastest_window_seconds() * 1e9) as u64;
    h.proven.push_back((now, s.proven));
    while h.proven.len() > 1 && now - h.proven[0].0 > fastest_ns {
        h.proven.pop_front();
    }
    let lowest = h.proven.iter().map(|p| p.1).min().unwrap_or(0);
    let batch = cfg.scales.first().map_or(10, |s| s.min_growth);
    if s.exempt || h.proven.iter().all(|p| p.1 == 0) {
        h.proven_since = None;
    } else if h.proven_since.is_none() && s.proven > 0 && (s.proven > lowest || s.proven >= batch) {
        h.proven_since = Some(now);
    }
    if let Some(since) = h.proven_since {
        if best.is_none_or(|b| since <= b.1) {
            let (g, f1, fk) = fastest_covered.unwrap_or((0.0, 0, 0));
            best = Some((None, since, g, f1, fk));
        }
    }
    let (scale, since, growth, f1, fk) = match best {
        Some((i, since, g, f1, fk)) => (
            Some(i.map_or(RUNTIME_SCALE.to_string(), |i| cfg.scales[i].name())),
            Some(since),
            g,
            f1,
            fk,
        ),
        None => {
            let (g, f1, fk) = fastest_covered.unwrap_or((0.0, 0, 0));
            (None, None, g, f1, fk)
        }
    };
    Verdict {
        suspected: scale.is_some(),
        scale,
        growth_per_second: growth,
        floor_start: f1,
        floor_end: fk,
        waiting_ratio: s.waiting_ratio.unwrap_or(0.0),
        proven_leaked: s.proven,
        suspected_for_seconds: since.map_or(0.0, |t| (now - t) as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests;
