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
pub mod source;
pub mod webconfig;
pub mod workbench;

use std::collections::HashMap;

use serde::Serialize;

use crate::detect::leak::{LeakKind, Suspicion, Verdict};
use crate::model::{ContextSiteView, MapFill, ProcessTable, SiteView};

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

/// One traced process: its goroutine table, the verdict on each goroutine site (by gopc)
/// and context site (by pc), and the counters of its `site="other"` series.
#[derive(Debug, Clone, Default)]
pub struct ProcessReport {
    pub table: ProcessTable,
    pub verdicts: HashMap<u64, Verdict>,
    pub context_verdicts: HashMap<u64, Verdict>,
    /// None: `other` counters are the sums of the folded sites (no history).
    pub other: Option<OtherCounters>,
}

impl ProcessReport {
    pub fn verdict(&self, site: &SiteView) -> Verdict {
        self.verdicts.get(&site.gopc).cloned().unwrap_or_default()
    }

    pub fn context_verdict(&self, c: &ContextSiteView) -> Verdict {
        self.context_verdicts
            .get(&c.pc)
            .cloned()
            .unwrap_or_default()
    }

    /// Every suspected goroutine site, then every suspected context site.
    pub fn suspicions(&self) -> Vec<Suspicion> {
        let goroutines = self.table.sites.iter().filter_map(|s| {
            let v = self.verdicts.get(&s.gopc)?;
            v.suspected.then(|| Suspicion {
                kind: LeakKind::Goroutines,
                pid: self.table.pid,
                pc: s.gopc,
                exe: self.table.exe.clone(),
                site: s.location(),
                live: s.live,
                growth_per_minute: v.growth_per_second * 60.0,
                oldest_age_seconds: s.oldest_age_seconds,
                dominant_state: s.dominant_state.clone(),
                scale: v.scale.clone().unwrap_or_default(),
                blocked_at: self.table.blocked_at(s).map(str::to_string),
                proven_leaked: s.leaked,
                lost_cancel: None,
                waiting_goroutines: None,
                waited_on_by: None,
            })
        });
        let contexts = self.table.contexts.iter().filter_map(|c| {
            let v = self.context_verdicts.get(&c.pc)?;
            v.suspected.then(|| Suspicion {
                kind: LeakKind::Contexts,
                pid: self.table.pid,
                pc: c.pc,
                exe: self.table.exe.clone(),
                site: c.location(),
                live: c.uncancelled,
                growth_per_minute: v.growth_per_second * 60.0,
                oldest_age_seconds: c.oldest_uncancelled_age_seconds,
                dominant_state: "uncancelled".into(),
                scale: v.scale.clone().unwrap_or_default(),
                blocked_at: None,
                proven_leaked: 0,
                lost_cancel: Some(c.lost_cancel),
                waiting_goroutines: Some(c.waiting_goroutines),
                // Where most of the goroutines that wait on them were created.
                waited_on_by: c
                    .waiters
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(site, _)| site.clone()),
            })
        });
        goroutines.chain(contexts).collect()
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
