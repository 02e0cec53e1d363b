//! The refresher thread of `goroscope run`: owns the tracing sessions (probes, kernel
//! maps, process memory readers), refreshes every interval, judges the tables with the
//! leak model and publishes a [`Snapshot`].

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::config::Config;
use crate::clock::mono_ns;
use crate::detect::leak::{LeakDetector, LeakKind};
use crate::discover::cri::PodResolver;
use crate::discover::select::Selector;
use crate::discover::NodeScanner;
use crate::export::http::Shared;
use crate::export::{OtherFold, ProcessReport, Snapshot, TargetStatus};
use crate::intake::StackInterest;
use crate::model::MapFill;
use crate::session::{Budget, ContextMode, NodeDiscovery, Session, Target};

/// Identity of an `exe` target's file: device, inode, size and modification time (a file
/// still being written changes between refreshes and is tried again); None when it does
/// not exist (or for a pid target).
type FileIdentity = (u64, u64, u64, i64, i64);

fn exe_identity(t: &Target) -> Option<FileIdentity> {
    let Target::Exe(p) = t else { return None };
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// One configured target.
struct Traced {
    target: Target,
    /// None: not attached (see `error`).
    session: Option<Session>,
    /// For an `exe` target: identity of the file last attached to (or tried).
    file: Option<FileIdentity>,
    error: Option<String>,
}

impl Traced {
    /// Attaches a target at start; an error is a configuration error.
    fn attach(t: &Target, cfg: &Config, pods: &Arc<PodResolver>) -> Result<Traced> {
        let file = exe_identity(t);
        let s = session(t, cfg, pods).map_err(|e| e.context(format!("cannot trace {t}")))?;
        if *t == Target::Node {
            tracing::info!("tracing every Go process of the host (no target named)");
        } else if s.waiting() {
            tracing::warn!(traced = %t, "executable not found: its probes are attached when it appears (here, or in a process's own mount namespace)");
        } else {
            tracing::info!(traced = %t, "probes attached");
        }
        Ok(Traced {
            target: t.clone(),
            session: Some(s),
            file,
            error: None,
        })
    }

    /// For an `exe` target: a new session when its file appears, is replaced (a deploy
    /// installs a new binary: new inode, the old probes no longer fire for the processes
    /// that run it) or is removed. A file that cannot be traced is tried once per version.
    fn follow_exe(&mut self, cfg: &Config, pods: &Arc<PodResolver>, retired_failures: &mut u64) {
        if !matches!(self.target, Target::Exe(_)) {
            return;
        }
        let now = exe_identity(&self.target);
        if now == self.file {
            return;
        }
        self.file = now;
        if let Some(old) = self.session.take() {
            *retired_failures += old.attach_failures;
            // Dropping the old session detaches its probes.
        }
        match session(&self.target, cfg, pods) {
            Ok(s) => {
                if now.is_some() {
                    tracing::info!(traced = %self.target, "executable appeared or replaced: probes attached");
                } else {
                    tracing::warn!(traced = %self.target, "executable removed: probes detached; attached again when it reappears");
                }
                self.session = Some(s);
                self.error = None;
            }
            Err(e) => {
                tracing::warn!(traced = %self.target, "cannot trace: {e:#}");
                self.error = Some(format!("{e:#}"));
            }
        }
    }

    fn status(&self) -> TargetStatus {
        TargetStatus {
            target: self.target.to_string(),
            attached: self.session.as_ref().is_some_and(|s| !s.waiting()),
            waiting: self.session.as_ref().is_some_and(Session::waiting),
            error: self.error.clone(),
        }
    }
}

/// A session for target `t`: node discovery for [`Target::Node`].
fn session(t: &Target, cfg: &Config, pods: &Arc<PodResolver>) -> Result<Session> {
    if *t == Target::Node {
        let node = NodeDiscovery {
            scanner: NodeScanner::new(cfg.min_process_age),
            selector: Selector::new(&cfg.discovery)?,
            // Two listings of the runtime.
            pod_wait: cfg.pod_cache * 2,
        };
        let mut s = Session::attach_node(
            node,
            Some(pods.clone()),
            cfg.max_live_goroutines,
            ContextMode::of(cfg.contexts, cfg.context_cancel_probe),
            cfg.max_goroutines_per_process,
        )?;
        // Sums per site and state only: memory that does not grow with the goroutines.
        s.set_goroutine_views(false);
        return Ok(s);
    }
    let mut s = Session::attach_limited(
        t.clone(),
        cfg.max_live_goroutines,
        ContextMode::of(cfg.contexts, cfg.context_cancel_probe),
        cfg.max_goroutines_per_process,
    )?;
    s.set_goroutine_views(false);
    s.set_pods(pods.clone());
    Ok(s)
}

/// Stacks read per suspected site at most (its oldest goroutines): enough to name where
/// they block, at a cost that does not grow with the leak.
const STACKS_PER_SUSPECTED_SITE: usize = 1024;

/// Everything the refresher keeps between refreshes.
struct Refresher {
    cfg: Config,
    pods: Arc<PodResolver>,
    targets: Vec<Traced>,
    detector: LeakDetector,
    /// Suspected sites by (pid, kind, pc), to log changes: the site, and whether the
    /// suspicion was logged (it waits one refresh for the stacks of its goroutines).
    suspected: HashMap<(u32, LeakKind, u64), (String, bool)>,
    /// Attach failures of sessions that were dropped.
    retired_failures: u64,
    /// Per process (pid, start time): what its `site="other"` series has accumulated.
    folds: HashMap<(u32, u64), OtherFold>,
    /// Processes over the goroutine budget (pid, start time), to log changes.
    over_budget: std::collections::HashSet<(u32, u64)>,
}

impl Refresher {
    fn start(cfg: Config) -> Result<Refresher> {
        let pods = Arc::new(PodResolver::start(cfg.cri_socket.clone(), cfg.pod_cache));
        let targets = cfg
            .targets
            .iter()
            .map(|t| Traced::attach(t, &cfg, &pods))
            .collect::<Result<Vec<_>>>()?;
        Ok(Refresher {
            pods,
            detector: LeakDetector::new(cfg.leak.clone()),
            cfg,
            targets,
            suspected: HashMap::new(),
            retired_failures: 0,
            folds: HashMap::new(),
            over_budget: Default::default(),
        })
    }

    /// Refreshes every target and judges the tables.
    fn refresh(&mut self, wanted: &HashMap<u32, HashSet<u64>>) -> Snapshot {
        let t0 = Instant::now();
        let (mut reports, fill, failures) = self.collect();
        log_untracked(&reports, &mut self.over_budget);
        let verdicts = self
            .detector
            .observe(mono_ns(), reports.iter().map(|r| &r.table));
        for (r, v) in reports.iter_mut().zip(verdicts) {
            r.verdicts = v.sites;
            r.context_verdicts = v.contexts;
            let fold = self
                .folds
                .entry((r.table.pid, r.table.start_time))
                .or_default();
            r.other = Some(fold.update(r, self.cfg.top_sites));
        }
        self.folds.retain(|(pid, start), _| {
            reports
                .iter()
                .any(|r| r.table.pid == *pid && r.table.start_time == *start)
        });
        self.read_stacks_of_suspects(&reports, wanted);
        log_changes(&reports, &mut self.suspected);
        Snapshot {
            processes: reports,
            targets: self.targets.iter().map(Traced::status).collect(),
            attach_failures: failures,
            fill,
            refresh_seconds: t0.elapsed().as_secs_f64(),
            refreshed_at_unix: unix_now(),
            top_sites: self.cfg.top_sites,
            discovery: self
                .targets
                .iter()
                .find_map(|t| t.session.as_ref().and_then(Session::scan_stats)),
            cri_connected: self.pods.status().connected,
            pod_labels: self.cfg.pod_labels.clone(),
        }
    }

    /// Asks for the stacks of the goroutines of suspected sites at the next refresh, and
    /// of the sites the workbench wants (`wanted`, by pid), and only theirs (reading
    /// stacks costs a walk per goroutine) — or of every site with
    /// `stacks_of_every_site` (`goroscope serve`).
    fn read_stacks_of_suspects(
        &mut self,
        reports: &[ProcessReport],
        wanted: &HashMap<u32, HashSet<u64>>,
    ) {
        for r in reports {
            let mut sites: HashSet<u64> = r
                .verdicts
                .iter()
                .filter(|(_, v)| v.suspected)
                .map(|(gopc, _)| *gopc)
                .collect();
            if let Some(w) = wanted.get(&r.table.pid) {
                sites.extend(w);
            }
            if self.cfg.stacks_of_every_site {
                sites.extend(r.table.sites.iter().map(|s| s.gopc));
            }
            let interest = if sites.is_empty() {
                StackInterest::None
            } else {
                StackInterest::Sample(sites, STACKS_PER_SUSPECTED_SITE)
            };
            for s in self.targets.iter_mut().filter_map(|t| t.session.as_mut()) {
                if s.set_stack_interest(r.table.pid, interest.clone()) {
                    break;
                }
            }
        }
    }

    /// The tables of every traced process, the fullest map fill and the attach failures.
    fn collect(&mut self) -> (Vec<ProcessReport>, MapFill, u64) {
        let mut reports = Vec::new();
        let mut fill = MapFill::default();
        let mut failures = self.retired_failures;
        let mut budget = Budget {
            per_process: self.cfg.max_goroutines_per_process,
            node_left: self.cfg.max_goroutines_per_node,
        };
        for tr in self.targets.iter_mut() {
            tr.follow_exe(&self.cfg, &self.pods, &mut self.retired_failures);
            let target = &tr.target;
            let Some(s) = tr.session.as_mut() else {
                continue;
            };
            match s.refresh_within(&mut budget) {
                Ok(tables) => reports.extend(tables.into_iter().map(|table| ProcessReport {
                    table,
                    ..Default::default()
                })),
                Err(e) => tracing::warn!(traced = %target, "refresh failed: {e:#}"),
            }
            if let Some(Ok(f)) = s.map_fill() {
                fill = fill.max(f);
            }
            failures += s.attach_failures;
            if s.finished() {
                tracing::warn!(traced = %target, "the traced process exited; probes detached");
                self.retired_failures += s.attach_failures;
                tr.session = None;
                tr.error = Some("process exited".into());
            }
        }
        (reports, fill, failures)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The refresher thread: attaches every target (the result goes to `started`: a target
/// that cannot be traced at start stops the daemon), then refreshes and publishes every
/// interval until `stop`. Dropping the sessions at the end detaches the probes.
pub(super) fn run(
    cfg: Config,
    shared: Arc<Shared>,
    started: mpsc::Sender<Result<()>>,
    stop: mpsc::Receiver<()>,
) {
    let interval = cfg.interval;
    let mut r = match Refresher::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(()));
    loop {
        let t0 = Instant::now();
        shared.publish(r.refresh(&shared.wanted_stacks()));
        let wait = interval.saturating_sub(t0.elapsed());
        match stop.recv_timeout(wait.max(Duration::from_millis(10))) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
}

/// Logs processes that went over the goroutine budget, and back under it.
fn log_untracked(reports: &[ProcessReport], over: &mut std::collections::HashSet<(u32, u64)>) {
    let mut now = std::collections::HashSet::new();
    for r in reports.iter().filter(|r| r.table.untracked > 0) {
        let key = (r.table.pid, r.table.start_time);
        if !over.contains(&key) {
            tracing::warn!(
                pid = r.table.pid,
                exe = %r.table.exe,
                live = r.table.live,
                untracked = r.table.untracked,
                "goroutine limit reached: goroutines beyond it are counted (goroscope_process_goroutines_untracked), not attributed to sites; see [limits]"
            );
        }
        now.insert(key);
    }
    *over = now;
}

/// Logs sites that became suspected and those that stopped being suspected.
fn log_changes(
    reports: &[ProcessReport],
    suspected: &mut HashMap<(u32, LeakKind, u64), (String, bool)>,
) {
    let mut now = HashMap::new();
    for s in reports.iter().flat_map(ProcessReport::suspicions) {
        let key = (s.pid, s.kind, s.pc);
        let seen = suspected.get(&key);
        let logged = seen.is_some_and(|(_, logged)| *logged);
        // A new goroutine suspicion waits one refresh for the stacks of its goroutines,
        // so the log line can say where they block.
        let wait = seen.is_none() && s.kind == LeakKind::Goroutines && s.blocked_at.is_none();
        if !logged && !wait {
            let what = match s.kind {
                LeakKind::Goroutines => "goroutine leak suspected",
                LeakKind::Contexts => "context leak suspected",
            };
            tracing::warn!(
                pid = s.pid,
                exe = %s.exe,
                site = %s.site,
                live = s.live,
                growth_per_minute = format!("{:.1}", s.growth_per_minute),
                oldest_age_seconds = format!("{:.0}", s.oldest_age_seconds),
                state = %s.dominant_state,
                scale = %s.scale,
                blocked_at = s.blocked_at.as_deref().unwrap_or("-"),
                proven_leaked = s.proven_leaked,
                lost_cancel = s.lost_cancel.map_or(String::from("-"), |n| n.to_string()),
                "{what}"
            );
        }
        now.insert(key, (s.site, logged || !wait));
    }
    for (key, (site, logged)) in suspected.iter() {
        if *logged && !now.contains_key(key) {
            tracing::info!(pid = key.0, site = %site, "leak suspicion cleared");
        }
    }
    *suspected = now;
}
