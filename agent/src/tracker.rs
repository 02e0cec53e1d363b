//! The goroutine table of one traced process.
//!
//! Sources, merged by goid so nothing is counted twice:
//! - the inventory (`runtime.allgs`, read at every refresh): which goroutines are alive
//!   now and their state; it also covers goroutines that existed before attach;
//! - the kernel's `LIVE` map: exact creation time of goroutines created while attached;
//! - the kernel's `SITES` map: created/exited counts and lifetimes per creation site.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use anyhow::Result;
use goroscope_common::{
    CtxInfo, CtxSiteStats, GoroutineInfo, ProcCounters, SiteStats, LIFETIME_BUCKETS,
};

use serde::Serialize;

use crate::contexts::{self, ContextSiteView, ParentView};
use crate::gobin::{Analysis, SourceLoc};
use crate::inventory::{self, G};
use crate::process::{ProcMem, ProcessId};

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Upper bound (seconds) of lifetime histogram bucket `b` (`None` for the last, +Inf).
pub fn bucket_upper_seconds(b: usize) -> Option<f64> {
    (b + 1 < LIFETIME_BUCKETS).then(|| (1u64 << (b + 10)) as f64 / 1e9)
}

#[derive(Debug, Clone, Serialize)]
pub struct GoroutineView {
    pub goid: u64,
    pub parent_goid: u64,
    pub state: String,
    /// `function file:line` of the `go` statement that created it.
    pub created_at: String,
    pub start_function: String,
    pub age_seconds: f64,
    /// The goroutine existed before attach: its age is at least `age_seconds`.
    pub age_is_lower_bound: bool,
    /// Blocked (Go status `_Gwaiting`: channel, select, sleep, IO wait, lock…).
    pub waiting: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Lifetime {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds or None for +Inf, count in that bucket)`, non-cumulative.
    pub buckets: Vec<(Option<f64>, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SiteView {
    /// Link-time address of the `go` statement's return pc.
    pub gopc: u64,
    pub function: String,
    pub file: String,
    pub line: u32,
    /// Created by the Go runtime itself (e.g. GC workers).
    pub system: bool,
    pub start_function: String,
    pub live: u64,
    /// Live goroutines that are blocked (`_Gwaiting`).
    pub waiting: u64,
    /// Created while attached (None without probes).
    pub created: Option<u64>,
    /// Exited while attached, whenever they were created (None without probes).
    pub exited: Option<u64>,
    pub oldest_age_seconds: f64,
    pub oldest_age_is_lower_bound: bool,
    /// Change of `live` per minute over the last minute (or what history there is, from
    /// 5 s on).
    pub growth_per_minute: Option<f64>,
    pub states: BTreeMap<String, u64>,
    pub dominant_state: String,
    pub lifetime: Option<Lifetime>,
    pub sample_goids: Vec<u64>,
}

impl SiteView {
    pub fn location(&self) -> String {
        format!("{} {}:{}", self.function, self.file, self.line)
    }
}

pub use crate::probe::Totals as Counters;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessTable {
    pub pid: u32,
    /// Process start time (clock ticks after boot): tells a reused pid apart.
    pub start_time: u64,
    pub exe: String,
    pub go_version: String,
    pub attached_seconds: f64,
    pub live: u64,
    pub sites: Vec<SiteView>,
    pub goroutines: Vec<GoroutineView>,
    /// Kernel counters (None without probes).
    pub counters: Option<Counters>,
    /// Why the inventory could not be read, if it could not (then `live` counts only
    /// goroutines created since attach).
    pub inventory_error: Option<String>,
    /// Cancelable contexts by creation site (empty without context probes).
    pub contexts: Vec<ContextSiteView>,
    /// Parents with the most uncancelled children.
    pub context_parents: Vec<ParentView>,
}

/// The kernel's view of a process's contexts: live (uncancelled) ones by pointer, and
/// per-site counters.
pub type KernelContexts<'a> = (&'a HashMap<u64, CtxInfo>, &'a HashMap<u64, CtxSiteStats>);

/// One traced process.
pub struct Tracked {
    pub id: ProcessId,
    pub analysis: Arc<Analysis>,
    pub bias: u64,
    /// The executable's path as the process sees it (not `/proc/PID/exe`).
    exe: String,
    mem: ProcMem,
    attached_ns: u64,
    /// Goroutines that existed before attach (the attach-time inventory), with when they
    /// were first seen; their age is at least that.
    first_seen: HashMap<u64, u64>,
    /// Whether the attach-time inventory has been taken.
    inventoried: bool,
    history: VecDeque<(u64, HashMap<u64, u64>)>,
    sites_cache: HashMap<u64, Option<SourceLoc>>,
    /// Type word of a set `cancelCtx.done` (learned from tracked contexts).
    chan_type: Option<u64>,
}

impl Tracked {
    pub fn new(id: ProcessId, analysis: Arc<Analysis>) -> Result<Tracked> {
        let bias = if analysis.pie {
            let (vaddr, off) = analysis.first_load;
            crate::process::load_bias(id.pid, vaddr, off)?
        } else {
            0
        };
        let exe = std::fs::read_link(id.exe_link())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| analysis.path.display().to_string());
        Ok(Tracked {
            id,
            analysis,
            bias,
            exe,
            mem: ProcMem::new(id.pid),
            attached_ns: mono_ns(),
            first_seen: HashMap::new(),
            inventoried: false,
            history: VecDeque::new(),
            sites_cache: HashMap::new(),
            chan_type: None,
        })
    }

    /// Current goroutines (the inventory), runtime addresses.
    pub fn inventory(&self) -> Result<Vec<G>> {
        inventory::read(&self.mem, &self.analysis, self.bias)
    }

    fn site(&mut self, gopc_link: u64) -> Option<SourceLoc> {
        let pcln = &self.analysis.pclntab;
        self.sites_cache
            .entry(gopc_link)
            .or_insert_with(|| pcln.call_site(gopc_link))
            .clone()
    }

    fn func_name(&self, pc_link: u64) -> String {
        self.analysis
            .start_function(pc_link)
            .unwrap_or_else(|| format!("{pc_link:#x}"))
    }

    /// Builds the table. `live`/`sites`/`counters` come from the kernel (None when not
    /// attached).
    pub fn table(
        &mut self,
        live: Option<&HashMap<u64, GoroutineInfo>>,
        sites: Option<&HashMap<u64, SiteStats>>,
        counters: Option<ProcCounters>,
        ctx: Option<KernelContexts<'_>>,
    ) -> ProcessTable {
        let now = mono_ns();
        let (gs, inventory_error) = match self.inventory() {
            Ok(gs) => (gs, None),
            Err(e) => {
                // Without the inventory, what the kernel saw created is what we know.
                let gs = live
                    .map(|l| {
                        l.iter()
                            .map(|(goid, i)| G {
                                goid: *goid,
                                status: 1,
                                wait_reason: 0,
                                wait_since: 0,
                                gopc: i.gopc,
                                startpc: i.startpc,
                                parent_goid: i.parent_goid,
                                waiting: 0,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (gs, Some(format!("{e:#}")))
            }
        };
        let bias = self.bias;
        let wait_reasons = self.analysis.wait_reasons.clone();
        // With probes, a goroutine the kernel does not hold as live and that did not
        // exist at attach is exiting (the exit probe fires before the runtime marks it
        // dead) or was created after the kernel maps were read: not counted this time.
        // If the live map overflowed, the inventory is trusted instead.
        let attach_time = !self.inventoried || live.is_none();
        self.inventoried = true;
        let trust_kernel = live.is_some() && counters.is_none_or(|c| c.live_map_full == 0);
        let mut goroutines = Vec::with_capacity(gs.len());
        let mut seen = HashMap::with_capacity(gs.len());
        for g in &gs {
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
            seen.insert(g.goid, ());
            let gopc_link = g.gopc.wrapping_sub(bias);
            let created_at = self
                .site(gopc_link)
                .map_or_else(|| format!("{gopc_link:#x}"), |l| l.to_string());
            goroutines.push((
                gopc_link,
                GoroutineView {
                    goid: g.goid,
                    parent_goid: g.parent_goid,
                    state: inventory::state_name(g, &wait_reasons),
                    created_at,
                    start_function: self.func_name(g.startpc.wrapping_sub(bias)),
                    age_seconds: age_ns as f64 / 1e9,
                    age_is_lower_bound: lower,
                    waiting: g.status == inventory::STATUS_WAITING,
                },
            ));
        }
        self.first_seen.retain(|goid, _| seen.contains_key(goid));

        // Per site.
        let mut by_site: BTreeMap<u64, Vec<&GoroutineView>> = BTreeMap::new();
        for (gopc, g) in &goroutines {
            by_site.entry(*gopc).or_default().push(g);
        }
        let kernel_sites: HashMap<u64, &SiteStats> = sites
            .map(|s| {
                s.iter()
                    .map(|(gopc, st)| (gopc.wrapping_sub(bias), st))
                    .collect()
            })
            .unwrap_or_default();
        // Goroutines created while attached and still live, per site (from the kernel).
        let mut live_created: HashMap<u64, u64> = HashMap::new();
        for info in live.into_iter().flat_map(|l| l.values()) {
            *live_created
                .entry(info.gopc.wrapping_sub(bias))
                .or_default() += 1;
        }
        let mut keys: Vec<u64> = by_site.keys().copied().collect();
        keys.extend(kernel_sites.keys().filter(|k| !by_site.contains_key(k)));
        keys.extend(
            live_created
                .keys()
                .filter(|k| !by_site.contains_key(k) && !kernel_sites.contains_key(k)),
        );
        let live_now: HashMap<u64, u64> =
            by_site.iter().map(|(k, v)| (*k, v.len() as u64)).collect();
        let then = self
            .history
            .iter()
            .find(|(t, _)| now - t <= 60_000_000_000)
            .filter(|(t, _)| now - t >= 5_000_000_000)
            .cloned();
        let mut site_views = Vec::with_capacity(keys.len());
        for gopc in keys {
            let members = by_site.get(&gopc).map(Vec::as_slice).unwrap_or(&[]);
            let loc = self.site(gopc);
            let mut states: BTreeMap<String, u64> = BTreeMap::new();
            let mut starts: HashMap<&str, u64> = HashMap::new();
            for g in members {
                *states.entry(g.state.clone()).or_default() += 1;
                *starts.entry(g.start_function.as_str()).or_default() += 1;
            }
            let dominant_state = states
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(s, _)| s.clone())
                .unwrap_or_default();
            let oldest = members
                .iter()
                .max_by(|a, b| a.age_seconds.total_cmp(&b.age_seconds));
            let ks = kernel_sites.get(&gopc);
            let live_n = members.len() as u64;
            site_views.push(SiteView {
                gopc,
                function: loc
                    .as_ref()
                    .map_or_else(|| format!("{gopc:#x}"), |l| l.function.clone()),
                file: loc.as_ref().map_or_else(String::new, |l| l.file.clone()),
                line: loc.as_ref().map_or(0, |l| l.line),
                system: loc
                    .as_ref()
                    .is_some_and(|l| l.function.starts_with("runtime.")),
                start_function: starts
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(s, _)| s.to_string())
                    .unwrap_or_default(),
                live: live_n,
                waiting: members.iter().filter(|g| g.waiting).count() as u64,
                created: sites.map(|_| {
                    ks.map_or(0, |s| s.exited()) + live_created.get(&gopc).copied().unwrap_or(0)
                }),
                exited: sites.map(|_| ks.map_or(0, |s| s.exited() + s.exited_untracked)),
                oldest_age_seconds: oldest.map_or(0.0, |g| g.age_seconds),
                oldest_age_is_lower_bound: oldest.is_some_and(|g| g.age_is_lower_bound),
                growth_per_minute: then.as_ref().map(|(t, past)| {
                    let before = past.get(&gopc).copied().unwrap_or(0) as f64;
                    (live_n as f64 - before) * 60e9 / (now - t) as f64
                }),
                states,
                dominant_state,
                lifetime: ks.map(|s| Lifetime {
                    count: s.exited(),
                    sum_seconds: s.lifetime_ns_sum as f64 / 1e9,
                    buckets: s
                        .lifetime_buckets
                        .iter()
                        .enumerate()
                        .map(|(b, n)| (bucket_upper_seconds(b), *n))
                        .collect(),
                }),
                sample_goids: members.iter().take(5).map(|g| g.goid).collect(),
            });
        }
        site_views.sort_by(|a, b| b.live.cmp(&a.live).then(a.gopc.cmp(&b.gopc)));

        let live_goids: Option<std::collections::HashSet<u64>> = inventory_error
            .is_none()
            .then(|| gs.iter().map(|g| g.goid).collect());
        let (contexts, context_parents) = match ctx {
            Some((l, s)) => {
                // Goroutines blocked on the done channel of an uncancelled context.
                let mut waits: HashMap<u64, BTreeMap<String, u64>> = HashMap::new();
                let cc = self.analysis.offsets.cancel_ctx;
                let done = cc.map(|cc| contexts::done_channels(&self.mem, cc.done, l));
                if let Some(t) = done.as_ref().and_then(|d| d.chan_type) {
                    self.chan_type = Some(t);
                }
                if let (Some(done), None) = (&done, &inventory_error) {
                    if !done.by_chan.is_empty() {
                        let waiting = inventory::waiting_channels(&self.mem, &self.analysis, &gs);
                        for (i, chan) in waiting {
                            if let Some(site) = done.by_chan.get(&chan) {
                                let gsite = self
                                    .site(gs[i].gopc.wrapping_sub(bias))
                                    .map_or_else(|| "unknown".to_string(), |l| l.to_string());
                                *waits.entry(*site).or_default().entry(gsite).or_default() += 1;
                            }
                        }
                    }
                }
                let (views, mut parents) =
                    contexts::views(&self.analysis, now, l, s, live_goids.as_ref(), &waits);
                if let (Some(cc), None) = (cc, self.chan_type) {
                    self.chan_type = contexts::learn_chan_type(&self.mem, cc, &parents);
                }
                if let (Some(cc), Some(t)) = (cc, self.chan_type) {
                    contexts::read_children(&self.mem, cc, t, &mut parents);
                }
                (views, parents)
            }
            None => Default::default(),
        };
        self.history.push_back((now, live_now));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now - t > 120_000_000_000)
        {
            self.history.pop_front();
        }
        ProcessTable {
            pid: self.id.pid,
            start_time: self.id.start_time,
            exe: self.exe.clone(),
            go_version: self.analysis.go_version.clone(),
            attached_seconds: now.saturating_sub(self.attached_ns) as f64 / 1e9,
            live: goroutines.len() as u64,
            sites: site_views,
            goroutines: goroutines.into_iter().map(|(_, g)| g).collect(),
            counters: counters.map(|c| Counters::new(c, sites, live)),
            inventory_error,
            contexts,
            context_parents,
        }
    }
}
