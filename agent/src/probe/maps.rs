//! Reading the kernel's maps: everything the probes recorded, grouped by process
//! ([`KernelState`], one read per refresh for every traced process), their fill ratios,
//! and removing a process that exited.

use std::collections::HashMap;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap};
use aya::Pod;
use goroscope_common::{
    CtxInfo, CtxKey, CtxSiteStats, GoroutineInfo, GoroutineKey, ProcCounters, SiteKey, SiteStats,
    DEFAULT_MAX_CONTEXTS, MAX_SITES,
};

use super::Probes;
use crate::model::{Losses, MapFill, Totals};

/// Key of a kernel hash map with one entry per (process, address): a goroutine, a `go`
/// statement, a context.
pub(super) trait ProcessKey: Pod {
    fn tgid(&self) -> u32;
    /// The goid, gopc or context pointer.
    fn addr(&self) -> u64;
}

impl ProcessKey for GoroutineKey {
    fn tgid(&self) -> u32 {
        self.tgid
    }
    fn addr(&self) -> u64 {
        self.goid
    }
}

impl ProcessKey for SiteKey {
    fn tgid(&self) -> u32 {
        self.tgid
    }
    fn addr(&self) -> u64 {
        self.gopc
    }
}

impl ProcessKey for CtxKey {
    fn tgid(&self) -> u32 {
        self.tgid
    }
    fn addr(&self) -> u64 {
        self.ctx
    }
}

/// Entries by process, then by address.
type ByProcess<V> = HashMap<u32, HashMap<u64, V>>;

/// What the kernel recorded about one process, addresses as the kernel saw them
/// (runtime addresses of the `go` statements; context sites are link-time already).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessRecords {
    /// Goroutines created while attached and not exited yet, by goid.
    pub goroutines: HashMap<u64, GoroutineInfo>,
    /// Exit statistics by creation site (gopc).
    pub sites: HashMap<u64, SiteStats>,
    /// Loss counters, summed over CPUs.
    pub counters: ProcCounters,
    /// Context records, when the context probes are attached.
    pub contexts: Option<ContextRecords>,
}

/// What the context probes recorded about one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextRecords {
    /// Contexts created while attached and not cancelled yet, by pointer.
    pub live: HashMap<u64, CtxInfo>,
    /// Counters by creation site (link-time address).
    pub sites: HashMap<u64, CtxSiteStats>,
}

impl ProcessRecords {
    /// Created while attached = exited (tracked) + still live; exited = tracked +
    /// untracked exits (goroutines older than the attach).
    pub fn totals(&self) -> Totals {
        let (tracked, untracked) = self
            .sites
            .values()
            .fold((0, 0), |(t, u), s| (t + s.exited(), u + s.exited_untracked));
        Totals {
            created: tracked + self.goroutines.len() as u64,
            exited: tracked + untracked,
            lost: Losses(self.counters),
        }
    }
}

/// Everything the kernel holds about the traced processes, read at one instant.
#[derive(Debug, Default)]
pub struct KernelState {
    goroutines: ByProcess<GoroutineInfo>,
    sites: ByProcess<SiteStats>,
    counters: HashMap<u32, ProcCounters>,
    /// None: context probes not attached.
    contexts: Option<(ByProcess<CtxInfo>, ByProcess<CtxSiteStats>)>,
    /// Older records of an address that also has a newer one (one in the slot table, one
    /// in the overflow map: the kernel claims a free slot without looking in the overflow
    /// map), by process: their context was garbage collected and its address came back.
    stale_contexts: ByProcess<CtxInfo>,
}

impl KernelState {
    /// The stale context records of process `tgid` (see `stale_contexts`), by pointer:
    /// the newer record of each address is in its [`ContextRecords::live`].
    pub fn take_stale_contexts(&mut self, tgid: u32) -> HashMap<u64, CtxInfo> {
        self.stale_contexts.remove(&tgid).unwrap_or_default()
    }

    /// The records of process `tgid` (moved out: each process is taken once).
    pub fn take(&mut self, tgid: u32) -> ProcessRecords {
        ProcessRecords {
            goroutines: self.goroutines.remove(&tgid).unwrap_or_default(),
            sites: self.sites.remove(&tgid).unwrap_or_default(),
            counters: self.counters.remove(&tgid).unwrap_or_default(),
            contexts: self.contexts.as_mut().map(|(live, sites)| ContextRecords {
                live: live.remove(&tgid).unwrap_or_default(),
                sites: sites.remove(&tgid).unwrap_or_default(),
            }),
        }
    }
}

impl Probes {
    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))
    }

    /// Entries of a hash map keyed by process. An entry deleted while iterating is
    /// skipped: the kernel changes the maps concurrently.
    fn by_process<K: ProcessKey, V: Pod>(&self, name: &str) -> Result<ByProcess<V>> {
        let map: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(self.map(name)?)?;
        let mut out: ByProcess<V> = HashMap::new();
        for (k, v) in map.iter().filter_map(Result::ok) {
            out.entry(k.tgid()).or_default().insert(k.addr(), v);
        }
        Ok(out)
    }

    /// Entries of a hash map keyed by process, counted.
    fn entries<K: ProcessKey, V: Pod>(&self, name: &str) -> Result<usize> {
        let map: BpfHashMap<&MapData, K, V> = BpfHashMap::try_from(self.map(name)?)?;
        Ok(map.keys().count())
    }

    /// Reads the kernel maps of every traced process; `contexts`: also the context maps.
    pub fn read(&self, contexts: bool) -> Result<KernelState> {
        let mut goroutines = self.by_process::<GoroutineKey, GoroutineInfo>("LIVE")?;
        for s in self.slots.entries() {
            goroutines.entry(s.tgid).or_default().insert(s.goid, s.info);
        }
        let mut stale_contexts: ByProcess<CtxInfo> = HashMap::new();
        let contexts = if contexts {
            let mut live = self.by_process::<CtxKey, CtxInfo>("CTX_LIVE")?;
            // An address in both the slot table and the overflow map: the newer record is
            // live, the older one stale.
            for s in self.ctx_slots.entries() {
                let l = live.entry(s.tgid).or_default();
                if let Some(old) = l.insert(s.ctx, s.info) {
                    let stale = if old.created_ns <= s.info.created_ns {
                        old
                    } else {
                        l.insert(s.ctx, old);
                        s.info
                    };
                    if stale != l[&s.ctx] {
                        stale_contexts
                            .entry(s.tgid)
                            .or_default()
                            .insert(s.ctx, stale);
                    }
                }
            }
            let mut sites = self.by_process::<SiteKey, CtxSiteStats>("CTX_SITES")?;
            for s in self.ctx_sites.entries() {
                let site = goroscope_common::ctx_site_of_key(s.key);
                sites
                    .entry(s.tgid)
                    .or_default()
                    .entry(site)
                    .or_default()
                    .add(&s.stats);
            }
            Some((live, sites))
        } else {
            None
        };
        Ok(KernelState {
            goroutines,
            sites: self.by_process::<SiteKey, SiteStats>("SITES")?,
            counters: self.counters()?,
            contexts,
            stale_contexts,
        })
    }

    /// Loss counters of every process, summed over CPUs.
    fn counters(&self) -> Result<HashMap<u32, ProcCounters>> {
        let map: PerCpuHashMap<&MapData, u32, ProcCounters> =
            PerCpuHashMap::try_from(self.map("PROC_COUNTERS")?)?;
        let mut out: HashMap<u32, ProcCounters> = HashMap::new();
        for (tgid, per_cpu) in map.iter().filter_map(Result::ok) {
            let sum = out.entry(tgid).or_default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
        }
        Ok(out)
    }

    /// What the kernel counted for one process (reads every map: use [`Probes::read`]
    /// when reading many processes).
    pub fn totals(&self, tgid: u32) -> Result<Totals> {
        Ok(self.read(false)?.take(tgid).totals())
    }

    /// Removes everything the kernel holds about a process that has exited.
    pub fn purge(&mut self, tgid: u32) -> Result<()> {
        self.slots.clear(tgid);
        self.ctx_slots.clear(tgid);
        self.ctx_sites.clear(tgid);
        self.remove_process::<CtxKey, CtxInfo>("CTX_LIVE", tgid)?;
        self.remove_process::<SiteKey, CtxSiteStats>("CTX_SITES", tgid)?;
        self.remove_process::<GoroutineKey, GoroutineInfo>("LIVE", tgid)?;
        self.remove_process::<SiteKey, SiteStats>("SITES", tgid)?;
        let mut procs: PerCpuHashMap<_, u32, ProcCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut("PROC_COUNTERS")
                .context("map PROC_COUNTERS missing")?,
        )?;
        match procs.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // A process that never hit a probe has no counters.
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            Err(e) => Err(e).context("purging PROC_COUNTERS"),
        }
    }

    /// Frees the records of contexts of process `tgid` that the agent judged cancelled or
    /// gone (one-probe mode): each `(context, created_ns)` is freed only if its record is
    /// still the one judged (same creation time), so a newer context at the same address
    /// recorded meanwhile is kept (the kernel counted the judged one then). Returns, per
    /// context, whether its record was freed: only those are the agent's to count.
    ///
    /// The slot table is changed in place (compare-and-swap, see `SlotTable::free_if`).
    /// An overflow entry is looked up, checked and deleted in two system calls: if the
    /// kernel replaces it in between (a new context at the same address, counted by the
    /// kernel), the new record is deleted too and the old context counted twice — a
    /// window of microseconds against a refresh interval.
    pub fn free_contexts(&mut self, tgid: u32, judged: &[(u64, u64)]) -> Result<Vec<bool>> {
        let mut freed = vec![false; judged.len()];
        let mut overflow = Vec::new();
        for (i, &(ctx, created_ns)) in judged.iter().enumerate() {
            let home = goroscope_common::ctx_slot_index(tgid, ctx);
            if (0..goroscope_common::CTX_WAYS).any(|way| {
                let slot = goroscope_common::ctx_slot(home, way) as usize;
                self.ctx_slots
                    .free_if(slot, tgid, ctx, |s| s.info.created_ns == created_ns)
            }) {
                freed[i] = true;
            } else {
                overflow.push(i);
            }
        }
        if overflow.is_empty() {
            return Ok(freed);
        }
        let mut live: BpfHashMap<_, CtxKey, CtxInfo> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("CTX_LIVE")
                .context("map CTX_LIVE missing")?,
        )?;
        for i in overflow {
            let (ctx, created_ns) = judged[i];
            let key = CtxKey { tgid, _pad: 0, ctx };
            if live.get(&key, 0).is_ok_and(|v| v.created_ns == created_ns) {
                freed[i] = live.remove(&key).is_ok();
            }
        }
        Ok(freed)
    }

    /// Removes the entries of process `tgid` from a hash map keyed by process.
    fn remove_process<K: ProcessKey, V: Pod>(&mut self, name: &str, tgid: u32) -> Result<()> {
        let mut map: BpfHashMap<_, K, V> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(name)
                .with_context(|| format!("map {name} missing"))?,
        )?;
        let keys: Vec<K> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid() == tgid)
            .collect();
        for k in keys {
            // Already gone (the kernel deleted it meanwhile) is what we want.
            let _ = map.remove(&k);
        }
        Ok(())
    }

    /// Fill ratios of the bounded maps.
    pub fn map_fill(&self) -> Result<MapFill> {
        let ratio = |n: usize, max: usize| n as f64 / max.max(1) as f64;
        Ok(MapFill {
            goroutine_slots: ratio(self.slots.entries().count(), self.slots.len),
            goroutine_overflow: ratio(
                self.entries::<GoroutineKey, GoroutineInfo>("LIVE")?,
                self.max_live as usize,
            ),
            sites: ratio(
                self.entries::<SiteKey, SiteStats>("SITES")?,
                MAX_SITES as usize,
            ),
            context_slots: ratio(self.ctx_slots.entries().count(), self.ctx_slots.len),
            context_overflow: ratio(
                self.entries::<CtxKey, CtxInfo>("CTX_LIVE")?,
                DEFAULT_MAX_CONTEXTS as usize,
            ),
        })
    }
}
