//! The node budget: goroutines beyond `max_goroutines_per_process` / `_per_node` are
//! counted (`untracked`), never attributed to sites, and the agent's memory does not
//! grow with them.

use std::time::Duration;

use integration_tests::{bpf_allowed, fixture, label, scrape, wait_for, Agent, Churn};

#[test]
fn goroutines_beyond_the_limits_are_counted_not_tracked() {
    if !bpf_allowed("goroutines_beyond_the_limits_are_counted_not_tracked") {
        return;
    }
    let mut x = Churn::start(&fixture(27, "blockers", "default").path);
    let mut y = Churn::start(&fixture(26, "blockers", "default").path);
    assert_eq!(x.cmd("block 300"), "blocked 300");
    assert_eq!(y.cmd("block 300"), "blocked 300");
    let agent = Agent::start(&[
        "--pid",
        &x.pid.to_string(),
        "--pid",
        &y.pid.to_string(),
        "--interval-seconds",
        "1",
        "--max-goroutines-per-process",
        "100",
        "--max-goroutines-per-node",
        "150",
    ]);
    // Targets are refreshed in order: x gets its 100, y what is left of the node's 150.
    for (p, tracked) in [(&x, 100u64), (&y, 50)] {
        let d = wait_for("a refreshed table", Duration::from_secs(30), || {
            let d = agent.get(&format!("/debug/goroutines?pid={}", p.pid));
            (d.status == 200).then(|| d.json())
        });
        let live = d["live"].as_u64().unwrap();
        let untracked = d["untracked"].as_u64().unwrap();
        let in_sites: u64 = d["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["live"].as_u64().unwrap())
            .sum();
        assert!(live >= 300, "pid {}: {live} live", p.pid);
        assert_eq!(in_sites, tracked, "pid {}", p.pid);
        assert_eq!(untracked, live - tracked, "pid {}", p.pid);
        let (_, s) = scrape(&agent);
        let gauge = |name: &str| {
            s.iter()
                .find(|(n, l, _)| n == name && label(l, "pid") == Some(&p.pid.to_string()))
                .map(|x| x.2)
        };
        assert_eq!(gauge("goroscope_process_goroutines"), Some(live as f64));
        assert_eq!(
            gauge("goroscope_process_goroutines_untracked"),
            Some(untracked as f64)
        );
    }
    assert!(agent.stop().success());
    assert!(x.finish().success());
    assert!(y.finish().success());
}
