//! The leak model on synthetic sites: what it must flag, on which scale and when, and
//! the healthy shapes it must never flag. Time is simulated (a sample every 5 s).

use super::*;

const S: u64 = 1_000_000_000;
const STEP: u64 = 5;

/// A site at one instant: live goroutines (or contexts) with their ages (seconds).
#[derive(Default)]
struct At {
    ages: Vec<(f64, u64)>,
    waiting_share: f64,
    proven: u64,
}

impl At {
    fn live(&self) -> u64 {
        self.ages.iter().map(|a| a.1).sum()
    }
    fn histogram(&self) -> AgeHistogram {
        let mut h = AgeHistogram::default();
        for (age, n) in &self.ages {
            for _ in 0..*n {
                h.add(*age);
            }
        }
        h
    }
}

/// A population of goroutines: `(born, died)` in seconds.
#[derive(Default)]
struct Pop(Vec<(f64, Option<f64>)>);

impl Pop {
    fn at(&self, t: f64) -> At {
        let mut ages = vec![];
        for (born, died) in &self.0 {
            if *born <= t && died.is_none_or(|d| d > t) {
                ages.push((t - born, 1));
            }
        }
        At {
            ages,
            waiting_share: 1.0,
            proven: 0,
        }
    }
    /// `n` born at regular intervals from `from` to `to` (s), living `life` (None: forever).
    fn steady(mut self, from: f64, to: f64, per_second: f64, life: Option<f64>) -> Pop {
        let n = ((to - from) * per_second).round() as u64;
        for i in 0..n {
            let b = from + i as f64 / per_second;
            self.0.push((b, life.map(|l| b + l)));
        }
        self
    }
}

fn goroutine_site(a: &At) -> SiteView {
    let live = a.live();
    SiteView {
        gopc: 1,
        function: "main.f".into(),
        file: "main.go".into(),
        line: 1,
        live,
        waiting: (live as f64 * a.waiting_share).round() as u64,
        leaked: a.proven,
        dominant_state: "chan receive".into(),
        ages: a.histogram(),
        ..Default::default()
    }
}

fn context_site(a: &At) -> ContextSiteView {
    ContextSiteView {
        pc: 1,
        function: "main.f".into(),
        file: "main.go".into(),
        line: 1,
        uncancelled: a.live(),
        ages: a.histogram(),
        ..Default::default()
    }
}

fn table(sites: Vec<SiteView>, contexts: Vec<ContextSiteView>) -> ProcessTable {
    ProcessTable {
        pid: 7,
        start_time: 1,
        exe: "x".into(),
        sites,
        contexts,
        ..Default::default()
    }
}

/// Feeds the site every 5 s for `secs` with the default config; verdicts over time.
fn run(secs: u64, f: impl FnMut(f64) -> At) -> Vec<(u64, Verdict)> {
    run_with(LeakConfig::default(), secs, false, f)
}

fn run_with(
    cfg: LeakConfig,
    secs: u64,
    contexts: bool,
    mut f: impl FnMut(f64) -> At,
) -> Vec<(u64, Verdict)> {
    let mut d = LeakDetector::new(cfg);
    let mut out = vec![];
    for t in (0..=secs).step_by(STEP as usize) {
        let a = f(t as f64);
        let tab = if contexts {
            table(vec![], vec![context_site(&a)])
        } else {
            table(vec![goroutine_site(&a)], vec![])
        };
        let v = d.observe(t * S, [&tab]).remove(0);
        let v = if contexts { v.contexts } else { v.sites };
        out.push((t, v[&1].clone()));
    }
    out
}

/// When the site was first suspected, and on which scale.
fn first(v: &[(u64, Verdict)]) -> Option<(u64, String)> {
    v.iter()
        .find(|(_, v)| v.suspected)
        .map(|(t, v)| (*t, v.scale.clone().unwrap()))
}

fn never(v: &[(u64, Verdict)]) {
    if let Some((t, v)) = v.iter().find(|(_, v)| v.suspected) {
        panic!("suspected at {t}s: {v:?}");
    }
}

#[test]
fn fast_leak_is_flagged_on_the_30s_scale_once_its_window_is_covered() {
    let pop = Pop::default().steady(0.0, 10_000.0, 10.0, None);
    let v = run(120, |t| pop.at(t));
    assert_eq!(first(&v), Some((30, "30s".into())));
    assert!(v.iter().filter(|(t, _)| *t >= 30).all(|(_, v)| v.suspected));
    let (_, at60) = &v[12];
    assert!((at60.growth_per_second - 10.0).abs() < 0.6, "{at60:?}");
}

#[test]
fn five_a_minute_is_flagged_on_the_10m_scale_within_30_minutes() {
    let pop = Pop::default().steady(0.0, 100_000.0, 5.0 / 60.0, None);
    let v = run(3600, |t| pop.at(t));
    assert_eq!(first(&v), Some((600, "10m".into())));
    assert!(v
        .iter()
        .filter(|(t, _)| *t >= 600)
        .all(|(_, v)| v.suspected));
    let g = v.last().unwrap().1.growth_per_second * 60.0;
    assert!((g - 5.0).abs() < 0.5, "{g}");
}

#[test]
fn one_a_minute_is_flagged_on_the_slowest_scale_within_2_hours() {
    let pop = Pop::default().steady(0.0, 100_000.0, 1.0 / 60.0, None);
    let v = run(3 * 3600, |t| pop.at(t));
    assert_eq!(first(&v), Some((5400, "1h30m".into())));
}

#[test]
fn a_slow_leak_among_short_requests_at_the_same_site_is_flagged() {
    // 3 leaked goroutines a minute on an error path, 20 requests a second of 1.5 s each.
    let leak = Pop::default().steady(0.0, 100_000.0, 3.0 / 60.0, None);
    let v = run(3600, |t| {
        let mut a = leak.at(t);
        // 30 to 45 requests in flight depending on the instant, all young.
        let noise = (t as u64).wrapping_mul(2654435761) >> 7 & 15;
        a.ages.push((0.5, 30 + noise));
        a
    });
    assert_eq!(first(&v).map(|f| f.1), Some("10m".into()));
    assert!(first(&v).unwrap().0 <= 700);
}

#[test]
fn a_pool_that_grows_for_5_minutes_then_levels_off_is_never_flagged() {
    // One worker every 10 s for 5 minutes (30 workers), idle forever.
    let pool = Pop::default().steady(0.0, 300.0, 0.1, None);
    never(&run(4 * 3600, |t| pool.at(t)));
    // Faster: 300 workers over 5 minutes are flagged by the 30 s scale while they grow
    // (indistinguishable from a fast leak then), and cleared once the pool is flat.
    let pool = Pop::default().steady(0.0, 300.0, 1.0, None);
    let v = run(3600, |t| pool.at(t));
    assert_eq!(first(&v), Some((30, "30s".into())));
    assert!(v
        .iter()
        .filter(|(t, _)| *t >= 340)
        .all(|(_, v)| !v.suspected));
}

#[test]
fn daily_traffic_shape_is_never_flagged() {
    // A day: requests from 1/s at night to 50/s at noon, 2 s each; keep-alive clients
    // from 10 to 400, each connection living 5 minutes; two days.
    let day = 86_400.0;
    let shape = |t: f64| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * t / day).cos();
    never(&run(2 * 86_400, |t| {
        let requests = (2.0 * (1.0 + 49.0 * shape(t))).round() as u64;
        let clients = (10.0 + 390.0 * shape(t)).round() as u64;
        let mut ages = vec![(1.0, requests)];
        // Client i reconnects every 5 minutes, at its own phase.
        for i in 0..clients {
            ages.push(((t + 37.0 * i as f64) % 300.0, 1));
        }
        At {
            ages,
            waiting_share: 1.0,
            proven: 0,
        }
    }));
}

#[test]
fn bursts_that_drain_are_never_flagged() {
    // Every 60 s: 500 goroutines within 5 s, drained over the next 15 s.
    never(&run(4 * 3600, |t| {
        let p = t as u64 % 60;
        let n = match p {
            0..5 => 100 * p,
            5..20 => 500 - 500 * (p - 5) / 15,
            _ => 0,
        };
        At {
            ages: vec![(p as f64, n)],
            waiting_share: 1.0,
            proven: 0,
        }
    }));
}

#[test]
fn idle_keep_alives_and_sleepers_are_never_flagged() {
    // 50 connections opened in the first 10 s and a ticker loop, idle for hours.
    let idle = Pop::default()
        .steady(0.0, 10.0, 5.0, None)
        .steady(0.0, 1.0, 1.0, None);
    never(&run(4 * 3600, |t| idle.at(t)));
}

#[test]
fn oscillating_traffic_is_never_flagged() {
    never(&run(4 * 3600, |t| At {
        ages: vec![(
            1.0,
            if (t as u64 / 5).is_multiple_of(2) {
                500
            } else {
                20
            },
        )],
        waiting_share: 1.0,
        proven: 0,
    }));
}

#[test]
fn busy_goroutines_are_not_flagged() {
    let pop = Pop::default().steady(0.0, 10_000.0, 10.0, None);
    never(&run(600, |t| At {
        waiting_share: 0.5,
        ..pop.at(t)
    }));
}

#[test]
fn suspicion_clears_when_the_leak_stops_and_the_floor_is_flat() {
    let pop = Pop::default().steady(0.0, 60.0, 10.0, None);
    let v = run(200, |t| pop.at(t));
    assert_eq!(first(&v), Some((30, "30s".into())));
    assert!(v.iter().any(|(t, v)| *t > 60 && *t <= 95 && v.suspected));
    assert!(v
        .iter()
        .filter(|(t, _)| *t >= 100)
        .all(|(_, v)| !v.suspected));
}

#[test]
fn fast_leak_then_slower_leak_stays_flagged() {
    let pop = Pop::default()
        .steady(0.0, 60.0, 10.0, None)
        .steady(60.0, 10_000.0, 0.5, None);
    let v = run(900, |t| pop.at(t));
    assert!(v.iter().filter(|(t, _)| *t >= 30).all(|(_, v)| v.suspected));
}

#[test]
fn runtime_proven_leaks_that_keep_coming_are_flagged_at_once() {
    // 2 leaks a minute (no scale would flag that within 10 minutes); the program
    // collects the goroutineleak profile every 5 s, which marks them `_Gleaked`.
    let pop = Pop::default().steady(0.0, 100_000.0, 2.0 / 60.0, None);
    let v = run(600, |t| {
        let mut a = pop.at(t);
        a.proven = a.live();
        a
    });
    let (t, scale) = first(&v).unwrap();
    assert_eq!(scale, RUNTIME_SCALE);
    assert!(t <= 60, "{t}");
    assert!(v.iter().filter(|(u, _)| *u >= t).all(|(_, v)| v.suspected));
    assert_eq!(v.last().unwrap().1.proven_leaked, 21);
}

#[test]
fn a_constant_handful_of_proven_leaks_is_not_flagged() {
    // Three goroutines leaked at start-up, proven every cycle: not growing.
    never(&run(3 * 3600, |_| At {
        ages: vec![(100.0, 3)],
        waiting_share: 1.0,
        proven: 3,
    }));
}

#[test]
fn a_new_site_whose_first_goroutine_is_proven_leaked_is_flagged_at_once() {
    // 1 leak every 30 s from t=30, proven at the next profile.
    let v = run(120, |t| {
        let n = (t as u64) / 30;
        At {
            ages: vec![(1.0, n)],
            waiting_share: 1.0,
            proven: n,
        }
    });
    assert_eq!(first(&v), Some((30, RUNTIME_SCALE.into())));
}

#[test]
fn a_batch_of_proven_leaks_is_flagged() {
    let v = run(60, |t| At {
        ages: vec![(t + 100.0, 40)],
        waiting_share: 1.0,
        proven: if t >= 20.0 { 40 } else { 0 },
    });
    assert_eq!(first(&v), Some((20, RUNTIME_SCALE.into())));
}

#[test]
fn fast_context_leak_is_flagged_within_60_seconds() {
    // A retry loop's WithTimeout(time.Hour) never cancelled, 20 a second.
    let pop = Pop::default().steady(0.0, 10_000.0, 20.0, None);
    let v = run_with(LeakConfig::default(), 120, true, |t| pop.at(t));
    assert_eq!(first(&v), Some((30, "30s".into())));
}

#[test]
fn slow_context_leak_is_flagged_within_30_minutes() {
    let pop = Pop::default().steady(0.0, 100_000.0, 5.0 / 60.0, None);
    let v = run_with(LeakConfig::default(), 3600, true, |t| pop.at(t));
    assert_eq!(first(&v), Some((600, "10m".into())));
}

#[test]
fn a_cache_of_contexts_cancelled_on_eviction_is_never_flagged() {
    // One entry every 3 s, capacity 50: full after 150 s, then each insert evicts (and
    // cancels) the oldest.
    let cache = Pop::default().steady(0.0, 100_000.0, 1.0 / 3.0, Some(150.0));
    never(&run_with(LeakConfig::default(), 4 * 3600, true, |t| {
        cache.at(t)
    }));
    // Short-lived request contexts, cancelled when the request ends.
    let requests = Pop::default().steady(0.0, 10_000.0, 50.0, Some(0.2));
    never(&run_with(LeakConfig::default(), 3600, true, |t| {
        requests.at(t)
    }));
}

#[test]
fn compressed_scales_behave_like_the_real_ones() {
    // The integration tests run the model 20 times faster (windows / 20, rates × 20).
    let fast = LeakConfig {
        scales: LeakConfig::parse_scales("1.5:10:3,30:20:6,270:30:6").unwrap(),
        ..LeakConfig::default()
    };
    fast.validate().unwrap();
    let mut d = LeakDetector::new(fast);
    let pop = Pop::default().steady(0.0, 10_000.0, 20.0 / 60.0, None);
    let mut first = None;
    for i in 0..=2400u64 {
        let t = i as f64 / 4.0; // a refresh every 250 ms
        let tab = table(vec![goroutine_site(&pop.at(t))], vec![]);
        let v = d.observe((t * 1e9) as u64, [&tab]).remove(0).sites[&1].clone();
        if v.suspected && first.is_none() {
            first = Some((t, v.scale.unwrap()));
        }
    }
    assert_eq!(first, Some((270.0, "270s".into())));
}

#[test]
fn scale_names() {
    assert_eq!(scale_name(30.0), "30s");
    assert_eq!(scale_name(600.0), "10m");
    assert_eq!(scale_name(7200.0), "2h");
    assert_eq!(scale_name(5400.0), "1h30m");
    assert_eq!(scale_name(1.5), "1.5s");
    assert_eq!(scale_name(90.0), "90s");
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
    let unordered = LeakConfig {
        scales: LeakConfig::parse_scales("600:20,30:10").unwrap(),
        ..LeakConfig::default()
    };
    assert!(unordered
        .validate()
        .unwrap_err()
        .to_string()
        .contains("ordered"));
    assert!(LeakConfig::parse_scales("30").is_err());
    assert!(LeakConfig::default().validate().is_ok());
}

#[test]
fn age_histogram_counts_what_is_surely_older() {
    let mut h = AgeHistogram::default();
    for a in [0.5, 1.0, 9.0, 10.0, 11.0, 100.0, 1e9] {
        h.add(a);
    }
    assert_eq!(h.at_least(0.0), 7);
    assert_eq!(h.at_least(10.0), 3); // 11 (bucket from 10.37), 100, 1e9
    assert_eq!(h.at_least(9.0), 4); // from 9.51: 10, 11, 100, 1e9
    assert_eq!(h.at_least(1e12), 0);
}
