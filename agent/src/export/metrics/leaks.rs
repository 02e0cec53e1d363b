//! One `goroscope_leak_suspected_info` series per suspected site (goroutines or
//! contexts), carrying what does not fit a gauge: the time scale that caught it and the
//! top frame where its goroutines block. Bounded by the suspected sites, never a series
//! per stack.

use prometheus::proto::MetricFamily;

use super::{family, process_labels};
use crate::export::Snapshot;

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    let mut samples = Vec::new();
    for r in &snap.processes {
        let pid = r.table.pid.to_string();
        let sites = r
            .table
            .sites
            .iter()
            .map(|s| (s.gopc, s.file.as_str(), s.line, s.function.as_str()));
        let contexts = r
            .table
            .contexts
            .iter()
            .map(|c| (c.pc, c.file.as_str(), c.line, c.function.as_str()));
        for s in r.suspicions() {
            let found = match s.kind {
                crate::detect::leak::LeakKind::Goroutines => sites.clone().find(|x| x.0 == s.pc),
                crate::detect::leak::LeakKind::Contexts => contexts.clone().find(|x| x.0 == s.pc),
            };
            let Some((_, file, line, function)) = found else {
                continue;
            };
            let (site, function) = if file.is_empty() {
                ("unknown".to_string(), "unknown")
            } else {
                (format!("{file}:{line}"), function)
            };
            let kind = serde_json::to_value(s.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let blocked_at = s.blocked_at.clone().unwrap_or_default();
            samples.push((
                process_labels(
                    &pid,
                    &r.table,
                    &[
                        ("kind", &kind),
                        ("site", &site),
                        ("function", function),
                        ("scale", &s.scale),
                        ("blocked_at", &blocked_at),
                    ],
                ),
                1.0,
            ));
        }
    }
    out.push(family("goroscope_leak_suspected_info", samples));
}
