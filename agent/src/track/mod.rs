//! Track: turns the observations of one process ([`crate::intake::Observation`]) into
//! its table ([`ProcessTable`]), keeping what must be remembered between refreshes.
//! Pure: no kernel, no process memory, so it is unit-tested with observations built by
//! hand (`tests.rs`).
//!
//! Sources, merged by goid so nothing is counted twice:
//! - the inventory (`runtime.allgs`, read at every refresh): which goroutines are alive
//!   now and their state; it also covers goroutines that existed before attach;
//! - the kernel's live goroutines: exact creation time of goroutines created while
//!   attached;
//! - the kernel's site statistics: created/exited counts and lifetimes per creation site.

pub mod blocking;
pub mod contexts;
pub mod sites;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use goroscope_common::Loss;

use crate::gobin::{Analysis, SourceLoc};
use crate::intake::goroutines::{self, G, STATUS_LEAKED, STATUS_RUNNABLE, STATUS_WAITING};
use crate::intake::{ContextReads, Observation};
use crate::model::{GoroutineView, ProcessTable};
use crate::process::ProcessId;
use sites::{History, KernelSites, SiteName};

/// What the track stage needs to know about a binary: names of code addresses
/// (link-time) and of wait reasons. [`Analysis`] is the real one; tests bring their own.
pub trait Symbols {
    /// Where the `go` statement whose return address is `pc` is.
    fn call_site(&self, pc: u64) -> Option<SourceLoc>;
    /// The function a goroutine starting at `pc` runs (seen through `go` wrappers).
    fn start_function(&self, pc: u64) -> Option<String>;
    /// The call into package `context` whose return address is `pc`, named after the
    /// first frame outside package `context`.
    fn context_site(&self, pc: u64) -> Option<SourceLoc>;
    /// Names of `g.waitreason` values.
    fn wait_reasons(&self) -> &[String];
    /// The source frames of a stack read from a goroutine (`intake::Stack::pcs`:
    /// where it stopped, then return addresses), innermost first, as the runtime's
    /// traceback names them: each pc at its call (one byte back), inlined calls
    /// expanded. Empty when the binary cannot tell.
    fn stack_frames(&self, pcs: &[u64]) -> Vec<SourceLoc> {
        let _ = pcs;
        Vec::new()
    }
}

impl Symbols for Analysis {
    fn call_site(&self, pc: u64) -> Option<SourceLoc> {
        self.pclntab.call_site(pc)
    }
    fn start_function(&self, pc: u64) -> Option<String> {
        Analysis::start_function(self, pc)
    }
    fn context_site(&self, pc: u64) -> Option<SourceLoc> {
        self.pclntab.call_site_outside(pc, "context.")
    }
    fn wait_reasons(&self) -> &[String] {
        &self.wait_reasons
    }
    fn stack_frames(&self, pcs: &[u64]) -> Vec<SourceLoc> {
        self.pclntab.stack_frames(pcs)
    }
}

/// Who a traced process is, as its table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMeta {
    pub id: ProcessId,
    /// The executable's path as the process sees it.
    pub exe: String,
    pub go_version: String,
}

/// What is remembered about one traced process between refreshes.
pub struct Tracker {
    meta: ProcessMeta,
    attached_ns: u64,
    /// Goroutines not seen being created (they existed before attach, or the kernel
    /// could not record them), with when they were first seen: their age is at least
    /// the time since.
    first_seen: HashMap<u64, u64>,
    history: History,
    sites: SiteCache,
    /// Names of the stacks read from goroutines (see [`blocking`]).
    stack_names: blocking::StackNames,
}

/// Source locations of `go` statements, by link-time gopc, looked up once.
#[derive(Default)]
struct SiteCache(HashMap<u64, Option<SourceLoc>>);

impl SiteCache {
    fn get(&mut self, sym: &dyn Symbols, gopc: u64) -> Option<SourceLoc> {
        self.0
            .entry(gopc)
            .or_insert_with(|| sym.call_site(gopc))
            .clone()
    }
}

impl Tracker {
    /// Starts tracking a process with its attach-time observation (taken right after the
    /// probes were attached, before their records are read): every goroutine alive then
    /// existed before attach, and is stamped as first seen now.
    pub fn new(meta: ProcessMeta, attach: &Observation, sym: &dyn Symbols) -> Tracker {
        let mut t = Tracker {
            meta,
            attached_ns: attach.now_ns,
            first_seen: HashMap::new(),
            history: History::default(),
            sites: SiteCache::default(),
            stack_names: Default::default(),
        };
        let goroutines = t.goroutines(attach, true, sym);
        t.history
            .record(attach.now_ns, sites::live_by_site(goroutines.iter()));
        t
    }

    pub fn meta(&self) -> &ProcessMeta {
        &self.meta
    }

    /// The table of the process at `obs`. An observation of another process with the
    /// same pid (reused) starts over.
    pub fn update(&mut self, obs: &Observation, sym: &dyn Symbols) -> ProcessTable {
        if obs.process != self.meta.id {
            *self = Tracker::new(
                ProcessMeta {
                    id: obs.process,
                    ..self.meta.clone()
                },
                obs,
                sym,
            );
        }
        let now = obs.now_ns;
        // Without probes every refresh is like the attach-time one.
        let goroutines = self.goroutines(obs, obs.kernel.is_none(), sym);
        let kernel = obs.kernel.as_ref().map(|k| KernelSites {
            stats: &k.sites,
            live: &k.goroutines,
        });
        let names = &mut self.sites;
        let site_views = sites::views(now, &goroutines, kernel, &self.history, |gopc| match names
            .get(sym, gopc)
        {
            Some(l) => SiteName {
                function: l.function,
                file: l.file,
                line: l.line,
            },
            None => SiteName {
                function: format!("{gopc:#x}"),
                file: String::new(),
                line: 0,
            },
        });
        self.history
            .record(now, sites::live_by_site(goroutines.iter()));
        let blocking = self.blocking(obs, sym, &goroutines, &site_views);
        let (contexts, context_parents) = self.contexts(obs, sym);
        ProcessTable {
            pid: self.meta.id.pid,
            start_time: self.meta.id.start_time,
            exe: self.meta.exe.clone(),
            go_version: self.meta.go_version.clone(),
            attached_seconds: now.saturating_sub(self.attached_ns) as f64 / 1e9,
            live: goroutines.len() as u64 + obs.untracked,
            untracked: obs.untracked,
            identity: Default::default(),
            sites: site_views,
            goroutines: goroutines.into_iter().map(|(_, g)| g).collect(),
            counters: obs.kernel.as_ref().map(|k| k.totals()),
            inventory_error: obs.inventory.as_ref().err().cloned(),
            contexts,
            context_parents,
            blocking,
        }
    }

    /// Where the goroutines whose stacks were read are stopped, per site (empty when no
    /// stack was read).
    fn blocking(
        &mut self,
        obs: &Observation,
        sym: &dyn Symbols,
        goroutines: &[(u64, GoroutineView)],
        sites: &[crate::model::SiteView],
    ) -> Vec<crate::model::SiteBlocking> {
        if obs.stacks.is_empty() {
            self.stack_names = Default::default();
            return Vec::new();
        }
        let stopped: Vec<blocking::Stopped<'_>> = goroutines
            .iter()
            .filter_map(|(gopc, g)| {
                Some(blocking::Stopped {
                    gopc: *gopc,
                    goid: g.goid,
                    state: &g.state,
                    stack: obs.stacks.get(&g.goid)?,
                })
            })
            .collect();
        // Stopped goroutines without a stack, per site, for the sites with stacks read
        // (only theirs are shown).
        let read_sites: HashSet<u64> = stopped.iter().map(|s| s.gopc).collect();
        let mut unread: HashMap<u64, u64> = HashMap::new();
        if let Ok(gs) = &obs.inventory {
            let shown: HashSet<u64> = goroutines
                .iter()
                .filter(|(gopc, _)| read_sites.contains(gopc))
                .map(|(_, g)| g.goid)
                .collect();
            for g in gs {
                if read_sites.contains(&g.gopc)
                    && goroutines::stack_readable(g.status)
                    && shown.contains(&g.goid)
                    && !obs.stacks.contains_key(&g.goid)
                {
                    *unread.entry(g.gopc).or_default() += 1;
                }
            }
        }
        blocking::site_views(
            sym,
            &mut self.stack_names,
            &stopped,
            sites.iter().map(|s| (s.gopc, s.location())),
            |gopc| unread.get(&gopc).copied().unwrap_or(0),
        )
    }

    /// The live goroutines with their creation sites (`(gopc, view)`), merging the
    /// inventory with the kernel's records by goid. `attach_time`: goroutines the kernel
    /// did not see created existed before attach.
    fn goroutines(
        &mut self,
        obs: &Observation,
        attach_time: bool,
        sym: &dyn Symbols,
    ) -> Vec<(u64, GoroutineView)> {
        let now = obs.now_ns;
        let live = obs.kernel.as_ref().map(|k| &k.goroutines);
        // With probes, a goroutine the kernel does not hold as live and that did not
        // exist at attach is exiting (the exit probe fires before the runtime marks it
        // dead) or was created after the kernel maps were read: not counted this time.
        // If the live map overflowed, the inventory is trusted instead.
        let trust_kernel = obs
            .kernel
            .as_ref()
            .is_some_and(|k| k.counters.get(Loss::LiveMapFull) == 0);
        let gs = inventory_or_kernel(obs);
        let mut out = Vec::with_capacity(gs.len());
        let mut seen = HashSet::with_capacity(gs.len());
        for g in gs.iter() {
            let (age_ns, lower) = match live.and_then(|l| l.get(&g.goid)) {
                Some(info) => (now.saturating_sub(info.created_ns), false),
                None => {
                    let first = match self.first_seen.get(&g.goid) {
                        Some(t) => *t,
                        None if attach_time || !trust_kernel => {
                            *self.first_seen.entry(g.goid).or_insert(now)
                        }
                        None => continue,
                    };
                    (now.saturating_sub(first), true)
                }
            };
            seen.insert(g.goid);
            let created_at = self
                .sites
                .get(sym, g.gopc)
                .map_or_else(|| format!("{:#x}", g.gopc), |l| l.to_string());
            out.push((
                g.gopc,
                GoroutineView {
                    goid: g.goid,
                    parent_goid: g.parent_goid,
                    state: goroutines::state_name(g, sym.wait_reasons()),
                    created_at,
                    start_function: match obs.starts.get(&g.goid) {
                        Some(s) => s.to_string(),
                        None => sym
                            .start_function(g.startpc)
                            .unwrap_or_else(|| format!("{:#x}", g.startpc)),
                    },
                    age_seconds: age_ns as f64 / 1e9,
                    age_is_lower_bound: lower,
                    waiting: matches!(g.status, STATUS_WAITING | STATUS_LEAKED),
                    leaked: g.status == STATUS_LEAKED,
                },
            ));
        }
        self.first_seen.retain(|goid, _| seen.contains(goid));
        out
    }

    /// Context views and the busiest parents (empty without context probes).
    fn contexts(
        &mut self,
        obs: &Observation,
        sym: &dyn Symbols,
    ) -> (
        Vec<crate::model::ContextSiteView>,
        Vec<crate::model::ParentView>,
    ) {
        let Some(c) = obs.kernel.as_ref().and_then(|k| k.contexts.as_ref()) else {
            return Default::default();
        };
        let none = ContextReads::default();
        let reads = obs.contexts.as_ref().unwrap_or(&none);
        let gs: HashMap<u64, &G> = match &obs.inventory {
            Ok(gs) => gs.iter().map(|g| (g.goid, g)).collect(),
            Err(_) => HashMap::new(),
        };
        let waits = contexts::waiters(c, reads, |goid| {
            gs.get(&goid)
                .and_then(|g| self.sites.get(sym, g.gopc))
                .map_or_else(|| "unknown".to_string(), |l| l.to_string())
        });
        let live_goids: Option<HashSet<u64>> =
            obs.inventory.is_ok().then(|| gs.keys().copied().collect());
        (
            contexts::site_views(sym, obs.now_ns, c, live_goids.as_ref(), &waits),
            contexts::parent_views(sym, c, reads),
        )
    }
}

/// The goroutines to merge: the inventory, or when it could not be read, what the kernel
/// saw created (their state unknown: shown as runnable).
fn inventory_or_kernel(obs: &Observation) -> std::borrow::Cow<'_, [G]> {
    match (&obs.inventory, &obs.kernel) {
        (Ok(gs), _) => std::borrow::Cow::Borrowed(gs.as_slice()),
        (Err(_), Some(k)) => std::borrow::Cow::Owned(
            k.goroutines
                .iter()
                .map(|(goid, i)| G {
                    goid: *goid,
                    status: STATUS_RUNNABLE,
                    wait_reason: 0,
                    wait_since: 0,
                    gopc: i.gopc,
                    startpc: i.startpc,
                    // Without `parentGoid` (Go < 1.21) the kernel is told to read the
                    // goid there: a goroutine is never its own parent.
                    parent_goid: if i.parent_goid == *goid {
                        0
                    } else {
                        i.parent_goid
                    },
                    waiting: 0,
                })
                .collect(),
        ),
        (Err(_), None) => std::borrow::Cow::Owned(Vec::new()),
    }
}
