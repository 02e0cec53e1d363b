//! goroscope kernel programs: uprobes at the Go runtime sites chosen by the agent's
//! binary analysis. Kept small and boring: read a register, read a few fields of
//! `runtime.g` at offsets given by userspace, update bounded maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{Array, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use goroscope_common::{ProcCounters, SiteConfig, MAX_SITE_CONFIGS};

/// Per attached site configuration, indexed by the uprobe attach cookie.
#[map]
static SITE_CONFIG: Array<SiteConfig> = Array::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Per-process (tgid) counters, per CPU: no atomics on the hot path, the agent sums.
#[map]
static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> = PerCpuHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u64 {
    // SAFETY: bpf_get_attach_cookie only reads the context pointer the kernel gave us.
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) }
}

enum Hook {
    Create,
    Exit,
}

#[inline(always)]
fn handle(ctx: &ProbeContext, g: u64, hook: Hook) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx) as u32) else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: bpf_probe_read_user copies from user memory with fault handling;
    // a bad pointer returns an error instead of faulting.
    let goid = unsafe { bpf_probe_read_user((g + cfg.goid_off as u64) as *const u64) };

    let counters = match PROC_COUNTERS.get_ptr_mut(&tgid) {
        Some(p) => p,
        None => {
            let _ = PROC_COUNTERS.insert(&tgid, &ProcCounters::default(), 0);
            match PROC_COUNTERS.get_ptr_mut(&tgid) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // SAFETY: `counters` points into this CPU's slot of a per-CPU map value, valid for
    // the duration of this program; uprobe programs do not migrate between CPUs.
    let c = unsafe { &mut *counters };
    match (goid, hook) {
        (Err(_), _) => c.read_errors += 1,
        (Ok(_), Hook::Create) => c.created += 1,
        (Ok(_), Hook::Exit) => c.exited += 1,
    }
    0
}

/// One program per (hook, register holding the `*g`): each reads its register with a
/// constant-offset load from `pt_regs` (the verifier rejects computed context offsets).
macro_rules! g_probe {
    ($name:ident, $hook:expr, $reg:ident) => {
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            // SAFETY: for uprobe programs the context is the probed task's `pt_regs`;
            // the verifier allows direct loads from it at constant offsets.
            let g = unsafe { (*ctx.regs).$reg };
            handle(&ctx, g, $hook)
        }
    };
}

// Creation at `CALL runtime.runqput` (or the nop before it): new g in RBX.
g_probe!(goroutine_create_rbx, Hook::Create, rbx);
// Creation fallback at the RETs of `runtime.newproc1`: new g in RAX.
g_probe!(goroutine_create_rax, Hook::Create, rax);
// Exit at `push rbp` of `runtime.gdestroy` / `runtime.goexit0`: g in RAX.
g_probe!(goroutine_exit_rax, Hook::Exit, rax);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
