//! What the daemon serves: the latest [`Snapshot`] of every traced process with its leak
//! verdicts, rendered as Prometheus/OpenMetrics text ([`metrics`]) and served over HTTP
//! ([`http`]).
//!
//! Scrapes never touch the kernel or the traced processes: the daemon refreshes the
//! snapshot every interval and a scrape only renders the latest one.

pub mod http;
pub mod metrics;

use std::collections::HashMap;

use serde::Serialize;

use crate::leak::{Suspicion, Verdict};
pub use crate::probe::MapFill;
use crate::tracker::{ProcessTable, SiteView};

/// One configured target and whether its probes are attached.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub attached: bool,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// One traced process: its goroutine table and the verdict on each site (by gopc).
#[derive(Debug, Clone)]
pub struct ProcessReport {
    pub table: ProcessTable,
    pub verdicts: HashMap<u64, Verdict>,
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
}

impl Snapshot {
    /// Ready once every target has its probes attached and a refresh has been taken.
    pub fn ready(&self) -> bool {
        self.refreshed_at_unix > 0.0 && self.targets.iter().all(|t| t.attached)
    }
}
