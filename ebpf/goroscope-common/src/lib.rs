//! Wire types shared by the goroscope kernel programs (`goroscope-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of pointers so that it can be
//! written into and read out of BPF maps byte for byte on both sides. By concern:
//! [`goroutine`] (slot table, live map and per-site lifetimes of goroutines),
//! [`context`] (the same for cancelable contexts); this file holds what both use (site
//! keys, slot hashing, loss counters) and re-exports both, so every type is reachable as
//! `goroscope_common::Name`.
#![no_std]

pub mod context;
pub mod goroutine;

pub use context::*;
pub use goroutine::*;

/// Implements `aya::Pod` (userspace only) for types made of integers.
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        // SAFETY (all impls): the types are `#[repr(C)]`, `Copy`, and made only of
        // integers with explicit padding fields, so every bit pattern is a valid value.
        $(
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use pod;

/// Register numbers a probe site can name as the place a value lives.
///
/// The agent decides, per probe site, which register holds the `*g` it needs
/// (e.g. RBX at `CALL runtime.runqput`, RAX at `push rbp` of `runtime.gdestroy`) and
/// attaches the kernel program that reads that register.
pub mod reg {
    pub const RAX: u8 = 0;
    pub const RBX: u8 = 1;
    pub const RCX: u8 = 2;
    /// The new context in Go 1.19–1.20's `context.propagateCancel(parent, child)`: the
    /// child interface's data word.
    pub const RDI: u8 = 3;
}

/// Maximum number of probe-site configurations (one per attached binary and hook).
pub const MAX_SITE_CONFIGS: u32 = 1024;
/// Bound of the per-(process, creation site) statistics maps (goroutines and contexts).
pub const MAX_SITES: u32 = 16_384;
/// Bound of the per-process counters map.
pub const MAX_PROCS: u32 = 1024;

/// Marks a slot being written (never a goid nor a context pointer: goids start at 1 and
/// grow).
pub const SLOT_BUSY: u64 = u64::MAX;

/// Slot of `addr` (a `g` or context pointer) of process `tgid` in a slot table of `slots`
/// entries (a power of two): Fibonacci hashing of the address mixed with the process.
#[inline(always)]
pub fn slot_hash(tgid: u32, addr: u64, slots: u32) -> u32 {
    let h = (addr >> 3) ^ ((tgid as u64) << 40);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - slots.trailing_zeros())) as u32
}

/// Key of the per-site statistics: a creation site (`go` statement, or call into package
/// `context`) in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub tgid: u32,
    pub _pad: u32,
    /// `g.gopc` of the goroutines created there (unrelocated for PIE: as in memory), or
    /// the link-time creation site of the contexts.
    pub gopc: u64,
}

/// Why the kernel could not record an event: the index of its counter in
/// [`ProcCounters::lost`]. The one list of loss reasons: the agent's metrics, `top` and
/// JSON output iterate [`Loss::ALL`] with [`Loss::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Loss {
    /// A probe hit whose `runtime.g` (or context) fields could not be read.
    ReadError,
    /// A creation not recorded: its slot was taken and the live-goroutine overflow map was
    /// full.
    LiveMapFull,
    /// A creation or exit not counted per site: the site map was full.
    SiteMapFull,
    /// A cancelable context not tracked: the live-context map was full.
    ContextMapFull,
    /// A context creation or cancellation not counted per site: the context site map was
    /// full.
    ContextSiteMapFull,
}

/// Number of [`Loss`] reasons.
pub const LOSS_REASONS: usize = 5;

impl Loss {
    pub const ALL: [Loss; LOSS_REASONS] = [
        Loss::ReadError,
        Loss::LiveMapFull,
        Loss::SiteMapFull,
        Loss::ContextMapFull,
        Loss::ContextSiteMapFull,
    ];

    /// The reason as a metric label value and JSON key.
    pub const fn name(self) -> &'static str {
        match self {
            Loss::ReadError => "read_error",
            Loss::LiveMapFull => "live_map_full",
            Loss::SiteMapFull => "site_map_full",
            Loss::ContextMapFull => "context_map_full",
            Loss::ContextSiteMapFull => "context_site_map_full",
        }
    }
}

/// Per-process loss counters (per CPU; the agent sums). Touched only when something
/// goes wrong, so the hot path does not pay for them; created/exited totals are the sums
/// of the process's `SiteStats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Events lost, indexed by [`Loss`].
    pub lost: [u64; LOSS_REASONS],
}

impl ProcCounters {
    /// Adds another CPU's (or another read's) counts.
    pub fn add(&mut self, other: &ProcCounters) {
        for (a, b) in self.lost.iter_mut().zip(other.lost) {
            *a += b;
        }
    }

    pub fn get(&self, reason: Loss) -> u64 {
        self.lost[reason as usize]
    }

    /// Events lost for any reason.
    pub fn total(&self) -> u64 {
        self.lost.iter().sum()
    }
}

pod!(SiteKey, ProcCounters);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_reasons_are_listed_once_in_index_order() {
        for (i, r) in Loss::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut c = ProcCounters::default();
        c.lost[Loss::SiteMapFull as usize] = 2;
        c.add(&c.clone());
        assert_eq!((c.get(Loss::SiteMapFull), c.total()), (4, 4));
    }
}
