//! `goroscope run` with no target: every Go process of the host, found on its own — on
//! the host, in its own PID + mount namespace (a binary the host cannot see at that
//! path), in a real containerd pod (labelled with its namespace, pod and container), and
//! started later — with exact per-site counts; a process that exits is forgotten and its
//! binary's probes detached.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration_tests::containerd::{containerd_allowed, ContainerSpec, Containerd, PodSpec};
use integration_tests::{
    bind_mounted, blockers_site_value, bpf_allowed, fixture, label, scrape, wait_for, Agent, Churn,
    Sample,
};

const BLOCK: &str = "// blockers: blocking site";
const POD_UID: &str = "5c1b2e0a-7d3f-4b8e-9a6c-1d2e3f4a5b6c";

/// Live goroutines at the blockers' blocking site of `pid`, and how many were created
/// there while traced.
fn block_site(s: &[Sample], pid: u32) -> Option<(f64, f64)> {
    Some((
        blockers_site_value(s, "goroscope_site_goroutines", pid, BLOCK, &[])?,
        blockers_site_value(
            s,
            "goroscope_site_goroutines_created_total",
            pid,
            BLOCK,
            &[],
        )?,
    ))
}

/// The host pid of the only child of `pid` (what `unshare --fork` runs).
fn only_child(pid: u32) -> u32 {
    wait_for("the namespaced child", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn run_with_no_target_traces_every_go_process_of_the_host() {
    let test = "run_with_no_target_traces_every_go_process_of_the_host";
    if !bpf_allowed(test) || !containerd_allowed(test) {
        return;
    }
    // A: on the host.
    let mut a = Churn::start(&fixture(27, "blockers", "default").path);
    assert_eq!(a.cmd("block 7"), "blocked 7");

    // B: another binary, in its own PID and mount namespaces, at a path that exists only
    // there.
    let base = std::env::temp_dir().join(format!("goroscope-discovery-{}", std::process::id()));
    let (image, seen) = (base.join("image"), base.join("seen"));
    std::fs::create_dir_all(&image).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::copy(fixture(24, "blockers", "pie").path, image.join("svc")).unwrap();
    let exe_seen: PathBuf = seen.join("svc");
    let mut b = Churn::start_any(bind_mounted(&image, &seen, &exe_seen, &["--pid", "--fork"]));
    let b_pid = only_child(b.pid);
    assert!(
        b.ready.starts_with("ready 1 "),
        "B is pid 1 of its namespace: {}",
        b.ready
    );
    assert!(!exe_seen.exists(), "the path exists only in B's namespace");
    assert_eq!(b.cmd("block 5"), "blocked 5");

    // P: a third binary, in a real containerd pod (its own private containerd; the agent
    // is told where its CRI socket is, as it would find /run/containerd/containerd.sock).
    let ctd = Containerd::start();
    let pod_image = ctd.import_fixture(&fixture(25, "blockers", "default"));
    let pod = ctd.run_pod(&PodSpec::new("shop", "checkout-7d9f", POD_UID).label("app", "checkout"));
    let mut spec = ContainerSpec::new("api", &pod_image);
    spec.env.push(("BLOCKERS_SCRIPT".into(), "block 6".into()));
    let api = ctd.run_container(&pod, &spec);

    // No target: the whole host.
    let socket = ctd.socket.to_str().unwrap().to_string();
    let mut agent = Agent::start(&["--interval-seconds", "1", "--cri-socket", &socket]);
    let pod_labels = [
        ("namespace", "shop"),
        ("pod", "checkout-7d9f"),
        ("container", "api"),
    ];
    let found = wait_for("A, B and the pod traced", Duration::from_secs(40), || {
        let (_, s) = scrape(&agent);
        let in_pod =
            blockers_site_value(&s, "goroscope_site_goroutines", api.pid, BLOCK, &pod_labels);
        (block_site(&s, a.pid)?.0 == 7.0 && block_site(&s, b_pid)?.0 == 5.0 && in_pod? == 6.0)
            .then_some(s)
    });
    assert_eq!(block_site(&found, api.pid), Some((6.0, 0.0)));
    let pod_info: Vec<_> = found
        .iter()
        .filter(|(n, _, _)| n == "goroscope_pod_info")
        .collect();
    assert_eq!(pod_info.len(), 1, "{pod_info:?}");
    assert_eq!(label(&pod_info[0].1, "namespace"), Some("shop"));
    assert_eq!(label(&pod_info[0].1, "pod"), Some("checkout-7d9f"));
    assert_eq!(label(&pod_info[0].1, "pod_uid"), Some(POD_UID));
    let info = |s: &[Sample], pid: u32| {
        s.iter()
            .find(|(n, l, _)| {
                n == "goroscope_process_info" && label(l, "pid") == Some(&pid.to_string())
            })
            .map(|x| x.1.clone())
            .unwrap_or_else(|| panic!("no goroscope_process_info for pid {pid}"))
    };
    assert_eq!(label(&info(&found, a.pid), "go_version"), Some("go1.27.3"));
    let p_info = info(&found, api.pid);
    assert_eq!(label(&p_info, "exe"), Some("/app/blockers"));
    assert_eq!(label(&p_info, "container"), Some("api"));
    let b_info = info(&found, b_pid);
    assert_eq!(label(&b_info, "exe"), Some(exe_seen.to_str().unwrap()));
    assert!(label(&b_info, "go_version").is_some_and(|v| v.starts_with("go1.24")));
    for pid in [a.pid, b_pid] {
        assert_eq!(label(&info(&found, pid), "namespace"), Some(""));
        assert_eq!(label(&info(&found, pid), "pod"), Some(""));
    }
    assert!(
        found.iter().all(|(n, l, _)| n != "goroscope_process_info"
            || label(l, "pid") != Some(&agent.pid().to_string())),
        "goroscope never traces itself"
    );

    // Created while traced: counted exactly, per process.
    assert_eq!(a.cmd("block 3"), "blocked 3");
    assert_eq!(b.cmd("block 2"), "blocked 2");
    wait_for("10/3 and 7/2", Duration::from_secs(20), || {
        let (_, s) = scrape(&agent);
        (block_site(&s, a.pid)? == (10.0, 3.0) && block_site(&s, b_pid)? == (7.0, 2.0))
            .then_some(())
    });

    // C: a third binary started 10 s later is picked up (the minimum process age, 5 s,
    // plus up to one refresh).
    std::thread::sleep(Duration::from_secs(10));
    let t0 = Instant::now();
    let mut c = Churn::start(&fixture(21, "blockers", "stripped").path);
    assert_eq!(c.cmd("block 4"), "blocked 4");
    wait_for("C traced", Duration::from_secs(30), || {
        let (_, s) = scrape(&agent);
        (block_site(&s, c.pid)?.0 == 4.0).then_some(())
    });
    eprintln!(
        "discovery latency of a new process: {:.1} s (minimum process age 5 s, refresh 1 s)",
        t0.elapsed().as_secs_f64()
    );

    // B exits: forgotten, and its binary (no other process runs it) loses its probes.
    assert!(b.finish().success());
    agent.wait_log("last process of the binary exited", Duration::from_secs(20));
    let s = wait_for("B's series gone", Duration::from_secs(10), || {
        let (_, s) = scrape(&agent);
        s.iter()
            .all(|(_, l, _)| label(l, "pid") != Some(&b_pid.to_string()))
            .then_some(s)
    });
    assert_eq!(block_site(&s, a.pid), Some((10.0, 3.0)));
    assert_eq!(block_site(&s, c.pid).map(|x| x.0), Some(4.0));
    assert_eq!(block_site(&s, api.pid), Some((6.0, 0.0)));
    let kind = |k: &str| {
        s.iter()
            .find(|(n, l, _)| n == "goroscope_discovery_processes" && label(l, "kind") == Some(k))
            .map(|x| x.2)
    };
    assert!(
        kind("traced").is_some_and(|n| n >= 2.0),
        "{:?}",
        kind("traced")
    );
    assert_eq!(agent.get("/readyz").status, 200);

    assert!(agent.stop().success());
    assert!(a.finish().success());
    assert!(c.finish().success());
    let _ = std::fs::remove_dir_all(&base);
}
