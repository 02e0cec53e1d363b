use std::collections::HashMap;

use goroscope_common::{Loss, ProcCounters, LIFETIME_BUCKETS};

use super::*;
use crate::detect::leak::Verdict;
use crate::export::{OtherFold, TargetStatus};
use crate::model::{
    bucket_upper_seconds, ContextSiteView, GoroutineView, Lifetime, Losses, MapFill, ParentView,
    ProcessTable, SiteView, Totals,
};

fn render_ok(s: &Snapshot, f: Format) -> String {
    render(s, f, 0.5).unwrap()
}

#[test]
fn negotiation() {
    let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
    assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
    assert_eq!(Format::negotiate(None), Format::Prometheus);
    assert_eq!(
        Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
        Format::Prometheus
    );
}

#[test]
fn empty_snapshot_renders_agent_metrics() {
    let s = Snapshot::default();
    let om = render_ok(&s, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE goroscope_attach_failures counter\n"));
    assert!(om.contains("goroscope_attach_failures_total 0\n"));
    assert!(om.contains("# TYPE goroscope_build info\n"));
    let text = render_ok(&s, Format::Prometheus);
    assert!(text.contains("# TYPE goroscope_attach_failures_total counter\n"));
    assert!(!text.contains("# EOF"));
    // Families without samples keep their HELP and TYPE.
    assert!(text.contains("# TYPE goroscope_site_goroutines gauge\n"));
}

#[test]
fn collector_builds_every_family_of_the_table_in_order() {
    let s = Snapshot::default();
    let c = SnapshotCollector {
        snapshot: &s,
        scrape_seconds: 0.0,
    };
    let names: Vec<_> = c.collect().iter().map(|f| f.name().to_string()).collect();
    let table: Vec<_> = METRICS.iter().map(|m| m.0.to_string()).collect();
    assert_eq!(names, table);
    assert_eq!(c.desc().len(), METRICS.len());
}

/// One process, one site of its own and one folded into `other` (top 1), one context
/// site: the exact text of both formats.
fn small_snapshot() -> Snapshot {
    let mut lifetime = Lifetime {
        count: 3,
        sum_seconds: 0.5,
        buckets: (0..LIFETIME_BUCKETS)
            .map(|b| (bucket_upper_seconds(b), 0))
            .collect(),
    };
    lifetime.buckets[0].1 = 1;
    lifetime.buckets[5].1 = 2;
    let site = |gopc: u64, live: u64| SiteView {
        gopc,
        function: "main.\"work\"".into(),
        file: "/src/main.go".into(),
        line: gopc as u32,
        live,
        waiting: live,
        created: Some(live + 1),
        exited: Some(1),
        oldest_age_seconds: 2.25,
        lifetime: Some(lifetime.clone()),
        ..Default::default()
    };
    let mut lost = ProcCounters::default();
    lost.lost[Loss::LiveMapFull as usize] = 4;
    let table = ProcessTable {
        pid: 42,
        exe: "/srv/a b".into(),
        go_version: "go1.27.3".into(),
        live: 3,
        sites: vec![site(10, 2), site(11, 1)],
        goroutines: vec![GoroutineView {
            goid: 1,
            parent_goid: 0,
            state: "chan receive".into(),
            created_at: String::new(),
            start_function: String::new(),
            age_seconds: 1.0,
            age_is_lower_bound: false,
            waiting: true,
        }],
        counters: Some(Totals {
            created: 3,
            exited: 2,
            lost: Losses(lost),
        }),
        contexts: vec![ContextSiteView {
            pc: 5,
            function: "main.serve".into(),
            file: "/src/ctx.go".into(),
            line: 7,
            created: 3,
            cancelled: 1,
            uncancelled: 2,
            oldest_uncancelled_age_seconds: 1.5,
            lost_cancel: 1,
            ..Default::default()
        }],
        context_parents: vec![ParentView {
            parent: 0xc000,
            children_map_len: Some(9),
            parent_site: None,
            uncancelled_children: 2,
            children_site: "main.serve /src/ctx.go:7".into(),
        }],
        ..Default::default()
    };
    Snapshot {
        processes: vec![ProcessReport {
            table,
            verdicts: HashMap::from([(
                10,
                Verdict {
                    suspected: true,
                    growth_per_second: 0.125,
                    ..Default::default()
                },
            )]),
            other: None,
        }],
        targets: vec![TargetStatus {
            target: "pid 42".into(),
            attached: true,
            waiting: false,
            error: None,
        }],
        attach_failures: 0,
        fill: MapFill {
            sites: 0.5,
            ..Default::default()
        },
        refresh_seconds: 0.003,
        refreshed_at_unix: 1795398713.25,
        top_sites: 1,
    }
}

const SMALL_TEXT: &str = include_str!("testdata/small.prom");
const SMALL_OPENMETRICS: &str = include_str!("testdata/small.om");

#[test]
fn small_snapshot_exact_text() {
    let version = env!("CARGO_PKG_VERSION");
    let s = small_snapshot();
    assert_eq!(
        render_ok(&s, Format::Prometheus),
        SMALL_TEXT.replace("VERSION", version)
    );
    assert_eq!(
        render_ok(&s, Format::OpenMetrics),
        SMALL_OPENMETRICS.replace("VERSION", version)
    );
}

/// TEMPORARY: the collector and its encoders write what the hand-written renderer wrote,
/// byte for byte, for varied snapshots.
#[test]
fn same_bytes_as_the_hand_written_renderer() {
    use crate::export::legacy_render as old;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..60 {
        let mut snap = small_snapshot();
        snap.top_sites = next(6) as usize;
        snap.attach_failures = next(3);
        snap.fill.goroutine_slots = next(1000) as f64 / 7.0;
        snap.targets.push(TargetStatus {
            target: "/usr/bin/x\\y".into(),
            attached: false,
            waiting: next(2) == 0,
            error: Some("e".into()),
        });
        let mut fold = OtherFold::default();
        for p in 0..1 + next(3) {
            let mut r = snap.processes[0].clone();
            r.table.pid = 100 + p as u32;
            for g in 0..next(8) {
                let mut s = r.table.sites[0].clone();
                s.gopc = 1000 + g;
                s.line = next(50) as u32;
                s.live = next(20);
                s.created = (next(4) > 0).then(|| next(100));
                s.oldest_age_seconds = next(1000) as f64 / 3.0;
                if next(5) == 0 {
                    s.file.clear();
                }
                if next(3) == 0 {
                    s.lifetime = None;
                }
                r.verdicts.insert(
                    s.gopc,
                    Verdict {
                        suspected: next(4) == 0,
                        growth_per_second: next(100) as f64 / 9.0 - 5.0,
                        ..Default::default()
                    },
                );
                r.table.sites.push(s);
            }
            for c in 0..next(5) {
                let mut x = r.table.contexts[0].clone();
                x.pc = 50 + c;
                x.line = next(30) as u32;
                x.uncancelled = next(9);
                x.created = next(90);
                r.table.contexts.push(x);
            }
            if round % 2 == 0 {
                r.other = Some(fold.update(&r, snap.top_sites));
            }
            snap.processes.push(r);
        }
        for (f, of) in [
            (Format::Prometheus, old::Format::Prometheus),
            (Format::OpenMetrics, old::Format::OpenMetrics),
        ] {
            let new = render(&snap, f, 0.0123).unwrap();
            assert_eq!(new, old::render(&snap, of, 0.0123), "round {round} {f:?}");
        }
    }
}

/// TEMPORARY timing: 20 processes × 105 sites, like `cargo xtask bench scrape`.
#[test]
#[ignore]
fn timing() {
    use crate::export::legacy_render as old;
    use std::time::Instant;
    let mut snap = small_snapshot();
    snap.top_sites = 120;
    let base = snap.processes[0].clone();
    snap.processes.clear();
    for p in 0..20u32 {
        let mut r = base.clone();
        r.table.pid = 1000 + p;
        r.table.exe = "/work/wt-export/target/fixtures/go1.26.6/sites-default".into();
        r.table.contexts.clear();
        r.table.sites = (0..105u64)
            .map(|g| {
                let mut s = base.table.sites[0].clone();
                s.gopc = g;
                s.line = g as u32;
                s.function = format!("main.spawn{g}");
                s.file = "/work/wt-export/tests/fixtures/go/sites/main.go".into();
                s.live = 5;
                s.oldest_age_seconds = 12.345678 + g as f64;
                s
            })
            .collect();
        snap.processes.push(r);
    }
    let time = |what: &str, f: &dyn Fn() -> usize| {
        let mut v: Vec<f64> = (0..30)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        eprintln!("{what}: median {:.2} ms", v[v.len() / 2]);
    };
    let c = SnapshotCollector {
        snapshot: &snap,
        scrape_seconds: 0.0,
    };
    time("collect", &|| c.collect().len());
    let fams = c.collect();
    time("text encode", &|| {
        let mut out = String::new();
        for f in fams.iter().filter(|f| !f.get_metric().is_empty()) {
            TextEncoder::new()
                .encode_utf8(slice::from_ref(f), &mut out)
                .unwrap();
        }
        out.len()
    });
    time("om encode", &|| {
        let mut out = String::new();
        openmetrics::encode(&fams, &mut out);
        out.len()
    });
    time("new text", &|| {
        render(&snap, Format::Prometheus, 0.0).unwrap().len()
    });
    time("old text", &|| {
        old::render(&snap, old::Format::Prometheus, 0.0).len()
    });
    eprintln!(
        "bytes {}",
        render(&snap, Format::Prometheus, 0.0).unwrap().len()
    );
}
