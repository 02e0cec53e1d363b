//! `goroscope run` on a real Go program: exact per-site metrics, the pinned metric list,
//! both exposition formats (checked by `promtool check metrics`), health, readiness, the
//! debug API, site folding, shutdown, and a target that exits.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    blockers_site_value as site_value, bpf_allowed, fixture, fixture_source, label, line_of,
    scrape as metrics, wait_for, workspace_root, Agent, Churn, Sample,
};

const BLOCK: &str = "// blockers: blocking site";
const FINISH: &str = "// blockers: finishing site";

type Samples = Vec<Sample>;

/// `name type labels` of every family in the Prometheus text output.
fn families(text: &str, samples: &Samples) -> BTreeSet<String> {
    let mut types = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("TYPE line");
            types.insert(n.to_string(), t.to_string());
        }
    }
    let mut out = BTreeSet::new();
    for (name, labels, _) in samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let ty = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE for {name}"));
        let names: Vec<&str> = labels
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "le")
            .collect();
        out.insert(
            format!("{family} {ty} {}", names.join(","))
                .trim_end()
                .to_string(),
        );
    }
    out
}

/// One scenario against one daemon and one fixture, step after step (each step needs the
/// state the previous one left, and starting them costs seconds): hence its length.
#[test]
fn daemon_serves_exact_metrics_and_stops_cleanly() {
    if !bpf_allowed("daemon_serves_exact_metrics_and_stops_cleanly") {
        return;
    }
    let f = fixture(27, "blockers", "default");
    let mut p = Churn::start(&f.path);
    assert_eq!(p.cmd("block 7"), "blocked 7");
    // A second traced process, with contexts.
    let mut cp = Churn::start(&fixture(27, "contexts", "default").path);
    let mut agent = Agent::start(&[
        "--pid",
        &p.pid.to_string(),
        "--pid",
        &cp.pid.to_string(),
        "--interval-seconds",
        "1",
    ]);
    wait_for("/readyz", Duration::from_secs(30), || {
        (agent.get("/readyz").status == 200).then_some(())
    });
    assert_eq!(p.cmd("block 5"), "blocked 5");
    assert_eq!(p.cmd("finish 30"), "finished 30");
    assert_eq!(cp.cmd("early 4"), "early 4");
    assert_eq!(cp.cmd("background 2"), "background 2");
    assert_eq!(cp.cmd("healthy 6"), "healthy 6");
    let pid = p.pid;
    let ctx_value = |s: &Samples, name: &str, marker: &str| -> Option<f64> {
        let suffix = format!(
            "tests/fixtures/go/contexts/main.go:{}",
            line_of(&fixture_source("contexts"), marker)
        );
        s.iter()
            .find(|(n, l, _)| {
                n == name
                    && label(l, "pid") == Some(&cp.pid.to_string())
                    && label(l, "site").is_some_and(|x| x.ends_with(&suffix))
            })
            .map(|x| x.2)
    };
    let (text, samples) = wait_for(
        "12 live at the blocking site",
        Duration::from_secs(30),
        || {
            let (t, s) = metrics(&agent);
            (ctx_value(
                &s,
                "goroscope_context_site_waiting_goroutines",
                "// contexts: background",
            ) == Some(2.0)
                && site_value(&s, "goroscope_site_goroutines", pid, BLOCK, &[]) == Some(12.0)
                && site_value(
                    &s,
                    "goroscope_site_goroutines_exited_total",
                    pid,
                    FINISH,
                    &[],
                ) == Some(30.0))
            .then_some((t, s))
        },
    );

    // Contexts, exactly.
    let early = "// contexts: early return";
    let c = |name: &str, marker: &str| ctx_value(&samples, name, marker);
    assert_eq!(c("goroscope_context_site_created_total", early), Some(4.0));
    assert_eq!(c("goroscope_context_site_uncancelled", early), Some(4.0));
    assert_eq!(c("goroscope_context_site_lost_cancel", early), Some(4.0));
    assert_eq!(
        c("goroscope_context_site_cancelled_total", early),
        Some(0.0)
    );
    let healthy = "// contexts: healthy timeout";
    assert_eq!(
        c("goroscope_context_site_created_total", healthy),
        Some(6.0)
    );
    assert_eq!(
        c("goroscope_context_site_cancelled_total", healthy),
        Some(6.0)
    );
    assert_eq!(c("goroscope_context_site_uncancelled", healthy), Some(0.0));
    assert_eq!(
        c("goroscope_context_children_map_size", early),
        Some(4.0),
        "the long-lived parent holds the 4 lost contexts"
    );

    // Exact per-site numbers.
    let v = |name, marker, extra: &[(&str, &str)]| site_value(&samples, name, pid, marker, extra);
    let spawner = [("function", "main.spawner")];
    assert_eq!(v("goroscope_site_goroutines", BLOCK, &spawner), Some(12.0));
    assert_eq!(
        v("goroscope_site_goroutines_waiting", BLOCK, &[]),
        Some(12.0)
    );
    assert_eq!(
        v("goroscope_site_goroutines_created_total", BLOCK, &[]),
        Some(5.0)
    );
    assert_eq!(
        v("goroscope_site_goroutines_exited_total", BLOCK, &[]),
        Some(0.0)
    );
    assert_eq!(
        v("goroscope_site_goroutines_created_total", FINISH, &[]),
        Some(30.0)
    );
    assert_eq!(v("goroscope_site_goroutines", FINISH, &[]), Some(0.0));
    assert_eq!(
        v(
            "goroscope_site_goroutine_lifetime_seconds_count",
            FINISH,
            &[]
        ),
        Some(30.0)
    );
    assert_eq!(
        v(
            "goroscope_site_goroutine_lifetime_seconds_bucket",
            FINISH,
            &[("le", "+Inf")]
        ),
        Some(30.0)
    );
    assert_eq!(v("goroscope_site_leak_suspected", BLOCK, &[]), Some(0.0));
    let oldest = v("goroscope_site_oldest_goroutine_age_seconds", BLOCK, &[]).unwrap();
    assert!(oldest > 0.0 && oldest < 120.0, "oldest {oldest}");
    let per_pid = |name: &str| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && label(l, "pid") == Some(&pid.to_string()))
            .collect()
    };
    let total = per_pid("goroscope_process_goroutines")[0].2;
    let by_site: f64 = per_pid("goroscope_site_goroutines")
        .iter()
        .map(|s| s.2)
        .sum();
    let by_state: f64 = per_pid("goroscope_process_goroutines_by_state")
        .iter()
        .map(|s| s.2)
        .sum();
    assert_eq!(by_site, total, "sites add up to the process");
    assert_eq!(by_state, total, "states add up to the process");
    let chan = per_pid("goroscope_process_goroutines_by_state")
        .into_iter()
        .find(|s| label(&s.1, "state") == Some("chan receive"))
        .expect("chan receive state")
        .2;
    assert!(chan >= 12.0, "chan receive {chan}");
    let lost: f64 = per_pid("goroscope_process_lost_events_total")
        .iter()
        .map(|s| s.2)
        .sum();
    assert_eq!(lost, 0.0);
    let agent_metric = |name: &str| samples.iter().find(|s| s.0 == name).unwrap().2;
    assert_eq!(agent_metric("goroscope_traced_processes"), 2.0);
    assert_eq!(agent_metric("goroscope_attach_failures_total"), 0.0);

    // The metric list is pinned: renames and new labels are deliberate.
    let pinned_path = workspace_root().join("tests/stable-metrics.txt");
    let pinned: BTreeSet<String> = std::fs::read_to_string(&pinned_path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let got = families(&text, &samples);
    // Families without samples here (pods, discovery: this agent traces pids on a plain
    // host) must still be declared, and nothing undeclared may appear.
    let typed: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let pinned_names: BTreeSet<&str> = pinned.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        typed,
        pinned_names,
        "declared families differ from {}",
        pinned_path.display()
    );
    let sampled: BTreeSet<&str> = got.iter().filter_map(|l| l.split(' ').next()).collect();
    let pinned: BTreeSet<String> = pinned
        .iter()
        .filter(|l| l.split(' ').next().is_some_and(|n| sampled.contains(n)))
        .cloned()
        .collect();
    assert!(
        got == pinned,
        "metric families differ from {}; update it if the change is deliberate. Now:\n{}",
        pinned_path.display(),
        got.iter().cloned().collect::<Vec<_>>().join("\n")
    );

    // promtool lints the Prometheus text format (names, units, _total).
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by `cargo xtask setup`)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Content negotiation.
    let om = integration_tests::http_get(
        &agent.addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .unwrap();
    assert!(om
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(om.body.ends_with("# EOF\n"));
    assert!(om
        .body
        .contains("# TYPE goroscope_site_goroutines_created counter\n"));
    assert!(agent
        .get("/metrics")
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));

    // Health, debug API.
    assert_eq!(agent.get("/healthz").status, 200);
    let d = agent.get(&format!("/debug/goroutines?pid={pid}"));
    assert_eq!(d.status, 200);
    let d = d.json();
    let line = line_of(&fixture_source("blockers"), BLOCK);
    let site = d["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["line"] == line && s["function"] == "main.spawner")
        .expect("blocking site in /debug/goroutines");
    assert_eq!(site["live"], 12);
    assert_eq!(site["start_function"], "main.blockForever");
    assert_eq!(site["dominant_state"], "chan receive");
    assert_eq!(site["sample_goids"].as_array().unwrap().len(), 5);
    assert_eq!(site["leak"]["suspected"], false);
    assert_eq!(d["suspected_leaks"].as_array().unwrap().len(), 0);
    assert_eq!(agent.get("/debug/goroutines?pid=abc").status, 400);
    assert_eq!(agent.get("/debug/goroutines?pid=1").status, 404);
    assert_eq!(
        agent
            .get("/debug/goroutines")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A second agent with --top-sites 1: one site of its own, the rest in "other".
    let folded = Agent::start(&[
        "--pid",
        &pid.to_string(),
        "--interval-seconds",
        "1",
        "--top-sites",
        "1",
    ]);
    let s = wait_for(
        "folded agent's first refresh",
        Duration::from_secs(30),
        || {
            let (_, s) = metrics(&folded);
            site_value(&s, "goroscope_site_goroutines", pid, BLOCK, &[])
                .is_some()
                .then_some(s)
        },
    );
    let sites: Vec<_> = s
        .iter()
        .filter(|(n, _, _)| n == "goroscope_site_goroutines")
        .collect();
    assert_eq!(sites.len(), 2, "{sites:?}");
    assert!(sites.iter().any(|s| label(&s.1, "site") == Some("other")));
    assert!(sites
        .iter()
        .any(|s| label(&s.1, "function") == Some("main.spawner") && s.2 == 12.0));
    assert_eq!(sites.iter().map(|s| s.2).sum::<f64>(), total);
    assert_eq!(folded.stop().code(), Some(0));

    // `--contexts false`: goroutines only; no context probes, no context series.
    let lean = Agent::start(&[
        "--pid",
        &cp.pid.to_string(),
        "--interval-seconds",
        "1",
        "--contexts",
        "false",
    ]);
    // (Logged at attach, before the server listens: `start` has read it.)
    assert!(
        lean.log
            .iter()
            .any(|l| l.contains("contexts not traced: disabled by configuration")),
        "{:?}",
        lean.log
    );
    assert_eq!(cp.cmd("dropped 3"), "dropped 3");
    wait_for(
        "lean agent's first refresh",
        Duration::from_secs(30),
        || {
            let (_, s) = metrics(&lean);
            s.iter()
                .any(|(n, _, _)| n == "goroscope_process_goroutines")
                .then_some(())
        },
    );
    // Two more refreshes (1 s apart), both after the 3 contexts were created.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, s) = metrics(&lean);
    let ctx_series: Vec<_> = s
        .iter()
        .filter(|(n, _, _)| n.starts_with("goroscope_context_"))
        .collect();
    assert!(ctx_series.is_empty(), "{ctx_series:?}");
    assert_eq!(lean.stop().code(), Some(0));

    // The target exits: the agent keeps serving, says it is not attached any more.
    assert_eq!(p.finish().code(), Some(0));
    agent.wait_log("the traced process exited", Duration::from_secs(30));
    let get = |s: &Samples, n: &str| s.iter().find(|x| x.0 == n).unwrap().2;
    let s = wait_for("the exit in /metrics", Duration::from_secs(30), || {
        let (_, s) = metrics(&agent);
        (get(&s, "goroscope_traced_processes") == 1.0).then_some(s)
    });
    let attached = |target: &str| {
        s.iter()
            .find(|(n, l, _)| {
                n == "goroscope_target_attached" && label(l, "target") == Some(target)
            })
            .unwrap()
            .2
    };
    assert_eq!(attached(&format!("pid {pid}")), 0.0);
    assert_eq!(attached(&format!("pid {}", cp.pid)), 1.0);
    assert_eq!(agent.get("/readyz").status, 503);
    assert_eq!(cp.finish().code(), Some(0));

    // SIGTERM: graceful stop, probes detached.
    let pid_agent = agent.pid();
    let status = {
        let mut a = agent;
        // SAFETY: kill(2) on the agent we started, still running (not reaped).
        unsafe { libc::kill(pid_agent as i32, libc::SIGTERM) };
        a.wait_log("stopped", Duration::from_secs(30));
        a.stop()
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn daemon_refuses_a_dead_pid_and_a_taken_port() {
    if !bpf_allowed("daemon_refuses_a_dead_pid_and_a_taken_port") {
        return;
    }
    let bin = integration_tests::goroscope_bin();
    // A pid that no longer exists: a process we started and reaped.
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let out = Command::new(&bin)
        .args(["run", "--pid", &dead.to_string(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot trace pid {dead}")), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let p = Churn::start(&fixture(27, "blockers", "default").path);
    let out = Command::new(&bin)
        .args(["run", "--pid", &p.pid.to_string(), "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(p.finish().code(), Some(0));
}

/// An `exe` target that does not exist yet (a DaemonSet runs on nodes where the service
/// may not): the daemon starts, is ready, reports the target not attached, and attaches
/// when the executable appears; a replaced executable (a deploy) is attached again.
/// One scenario, step after step (appear, then replace): hence its length.
#[test]
fn exe_target_is_attached_when_it_appears_and_again_when_replaced() {
    if !bpf_allowed("exe_target_is_attached_when_it_appears_and_again_when_replaced") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("goroscope-exe-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("svc");
    let exe_s = exe.to_str().unwrap().to_string();
    let mut agent = Agent::start(&["--exe", &exe_s, "--interval-seconds", "1"]);
    assert!(
        agent
            .log
            .iter()
            .any(|l| l.contains("executable not found: its probes are attached when it appears")),
        "{:?}",
        agent.log
    );
    wait_for("/readyz", Duration::from_secs(30), || {
        (agent.get("/readyz").status == 200).then_some(())
    });
    let target = |agent: &Agent, name: &str| {
        let (_, s) = metrics(agent);
        s.iter()
            .find(|(n, l, _)| n == name && label(l, "target") == Some(&exe_s))
            .map(|x| x.2)
    };
    let attached = |agent: &Agent| target(agent, "goroscope_target_attached");
    assert_eq!(attached(&agent), Some(0.0));
    // Waiting, which keeps GoroscopeTargetNotAttached quiet.
    assert_eq!(target(&agent, "goroscope_target_waiting"), Some(1.0));

    // The executable appears and a process of it starts.
    std::fs::copy(fixture(27, "blockers", "default").path, &exe).unwrap();
    let mut p = Churn::start(&exe);
    assert_eq!(p.cmd("block 3"), "blocked 3");
    agent.wait_log(
        "executable appeared or replaced: probes attached",
        Duration::from_secs(30),
    );
    let pid = p.pid;
    wait_for(
        "3 blocked goroutines of the new process",
        Duration::from_secs(30),
        || {
            let (_, s) = metrics(&agent);
            (site_value(&s, "goroscope_site_goroutines", pid, BLOCK, &[]) == Some(3.0))
                .then_some(())
        },
    );
    assert_eq!(attached(&agent), Some(1.0));
    assert_eq!(target(&agent, "goroscope_target_waiting"), Some(0.0));
    assert_eq!(p.finish().code(), Some(0));

    // A new build replaces it (new inode, like a deploy): attached again; its processes
    // are traced, including goroutines created after attach.
    let next = dir.join("svc.new");
    std::fs::copy(fixture(21, "blockers", "default").path, &next).unwrap();
    std::fs::rename(&next, &exe).unwrap();
    agent.wait_log(
        "executable appeared or replaced: probes attached",
        Duration::from_secs(30),
    );
    let mut p2 = Churn::start(&exe);
    assert_eq!(p2.cmd("block 2"), "blocked 2");
    let pid2 = p2.pid;
    wait_for(
        "the new build's process traced",
        Duration::from_secs(30),
        || {
            let (_, s) = metrics(&agent);
            let live = site_value(&s, "goroscope_site_goroutines", pid2, BLOCK, &[]);
            let created = site_value(
                &s,
                "goroscope_site_goroutines_created_total",
                pid2,
                BLOCK,
                &[],
            );
            (live == Some(2.0) && created == Some(2.0)).then_some(())
        },
    );
    assert_eq!(p2.finish().code(), Some(0));
    assert_eq!(agent.stop().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
