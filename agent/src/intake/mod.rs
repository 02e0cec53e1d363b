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
pub mod stacks;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Result;

pub use contexts::{ContextReads, Judged, OnG, ParentRecord};
pub use goroutines::G;
pub use memory::ProcMem;
pub use stacks::{Stack, StackInterest};

use crate::clock::mono_ns;
use crate::gobin::Analysis;
use crate::probe::{ContextRecords, ProcessRecords};
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
    /// Start functions read from the stacks of goroutines started by wrappers that call
    /// through a register (by goid); the others' come from the binary alone.
    pub starts: HashMap<u64, Arc<str>>,
    /// Stacks of the stopped goroutines (blocked, or in a system call) of the sites of
    /// interest ([`ProcessReader::set_stack_interest`]), by goid; goroutines with the
    /// same stack share one. Empty without interest.
    pub stacks: HashMap<u64, Arc<Stack>>,
}

/// Reads one traced process: its memory, and its share of the kernel's records.
pub struct ProcessReader {
    id: ProcessId,
    analysis: Arc<Analysis>,
    mem: ProcMem,
    /// Load bias (PIE): runtime address = link-time address + bias.
    bias: u64,
    contexts: contexts::ContextReader,
    /// Start functions read from stacks (see `Observation::starts`), by goid, kept while
    /// the goroutine lives: each stack is walked once (`None`: could not be read yet).
    starts: HashMap<u64, Option<Arc<str>>>,
    /// Stacks of the goroutines of the sites of interest, cached while they stay put.
    stacks: stacks::StackReader,
    /// How the goroutines are read (kept between refreshes).
    plan: goroutines::Plan,
}

/// Stacks walked per refresh at most, so a process with many new wrapper-started
/// goroutines costs a bounded time per refresh (the rest are walked at the next ones).
const STACK_WALKS_PER_REFRESH: usize = 1024;

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
            starts: HashMap::new(),
            stacks: Default::default(),
            plan: Default::default(),
        })
    }

    pub fn id(&self) -> ProcessId {
        self.id
    }

    pub fn analysis(&self) -> &Arc<Analysis> {
        &self.analysis
    }

    /// Whose stacks the next observations read (none by default).
    pub fn set_stack_interest(&mut self, interest: StackInterest) {
        self.stacks.interest = interest;
    }

    /// New stacks read per refresh at most (None: the default bound,
    /// [`stacks::STACKS_PER_REFRESH`]).
    pub fn set_stack_budget(&mut self, budget: Option<usize>) {
        self.stacks.budget = budget;
    }

    /// One-probe mode: the tracked contexts of `c` that the process's memory shows
    /// cancelled or gone (see [`contexts::ContextReader::judge`]); their records are to be
    /// freed, then [`ProcessReader::settle_contexts`].
    pub fn judge_contexts(&mut self, c: &ContextRecords) -> Vec<Judged> {
        self.contexts.judge(&self.mem, &self.analysis, &c.live)
    }

    /// One-probe mode: judges stale records (see `KernelState::take_stale_contexts`).
    pub fn judge_stale_contexts(
        &mut self,
        stale: &HashMap<u64, goroscope_common::CtxInfo>,
    ) -> Vec<Judged> {
        self.contexts.judge_stale(&self.mem, &self.analysis, stale)
    }

    /// Counts the judged stale records that were freed.
    pub fn settle_stale_contexts(&mut self, judged: &[Judged], freed: &[bool]) {
        self.contexts.settle_stale(judged, freed, mono_ns());
    }

    /// Counts the judged contexts whose records were freed and takes them out of `c`.
    pub fn settle_contexts(&mut self, c: &mut ContextRecords, judged: &[Judged], freed: &[bool]) {
        self.contexts.settle(&mut c.live, judged, freed, mono_ns());
    }

    /// Link-time address of the process's `chan struct{}` type descriptor, once learned.
    pub fn context_chan_type(&self) -> Option<u64> {
        self.contexts.chan_type().map(|t| t.wrapping_sub(self.bias))
    }

    /// Link-time itabs of the parent types seen holding their children.
    pub fn context_holder_itabs(&self) -> Vec<u64> {
        self.contexts
            .holder_itabs()
            .iter()
            .map(|t| t.wrapping_sub(self.bias))
            .collect()
    }

    /// Observes the process now; `kernel` is its share of the kernel's records (None
    /// without probes). At most `max_goroutines` are read into the inventory.
    pub fn observe(
        &mut self,
        kernel: Option<ProcessRecords>,
        max_goroutines: usize,
    ) -> Observation {
        let now_ns = mono_ns();
        let mut stacks = HashMap::new();
        let (inventory, untracked) = match goroutines::read(
            &self.mem,
            &self.analysis,
            self.bias,
            max_goroutines,
            &self.stacks.interest,
            &mut self.plan,
        ) {
            Ok(inv) => {
                self.resolve_starts(&inv.goroutines, &inv.wrapper_stacks);
                stacks = self
                    .stacks
                    .read(&self.mem, &self.analysis, self.bias, &inv.parked);
                (Ok(inv.goroutines), inv.untracked)
            }
            Err(e) => (Err(format!("{e:#}")), 0),
        };
        let starts = self
            .starts
            .iter()
            .filter_map(|(goid, s)| Some((*goid, s.clone()?)))
            .collect();
        let mut kernel = kernel.map(|k| rebase(k, self.bias));
        if let Some(c) = kernel.as_mut().and_then(|k| k.contexts.as_mut()) {
            self.contexts.merge_seen(&mut c.sites);
        }
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
            starts,
            stacks,
        }
    }

    /// Hands an observation back once it is tracked: its buffers serve the next one.
    pub fn recycle(&mut self, obs: Observation) {
        if let Ok(gs) = obs.inventory {
            self.plan.recycle(gs);
        }
    }

    /// Walks the stacks not walked yet (a bounded number per refresh); forgets the
    /// goroutines that exited.
    fn resolve_starts(&mut self, gs: &[G], stacks: &[(u64, u64, u64)]) {
        // Most programs have no such goroutine: no set of every live goid then.
        if stacks.is_empty() && self.starts.is_empty() {
            return;
        }
        let live: HashSet<u64> = gs.iter().map(|g| g.goid).collect();
        self.starts.retain(|goid, _| live.contains(goid));
        let mut budget = STACK_WALKS_PER_REFRESH;
        for &(goid, pc, bp) in stacks {
            if budget == 0 {
                break;
            }
            if matches!(self.starts.get(&goid), Some(Some(_))) {
                continue;
            }
            budget -= 1;
            let name = goroutines::resolve_start(&self.mem, &self.analysis, self.bias, pc, bp);
            self.starts.insert(goid, name.map(Arc::from));
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
