//! The kernel programs: loading them ([`Probes::load`]), attaching them at the sites
//! chosen by [`crate::gobin`] ([`attach`]), and reading what they recorded ([`maps`];
//! the slot tables through mmap, [`slots`]); the programs' rare log lines reach the
//! agent's log through [`kernel_log`].
//!
//! One BPF object serves every traced binary: each attached uprobe carries a cookie that
//! indexes its `SiteConfig` (field offsets for that Go version) in the `SITE_CONFIG`
//! array. Dropping [`Probes`] detaches everything.

mod attach;
mod kernel_log;
mod maps;
mod slots;

use std::num::NonZeroU32;

use anyhow::Result;
use aya::programs::uprobe::UProbeLinkId;
use aya::{Ebpf, EbpfLoader};
use goroscope_common::{CtxSiteSlot, CtxSlot, GSlot, CTX_SITE_SLOTS, CTX_SLOTS, G_SLOTS};

use crate::gobin::Hook;

pub use maps::{ContextRecords, KernelState, ProcessRecords};
use slots::SlotTable;

/// The kernel programs, built from `ebpf/goroscope-ebpf` by `agent/build.rs`.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOROSCOPE_BPF_OBJECT"));

/// Which processes a probe fires for.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Only this process.
    Pid(NonZeroU32),
    /// Every process running the binary, present and future.
    AllProcesses,
}

/// What to attach at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// goroscope's programs.
    Goroscope,
    /// An empty program (benchmark floor).
    Noop,
}

/// One attached probe.
struct Attached {
    program: &'static str,
    hook: Hook,
    link: UProbeLinkId,
    /// Index of its configuration in SITE_CONFIG / CTX_CONFIG.
    cookie: u32,
    /// What it was attached for (see [`Probes::attach_group`]).
    group: u64,
}

/// The loaded BPF object, its maps and the probes attached so far.
pub struct Probes {
    /// Declared before `ebpf` so they are unmapped before the maps are closed.
    slots: SlotTable<GSlot>,
    ctx_slots: SlotTable<CtxSlot>,
    ctx_sites: SlotTable<CtxSiteSlot>,
    ebpf: Ebpf,
    max_live: u32,
    /// `CtxConfig::flags` of the context probes attached from now on.
    ctx_flags: u32,
    /// The next never-used attach cookie (index of the site's configuration).
    next_cookie: u32,
    /// Cookies of detached probes, reused first.
    free_cookies: Vec<u32>,
    links: Vec<Attached>,
    /// Forwards the kernel's log lines; holds their ring buffer as long as `ebpf`.
    _kernel_log: Option<kernel_log::KernelLog>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Probes {
    /// Loads the BPF object (maps created, nothing attached). `max_live` bounds the
    /// live-goroutine map.
    pub fn load(max_live: u32) -> Result<Probes> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("LIVE", max_live)
            .load(BPF_OBJECT)
            .map_err(|e| {
                let hint = if is_root() {
                    ""
                } else {
                    " (loading BPF programs needs root, or CAP_BPF and CAP_PERFMON)"
                };
                anyhow::anyhow!("loading the BPF programs failed: {e}{hint}")
            })?;
        let _kernel_log = kernel_log::start(&mut ebpf);
        let slots = SlotTable::map(&ebpf, "GSLOTS", G_SLOTS)?;
        let ctx_slots = SlotTable::map(&ebpf, "CTX_SLOT_TABLE", CTX_SLOTS)?;
        let ctx_sites = SlotTable::map(&ebpf, "CTX_SITE_TABLE", CTX_SITE_SLOTS)?;
        Ok(Probes {
            slots,
            ctx_slots,
            ctx_sites,
            ebpf,
            max_live,
            ctx_flags: goroscope_common::CTX_ONE_PROBE,
            next_cookie: 0,
            free_cookies: Vec::new(),
            links: Vec::new(),
            _kernel_log,
        })
    }
}

impl Probes {
    /// Whether the context probes attached from now on come with a cancel probe (false,
    /// the default: one probe per context, cancellations read from memory by the agent;
    /// see `CTX_ONE_PROBE`).
    pub fn set_context_cancel_probe(&mut self, cancel_probe: bool) {
        self.ctx_flags = if cancel_probe {
            0
        } else {
            goroscope_common::CTX_ONE_PROBE
        };
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}
