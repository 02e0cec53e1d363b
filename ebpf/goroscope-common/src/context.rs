//! Context tracking: the context-probe configuration, the slot table and live-context map
//! filled at creation, and the per-site counters updated at cancellation.

use crate::{pod, slot_hash};

/// Default bound of the live (not yet cancelled) context map.
pub const DEFAULT_MAX_CONTEXTS: u32 = 65_536;
/// Ranges of package `context` code in [`CtxConfig`].
pub const CTX_RANGES: usize = 4;
/// Frames walked up from `propagateCancel` to find the first caller outside `context`.
pub const CTX_FRAMES: usize = 6;

/// Configuration of a context probe, indexed by its attach cookie in `CTX_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxConfig {
    /// Link-time address of the probed instruction: `ip - probe_addr`, rounded down to a
    /// page, is the load bias of the process (0 unless PIE).
    pub probe_addr: u64,
    /// Link-time `[start, end)` ranges of package `context`'s code (unused ranges are
    /// `[0, 0)`): the creation site is the first return address outside them.
    pub ranges: [[u64; 2]; CTX_RANGES],
    /// [`CTX_ONE_PROBE`], [`CTX_CHECK_CALLER`].
    pub flags: u32,
    /// The one process the probe is attached for, or 0 (see
    /// [`SiteConfig::tgid`](crate::SiteConfig::tgid)).
    pub tgid: u32,
    /// Link-time address of the process's `chan struct{}` type descriptor (the type word
    /// of a set `cancelCtx.done`), once the agent has learned it; 0 before.
    pub chan_type: u64,
    /// Offset of `cancelCtx.done`.
    pub done_off: u32,
    pub _pad: u32,
    /// Link-time itabs of the parent types known to hold their children (`*cancelCtx`,
    /// `*timerCtx`, …: a parent seen with the `chan struct{}` type in its own `done`),
    /// learned by the agent; 0: unused. A context whose parent has one of these types was
    /// registered in the parent's `children` map (or cancelled at once), whatever became
    /// of the parent since.
    pub holder_itabs: [u64; CTX_HOLDER_ITABS],
}

/// Entries of [`CtxConfig::holder_itabs`].
pub const CTX_HOLDER_ITABS: usize = 4;

/// [`CtxConfig::flags`]: no cancel probe is attached (the agent sees cancellations by
/// reading the contexts' memory), so a context whose address comes back in a new context
/// before the agent judged it may have been cancelled: it is counted cancelled when its
/// parent held it (see [`CtxSiteStats`]), collected otherwise.
pub const CTX_ONE_PROBE: u32 = 1;
/// [`CtxConfig::flags`]: the probed function is called from outside package `context`
/// somewhere in the binary (a caller inlined there), so the return address at `rsp`
/// may be the creation site itself: it is checked first (one more read a hit).
/// Otherwise the walk starts at the caller's frame record (`rbp`).
pub const CTX_CHECK_CALLER: u32 = 2;

/// Key of the live-context map: a context (`*cancelCtx`) in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtxKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ctx: u64,
}

/// A cancelable context created while attached and not cancelled yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxInfo {
    /// `bpf_ktime_get_ns()` at creation.
    pub created_ns: u64,
    /// Link-time return address of the call into package `context` (0: not found).
    pub site: u64,
    /// The `runtime.g` of the goroutine that created it (R14 at creation; its goid is
    /// not read here: a read of the process's memory costs ~0.1 µs a hit). The agent
    /// tells from the goroutine on that `g` now, and when it was created, whether the
    /// creator still runs.
    pub g: u64,
    /// Parent context (interface data pointer; a `*cancelCtx` when the parent is one).
    pub parent: u64,
    /// The parent's itab (interface type word): tells a `*cancelCtx` parent apart.
    pub parent_itab: u64,
}

/// Slots of the context slot table (see [`CtxSlot`]).
pub const CTX_SLOTS: u32 = 1 << 17;

/// A context created while attached and not cancelled yet, in the context slot table: an
/// array indexed by a hash of (process, context pointer), claimed with compare-and-swap
/// on `ctx` (0 = free, [`SLOT_BUSY`](crate::SLOT_BUSY) = being written); a context whose
/// slot is taken goes to the `CTX_LIVE` hash map instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxSlot {
    pub ctx: u64,
    pub tgid: u32,
    pub _pad: u32,
    pub info: CtxInfo,
}

/// Home slot of a context in the [`CTX_SLOTS`] table: its address in 64-byte units,
/// offset per process. Unlike a hash this keeps locality: contexts allocated near each
/// other (the common case: one span of the Go heap) use slots near each other, so a probe
/// hit touches a few cached pages of the 7 MiB table instead of a random one (a TLB and
/// cache miss each, ~170 ns a hit measured). A `cancelCtx` is at least 64 bytes in every
/// supported release (80 since Go 1.20), so two contexts never share a home slot within
/// a span, and 64-byte units (not 16) pack a span's contexts into a quarter of the table
/// pages: ~50 ns less a hit in `cargo xtask bench contexts` (2026-12-07). A context may
/// sit in any of the [`CTX_WAYS`] slots from its home (see [`ctx_slot`]).
#[inline(always)]
pub fn ctx_slot_index(tgid: u32, ctx: u64) -> u32 {
    ((ctx >> 6).wrapping_add((tgid as u64).wrapping_mul(0x9E37_79B9)) & (CTX_SLOTS as u64 - 1))
        as u32
}

/// Slots a context may use, from its home slot on: objects of one size class (≥ 80 bytes
/// for a `cancelCtx`) leave some home slots of their heap span unused (one in five for
/// 80-byte objects), which the next ones' overflow fills.
pub const CTX_WAYS: u32 = 4;

/// Slot `way` (`< CTX_WAYS`) from `home` (see [`ctx_slot_index`]).
#[inline(always)]
pub fn ctx_slot(home: u32, way: u32) -> u32 {
    home.wrapping_add(way) & (CTX_SLOTS - 1)
}

/// Per (process, context creation site) counters (keyed by [`crate::SiteKey`]), updated
/// with atomic adds at cancellation only: contexts created while attached = cancelled +
/// collected + those still live, so creation touches no per-site state.
///
/// With [`CTX_ONE_PROBE`] the kernel sees no cancel: the agent keeps the cancellations
/// it sees in memory in its own counters, and the kernel only counts a context whose
/// address came back in a new context before the agent judged it (it was garbage
/// collected): `cancelled` (lifetime up to that new creation) when a `*cancelCtx`
/// ancestor held it in its `children` map (a held context is collected only once
/// cancelled), `collected` otherwise (a `Background`/`TODO` parent: maybe cancelled,
/// never seen so).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxSiteStats {
    pub cancelled: u64,
    /// Sum of created→cancelled times of the cancelled ones, in ns.
    pub lifetime_ns_sum: u64,
    /// Contexts never cancelled whose memory was reused for a new context (they were
    /// garbage collected: their parent did not hold them).
    pub collected: u64,
}

impl CtxSiteStats {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &CtxSiteStats) {
        self.cancelled += other.cancelled;
        self.lifetime_ns_sum += other.lifetime_ns_sum;
        self.collected += other.collected;
    }
}

/// Entries of the context site table (see [`CtxSiteSlot`]).
pub const CTX_SITE_SLOTS: u32 = 4096;
/// Slots a site may use from its home slot (see [`ctx_site_slot`]).
pub const CTX_SITE_WAYS: u32 = 2;

/// The counters of a (process, context creation site) in the site table, an array the
/// kernel updates without a hash lookup (a `BPF_F_MMAPABLE` array the agent reads in
/// place): the key word is [`ctx_site_key`] of the site (0 = free,
/// [`SLOT_BUSY`](crate::SLOT_BUSY) = being claimed), claimed with compare-and-swap at the
/// site's first count. A site whose slots are all taken counts in the `CTX_SITES` hash
/// map instead; a site may have counts in both, and in two slots (the agent adds them
/// up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxSiteSlot {
    pub key: u64,
    pub tgid: u32,
    pub _pad: u32,
    pub stats: CtxSiteStats,
}

/// The key word of a site in the site table: the site (a link-time address, 0 when not
/// found) with the top bit set, so never 0 nor [`SLOT_BUSY`](crate::SLOT_BUSY).
#[inline(always)]
pub fn ctx_site_key(site: u64) -> u64 {
    site | 1 << 63
}

/// The site of a key word (see [`ctx_site_key`]).
pub fn ctx_site_of_key(key: u64) -> u64 {
    key & !(1 << 63)
}

/// Slot `way` (`< CTX_SITE_WAYS`) of a (process, site) in the site table.
#[inline(always)]
pub fn ctx_site_slot(tgid: u32, site: u64, way: u32) -> u32 {
    slot_hash(tgid, site, CTX_SITE_SLOTS).wrapping_add(way) & (CTX_SITE_SLOTS - 1)
}

pod!(
    CtxConfig,
    CtxKey,
    CtxInfo,
    CtxSlot,
    CtxSiteStats,
    CtxSiteSlot
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctx_slot_indexes_are_in_range() {
        for i in 0..10_000u64 {
            assert!(ctx_slot_index(42, 0x00c0_0000_0000 + i * 48) < CTX_SLOTS);
        }
        assert_ne!(
            ctx_slot_index(1, 0xc000_1000),
            ctx_slot_index(2, 0xc000_1000)
        );
    }
}
