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
    pub const RDX: u8 = 3;
    pub const RSI: u8 = 4;
    pub const RDI: u8 = 5;
    pub const R8: u8 = 6;
    pub const R9: u8 = 7;
    pub const R10: u8 = 8;
    pub const R11: u8 = 9;
    pub const R12: u8 = 10;
    pub const R13: u8 = 11;
    pub const R14: u8 = 12;
    pub const R15: u8 = 13;
    pub const RBP: u8 = 14;
    pub const RSP: u8 = 15;
}

/// Maximum number of probe-site configurations (one per attached binary and hook).
pub const MAX_SITE_CONFIGS: u32 = 256;

/// Configuration for one attached probe site. The attach cookie of a uprobe is the
/// index of its `SiteConfig` in the `SITE_CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// Offset of `runtime.g.goid`.
    pub goid_off: u32,
    /// Offset of `runtime.g.parentGoid`.
    pub parent_goid_off: u32,
    /// Offset of `runtime.g.gopc` (pc of the `go` statement).
    pub gopc_off: u32,
    /// Offset of `runtime.g.startpc` (entry of the goroutine function).
    pub startpc_off: u32,
}

/// Per-process event counters kept in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Goroutines created (creation probe hits).
    pub created: u64,
    /// Goroutines exited (exit probe hits).
    pub exited: u64,
    /// Probe hits whose `*g` or goid could not be read.
    pub read_errors: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are `#[repr(C)]`, `Copy`, and contain only integers with
    // no padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::SiteConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcCounters {}
}
