//! Discovery and pod identity: what the last scan of the host saw, whether the container
//! runtime answers, and one `goroscope_pod_info` series per pod with a traced process
//! (carrying the allowlisted pod labels, so they are never on every series).

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;

use super::{family, labels};
use crate::export::Snapshot;

pub(super) fn families(snap: &Snapshot, out: &mut Vec<MetricFamily>) {
    out.push(family(
        "goroscope_discovery_processes",
        snap.discovery.iter().flat_map(|d| {
            [
                ("all", d.processes),
                ("go", d.go_processes),
                ("unreadable", d.unreadable),
                ("traced", d.traced),
                ("excluded", d.excluded),
                ("untraceable", d.untraceable),
                ("waiting_for_pod", d.waiting_for_pod),
            ]
            .map(|(kind, n)| (labels(&[("kind", kind)]), n as f64))
        }),
    ));
    out.push(family(
        "goroscope_discovery_scan_duration_seconds",
        snap.discovery.iter().map(|d| (vec![], d.seconds)),
    ));
    out.push(family(
        "goroscope_cri_connected",
        [(vec![], f64::from(u8::from(snap.cri_connected)))],
    ));
    // One series per pod, whatever the number of its traced processes.
    let mut pods = BTreeMap::new();
    for r in &snap.processes {
        let id = &r.table.identity;
        if !id.pod.is_empty() {
            pods.entry((&id.namespace, &id.pod, &id.pod_uid))
                .or_insert(&id.pod_labels);
        }
    }
    let names: Vec<String> = snap
        .pod_labels
        .iter()
        .map(|l| format!("label_{}", sanitize(l)))
        .collect();
    out.push(family(
        "goroscope_pod_info",
        pods.into_iter().map(|((ns, pod, uid), pod_labels)| {
            let mut pairs = vec![
                ("namespace", ns.as_str()),
                ("pod", pod.as_str()),
                ("pod_uid", uid.as_str()),
            ];
            for (name, key) in names.iter().zip(&snap.pod_labels) {
                pairs.push((name, pod_labels.get(key).map_or("", String::as_str)));
            }
            (labels(&pairs), 1.0)
        }),
    ));
}

/// A Kubernetes label key as a Prometheus label name (as kube-state-metrics does):
/// every character outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
