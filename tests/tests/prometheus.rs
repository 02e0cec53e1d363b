//! The whole path an SRE relies on, with a real Prometheus (Debian's, on loopback)
//! scraping a real `goroscope run` that traces leaky and healthy Go programs (Go 1.21 and
//! 1.27): the leak is flagged at the exact site within 60 s at 10 leaked goroutines per
//! second, the shipped GoroutineLeakSuspected alert fires for the leaky programs, and
//! nothing is flagged or alerted for the healthy ones. A second agent, with the leak
//! model's time compressed 20 times (see tests/tests/leaks.rs), traces a program leaking 5
//! goroutines and 5 contexts a (model) minute: the slow verdicts reach Prometheus with
//! their scale, and GoroutineLeakSuspected and ContextLeak fire, naming the scale.

use std::time::{Duration, Instant};

use integration_tests::prometheus::Prometheus;
use integration_tests::{bpf_allowed, fixture, fixture_source, line_of, wait_for, Agent, Churn};
use serde_json::Value;

/// One scenario with one Prometheus, one agent and four fixtures, which take a minute to
/// run: every check is made on that one run, hence its length.
#[test]
fn real_prometheus_sees_the_leak_and_fires_the_alert_only_for_the_leaky_programs() {
    if !bpf_allowed("real_prometheus_sees_the_leak_and_fires_the_alert_only_for_the_leaky_programs")
    {
        return;
    }
    let started = Instant::now();
    let leaky: Vec<Churn> = [21, 27]
        .iter()
        .map(|m| Churn::start(&fixture(*m, "leaky", "default").path))
        .collect();
    let healthy: Vec<Churn> = [21, 27]
        .iter()
        .map(|m| Churn::start(&fixture(*m, "healthy", "default").path))
        .collect();
    let pids = |ps: &[Churn]| ps.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>();
    let (leaky_pids, healthy_pids) = (pids(&leaky), pids(&healthy));
    let mut args = Vec::new();
    for p in leaky_pids.iter().chain(&healthy_pids) {
        args.extend(["--pid", p.as_str()]);
    }
    // Default interval and leak thresholds: what the README documents.
    let agent = Agent::start(&args);
    let slow = Churn::start_with({
        let mut c = std::process::Command::new(fixture(27, "leakshapes", "default").path);
        c.args(["-slow", "5", "-ctxslow", "5", "-speed", "20"]);
        c
    });
    let slow_pid = slow.pid.to_string();
    let compressed = Agent::start(&[
        "--pid",
        &slow_pid,
        "--leak-scales",
        "1.5:10:3,30:20:6,270:30:6",
        "--interval-seconds",
        "0.25",
    ]);
    let prom = Prometheus::start(&format!("{},{}", agent.addr, compressed.addr));

    // The leak is flagged, at the exact site, within 60 s of the leak starting.
    let site = format!(
        "tests/fixtures/go/leaky/main.go:{}",
        line_of(&fixture_source("leaky"), "go waitForReply(ch) // the leak")
    );
    let flagged = wait_for(
        "goroscope_site_leak_suspected == 1 for both leaky programs",
        Duration::from_secs(60).saturating_sub(started.elapsed()),
        || {
            let r = prom.query(&format!(
                "goroscope_site_leak_suspected{{pid!=\"{slow_pid}\"}} == 1"
            ));
            let hit: Vec<&str> = r.iter().filter_map(|(m, _)| m["pid"].as_str()).collect();
            leaky_pids
                .iter()
                .all(|p| hit.contains(&p.as_str()))
                .then_some(r)
        },
    );
    eprintln!(
        "leak flagged in Prometheus {:.1} s after the leaky programs started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(flagged.len(), 2, "only the two leaky sites: {flagged:?}");
    for (m, _) in &flagged {
        assert!(m["site"].as_str().unwrap().ends_with(&site), "{m}");
        assert_eq!(m["function"], "main.handleRequest", "{m}");
        assert!(m["exe"].as_str().unwrap().ends_with("leaky-default"), "{m}");
    }
    // The leaking site's goroutines are there and growing at about 10 per second.
    for p in &leaky_pids {
        let q = format!(
            "goroscope_site_goroutines_growth_per_second{{pid=\"{p}\",function=\"main.handleRequest\"}}"
        );
        let r = prom.query(&q);
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        assert!(
            (8.0..=12.0).contains(&r[0].1),
            "growth {} per second",
            r[0].1
        );
    }

    // The shipped alert fires for both leaky programs.
    let firing = wait_for(
        "GoroutineLeakSuspected firing for both leaky programs",
        Duration::from_secs(90),
        || {
            let a: Vec<(Value, String)> = prom
                .alerts()
                .into_iter()
                .filter(|(l, s)| {
                    l["alertname"] == "GoroutineLeakSuspected"
                        && s == "firing"
                        && l["pid"] != slow_pid.as_str()
                })
                .collect();
            let pids: Vec<&str> = a.iter().filter_map(|(l, _)| l["pid"].as_str()).collect();
            leaky_pids
                .iter()
                .all(|p| pids.contains(&p.as_str()))
                .then_some(a)
        },
    );
    for (l, _) in &firing {
        assert!(l["site"].as_str().unwrap().ends_with(&site), "{l}");
    }

    // The healthy programs were scraped the whole time and never flagged nor alerted.
    let healthy_re = healthy_pids.join("|");
    let window = format!("{}s", started.elapsed().as_secs() + 5);
    let never = prom.query(&format!(
        "max_over_time(goroscope_site_leak_suspected{{pid=~\"{healthy_re}\"}}[{window}])"
    ));
    assert!(never.len() >= 2 * 8, "healthy sites scraped: {never:?}");
    let flagged_healthy: Vec<_> = never.iter().filter(|(_, v)| *v != 0.0).collect();
    assert!(
        flagged_healthy.is_empty(),
        "false alarms: {flagged_healthy:?}"
    );
    let healthy_alerts: Vec<_> = prom
        .alerts()
        .into_iter()
        .filter(|(l, _)| {
            l["pid"]
                .as_str()
                .is_some_and(|p| healthy_pids.iter().any(|h| h == p))
        })
        .collect();
    assert!(
        healthy_alerts.is_empty(),
        "alerts for healthy programs: {healthy_alerts:?}"
    );
    // Their long-lived goroutines are there: 8 pool workers and their feeder, 50 keep-alive
    // connections (server conn + client read and write loops each), Serve, the ticker, the
    // burst loop and main: 163 at least.
    for p in &healthy_pids {
        let r = prom.query(&format!("goroscope_process_goroutines{{pid=\"{p}\"}}"));
        assert!(r[0].1 >= 163.0, "healthy {p}: {r:?}");
    }
    // No agent alert either.
    let agent_alerts: Vec<_> = prom
        .alerts()
        .into_iter()
        .filter(|(l, _)| {
            l["alertname"]
                .as_str()
                .is_some_and(|n| n.starts_with("Goroscope"))
        })
        .collect();
    assert!(agent_alerts.is_empty(), "{agent_alerts:?}");

    // The slow leaks of the compressed agent: suspected on its 10-minute scale (30 s here),
    // in Prometheus with their scale, and both alerts fire naming it.
    let info = wait_for(
        "goroscope_leak_suspected_info for the slow goroutine and context leaks",
        Duration::from_secs(90),
        || {
            let r = prom.query(&format!(
                "goroscope_leak_suspected_info{{pid=\"{slow_pid}\"}}"
            ));
            (r.len() == 2).then_some(r)
        },
    );
    for (m, _) in &info {
        assert_eq!(m["scale"], "30s", "{m}");
        let want = if m["kind"] == "goroutines" {
            "// leakshapes: slow leak"
        } else {
            "// leakshapes: slow context leak"
        };
        let line = line_of(&fixture_source("leakshapes"), want);
        assert!(
            m["site"]
                .as_str()
                .unwrap()
                .ends_with(&format!("leakshapes/main.go:{line}")),
            "{m}"
        );
    }
    for q in [
        "goroscope_site_leak_suspected",
        "goroscope_context_site_leak_suspected",
    ] {
        let r = prom.query(&format!("{q}{{pid=\"{slow_pid}\"}} == 1"));
        assert_eq!(r.len(), 1, "{q}: {r:?}");
    }
    let slow_alerts = wait_for(
        "GoroutineLeakSuspected and ContextLeak firing for the slow leaks",
        Duration::from_secs(90),
        || {
            let a: Vec<(Value, Value, String)> = prom
                .alerts_annotated()
                .into_iter()
                .filter(|(l, _, s)| l["pid"] == slow_pid.as_str() && s == "firing")
                .collect();
            (a.len() == 2).then_some(a)
        },
    );
    let mut names: Vec<&str> = slow_alerts
        .iter()
        .map(|(l, _, _)| l["alertname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["ContextLeak", "GoroutineLeakSuspected"]);
    let blocks_at = format!(
        "leakshapes/main.go:{}",
        line_of(
            &fixture_source("leakshapes"),
            "// leakshapes: where the slow leak blocks"
        )
    );
    for (l, a, _) in &slow_alerts {
        let d = a["description"].as_str().unwrap();
        assert!(d.contains("Caught on the 30s time scale"), "{l}: {d}");
        if l["alertname"] == "GoroutineLeakSuspected" {
            assert!(d.contains("; blocked at main.waitForReply "), "{d}");
            assert!(d.contains(&blocks_at), "{d}");
        }
    }

    for p in leaky.into_iter().chain(healthy).chain([slow]) {
        assert_eq!(p.finish().code(), Some(0));
    }
    assert_eq!(agent.stop().code(), Some(0));
    assert_eq!(compressed.stop().code(), Some(0));
}
