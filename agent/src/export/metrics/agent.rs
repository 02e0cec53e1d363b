//! The agent's own families: version, traced processes, configured targets, attach
//! failures, kernel map fill, refresh and scrape times.

use prometheus::proto::MetricFamily;

use super::{family, labels};
use crate::export::{Snapshot, TargetStatus};

pub(super) fn families(snap: &Snapshot, scrape_seconds: f64, out: &mut Vec<MetricFamily>) {
    let one = |name, value| family(name, [(vec![], value)]);
    out.push(family(
        "goroscope_build_info",
        [(labels(&[("version", env!("CARGO_PKG_VERSION"))]), 1.0)],
    ));
    out.push(one(
        "goroscope_traced_processes",
        snap.processes.len() as f64,
    ));
    type Flag = fn(&TargetStatus) -> bool;
    let flags: [(&str, Flag); 2] = [
        ("goroscope_target_attached", |t| t.attached),
        ("goroscope_target_waiting", |t| t.waiting),
    ];
    for (name, flag) in flags {
        out.push(family(
            name,
            snap.targets.iter().map(|t| {
                (
                    labels(&[("target", &t.target)]),
                    f64::from(u8::from(flag(t))),
                )
            }),
        ));
    }
    out.push(one(
        "goroscope_attach_failures_total",
        snap.attach_failures as f64,
    ));
    out.push(family(
        "goroscope_map_fill_ratio",
        snap.fill
            .ratios()
            .into_iter()
            .map(|(map, ratio)| (labels(&[("map", map)]), ratio)),
    ));
    out.push(one(
        "goroscope_refresh_duration_seconds",
        snap.refresh_seconds,
    ));
    out.push(one(
        "goroscope_last_refresh_timestamp_seconds",
        snap.refreshed_at_unix,
    ));
    out.push(one("goroscope_scrape_duration_seconds", scrape_seconds));
}
