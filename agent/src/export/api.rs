//! The JSON of `/debug/goroutines`: per traced process, its sites with their leak
//! verdicts, its contexts and its suspected leaks. (Unversioned: a debugging aid; a
//! versioned API for a UI would live here too.)

use std::collections::BTreeMap;

use serde::Serialize;

use super::ProcessReport;
use crate::detect::leak::{Suspicion, Verdict};
use crate::model::{ContextSiteView, ParentView, SiteView, Totals};

/// A goroutine creation site with the leak model's verdict on it.
#[derive(Debug, Serialize)]
pub struct DebugSite {
    pub site: String,
    pub function: String,
    pub file: String,
    pub line: u32,
    pub start_function: String,
    pub live: u64,
    pub waiting: u64,
    pub created: Option<u64>,
    pub exited: Option<u64>,
    pub oldest_age_seconds: f64,
    pub oldest_age_is_lower_bound: bool,
    pub states: BTreeMap<String, u64>,
    pub dominant_state: String,
    pub sample_goids: Vec<u64>,
    pub leak: Verdict,
}

/// One traced process.
#[derive(Debug, Serialize)]
pub struct DebugProcess {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub attached_seconds: f64,
    pub live: u64,
    pub counters: Option<Totals>,
    pub inventory_error: Option<String>,
    pub suspected_leaks: Vec<Suspicion>,
    pub sites: Vec<DebugSite>,
    pub contexts: Vec<ContextSiteView>,
    pub context_parents: Vec<ParentView>,
}

impl DebugSite {
    fn of(s: &SiteView, leak: Verdict) -> DebugSite {
        DebugSite {
            site: s.location(),
            function: s.function.clone(),
            file: s.file.clone(),
            line: s.line,
            start_function: s.start_function.clone(),
            live: s.live,
            waiting: s.waiting,
            created: s.created,
            exited: s.exited,
            oldest_age_seconds: s.oldest_age_seconds,
            oldest_age_is_lower_bound: s.oldest_age_is_lower_bound,
            states: s.states.clone(),
            dominant_state: s.dominant_state.clone(),
            sample_goids: s.sample_goids.clone(),
            leak,
        }
    }
}

impl DebugProcess {
    pub fn of(p: &ProcessReport) -> DebugProcess {
        let t = &p.table;
        DebugProcess {
            pid: t.pid,
            exe: t.exe.clone(),
            go_version: t.go_version.clone(),
            attached_seconds: t.attached_seconds,
            live: t.live,
            counters: t.counters.clone(),
            inventory_error: t.inventory_error.clone(),
            suspected_leaks: p.suspicions(),
            sites: t
                .sites
                .iter()
                .map(|s| DebugSite::of(s, p.verdict(s)))
                .collect(),
            contexts: t.contexts.clone(),
            context_parents: t.context_parents.clone(),
        }
    }
}
