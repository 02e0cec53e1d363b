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
/// Default bound of the live-goroutine map (entries); the agent may change it at load.
pub const DEFAULT_MAX_LIVE: u32 = 262_144;
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
    /// Offset of `runtime.g.parentGoid`.
    pub parent_goid_off: u32,
    /// Offset of `runtime.g.gopc` (return address of the `go` statement's call).
    pub gopc_off: u32,
    /// Offset of `runtime.g.startpc` (entry of the goroutine function).
    pub startpc_off: u32,
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

/// Statistics of one creation site, updated with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// Goroutines created at this site while attached.
    pub created: u64,
    /// Of those, exited (their lifetime is in the histogram).
    pub exited: u64,
    /// Goroutines of this site that existed before attach (or whose creation could not be
    /// recorded) and exited while attached.
    pub exited_untracked: u64,
    /// Sum of the lifetimes in the histogram, in ns.
    pub lifetime_ns_sum: u64,
    pub lifetime_buckets: [u64; LIFETIME_BUCKETS],
}

impl Default for SiteStats {
    fn default() -> Self {
        SiteStats {
            created: 0,
            exited: 0,
            exited_untracked: 0,
            lifetime_ns_sum: 0,
            lifetime_buckets: [0; LIFETIME_BUCKETS],
        }
    }
}

/// Per-process counters (per CPU; the agent sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Goroutines created (creation probe hits).
    pub created: u64,
    /// Goroutines exited (exit probe hits).
    pub exited: u64,
    /// Probe hits whose `*g` fields could not be read.
    pub read_errors: u64,
    /// Creations not recorded because the live-goroutine map was full.
    pub live_map_full: u64,
    /// Creations/exits not counted per site because the site map was full.
    pub site_map_full: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): the types are `#[repr(C)]`, `Copy`, and made only of integers
    // with explicit padding fields, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SiteConfig {}
    unsafe impl aya::Pod for super::GoroutineKey {}
    unsafe impl aya::Pod for super::GoroutineInfo {}
    unsafe impl aya::Pod for super::SiteKey {}
    unsafe impl aya::Pod for super::SiteStats {}
    unsafe impl aya::Pod for super::ProcCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
