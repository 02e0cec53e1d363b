//! What the goroutine and context programs share: the per-process loss counters (and
//! the log line of a process's first loss), atomics, reads of the probed process's
//! memory, and the per-site map entries.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::map,
    maps::{HashMap, PerCpuHashMap},
    programs::ProbeContext,
    EbpfContext,
};
use aya_log_ebpf::warn;
use goroscope_common::{Loss, ProcCounters, SiteKey, MAX_PROCS};

/// Per-process loss counters, per CPU (touched only when something is lost).
#[map]
static PROC_COUNTERS: PerCpuHashMap<u32, ProcCounters> =
    PerCpuHashMap::with_max_entries(MAX_PROCS, 0);

/// Atomic `*p += v`.
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
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
pub fn cas(p: *mut u64, old: u64, new: u64) -> bool {
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

/// The attach cookie of the probe: the index of its configuration.
#[inline(always)]
pub fn cookie(ctx: &ProbeContext) -> u32 {
    // SAFETY: bpf_get_attach_cookie only reads the context pointer the kernel gave us.
    unsafe { aya_ebpf::helpers::generated::bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

/// The probed process: `attached_for` when the probe is attached for one process (its
/// configuration's `tgid`; a uprobe attached for one process runs only in it), else
/// asked of the kernel.
#[inline(always)]
pub fn current_tgid(attached_for: u32) -> u32 {
    if attached_for != 0 {
        return attached_for;
    }
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// CLOCK_MONOTONIC in ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `T` from the probed process's memory.
#[inline(always)]
pub fn read<T>(addr: u64) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_user copies from user memory with fault handling; a bad
    // pointer returns an error instead of faulting.
    unsafe { bpf_probe_read_user(addr as *const T) }
}

/// Reads a `T` from the probed process's memory, counting a failure as a
/// [`Loss::ReadError`] of the process.
#[inline(always)]
pub fn read_or_count<T>(ctx: &ProbeContext, tgid: u32, addr: u64) -> Option<T> {
    let v = read(addr).ok();
    if v.is_none() {
        lost(ctx, tgid, Loss::ReadError);
    }
    v
}

/// Counts a loss for the process (rare path). The first loss of a reason for a process on
/// a CPU (its per-CPU counter going 0 → 1) is also logged; later ones are only counted
/// (the agent shows them as `goroscope_process_lost_events_total`).
#[inline(always)]
pub fn lost(ctx: &ProbeContext, tgid: u32, reason: Loss) {
    if PROC_COUNTERS.get_ptr_mut(&tgid).is_none() {
        let _ = PROC_COUNTERS.insert(&tgid, &ProcCounters::default(), BPF_NOEXIST as u64);
    }
    if let Some(p) = PROC_COUNTERS.get_ptr_mut(&tgid) {
        // SAFETY: this CPU's slot of a per-CPU map value, valid for the duration of the
        // program; uprobe programs do not migrate between CPUs.
        if let Some(n) = unsafe { &mut *p }.lost.get_mut(reason as usize) {
            *n += 1;
            if *n == 1 {
                log_first_loss(ctx, tgid, reason);
            }
        }
    }
}

/// The log line of [`lost`]: a BPF subprogram, so the programs that can lose events carry
/// one call instead of a copy of the log record writer.
#[inline(never)]
fn log_first_loss(ctx: &ProbeContext, tgid: u32, reason: Loss) {
    warn!(
        ctx,
        "pid {}: lost an event ({}), the first of that kind on this CPU; later ones are \
         only counted",
        tgid,
        reason.name()
    );
}

/// The entry of a (process, site) in a per-site map; when the site has none yet (its
/// first event), one is inserted from the value `zero` gives (called only then).
#[inline(always)]
pub fn site_entry<'a, V: 'a>(
    map: &HashMap<SiteKey, V>,
    tgid: u32,
    site: u64,
    zero: impl FnOnce() -> Option<&'a V>,
) -> Option<*mut V> {
    let key = SiteKey {
        tgid,
        _pad: 0,
        gopc: site,
    };
    if let Some(p) = map.get_ptr_mut(&key) {
        return Some(p);
    }
    let _ = map.insert(&key, zero()?, BPF_NOEXIST as u64);
    map.get_ptr_mut(&key)
}
