//! Loading the kernel programs, attaching them at the sites chosen by [`crate::gobin`],
//! and reading the kernel's maps.
//!
//! One BPF object serves every traced binary: each attached uprobe carries a cookie that
//! indexes its [`SiteConfig`] (field offsets for that Go version) in the `SITE_CONFIG`
//! array. Dropping [`Probes`] detaches everything.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuHashMap};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};
use goroscope_common::{
    CtxConfig, CtxInfo, CtxKey, CtxSiteStats, CtxSlot, GSlot, GoroutineInfo, GoroutineKey,
    ProcCounters, SiteConfig, SiteKey, SiteStats, CTX_RANGES, CTX_SLOTS, G_SLOTS, MAX_SITE_CONFIGS,
    SLOT_BUSY,
};

use crate::gobin::{Analysis, Hook, ProbeSite};

/// The kernel programs, built from `ebpf/goroscope-ebpf` by `agent/build.rs`.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOROSCOPE_BPF_OBJECT"));

/// Fill ratio (0..1) of the kernel maps, the fullest over all probe sets when merged.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MapFill {
    /// Slot array of live goroutines.
    pub goroutine_slots: f64,
    /// Overflow hash map of live goroutines.
    pub goroutine_overflow: f64,
    /// Per-site statistics.
    pub sites: f64,
    /// Slot array of uncancelled contexts.
    pub context_slots: f64,
    /// Overflow hash map of uncancelled contexts.
    pub context_overflow: f64,
}

/// What the kernel counted for one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Goroutines created while attached.
    pub created: u64,
    /// Goroutines exited while attached (whenever created).
    pub exited: u64,
    /// Probe hits whose `runtime.g` could not be read.
    pub read_errors: u64,
    /// Creations not recorded: live-goroutine map full.
    pub live_map_full: u64,
    /// Events not counted per site: site map full.
    pub site_map_full: u64,
    /// Contexts not tracked: live-context map full.
    pub context_map_full: u64,
    /// Context events not counted per site: context site map full.
    pub context_site_map_full: u64,
}

impl Totals {
    /// From the process's live-map entries and site statistics: created while attached
    /// = exited (tracked) + still live; exited = tracked + untracked exits.
    pub fn new(
        c: ProcCounters,
        sites: Option<&HashMap<u64, SiteStats>>,
        live: Option<&HashMap<u64, GoroutineInfo>>,
    ) -> Self {
        let (tracked, untracked) = sites
            .into_iter()
            .flat_map(|s| s.values())
            .fold((0, 0), |(t, u), s| (t + s.exited(), u + s.exited_untracked));
        Totals {
            created: tracked + live.map_or(0, |l| l.len() as u64),
            exited: tracked + untracked,
            read_errors: c.read_errors,
            live_map_full: c.live_map_full,
            site_map_full: c.site_map_full,
            context_map_full: c.context_map_full,
            context_site_map_full: c.context_site_map_full,
        }
    }

    /// Events the kernel could not record.
    pub fn lost(&self) -> u64 {
        self.read_errors
            + self.live_map_full
            + self.site_map_full
            + self.context_map_full
            + self.context_site_map_full
    }
}

/// Which processes a probe fires for.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Only this process.
    Pid(NonZeroU32),
    /// Every process running the binary, present and future.
    AllProcesses,
}

/// What to attach at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// goroscope's programs.
    Goroscope,
    /// An empty program (benchmark floor).
    Noop,
}

/// A kernel slot table (a `BPF_F_MMAPABLE` array whose entries start with a key word:
/// 0 = free, [`SLOT_BUSY`] = being written), mapped into this process.
struct SlotTable<T: Slot> {
    ptr: *mut T,
    len: usize,
    bytes: usize,
}

/// An entry type of a slot table.
trait Slot: Copy {
    /// The key word (goid, context pointer) and the owning process.
    fn key(&self) -> u64;
    fn tgid(&self) -> u32;
    /// Pointer to the key word of the slot at `p`.
    ///
    /// # Safety
    /// `p` must point into the mapping.
    unsafe fn key_ptr(p: *mut Self) -> *mut u64;
}

impl Slot for GSlot {
    fn key(&self) -> u64 {
        self.goid
    }
    fn tgid(&self) -> u32 {
        self.tgid
    }
    unsafe fn key_ptr(p: *mut Self) -> *mut u64 {
        // SAFETY: the caller guarantees `p` points into the mapping.
        unsafe { &raw mut (*p).goid }
    }
}

impl Slot for CtxSlot {
    fn key(&self) -> u64 {
        self.ctx
    }
    fn tgid(&self) -> u32 {
        self.tgid
    }
    unsafe fn key_ptr(p: *mut Self) -> *mut u64 {
        // SAFETY: the caller guarantees `p` points into the mapping.
        unsafe { &raw mut (*p).ctx }
    }
}

impl<T: Slot> SlotTable<T> {
    fn map(ebpf: &Ebpf, name: &str, len: u32) -> Result<SlotTable<T>> {
        use std::os::fd::{AsFd, AsRawFd};
        let Some(aya::maps::Map::Array(data)) = ebpf.map(name) else {
            bail!("map {name} missing");
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let len = len as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len * std::mem::size_of::<T>()).div_ceil(page) * page;
        // SAFETY: maps the value area of a BPF array created with BPF_F_MMAPABLE, exactly
        // its size rounded up to pages (what the kernel permits); the mapping stays valid
        // until `munmap` in Drop, independent of the fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of {name}: {}", std::io::Error::last_os_error());
        }
        Ok(SlotTable {
            ptr: ptr.cast(),
            len,
            bytes,
        })
    }

    /// Slot `i` if it holds an entry; `None` if free, being written, or changed while
    /// read (the kernel writes concurrently).
    fn get(&self, i: usize) -> Option<T> {
        debug_assert!(i < self.len);
        // SAFETY: `i < len`, so the slot lies inside the mapping; volatile reads because
        // the kernel writes the memory concurrently. Slots are plain integers.
        unsafe {
            let p = self.ptr.add(i);
            let key_p = T::key_ptr(p);
            let key = std::ptr::read_volatile(key_p);
            if key == 0 || key == SLOT_BUSY {
                return None;
            }
            let slot = std::ptr::read_volatile(p);
            (std::ptr::read_volatile(key_p) == key && slot.key() == key).then_some(slot)
        }
    }

    /// Every occupied slot.
    fn entries(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).filter_map(|i| self.get(i))
    }

    /// Frees every slot of a process that exited.
    fn clear(&self, tgid: u32) {
        for i in 0..self.len {
            if self.get(i).is_some_and(|s| s.tgid() == tgid) {
                // SAFETY: in bounds as above; the process is gone, so no probe of it
                // writes this slot any more.
                unsafe { std::ptr::write_volatile(T::key_ptr(self.ptr.add(i)), 0) };
            }
        }
    }
}

impl<T: Slot> Drop for SlotTable<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

pub struct Probes {
    /// Declared before `ebpf` so they are unmapped before the maps are closed.
    slots: SlotTable<GSlot>,
    ctx_slots: SlotTable<CtxSlot>,
    ebpf: Ebpf,
    max_live: u32,
    next_cookie: u32,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// The kernel program for a hook whose `*g` is in register `base_reg`.
fn program_name(hook: Hook, base_reg: u8) -> Option<&'static str> {
    use goroscope_common::reg;
    match (hook, base_reg) {
        (Hook::GoroutineCreate, reg::RBX) => Some("goroutine_create_rbx"),
        (Hook::GoroutineCreate, reg::RAX) => Some("goroutine_create_rax"),
        (Hook::GoroutineExit, reg::RAX) => Some("goroutine_exit_rax"),
        (Hook::ContextCreate, reg::RAX) => Some("context_create_rax"),
        (Hook::ContextCancel, reg::RAX) => Some("context_cancel_rax"),
        _ => None,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Probes {
    /// Loads the BPF object (maps created, nothing attached). `max_live` bounds the
    /// live-goroutine map.
    pub fn load(max_live: u32) -> Result<Probes> {
        let ebpf = EbpfLoader::new()
            .map_max_entries("LIVE", max_live)
            .load(BPF_OBJECT)
            .map_err(|e| {
                let hint = if is_root() {
                    ""
                } else {
                    " (loading BPF programs needs root, or CAP_BPF and CAP_PERFMON)"
                };
                anyhow::anyhow!("loading the BPF programs failed: {e}{hint}")
            })?;
        let slots = SlotTable::map(&ebpf, "GSLOTS", G_SLOTS)?;
        let ctx_slots = SlotTable::map(&ebpf, "CTX_SLOT_TABLE", CTX_SLOTS)?;
        Ok(Probes {
            slots,
            ctx_slots,
            ebpf,
            max_live,
            next_cookie: 0,
            links: Vec::new(),
        })
    }

    /// Attaches `program` for `hooks` at the binary's chosen sites. `path` is the file to
    /// attach to (e.g. `/proc/PID/exe`).
    pub fn attach(
        &mut self,
        bin: &Analysis,
        path: &Path,
        hooks: &[Hook],
        scope: Scope,
        program: Program,
    ) -> Result<Vec<ProbeSite>> {
        let mut attached = Vec::new();
        for &hook in hooks {
            let sites: Vec<&ProbeSite> =
                bin.probe_sites.iter().filter(|s| s.hook == hook).collect();
            if sites.is_empty() {
                bail!(
                    "{}: no probe site for {} ({})",
                    bin.path.display(),
                    hook.name(),
                    bin.missing_sites.join("; ")
                );
            }
            for site in sites {
                self.attach_at(bin, path, site, site.file_offset, scope, program)?;
                attached.push(site.clone());
            }
        }
        Ok(attached)
    }

    /// Attaches at an explicit file offset (the site's own, or e.g. the function entry
    /// for the benchmark's "usual way").
    pub fn attach_at(
        &mut self,
        bin: &Analysis,
        path: &Path,
        site: &ProbeSite,
        file_offset: u64,
        scope: Scope,
        program: Program,
    ) -> Result<()> {
        let prog_name = match program {
            Program::Noop => "noop",
            Program::Goroscope => program_name(site.hook, site.base_reg).with_context(|| {
                format!(
                    "no kernel program for {} with the g in register #{}",
                    site.hook.name(),
                    site.base_reg
                )
            })?,
        };
        let cookie = self.next_cookie;
        if cookie >= MAX_SITE_CONFIGS {
            bail!("too many probe sites (limit {MAX_SITE_CONFIGS})");
        }
        let g = &bin.offsets.g;
        let cfg = SiteConfig::new(g.goid, g.parent_goid, g.gopc, g.startpc).with_context(|| {
            format!(
                "runtime.g layout of {} not supported: parentGoid {}, gopc {}, startpc {} are not within {} bytes",
                bin.go_version,
                g.parent_goid,
                g.gopc,
                g.startpc,
                goroscope_common::G_WINDOW
            )
        })?;
        let mut configs: Array<_, SiteConfig> = Array::try_from(
            self.ebpf
                .map_mut("SITE_CONFIG")
                .context("map SITE_CONFIG missing")?,
        )?;
        configs.set(cookie, cfg, 0).context("writing SITE_CONFIG")?;
        if site.hook == Hook::ContextCreate {
            let mut ranges = bin.context_ranges();
            if ranges.len() > CTX_RANGES {
                tracing::warn!(
                    runs = ranges.len(),
                    "package context's code is split in more than {CTX_RANGES} runs: \
                     creation sites inside the others show as context functions"
                );
                ranges.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
                ranges.truncate(CTX_RANGES);
            }
            let mut c = CtxConfig {
                probe_addr: site.address,
                goid_off: g.goid,
                ..CtxConfig::default()
            };
            for (slot, (a, b)) in c.ranges.iter_mut().zip(ranges) {
                *slot = [a, b];
            }
            let mut ctx_configs: Array<_, CtxConfig> = Array::try_from(
                self.ebpf
                    .map_mut("CTX_CONFIG")
                    .context("map CTX_CONFIG missing")?,
            )?;
            ctx_configs
                .set(cookie, c, 0)
                .context("writing CTX_CONFIG")?;
        }

        let prog: &mut UProbe = self
            .ebpf
            .program_mut(prog_name)
            .with_context(|| format!("program {prog_name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {prog_name}"))?;
        }
        let uscope = match scope {
            Scope::Pid(pid) => UProbeScope::OneProcess(pid),
            Scope::AllProcesses => UProbeScope::AllProcesses,
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: Some(u64::from(cookie)),
        };
        let link = prog.attach(point, path, uscope).with_context(|| {
            format!(
                "attaching {} probe at {}+{:#x} (file offset {file_offset:#x}) in {}",
                site.hook.name(),
                site.function,
                site.offset,
                path.display()
            )
        })?;
        self.links.push((prog_name, link));
        self.next_cookie += 1;
        tracing::info!(
            hook = site.hook.name(),
            site = %format!("{}+{:#x}", site.function, site.offset),
            instruction = %site.instruction,
            emulated = site.emulated,
            "probe attached"
        );
        Ok(())
    }

    /// Detaches every probe (also done on drop).
    pub fn detach_all(&mut self) {
        for (name, link) in self.links.drain(..) {
            if let Some(p) = self.ebpf.program_mut(name) {
                if let Ok(p) = <&mut UProbe>::try_from(p) {
                    let _ = p.detach(link);
                }
            }
        }
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing"))
    }

    /// Kernel loss counters of one process, summed over CPUs.
    pub fn counters(&self, tgid: u32) -> Result<ProcCounters> {
        let map: PerCpuHashMap<_, u32, ProcCounters> =
            PerCpuHashMap::try_from(self.map("PROC_COUNTERS")?)?;
        let mut sum = ProcCounters::default();
        match map.get(&tgid, 0) {
            Ok(per_cpu) => {
                for c in per_cpu.iter() {
                    sum.read_errors += c.read_errors;
                    sum.live_map_full += c.live_map_full;
                    sum.site_map_full += c.site_map_full;
                    sum.context_map_full += c.context_map_full;
                    sum.context_site_map_full += c.context_site_map_full;
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading PROC_COUNTERS"),
        }
        Ok(sum)
    }

    /// Totals of one process (reads the whole live and site maps: use [`Probes::live`],
    /// [`Probes::sites`] and [`Totals::new`] when reading many processes).
    pub fn totals(&self, tgid: u32) -> Result<Totals> {
        let sites = self.sites()?;
        let live = self.live()?;
        Ok(Totals::new(
            self.counters(tgid)?,
            sites.get(&tgid),
            live.get(&tgid),
        ))
    }

    /// Goroutines created while attached and not exited yet, by process and goid.
    pub fn live(&self) -> Result<HashMap<u32, HashMap<u64, GoroutineInfo>>> {
        let mut out: HashMap<u32, HashMap<u64, GoroutineInfo>> = HashMap::new();
        for s in self.slots.entries() {
            out.entry(s.tgid).or_default().insert(s.goid, s.info);
        }
        let map: BpfHashMap<_, GoroutineKey, GoroutineInfo> =
            BpfHashMap::try_from(self.map("LIVE")?)?;
        for entry in map.iter() {
            // An entry deleted while iterating is skipped, not an error worth stopping for.
            let Ok((k, v)) = entry else { continue };
            out.entry(k.tgid).or_default().insert(k.goid, v);
        }
        Ok(out)
    }

    /// Per creation-site statistics, by process and gopc (runtime address).
    pub fn sites(&self) -> Result<HashMap<u32, HashMap<u64, SiteStats>>> {
        let map: BpfHashMap<_, SiteKey, SiteStats> = BpfHashMap::try_from(self.map("SITES")?)?;
        let mut out: HashMap<u32, HashMap<u64, SiteStats>> = HashMap::new();
        for entry in map.iter() {
            let Ok((k, v)) = entry else { continue };
            out.entry(k.tgid).or_default().insert(k.gopc, v);
        }
        Ok(out)
    }

    /// Cancelable contexts created while attached and not cancelled yet, by process and
    /// context pointer.
    pub fn contexts(&self) -> Result<HashMap<u32, HashMap<u64, CtxInfo>>> {
        let map: BpfHashMap<_, CtxKey, CtxInfo> = BpfHashMap::try_from(self.map("CTX_LIVE")?)?;
        let mut out: HashMap<u32, HashMap<u64, CtxInfo>> = HashMap::new();
        for entry in map.iter() {
            let Ok((k, v)) = entry else { continue };
            out.entry(k.tgid).or_default().insert(k.ctx, v);
        }
        // The slot table wins over a stale overflow entry of the same address.
        for s in self.ctx_slots.entries() {
            out.entry(s.tgid).or_default().insert(s.ctx, s.info);
        }
        Ok(out)
    }

    /// Per context-creation-site counters, by process and site (link-time address).
    pub fn context_sites(&self) -> Result<HashMap<u32, HashMap<u64, CtxSiteStats>>> {
        let map: BpfHashMap<_, SiteKey, CtxSiteStats> =
            BpfHashMap::try_from(self.map("CTX_SITES")?)?;
        let mut out: HashMap<u32, HashMap<u64, CtxSiteStats>> = HashMap::new();
        for entry in map.iter() {
            let Ok((k, v)) = entry else { continue };
            out.entry(k.tgid).or_default().insert(k.gopc, v);
        }
        Ok(out)
    }

    /// Removes everything the kernel holds about a process that has exited.
    pub fn purge(&mut self, tgid: u32) -> Result<()> {
        self.slots.clear(tgid);
        self.ctx_slots.clear(tgid);
        remove_where::<CtxKey, CtxInfo>(&mut self.ebpf, "CTX_LIVE", |k| k.tgid == tgid)?;
        remove_where::<SiteKey, CtxSiteStats>(&mut self.ebpf, "CTX_SITES", |k| k.tgid == tgid)?;
        remove_where::<GoroutineKey, GoroutineInfo>(&mut self.ebpf, "LIVE", |k| k.tgid == tgid)?;
        remove_where::<SiteKey, SiteStats>(&mut self.ebpf, "SITES", |k| k.tgid == tgid)?;
        let mut procs: PerCpuHashMap<_, u32, ProcCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut("PROC_COUNTERS")
                .context("map PROC_COUNTERS missing")?,
        )?;
        let _ = procs.remove(&tgid);
        Ok(())
    }

    /// Fill ratios of the bounded maps.
    pub fn map_fill(&self) -> Result<MapFill> {
        let slots = self.slots.entries().count();
        let sites: BpfHashMap<_, SiteKey, SiteStats> = BpfHashMap::try_from(self.map("SITES")?)?;
        let ctx_live: BpfHashMap<_, CtxKey, CtxInfo> = BpfHashMap::try_from(self.map("CTX_LIVE")?)?;
        Ok(MapFill {
            context_slots: self.ctx_slots.entries().count() as f64 / self.ctx_slots.len as f64,
            context_overflow: ctx_live.keys().count() as f64
                / f64::from(goroscope_common::DEFAULT_MAX_CONTEXTS),
            goroutine_slots: slots as f64 / self.slots.len.max(1) as f64,
            goroutine_overflow: self.live_fill()?,
            sites: sites.keys().count() as f64 / f64::from(goroscope_common::MAX_SITES),
        })
    }

    /// Fill ratio of the live-goroutine overflow map (0..1), counting entries.
    pub fn live_fill(&self) -> Result<f64> {
        let map: BpfHashMap<_, GoroutineKey, GoroutineInfo> =
            BpfHashMap::try_from(self.map("LIVE")?)?;
        Ok(map.keys().count() as f64 / f64::from(self.max_live.max(1)))
    }
}

/// Removes the entries of a hash map whose key matches.
fn remove_where<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    matches: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut map: BpfHashMap<_, K, V> = BpfHashMap::try_from(
        ebpf.map_mut(name)
            .with_context(|| format!("map {name} missing"))?,
    )?;
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| matches(k))
        .collect();
    for k in keys {
        let _ = map.remove(&k);
    }
    Ok(())
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}
