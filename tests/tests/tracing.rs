//! Live goroutine tracing on real Go programs: exact counts per creation site, exact
//! `file:line`, parents, start functions, states, the attach-time inventory, `--exe`
//! mode, and attach/detach under churn.

use std::process::Command;
use std::time::Duration;

use goroscope::model::{ProcessTable, SiteView};
use goroscope::session::{Session, Target};
use goroscope_common::Loss;
use goroscope_common::DEFAULT_MAX_LIVE;
use integration_tests::{
    bpf_allowed, fixture, fixture_source, goroscope_bin, goroscope_json, line_of, wait_for, Churn,
};

fn site<'a>(t: &'a ProcessTable, fixture: &str, marker: &str) -> &'a SiteView {
    let line = line_of(&fixture_source(fixture), marker);
    let file = format!("tests/fixtures/go/{fixture}/main.go");
    let found: Vec<&SiteView> = t
        .sites
        .iter()
        .filter(|s| s.file.ends_with(&file) && s.line == line)
        .collect();
    assert_eq!(found.len(), 1, "site {file}:{line} in {:#?}", t.sites);
    found[0]
}

fn has_site(t: &ProcessTable, fixture: &str, marker: &str) -> bool {
    let line = line_of(&fixture_source(fixture), marker);
    t.sites
        .iter()
        .any(|s| s.file.ends_with(&format!("{fixture}/main.go")) && s.line == line)
}

const BLOCK: &str = "// blockers: blocking site";
const FINISH: &str = "// blockers: finishing site";

/// K goroutines blocked forever at one `go` statement (7 of them before attach, 5 after)
/// and M = 30 that finish at another.
/// (One scenario against one process, step after step: hence its length.)
fn blockers(minor: u32, variant: &str) {
    let f = fixture(minor, "blockers", variant);
    let what = format!("Go 1.{minor} {variant}");
    let mut p = Churn::start(&f.path);
    let spawner: u64 = p.ready.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(p.cmd("block 7"), "blocked 7");

    let mut s = Session::attach(Target::Pid(p.pid), DEFAULT_MAX_LIVE).expect("attach");
    assert_eq!(p.cmd("block 5"), "blocked 5");
    assert_eq!(p.cmd("finish 30"), "finished 30");
    let t = wait_for(
        "30 exits at the finishing site",
        Duration::from_secs(20),
        || {
            let mut tables = s.refresh().unwrap();
            assert_eq!(tables.len(), 1);
            let t = tables.remove(0);
            (has_site(&t, "blockers", FINISH) && site(&t, "blockers", FINISH).exited == Some(30))
                .then_some(t)
        },
    );
    assert!(
        t.inventory_error.is_none(),
        "{what}: {:?}",
        t.inventory_error
    );
    let c = t.counters.as_ref().unwrap();
    assert_eq!(
        (
            c.lost.get(Loss::ReadError),
            c.lost.get(Loss::LiveMapFull),
            c.lost.get(Loss::SiteMapFull)
        ),
        (0, 0, 0),
        "{what}"
    );

    let b = site(&t, "blockers", BLOCK);
    assert_eq!(b.live, 12, "{what}");
    assert_eq!(b.created, Some(5), "{what}: created while attached");
    assert_eq!(b.exited, Some(0), "{what}");
    assert_eq!(b.function, "main.spawner", "{what}");
    assert_eq!(b.start_function, "main.blockForever", "{what}");
    assert_eq!(
        b.states.get("chan receive"),
        Some(&12),
        "{what}: {:?}",
        b.states
    );
    assert_eq!(b.dominant_state, "chan receive");
    let at = format!(
        "main.spawner {}:{}",
        b.file,
        line_of(&fixture_source("blockers"), BLOCK)
    );
    let blocked: Vec<_> = t.goroutines.iter().filter(|g| g.created_at == at).collect();
    assert_eq!(blocked.len(), 12, "{what}");
    // Go 1.19 and 1.20 have no `parentGoid`: unknown (0), never a wrong one.
    let parent = if minor >= 21 { spawner } else { 0 };
    assert!(
        blocked.iter().all(|g| g.parent_goid == parent),
        "{what}: parents"
    );
    assert!(blocked
        .iter()
        .all(|g| g.start_function == "main.blockForever"));
    // 7 existed before attach (age is a lower bound), 5 were seen being created.
    assert_eq!(
        blocked.iter().filter(|g| g.age_is_lower_bound).count(),
        7,
        "{what}"
    );

    let fin = site(&t, "blockers", FINISH);
    assert_eq!(
        (fin.live, fin.created, fin.exited),
        (0, Some(30), Some(30)),
        "{what}"
    );
    assert_eq!(fin.start_function, "", "{what}: no live goroutine there");
    let lt = fin.lifetime.as_ref().unwrap();
    assert_eq!(lt.count, 30);
    assert_eq!(lt.buckets.iter().map(|(_, n)| n).sum::<u64>(), 30);

    // The same answer from the inventory alone, through the CLI.
    let j = goroscope_json(&["snapshot", "--pid", &p.pid.to_string()]);
    let line = line_of(&fixture_source("blockers"), BLOCK);
    let snap = j["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["line"] == line && s["function"] == "main.spawner")
        .expect("blocking site in snapshot");
    assert_eq!(snap["live"], 12);
    assert_eq!(snap["states"]["chan receive"], 12);

    drop(s);
    assert!(p.finish().success());
}

#[test]
fn blockers_go1_21() {
    if bpf_allowed("blockers_go1_21") {
        blockers(21, "default");
    }
}

#[test]
fn blockers_go1_24() {
    if bpf_allowed("blockers_go1_24") {
        blockers(24, "default");
    }
}

#[test]
fn blockers_go1_27() {
    if bpf_allowed("blockers_go1_27") {
        blockers(27, "default");
    }
}

#[test]
fn blockers_go1_27_stripped() {
    if bpf_allowed("blockers_go1_27_stripped") {
        blockers(27, "stripped");
    }
}

#[test]
fn blockers_go1_27_pie() {
    if bpf_allowed("blockers_go1_27_pie") {
        blockers(27, "pie");
    }
}

#[test]
fn blockers_go1_21_pie_stripped_variants() {
    if bpf_allowed("blockers_go1_21_pie_stripped_variants") {
        blockers(21, "pie");
        blockers(21, "stripped");
    }
}

#[test]
fn blockers_go1_19() {
    if bpf_allowed("blockers_go1_19") {
        blockers(19, "default");
    }
}

#[test]
fn blockers_go1_19_pie_stripped_variants() {
    if bpf_allowed("blockers_go1_19_pie_stripped_variants") {
        blockers(19, "pie");
        blockers(19, "stripped");
    }
}

/// Builds by the external linker: PIE (pclntab inside `.data.rel.ro`), static-pie (no
/// relocation for the pclntab's text start: `moduledata.text`), stripped non-PIE.
#[test]
fn blockers_external_linker() {
    if bpf_allowed("blockers_external_linker") {
        blockers(19, "extpie");
        blockers(21, "staticpie");
        blockers(24, "extstripped");
        blockers(27, "extpie");
        blockers(27, "staticpie");
    }
}

/// `--exe`: every process of the binary, those running at attach and those started
/// later, with one set of probes; exited ones are dropped.
#[test]
fn exe_mode_traces_present_and_future_processes() {
    if !bpf_allowed("exe_mode_traces_present_and_future_processes") {
        return;
    }
    let f = fixture(24, "blockers", "pie");
    let mut a = Churn::start(&f.path);
    let mut s = Session::attach(Target::Exe(f.path.clone()), DEFAULT_MAX_LIVE).unwrap();
    let mut b = Churn::start(&f.path);
    assert_eq!(a.cmd("block 3"), "blocked 3");
    assert_eq!(b.cmd("block 4"), "blocked 4");
    assert_eq!(b.cmd("finish 10"), "finished 10");
    let tables = wait_for(
        "both processes with their exits",
        Duration::from_secs(20),
        || {
            let t = s.refresh().unwrap();
            let done = t.len() == 2
                && t.iter().any(|t| {
                    t.pid == b.pid
                        && has_site(t, "blockers", FINISH)
                        && site(t, "blockers", FINISH).exited == Some(10)
                });
            done.then_some(t)
        },
    );
    let ta = tables.iter().find(|t| t.pid == a.pid).unwrap();
    let tb = tables.iter().find(|t| t.pid == b.pid).unwrap();
    assert_eq!(site(ta, "blockers", BLOCK).live, 3);
    assert_eq!(site(ta, "blockers", BLOCK).created, Some(3));
    assert_eq!(site(tb, "blockers", BLOCK).live, 4);
    assert_eq!(site(tb, "blockers", BLOCK).created, Some(4));
    assert!(!has_site(ta, "blockers", FINISH) || site(ta, "blockers", FINISH).created == Some(0));

    assert!(a.finish().success());
    let t = wait_for(
        "the exited process to be dropped",
        Duration::from_secs(10),
        || {
            let t = s.refresh().unwrap();
            (t.len() == 1).then_some(t)
        },
    );
    assert_eq!(t[0].pid, b.pid);
    drop(s);
    assert!(b.finish().success());
}

/// A program under heavy churn, deep recursion and forced GCs, attached and detached 20
/// times, finishes with its own self-check intact.
fn stress(minor: u32) {
    let f = fixture(minor, "stress", "default");
    let p = Churn::start(&f.path);
    for round in 0..20 {
        let mut s = Session::attach(Target::Pid(p.pid), DEFAULT_MAX_LIVE).expect("attach");
        let t = wait_for("a goroutine creation", Duration::from_secs(20), || {
            let t = s.refresh().unwrap().remove(0);
            (t.counters.as_ref().unwrap().created > 0).then_some(t)
        });
        assert!(
            t.inventory_error.is_none(),
            "round {round}: {:?}",
            t.inventory_error
        );
        assert_eq!(
            t.counters.as_ref().unwrap().lost.get(Loss::ReadError),
            0,
            "round {round}"
        );
        assert!(
            has_site(&t, "stress", "// stress: churn site"),
            "round {round}"
        );
        drop(s);
    }
    let (last, status) = p.finish_with();
    assert!(last.starts_with("ok "), "Go 1.{minor}: {last}");
    assert!(status.success());
}

#[test]
fn stress_attach_detach_go1_21() {
    if bpf_allowed("stress_attach_detach_go1_21") {
        stress(21);
    }
}

#[test]
fn stress_attach_detach_go1_27() {
    if bpf_allowed("stress_attach_detach_go1_27") {
        stress(27);
    }
}

#[test]
fn dead_pid_is_a_clear_error() {
    let e = Session::attach(Target::Pid(u32::MAX - 1), DEFAULT_MAX_LIVE)
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no process with pid") || msg.contains("loading the BPF"),
        "{msg}"
    );
    let out = Command::new(goroscope_bin())
        .args(["snapshot", "--pid", "4294967294"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "goroscope: error: no process with pid 4294967294"
    );
}

/// `--exe PATH` also reaches a process that sees a binary at PATH only in its own mount
/// namespace (like a container): the path does not exist here, the probes are attached
/// through the process's `/proc/PID/exe`, and its goroutines are traced exactly.
#[test]
fn exe_target_reaches_processes_in_their_own_mount_namespace() {
    if !bpf_allowed("exe_target_reaches_processes_in_their_own_mount_namespace") {
        return;
    }
    let base = std::env::temp_dir().join(format!("goroscope-mntns-{}", std::process::id()));
    let (image, seen) = (base.join("image"), base.join("seen"));
    std::fs::create_dir_all(&image).unwrap();
    std::fs::create_dir_all(&seen).unwrap();
    std::fs::copy(fixture(27, "blockers", "default").path, image.join("svc")).unwrap();
    let exe_seen = seen.join("svc");
    let mut s = Session::attach(Target::Exe(exe_seen.clone()), DEFAULT_MAX_LIVE).unwrap();
    assert_eq!(s.binaries_attached(), 0);

    let mut p = Churn::start_with(integration_tests::bind_mounted(
        &image,
        &seen,
        &exe_seen,
        &[],
    ));
    assert!(
        !exe_seen.exists(),
        "the bind mount is only in the process's namespace"
    );
    assert_eq!(p.cmd("block 4"), "blocked 4");
    wait_for("the process found", Duration::from_secs(20), || {
        s.refresh()
            .unwrap()
            .into_iter()
            .find(|t| t.pid == p.pid)
            .map(|_| ())
    });
    assert_eq!(s.binaries_attached(), 1);
    // Created after its binary's probes were attached: seen by the creation probe.
    assert_eq!(p.cmd("block 3"), "blocked 3");
    let t = wait_for("7 live, 3 created", Duration::from_secs(20), || {
        let t = s.refresh().unwrap().into_iter().find(|t| t.pid == p.pid)?;
        let b = site(&t, "blockers", BLOCK);
        (b.live == 7 && b.created == Some(3)).then_some(t)
    });
    assert_eq!(site(&t, "blockers", BLOCK).function, "main.spawner");
    drop(s);
    assert!(p.finish().success());
    let _ = std::fs::remove_dir_all(&base);
}
