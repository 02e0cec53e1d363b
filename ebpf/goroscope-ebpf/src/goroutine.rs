//! Goroutine programs: creation records the goroutine in the `GSLOTS` slot table (or the
//! `LIVE` overflow map); exit frees it and adds its lifetime to its creation site's
//! histogram in `SITES`.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE},
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::ProbeContext,
};
use goroscope_common::{
    lifetime_bucket, slot_index, GSlot, GoroutineInfo, GoroutineKey, Loss, SiteConfig, SiteKey,
    SiteStats, DEFAULT_MAX_LIVE, G_SLOTS, G_WINDOW_WORDS, MAX_SITES, MAX_SITE_CONFIGS, SLOT_BUSY,
};

use crate::shared::{
    atomic_add, cas, cookie, current_tgid, lost, now_ns, read_or_count, site_entry,
};

/// Per attached site configuration, indexed by the uprobe attach cookie.
#[map]
static SITE_CONFIG: Array<SiteConfig> = Array::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Goroutines created while attached, until they exit: the fast path (see `GSlot`).
#[map]
static GSLOTS: Array<GSlot> = Array::with_max_entries(G_SLOTS, BPF_F_MMAPABLE);

/// Goroutines created while attached whose slot was taken, until they exit.
#[map]
static LIVE: HashMap<GoroutineKey, GoroutineInfo> = HashMap::with_max_entries(DEFAULT_MAX_LIVE, 0);

/// Per creation-site exit statistics, shared by all CPUs (atomic adds).
#[map]
static SITES: HashMap<SiteKey, SiteStats> = HashMap::with_max_entries(MAX_SITES, 0);

/// A zeroed `SiteStats` to insert from (too large for the 512-byte BPF stack).
#[map]
static ZERO_SITE: PerCpuArray<SiteStats> = PerCpuArray::with_max_entries(1, 0);

/// The statistics of a creation site, created at its first exit.
#[inline(always)]
fn site(tgid: u32, gopc: u64) -> Option<*mut SiteStats> {
    site_entry(&SITES, tgid, gopc, || ZERO_SITE.get(0))
}

/// Key of a goroutine in `LIVE`.
#[inline(always)]
fn live_key(tgid: u32, goid: u64) -> GoroutineKey {
    GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    }
}

#[inline(always)]
fn on_create(ctx: &ProbeContext, g: u64) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx)) else {
        return 0;
    };
    let tgid = current_tgid(cfg.tgid);
    let Some(w) = read_or_count::<[u64; G_WINDOW_WORDS]>(ctx, tgid, g + cfg.window_off as u64)
    else {
        return 0;
    };
    // Masking keeps every index provably in bounds for the verifier (24 words < 32).
    let word = |i: u8| w.get((i & 31) as usize).copied().unwrap_or(0);
    let goid = word(cfg.goid_word);
    let info = GoroutineInfo {
        created_ns: now_ns(),
        gopc: word(cfg.gopc_word),
        startpc: word(cfg.startpc_word),
        parent_goid: word(cfg.parent_goid_word),
    };
    if let Some(slot) = GSLOTS.get_ptr_mut(slot_index(tgid, g)) {
        // SAFETY: `slot` points into an array map value valid for the program's duration;
        // it is claimed with compare-and-swap before any other field is written.
        unsafe {
            let goid_p = &raw mut (*slot).goid;
            let prev = *goid_p;
            // Free, or left by an earlier goroutine on this same g whose exit was missed.
            let ours = prev == 0 || ((*slot).g == g && (*slot).tgid == tgid && prev != SLOT_BUSY);
            if ours && cas(goid_p, prev, SLOT_BUSY) {
                (*slot).g = g;
                (*slot).tgid = tgid;
                (*slot).info = info;
                *goid_p = goid;
                return 0;
            }
        }
    }
    if LIVE
        .insert(&live_key(tgid, goid), &info, BPF_ANY as u64)
        .is_err()
    {
        lost(ctx, tgid, Loss::LiveMapFull);
    }
    0
}

/// Takes the record of an exiting goroutine on `g` out of its slot: the slot's record
/// names `g` when the goroutine was created while attached and found its slot free (a
/// `g` runs one goroutine at a time, and a creation on a `g` takes over a record left
/// there), so no read of the process's memory is needed. `None` otherwise.
#[inline(always)]
fn take_slot(tgid: u32, g: u64) -> Option<GoroutineInfo> {
    let slot = GSLOTS.get_ptr_mut(slot_index(tgid, g))?;
    // SAFETY: as in `on_create`; the slot is ours if it names this `g`.
    unsafe {
        let goid = (*slot).goid;
        if goid != 0 && goid != SLOT_BUSY && (*slot).g == g && (*slot).tgid == tgid {
            let info = (*slot).info;
            (*slot).goid = 0;
            return Some(info);
        }
    }
    None
}

/// Takes the record of an exiting goroutine `goid` out of the `LIVE` map; `None` if it
/// was created before attach (or its creation was lost).
#[inline(always)]
fn take_live(tgid: u32, goid: u64) -> Option<GoroutineInfo> {
    let key = live_key(tgid, goid);
    // SAFETY: the value is copied out before the entry is deleted.
    let created = unsafe { LIVE.get(&key) }.copied();
    if created.is_some() {
        let _ = LIVE.remove(&key);
    }
    created
}

#[inline(always)]
fn on_exit(ctx: &ProbeContext, g: u64) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx)) else {
        return 0;
    };
    let tgid = current_tgid(cfg.tgid);
    let created = match take_slot(tgid, g) {
        Some(info) => Some(info),
        None => {
            let Some(goid) = read_or_count::<u64>(ctx, tgid, g + cfg.goid_off as u64) else {
                return 0;
            };
            take_live(tgid, goid)
        }
    };
    match created {
        Some(info) => {
            let lifetime = now_ns().saturating_sub(info.created_ns);
            let Some(s) = site(tgid, info.gopc) else {
                lost(ctx, tgid, Loss::SiteMapFull);
                return 0;
            };
            let b = lifetime_bucket(lifetime);
            // SAFETY: `s` points into a map value; `get_mut` bounds the bucket index.
            unsafe {
                atomic_add(&raw mut (*s).lifetime_ns_sum, lifetime);
                if let Some(slot) = (*s).lifetime_buckets.get_mut(b) {
                    atomic_add(slot, 1);
                }
            }
        }
        None => {
            let Some(gopc) = read_or_count::<u64>(ctx, tgid, g + cfg.gopc_off as u64) else {
                return 0;
            };
            match site(tgid, gopc) {
                // SAFETY: `s` points into a map value.
                Some(s) => atomic_add(unsafe { &raw mut (*s).exited_untracked }, 1),
                None => lost(ctx, tgid, Loss::SiteMapFull),
            }
        }
    }
    0
}

/// One program per (hook, register holding the `*g`): each reads its register with a
/// constant-offset load from `pt_regs` (the verifier rejects computed context offsets).
macro_rules! g_probe {
    ($name:ident, $handler:ident, $reg:ident) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            // SAFETY: for uprobe programs the context is the probed task's `pt_regs`;
            // the verifier allows direct loads from it at constant offsets.
            let g = unsafe { (*ctx.regs).$reg };
            $handler(&ctx, g)
        }
    };
}

// Creation at `CALL runtime.runqput` (or the nop before it): new g in RBX.
g_probe!(goroutine_create_rbx, on_create, rbx);
// Creation fallback at the RETs of `runtime.newproc1`: new g in RAX.
g_probe!(goroutine_create_rax, on_create, rax);
// Exit at `push rbp` of `runtime.gdestroy` / `runtime.goexit0`: g in RAX.
g_probe!(goroutine_exit_rax, on_exit, rax);
