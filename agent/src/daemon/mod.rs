//! `goroscope run`: the daemon. A refresher thread owns the tracing sessions (probes,
//! kernel maps, process memory readers), refreshes the goroutine tables every interval,
//! judges them with the leak model and publishes a [`Snapshot`]; a tokio HTTP server
//! serves the latest snapshot. SIGINT/SIGTERM stop both and detach every probe.

pub mod config;
mod refresher;

use std::sync::mpsc;

use anyhow::{Context, Result};

use crate::export::http::{self, Shared};
use crate::export::webconfig::{self, WebSecurity};
use crate::export::{Snapshot, TargetStatus};
use config::Config;

pub fn run(cfg: Config) -> Result<()> {
    let std_listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    // TLS certificate and key, bcrypt hashes: checked before anything is traced.
    let security = WebSecurity::new(cfg.web.as_ref())?;

    let shared = Shared::with_source_root(
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
        cfg.source_root.clone(),
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
            .spawn(move || refresher::run(cfg, shared, started_tx, stop_rx))?
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
        let scheme = if security.tls() { "https" } else { "http" };
        tracing::info!(
            %addr,
            tls = security.tls(),
            basic_auth = security.basic_auth(),
            "listening: / (workbench: {scheme}://{addr}/) /api/v1 /metrics /healthz /readyz /debug/goroutines"
        );
        webconfig::serve(
            listener,
            http::router(shared.clone()),
            &security,
            shutdown_signal(),
        )
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
