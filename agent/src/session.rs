//! A tracing session: which processes are traced, the probes attached for them, and
//! their goroutine tables.
//!
//! With no target (`Target::Node`), every Go process of the host that the selectors
//! admit, found by [`discover`]: one shared set of probes per distinct binary, attached
//! when its first process is found and detached when its last process exits.
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

use crate::discover::container::ContainerRef;
use crate::discover::cri::PodResolver;
use crate::discover::select::{Decision, Selector, Workload};
use crate::discover::{self, Candidate, NodeScanner};
use crate::gobin::{self, Analysis, Hook};
use crate::intake::{ProcessReader, StackInterest};
use crate::model::{Identity, MapFill, ProcessTable};
use crate::probe::{Probes, Program, Scope};
use crate::process::{self, ProcessId};
use crate::track::{ProcessMeta, Tracker};

/// What to trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Pid(u32),
    Exe(PathBuf),
    /// Every Go process of the host (discovery).
    Node,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Exe(e) => write!(f, "{}", e.display()),
            Target::Node => write!(f, "node"),
        }
    }
}

/// Whether and how contexts are traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContextMode {
    /// Goroutines only.
    Off,
    /// One probe per context, at its creation; cancellations are read from the
    /// contexts' memory at each refresh (the default).
    #[default]
    Created,
    /// Two probes per context: creation and `(*cancelCtx).cancel` (cancellations exact
    /// and at once, about twice the cost).
    CancelProbe,
}

impl ContextMode {
    /// From the `contexts` and `context_cancel_probe` settings.
    pub fn of(contexts: bool, cancel_probe: bool) -> ContextMode {
        match (contexts, cancel_probe) {
            (false, _) => ContextMode::Off,
            (true, false) => ContextMode::Created,
            (true, true) => ContextMode::CancelProbe,
        }
    }

    fn hooks(self) -> &'static [Hook] {
        match self {
            ContextMode::Off => &[],
            ContextMode::Created => &[Hook::ContextCreate],
            ContextMode::CancelProbe => &[Hook::ContextCreate, Hook::ContextCancel],
        }
    }
}

/// `true`: the default mode, `false`: goroutines only.
impl From<bool> for ContextMode {
    fn from(contexts: bool) -> ContextMode {
        ContextMode::of(contexts, false)
    }
}

/// How many goroutines may still be tracked: per process, and left for the whole node
/// (shared by every process refreshed with it, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub per_process: usize,
    pub node_left: usize,
}

impl Budget {
    pub const UNLIMITED: Budget = Budget {
        per_process: usize::MAX,
        node_left: usize::MAX,
    };

    /// The goroutines the next process may track.
    fn allowance(&self) -> usize {
        self.per_process.min(self.node_left)
    }

    fn spend(&mut self, n: usize) {
        self.node_left = self.node_left.saturating_sub(n);
    }
}

/// Discovery of every Go process of the host (`Target::Node`).
pub struct NodeDiscovery {
    pub scanner: NodeScanner,
    pub selector: Selector,
    /// How long to wait for the pod of a containerised process before deciding without
    /// it (the selectors need it and the runtime has not listed the container yet).
    pub pod_wait: std::time::Duration,
}

/// Why discovery does not trace a Go process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skipped {
    /// Excluded by the selectors.
    Selectors,
    /// Its binary cannot be traced (unsupported Go version, …) or attaching failed.
    Untraceable,
}

/// A binary with probes attached.
struct Binary {
    analysis: Arc<Analysis>,
    /// Tag of its probes (see `Probes::attach_group`).
    group: u64,
}

pub struct Session {
    target: Target,
    probes: Option<Probes>,
    /// For `--exe` and node discovery: every binary whose probes are attached, by
    /// (device, inode), each analysed once and shared by all its processes.
    binaries: HashMap<(u64, u64), Binary>,
    next_group: u64,
    node: Option<NodeDiscovery>,
    /// Processes found by discovery waiting for their pod (since when).
    pod_pending: HashMap<ProcessId, std::time::Instant>,
    /// Processes not traced (not looked at again), and why.
    skipped: HashMap<ProcessId, Skipped>,
    /// Binaries seen at the target path that cannot be traced (tried once).
    rejected: HashSet<(u64, u64)>,
    /// Which context probes are wanted.
    want_contexts: ContextMode,
    /// Pod identity: decorates every traced process; node discovery's selectors use it.
    pods: Option<Arc<PodResolver>>,
    /// Bound of the goroutines kept from a process's attach-time inventory.
    attach_max: usize,
    procs: BTreeMap<u32, Traced>,
    /// Processes of the target that could not be traced (e.g. not permitted).
    pub attach_failures: u64,
    /// Whether the context probes are attached.
    contexts: bool,
    /// Stack interest of processes traced from now on.
    default_interest: StackInterest,
    /// Whether tables list every goroutine (see [`Session::set_goroutine_views`]).
    goroutine_views: bool,
}

/// One traced process: how it is read, and what is remembered about it.
struct Traced {
    reader: ProcessReader,
    tracker: Tracker,
    /// The binary it runs (for `--exe` and discovery).
    ident: Option<(u64, u64)>,
    container: Option<ContainerRef>,
}

const HOOKS: [Hook; 2] = [Hook::GoroutineCreate, Hook::GoroutineExit];

/// Attaches the goroutine probes, and the context probes when wanted and the binary has
/// their sites (package context linked and not inlined away); returns whether contexts
/// are traced.
fn attach_all(
    probes: &mut Probes,
    group: u64,
    analysis: &Analysis,
    path: &Path,
    scope: Scope,
    contexts: ContextMode,
) -> Result<bool> {
    probes.attach_group(group, analysis, path, &HOOKS, scope, Program::Goroscope)?;
    if contexts == ContextMode::Off {
        tracing::info!(binary = %analysis.path.display(), "contexts not traced: disabled by configuration");
        return Ok(false);
    }
    // Reading cancellations from memory needs the `cancelCtx` layout.
    let contexts = if analysis.offsets.cancel_ctx.is_none() {
        ContextMode::CancelProbe
    } else {
        contexts
    };
    let hooks = contexts.hooks();
    if analysis.has_sites(hooks) {
        probes.set_context_cancel_probe(contexts == ContextMode::CancelProbe);
        probes.attach_group(group, analysis, path, hooks, scope, Program::Goroscope)?;
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

    /// As [`Session::attach`]; `contexts: false` attaches the goroutine probes only,
    /// `true` the default context mode (see [`ContextMode`]).
    pub fn attach_with(
        target: Target,
        max_live: u32,
        contexts: impl Into<ContextMode>,
    ) -> Result<Session> {
        Session::attach_limited(target, max_live, contexts, usize::MAX)
    }

    /// As [`Session::attach_with`]; each process's attach-time inventory keeps at most
    /// `max_goroutines` goroutines (the rest are counted).
    pub fn attach_limited(
        target: Target,
        max_live: u32,
        contexts: impl Into<ContextMode>,
        max_goroutines: usize,
    ) -> Result<Session> {
        let contexts = contexts.into();
        let mut probes = Probes::load(max_live)?;
        let mut s = Session::empty(target.clone(), contexts);
        s.attach_max = max_goroutines;
        match &target {
            Target::Pid(pid) => {
                let id = process::check_pid(*pid)?;
                let analysis = Arc::new(gobin::analyze(&id.exe_link())?);
                let scope = Scope::Pid(process::nonzero_pid(*pid)?);
                s.contexts =
                    attach_all(&mut probes, 0, &analysis, &id.exe_link(), scope, contexts)?;
                s.probes = Some(probes);
                s.add(id, analysis, None, None)?;
            }
            Target::Node => s.probes = Some(probes),
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
        let mut s = Session::empty(Target::Pid(pid), ContextMode::Off);
        s.add(id, analysis, None, None)?;
        Ok(s)
    }

    /// Every Go process of the host that `node`'s selectors admit, present and future;
    /// `pods` is known before the first scan, for selectors that need a process's pod.
    pub fn attach_node(
        node: NodeDiscovery,
        pods: Option<Arc<PodResolver>>,
        max_live: u32,
        contexts: impl Into<ContextMode>,
        max_goroutines: usize,
    ) -> Result<Session> {
        let mut s = Session::attach_limited(Target::Node, max_live, contexts, max_goroutines)?;
        s.node = Some(node);
        s.pods = pods;
        s.discover();
        Ok(s)
    }

    /// Pod identity for the traced processes' tables.
    pub fn set_pods(&mut self, pods: Arc<PodResolver>) {
        self.pods = Some(pods);
    }

    /// What the last discovery scan did (node discovery only).
    pub fn scan_stats(&self) -> Option<discover::ScanStats> {
        let mut st = self.node.as_ref()?.scanner.stats();
        let count = |why| self.skipped.values().filter(|s| **s == why).count();
        st.excluded = count(Skipped::Selectors);
        st.untraceable = count(Skipped::Untraceable);
        st.waiting_for_pod = self.pod_pending.len();
        st.traced = self.procs.len();
        Some(st)
    }

    fn empty(target: Target, want_contexts: ContextMode) -> Session {
        Session {
            target,
            probes: None,
            binaries: HashMap::new(),
            next_group: 1,
            attach_max: usize::MAX,
            node: None,
            pod_pending: HashMap::new(),
            skipped: HashMap::new(),
            pods: None,
            rejected: HashSet::new(),
            want_contexts,
            procs: BTreeMap::new(),
            attach_failures: 0,
            contexts: false,
            default_interest: StackInterest::None,
            goroutine_views: true,
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
        let group = self.next_group;
        self.next_group += 1;
        match attach_all(
            probes,
            group,
            &a,
            path,
            Scope::AllProcesses,
            self.want_contexts,
        ) {
            Ok(c) => self.contexts |= c,
            Err(e) => {
                // Some hooks may be attached: none stays.
                probes.detach_group(group);
                return Err(e);
            }
        }
        self.binaries.insert(
            ident,
            Binary {
                analysis: a.clone(),
                group,
            },
        );
        Ok(a)
    }

    /// The analysis of the binary with this identity, analysing it and attaching its
    /// probes (through `/proc/PID/exe` of a process running it) the first time.
    fn binary(&mut self, ident: (u64, u64), pid: u32) -> Option<Arc<Analysis>> {
        if let Some(b) = self.binaries.get(&ident) {
            return Some(b.analysis.clone());
        }
        if self.rejected.contains(&ident) {
            return None;
        }
        let exe = std::fs::read_link(process::exe_link(pid)).unwrap_or_default();
        match self.attach_binary(ident, &process::exe_link(pid)) {
            Ok(a) => {
                tracing::info!(pid, exe = %exe.display(), target = %self.target, "probes attached to the binary");
                Some(a)
            }
            Err(e) if self.target == Target::Node => {
                // Expected on a node (old Go releases, odd builds): said once per binary,
                // counted in goroscope_discovery_processes{kind="untraceable"}.
                tracing::info!(pid, exe = %exe.display(), "Go binary not traced: {e:#}");
                self.rejected.insert(ident);
                None
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
    fn add(
        &mut self,
        id: ProcessId,
        analysis: Arc<Analysis>,
        ident: Option<(u64, u64)>,
        container: Option<ContainerRef>,
    ) -> Result<()> {
        let mut reader = ProcessReader::new(id, analysis.clone())?;
        let meta = ProcessMeta {
            id,
            exe: std::fs::read_link(id.exe_link())
                .unwrap_or_else(|_| analysis.path.clone())
                .display()
                .to_string(),
            go_version: analysis.go_version.clone(),
            build: analysis.build_source(),
        };
        let mut tracker = Tracker::new(meta, &reader.observe(None, self.attach_max), &*analysis);
        tracker.set_keep_goroutines(self.goroutine_views);
        reader.set_stack_interest(self.default_interest.clone());
        tracing::info!(pid = id.pid, exe = %tracker.meta().exe, container = container.as_ref().map_or("", |c| c.id.as_str()), "tracing process");
        self.procs.insert(
            id.pid,
            Traced {
                reader,
                tracker,
                ident,
                container,
            },
        );
        Ok(())
    }

    /// Finds new processes of the target and drops those that exited; with node
    /// discovery, detaches the probes of binaries whose last process exited.
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
        match self.target.clone() {
            Target::Exe(path) => {
                for (pid, ident) in discover::pids_running(&path) {
                    if self.procs.contains_key(&pid) {
                        continue;
                    }
                    let Some(analysis) = self.binary(ident, pid) else {
                        continue;
                    };
                    let Ok(id) = ProcessId::of(pid) else { continue };
                    let container = discover::container::of_pid(pid);
                    if let Err(e) = self.add(id, analysis, Some(ident), container) {
                        self.attach_failures += 1;
                        tracing::warn!(pid, "cannot trace process: {e:#}");
                    }
                }
            }
            Target::Node => self.discover_node(),
            Target::Pid(_) => {}
        }
    }

    /// Node discovery: new Go processes the selectors admit; binaries without a
    /// process left lose their probes.
    fn discover_node(&mut self) {
        let Some(mut node) = self.node.take() else {
            return;
        };
        let procs = &self.procs;
        let skipped = &self.skipped;
        let found: Vec<Candidate> = node.scanner.scan(|id| {
            procs.get(&id.pid).is_some_and(|t| t.reader.id() == id) || skipped.contains_key(&id)
        });
        let alive: HashSet<ProcessId> = found.iter().map(|c| c.id).collect();
        self.skipped.retain(|id, _| id.is_alive());
        self.pod_pending.retain(|id, _| alive.contains(id));
        let pods = self.pods.clone();
        // Whether a runtime may still name a container's pod (read once per scan).
        let runtime = pods.as_ref().is_some_and(|p| p.status().socket.is_some());
        for c in found {
            let identity = match (&c.container, &pods) {
                (Some(ct), Some(pods)) => pods.lookup(&ct.id),
                _ => None,
            };
            let waited = self
                .pod_pending
                .get(&c.id)
                .map(|t| t.elapsed())
                .unwrap_or_default();
            let pending = c.container.is_some() && runtime && waited < node.pod_wait;
            let exe = c.exe.to_string_lossy();
            let workload = identity.as_ref().map(|p| Workload {
                namespace: &p.namespace,
                container: &p.container,
                labels: &p.labels,
            });
            match node.selector.decide(&exe, workload, pending) {
                Decision::Skip => {
                    tracing::debug!(pid = c.id.pid, exe = %exe, "not traced: excluded by the discovery selectors");
                    self.pod_pending.remove(&c.id);
                    self.skipped.insert(c.id, Skipped::Selectors);
                }
                Decision::Wait => {
                    self.pod_pending
                        .entry(c.id)
                        .or_insert_with(std::time::Instant::now);
                }
                Decision::Trace => {
                    self.pod_pending.remove(&c.id);
                    let Some(analysis) = self.binary(c.ident, c.id.pid) else {
                        // Not traceable (e.g. unsupported Go version): said once per binary.
                        self.skipped.insert(c.id, Skipped::Untraceable);
                        continue;
                    };
                    if let Err(e) = self.add(c.id, analysis, Some(c.ident), c.container) {
                        self.attach_failures += 1;
                        self.skipped.insert(c.id, Skipped::Untraceable);
                        tracing::warn!(pid = c.id.pid, "cannot trace process: {e:#}");
                    }
                }
            }
        }
        // Rejected binaries are remembered while a process runs them.
        self.rejected.retain(|r| node.scanner.running(*r));
        self.node = Some(node);
        // Binaries whose last process exited.
        let used: HashSet<(u64, u64)> = self.procs.values().filter_map(|t| t.ident).collect();
        let unused: Vec<(u64, u64)> = self
            .binaries
            .keys()
            .filter(|k| !used.contains(*k))
            .copied()
            .collect();
        for ident in unused {
            if let (Some(b), Some(p)) = (self.binaries.remove(&ident), self.probes.as_mut()) {
                let n = p.detach_group(b.group);
                tracing::info!(binary = %b.analysis.path.display(), probes = n, "last process of the binary exited: probes detached");
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

    /// Whose goroutine stacks the next refreshes of process `pid` read (none by
    /// default): the goroutines of those creation sites that are blocked or in a system
    /// call get their stacks read (cached while they stay put, bounded per refresh), and
    /// the process's table says where they block (`ProcessTable::blocking`). False when
    /// `pid` is not traced.
    pub fn set_stack_interest(&mut self, pid: u32, interest: StackInterest) -> bool {
        match self.procs.get_mut(&pid) {
            Some(t) => {
                t.reader.set_stack_interest(interest);
                true
            }
            None => false,
        }
    }

    /// New stacks read per refresh at most, for every process traced now (None: the
    /// default bound). A one-shot snapshot reads them all at once.
    pub fn set_stack_budget_all(&mut self, budget: Option<usize>) {
        for t in self.procs.values_mut() {
            t.reader.set_stack_budget(budget);
        }
    }

    /// Whether the tables list every goroutine (`ProcessTable::goroutines`, on by
    /// default), for every traced process and those traced later. Off, a table's size
    /// does not grow with the goroutines (only their sums per site and state are kept):
    /// what the daemon needs.
    pub fn set_goroutine_views(&mut self, keep: bool) {
        for t in self.procs.values_mut() {
            t.tracker.set_keep_goroutines(keep);
        }
        self.goroutine_views = keep;
    }

    /// The same stack interest for every traced process and those traced later.
    pub fn set_stack_interest_all(&mut self, interest: StackInterest) {
        for t in self.procs.values_mut() {
            t.reader.set_stack_interest(interest.clone());
        }
        self.default_interest = interest;
    }

    /// Fill ratios of the kernel maps (None without probes).
    pub fn map_fill(&self) -> Option<Result<MapFill>> {
        self.probes.as_ref().map(Probes::map_fill)
    }

    /// Current goroutine tables of every traced process, with no bound on the goroutines
    /// tracked.
    pub fn refresh(&mut self) -> Result<Vec<ProcessTable>> {
        self.refresh_within(&mut { Budget::UNLIMITED })
    }

    /// Current goroutine tables of every traced process: the kernel's maps are read
    /// once, then each process is observed (intake, within `budget`), its table built
    /// (track) and decorated with its container and pod (discovery).
    pub fn refresh_within(&mut self, budget: &mut Budget) -> Result<Vec<ProcessTable>> {
        self.discover();
        let mut kernel = match &self.probes {
            Some(p) => Some(p.read(self.contexts)?),
            None => None,
        };
        let mut out = Vec::with_capacity(self.procs.len());
        let pods = self.pods.as_ref();
        let one_probe = self.contexts && self.want_contexts == ContextMode::Created;
        for (pid, t) in self.procs.iter_mut() {
            let mut records = kernel.as_mut().map(|k| k.take(*pid));
            if let (true, Some(p), Some(c)) = (
                one_probe,
                self.probes.as_mut(),
                records.as_mut().and_then(|r| r.contexts.as_mut()),
            ) {
                let stale = kernel
                    .as_mut()
                    .map(|k| k.take_stale_contexts(*pid))
                    .unwrap_or_default();
                settle_contexts(p, *pid, &mut t.reader, c, &stale)?;
            }
            let obs = t.reader.observe(records, budget.allowance());
            // What judging and observing (the busiest parents) learned, told at once.
            if let (true, Some(p)) = (one_probe, self.probes.as_mut()) {
                let group = t
                    .ident
                    .and_then(|i| self.binaries.get(&i))
                    .map_or(0, |b| b.group);
                tell_context_types(p, group, &t.reader)?;
            }
            if let Ok(gs) = &obs.inventory {
                budget.spend(gs.len());
            }
            let mut table = t.tracker.update(&obs, &**t.reader.analysis());
            t.reader.recycle(obs);
            table.identity = identity(t.container.as_ref(), pods);
            out.push(table);
        }
        Ok(out)
    }
}

/// One-probe mode, one process: judges its tracked contexts from its memory, frees the
/// records of those cancelled or gone, and counts them. (The context types learned
/// meanwhile are told to the kernel after the observation, with what it learns.)
fn settle_contexts(
    p: &mut Probes,
    pid: u32,
    reader: &mut ProcessReader,
    c: &mut crate::probe::ContextRecords,
    stale: &HashMap<u64, goroscope_common::CtxInfo>,
) -> Result<()> {
    if !stale.is_empty() {
        let judged = reader.judge_stale_contexts(stale);
        let keys: Vec<(u64, u64)> = judged.iter().map(|j| (j.ctx, j.info.created_ns)).collect();
        let freed = p.free_contexts(pid, &keys)?;
        reader.settle_stale_contexts(&judged, &freed);
    }
    let judged = reader.judge_contexts(c);
    if !judged.is_empty() {
        let keys: Vec<(u64, u64)> = judged.iter().map(|j| (j.ctx, j.info.created_ns)).collect();
        let freed = p.free_contexts(pid, &keys)?;
        reader.settle_contexts(c, &judged, &freed);
    }
    Ok(())
}

/// Tells the kernel what the agent learned about a process's context types (its `chan
/// struct{}` type, the parent types that hold their children), once it knows the first.
fn tell_context_types(p: &mut Probes, group: u64, reader: &ProcessReader) -> Result<()> {
    match reader.context_chan_type() {
        Some(t) => p.set_context_types(group, t, &reader.context_holder_itabs()),
        None => Ok(()),
    }
}

/// A process's container and pod, as far as known now.
fn identity(container: Option<&ContainerRef>, pods: Option<&Arc<PodResolver>>) -> Identity {
    let Some(c) = container else {
        return Identity::default();
    };
    let pod = pods.and_then(|p| p.lookup(&c.id)).unwrap_or_default();
    Identity {
        container_id: c.id.clone(),
        namespace: pod.namespace,
        pod: pod.pod,
        container: pod.container,
        pod_uid: if pod.pod_uid.is_empty() {
            c.pod_uid.clone().unwrap_or_default()
        } else {
            pod.pod_uid
        },
        pod_labels: pod.labels,
    }
}
