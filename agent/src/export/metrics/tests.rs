use std::collections::HashMap;

use goroscope_common::{Loss, ProcCounters, LIFETIME_BUCKETS};

use super::*;
use crate::detect::leak::Verdict;
use crate::export::TargetStatus;
use crate::model::{
    bucket_upper_seconds, ContextSiteView, Identity, Lifetime, Losses, MapFill, ParentView,
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

/// A process with two goroutine sites (sharing a lifetime histogram), one goroutine,
/// lost events, and one context site whose parent holds 9 children.
fn small_table() -> ProcessTable {
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
    ProcessTable {
        pid: 42,
        exe: "/srv/a b".into(),
        go_version: "go1.27.3".into(),
        live: 3,
        sites: vec![site(10, 2), site(11, 1)],
        states: [("chan receive".to_string(), 1)].into(),
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
        untracked: 1,
        identity: Identity {
            container_id: "c0ffee".into(),
            namespace: "shop".into(),
            pod: "checkout-7d9f".into(),
            container: "api".into(),
            pod_uid: "5c1b2e0a-7d3f-4b8e-9a6c-1d2e3f4a5b6c".into(),
            pod_labels: [("app.kubernetes.io/name".to_string(), "checkout".to_string())].into(),
        },
        ..Default::default()
    }
}

/// One process, one site of its own and one folded into `other` (top 1), one context
/// site: the exact text of both formats.
fn small_snapshot() -> Snapshot {
    Snapshot {
        processes: vec![ProcessReport {
            table: small_table(),
            verdicts: HashMap::from([(
                10,
                Verdict {
                    suspected: true,
                    scale: Some("30s".into()),
                    growth_per_second: 0.125,
                    ..Default::default()
                },
            )]),
            context_verdicts: HashMap::from([(
                5,
                Verdict {
                    suspected: true,
                    scale: Some("10m".into()),
                    growth_per_second: 0.05,
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
        discovery: Some(crate::discover::ScanStats {
            processes: 200,
            go_processes: 50,
            unreadable: 2,
            binaries_examined: 60,
            seconds: 0.0125,
            traced: 40,
            excluded: 6,
            untraceable: 3,
            waiting_for_pod: 1,
        }),
        cri_connected: true,
        pod_labels: vec!["app.kubernetes.io/name".into(), "missing".into()],
    }
}

const SMALL_TEXT: &str = include_str!("testdata/small.prom");
const SMALL_OPENMETRICS: &str = include_str!("testdata/small.om");

#[test]
fn small_snapshot_exact_text() {
    let version = env!("CARGO_PKG_VERSION");
    let s = small_snapshot();
    if std::env::var_os("GOROSCOPE_BLESS").is_some() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/export/metrics/testdata");
        let unversion = |t: String| t.replace(&format!("\"{version}\""), "\"VERSION\"");
        std::fs::write(
            dir.join("small.prom"),
            unversion(render_ok(&s, Format::Prometheus)),
        )
        .unwrap();
        std::fs::write(
            dir.join("small.om"),
            unversion(render_ok(&s, Format::OpenMetrics)),
        )
        .unwrap();
        return;
    }
    assert_eq!(
        render_ok(&s, Format::Prometheus),
        SMALL_TEXT.replace("VERSION", version)
    );
    assert_eq!(
        render_ok(&s, Format::OpenMetrics),
        SMALL_OPENMETRICS.replace("VERSION", version)
    );
}
