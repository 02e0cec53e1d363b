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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::discover;
use crate::gobin::{self, Analysis, Hook};
use crate::intake::ProcessReader;
use crate::model::{MapFill, ProcessTable};
use crate::probe::{Probes, Program, Scope};
use crate::process::{self, ProcessId};
use crate::track::{ProcessMeta, Tracker};

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
    procs: BTreeMap<u32, Traced>,
    /// Processes of the target that could not be traced (e.g. not permitted).
    pub attach_failures: u64,
    /// Whether the context probes are attached.
    contexts: bool,
}

/// One traced process: how it is read, and what is remembered about it.
struct Traced {
    reader: ProcessReader,
    tracker: Tracker,
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
    if analysis.has_sites(&CONTEXT_HOOKS) {
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
                let scope = Scope::Pid(process::nonzero_pid(*pid)?);
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

    /// An `--exe` target with nothing to attach to yet: no file at the path here, and
    /// no process runs a binary at that path.
    pub fn waiting(&self) -> bool {
        matches!(self.target, Target::Exe(_)) && self.binaries.is_empty()
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
        match self.attach_binary(ident, &process::exe_link(pid)) {
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

    /// Starts tracing a process: its attach-time inventory is taken now (the probes are
    /// attached already), so every goroutine alive now counts as older than the attach.
    fn add(&mut self, id: ProcessId, analysis: Arc<Analysis>) -> Result<()> {
        let mut reader = ProcessReader::new(id, analysis.clone())?;
        let meta = ProcessMeta {
            id,
            exe: std::fs::read_link(id.exe_link())
                .unwrap_or_else(|_| analysis.path.clone())
                .display()
                .to_string(),
            go_version: analysis.go_version.clone(),
        };
        let tracker = Tracker::new(meta, &reader.observe(None), &*analysis);
        tracing::info!(pid = id.pid, "tracing process");
        self.procs.insert(id.pid, Traced { reader, tracker });
        Ok(())
    }

    /// Finds new processes of the target binary and drops those that exited.
    fn discover(&mut self) {
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, t)| !t.reader.id().is_alive())
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
            for (pid, ident) in discover::pids_running(&path) {
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

    /// Fill ratios of the kernel maps (None without probes).
    pub fn map_fill(&self) -> Option<Result<MapFill>> {
        self.probes.as_ref().map(Probes::map_fill)
    }

    /// Current goroutine tables of every traced process: the kernel's maps are read
    /// once, then each process is observed (intake) and its table built (track).
    pub fn refresh(&mut self) -> Result<Vec<ProcessTable>> {
        self.discover();
        let mut kernel = match &self.probes {
            Some(p) => Some(p.read(self.contexts)?),
            None => None,
        };
        let mut out = Vec::with_capacity(self.procs.len());
        for (pid, t) in self.procs.iter_mut() {
            let records = kernel.as_mut().map(|k| k.take(*pid));
            let obs = t.reader.observe(records);
            out.push(t.tracker.update(&obs, &**t.reader.analysis()));
        }
        Ok(out)
    }
}
