//! What the daemon serves: the latest [`Snapshot`] of every traced process with its leak
//! verdicts, as Prometheus/OpenMetrics metrics ([`metrics`]), as JSON ([`api`]), over
//! HTTP ([`http`]).
//!
//! Scrapes never touch the kernel or the traced processes: the daemon refreshes the
//! snapshot every interval and a scrape only encodes the latest one. Per process, only
//! the top sites get their own series; [`fold`] ranks goroutine sites and context sites
//! alike and folds the rest into `site="other"`, whose counters [`OtherFold`] keeps
//! monotonic.

pub mod api;
pub mod fold;
pub mod http;
pub mod metrics;

use std::collections::HashMap;

use serde::Serialize;

use crate::detect::leak::{Suspicion, Verdict};
use crate::model::{MapFill, ProcessTable, SiteView};

pub use fold::{OtherCounters, OtherFold};

/// One configured target and whether its probes are attached.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub attached: bool,
    /// An `exe` target whose file does not exist (yet): probes are attached as soon as it
    /// appears. Not an error: a DaemonSet runs where the service may not.
    pub waiting: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// One traced process: its goroutine table, the verdict on each site (by gopc), and the
/// counters of its `site="other"` series.
#[derive(Debug, Clone, Default)]
pub struct ProcessReport {
    pub table: ProcessTable,
    pub verdicts: HashMap<u64, Verdict>,
    /// None: `other` counters are the sums of the folded sites (no history).
    pub other: Option<OtherCounters>,
}

impl ProcessReport {
    pub fn verdict(&self, site: &SiteView) -> Verdict {
        self.verdicts.get(&site.gopc).cloned().unwrap_or_default()
    }

    pub fn suspicions(&self) -> Vec<Suspicion> {
        self.table
            .sites
            .iter()
            .filter_map(|s| {
                let v = self.verdicts.get(&s.gopc)?;
                v.suspected.then(|| Suspicion {
                    pid: self.table.pid,
                    gopc: s.gopc,
                    exe: self.table.exe.clone(),
                    site: s.location(),
                    live: s.live,
                    growth_per_minute: v.growth_per_second * 60.0,
                    oldest_age_seconds: s.oldest_age_seconds,
                    dominant_wait_reason: s.dominant_state.clone(),
                })
            })
            .collect()
    }
}

/// Everything a scrape or a debug request can see.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessReport>,
    pub targets: Vec<TargetStatus>,
    pub attach_failures: u64,
    pub fill: MapFill,
    /// How long the last refresh took.
    pub refresh_seconds: f64,
    /// Unix time of the last refresh (0 before the first).
    pub refreshed_at_unix: f64,
    /// Sites per process with their own series.
    pub top_sites: usize,
    /// What the last discovery scan saw (None without node discovery).
    pub discovery: Option<crate::discover::ScanStats>,
    /// Whether the container runtime answered (pod identity).
    pub cri_connected: bool,
    /// Pod labels copied into `goroscope_pod_info`.
    pub pod_labels: Vec<String>,
}

impl Snapshot {
    /// Ready once a refresh has been taken and every target has its probes attached (or
    /// is an executable that does not exist yet, which is watched for).
    pub fn ready(&self) -> bool {
        self.refreshed_at_unix > 0.0 && self.targets.iter().all(|t| t.attached || t.waiting)
    }
}
