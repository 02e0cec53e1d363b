//! The leak model on real Go programs (`leakshapes`), end to end through `goroscope run`:
//!
//! - leaks the Go runtime proved (`_Gleaked`, the goroutineleak profile collected every
//!   5 s; Go 1.26 with the experiment, Go 1.27) are flagged within 60 s, on the `runtime`
//!   scale, with their proven count; a Go without the profile is not flagged that fast;
//! - fast context-only leaks (a retry loop's WithTimeout, a children map piling up, 20 a
//!   second) are flagged within 60 s on the 30 s scale (Go 1.21, 1.24, 1.27);
//! - slow leaks, with time compressed 20 times through configuration (every window of the
//!   model divided by 20, the programs' clocks multiplied by 20 with `-speed 20`): 5
//!   goroutines a minute flagged within 30 (model) minutes on the 10-minute scale, 1 a
//!   minute within 2 hours on the 1 h 30 min scale, a context leak of 5 a minute within 30
//!   minutes; and the healthy shapes (a pool that grows for 5 minutes then levels off,
//!   daily-shaped traffic, a cache of contexts cancelled on eviction, a sleeper) never
//!   flagged at any scale. Compression keeps the model's arithmetic exact: every bucket,
//!   rate and age scales by the same factor (the unit test
//!   `compressed_scales_behave_like_the_real_ones` checks the same shapes both ways).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use integration_tests::{bpf_allowed, fixture, fixture_source, line_of, wait_for, Agent, Churn};
use serde_json::Value;

/// `file:line` suffix of a marked line of leakshapes.
fn site(marker: &str) -> String {
    format!(
        "leakshapes/main.go:{}",
        line_of(
            &fixture_source("leakshapes"),
            &format!("// leakshapes: {marker}")
        )
    )
}

fn start(minor: u32, variant: &str, args: &[&str]) -> Churn {
    let mut cmd = std::process::Command::new(fixture(minor, "leakshapes", variant).path);
    cmd.args(args);
    Churn::start_with(cmd)
}

/// The suspicions of process `pid` now: `(kind, site, scale, suspicion)`.
fn suspicions(agent: &Agent, pid: u32) -> Vec<(String, String, String, Value)> {
    let r = agent.get(&format!("/debug/goroutines?pid={pid}"));
    if r.status != 200 {
        return vec![]; // not refreshed yet
    }
    let d = r.json();
    let procs = d.as_array().cloned().unwrap_or_else(|| vec![d.clone()]);
    procs
        .iter()
        .flat_map(|p| p["suspected_leaks"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or("").to_string(),
                s["site"].as_str().unwrap_or("").to_string(),
                s["scale"].as_str().unwrap_or("").to_string(),
                s,
            )
        })
        .collect()
}

/// The first time (seconds after `t0`) each `(pid, kind, site suffix)` is suspected,
/// with the scale, polled every 500 ms for `secs` or until every one is found.
struct Watch {
    want: Vec<(u32, &'static str, String)>,
    found: HashMap<usize, (f64, String, Value)>,
}

impl Watch {
    fn poll(&mut self, agent: &Agent, t0: Instant) {
        for (i, (pid, kind, suffix)) in self.want.iter().enumerate() {
            if self.found.contains_key(&i) {
                continue;
            }
            if let Some((_, _, scale, s)) = suspicions(agent, *pid)
                .into_iter()
                .find(|(k, site, _, _)| k == kind && site.ends_with(suffix.as_str()))
            {
                self.found.insert(i, (t0.elapsed().as_secs_f64(), scale, s));
            }
        }
    }
}

/// Every "leak suspected" log line of `pids` in the agent's log.
fn logged_suspicions(agent: &mut Agent, pids: &[u32]) -> Vec<Value> {
    agent.drain_log();
    agent
        .log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("leak suspected"))
                && pids.contains(&(v["pid"].as_u64().unwrap_or(0) as u32))
        })
        .collect()
}

#[test]
fn runtime_proven_and_fast_context_leaks_are_flagged_within_60_seconds() {
    if !bpf_allowed("runtime_proven_and_fast_context_leaks_are_flagged_within_60_seconds") {
        return;
    }
    // 2 unreachable goroutines a minute: far below what any scale flags within 60 s.
    let proven = [
        start(26, "leakexp", &["-proven", "2", "-profile", "5"]),
        start(27, "default", &["-proven", "2", "-profile", "5"]),
    ];
    let no_profile = start(24, "default", &["-proven", "2", "-profile", "5"]);
    let fast: Vec<Churn> = [21, 24, 27]
        .iter()
        .map(|m| start(*m, "default", &["-ctxfast", "20"]))
        .collect();
    let mut args: Vec<String> = vec![];
    for c in proven.iter().chain([&no_profile]).chain(&fast) {
        args.extend(["--pid".into(), c.pid.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut agent = Agent::start(&args);
    let mut want = vec![];
    for c in &proven {
        want.push((c.pid, "goroutines", site("proven leak")));
    }
    for c in &fast {
        want.push((c.pid, "contexts", site("retry without cancel")));
        want.push((c.pid, "contexts", site("children pile-up")));
    }
    let mut w = Watch {
        want,
        found: HashMap::new(),
    };
    while w.found.len() < w.want.len() && t0.elapsed() < Duration::from_secs(75) {
        w.poll(&agent, t0);
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, (pid, kind, suffix)) in w.want.iter().enumerate() {
        let (t, scale, s) = w
            .found
            .get(&i)
            .unwrap_or_else(|| panic!("pid {pid}: {kind} at {suffix} not suspected in 75 s"));
        eprintln!("pid {pid}: {kind} at {suffix} suspected after {t:.1} s on scale {scale}");
        assert!(
            *t <= 60.0,
            "pid {pid}: {kind} at {suffix} flagged after {t:.1} s"
        );
        if *kind == "goroutines" {
            assert_eq!(scale, "runtime", "{s}");
            // Where they block is read at the next refresh.
            let blocked = wait_for(
                "blocked_at of the proven leak",
                Duration::from_secs(15),
                || {
                    suspicions(&agent, *pid)
                        .into_iter()
                        .find(|x| x.1.ends_with(suffix.as_str()))
                        .and_then(|x| x.3["blocked_at"].as_str().map(str::to_string))
                },
            );
            assert!(
                blocked.starts_with("main.unreachable ")
                    && blocked.ends_with(&site("where the proven leak blocks")),
                "{blocked}"
            );
            assert!(s["proven_leaked"].as_u64().unwrap() >= 1, "{s}");
            assert_eq!(s["dominant_state"], "chan receive (leaked)", "{s}");
        } else {
            assert_eq!(scale, "30s", "{s}");
        }
    }
    let proven_pids: Vec<u32> = proven.iter().map(|c| c.pid).collect();
    // The proven count is the program's own: between its last profile's count and the
    // goroutines it leaked so far.
    for c in proven {
        let mut c = c;
        let before = c.cmd("count");
        let s = suspicions(&agent, c.pid)
            .into_iter()
            .find(|x| x.1.ends_with(&site("proven leak")))
            .expect("still suspected")
            .3;
        let after = c.cmd("count");
        let field = |line: &str, k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line:?}"))
        };
        let n = s["proven_leaked"].as_u64().unwrap();
        assert!(
            field(&before, "leakprofile") <= n && n <= field(&after, "proven"),
            "pid {}: goroscope {n}, program {before:?} / {after:?}",
            c.pid
        );
        assert!(field(&after, "profiles") >= 2, "{after}");
        let metrics = agent.get("/metrics").body;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("goroscope_site_goroutines_leaked{")
                    && l.contains(&format!("pid=\"{}\"", c.pid))
                    && l.contains(&site("proven leak"))
                    && !l.ends_with(" 0")),
            "no goroscope_site_goroutines_leaked for pid {}",
            c.pid
        );
        assert_eq!(c.finish().code(), Some(0));
    }
    // Without the profile (Go 1.24) the same leak is not proven, and too slow to be
    // flagged by any scale this soon.
    let s = suspicions(&agent, no_profile.pid);
    assert!(s.is_empty(), "Go 1.24 flagged: {s:?}");
    let log = logged_suspicions(&mut agent, &[no_profile.pid]);
    assert!(log.is_empty(), "{log:?}");
    // The log line of a goroutine suspicion says where they block.
    let logged = logged_suspicions(&mut agent, &[proven_pids[0]]);
    assert!(
        logged
            .iter()
            .any(|v| v["message"] == "goroutine leak suspected"
                && v["scale"] == "runtime"
                && v["blocked_at"]
                    .as_str()
                    .is_some_and(|b| b.ends_with(&site("where the proven leak blocks")))),
        "{logged:?}"
    );
    // The log line of a context suspicion carries its evidence.
    let logged = logged_suspicions(&mut agent, &[fast[0].pid]);
    assert!(
        logged
            .iter()
            .any(|v| v["message"] == "context leak suspected"
                && v["scale"] == "30s"
                && v["lost_cancel"].is_string()),
        "{logged:?}"
    );
    for c in fast {
        assert_eq!(c.finish().code(), Some(0));
    }
    assert_eq!(no_profile.finish().code(), Some(0));
}

#[test]
fn slow_leaks_are_flagged_and_healthy_shapes_never_with_time_compressed_20_times() {
    if !bpf_allowed("slow_leaks_are_flagged_and_healthy_shapes_never_with_time_compressed_20_times")
    {
        return;
    }
    const SPEED: &str = "20";
    let slow5 = start(24, "default", &["-slow", "5", "-speed", SPEED]);
    let slow1 = start(21, "default", &["-slow", "1", "-speed", SPEED]);
    let ctxslow = start(27, "default", &["-ctxslow", "5", "-speed", SPEED]);
    let healthy: Vec<Churn> = [21, 27]
        .iter()
        .map(|m| start(*m, "default", &["-healthy", "-speed", SPEED]))
        .collect();
    let mut args: Vec<String> = vec![
        // The default scales (30 s, 10 min, 1 h 30 min) and refresh (5 s), divided by 20.
        "--leak-scales".into(),
        "1.5:10:3,30:20:6,270:30:6".into(),
        "--interval-seconds".into(),
        "0.25".into(),
    ];
    for c in [&slow5, &slow1, &ctxslow].into_iter().chain(&healthy) {
        args.extend(["--pid".into(), c.pid.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut agent = Agent::start(&args);
    let mut w = Watch {
        want: vec![
            (slow5.pid, "goroutines", site("slow leak")),
            (slow1.pid, "goroutines", site("slow leak")),
            (ctxslow.pid, "contexts", site("slow context leak")),
        ],
        found: HashMap::new(),
    };
    // Until the slowest is found (2 model hours: 360 s) and the healthy programs have been
    // judged on every scale for at least a full window of the slowest (270 s) after it
    // covered (another 270 s at least).
    let healthy_pids: Vec<u32> = healthy.iter().map(|c| c.pid).collect();
    while t0.elapsed() < Duration::from_secs(400)
        && (w.found.len() < 3 || t0.elapsed() < Duration::from_secs(330))
    {
        w.poll(&agent, t0);
        for p in &healthy_pids {
            let s = suspicions(&agent, *p);
            assert!(
                s.is_empty(),
                "healthy pid {p} flagged after {:.0} s: {s:?}",
                t0.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let expect = [
        // (scale, flagged within: model time / 20)
        ("30s", 30.0 * 60.0 / 20.0),
        ("270s", 2.0 * 3600.0 / 20.0),
        ("30s", 30.0 * 60.0 / 20.0),
    ];
    for (i, (pid, kind, suffix)) in w.want.iter().enumerate() {
        let (t, scale, s) = w
            .found
            .get(&i)
            .unwrap_or_else(|| panic!("pid {pid}: {kind} at {suffix} not suspected"));
        eprintln!(
            "pid {pid}: {kind} at {suffix} suspected after {t:.1} s ({:.1} model minutes) on scale {scale}",
            t * 20.0 / 60.0
        );
        assert_eq!(scale, expect[i].0, "{s}");
        assert!(*t <= expect[i].1, "pid {pid}: flagged after {t:.1} s");
    }
    // Every transition is logged: none for the healthy programs, at any scale.
    let log = logged_suspicions(&mut agent, &healthy_pids);
    assert!(log.is_empty(), "healthy programs flagged: {log:?}");
    for c in [slow5, slow1, ctxslow].into_iter().chain(healthy) {
        assert_eq!(c.finish().code(), Some(0));
    }
}

#[test]
fn snapshot_observe_judges_the_sites_over_its_window() {
    if !bpf_allowed("snapshot_observe_judges_the_sites_over_its_window") {
        return;
    }
    // 10 goroutines and 2 × 20 contexts a second leak: the 30 s scale catches them within
    // a 36 s observation.
    let c = start(27, "default", &["-slow", "600", "-ctxfast", "20"]);
    let text = integration_tests::goroscope_text(&[
        "snapshot",
        "--pid",
        &c.pid.to_string(),
        "--observe",
        "36",
    ]);
    for marker in ["slow leak", "retry without cancel", "children pile-up"] {
        let at = site(marker);
        let block: Vec<&str> = text
            .split("\n\n")
            .filter(|b| b.lines().next().is_some_and(|l| l.ends_with(&at)))
            .collect();
        assert_eq!(block.len(), 1, "{marker}: {text}");
        assert!(
            block[0].contains("#\tleak suspected on the 30s time scale"),
            "{marker}: {}",
            block[0]
        );
    }
    // The requests of the same program are not suspected.
    let requests = site("requests");
    assert!(
        text.split("\n\n")
            .filter(|b| b.lines().next().is_some_and(|l| l.ends_with(&requests)))
            .all(|b| !b.contains("leak suspected")),
        "{text}"
    );
    assert_eq!(c.finish().code(), Some(0));
}
