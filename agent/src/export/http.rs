//! The HTTP server: its routes (`/metrics`, `/healthz`, `/readyz`, `/debug/goroutines`,
//! the workbench's page and `/api/v1`) and the state the refresher shares with them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::api::DebugProcess;
use super::metrics::{self, Format};
use super::Snapshot;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// State shared by the refresher and the HTTP handlers.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// f64 bits: how long the previous /metrics render took.
    scrape_seconds: AtomicU64,
    /// Unhealthy when no refresh happened for this long.
    stale_after: Duration,
    last_beat: RwLock<Instant>,
    interval: Duration,
    /// Where the workbench finds source files (`--source-root`).
    source_root: Option<PathBuf>,
    /// Sites whose stacks the workbench asked for: `(pid, gopc)` → when last asked.
    wanted: Mutex<HashMap<(u32, u64), Instant>>,
}

/// A site's stacks asked for by the workbench are read for this long after the last ask.
const WANTED_FOR: Duration = Duration::from_secs(300);
/// Sites per process whose stacks the workbench can have read at once (the oldest ask
/// goes first): the cost of a refresh stays bounded whatever the page asks.
pub const MAX_WANTED_SITES: usize = 16;

impl Shared {
    pub fn new(initial: Snapshot, interval: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(initial)),
            scrape_seconds: AtomicU64::new(0f64.to_bits()),
            stale_after: interval * 3 + Duration::from_secs(30),
            last_beat: RwLock::new(Instant::now()),
            interval,
            source_root: None,
            wanted: Mutex::new(HashMap::new()),
        })
    }

    /// The same, with a source root for the workbench.
    pub fn with_source_root(
        initial: Snapshot,
        interval: Duration,
        source_root: Option<PathBuf>,
    ) -> Arc<Shared> {
        let mut s = Shared::new(initial, interval);
        if let Some(s) = Arc::get_mut(&mut s) {
            s.source_root = source_root;
        }
        s
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn source_root(&self) -> Option<&Path> {
        self.source_root.as_deref()
    }

    /// The workbench wants the stacks of a site: read from the next refresh on, for
    /// [`WANTED_FOR`] (at most [`MAX_WANTED_SITES`] per process).
    pub fn want_stacks(&self, pid: u32, gopc: u64) {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        w.insert((pid, gopc), Instant::now());
        let mine: Vec<((u32, u64), Instant)> = w
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .map(|(k, t)| (*k, *t))
            .collect();
        if mine.len() > MAX_WANTED_SITES {
            let mut mine = mine;
            mine.sort_by_key(|(_, t)| *t);
            for (k, _) in &mine[..mine.len() - MAX_WANTED_SITES] {
                w.remove(k);
            }
        }
    }

    /// The sites whose stacks the workbench wants, per process (expired asks dropped).
    pub fn wanted_stacks(&self) -> HashMap<u32, HashSet<u64>> {
        let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, t| t.elapsed() < WANTED_FOR);
        let mut out: HashMap<u32, HashSet<u64>> = HashMap::new();
        for (pid, gopc) in w.keys() {
            out.entry(*pid).or_default().insert(*gopc);
        }
        out
    }

    pub fn publish(&self, s: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        self.beat();
    }

    /// The refresher is alive (called even when a refresh failed).
    pub fn beat(&self) {
        *self.last_beat.write().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/goroutines", get(debug_goroutines))
        .merge(super::workbench::routes())
        .with_state(shared)
}

async fn metrics_handler(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let start = Instant::now();
    let snap = s.snapshot();
    let previous = f64::from_bits(s.scrape_seconds.load(Ordering::Relaxed));
    // Rendering is CPU work of tens of ms at scale: off the async workers, so health
    // checks and debug requests are not held up behind it.
    let rendered = tokio::task::spawn_blocking(move || metrics::render(&snap, format, previous))
        .await
        .map_err(|e| prometheus::Error::Msg(format!("the render task failed: {e}")))
        .and_then(|r| r);
    let body = match rendered {
        Ok(body) => body,
        Err(e) => {
            tracing::error!("cannot encode the metrics: {e}");
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    s.scrape_seconds
        .store(start.elapsed().as_secs_f64().to_bits(), Ordering::Relaxed);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let age = s
        .last_beat
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .elapsed();
    if age > s.stale_after {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "refresher stalled: no refresh for {:.0} s\n",
                age.as_secs_f64()
            ),
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot();
    if snap.ready() {
        return "ready\n".into_response();
    }
    let mut why = String::from("not ready:");
    if snap.refreshed_at_unix == 0.0 {
        why.push_str(" no refresh yet;");
    }
    for t in snap.targets.iter().filter(|t| !t.attached) {
        why.push_str(&format!(
            " {} not attached ({});",
            t.target,
            t.error.as_deref().unwrap_or("attaching")
        ));
    }
    why.push('\n');
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

async fn debug_goroutines(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let snap = s.snapshot();
    let Some(pid) = q.get("pid") else {
        let all: Vec<DebugProcess> = snap.processes.iter().map(DebugProcess::of).collect();
        return Json(all).into_response();
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("pid: {pid:?} is not a process id\n"),
        )
            .into_response();
    };
    match snap.processes.iter().find(|p| p.table.pid == pid) {
        Some(p) => Json(DebugProcess::of(p)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("pid {pid} is not traced by this agent\n"),
        )
            .into_response(),
    }
}
