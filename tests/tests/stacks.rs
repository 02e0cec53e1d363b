//! Where goroutines block, read from outside: `goroscope snapshot --json` on every build
//! of the `blocking` fixture (Go 1.19, 1.21, 1.24, 1.27; default, stripped, PIE) against
//! the program's own SIGQUIT traceback (`GOTRACEBACK=system`): per creation site, the
//! same distinct stacks (function and file:line of every frame, inlined calls included)
//! with the same counts and states, goroutine for goroutine; and the fixture's own
//! answers: the count and blocking line of each site.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::real::{parse_traceback, Goroutine, Target};
use integration_tests::{
    bpf_allowed, builds, fixture_source, goroscope_bin, goroscope_json, line_of,
};
use serde_json::Value;

/// The fixture's blocking kinds: `(marker of the blocking line, its function, line, site
/// marker, site line, goroutines)`. Line numbers are hard-coded (and checked against the
/// markers, so an edit of the fixture fails here first).
const EXPECTED: &[(&str, &str, u32, &str, u32, u64)] = &[
    (
        "// blocking: chan receive",
        "main.recvForever",
        33,
        "// blocking: chan receive site",
        94,
        3,
    ),
    (
        "// blocking: select",
        "main.selectForever",
        38,
        "// blocking: select site",
        97,
        2,
    ),
    (
        "// blocking: mutex",
        "main.lockForever",
        46,
        "// blocking: mutex site",
        100,
        4,
    ),
    (
        "// blocking: waitgroup",
        "main.waitForever",
        52,
        "// blocking: waitgroup site",
        103,
        5,
    ),
    (
        "// blocking: sleep",
        "main.sleepForever",
        57,
        "// blocking: sleep site",
        106,
        6,
    ),
    (
        "// blocking: net read",
        "main.readForever",
        63,
        "// blocking: net read site",
        118,
        2,
    ),
    (
        "// blocking: cond",
        "main.condForever",
        70,
        "// blocking: cond site",
        122,
        3,
    ),
    // The channel receive is in `next`, inlined into `viaHelper`: the blocking line is
    // the helper's, as the traceback shows it.
    (
        "// blocking: inlined helper",
        "main.next",
        76,
        "// blocking: helper site",
        125,
        7,
    ),
];

/// Per creation site (`function file:line`), its stacks (frames as `function
/// file:line`, innermost first) → (goroutines, states).
type Groups = BTreeMap<String, BTreeMap<Vec<String>, (u64, BTreeMap<String, u64>)>>;

/// The main goroutine's site: it has none in a traceback.
const MAIN: &str = "(main goroutine)";

fn frame_names(g: &Goroutine) -> Vec<String> {
    g.frames
        .iter()
        .map(|f| format!("{} {}:{}", f.function, f.file, f.line))
        .collect()
}

/// The traceback's stopped goroutines (those goroscope reads stacks of: blocked or in a
/// system call), grouped like goroscope groups them.
fn oracle_groups(gs: &[Goroutine]) -> Groups {
    let mut out = Groups::new();
    for g in gs.iter().filter(|g| g.goid != 0) {
        if matches!(g.state.as_str(), "running" | "runnable") {
            continue;
        }
        let site = match &g.created_by {
            Some(c) => c.site(),
            None if g.goid == 1 => MAIN.to_string(),
            None => panic!("goroutine {} has no creator: {g:?}", g.goid),
        };
        let e = out
            .entry(site)
            .or_default()
            .entry(frame_names(g))
            .or_default();
        e.0 += 1;
        *e.1.entry(g.state.clone()).or_default() += 1;
    }
    out
}

/// goroscope's groups from `snapshot --json`.
fn goroscope_groups(j: &Value) -> Groups {
    let mut out = Groups::new();
    let sites = j["sites"].as_array().expect("sites");
    for b in j["blocking"].as_array().expect("blocking") {
        let gopc = &b["gopc"];
        let site = sites.iter().find(|s| &s["gopc"] == gopc).expect("site");
        let name = if site["start_function"] == "runtime.main" {
            MAIN.to_string()
        } else {
            b["site"].as_str().unwrap().to_string()
        };
        assert_eq!(b["other_stacks"], 0, "{name}: more than 10 stacks");
        assert_eq!(b["unread"], 0, "{name}: stacks not read");
        for st in b["stacks"].as_array().unwrap() {
            assert_eq!(st["truncated"], false, "{name}");
            let frames: Vec<String> = st["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            let states: BTreeMap<String, u64> =
                serde_json::from_value(st["states"].clone()).unwrap();
            let prev = out
                .entry(name.clone())
                .or_default()
                .insert(frames, (st["count"].as_u64().unwrap(), states));
            assert!(prev.is_none(), "{name}: one stack in two groups");
        }
    }
    out
}

/// Each difference between the two, readable.
fn diff(oracle: &Groups, goroscope: &Groups) -> String {
    let mut out = String::new();
    let keys: std::collections::BTreeSet<&String> = oracle.keys().chain(goroscope.keys()).collect();
    for k in keys {
        let (o, g) = (oracle.get(k), goroscope.get(k));
        if o == g {
            continue;
        }
        out.push_str(&format!(
            "site {k}:\n  traceback: {o:#?}\n  goroscope: {g:#?}\n"
        ));
    }
    out
}

#[test]
fn blocking_stacks_match_the_programs_own_traceback() {
    if !bpf_allowed("blocking_stacks_match_the_programs_own_traceback") {
        return;
    }
    let source = fixture_source("blocking");
    for (marker, _, line, site_marker, site_line, _) in EXPECTED {
        assert_eq!(line_of(&source, marker), *line, "{marker}");
        assert_eq!(line_of(&source, site_marker), *site_line, "{site_marker}");
    }
    let all = builds("blocking");
    assert_eq!(
        all.len(),
        4 * 3,
        "Go 1.19, 1.21, 1.24, 1.27 x default, stripped, PIE: run `cargo xtask fixtures`"
    );
    for f in all {
        let what = format!("Go {} {}", f.go, f.variant);
        let (mut t, _out) = Target::start_fixture(&what, &f.path, "stacks-blocking");
        // Two snapshots that agree: nothing is moving (the runtime's own goroutines
        // included), so the traceback taken next sees the same.
        let snapshot = || goroscope_json(&["snapshot", "--pid", &t.pid.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut prev = snapshot();
        let j = loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = snapshot();
            if goroscope_groups(&now) == goroscope_groups(&prev) {
                break now;
            }
            assert!(Instant::now() < deadline, "{what}: stacks keep moving");
            prev = now;
        };
        if f.variant == "default" {
            check_top(&what, t.pid);
        }
        t.assert_alive("after goroscope's snapshots");
        let oracle = oracle_groups(&parse_traceback(&t.sigquit()));
        let ours = goroscope_groups(&j);
        assert!(
            oracle == ours,
            "{what}: stacks differ from the traceback:\n{}",
            diff(&oracle, &ours)
        );

        // The fixture's own answers.
        let file = source.display().to_string();
        for (marker, function, line, _, site_line, count) in EXPECTED {
            let site = format!("main.main {file}:{site_line}");
            let b = j["blocking"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["site"] == site.as_str())
                .unwrap_or_else(|| panic!("{what}: no stacks for {marker} at {site}"));
            let stacks = b["stacks"].as_array().unwrap();
            assert_eq!(stacks.len(), 1, "{what} {marker}: one stack: {b:#}");
            assert_eq!(stacks[0]["count"].as_u64(), Some(*count), "{what} {marker}");
            assert_eq!(b["read"].as_u64(), Some(*count), "{what} {marker}");
            assert_eq!(
                stacks[0]["blocked_at"],
                format!("{function} {file}:{line}"),
                "{what} {marker}"
            );
            let goids = stacks[0]["sample_goids"].as_array().unwrap().len() as u64;
            assert_eq!(goids, (*count).min(5), "{what} {marker}");
        }
        // The main goroutine reads its stdin in a system call, under bufio.
        let main = &ours[MAIN];
        assert_eq!(main.len(), 1, "{what}: {main:?}");
        assert_eq!(
            main.values().next().unwrap().1.keys().collect::<Vec<_>>(),
            ["syscall"],
            "{what}"
        );
    }
}

/// `goroscope top` (not on a terminal: one frame per refresh): the BLOCKED AT of each
/// site at every refresh, the later ones from the stacks of the sites on screen (and
/// the cache of stacks that did not move).
fn check_top(what: &str, pid: u32) {
    let out = std::process::Command::new(goroscope_bin())
        .args(["top", "--pid", &pid.to_string(), "--interval", "0.3"])
        .args(["--iterations", "3", "--no-contexts"])
        .output()
        .expect("run goroscope top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<&str> = text.split("goroscope top — ").skip(1).collect();
    assert_eq!(frames.len(), 3, "{what}: {text}");
    for frame in frames {
        assert!(frame.contains("BLOCKED AT"), "{what}: {frame}");
        for (marker, function, line, _, site_line, count) in EXPECTED {
            let row = frame
                .lines()
                .find(|l| l.contains(&format!(" main.main main.go:{site_line} ")))
                .unwrap_or_else(|| panic!("{what} {marker}: no row in\n{frame}"));
            assert_eq!(
                row.split_whitespace().next(),
                Some(count.to_string().as_str()),
                "{what} {marker}: {row}"
            );
            assert!(
                row.ends_with(&format!("  {function} main.go:{line}")),
                "{what} {marker}: {row}"
            );
        }
    }
}
