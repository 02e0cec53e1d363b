//! `goroscope run`: the daemon. A refresher thread owns the tracing sessions (probes,
//! kernel maps, process memory readers), refreshes the goroutine tables every interval,
//! judges them with the leak model and publishes a [`Snapshot`]; a tokio HTTP server
//! serves the latest snapshot. SIGINT/SIGTERM stop both and detach every probe.

pub mod config;

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::clock::mono_ns;
use crate::detect::leak::LeakDetector;
use crate::export::http::{self, Shared};
use crate::export::{OtherFold, ProcessReport, Snapshot, TargetStatus};
use crate::model::MapFill;
use crate::session::{Session, Target};
use config::Config;

pub fn run(cfg: Config) -> Result<()> {
    let std_listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;

    let shared = Shared::new(
        Snapshot {
            targets: cfg
                .targets
                .iter()
                .map(|t| TargetStatus {
                    target: t.to_string(),
                    attached: false,
                    waiting: false,
                    error: None,
                })
                .collect(),
            top_sites: cfg.top_sites,
            ..Snapshot::default()
        },
        cfg.interval,
    );

    // The refresher attaches first: a target that cannot be traced at start is a
    // configuration error, reported before anything is served (except an executable
    // that does not exist yet: it is attached when it appears).
    let (started_tx, started_rx) = mpsc::channel::<Result<()>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let refresher = {
        let shared = shared.clone();
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("refresher".into())
            .spawn(move || refresher(cfg, shared, started_tx, stop_rx))?
    };
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = refresher.join();
            return Err(e);
        }
        Err(_) => anyhow::bail!("the refresher thread died while attaching"),
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        tracing::info!(%addr, "listening: /metrics /healthz /readyz /debug/goroutines");
        axum::serve(listener, http::router(shared.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP server")
    });
    let _ = stop_tx.send(());
    if refresher.join().is_err() {
        tracing::error!("the refresher thread panicked");
    }
    tracing::info!("stopped; probes detached");
    served
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Identity of an `exe` target's file: device, inode, size and modification time (a file
/// still being written changes between refreshes and is tried again); None when it does
/// not exist (or for a pid target).
type FileIdentity = (u64, u64, u64, i64, i64);

fn exe_identity(t: &Target) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    let Target::Exe(p) = t else { return None };
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// One configured target in the refresher.
struct Traced {
    target: Target,
    /// None: not attached (see `error`).
    session: Option<Session>,
    /// For an `exe` target: identity of the file last attached to (or tried).
    file: Option<FileIdentity>,
    error: Option<String>,
}

impl Traced {
    /// For an `exe` target: a new session when its file appears, is replaced (a deploy
    /// installs a new binary: new inode, the old probes no longer fire for the processes
    /// that run it) or is removed. A file that cannot be traced is tried once per version.
    fn follow_exe(&mut self, cfg: &Config, retired_failures: &mut u64) {
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
        match Session::attach_with(self.target.clone(), cfg.max_live_goroutines, cfg.contexts) {
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
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn refresher(
    cfg: Config,
    shared: Arc<Shared>,
    started: mpsc::Sender<Result<()>>,
    stop: mpsc::Receiver<()>,
) {
    let mut sessions: Vec<Traced> = Vec::new();
    for t in &cfg.targets {
        let file = exe_identity(t);
        match Session::attach_with(t.clone(), cfg.max_live_goroutines, cfg.contexts) {
            Ok(s) => {
                if matches!(t, Target::Exe(_)) && s.binaries_attached() == 0 {
                    tracing::warn!(traced = %t, "executable not found: its probes are attached when it appears (here, or in a process's own mount namespace)");
                } else {
                    tracing::info!(traced = %t, "probes attached");
                }
                sessions.push(Traced {
                    target: t.clone(),
                    session: Some(s),
                    file,
                    error: None,
                });
            }
            Err(e) => {
                let _ = started.send(Err(e.context(format!("cannot trace {t}"))));
                return;
            }
        }
    }
    let _ = started.send(Ok(()));

    let mut detector = LeakDetector::new(cfg.leak.clone());
    let mut suspected = HashMap::new();
    let mut retired_failures = 0u64;
    // Per process (pid, start time): what its `site="other"` series has accumulated.
    let mut folds: HashMap<(u32, u64), OtherFold> = HashMap::new();
    loop {
        let t0 = Instant::now();
        let mut reports = Vec::new();
        let mut fill = MapFill::default();
        let mut failures = retired_failures;
        for tr in sessions.iter_mut() {
            tr.follow_exe(&cfg, &mut retired_failures);
            let target = &tr.target;
            let Some(s) = tr.session.as_mut() else {
                continue;
            };
            match s.refresh() {
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
                retired_failures += s.attach_failures;
                tr.session = None;
                tr.error = Some("process exited".into());
            }
        }
        let tables: Vec<_> = reports.iter().map(|r| r.table.clone()).collect();
        let verdicts = detector.observe(mono_ns(), &tables);
        for (r, v) in reports.iter_mut().zip(verdicts) {
            r.verdicts = v;
            let fold = folds.entry((r.table.pid, r.table.start_time)).or_default();
            r.other = Some(fold.update(r, cfg.top_sites));
        }
        folds.retain(|(pid, start), _| {
            reports
                .iter()
                .any(|r| r.table.pid == *pid && r.table.start_time == *start)
        });
        log_changes(&reports, &mut suspected);
        shared.publish(Snapshot {
            processes: reports,
            targets: sessions
                .iter()
                .map(|tr| TargetStatus {
                    target: tr.target.to_string(),
                    attached: tr.session.as_ref().is_some_and(|s| {
                        !matches!(tr.target, Target::Exe(_)) || s.binaries_attached() > 0
                    }),
                    waiting: tr.session.as_ref().is_some_and(|s| {
                        matches!(tr.target, Target::Exe(_)) && s.binaries_attached() == 0
                    }),
                    error: tr.error.clone(),
                })
                .collect(),
            attach_failures: failures,
            fill,
            refresh_seconds: t0.elapsed().as_secs_f64(),
            refreshed_at_unix: unix_now(),
            top_sites: cfg.top_sites,
        });
        let wait = cfg.interval.saturating_sub(t0.elapsed());
        match stop.recv_timeout(wait.max(Duration::from_millis(10))) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    // Dropping the sessions detaches the probes.
    drop(sessions);
}

/// Logs sites that became suspected and those that stopped being suspected.
fn log_changes(reports: &[ProcessReport], suspected: &mut HashMap<(u32, u64), String>) {
    let mut now = HashMap::new();
    for s in reports.iter().flat_map(ProcessReport::suspicions) {
        let key = (s.pid, s.gopc);
        if !suspected.contains_key(&key) {
            tracing::warn!(
                pid = s.pid,
                exe = %s.exe,
                site = %s.site,
                live = s.live,
                growth_per_minute = format!("{:.1}", s.growth_per_minute),
                oldest_age_seconds = format!("{:.0}", s.oldest_age_seconds),
                wait_reason = %s.dominant_wait_reason,
                "goroutine leak suspected"
            );
        }
        now.insert(key, s.site);
    }
    for (key, site) in suspected.iter() {
        if !now.contains_key(key) {
            tracing::info!(pid = key.0, site = %site, "leak suspicion cleared");
        }
    }
    *suspected = now;
}
