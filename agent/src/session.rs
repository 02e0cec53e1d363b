//! A tracing session: which processes are traced, the probes attached for them, and
//! their goroutine tables.
//!
//! `--pid N` traces one process (probes scoped to it). `--exe PATH` traces every process
//! running that binary, present and future, with one shared set of probes per binary: the
//! file at PATH, and any other binary that a process sees at PATH in its own mount
//! namespace (a container), reached through that process's `/proc/PID/exe`. A process
//! that exits is dropped and everything the kernel held about it is removed; a new
//! process that reuses its pid is a different process (start time differs).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    /// For `--exe`: every binary whose probes are attached, by (device, inode), each
    /// analysed once and shared by all its processes.
    binaries: HashMap<(u64, u64), Arc<Analysis>>,
    /// Binaries seen at the target path that cannot be traced (tried once).
    rejected: HashSet<(u64, u64)>,
    /// Whether context probes are wanted.
    want_contexts: bool,
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
    path: &Path,
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
        let mut s = Session::empty(target.clone(), contexts);
        match &target {
            Target::Pid(pid) => {
                let id = process::check_pid(*pid)?;
                let analysis = Arc::new(gobin::analyze(&id.exe_link())?);
                let scope = Scope::Pid(NonZeroU32::new(*pid).context("pid 0")?);
                s.contexts = attach_all(&mut probes, &analysis, &id.exe_link(), scope, contexts)?;
                s.probes = Some(probes);
                s.add(id, analysis)?;
            }
            Target::Exe(path) => {
                s.probes = Some(probes);
                // The file on this filesystem, if there is one; processes that see a
                // binary at this path in their own mount namespace are found by
                // `discover`.
                if let Ok(m) = std::fs::metadata(path) {
                    s.attach_binary((m.dev(), m.ino()), path)?;
                }
            }
        }
        s.discover();
        Ok(s)
    }

    /// Reads goroutines without probes (no privileges beyond ptrace access needed).
    pub fn inventory_only(pid: u32) -> Result<Session> {
        let id = process::check_pid(pid)?;
        let analysis = Arc::new(gobin::analyze(&id.exe_link())?);
        let mut s = Session::empty(Target::Pid(pid), false);
        s.add(id, analysis)?;
        Ok(s)
    }

    fn empty(target: Target, want_contexts: bool) -> Session {
        Session {
            target,
            probes: None,
            binaries: HashMap::new(),
            rejected: HashSet::new(),
            want_contexts,
            procs: BTreeMap::new(),
            attach_failures: 0,
            contexts: false,
        }
    }

    /// For `--exe`: how many binaries have their probes attached (0: the file does not
    /// exist here and no process runs a binary at that path).
    pub fn binaries_attached(&self) -> usize {
        self.binaries.len()
    }

    /// Analyses the binary at `path` (identity `ident`) and attaches its probes for all
    /// processes that run it.
    fn attach_binary(&mut self, ident: (u64, u64), path: &Path) -> Result<Arc<Analysis>> {
        let a = Arc::new(gobin::analyze(path)?);
        let probes = self.probes.as_mut().context("probes not loaded")?;
        self.contexts |= attach_all(probes, &a, path, Scope::AllProcesses, self.want_contexts)?;
        self.binaries.insert(ident, a.clone());
        Ok(a)
    }

    /// The analysis of the binary with this identity, analysing it and attaching its
    /// probes (through `/proc/PID/exe` of a process running it) the first time.
    fn binary(&mut self, ident: (u64, u64), pid: u32) -> Option<Arc<Analysis>> {
        if let Some(a) = self.binaries.get(&ident) {
            return Some(a.clone());
        }
        if self.rejected.contains(&ident) {
            return None;
        }
        match self.attach_binary(ident, &PathBuf::from(format!("/proc/{pid}/exe"))) {
            Ok(a) => {
                tracing::info!(pid, target = %self.target, "attached to the binary a process runs at the target path");
                Some(a)
            }
            Err(e) => {
                tracing::warn!(pid, target = %self.target, "cannot trace the binary at the target path: {e:#}");
                self.attach_failures += 1;
                self.rejected.insert(ident);
                None
            }
        }
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
        if let Target::Exe(path) = self.target.clone() {
            for (pid, ident) in process::pids_running(&path) {
                if self.procs.contains_key(&pid) {
                    continue;
                }
                let Some(analysis) = self.binary(ident, pid) else {
                    continue;
                };
                let Ok(id) = ProcessId::of(pid) else { continue };
                if let Err(e) = self.add(id, analysis) {
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
