//! Goroutine tracking: the probe-site configuration, the slot table and live-goroutine
//! map filled at creation, and the per-site statistics updated at exit.

use crate::{pod, slot_hash};

/// Slots of the goroutine slot table (a power of two).
pub const G_SLOTS: u32 = 1 << 18;
/// Default bound of the live-goroutine overflow map (goroutines whose slot was taken);
/// the agent may change it at load.
pub const DEFAULT_MAX_LIVE: u32 = 65_536;

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
    /// The one process the probe is attached for (its pid), or 0: any process running
    /// the binary, whose pid the program asks the kernel for (a helper call, ~30 ns a
    /// hit on the benchmark VM).
    pub tgid: u32,
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
            tgid: 0,
        })
    }
}

/// A goroutine created while attached, in the slot table: an array indexed by a hash of
/// (process, `g` pointer), claimed with compare-and-swap on `goid` (0 = free,
/// [`SLOT_BUSY`](crate::SLOT_BUSY) = being written). Array slots cost no hashing or
/// locking in the kernel; a goroutine whose slot is taken goes to the `LIVE` hash map
/// instead.
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

/// Slot of a goroutine in the [`G_SLOTS`] table (see [`slot_hash`]).
#[inline(always)]
pub fn slot_index(tgid: u32, g: u64) -> u32 {
    slot_hash(tgid, g, G_SLOTS)
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

/// Statistics of one creation site (keyed by [`crate::SiteKey`]), updated at goroutine
/// exit with atomic adds by every CPU. Creations are not counted here: goroutines created
/// while attached are the exited ones (the histogram's total) plus those still in the live
/// map, so the creation path touches one map only.
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

pod!(SiteConfig, GSlot, GoroutineKey, GoroutineInfo, SiteStats);

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
