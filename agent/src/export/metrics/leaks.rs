//! One `goroscope_leak_suspected_info` series per suspected site (goroutines or
//! contexts), carrying what does not fit a gauge: the time scale that caught it and the
//! top frame where its goroutines block. Bounded by the suspected sites, never a series
//! per stack.

use prometheus::proto::MetricFamily;

use super::{family, process_labels};
use crate::export::fold::{JudgedContext, JudgedSite, SeriesLabels};
use crate::export::Snapshot;

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    let mut samples = Vec::new();
    for r in &snap.processes {
        let pid = r.table.pid.to_string();
        // (kind, labels, scale, blocked_at) of each suspected site.
        let goroutines = r.table.sites.iter().filter_map(|site| {
            let j = JudgedSite {
                site,
                verdict: r.verdict(site),
            };
            let blocked_at = r.table.blocked_at(site).unwrap_or_default();
            j.verdict.suspected.then(|| {
                let labels = SeriesLabels::of(&j, true);
                ("goroutines", labels, j.verdict.scale, blocked_at)
            })
        });
        let contexts = r.table.contexts.iter().filter_map(|ctx| {
            let j = JudgedContext {
                ctx,
                verdict: r.context_verdict(ctx),
            };
            j.verdict.suspected.then(|| {
                let labels = SeriesLabels::of(&j, true);
                ("contexts", labels, j.verdict.scale, "")
            })
        });
        for (kind, l, scale, blocked_at) in goroutines.chain(contexts) {
            let scale = scale.unwrap_or_default();
            samples.push((
                process_labels(
                    &pid,
                    &r.table,
                    &[
                        ("kind", kind),
                        ("site", &l.site),
                        ("function", &l.function),
                        ("scale", &scale),
                        ("blocked_at", blocked_at),
                    ],
                ),
                1.0,
            ));
        }
    }
    out.push(family("goroscope_leak_suspected_info", samples));
}
