//! A tracing session: which processes are traced, the probes attached for them, and
//! their goroutine tables.
//!
//! `--pid N` traces one process (probes scoped to it). `--exe PATH` traces every process
//! running that binary, present and future, with one shared set of probes. A process
//! that exits is dropped and everything the kernel held about it is removed; a new
//! process that reuses its pid is a different process (start time differs).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::gobin::{self, Analysis, Hook};
use crate::probe::{Probes, Program, Scope};
use crate::process::{self, ProcessId};
use crate::tracker::{ProcessTable, Tracked};

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Pid(u32),
    Exe(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Exe(e) => write!(f, "{}", e.display()),
        }
    }
}

pub struct Session {
    target: Target,
    probes: Option<Probes>,
    /// For `--exe`: the analysed binary shared by all its processes.
    exe: Option<Arc<Analysis>>,
    procs: BTreeMap<u32, Tracked>,
    /// Processes of the target that could not be traced (e.g. not permitted).
    pub attach_failures: u64,
    /// Whether the context probes are attached.
    contexts: bool,
}

const HOOKS: [Hook; 2] = [Hook::GoroutineCreate, Hook::GoroutineExit];
const CONTEXT_HOOKS: [Hook; 2] = [Hook::ContextCreate, Hook::ContextCancel];

/// Attaches the goroutine probes, and the context probes when wanted and the binary has
/// their sites (package context linked and not inlined away); returns whether contexts
/// are traced.
fn attach_all(
    probes: &mut Probes,
    analysis: &Analysis,
    path: &std::path::Path,
    scope: Scope,
    contexts: bool,
) -> Result<bool> {
    probes.attach(analysis, path, &HOOKS, scope, Program::Goroscope)?;
    if !contexts {
        tracing::info!(binary = %analysis.path.display(), "contexts not traced: disabled by configuration");
        return Ok(false);
    }
    let has = |h: Hook| analysis.probe_sites.iter().any(|s| s.hook == h);
    if CONTEXT_HOOKS.iter().all(|h| has(*h)) {
        probes.attach(analysis, path, &CONTEXT_HOOKS, scope, Program::Goroscope)?;
        Ok(true)
    } else {
        tracing::info!(
            binary = %analysis.path.display(),
            "contexts not traced: {}",
            analysis.missing_sites.join("; ")
        );
        Ok(false)
    }
}

impl Session {
    /// Attaches the goroutine and context probes and takes the attach-time inventory.
    pub fn attach(target: Target, max_live: u32) -> Result<Session> {
        Session::attach_with(target, max_live, true)
    }

    /// As [`Session::attach`]; `contexts: false` attaches the goroutine probes only.
    pub fn attach_with(target: Target, max_live: u32, contexts: bool) -> Result<Session> {
        let mut probes = Probes::load(max_live)?;
        let mut s = Session {
            target: target.clone(),
            probes: None,
            exe: None,
            procs: BTreeMap::new(),
            attach_failures: 0,
            contexts: false,
        };
        match &target {
            Target::Pid(pid) => {
                let id = process::check_pid(*pid)?;
                let analysis = Arc::new(gobin::analyze(&id.exe_link())?);
                let scope = Scope::Pid(NonZeroU32::new(*pid).context("pid 0")?);
                s.contexts = attach_all(&mut probes, &analysis, &id.exe_link(), scope, contexts)?;
                s.add(id, analysis)?;
            }
            Target::Exe(path) => {
                let analysis = Arc::new(gobin::analyze(path)?);
                s.contexts =
                    attach_all(&mut probes, &analysis, path, Scope::AllProcesses, contexts)?;
                s.exe = Some(analysis);
            }
        }
        s.probes = Some(probes);
        s.discover();
        Ok(s)
    }

    /// Reads goroutines without probes (no privileges beyond ptrace access needed).
    pub fn inventory_only(pid: u32) -> Result<Session> {
        let id = process::check_pid(pid)?;
        let analysis = Arc::new(gobin::analyze(&id.exe_link())?);
        let mut s = Session {
            target: Target::Pid(pid),
            probes: None,
            exe: None,
            procs: BTreeMap::new(),
            attach_failures: 0,
            contexts: false,
        };
        s.add(id, analysis)?;
        Ok(s)
    }

    fn add(&mut self, id: ProcessId, analysis: Arc<Analysis>) -> Result<()> {
        let mut t = Tracked::new(id, analysis)?;
        // The attach-time inventory: every goroutine alive now is stamped as seen.
        let _ = t.table(None, None, None, None);
        tracing::info!(pid = id.pid, "tracing process");
        self.procs.insert(id.pid, t);
        Ok(())
    }

    /// Finds new processes of the target binary and drops those that exited.
    fn discover(&mut self) {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, t)| !t.id.is_alive())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            tracing::info!(pid, "process exited");
            self.procs.remove(&pid);
            if let Some(p) = self.probes.as_mut() {
                if let Err(e) = p.purge(pid) {
                    tracing::warn!(pid, "purging kernel state: {e:#}");
                }
            }
        }
        if let (Target::Exe(path), Some(analysis)) = (self.target.clone(), self.exe.clone()) {
            for pid in process::pids_running(&path) {
                if self.procs.contains_key(&pid) {
                    continue;
                }
                let Ok(id) = ProcessId::of(pid) else { continue };
                if let Err(e) = self.add(id, analysis.clone()) {
                    self.attach_failures += 1;
                    tracing::warn!(pid, "cannot trace process: {e:#}");
                }
            }
        }
    }

    /// Whether there is nothing left to trace (`--pid` whose process exited).
    pub fn finished(&self) -> bool {
        matches!(self.target, Target::Pid(_)) && self.procs.is_empty()
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn probes(&self) -> Option<&Probes> {
        self.probes.as_ref()
    }

    /// Current goroutine tables of every traced process.
    pub fn refresh(&mut self) -> Result<Vec<ProcessTable>> {
        self.discover();
        let (live, sites) = match &self.probes {
            Some(p) => (Some(p.live()?), Some(p.sites()?)),
            None => (None, None),
        };
        let ctxs = match &self.probes {
            Some(p) if self.contexts => Some((p.contexts()?, p.context_sites()?)),
            _ => None,
        };
        let mut out = Vec::with_capacity(self.procs.len());
        for (pid, t) in self.procs.iter_mut() {
            let counters = match &self.probes {
                Some(p) => Some(p.counters(*pid)?),
                None => None,
            };
            let empty = Default::default();
            let l = live.as_ref().map(|l| l.get(pid).unwrap_or(&empty));
            let empty_sites = Default::default();
            let s = sites.as_ref().map(|s| s.get(pid).unwrap_or(&empty_sites));
            let empty_ctx = (HashMap::new(), HashMap::new());
            let c = ctxs.as_ref().map(|(l, s)| {
                (
                    l.get(pid).unwrap_or(&empty_ctx.0),
                    s.get(pid).unwrap_or(&empty_ctx.1),
                )
            });
            out.push(t.table(l, s, counters, c));
        }
        Ok(out)
    }
}
