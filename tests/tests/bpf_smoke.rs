//! BPF smoke test: attach at the chosen goroutine creation and exit sites of a running
//! fixture and count exactly what the fixture says it did.

use std::num::NonZeroU32;
use std::time::Duration;

use goroscope::gobin::{self, Hook};
use goroscope::probe::{Probes, Program, Scope};
use integration_tests::{bpf_allowed, fixture, wait_for, Churn};

const N: u64 = 5000;

fn smoke(minor: u32, variant: &str) {
    let f = fixture(minor, "churn", variant);
    let bin = gobin::analyze(&f.path).expect("analysis");
    let mut target = Churn::start(&f.path);
    // A second process of the same binary, not traced: its goroutines must not count.
    let mut other = Churn::start(&f.path);

    let mut probes = Probes::load(goroscope_common::DEFAULT_MAX_LIVE).expect("load BPF");
    let pid = NonZeroU32::new(target.pid).unwrap();
    let sites = probes
        .attach(
            &bin,
            &f.path,
            &[Hook::GoroutineCreate, Hook::GoroutineExit],
            Scope::Pid(pid),
            Program::Goroscope,
        )
        .expect("attach");
    assert_eq!(sites.len(), 2);

    let before = probes.totals(target.pid).unwrap();
    assert_eq!(
        (before.created, before.exited),
        (0, 0),
        "nothing happens while idle"
    );

    target.spawn(N);
    other.spawn(N);
    target.spawn(N);
    // `done` is printed once the goroutines have done their work; their exits follow.
    let c = wait_for("exits to be counted", Duration::from_secs(20), || {
        let c = probes.totals(target.pid).unwrap();
        (c.exited >= 2 * N).then_some(c)
    });
    std::thread::sleep(Duration::from_millis(200));
    let c2 = probes.totals(target.pid).unwrap();
    assert_eq!(c, c2, "counts still moving after the fixture went idle");
    let what = format!("Go 1.{minor} {variant}");
    assert_eq!(c.created, 2 * N, "{what}: created");
    assert_eq!(c.exited, 2 * N, "{what}: exited");
    assert_eq!(c.lost.total(), 0, "{what}: lost events");
    assert_eq!(
        probes.totals(other.pid).unwrap().created,
        0,
        "{what}: untraced process counted"
    );

    drop(probes);
    assert!(target.finish().success());
    assert!(other.finish().success());
}

#[test]
fn counts_goroutines_go1_21() {
    if bpf_allowed("counts_goroutines_go1_21") {
        smoke(21, "default");
    }
}

#[test]
fn counts_goroutines_go1_24_pie() {
    if bpf_allowed("counts_goroutines_go1_24_pie") {
        smoke(24, "pie");
    }
}

#[test]
fn counts_goroutines_go1_27_stripped() {
    if bpf_allowed("counts_goroutines_go1_27_stripped") {
        smoke(27, "stripped");
    }
}

#[test]
fn counts_goroutines_go1_27() {
    if bpf_allowed("counts_goroutines_go1_27") {
        smoke(27, "default");
    }
}
