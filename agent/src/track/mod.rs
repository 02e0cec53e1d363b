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
pub mod edges;
pub mod sites;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use goroscope_common::Loss;

use crate::gobin::{Analysis, SourceLoc};
use crate::intake::goroutines::{self, G, STATUS_LEAKED, STATUS_RUNNABLE, STATUS_WAITING};
use crate::intake::{ContextReads, Observation};
use crate::model::{AgeHistogram, GoroutineView, ProcessTable};
use crate::process::ProcessId;
use sites::{AccNames, History, KernelSites, SiteName};

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
    /// Module, revision, source root (for source links).
    pub build: crate::model::BuildSource,
}

/// What is remembered about one traced process between refreshes.
pub struct Tracker {
    meta: ProcessMeta,
    attached_ns: u64,
    /// Goroutines alive at attach and still alive: their age is at least the time since
    /// attach. About 8 bytes each (a service may have a million).
    at_attach: Goids,
    /// Other goroutines not seen being created (the kernel could not record them, or no
    /// probes), with when they were first seen: their age is at least the time since.
    first_seen: HashMap<u64, u64>,
    /// Keep a view of every goroutine in the tables (`ProcessTable::goroutines`); off,
    /// only their sums per site and state are (what the daemon needs, in a size that
    /// does not grow with the goroutines).
    keep_goroutines: bool,
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
            at_attach: Goids::default(),
            first_seen: HashMap::new(),
            // The attach-time views are not shown: not built.
            keep_goroutines: false,
            history: History::default(),
            sites: SiteCache::default(),
            stack_names: Default::default(),
        };
        let scan = t.goroutines(attach, true, true, sym);
        t.history
            .record(attach.now_ns, sites::live_by_site(&scan.sites));
        t.keep_goroutines = true;
        t
    }

    /// Whether the tables list every goroutine (`ProcessTable::goroutines`; on by
    /// default). Off, their memory does not grow with the goroutines.
    pub fn set_keep_goroutines(&mut self, keep: bool) {
        self.keep_goroutines = keep;
    }

    pub fn meta(&self) -> &ProcessMeta {
        &self.meta
    }

    /// The table of the process at `obs`. An observation of another process with the
    /// same pid (reused) starts over.
    pub fn update(&mut self, obs: &Observation, sym: &dyn Symbols) -> ProcessTable {
        if obs.process != self.meta.id {
            let keep = self.keep_goroutines;
            *self = Tracker::new(
                ProcessMeta {
                    id: obs.process,
                    ..self.meta.clone()
                },
                obs,
                sym,
            );
            self.keep_goroutines = keep;
        }
        let now = obs.now_ns;
        // Without probes every refresh is like the attach-time one.
        let scan = self.goroutines(obs, obs.kernel.is_none(), false, sym);
        let kernel = obs.kernel.as_ref().map(|k| KernelSites {
            stats: &k.sites,
            live: &k.goroutines,
        });
        let names = &mut self.sites;
        let acc_names = AccNamer { sym };
        let site_views = sites::views(
            now,
            &scan.sites,
            kernel,
            &self.history,
            &acc_names,
            |gopc| match names.get(sym, gopc) {
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
            },
        );
        self.history.record(now, sites::live_by_site(&scan.sites));
        let blocking = self.blocking(obs, sym, &scan, &site_views);
        let (contexts, context_parents) = self.contexts(obs, sym);
        ProcessTable {
            pid: self.meta.id.pid,
            start_time: self.meta.id.start_time,
            exe: self.meta.exe.clone(),
            go_version: self.meta.go_version.clone(),
            attached_seconds: now.saturating_sub(self.attached_ns) as f64 / 1e9,
            live: scan.live + obs.untracked,
            untracked: obs.untracked,
            identity: Default::default(),
            sites: site_views,
            states: scan.states,
            goroutines: scan.views,
            counters: obs.kernel.as_ref().map(|k| k.totals()),
            inventory_error: obs.inventory.as_ref().err().cloned(),
            contexts,
            context_parents,
            blocking,
            site_edges: scan.edges,
            build: self.meta.build.clone(),
        }
    }

    /// Where the goroutines whose stacks were read are stopped, per site (empty when no
    /// stack was read).
    fn blocking(
        &mut self,
        obs: &Observation,
        sym: &dyn Symbols,
        scan: &Scan,
        sites: &[crate::model::SiteView],
    ) -> Vec<crate::model::SiteBlocking> {
        if obs.stacks.is_empty() {
            self.stack_names = Default::default();
            return Vec::new();
        }
        let stopped: Vec<blocking::Stopped<'_>> = scan
            .stopped
            .iter()
            .filter_map(|(gopc, goid, state)| {
                Some(blocking::Stopped {
                    gopc: *gopc,
                    goid: *goid,
                    state,
                    stack: obs.stacks.get(goid)?,
                })
            })
            .collect();
        // Stopped goroutines without a stack are counted for the sites with stacks read
        // (only theirs are shown).
        blocking::site_views(
            sym,
            &mut self.stack_names,
            &stopped,
            sites.iter().map(|s| (s.gopc, s.location())),
            |gopc| scan.unread.get(&gopc).copied().unwrap_or(0),
        )
    }

    /// The live goroutines, merging the inventory with the kernel's records by goid,
    /// added up per creation site (and listed, when kept). `attach_time`: goroutines the
    /// kernel did not see created existed before attach; `initial`: this is the attach-time
    /// observation.
    fn goroutines(
        &mut self,
        obs: &Observation,
        attach_time: bool,
        initial: bool,
        sym: &dyn Symbols,
    ) -> Scan {
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
        let mut scan = Scan::default();
        // Which of `at_attach` are still alive, and the other first-seen ones.
        let mut alive_at_attach = vec![false; self.at_attach.len()];
        let mut seen_later: HashSet<u64> = HashSet::new();
        let mut new_first: Vec<u64> = Vec::new();
        let mut states: foldhash::HashMap<(u32, u8), u64> = Default::default();
        // Many goroutines share an age (all those alive at attach): its bucket once.
        let mut last_age = (u64::MAX, 0);
        let mut hint = 0;
        let live = live.filter(|l| !l.is_empty());
        let wait_reasons = sym.wait_reasons();
        let mut creators = edges::Creators::default();
        for g in gs.iter() {
            let (age_ns, lower) = match live.and_then(|l| l.get(&g.goid)) {
                Some(info) => (now.saturating_sub(info.created_ns), false),
                None => {
                    let first = match self.at_attach.find_from(g.goid, &mut hint) {
                        Some(i) => {
                            alive_at_attach[i] = true;
                            self.attached_ns
                        }
                        None => match self.first_seen.get(&g.goid) {
                            Some(t) => {
                                seen_later.insert(g.goid);
                                *t
                            }
                            None if attach_time || !trust_kernel => {
                                new_first.push(g.goid);
                                now
                            }
                            None => continue,
                        },
                    };
                    (now.saturating_sub(first), true)
                }
            };
            let start = match obs.starts.get(&g.goid) {
                Some(s) => sites::Start::Read(s.clone()),
                None => sites::Start::Pc(g.startpc),
            };
            if last_age.0 != age_ns {
                last_age = (age_ns, AgeHistogram::bucket_of_ns(age_ns));
            }
            scan.live += 1;
            creators.add(g.parent_goid, g.gopc);
            *states.entry((g.status, g.wait_reason)).or_default() += 1;
            scan.sites.entry(g.gopc).or_default().add(
                g.goid,
                (g.status, g.wait_reason),
                start.clone(),
                (age_ns, last_age.1, lower),
            );
            if !obs.stacks.is_empty() && goroutines::stack_readable(g.status) {
                if obs.stacks.contains_key(&g.goid) {
                    scan.stopped
                        .push((g.gopc, g.goid, goroutines::state_name(g, wait_reasons)));
                } else {
                    *scan.unread.entry(g.gopc).or_default() += 1;
                }
            }
            if self.keep_goroutines {
                let created_at = self
                    .sites
                    .get(sym, g.gopc)
                    .map_or_else(|| format!("{:#x}", g.gopc), |l| l.to_string());
                scan.views.push(GoroutineView {
                    goid: g.goid,
                    parent_goid: g.parent_goid,
                    state: goroutines::state_name(g, wait_reasons),
                    created_at,
                    start_function: AccNamer { sym }.start(&start),
                    age_seconds: age_ns as f64 / 1e9,
                    age_is_lower_bound: lower,
                    waiting: matches!(g.status, STATUS_WAITING | STATUS_LEAKED),
                    leaked: g.status == STATUS_LEAKED,
                });
            }
        }
        for ((status, reason), n) in states {
            *scan
                .states
                .entry(goroutines::state_name_of(status, reason, wait_reasons))
                .or_default() += n;
        }
        scan.edges = creators.resolve(&gs);
        // Forget the goroutines that are gone.
        self.at_attach.retain(&alive_at_attach);
        self.first_seen.retain(|goid, _| seen_later.contains(goid));
        if initial {
            self.at_attach = Goids::new(new_first);
        } else {
            self.first_seen
                .extend(new_first.into_iter().map(|g| (g, now)));
        }
        scan
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
        // Only the goroutines asked about (waiters), not every live one: those found
        // alive, with their creation sites.
        let wanted: HashSet<u64> = reads.done_waiters.iter().map(|(goid, _)| *goid).collect();
        let gs: HashMap<u64, &G> = match &obs.inventory {
            Ok(gs) => gs
                .iter()
                .filter(|g| wanted.contains(&g.goid))
                .map(|g| (g.goid, g))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let waits = contexts::waiters(c, reads, |goid| {
            gs.get(&goid)
                .and_then(|g| self.sites.get(sym, g.gopc))
                .map_or_else(|| "unknown".to_string(), |l| l.to_string())
        });
        let started = |goid: u64| {
            obs.kernel
                .as_ref()
                .and_then(|k| k.goroutines.get(&goid))
                .map(|g| g.created_ns)
        };
        let exited = |info: &goroscope_common::CtxInfo| {
            contexts::creator(info, &reads.on_g, started) == contexts::Creator::Exited
        };
        (
            contexts::site_views(sym, obs.now_ns, c, &exited, &waits),
            contexts::parent_views(sym, c, reads),
        )
    }
}

/// A set of goids, sorted, with a small index (every [`Goids::STRIDE`]th goid) that
/// stays in cache: a lookup touches the index and one short stretch of the set, not the
/// twenty far-apart places of a binary search over a million.
#[derive(Debug, Default)]
struct Goids {
    sorted: Vec<u64>,
    index: Vec<u64>,
}

impl Goids {
    const STRIDE: usize = 32;

    fn new(mut goids: Vec<u64>) -> Goids {
        goids.sort_unstable();
        goids.dedup();
        goids.shrink_to_fit();
        let index = goids.iter().step_by(Self::STRIDE).copied().collect();
        Goids {
            sorted: goids,
            index,
        }
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Position of `goid` in the set.
    fn find(&self, goid: u64) -> Option<usize> {
        // The last stretch whose first goid is at most `goid`.
        let block = self.index.partition_point(|g| *g <= goid).checked_sub(1)?;
        let start = block * Self::STRIDE;
        let end = (start + Self::STRIDE).min(self.sorted.len());
        self.sorted[start..end]
            .binary_search(&goid)
            .ok()
            .map(|i| start + i)
    }

    /// Position of `goid`, looked for first at `*hint` (where the last lookup ended: a
    /// program's goroutines sit in memory mostly in the order they were created, so the
    /// next one is usually there); `*hint` moves past what is found.
    fn find_from(&self, goid: u64, hint: &mut usize) -> Option<usize> {
        let found = match self.sorted.get(*hint) {
            Some(g) if *g == goid => Some(*hint),
            _ => self.find(goid),
        };
        if let Some(i) = found {
            *hint = i + 1;
        }
        found
    }

    /// Keeps the goids whose position is marked.
    fn retain(&mut self, keep: &[bool]) {
        if keep.iter().all(|k| *k) {
            return;
        }
        let mut i = 0;
        let mut sorted = std::mem::take(&mut self.sorted);
        sorted.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        *self = Goids::new(sorted);
    }
}

/// The live goroutines of one refresh, added up.
#[derive(Default)]
struct Scan {
    /// Per creation site (gopc).
    sites: foldhash::HashMap<u64, sites::SiteAcc>,
    /// Every goroutine, when kept.
    views: Vec<GoroutineView>,
    /// `(gopc, goid, state)` of the stopped goroutines whose stack was read.
    stopped: Vec<(u64, u64, String)>,
    /// Stopped goroutines whose stack was not read, per site (with stacks read at all).
    unread: HashMap<u64, u64>,
    /// Live goroutines by state.
    states: std::collections::BTreeMap<String, u64>,
    live: u64,
    /// Live goroutines by the creation sites of their creators (see [`edges`]).
    edges: Vec<crate::model::SiteEdge>,
}

/// Names the states and start functions of [`sites::SiteAcc`].
struct AccNamer<'a> {
    sym: &'a dyn Symbols,
}

impl sites::AccNames for AccNamer<'_> {
    fn state(&self, status: u32, wait_reason: u8) -> String {
        goroutines::state_name_of(status, wait_reason, self.sym.wait_reasons())
    }
    fn start(&self, start: &sites::Start) -> String {
        match start {
            sites::Start::Read(s) => s.to_string(),
            sites::Start::Pc(pc) => self
                .sym
                .start_function(*pc)
                .unwrap_or_else(|| format!("{pc:#x}")),
        }
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

#[cfg(test)]
mod goids_tests {
    use super::Goids;

    #[test]
    fn goids_find_and_retain() {
        let g = Goids::new((0..1000u64).rev().map(|i| i * 3 + 7).collect());
        assert_eq!(g.len(), 1000);
        for i in 0..1000u64 {
            assert_eq!(g.find(i * 3 + 7), Some(i as usize));
            assert_eq!(g.find(i * 3 + 8), None);
        }
        assert_eq!(g.find(0), None);
        assert_eq!(g.find(u64::MAX), None);
        let mut g = g;
        let keep: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        g.retain(&keep);
        assert_eq!(g.len(), 500);
        assert_eq!(g.find(7), Some(0));
        assert_eq!(g.find(10), None);
        assert_eq!(g.find(13), Some(1));
        assert_eq!(Goids::default().find(1), None);
    }
}
