//! Context programs: creation of a cancelable context records it (creation site, creating
//! goroutine, parent) in the `CTX_SLOT_TABLE` slot table (or the `CTX_LIVE` overflow
//! map); cancellation frees it and counts it for its creation site in `CTX_SITES`. With
//! `CTX_ONE_PROBE` (the default) no cancel probe is attached: the agent reads the tracked
//! contexts' memory at each refresh, frees the slots of those cancelled or gone, and
//! keeps their counts itself.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::{map, uprobe},
    maps::{Array, HashMap},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use goroscope_common::{
    ctx_site_key, ctx_site_slot, ctx_slot, ctx_slot_index, CtxConfig, CtxInfo, CtxKey, CtxSiteSlot, CtxSiteStats, CtxSlot, Loss, SiteKey, CTX_CHECK_CALLER,
    CTX_FRAMES, CTX_HOLDER_ITABS, CTX_ONE_PROBE, CTX_SITE_SLOTS, CTX_SITE_WAYS, CTX_SLOTS, CTX_WAYS, DEFAULT_MAX_CONTEXTS, MAX_SITES, MAX_SITE_CONFIGS,
    SLOT_BUSY,
};

use crate::shared::{atomic_add, cas, cookie, current_tgid, lost, now_ns, read, site_entry};

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

/// Contexts whose creation site was not found, over all processes (global data, only to
/// space out their log lines).
static mut SITES_NOT_FOUND: u64 = 0;

/// Per context-creation-site counters in a table without hashing (see `CtxSiteSlot`).
#[map]
static CTX_SITE_TABLE: Array<CtxSiteSlot> =
    Array::with_max_entries(CTX_SITE_SLOTS, BPF_F_MMAPABLE);

/// The counters of a context creation site, created at its first cancel (or collection):
/// its slot in `CTX_SITE_TABLE` (claimed then), else its `CTX_SITES` entry.
#[inline(always)]
fn ctx_site(tgid: u32, site: u64) -> Option<*mut CtxSiteStats> {
    let key = ctx_site_key(site);
    for way in 0..CTX_SITE_WAYS {
        let Some(slot) = CTX_SITE_TABLE.get_ptr_mut(ctx_site_slot(tgid, site, way)) else {
            continue;
        };
        // SAFETY: `slot` points into an array map value valid for the program's duration;
        // a free slot is claimed with compare-and-swap before its other fields are
        // written, and its key word set last.
        unsafe {
            let key_p = &raw mut (*slot).key;
            let k = *key_p;
            if k == key && (*slot).tgid == tgid {
                return Some(&raw mut (*slot).stats);
            }
            if k == 0 && cas(key_p, 0, SLOT_BUSY) {
                (*slot).tgid = tgid;
                (*slot).stats = CtxSiteStats::default();
                *key_p = key;
                return Some(&raw mut (*slot).stats);
            }
        }
    }
    let zero = CtxSiteStats::default();
    site_entry(&CTX_SITES, tgid, site, || Some(&zero))
}

/// Key of a context in `CTX_LIVE`.
#[inline(always)]
fn ctx_key(tgid: u32, c: u64) -> CtxKey {
    CtxKey {
        tgid,
        _pad: 0,
        ctx: c,
    }
}

#[inline(always)]
fn in_context_pkg(cfg: &CtxConfig, pc: u64) -> bool {
    cfg.ranges.iter().any(|r| pc >= r[0] && pc < r[1])
}

/// The creation site of a context: the first return address outside package `context`
/// (link-time), found by walking frame pointers up from `propagateCancel` (`rsp` and
/// `rbp` at its `push rbp`; `bias` the load bias); 0 if not found within [`CTX_FRAMES`]
/// frames. The return address at `rsp` is into `propagateCancel`'s caller, in package
/// `context` unless the binary calls it from outside ([`CTX_CHECK_CALLER`]): only then
/// is it read; the walk goes on from the caller's frame record at `rbp`, one read of 16
/// bytes a frame (the saved `rbp` and the return address). So a `WithCancel` called
/// from outside `context` costs one read of the process's memory (~0.1 µs each here).
#[inline(always)]
fn creation_site(cfg: &CtxConfig, rsp: u64, rbp: u64, bias: u64) -> u64 {
    if cfg.flags & CTX_CHECK_CALLER != 0 {
        let Ok(ret) = read::<u64>(rsp) else {
            return 0;
        };
        let link = ret.wrapping_sub(bias);
        if !in_context_pkg(cfg, link) {
            return link;
        }
    }
    let mut fp = rbp;
    for _ in 0..CTX_FRAMES {
        let Ok([next, ret]) = read::<[u64; 2]>(fp) else {
            break;
        };
        if ret == 0 {
            break;
        }
        let link = ret.wrapping_sub(bias);
        if !in_context_pkg(cfg, link) {
            return link;
        }
        fp = next;
    }
    0
}

/// Logs a context whose creation site was not found (it is tracked under site 0): the
/// 1st, 2nd, 4th, 8th… such context since load, so a recurring cause logs ~log2(n) lines.
#[inline(never)]
fn log_site_not_found(ctx: &ProbeContext, tgid: u32) {
    // SAFETY: global data (an array map value), valid for the program's duration. Not
    // atomic (the BPF v1 instruction set returns nothing from an atomic add): concurrent
    // CPUs may miss a count, which only shifts which line is written.
    let n = unsafe {
        let p = &raw mut SITES_NOT_FOUND;
        *p += 1;
        *p
    };
    if n.is_power_of_two() {
        warn!(
            ctx,
            "pid {}: creation site of a context not found within {} frames (no frame \
             pointers?): it counts under site 0 ({} such contexts since load)",
            tgid,
            CTX_FRAMES,
            n
        );
    }
}

/// A cancelable context was created: at `push rbp` of `(*cancelCtx).propagateCancel`
/// (Go ≥ 1.21), RAX = the new context, RBX/RCX = the parent (itab, data), R14 = the
/// current `*g`, `[rsp]` the return address into the caller and RBP its frame pointer.
#[uprobe]
pub fn context_create_rax(ctx: ProbeContext) -> u32 {
    // SAFETY: the uprobe context is the task's `pt_regs`; constant-offset loads.
    let (c, parent_itab, parent, rsp, rbp, g, ip) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.rsp, r.rbp, r.r14, r.rip)
    };
    context_created(&ctx, c, parent_itab, parent, (rsp, rbp, g, ip))
}

/// The same in Go 1.19–1.20, where `context.propagateCancel(parent Context, child
/// canceler)` is a function: RAX/RBX = the parent (itab, data), RCX/RDI = the child
/// (itab, data); the data word is the new `*cancelCtx` (or `*timerCtx`, whose first field
/// it is).
#[uprobe]
pub fn context_create_rdi(ctx: ProbeContext) -> u32 {
    // SAFETY: the uprobe context is the task's `pt_regs`; constant-offset loads.
    let (c, parent_itab, parent, rsp, rbp, g, ip) = unsafe {
        let r = &*ctx.regs;
        (r.rdi, r.rax, r.rbx, r.rsp, r.rbp, r.r14, r.rip)
    };
    context_created(&ctx, c, parent_itab, parent, (rsp, rbp, g, ip))
}

/// Records context `c` created with parent `(parent_itab, parent)`; `regs` are RSP, RBP,
/// R14 (the current `*g`) and RIP at the site.
#[inline(always)]
fn context_created(
    ctx: &ProbeContext,
    c: u64,
    parent_itab: u64,
    parent: u64,
    (rsp, rbp, g, ip): (u64, u64, u64, u64),
) -> u32 {
    let Some(cfg) = CTX_CONFIG.get(cookie(ctx)) else {
        return 0;
    };
    let tgid = current_tgid(cfg.tgid);
    let bias = ip.wrapping_sub(cfg.probe_addr) & !0xfff;
    let site = creation_site(cfg, rsp, rbp, bias);
    if site == 0 {
        log_site_not_found(ctx, tgid);
    }
    let info = CtxInfo {
        created_ns: now_ns(),
        site,
        g,
        parent,
        parent_itab,
    };
    record_context(ctx, (cfg, bias), tgid, c, &info);
    0
}

/// Records a created context in its slot, or else in `CTX_LIVE`; `(cfg, bias)`: the
/// probe's configuration and the process's load bias.
#[inline(always)]
fn record_context(
    ctx: &ProbeContext,
    (cfg, bias): (&CtxConfig, u64),
    tgid: u32,
    c: u64,
    info: &CtxInfo,
) {
    let home = ctx_slot_index(tgid, c);
    let mut free = None;
    for way in 0..CTX_WAYS {
        let Some(slot) = CTX_SLOT_TABLE.get_ptr_mut(ctx_slot(home, way)) else {
            continue;
        };
        // SAFETY: `slot` points into an array map value valid for the program's duration;
        // it is claimed with compare-and-swap before any other field is written.
        unsafe {
            let ctx_p = &raw mut (*slot).ctx;
            let prev = *ctx_p;
            if prev == c && (*slot).tgid == tgid {
                if !cas(ctx_p, c, SLOT_BUSY) {
                    // Freed or taken meanwhile by the agent or another CPU.
                    break;
                }
                // The same address again without a cancel seen in between: the old
                // context was garbage collected (see `reused`).
                let old = (*slot).info;
                reused(ctx, (cfg, bias), tgid, &old, info.created_ns);
                (*slot).info = *info;
                *ctx_p = c;
                return;
            }
            if prev == 0 && free.is_none() {
                free = Some(slot);
            }
        }
    }
    if let Some(slot) = free {
        // SAFETY: as above.
        unsafe {
            let ctx_p = &raw mut (*slot).ctx;
            if cas(ctx_p, 0, SLOT_BUSY) {
                (*slot).tgid = tgid;
                (*slot).info = *info;
                *ctx_p = c;
                return;
            }
        }
    }
    let key = ctx_key(tgid, c);
    if CTX_LIVE.insert(&key, info, BPF_NOEXIST as u64).is_err() {
        // SAFETY: the value is copied out at once.
        match unsafe { CTX_LIVE.get(&key) }.copied() {
            Some(old) => {
                reused(ctx, (cfg, bias), tgid, &old, info.created_ns);
                let _ = CTX_LIVE.insert(&key, info, BPF_ANY as u64);
            }
            None => lost(ctx, tgid, Loss::ContextMapFull),
        }
    }
}

/// Counts a tracked context whose address came back in a new context: it was garbage
/// collected. With the cancel probe it was never cancelled (collected). Without it
/// (`CTX_ONE_PROBE`) the agent had not judged it yet: counted cancelled (lifetime up to
/// now, an upper bound) when a `*cancelCtx` ancestor held it in its `children` map — a
/// held context becomes garbage only once cancelled (or with that ancestor, collected
/// uncancelled itself: then it is wrongly counted cancelled) — else collected: under a
/// `Background`/`TODO` parent nothing holds it, cancelled or not (then possibly cancelled
/// and counted collected). `now`: the new context's creation time.
#[inline(always)]
fn reused(
    ctx: &ProbeContext,
    (cfg, bias): (&CtxConfig, u64),
    tgid: u32,
    old: &CtxInfo,
    now: u64,
) {
    let Some(st) = ctx_site(tgid, old.site) else {
        lost(ctx, tgid, Loss::ContextSiteMapFull);
        return;
    };
    if cfg.flags & CTX_ONE_PROBE != 0 && held(cfg, bias, old) {
        let lifetime = now.saturating_sub(old.created_ns);
        // SAFETY: `st` points into a map value.
        unsafe {
            atomic_add(&raw mut (*st).cancelled, 1);
            atomic_add(&raw mut (*st).lifetime_ns_sum, lifetime);
        }
    } else {
        // SAFETY: `st` points into a map value.
        atomic_add(unsafe { &raw mut (*st).collected }, 1);
    }
}

/// Whether the parent of context `c` held it in a `children` map: its type (itab) is one
/// the agent saw holding children (`cfg.holder_itabs`: no memory read, and right even
/// when the parent is gone too), or, read now, the parent is a `*cancelCtx` (or a struct
/// starting with one: `timerCtx`, …): the type word of its `done` is the process's `chan
/// struct{}` type (`cfg.chan_type`, learned by the agent; false while unknown). A parent
/// that wraps one (`valueCtx`) is not followed: its first words are not a context for
/// every type (`Background`'s data word points at `runtime.zerobase`), and reading on
/// from there once counted children of `Background` as held.
#[inline(always)]
fn held(cfg: &CtxConfig, bias: u64, c: &CtxInfo) -> bool {
    let itab = c.parent_itab.wrapping_sub(bias);
    for i in 0..CTX_HOLDER_ITABS {
        let h = cfg.holder_itabs[i];
        if h == 0 {
            break;
        }
        if h == itab {
            return true;
        }
    }
    cfg.chan_type != 0
        && c.parent != 0
        && read::<u64>(c.parent + cfg.done_off as u64)
            .is_ok_and(|t| t == cfg.chan_type.wrapping_add(bias))
}

/// Takes the record of a context being cancelled out of its slot or `CTX_LIVE`; `None`
/// if it is not tracked (cancelled already, or created before attach).
#[inline(always)]
fn take_context(tgid: u32, c: u64) -> Option<CtxInfo> {
    let home = ctx_slot_index(tgid, c);
    for way in 0..CTX_WAYS {
        let Some(slot) = CTX_SLOT_TABLE.get_ptr_mut(ctx_slot(home, way)) else {
            continue;
        };
        // SAFETY: as in `record_context`; only the CPU whose compare-and-swap frees the
        // slot takes the record, so concurrent cancels of one context count once.
        unsafe {
            let ctx_p = &raw mut (*slot).ctx;
            if *ctx_p == c && (*slot).tgid == tgid {
                let info = (*slot).info;
                if cas(ctx_p, c, 0) {
                    return Some(info);
                }
            }
        }
    }
    let key = ctx_key(tgid, c);
    // SAFETY: the value is copied out before the entry is deleted.
    unsafe { CTX_LIVE.get(&key) }
        .copied()
        .filter(|_| CTX_LIVE.remove(&key).is_ok())
}

/// A context is being cancelled: at `push rbp` of `(*cancelCtx).cancel`, RAX = the
/// context. Repeated cancels (and cancels of contexts created before attach) find no
/// entry and cost one lookup.
#[uprobe]
pub fn context_cancel_rax(ctx: ProbeContext) -> u32 {
    // SAFETY: as above.
    let c = unsafe { (*ctx.regs).rax };
    let tgid = current_tgid(0);
    let Some(info) = take_context(tgid, c) else {
        return 0;
    };
    let lifetime = now_ns().saturating_sub(info.created_ns);
    match ctx_site(tgid, info.site) {
        // SAFETY: `st` points into a map value.
        Some(st) => unsafe {
            atomic_add(&raw mut (*st).cancelled, 1);
            atomic_add(&raw mut (*st).lifetime_ns_sum, lifetime);
        },
        None => lost(&ctx, tgid, Loss::ContextSiteMapFull),
    }
    0
}
