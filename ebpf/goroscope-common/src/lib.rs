//! Wire types shared by the goroscope kernel programs (`goroscope-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of pointers so that it can be
//! written into and read out of BPF maps byte for byte on both sides.
#![no_std]

/// Register numbers a probe site can name as the place a value lives.
///
/// The agent decides, per probe site, which register holds the `*g` it needs
/// (e.g. RBX at `CALL runtime.runqput`, RAX at `push rbp` of `runtime.gdestroy`) and
/// attaches the kernel program that reads that register.
pub mod reg {
    pub const RAX: u8 = 0;
    pub const RBX: u8 = 1;
    pub const RCX: u8 = 2;
}

/// Maximum number of probe-site configurations (one per attached binary and hook).
pub const MAX_SITE_CONFIGS: u32 = 256;
/// Slots of the goroutine slot table (a power of two).
pub const G_SLOTS: u32 = 1 << 18;
/// Default bound of the live-goroutine overflow map (goroutines whose slot was taken);
/// the agent may change it at load.
pub const DEFAULT_MAX_LIVE: u32 = 65_536;
/// Bound of the per-(process, creation site) statistics map.
pub const MAX_SITES: u32 = 16_384;
/// Bound of the per-process counters map.
pub const MAX_PROCS: u32 = 1024;

/// Configuration for one attached probe site. The attach cookie of a uprobe is the
/// index of its `SiteConfig` in the `SITE_CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// Offset of `runtime.g.goid`.
    pub goid_off: u32,
    /// Offset of `runtime.g.gopc` (return address of the `go` statement's call).
    pub gopc_off: u32,
    /// Start of a window of `runtime.g` (at most [`G_WINDOW`] bytes) holding `goid`,
    /// `parentGoid`, `gopc` and `startpc`, read with one helper call at creation.
    pub window_off: u32,
    /// Word index of `goid` in the window.
    pub goid_word: u8,
    /// Word index of `parentGoid` in the window.
    pub parent_goid_word: u8,
    /// Word index of `gopc` in the window.
    pub gopc_word: u8,
    /// Word index of `startpc` in the window.
    pub startpc_word: u8,
}

/// Bytes of `runtime.g` read at once at creation (see [`SiteConfig::window_off`]).
pub const G_WINDOW: usize = 192;
/// Words in the creation window.
pub const G_WINDOW_WORDS: usize = G_WINDOW / 8;

impl SiteConfig {
    /// Builds the configuration from `runtime.g` offsets; `None` if `goid`,
    /// `parentGoid`, `gopc` and `startpc` do not fit one aligned window (they do in every
    /// Go version so far: 152..304 in 1.21).
    pub fn new(goid: u32, parent_goid: u32, gopc: u32, startpc: u32) -> Option<SiteConfig> {
        let start = goid.min(parent_goid).min(gopc).min(startpc);
        let word = |off: u32| {
            let rel = off - start;
            (rel.is_multiple_of(8) && (rel as usize) + 8 <= G_WINDOW).then_some((rel / 8) as u8)
        };
        Some(SiteConfig {
            goid_off: goid,
            gopc_off: gopc,
            window_off: start,
            goid_word: word(goid)?,
            parent_goid_word: word(parent_goid)?,
            gopc_word: word(gopc)?,
            startpc_word: word(startpc)?,
        })
    }
}

/// Marks a slot being written (never a goid: goids start at 1 and grow).
pub const SLOT_BUSY: u64 = u64::MAX;

/// A goroutine created while attached, in the slot table: an array indexed by a hash of
/// (process, `g` pointer), claimed with compare-and-swap on `goid` (0 = free,
/// [`SLOT_BUSY`] = being written). Array slots cost no hashing or locking in the kernel;
/// a goroutine whose slot is taken goes to the `LIVE` hash map instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GSlot {
    pub goid: u64,
    /// Address of the `runtime.g` (Go reuses a `g` for a later goroutine after exit).
    pub g: u64,
    pub tgid: u32,
    pub _pad: u32,
    pub info: GoroutineInfo,
}

/// Slot of a goroutine: Fibonacci hashing of the `g` address mixed with the process.
#[inline(always)]
pub fn slot_index(tgid: u32, g: u64) -> u32 {
    let h = (g >> 3) ^ ((tgid as u64) << 40);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - G_SLOTS.trailing_zeros())) as u32
}

/// Key of the live-goroutine map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// A goroutine created while goroscope was attached, until it exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineInfo {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at creation.
    pub created_ns: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
}

/// Key of the per-site statistics: a creation site (`go` statement) in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub tgid: u32,
    pub _pad: u32,
    /// `g.gopc` of the goroutines created there (unrelocated for PIE: as in memory).
    pub gopc: u64,
}

/// Number of lifetime histogram buckets.
pub const LIFETIME_BUCKETS: usize = 32;

/// Histogram bucket of a goroutine lifetime: bucket 0 holds lifetimes below 2^10 ns
/// (~1 µs), bucket `b` (1..=30) holds `[2^(b+9), 2^(b+10))` ns, bucket 31 everything
/// from 2^40 ns (~18 min) up. The upper bound of bucket `b < 31` is `2^(b+10)` ns.
#[inline(always)]
pub fn lifetime_bucket(ns: u64) -> usize {
    let log2 = 63 - (ns | 1).leading_zeros() as usize;
    if log2 < 10 {
        0
    } else if log2 - 9 >= LIFETIME_BUCKETS {
        LIFETIME_BUCKETS - 1
    } else {
        log2 - 9
    }
}

/// Statistics of one creation site, updated at goroutine exit with atomic adds by every
/// CPU. Creations are not counted here: goroutines created while attached are the exited
/// ones (the histogram's total) plus those still in the live map, so the creation path
/// touches one map only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// Sum of the lifetimes in the histogram, in ns.
    pub lifetime_ns_sum: u64,
    /// Goroutines of this site that existed before attach (or whose creation could not be
    /// recorded) and exited while attached.
    pub exited_untracked: u64,
    /// Lifetimes of the goroutines created while attached that exited (see
    /// [`lifetime_bucket`]); their sum is the number that exited.
    pub lifetime_buckets: [u64; LIFETIME_BUCKETS],
}

impl SiteStats {
    /// Goroutines created while attached that exited.
    pub fn exited(&self) -> u64 {
        self.lifetime_buckets.iter().sum()
    }
}

impl Default for SiteStats {
    fn default() -> Self {
        SiteStats {
            lifetime_ns_sum: 0,
            exited_untracked: 0,
            lifetime_buckets: [0; LIFETIME_BUCKETS],
        }
    }
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
    /// Offset of `runtime.g.goid` (R14 holds the current `*g`).
    pub goid_off: u32,
    pub _pad: u32,
}

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
    /// Goroutine that created it.
    pub goid: u64,
    /// Parent context (interface data pointer; a `*cancelCtx` when the parent is one).
    pub parent: u64,
    /// The parent's itab (interface type word): tells a `*cancelCtx` parent apart.
    pub parent_itab: u64,
}

/// Slots of the context slot table (see [`CtxSlot`]).
pub const CTX_SLOTS: u32 = 1 << 17;

/// A context created while attached and not cancelled yet, in the context slot table: an
/// array indexed by a hash of (process, context pointer), claimed with compare-and-swap
/// on `ctx` (0 = free, [`SLOT_BUSY`] = being written); a context whose slot is taken goes
/// to the `CTX_LIVE` hash map instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtxSlot {
    pub ctx: u64,
    pub tgid: u32,
    pub _pad: u32,
    pub info: CtxInfo,
}

/// Slot of a context (same hashing as [`slot_index`], over [`CTX_SLOTS`]).
#[inline(always)]
pub fn ctx_slot_index(tgid: u32, ctx: u64) -> u32 {
    let h = (ctx >> 3) ^ ((tgid as u64) << 40);
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CTX_SLOTS.trailing_zeros())) as u32
}

/// Per (process, context creation site) counters, updated with atomic adds at
/// cancellation only: contexts created while attached = cancelled + collected + those
/// still live, so creation touches no per-site state.
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

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): the types are `#[repr(C)]`, `Copy`, and made only of integers
    // with explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SiteConfig {}
    unsafe impl aya::Pod for super::GoroutineKey {}
    unsafe impl aya::Pod for super::GoroutineInfo {}
    unsafe impl aya::Pod for super::GSlot {}
    unsafe impl aya::Pod for super::SiteKey {}
    unsafe impl aya::Pod for super::SiteStats {}
    unsafe impl aya::Pod for super::ProcCounters {}
    unsafe impl aya::Pod for super::CtxConfig {}
    unsafe impl aya::Pod for super::CtxKey {}
    unsafe impl aya::Pod for super::CtxInfo {}
    unsafe impl aya::Pod for super::CtxSiteStats {}
    unsafe impl aya::Pod for super::CtxSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_config_windows() {
        let words = |c: SiteConfig| {
            (
                c.window_off,
                c.goid_word,
                c.parent_goid_word,
                c.gopc_word,
                c.startpc_word,
            )
        };
        // Go 1.21 and 1.23 layouts.
        assert_eq!(
            words(SiteConfig::new(152, 272, 280, 296).unwrap()),
            (152, 0, 15, 16, 18)
        );
        assert_eq!(
            words(SiteConfig::new(160, 280, 288, 304).unwrap()),
            (160, 0, 15, 16, 18)
        );
        assert_eq!(SiteConfig::new(152, 272, 280, 400), None);
    }

    #[test]
    fn slot_indexes_are_in_range_and_spread() {
        let mut seen = [0u32; 64];
        for i in 0..100_000u64 {
            // g structs are ~400 bytes apart in the heap.
            let idx = slot_index(1234, 0x00c0_0000_0000 + i * 416);
            assert!(idx < G_SLOTS);
            seen[(idx >> 12) as usize] += 1;
        }
        // Every 1/64th of the table gets a share (uniform would be 1562 each).
        assert!(seen.iter().all(|&n| n > 1000 && n < 2200), "{seen:?}");
        assert_ne!(slot_index(1, 0xc000_1000), slot_index(2, 0xc000_1000));
    }

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

    #[test]
    fn lifetime_buckets() {
        assert_eq!(lifetime_bucket(0), 0);
        assert_eq!(lifetime_bucket(1023), 0);
        assert_eq!(lifetime_bucket(1024), 1);
        assert_eq!(lifetime_bucket(2047), 1);
        assert_eq!(lifetime_bucket(2048), 2);
        assert_eq!(lifetime_bucket(1 << 39), 30);
        assert_eq!(lifetime_bucket(1 << 40), 31);
        assert_eq!(lifetime_bucket(u64::MAX), 31);
    }
}
