//! Intake: everything goroscope learns about one traced process at one refresh, as one
//! plain [`Observation`]: what the kernel recorded ([`crate::probe::ProcessRecords`])
//! and what is read from the process's memory (the goroutine inventory, the channels
//! blocked goroutines wait on, the children maps of busy parent contexts). Nothing here
//! merges or judges: that is [`crate::track`], which needs no kernel and no process.
//!
//! Code addresses in an observation are link-time addresses (the load bias of a PIE
//! process is taken off here), so later stages never deal with relocation.

pub mod contexts;
pub mod goroutines;
pub mod memory;

use std::sync::Arc;

use anyhow::Result;

pub use contexts::{ContextReads, ParentRecord};
pub use goroutines::G;
pub use memory::ProcMem;

use crate::clock::mono_ns;
use crate::gobin::Analysis;
use crate::probe::ProcessRecords;
use crate::process::{self, ProcessId};

/// One process at one refresh.
#[derive(Debug, Clone)]
pub struct Observation {
    pub process: ProcessId,
    /// CLOCK_MONOTONIC (ns), the clock of the kernel's timestamps.
    pub now_ns: u64,
    /// The goroutines alive now (from `runtime.allgs`), or why they could not be read.
    pub inventory: Result<Vec<G>, String>,
    /// Live goroutines beyond the budget of goroutines tracked per process: counted,
    /// not in `inventory`.
    pub untracked: u64,
    /// What the kernel recorded (None without probes).
    pub kernel: Option<ProcessRecords>,
    /// What was read about the contexts in `kernel` (None when contexts are not traced).
    pub contexts: Option<ContextReads>,
}

/// Reads one traced process: its memory, and its share of the kernel's records.
pub struct ProcessReader {
    id: ProcessId,
    analysis: Arc<Analysis>,
    mem: ProcMem,
    /// Load bias (PIE): runtime address = link-time address + bias.
    bias: u64,
    contexts: contexts::ContextReader,
}

impl ProcessReader {
    pub fn new(id: ProcessId, analysis: Arc<Analysis>) -> Result<ProcessReader> {
        let bias = if analysis.pie {
            let (vaddr, off) = analysis.first_load;
            process::load_bias(id.pid, vaddr, off)?
        } else {
            0
        };
        Ok(ProcessReader {
            id,
            analysis,
            mem: ProcMem::new(id.pid),
            bias,
            contexts: Default::default(),
        })
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn analysis(&self) -> &Arc<Analysis> {
        &self.analysis
    }

    /// Observes the process now; `kernel` is its share of the kernel's records (None
    /// without probes). At most `max_goroutines` are read into the inventory.
    pub fn observe(
        &mut self,
        kernel: Option<ProcessRecords>,
        max_goroutines: usize,
    ) -> Observation {
        let now_ns = mono_ns();
        let (inventory, untracked) =
            match goroutines::read(&self.mem, &self.analysis, self.bias, max_goroutines) {
                Ok(inv) => (Ok(inv.goroutines), inv.untracked),
                Err(e) => (Err(format!("{e:#}")), 0),
            };
        let kernel = kernel.map(|k| rebase(k, self.bias));
        let contexts = kernel.as_ref().and_then(|k| k.contexts.as_ref()).map(|c| {
            self.contexts.read(
                &self.mem,
                &self.analysis,
                &c.live,
                inventory.as_deref().ok(),
            )
        });
        Observation {
            process: self.id,
            now_ns,
            inventory,
            untracked,
            kernel,
            contexts,
        }
    }
}

/// The kernel's goroutine records with link-time code addresses (context sites are
/// link-time already: the kernel program takes the bias off).
fn rebase(mut k: ProcessRecords, bias: u64) -> ProcessRecords {
    if bias == 0 {
        return k;
    }
    for g in k.goroutines.values_mut() {
        g.gopc = g.gopc.wrapping_sub(bias);
        g.startpc = g.startpc.wrapping_sub(bias);
    }
    k.sites = k
        .sites
        .into_iter()
        .map(|(gopc, s)| (gopc.wrapping_sub(bias), s))
        .collect();
    k
}
