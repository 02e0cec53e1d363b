//! What a goroutine "starts in" and which goroutines exist, on builds that make it hard:
//! closures calling inlinable functions, `go obj.Method()` through compiler wrappers
//! (called or inlined), cgo programs whose C threads call back into Go (an extra M
//! keeps a dead goroutine: `_Gdeadextra` in Go 1.27), on every Go version and linker.
//! Exact counts per `go` statement, and the program's own `runtime.NumGoroutine()`.

use integration_tests::{builds, fixture_source, goroscope_json, line_of, Churn};

/// `(live, start function)` of the snapshot's site at `fixture`'s line `marker`.
fn site(j: &serde_json::Value, fixture: &str, marker: &str) -> (u64, String) {
    let line = line_of(&fixture_source(fixture), marker);
    let found: Vec<_> = j["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["line"] == line
                && s["file"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("{fixture}/main.go"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{marker}: {:#}", j["sites"]);
    (
        found[0]["live"].as_u64().unwrap(),
        found[0]["start_function"].as_str().unwrap().to_string(),
    )
}

/// Live goroutines of the snapshot outside the runtime's own, and the main goroutine
/// (started by the runtime, in `runtime.main`): what `runtime.NumGoroutine()` counts.
fn user_goroutines(j: &serde_json::Value) -> u64 {
    j["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["system"] == false || s["start_function"] == "runtime.main")
        .map(|s| s["live"].as_u64().unwrap())
        .sum::<u64>()
}

/// The number after `word` in the fixture's ready line.
fn after(ready: &str, word: &str) -> u64 {
    let w: Vec<&str> = ready.split_whitespace().collect();
    let i = w.iter().position(|x| *x == word).expect(word);
    w[i + 1].parse().unwrap()
}

#[test]
fn start_functions_through_wrappers_and_inlining() {
    let all = builds("starts");
    assert_eq!(all.len(), 5, "Go 1.19, 1.21, 1.22, 1.24, 1.27");
    for f in all {
        let what = format!("Go {} {}", f.go, f.variant);
        let p = Churn::start(&f.path);
        let j = goroscope_json(&["snapshot", "--pid", &p.pid.to_string()]);
        assert_eq!(
            site(&j, "starts", "// starts: closure site"),
            (2, "main.main.func1".to_string()),
            "{what}: a closure is its own start, not the Cond.Wait inlined into it"
        );
        assert_eq!(
            site(&j, "starts", "// starts: method site"),
            (3, "main.(*worker).Run".to_string()),
            "{what}: the wrapper is followed to its call"
        );
        assert_eq!(
            site(&j, "starts", "// starts: inlined method site"),
            (4, "main.(*worker).Small".to_string()),
            "{what}: the call inlined into the wrapper"
        );
        assert_eq!(
            site(&j, "starts", "// starts: function site"),
            (1, "main.block".to_string()),
            "{what}"
        );
        // main + 2 + 3 + 4 + 1.
        assert_eq!(after(&p.ready, "goroutines"), 11, "{what}");
        assert_eq!(user_goroutines(&j), 11, "{what}");
        assert!(p.finish().success(), "{what}");
    }
}

#[test]
fn cgo_callbacks_leave_no_phantom_goroutine() {
    let all = builds("cgocallback");
    assert_eq!(all.len(), 8 * 3, "8 Go versions x 3 external-linker builds");
    for f in all {
        let what = format!("Go {} {}", f.go, f.variant);
        let p = Churn::start(&f.path);
        assert_eq!(
            after(&p.ready, "callbacks"),
            7,
            "{what}: the C thread called Go"
        );
        let j = goroscope_json(&["snapshot", "--pid", &p.pid.to_string()]);
        assert_eq!(
            site(&j, "cgocallback", "// cgocallback: blocking site"),
            (5, "main.blockForever".to_string()),
            "{what}"
        );
        // No site without a creator (a dead-extra goroutine has gopc 0).
        let phantom: Vec<_> = j["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["line"] == 0 || s["function"] == "")
            .collect();
        assert!(phantom.is_empty(), "{what}: {phantom:?}");
        assert_eq!(after(&p.ready, "goroutines"), 6, "{what}: main + 5");
        assert_eq!(user_goroutines(&j), 6, "{what}");
        assert!(p.finish().success(), "{what}");
    }
}

/// The same programs against their own SIGQUIT dump (every goroutine, the runtime's own
/// too): same goroutines per creation site, same start functions, goroutine by goroutine.
/// Go 1.22+ only: a SIGQUIT dump prints every frame, wrappers included, and before 1.22
/// a `go f(x)` wrapper is named like a closure (`main.main.func2`), so the dump cannot
/// tell it from the user's own (Go 1.19 is compared against `debug=2`, which hides
/// wrappers, in `real_binaries.rs`).
#[test]
fn starts_and_cgo_callbacks_match_the_sigquit_dump() {
    use integration_tests::real::{compare, parse_traceback, quiet, Target, View};
    use std::time::Duration;
    let mut all = builds("starts");
    all.extend(
        builds("cgocallback")
            .into_iter()
            .filter(|f| f.variant == "staticpie"),
    );
    for f in all.into_iter().filter(|f| f.line() >= (1, 22)) {
        let what = format!("{} Go {} {}", f.name, f.go, f.variant);
        let (mut t, _out) = Target::start_fixture(&what, &f.path, &format!("sigquit-{}", f.name));
        let (a, b) = quiet(
            &what,
            t.pid,
            Duration::from_millis(200),
            Duration::from_secs(20),
        );
        t.assert_alive("after goroscope's snapshots");
        let oracle = View::of_traceback(&parse_traceback(&t.sigquit()), false);
        let c = compare(&what, &oracle, &a, &b);
        assert!(
            c.state_mismatches.is_empty(),
            "{what}: {:?}",
            c.state_mismatches
        );
    }
}
