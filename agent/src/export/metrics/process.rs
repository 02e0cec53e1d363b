//! Per traced process: who it is, its live goroutines (in all and by state), and the
//! probe events the kernel could not record for it.

use prometheus::proto::MetricFamily;

use super::{family, process_labels};
use crate::export::Snapshot;

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    let processes: Vec<_> = snap
        .processes
        .iter()
        .map(|r| (r.table.pid.to_string(), &r.table))
        .collect();
    out.push(family(
        "goroscope_process_info",
        processes.iter().map(|(pid, t)| {
            let go_version = &t.go_version;
            (process_labels(pid, t, &[("go_version", go_version)]), 1.0)
        }),
    ));
    out.push(family(
        "goroscope_process_goroutines",
        processes
            .iter()
            .map(|(pid, t)| (process_labels(pid, t, &[]), t.live as f64)),
    ));
    out.push(family(
        "goroscope_process_goroutines_untracked",
        processes
            .iter()
            .map(|(pid, t)| (process_labels(pid, t, &[]), t.untracked as f64)),
    ));
    out.push(family(
        "goroscope_process_goroutines_by_state",
        processes.iter().flat_map(|(pid, t)| {
            t.states
                .iter()
                .map(move |(state, n)| (process_labels(pid, t, &[("state", state)]), *n as f64))
        }),
    ));
    out.push(family(
        "goroscope_process_lost_events_total",
        processes.iter().flat_map(|(pid, t)| {
            let lost = t.counters.as_ref().map(|c| c.lost).unwrap_or_default();
            lost.iter().map(move |(reason, n)| {
                (
                    process_labels(pid, t, &[("reason", reason.name())]),
                    n as f64,
                )
            })
        }),
    ));
}
