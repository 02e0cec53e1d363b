//! Context tracking on a real Go program modelled on real failures (fixture `contexts`):
//! for each way a cancel func gets lost, the exact creation site (`function file:line`)
//! and counts; lost cancels (creating goroutine gone); goroutines blocked on the done
//! channel of a context nobody cancels; a long-lived parent accumulating children; and a
//! healthy path where everything is cancelled. Go 1.21, 1.24, 1.27 × default, stripped,
//! PIE builds, in the default mode (one probe per context, cancellations read from
//! memory) and, for Go 1.27, with the cancel probe; contexts garbage collected and their
//! memory reused between two refreshes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use goroscope::model::{ContextSiteView, ProcessTable};
use goroscope::session::{ContextMode, Session, Target};
use goroscope_common::Loss;
use goroscope_common::DEFAULT_MAX_LIVE;
use integration_tests::{
    bpf_allowed, fixture, fixture_source, goroscope_bin, line_of, wait_for, Churn,
};

fn ctx_site<'a>(t: &'a ProcessTable, marker: &str) -> &'a ContextSiteView {
    let line = line_of(&fixture_source("contexts"), marker);
    let found: Vec<&ContextSiteView> = t
        .contexts
        .iter()
        .filter(|c| c.file.ends_with("tests/fixtures/go/contexts/main.go") && c.line == line)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "context site at line {line} in {:#?}",
        t.contexts
    );
    found[0]
}

/// `(created, cancelled, uncancelled, lost_cancel, waiting goroutines)`.
fn counts(c: &ContextSiteView) -> (u64, u64, u64, u64, u64) {
    (
        c.created,
        c.cancelled,
        c.uncancelled,
        c.lost_cancel,
        c.waiting_goroutines,
    )
}

/// Every context scenario of one fixture process, in the order the fixture runs them (one
/// process and one session, which take seconds to start): hence its length.
fn scenarios(minor: u32, variant: &str) {
    scenarios_in(minor, variant, ContextMode::Created);
}

fn scenarios_in(minor: u32, variant: &str, mode: ContextMode) {
    let what = format!("Go 1.{minor} {variant} {mode:?}");
    let f = fixture(minor, "contexts", variant);
    let mut p = Churn::start(&f.path);
    let mut s = Session::attach_with(Target::Pid(p.pid), DEFAULT_MAX_LIVE, mode).expect("attach");
    for (cmd, n) in [
        ("dropped", 100),
        ("early", 50),
        ("retry", 7),
        ("background", 3),
        ("healthy", 20),
        ("children", 1000),
        ("inlined", 4),
    ] {
        assert_eq!(p.cmd(&format!("{cmd} {n}")), format!("{cmd} {n}"), "{what}");
    }
    let t = wait_for(
        "all 3 background waiters blocked",
        Duration::from_secs(20),
        || {
            let t = s.refresh().unwrap().remove(0);
            (ctx_site(&t, "// contexts: background").waiting_goroutines == 3).then_some(t)
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
            c.lost.get(Loss::ContextMapFull),
            c.lost.get(Loss::ContextSiteMapFull)
        ),
        (0, 0),
        "{what}"
    );

    // Cancel dropped with `_` in a loop, on a goroutine that is still alive.
    let d = ctx_site(&t, "// contexts: dropped cancel");
    assert_eq!(d.function, "main.dropped", "{what}");
    assert_eq!(counts(d), (100, 0, 100, 0, 0), "{what}");
    // `defer cancel()` skipped by an early return, one goroutine per request: lost.
    let e = ctx_site(&t, "// contexts: early return");
    assert_eq!(e.function, "main.handle", "{what}");
    assert_eq!(counts(e), (50, 0, 50, 50, 0), "{what}");
    // WithTimeout per retry attempt without cancel (through WithTimeout → WithDeadline →
    // WithDeadlineCause: the site is still the user's line).
    let r = ctx_site(&t, "// contexts: retry without cancel");
    assert_eq!(r.function, "main.retry", "{what}");
    assert_eq!(counts(r), (7, 0, 7, 0, 0), "{what}");
    // Goroutines waiting forever on contexts from Background that nobody cancels.
    let b = ctx_site(&t, "// contexts: background");
    assert_eq!(counts(b), (3, 0, 3, 0, 3), "{what}");
    let waiter_line = line_of(&fixture_source("contexts"), "go waitDone(ctx)");
    assert_eq!(b.waiters.len(), 1, "{what}: {:?}", b.waiters);
    let (w, n) = b.waiters.iter().next().unwrap();
    assert!(
        w.starts_with("main.background ")
            && w.ends_with(&format!("contexts/main.go:{waiter_line}")),
        "{what}: {w}"
    );
    assert_eq!(*n, 3);
    // Children of the long-lived parent.
    let ch = ctx_site(&t, "// contexts: children of the long-lived parent");
    assert_eq!(counts(ch), (1000, 0, 1000, 0, 0), "{what}");
    // Created in a helper the compiler inlined: named after the helper, not its caller.
    let i = ctx_site(&t, "// contexts: inlined helper");
    assert_eq!(i.function, "main.withHourTimeout", "{what}");
    assert_eq!(counts(i), (4, 0, 4, 0, 0), "{what}");
    // Healthy: everything cancelled, nothing left.
    for marker in [
        "// contexts: healthy cancel",
        "// contexts: healthy timeout",
    ] {
        let h = ctx_site(&t, marker);
        assert_eq!(counts(h), (20, 20, 0, 0, 0), "{what} {marker}");
    }
    // The long-lived parent holds every uncancelled child but the Background ones.
    let top = &t.context_parents[0];
    assert_eq!(top.uncancelled_children, 100 + 50 + 7 + 1000 + 4, "{what}");
    assert!(
        top.children_site.starts_with("main.children "),
        "{what}: {top:?}"
    );
    // Its `children` map, read from the process (hmap before Go 1.24, Swiss table after).
    assert_eq!(top.children_map_len, Some(1161), "{what}");

    assert_eq!(p.finish().code(), Some(0), "{what}");
}

/// Go 1.19: `propagateCancel` is a function (the new context in RDI), the probes sit
/// after the stack check (single-stepped: Go 1.19 frames have no `push rbp`).
#[test]
fn contexts_go1_19() {
    if !bpf_allowed("contexts_go1_19") {
        return;
    }
    for variant in ["default", "stripped", "pie"] {
        scenarios(19, variant);
    }
}

#[test]
fn contexts_go1_21() {
    if !bpf_allowed("contexts_go1_21") {
        return;
    }
    for v in ["default", "stripped", "pie"] {
        scenarios(21, v);
    }
}

#[test]
fn contexts_go1_24() {
    if !bpf_allowed("contexts_go1_24") {
        return;
    }
    for v in ["default", "stripped", "pie"] {
        scenarios(24, v);
    }
}

#[test]
fn contexts_go1_27() {
    if !bpf_allowed("contexts_go1_27") {
        return;
    }
    for v in ["default", "stripped", "pie"] {
        scenarios(27, v);
    }
}

/// The same scenarios with a second probe at `(*cancelCtx).cancel`
/// (`context_cancel_probe = true`): the same exact counts.
#[test]
fn contexts_with_cancel_probe_go1_27() {
    if !bpf_allowed("contexts_with_cancel_probe_go1_27") {
        return;
    }
    for v in ["default", "stripped", "pie"] {
        scenarios_in(27, v, ContextMode::CancelProbe);
    }
}

/// Contexts created, cancelled (or not), garbage collected and their memory reused by
/// the next ones, four times between two refreshes: whether the agent reads a context
/// cancelled in memory, finds its memory reused, or the kernel meets its address again
/// in a new context, created = cancelled + uncancelled + collected holds at every site;
/// children of a `*cancelCtx` are all cancelled (held in its children map, they become
/// garbage only once cancelled), children of Background whose cancel was dropped never.
fn reused_memory(minor: u32, mode: ContextMode) {
    let what = format!("Go 1.{minor} {mode:?}");
    let f = fixture(minor, "contexts", "default");
    let mut p = Churn::start(&f.path);
    let mut s = Session::attach_with(Target::Pid(p.pid), DEFAULT_MAX_LIVE, mode).expect("attach");
    // A first refresh with a child of the long-lived parent: the agent learns the
    // process's `chan struct{}` type (the parent's `done`) and tells the kernel.
    assert_eq!(p.cmd("children 1"), "children 1");
    s.refresh().unwrap();
    let n = 300;
    assert_eq!(p.cmd(&format!("reuse {n}")), format!("reuse {n}"));
    let t = s.refresh().unwrap().remove(0);
    let c = t.counters.as_ref().unwrap();
    assert_eq!(c.lost.total(), 0, "{what}: {:?}", c.lost);
    let mut collected = 0;
    for marker in [
        "// contexts: reused held",
        "// contexts: reused child of a short-lived parent",
        "// contexts: reused background cancelled",
        "// contexts: reused background dropped",
    ] {
        let x = ctx_site(&t, marker);
        let got = (x.created, x.cancelled, x.uncancelled, x.collected);
        assert_eq!(x.created, 4 * n, "{what} {marker}: {got:?}");
        assert_eq!(
            x.created,
            x.cancelled + x.uncancelled + x.collected,
            "{what} {marker}: {got:?}"
        );
        // KNOWN LIMIT (one-probe mode, see README "One probe per context", garbage that
        // still looks like a live context): rarely (about one run in fifteen) one of a
        // site's 1,200 contexts is read uncancelled at the end — collected, its memory
        // partly reused (parent words left, `err` overwritten). Under a holder parent the
        // agent now sees through it; under `Background` nothing tells. At most `slack` per
        // site is allowed; with the cancel probe, none.
        let slack = if mode == ContextMode::CancelProbe {
            0
        } else {
            2
        };
        match marker {
            // Held: cancelled, whether seen so, found gone, or met again at its address;
            // the child of a short-lived parent even when that parent is gone too (its
            // type, `*cancelCtx`, holds children).
            "// contexts: reused held" | "// contexts: reused child of a short-lived parent" => {
                assert!(
                    x.cancelled + slack >= 4 * n && x.collected == 0,
                    "{what} {marker}: {got:?}"
                );
                assert!(x.mean_lifetime_seconds.is_some(), "{what}");
            }
            "// contexts: reused background cancelled" => {
                // Cancelled, then collected: seen cancelled while its memory was intact,
                // collected (cancelled or not: nothing held it) once reused.
                assert!(x.uncancelled <= slack, "{what} {marker}: {got:?}");
                if mode == ContextMode::CancelProbe {
                    assert_eq!(got, (4 * n, 4 * n, 0, 0), "{what} {marker}");
                }
                collected += x.collected;
            }
            _ => {
                assert!(x.cancelled <= slack, "{what} {marker}: {got:?}");
                collected += x.collected;
            }
        }
    }
    // The collections did reuse memory before the refresh.
    assert!(collected > 0, "{what}: nothing collected");
    let again = s.refresh().unwrap().remove(0);
    for marker in [
        "// contexts: reused held",
        "// contexts: reused child of a short-lived parent",
        "// contexts: reused background cancelled",
    ] {
        let (a, b) = (ctx_site(&t, marker), ctx_site(&again, marker));
        assert_eq!(
            (b.created, b.cancelled, b.collected),
            (a.created, a.cancelled, a.collected),
            "{what} {marker}: counted once"
        );
    }
    assert_eq!(p.finish().code(), Some(0), "{what}");
}

#[test]
fn reused_context_memory() {
    if !bpf_allowed("reused_context_memory") {
        return;
    }
    for minor in [21, 27] {
        reused_memory(minor, ContextMode::Created);
    }
    reused_memory(27, ContextMode::CancelProbe);
}

/// A long-lived parent accumulating 100,000 children: the children map size is read from
/// the process and grows, and every child is tracked.
fn hundred_thousand_children(minor: u32) {
    let what = format!("Go 1.{minor}");
    let f = fixture(minor, "contexts", "default");
    let mut p = Churn::start(&f.path);
    let mut s = Session::attach(Target::Pid(p.pid), DEFAULT_MAX_LIVE).expect("attach");
    // No tracked context has had Done() called: the parent's own `done` (set by
    // propagateCancel) and its type descriptor in the process tell it is a `*cancelCtx`.
    assert_eq!(p.cmd("children 40000"), "children 40000");
    let t = s.refresh().unwrap().remove(0);
    assert_eq!(
        t.context_parents[0].children_map_len,
        Some(40_000),
        "{what}"
    );
    assert_eq!(p.cmd("children 60000"), "children 60000");
    let t = s.refresh().unwrap().remove(0);
    let top = &t.context_parents[0];
    assert_eq!(top.children_map_len, Some(100_000), "{what}: grows");
    // 131,072 slots plus a 65,536-entry overflow map hold them all.
    assert_eq!(
        top.uncancelled_children, 100_000,
        "{what}: every one tracked"
    );
    let c = t.counters.as_ref().unwrap();
    assert_eq!(c.lost.get(Loss::ContextMapFull), 0, "{what}");
    let ch = ctx_site(&t, "// contexts: children of the long-lived parent");
    assert_eq!(ch.created, 100_000, "{what}");
    assert_eq!(p.finish().code(), Some(0), "{what}");
}

#[test]
fn long_lived_parent_accumulates_children() {
    if !bpf_allowed("long_lived_parent_accumulates_children") {
        return;
    }
    for minor in [21, 24, 27] {
        hundred_thousand_children(minor);
    }
}

/// `goroscope snapshot --observe`: the probes attached for a few seconds, then the same
/// context sites and counts as the live table, in the JSON and in the text.
/// (One scenario, step after step: hence its length.)
fn snapshot_observe(minor: u32) {
    let what = format!("Go 1.{minor}");
    let f = fixture(minor, "contexts", "default");
    let mut p = Churn::start(&f.path);
    let pid = p.pid.to_string();

    // Without --observe the snapshot only reads memory and says how to see contexts.
    let plain = Command::new(goroscope_bin())
        .args(["snapshot", "--pid", &pid])
        .output()
        .expect("snapshot");
    assert!(plain.status.success(), "{what}: {plain:?}");
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.contains("# contexts: not seen"), "{what}: {text}");

    let mut child = Command::new(goroscope_bin())
        .args(["snapshot", "--pid", &pid, "--observe", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snapshot --observe");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("stderr line");
    assert_eq!(
        first.trim(),
        format!("goroscope: observing pid {pid} for 4.0s"),
        "{what}"
    );
    for (cmd, n) in [
        ("dropped", 100),
        ("early", 50),
        ("background", 3),
        ("healthy", 20),
    ] {
        assert_eq!(p.cmd(&format!("{cmd} {n}")), format!("{cmd} {n}"), "{what}");
    }
    let out = child.wait_with_output().expect("snapshot output");
    assert!(out.status.success(), "{what}: {out:?}");
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let site = |marker: &str| {
        let line = line_of(&fixture_source("contexts"), marker);
        let found: Vec<&serde_json::Value> = t["contexts"]
            .as_array()
            .expect("contexts")
            .iter()
            .filter(|c| {
                c["line"] == line && c["file"].as_str().unwrap().ends_with("contexts/main.go")
            })
            .collect();
        assert_eq!(found.len(), 1, "{what}: {marker} in {}", t["contexts"]);
        let c = found[0];
        let n = |k: &str| c[k].as_u64().unwrap();
        (
            c["function"].as_str().unwrap().to_string(),
            (
                n("created"),
                n("cancelled"),
                n("uncancelled"),
                n("lost_cancel"),
                n("waiting_goroutines"),
            ),
        )
    };
    assert_eq!(
        site("// contexts: dropped cancel"),
        ("main.dropped".into(), (100, 0, 100, 0, 0)),
        "{what}"
    );
    assert_eq!(
        site("// contexts: early return"),
        ("main.handle".into(), (50, 0, 50, 50, 0)),
        "{what}"
    );
    assert_eq!(
        site("// contexts: background"),
        ("main.background".into(), (3, 0, 3, 0, 3)),
        "{what}"
    );
    for marker in [
        "// contexts: healthy cancel",
        "// contexts: healthy timeout",
    ] {
        assert_eq!(site(marker).1, (20, 20, 0, 0, 0), "{what} {marker}");
    }
    assert_eq!(t["contexts"].as_array().unwrap().len(), 5, "{what}");
    assert_eq!(p.finish().code(), Some(0), "{what}");
}

#[test]
fn snapshot_observe_lists_contexts() {
    if !bpf_allowed("snapshot_observe_lists_contexts") {
        return;
    }
    for minor in [21, 27] {
        snapshot_observe(minor);
    }
}
