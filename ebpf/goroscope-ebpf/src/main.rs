//! goroscope kernel programs: uprobes at the Go runtime sites chosen by the agent's
//! binary analysis. Kept small and boring: read a register, read a few fields of
//! `runtime.g` at offsets given by userspace, update bounded maps.
//!
//! State stays in the kernel (no event stream): `GSLOTS` (a slot table indexed by the
//! `g` address, overflowing into the `LIVE` hash map) holds goroutines created while
//! attached, for their age and creation site; `SITES` holds per-(process, `go`
//! statement) exit counts and a lifetime histogram; contexts have the same pair of maps
//! and their own per-site counters. The agent reads the maps when it needs them (the
//! slot tables through mmap), so the hot path never wakes userspace. Every map is
//! bounded and what does not fit is counted in `PROC_COUNTERS`.
//!
//! By concern: [`goroutine`] (creation and exit), [`context`] (creation and
//! cancellation of cancelable contexts), [`shared`] (loss counters, atomics, reads of
//! the probed process, per-site map entries).
//!
//! Rare events (a process's first loss of a kind, a context whose creation site was not
//! found) write an `aya-log` line that the agent forwards to its own log; nothing on the
//! per-goroutine or per-context path logs.
#![no_std]
#![no_main]
// For `atomic_xadd`: the BPF target has no `AtomicU64::fetch_add` in `core`.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod context;
mod goroutine;
mod shared;

use aya_ebpf::{
    macros::{map, uprobe},
    maps::PerCpuArray,
    programs::ProbeContext,
};
use goroscope_common::MAX_SITE_CONFIGS;

/// Hits of the `noop` probes, per attach cookie (per CPU).
#[map]
static NOOP_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_SITE_CONFIGS, 0);

/// Only counts its hits: attached at goroscope's sites it measures the floor cost of a
/// uprobe there (`cargo xtask bench overhead`, `bench contexts`: hits per context).
#[uprobe]
pub fn noop(ctx: ProbeContext) -> u32 {
    if let Some(n) = NOOP_HITS.get_ptr_mut(shared::cookie(&ctx)) {
        // SAFETY: this CPU's value of a per-CPU array entry; a uprobe program is not
        // preempted by another program on the same CPU.
        unsafe { *n += 1 };
    }
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
