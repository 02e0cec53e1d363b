//! goroscope kernel programs: uprobes at the Go runtime sites chosen by the agent's
//! binary analysis. Kept small and boring: read a register, read a few fields of
//! `runtime.g` at offsets given by userspace, update bounded maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{Array, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use goroscope_common::{reg, ProcCounters, SiteConfig, MAX_SITE_CONFIGS};

/// Per attached site configuration, indexed by the uprobe attach cookie.
#[map]
static SITE_CONFIG: Array<SiteConfig> = Array::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Per-process (tgid) counters, per CPU: no atomics on the hot path, the agent sums.
#[map]
static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> = PerCpuHashMap::with_max_entries(4096, 0);

#[inline(always)]
fn read_reg(regs: &pt_regs, r: u8) -> u64 {
    match r {
        reg::RAX => regs.rax,
        reg::RBX => regs.rbx,
        reg::RCX => regs.rcx,
        reg::RDX => regs.rdx,
        reg::RSI => regs.rsi,
        reg::RDI => regs.rdi,
        reg::R8 => regs.r8,
        reg::R9 => regs.r9,
        reg::R10 => regs.r10,
        reg::R11 => regs.r11,
        reg::R12 => regs.r12,
        reg::R13 => regs.r13,
        reg::R14 => regs.r14,
        reg::R15 => regs.r15,
        reg::RBP => regs.rbp,
        _ => regs.rsp,
    }
}

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
fn handle(ctx: &ProbeContext, hook: Hook) -> u32 {
    let Some(cfg) = SITE_CONFIG.get(cookie(ctx) as u32) else {
        return 0;
    };
    // SAFETY: for uprobe programs the context is the `pt_regs` of the probed task;
    // the verifier allows direct loads from it.
    let regs = unsafe { &*ctx.regs };
    let g = read_reg(regs, cfg.g_reg);
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

/// Goroutine creation site (e.g. `CALL runtime.runqput` in `runtime.newproc.func1`).
#[uprobe]
pub fn goroutine_create(ctx: ProbeContext) -> u32 {
    handle(&ctx, Hook::Create)
}

/// Goroutine exit site (`push rbp` of `runtime.gdestroy` / `runtime.goexit0`).
#[uprobe]
pub fn goroutine_exit(ctx: ProbeContext) -> u32 {
    handle(&ctx, Hook::Exit)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
