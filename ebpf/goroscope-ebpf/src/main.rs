//! goroscope kernel programs: uprobes at the Go runtime sites chosen by the agent's
//! binary analysis. Kept small and boring: read a register, read a few fields of
//! `runtime.g` at offsets given by userspace, update bounded maps.
//!
//! State stays in the kernel (no event stream): `LIVE` holds goroutines created while
//! attached (for their age and creation site), `SITES` holds per-(process, `go`
//! statement) counts and a lifetime histogram. The agent reads the maps when it needs
//! them, so the hot path never wakes userspace. Every map is bounded and a full map is
//! counted in `PROC_COUNTERS`.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add` in `core`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use goroscope_common::{
    lifetime_bucket, GoroutineInfo, GoroutineKey, ProcCounters, SiteConfig, SiteKey, SiteStats,
    DEFAULT_MAX_LIVE, MAX_PROCS, MAX_SITES, MAX_SITE_CONFIGS,
};

/// Per attached site configuration, indexed by the uprobe attach cookie.
#[map]
static SITE_CONFIG: Array<SiteConfig> = Array::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Goroutines created while attached, until they exit.
#[map]
static LIVE: HashMap<GoroutineKey, GoroutineInfo> = HashMap::with_max_entries(DEFAULT_MAX_LIVE, 0);

/// Per creation-site statistics, shared by all CPUs (atomic adds).
#[map]
static SITES: HashMap<SiteKey, SiteStats> = HashMap::with_max_entries(MAX_SITES, 0);

/// Per-process counters, per CPU (no contention on the hot path; the agent sums).
#[map]
static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> = PerCpuHashMap::with_max_entries(MAX_PROCS, 0);

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

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: bpf_get_attach_cookie only reads the context pointer the kernel gave us.
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn read(g: u64, off: u32) -> Result<u64, i32> {
    // SAFETY: bpf_probe_read_user copies from user memory with fault handling; a bad
    // pointer returns an error instead of faulting.
    unsafe { bpf_probe_read_user((g + off as u64) as *const u64) }
}

#[inline(always)]
fn proc_counters(tgid: u32) -> Option<*mut ProcCounters> {
    if let Some(p) = PROC_COUNTERS.get_ptr_mut(&tgid) {
        return Some(p);
    }
    let _ = PROC_COUNTERS.insert(&tgid, &ProcCounters::default(), BPF_NOEXIST as u64);
    PROC_COUNTERS.get_ptr_mut(&tgid)
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
    let Some(pc) = proc_counters(tgid) else {
        return 0;
    };
    // SAFETY: `pc` points at this CPU's slot of a per-CPU map value, valid for the
    // duration of this program; uprobe programs do not migrate between CPUs.
    let pc = unsafe { &mut *pc };
    let (Ok(goid), Ok(parent_goid), Ok(gopc), Ok(startpc)) = (
        read(g, cfg.goid_off),
        read(g, cfg.parent_goid_off),
        read(g, cfg.gopc_off),
        read(g, cfg.startpc_off),
    ) else {
        pc.read_errors += 1;
        return 0;
    };
    pc.created += 1;
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    let info = GoroutineInfo {
        created_ns: unsafe { bpf_ktime_get_ns() },
        gopc,
        startpc,
        parent_goid,
    };
    if LIVE.insert(&key, &info, BPF_ANY as u64).is_err() {
        pc.live_map_full += 1;
    }
    match site(tgid, gopc) {
        // SAFETY: `s` points into a map value; see `atomic_add`.
        Some(s) => atomic_add(unsafe { &raw mut (*s).created }, 1),
        None => pc.site_map_full += 1,
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &ProbeContext, g: u64) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx) as u32) else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(pc) = proc_counters(tgid) else {
        return 0;
    };
    // SAFETY: as in `on_create`.
    let pc = unsafe { &mut *pc };
    let Ok(goid) = read(g, cfg.goid_off) else {
        pc.read_errors += 1;
        return 0;
    };
    pc.exited += 1;
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    // SAFETY: the value is copied out before the entry is deleted.
    let created = unsafe { LIVE.get(&key) }.copied();
    match created {
        Some(info) => {
            let _ = LIVE.remove(&key);
            let lifetime = unsafe { bpf_ktime_get_ns() }.saturating_sub(info.created_ns);
            let Some(s) = site(tgid, info.gopc) else {
                pc.site_map_full += 1;
                return 0;
            };
            let b = lifetime_bucket(lifetime);
            // SAFETY: `s` points into a map value; `b` < LIFETIME_BUCKETS by construction
            // (the verifier checks the bound too).
            unsafe {
                atomic_add(&raw mut (*s).exited, 1);
                atomic_add(&raw mut (*s).lifetime_ns_sum, lifetime);
                if let Some(slot) = (*s).lifetime_buckets.get_mut(b) {
                    atomic_add(slot, 1);
                }
            }
        }
        None => {
            let Ok(gopc) = read(g, cfg.gopc_off) else {
                pc.read_errors += 1;
                return 0;
            };
            match site(tgid, gopc) {
                // SAFETY: `s` points into a map value.
                Some(s) => atomic_add(unsafe { &raw mut (*s).exited_untracked }, 1),
                None => pc.site_map_full += 1,
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
