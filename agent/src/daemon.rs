//! `goroscope run`: the daemon. A refresher thread owns the tracing sessions (probes,
//! kernel maps, process memory readers), refreshes the goroutine tables every interval,
//! judges them with the leak model and publishes a [`Snapshot`]; a tokio HTTP server
//! serves the latest snapshot. SIGINT/SIGTERM stop both and detach every probe.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::config::Config;
use crate::exporter::http::{self, Shared};
use crate::exporter::{MapFill, OtherFold, ProcessReport, Snapshot, TargetStatus};
use crate::leak::LeakDetector;
use crate::session::{Session, Target};
use crate::tracker::mono_ns;

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
                    error: None,
                })
                .collect(),
            top_sites: cfg.top_sites,
            ..Snapshot::default()
        },
        cfg.interval,
    );

    // The refresher attaches first: a target that cannot be traced at start is a
    // configuration error, reported before anything is served.
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
    let mut sessions: Vec<(Target, Option<Session>, Option<String>)> = Vec::new();
    for t in &cfg.targets {
        match Session::attach_with(t.clone(), cfg.max_live_goroutines, cfg.contexts) {
            Ok(s) => {
                tracing::info!(traced = %t, "probes attached");
                sessions.push((t.clone(), Some(s), None));
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
        for (target, slot, error) in sessions.iter_mut() {
            let Some(s) = slot.as_mut() else { continue };
            match s.refresh() {
                Ok(tables) => reports.extend(tables.into_iter().map(|table| ProcessReport {
                    table,
                    ..Default::default()
                })),
                Err(e) => tracing::warn!(traced = %target, "refresh failed: {e:#}"),
            }
            if let Some(Ok(f)) = s.probes().map(|p| p.map_fill()) {
                fill.goroutine_slots = fill.goroutine_slots.max(f.goroutine_slots);
                fill.goroutine_overflow = fill.goroutine_overflow.max(f.goroutine_overflow);
                fill.sites = fill.sites.max(f.sites);
                fill.context_slots = fill.context_slots.max(f.context_slots);
                fill.context_overflow = fill.context_overflow.max(f.context_overflow);
            }
            failures += s.attach_failures;
            if s.finished() {
                tracing::warn!(traced = %target, "the traced process exited; probes detached");
                retired_failures += s.attach_failures;
                *slot = None;
                *error = Some("process exited".into());
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
                .map(|(t, s, e)| TargetStatus {
                    target: t.to_string(),
                    attached: s.is_some(),
                    error: e.clone(),
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
