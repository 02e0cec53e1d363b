//! The leak workbench: a versioned JSON API (`/api/v1/…`) over the latest snapshot, and
//! the page at `/` that draws it (embedded files under `web/`). Read only: a request
//! never touches the kernel or a traced process; asking for a site's stacks only tells
//! the refresher to read them at its next refresh ([`super::http::Shared::want_stacks`]).
//!
//! Site ids are `g` + the hex link-time gopc of a goroutine site, `c` + the hex pc of a
//! context site: stable for the life of the binary, opaque to the page.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::Shared;
use super::source::{self, SourceError};
use super::{ProcessReport, Snapshot};
use crate::detect::leak::{LeakKind, Suspicion, Verdict};
use crate::model::{BlockingStack, BuildSource, ContextSiteView, Identity, ProcessTable, SiteView};

/// The page and its assets.
const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// Routes of the workbench: the page and the API.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/processes/{pid}/sites/{id}", get(site))
        .route("/api/v1/processes/{pid}/source", get(source_lines))
}

/// A strict policy: the page loads only its own files and talks only to its agent.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The id of a goroutine site.
pub fn site_id(gopc: u64) -> String {
    format!("g{gopc:x}")
}

/// The id of a context site.
pub fn context_id(pc: u64) -> String {
    format!("c{pc:x}")
}

fn parse_id(prefix: char, id: &str) -> Option<u64> {
    u64::from_str_radix(id.strip_prefix(prefix)?, 16).ok()
}

/// Who a process is, in the picker and in its detail.
#[derive(Debug, Serialize)]
pub struct ProcessHeader<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub go_version: &'a str,
    pub identity: &'a Identity,
    pub attached_seconds: f64,
    pub live: u64,
}

impl<'a> ProcessHeader<'a> {
    fn of(t: &'a ProcessTable) -> ProcessHeader<'a> {
        ProcessHeader {
            pid: t.pid,
            exe: &t.exe,
            go_version: &t.go_version,
            identity: &t.identity,
            attached_seconds: t.attached_seconds,
            live: t.live,
        }
    }
}

/// A process in the picker.
#[derive(Debug, Serialize)]
pub struct ProcessSummary<'a> {
    #[serde(flatten)]
    pub process: ProcessHeader<'a>,
    pub sites: usize,
    pub suspected: usize,
    pub suspects: Vec<SuspectSummary>,
}

#[derive(Debug, Serialize)]
pub struct SuspectSummary {
    pub kind: LeakKind,
    pub id: String,
    pub site: String,
    pub scale: String,
}

fn id_of(s: &Suspicion) -> String {
    match s.kind {
        LeakKind::Goroutines => site_id(s.pc),
        LeakKind::Contexts => context_id(s.pc),
    }
}

/// Every traced process, leak suspects first (most suspicions), then by live goroutines.
pub fn process_list(snap: &Snapshot) -> Vec<ProcessSummary<'_>> {
    let mut out: Vec<ProcessSummary<'_>> = snap
        .processes
        .iter()
        .map(|p| {
            let t = &p.table;
            let suspects: Vec<SuspectSummary> = p
                .suspicions()
                .into_iter()
                .map(|s| SuspectSummary {
                    id: id_of(&s),
                    kind: s.kind,
                    site: s.site,
                    scale: s.scale,
                })
                .collect();
            ProcessSummary {
                process: ProcessHeader::of(t),
                sites: t.sites.len(),
                suspected: suspects.len(),
                suspects,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.suspected
            .cmp(&a.suspected)
            .then(b.process.live.cmp(&a.process.live))
            .then(a.process.pid.cmp(&b.process.pid))
    });
    out
}

async fn processes(State(s): State<Arc<Shared>>) -> Response {
    let snap = s.snapshot();
    Json(json!({
        "refreshed_at_unix": snap.refreshed_at_unix,
        "interval_seconds": s.interval().as_secs_f64(),
        "source_root": s.source_root().is_some(),
        "processes": process_list(&snap),
    }))
    .into_response()
}

/// A goroutine site as the workbench shows it.
#[derive(Debug, Serialize)]
pub struct Site<'a> {
    pub id: String,
    pub location: String,
    #[serde(flatten)]
    pub view: &'a SiteView,
    pub blocked_at: Option<&'a str>,
    pub leak: Verdict,
    pub source_url: Option<String>,
}

impl<'a> Site<'a> {
    fn of(p: &'a ProcessReport, view: &'a SiteView) -> Site<'a> {
        Site {
            id: site_id(view.gopc),
            location: view.location(),
            view,
            blocked_at: p.table.blocked_at(view),
            leak: p.verdict(view),
            source_url: source::source_url(&p.table.build, &view.function, &view.file, view.line),
        }
    }
}

/// A context site as the workbench shows it.
#[derive(Debug, Serialize)]
pub struct ContextSite<'a> {
    pub id: String,
    pub location: String,
    #[serde(flatten)]
    pub view: &'a ContextSiteView,
    /// `waiters` of the view by goroutine site id (sites not in the table: by name).
    #[serde(rename = "waiters")]
    pub waiter_ids: BTreeMap<String, u64>,
    pub leak: Verdict,
    pub source_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Edge {
    pub from: Option<String>,
    pub to: String,
    pub goroutines: u64,
}

#[derive(Debug, Serialize)]
pub struct ContextEdge {
    pub from: Option<String>,
    pub to: String,
    pub uncancelled: u64,
    pub children_map_len: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Module<'a> {
    pub path: Option<&'a str>,
    pub version: Option<&'a str>,
    pub revision: Option<&'a str>,
    pub modified: Option<bool>,
}

impl<'a> Module<'a> {
    fn of(b: &'a BuildSource) -> Module<'a> {
        Module {
            path: b.module.as_deref(),
            version: b.module_version.as_deref(),
            revision: b.revision.as_deref(),
            modified: b.modified,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SuspectedLeak {
    pub id: String,
    #[serde(flatten)]
    pub suspicion: Suspicion,
}

/// One process: its sites, the "created by" graph, its contexts and their graph.
#[derive(Debug, Serialize)]
pub struct ProcessDetail<'a> {
    #[serde(flatten)]
    pub process: ProcessHeader<'a>,
    pub untracked: u64,
    pub module: Module<'a>,
    /// Whether the process records who created each goroutine (`g.parentGoid`, Go
    /// 1.21+): without, every edge has an unknown creator.
    pub parent_goids: bool,
    pub sites: Vec<Site<'a>>,
    pub edges: Vec<Edge>,
    pub contexts: Vec<ContextSite<'a>>,
    pub context_edges: Vec<ContextEdge>,
    pub suspected_leaks: Vec<SuspectedLeak>,
}

/// Whether a Go version (`go1.21.13`) records parent goids.
fn has_parent_goids(go_version: &str) -> bool {
    let minor = go_version
        .strip_prefix("go1.")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 21)
}

/// Goroutine sites by location (`function file:line`), to turn names into ids.
fn site_ids_by_location(t: &ProcessTable) -> HashMap<String, String> {
    t.sites
        .iter()
        .map(|s| (s.location(), site_id(s.gopc)))
        .collect()
}

pub fn process_detail(p: &ProcessReport) -> ProcessDetail<'_> {
    let t = &p.table;
    let mut sites: Vec<Site<'_>> = t.sites.iter().map(|s| Site::of(p, s)).collect();
    sites.sort_by(|a, b| {
        b.leak
            .suspected
            .cmp(&a.leak.suspected)
            .then(b.view.live.cmp(&a.view.live))
            .then(a.view.gopc.cmp(&b.view.gopc))
    });
    let by_location = site_ids_by_location(t);
    let contexts: Vec<ContextSite<'_>> = t
        .contexts
        .iter()
        .map(|c| ContextSite {
            id: context_id(c.pc),
            location: c.location(),
            view: c,
            waiter_ids: c
                .waiters
                .iter()
                .map(|(loc, n)| (by_location.get(loc).cloned().unwrap_or(loc.clone()), *n))
                .collect(),
            leak: p.context_verdict(c),
            source_url: source::source_url(&t.build, &c.function, &c.file, c.line),
        })
        .collect();
    let context_by_location: HashMap<String, String> = t
        .contexts
        .iter()
        .map(|c| (c.location(), context_id(c.pc)))
        .collect();
    // Parents of one site with children of one site: one edge.
    let mut context_edges: BTreeMap<(Option<String>, String), (u64, Option<u64>)> = BTreeMap::new();
    for pv in &t.context_parents {
        let Some(to) = context_by_location.get(&pv.children_site) else {
            continue;
        };
        let from = pv
            .parent_site
            .as_ref()
            .and_then(|s| context_by_location.get(s))
            .cloned();
        let e = context_edges.entry((from, to.clone())).or_default();
        e.0 += pv.uncancelled_children;
        if let Some(n) = pv.children_map_len {
            e.1 = Some(e.1.unwrap_or(0) + n);
        }
    }
    let mut context_edges: Vec<ContextEdge> = context_edges
        .into_iter()
        .map(
            |((from, to), (uncancelled, children_map_len))| ContextEdge {
                from,
                to,
                uncancelled,
                children_map_len,
            },
        )
        .collect();
    context_edges.sort_by_key(|e| std::cmp::Reverse(e.uncancelled));
    ProcessDetail {
        process: ProcessHeader::of(t),
        untracked: t.untracked,
        module: Module::of(&t.build),
        parent_goids: has_parent_goids(&t.go_version),
        sites,
        edges: t
            .site_edges
            .iter()
            .map(|e| Edge {
                from: e.from.map(site_id),
                to: site_id(e.to),
                goroutines: e.goroutines,
            })
            .collect(),
        contexts,
        context_edges,
        suspected_leaks: p
            .suspicions()
            .into_iter()
            .map(|s| SuspectedLeak {
                id: id_of(&s),
                suspicion: s,
            })
            .collect(),
    }
}

/// The index of a traced process in the snapshot, or the error to answer.
fn find_process(snap: &Snapshot, pid: &str) -> Result<usize, Box<Response>> {
    let Ok(pid) = pid.parse::<u32>() else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("{pid:?} is not a process id"),
        )));
    };
    snap.processes
        .iter()
        .position(|p| p.table.pid == pid)
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                format!("pid {pid} is not traced by this agent"),
            ))
        })
}

async fn process(State(s): State<Arc<Shared>>, Path(pid): Path<String>) -> Response {
    let snap = s.snapshot();
    match find_process(&snap, &pid) {
        Ok(i) => Json(process_detail(&snap.processes[i])).into_response(),
        Err(r) => *r,
    }
}

/// A stack frame, parsed from `function file:line`.
#[derive(Debug, Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The stack's blocking line.
    pub blocking: bool,
    pub source_url: Option<String>,
}

/// `function file:line` → its parts (a function name has no space; a file may).
fn split_location(loc: &str) -> (String, String, u32) {
    let Some((function, place)) = loc.split_once(' ') else {
        return (loc.to_string(), String::new(), 0);
    };
    match place.rsplit_once(':') {
        Some((file, line)) if line.parse::<u32>().is_ok() => (
            function.to_string(),
            file.to_string(),
            line.parse().unwrap_or(0),
        ),
        _ => (function.to_string(), place.to_string(), 0),
    }
}

#[derive(Debug, Serialize)]
pub struct Stack<'a> {
    pub count: u64,
    pub blocked_at: &'a str,
    pub truncated: bool,
    pub states: &'a BTreeMap<String, u64>,
    pub sample_goids: &'a [u64],
    pub frames: Vec<Frame>,
}

impl<'a> Stack<'a> {
    fn of(build: &BuildSource, s: &'a BlockingStack) -> Stack<'a> {
        Stack {
            count: s.count,
            blocked_at: &s.blocked_at,
            truncated: s.truncated,
            states: &s.states,
            sample_goids: &s.sample_goids,
            frames: s
                .frames
                .iter()
                .map(|f| {
                    let (function, file, line) = split_location(f);
                    Frame {
                        source_url: source::source_url(build, &function, &file, line),
                        blocking: *f == s.blocked_at,
                        function,
                        file,
                        line,
                    }
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Blocking<'a> {
    pub read: u64,
    pub unread: u64,
    pub other_stacks: u64,
    pub other_goroutines: u64,
    pub stacks: Vec<Stack<'a>>,
}

#[derive(Debug, Serialize)]
pub struct WaitedContext {
    pub id: String,
    pub location: String,
    pub goroutines: u64,
}

#[derive(Debug, Serialize)]
pub struct CreatedBy {
    pub from: Option<String>,
    pub goroutines: u64,
}

#[derive(Debug, Serialize)]
pub struct Creates {
    pub to: String,
    pub goroutines: u64,
}

/// Whether a site's stacks are there: `read`; `requested` (read at the next refresh);
/// `none` (no goroutine of it is stopped: running ones are not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StacksStatus {
    Read,
    Requested,
    None,
}

/// One goroutine site drilled into.
#[derive(Debug, Serialize)]
pub struct SiteDetail<'a> {
    pub site: Site<'a>,
    pub stacks: StacksStatus,
    pub blocking: Option<Blocking<'a>>,
    pub contexts: Vec<WaitedContext>,
    pub created_by: Vec<CreatedBy>,
    pub creates: Vec<Creates>,
}

pub fn site_detail<'a>(p: &'a ProcessReport, view: &'a SiteView) -> SiteDetail<'a> {
    let t = &p.table;
    let blocking = t.blocking_of(view.gopc).map(|b| Blocking {
        read: b.read,
        unread: b.unread,
        other_stacks: b.other_stacks,
        other_goroutines: b.other_goroutines,
        stacks: b.stacks.iter().map(|s| Stack::of(&t.build, s)).collect(),
    });
    let stopped = view.waiting > 0 || view.states.keys().any(|s| s == "syscall");
    let location = view.location();
    SiteDetail {
        stacks: match (&blocking, stopped) {
            (Some(_), _) => StacksStatus::Read,
            (None, true) => StacksStatus::Requested,
            (None, false) => StacksStatus::None,
        },
        blocking,
        contexts: t
            .contexts
            .iter()
            .filter_map(|c| {
                let n = *c.waiters.get(&location)?;
                Some(WaitedContext {
                    id: context_id(c.pc),
                    location: c.location(),
                    goroutines: n,
                })
            })
            .collect(),
        created_by: t
            .site_edges
            .iter()
            .filter(|e| e.to == view.gopc)
            .map(|e| CreatedBy {
                from: e.from.map(site_id),
                goroutines: e.goroutines,
            })
            .collect(),
        creates: t
            .site_edges
            .iter()
            .filter(|e| e.from == Some(view.gopc))
            .map(|e| Creates {
                to: site_id(e.to),
                goroutines: e.goroutines,
            })
            .collect(),
        site: Site::of(p, view),
    }
}

async fn site(State(s): State<Arc<Shared>>, Path((pid, id)): Path<(String, String)>) -> Response {
    let snap = s.snapshot();
    let i = match find_process(&snap, &pid) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let p = &snap.processes[i];
    let Some(view) =
        parse_id('g', &id).and_then(|gopc| p.table.sites.iter().find(|v| v.gopc == gopc))
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no goroutine site {id:?} in pid {}", p.table.pid),
        );
    };
    let detail = site_detail(p, view);
    if detail.stacks == StacksStatus::Requested {
        s.want_stacks(p.table.pid, view.gopc);
    }
    Json(detail).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SourceQuery {
    file: String,
    line: u32,
    #[serde(default = "default_context")]
    context: u32,
}

fn default_context() -> u32 {
    8
}

/// Whether the process's table names `file` (a site, a context, a stack frame): only
/// those files are looked up under the source root.
fn references(t: &ProcessTable, file: &str) -> bool {
    t.sites.iter().any(|s| s.file == file)
        || t.contexts.iter().any(|c| c.file == file)
        || t.blocking.iter().any(|b| {
            b.stacks
                .iter()
                .any(|s| s.frames.iter().any(|f| split_location(f).1 == file))
        })
}

async fn source_lines(
    State(s): State<Arc<Shared>>,
    Path(pid): Path<String>,
    q: Result<Query<SourceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "needs file=<name as the process names it>&line=<n>[&context=<n>]",
        );
    };
    let snap = s.snapshot();
    let i = match find_process(&snap, &pid) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let t = &snap.processes[i].table;
    if !references(t, &q.file) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{:?} is not a file this process's goroutines or contexts name",
                q.file
            ),
        );
    }
    let root = s.source_root().map(std::path::Path::to_path_buf);
    let build = t.build.clone();
    let file = q.file.clone();
    // File reads off the async workers.
    let got = tokio::task::spawn_blocking(move || {
        source::excerpt(root.as_deref(), &build, &file, q.line, q.context)
    })
    .await;
    match got {
        Ok(Ok(e)) => Json(e).into_response(),
        Ok(Err(e @ (SourceError::NoRoot | SourceError::NotFound))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("read task: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_function_file_and_line() {
        assert_eq!(
            split_location("main.waitForReply /src/my app/main.go:21"),
            ("main.waitForReply".into(), "/src/my app/main.go".into(), 21)
        );
        assert_eq!(
            split_location("0x4a1b2c"),
            ("0x4a1b2c".into(), String::new(), 0)
        );
    }

    #[test]
    fn ids_and_versions() {
        assert_eq!(site_id(0x4a1b2c), "g4a1b2c");
        assert_eq!(parse_id('g', "g4a1b2c"), Some(0x4a1b2c));
        assert_eq!(parse_id('g', "c4a1b2c"), None);
        assert_eq!(parse_id('g', "gzz"), None);
        assert!(has_parent_goids("go1.21.13"));
        assert!(has_parent_goids("go1.27.3 X:goroutineleakprofile"));
        assert!(!has_parent_goids("go1.19.8"));
        assert!(!has_parent_goids("devel"));
    }
}
