//! goroscope kernel programs: uprobes at the Go runtime sites chosen by the agent's
//! binary analysis. Kept small and boring: read a register, read a few fields of
//! `runtime.g` at offsets given by userspace, update bounded maps.
//!
//! State stays in the kernel (no event stream): `GSLOTS` (a slot table indexed by the
//! `g` address, overflowing into the `LIVE` hash map) holds goroutines created while
//! attached, for their age and creation site; `SITES` holds per-(process, `go`
//! statement) exit counts and a lifetime histogram. The agent reads the maps when it
//! needs them (the slot table through mmap), so the hot path never wakes userspace.
//! Every map is bounded and what does not fit is counted in `PROC_COUNTERS`.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add` in `core`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use goroscope_common::{
    ctx_slot_index, lifetime_bucket, slot_index, CtxConfig, CtxInfo, CtxKey, CtxSiteStats,
    CtxSlot, CTX_SLOTS, GSlot, GoroutineInfo,
    GoroutineKey, Loss, ProcCounters, SiteConfig, SiteKey, SiteStats, CTX_FRAMES, DEFAULT_MAX_CONTEXTS,
    DEFAULT_MAX_LIVE, G_SLOTS, G_WINDOW_WORDS, MAX_PROCS, MAX_SITES, MAX_SITE_CONFIGS, SLOT_BUSY,
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

/// Per-process loss counters, per CPU (touched only when something is lost).
#[map]
static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> = PerCpuHashMap::with_max_entries(MAX_PROCS, 0);

/// Per context-probe configuration, indexed by the uprobe attach cookie.
#[map]
static CTX_CONFIG: Array<CtxConfig> = Array::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Cancelable contexts created while attached, until they are cancelled: the fast path
/// (see `CtxSlot`).
#[map]
static CTX_SLOT_TABLE: Array<CtxSlot> = Array::with_max_entries(CTX_SLOTS, BPF_F_MMAPABLE);

/// Cancelable contexts created while attached whose slot was taken, until cancelled.
#[map]
static CTX_LIVE: HashMap<CtxKey, CtxInfo> = HashMap::with_max_entries(DEFAULT_MAX_CONTEXTS, 0);

/// Per context-creation-site counters (atomic adds).
#[map]
static CTX_SITES: HashMap<SiteKey, CtxSiteStats> = HashMap::with_max_entries(MAX_SITES, 0);

/// A zeroed `SiteStats` to insert from (too large for the 512-byte BPF stack).
#[map]
static ZERO_SITE: PerCpuArray<SiteStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: callers pass pointers into map values, valid and 8-byte aligned for the
    // duration of the program; the intrinsic compiles to a BPF atomic add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
}

/// Compare-and-swap; returns whether `*p` was `old` and is now `new`.
#[inline(always)]
fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: as for `atomic_add`; compiles to a BPF cmpxchg.
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::SeqCst },
            { core::intrinsics::AtomicOrdering::SeqCst },
        >(p, old, new)
        .1
    }
}

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: bpf_get_attach_cookie only reads the context pointer the kernel gave us.
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_user copies from user memory with fault handling; a bad
    // pointer returns an error instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const T) }
}

/// Counts a loss for the process (rare path).
#[inline(always)]
fn lost(tgid: u32, reason: Loss) {
    if PROC_COUNTERS.get_ptr_mut(&tgid).is_none() {
        let _ = PROC_COUNTERS.insert(&tgid, &ProcCounters::default(), BPF_NOEXIST as u64);
    }
    if let Some(p) = PROC_COUNTERS.get_ptr_mut(&tgid) {
        // SAFETY: this CPU's slot of a per-CPU map value, valid for the duration of the
        // program; uprobe programs do not migrate between CPUs.
        if let Some(n) = unsafe { &mut *p }.lost.get_mut(reason as usize) {
            *n += 1;
        }
    }
}

#[inline(always)]
fn site(tgid: u32, gopc: u64) -> Option<*mut SiteStats> {
    let key = SiteKey {
        tgid,
        _pad: 0,
        gopc,
    };
    if let Some(p) = SITES.get_ptr_mut(&key) {
        return Some(p);
    }
    let zero = ZERO_SITE.get(0)?;
    let _ = SITES.insert(&key, zero, BPF_NOEXIST as u64);
    SITES.get_ptr_mut(&key)
}

#[inline(always)]
fn on_create(ctx: &ProbeContext, g: u64) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx) as u32) else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Ok(w) = read::<[u64; G_WINDOW_WORDS]>(g + cfg.window_off as u64) else {
        lost(tgid, Loss::ReadError);
        return 0;
    };
    // Masking keeps every index provably in bounds for the verifier (24 words < 32).
    let word = |i: u8| w.get((i & 31) as usize).copied().unwrap_or(0);
    let goid = word(cfg.goid_word);
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    let info = GoroutineInfo {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        created_ns: unsafe { bpf_ktime_get_ns() },
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
    if LIVE.insert(&key, &info, BPF_ANY as u64).is_err() {
        lost(tgid, Loss::LiveMapFull);
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &ProbeContext, g: u64) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx) as u32) else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Ok(goid) = read::<u64>(g + cfg.goid_off as u64) else {
        lost(tgid, Loss::ReadError);
        return 0;
    };
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    let mut created = None;
    if let Some(slot) = GSLOTS.get_ptr_mut(slot_index(tgid, g)) {
        // SAFETY: as in `on_create`; the slot is ours if it names this goroutine.
        unsafe {
            if (*slot).goid == goid && (*slot).g == g && (*slot).tgid == tgid {
                created = Some((*slot).info);
                (*slot).goid = 0;
            }
        }
    }
    if created.is_none() {
        // SAFETY: the value is copied out before the entry is deleted.
        created = unsafe { LIVE.get(&key) }.copied();
        if created.is_some() {
            let _ = LIVE.remove(&key);
        }
    }
    match created {
        Some(info) => {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            let lifetime = unsafe { bpf_ktime_get_ns() }.saturating_sub(info.created_ns);
            let Some(s) = site(tgid, info.gopc) else {
                lost(tgid, Loss::SiteMapFull);
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
            let Ok(gopc) = read::<u64>(g + cfg.gopc_off as u64) else {
                lost(tgid, Loss::ReadError);
                return 0;
            };
            match site(tgid, gopc) {
                // SAFETY: `s` points into a map value.
                Some(s) => atomic_add(unsafe { &raw mut (*s).exited_untracked }, 1),
                None => lost(tgid, Loss::SiteMapFull),
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

#[inline(always)]
fn ctx_site(tgid: u32, site: u64) -> Option<*mut CtxSiteStats> {
    let key = SiteKey {
        tgid,
        _pad: 0,
        gopc: site,
    };
    if let Some(p) = CTX_SITES.get_ptr_mut(&key) {
        return Some(p);
    }
    let _ = CTX_SITES.insert(&key, &CtxSiteStats::default(), BPF_NOEXIST as u64);
    CTX_SITES.get_ptr_mut(&key)
}

#[inline(always)]
fn in_context_pkg(cfg: &CtxConfig, pc: u64) -> bool {
    cfg.ranges.iter().any(|r| pc >= r[0] && pc < r[1])
}

/// A cancelable context was created: at `push rbp` of `(*cancelCtx).propagateCancel`,
/// RAX = the new context, RBX/RCX = the parent (itab, data), R14 = the current `*g`, and
/// `[rsp]` the return address into the caller.
#[uprobe]
pub fn context_create_rax(ctx: ProbeContext) -> u32 {
    // SAFETY: the uprobe context is the task's `pt_regs`; constant-offset loads.
    let (c, parent_itab, parent, rsp, rbp, g, ip) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.rsp, r.rbp, r.r14, r.rip)
    };
    let Some(cfg) = CTX_CONFIG.get(cookie(&ctx) as u32) else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let bias = ip.wrapping_sub(cfg.probe_addr) & !0xfff;
    // Walk return addresses (frame pointers) up to the first caller outside `context`.
    let mut site = 0u64;
    let mut pc = read::<u64>(rsp).unwrap_or(0);
    let mut fp = rbp;
    for _ in 0..CTX_FRAMES {
        if pc == 0 {
            break;
        }
        let link = pc.wrapping_sub(bias);
        if !in_context_pkg(cfg, link) {
            site = link;
            break;
        }
        let Ok(frame) = read::<[u64; 2]>(fp) else {
            break;
        };
        fp = frame[0];
        pc = frame[1];
    }
    let goid = read::<u64>(g + cfg.goid_off as u64).unwrap_or(0);
    let info = CtxInfo {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        created_ns: unsafe { bpf_ktime_get_ns() },
        site,
        goid,
        parent,
        parent_itab,
    };
    if let Some(slot) = CTX_SLOT_TABLE.get_ptr_mut(ctx_slot_index(tgid, c)) {
        // SAFETY: `slot` points into an array map value valid for the program's duration;
        // it is claimed with compare-and-swap before any other field is written.
        unsafe {
            let ctx_p = &raw mut (*slot).ctx;
            let prev = *ctx_p;
            let again = prev == c && (*slot).tgid == tgid;
            if (prev == 0 || again) && cas(ctx_p, prev, SLOT_BUSY) {
                if again {
                    // The same address again without a cancel in between: the old
                    // context was garbage collected without ever being cancelled.
                    collected(tgid, (*slot).info.site);
                }
                (*slot).tgid = tgid;
                (*slot).info = info;
                *ctx_p = c;
                return 0;
            }
        }
    }
    let key = CtxKey {
        tgid,
        _pad: 0,
        ctx: c,
    };
    if CTX_LIVE.insert(&key, &info, BPF_NOEXIST as u64).is_err() {
        // SAFETY: the value is copied out at once.
        match unsafe { CTX_LIVE.get(&key) }.copied() {
            Some(old) => {
                collected(tgid, old.site);
                let _ = CTX_LIVE.insert(&key, &info, BPF_ANY as u64);
            }
            None => lost(tgid, Loss::ContextMapFull),
        }
    }
    0
}

/// Counts a context never cancelled whose memory was reused (rare path).
#[inline(always)]
fn collected(tgid: u32, site: u64) {
    match ctx_site(tgid, site) {
        // SAFETY: `st` points into a map value.
        Some(st) => atomic_add(unsafe { &raw mut (*st).collected }, 1),
        None => lost(tgid, Loss::ContextSiteMapFull),
    }
}

/// A context is being cancelled: at `push rbp` of `(*cancelCtx).cancel`, RAX = the
/// context. Repeated cancels (and cancels of contexts created before attach) find no
/// entry and cost one lookup.
#[uprobe]
pub fn context_cancel_rax(ctx: ProbeContext) -> u32 {
    // SAFETY: as above.
    let c = unsafe { (*ctx.regs).rax };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut found = None;
    if let Some(slot) = CTX_SLOT_TABLE.get_ptr_mut(ctx_slot_index(tgid, c)) {
        // SAFETY: as in `context_create_rax`; only the CPU whose compare-and-swap frees
        // the slot counts the cancel, so concurrent cancels of one context count once.
        unsafe {
            let ctx_p = &raw mut (*slot).ctx;
            if *ctx_p == c && (*slot).tgid == tgid {
                let info = (*slot).info;
                if cas(ctx_p, c, 0) {
                    found = Some(info);
                }
            }
        }
    }
    if found.is_none() {
        let key = CtxKey {
            tgid,
            _pad: 0,
            ctx: c,
        };
        // SAFETY: the value is copied out before the entry is deleted.
        found = unsafe { CTX_LIVE.get(&key) }
            .copied()
            .filter(|_| CTX_LIVE.remove(&key).is_ok());
    }
    let Some(info) = found else {
        return 0;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let lifetime = unsafe { bpf_ktime_get_ns() }.saturating_sub(info.created_ns);
    match ctx_site(tgid, info.site) {
        // SAFETY: `st` points into a map value.
        Some(st) => unsafe {
            atomic_add(&raw mut (*st).cancelled, 1);
            atomic_add(&raw mut (*st).lifetime_ns_sum, lifetime);
        },
        None => lost(tgid, Loss::ContextSiteMapFull),
    }
    0
}

/// Does nothing: attached at goroscope's sites it measures the floor cost of a uprobe
/// there (`cargo xtask bench overhead`).
#[uprobe]
pub fn noop(_ctx: ProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
