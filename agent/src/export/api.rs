//! The JSON of `/debug/goroutines`: per traced process, its sites with their leak
//! verdicts, its contexts and its suspected leaks. (Unversioned: a debugging aid; a
//! versioned API for a UI would live here too.)

use serde::Serialize;

use super::ProcessReport;
use crate::detect::leak::{Suspicion, Verdict};
use crate::model::{ContextSiteView, Identity, ParentView, SiteBlocking, SiteView, Totals};

/// A goroutine creation site with the leak model's verdict on it: the site's view with
/// its `function file:line`.
#[derive(Debug, Serialize)]
pub struct DebugSite<'a> {
    pub site: String,
    #[serde(flatten)]
    pub view: &'a SiteView,
    pub leak: Verdict,
    /// Where its blocked goroutines block, grouped by stack (read for suspected sites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocking: Option<&'a SiteBlocking>,
}

/// A context creation site with the leak model's verdict on it.
#[derive(Debug, Serialize)]
pub struct DebugContext<'a> {
    pub site: String,
    #[serde(flatten)]
    pub view: &'a ContextSiteView,
    pub leak: Verdict,
}

/// One traced process: its table without the goroutines, with its sites' verdicts and
/// suspected leaks.
#[derive(Debug, Serialize)]
pub struct DebugProcess<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub go_version: &'a str,
    pub attached_seconds: f64,
    pub live: u64,
    /// Live goroutines beyond the tracking limit (counted, not in `sites`).
    pub untracked: u64,
    /// Container and pod (empty strings on a plain host).
    pub identity: &'a Identity,
    pub counters: Option<&'a Totals>,
    pub inventory_error: Option<&'a str>,
    pub suspected_leaks: Vec<Suspicion>,
    pub sites: Vec<DebugSite<'a>>,
    pub contexts: Vec<DebugContext<'a>>,
    pub context_parents: &'a [ParentView],
}

impl<'a> DebugSite<'a> {
    fn of(view: &'a SiteView, leak: Verdict, blocking: Option<&'a SiteBlocking>) -> DebugSite<'a> {
        DebugSite {
            site: view.location(),
            view,
            leak,
            blocking,
        }
    }
}

impl<'a> DebugProcess<'a> {
    pub fn of(p: &'a ProcessReport) -> DebugProcess<'a> {
        let t = &p.table;
        DebugProcess {
            pid: t.pid,
            exe: &t.exe,
            go_version: &t.go_version,
            attached_seconds: t.attached_seconds,
            live: t.live,
            untracked: t.untracked,
            identity: &t.identity,
            counters: t.counters.as_ref(),
            inventory_error: t.inventory_error.as_deref(),
            suspected_leaks: p.suspicions(),
            sites: t
                .sites
                .iter()
                .map(|s| DebugSite::of(s, p.verdict(s), t.blocking_of(s.gopc)))
                .collect(),
            contexts: t
                .contexts
                .iter()
                .map(|c| DebugContext {
                    site: c.location(),
                    view: c,
                    leak: p.context_verdict(c),
                })
                .collect(),
            context_parents: &t.context_parents,
        }
    }
}
