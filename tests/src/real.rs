//! Real Go programs nobody here wrote, and their own account of their goroutines (the
//! oracle goroscope is checked against, tests/tests/real_binaries.rs):
//!
//! - where the programs are ([`Program`]: npm's esbuild, buf and lefthook unpacked into the
//!   cache by `cargo xtask setup`, Debian's prometheus and etcd), and [`program`], which
//!   fails with `CI=true` when one is missing and skips loudly otherwise;
//! - [`parse_traceback`]: a Go traceback (SIGQUIT output, or
//!   `/debug/pprof/goroutine?debug=2`, the same format) into goroutines: goid, state,
//!   frames, `created by` site and parent goid;
//! - [`View`]: goroutines by goid (creation site, start function, parent, state) from the
//!   oracle ([`View::of_traceback`]) or from `goroscope snapshot --json`
//!   ([`View::of_snapshot`]), grouped per creation site ([`View::sites`]) and compared with
//!   a readable diff ([`compare`]);
//! - [`Target`]: a real program started by a test (own process group, temporary
//!   directory, stderr captured, stopped by pid), [`Lsp`] a minimal LSP client over its
//!   pipes, [`IdleConn`] a kept-alive idle HTTP/1.1 connection.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy::TempDir;
use crate::{goroscope_json, wait_for};

/// A real program of the oracle tests. The npm ones are pinned in `xtask/src/setup.rs`
/// (`REAL_NPM`): keep the directories here in step with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// npm `@esbuild/linux-x64` 0.28.2: Go 1.26.5, stripped, no `.go.buildinfo`.
    Esbuild,
    /// npm `@bufbuild/buf-linux-x64` 1.75.0: Go 1.27, stripped, static.
    Buf,
    /// npm `lefthook-linux-x64` 2.2.2: Go 1.27, stripped, static.
    Lefthook,
    /// Debian 12's `prometheus` 2.42: Go 1.19, cgo, dynamically linked.
    Prometheus,
    /// Debian 12's `etcd-server` 3.4: Go 1.19, cgo, dynamically linked.
    Etcd,
}

impl Program {
    pub fn path(self) -> PathBuf {
        let npm = |dir: &str, bin: &str| cache_dir().join("real").join(dir).join(bin);
        match self {
            Program::Esbuild => npm("esbuild-0.28.2", "package/bin/esbuild"),
            Program::Buf => npm("buf-1.75.0", "package/bin/buf"),
            Program::Lefthook => npm("lefthook-2.2.2", "package/bin/lefthook"),
            Program::Prometheus => PathBuf::from("/usr/bin/prometheus"),
            Program::Etcd => PathBuf::from("/usr/bin/etcd"),
        }
    }

    /// The Go version that built it: from its build info (`go version`), except for
    /// esbuild, which has none (its `runtime.buildVersion` string, fixed by the pin).
    pub fn go_version(self) -> String {
        match self {
            Program::Esbuild => "go1.26.5".to_string(),
            p => {
                build_info(&p.path())
                    .unwrap_or_else(|| panic!("{p:?}: no build info"))
                    .go_version
            }
        }
    }

    pub const ALL: [Program; 5] = [
        Program::Esbuild,
        Program::Buf,
        Program::Lefthook,
        Program::Prometheus,
        Program::Etcd,
    ];

    fn source(self) -> &'static str {
        match self {
            Program::Esbuild => "npm @esbuild/linux-x64@0.28.2",
            Program::Buf => "npm @bufbuild/buf-linux-x64@1.75.0",
            Program::Lefthook => "npm lefthook-linux-x64@2.2.2",
            Program::Prometheus => "Debian package prometheus",
            Program::Etcd => "Debian package etcd-server",
        }
    }
}

/// What the ELF file itself says about how a program was built, read without goroscope:
/// the ground truth `inspect-binary` is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// `ET_DYN`: position-independent (`-buildmode=pie`).
    pub pie: bool,
    /// A `PT_INTERP`: dynamically linked (cgo here).
    pub dynamic: bool,
    /// Linked by the external (C) linker: `.comment` names GCC or clang, or the C
    /// toolchain's startup objects left `.init` and `.eh_frame` (Go's own linker writes
    /// none of them; Debian's `dh_strip` removes `.comment`, not those).
    pub external_linker: bool,
    pub gopclntab_section: bool,
    pub buildinfo_section: bool,
    pub has_symbols: bool,
    pub has_dwarf: bool,
}

impl ElfFacts {
    pub fn of(path: &Path) -> ElfFacts {
        use object::{Object, ObjectSection};
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let elf = object::File::parse(&*data).expect("an ELF file");
        let section = |name: &str| elf.section_by_name(name);
        let comment = section(".comment")
            .and_then(|s| s.data().ok())
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        let object::File::Elf64(e) = &elf else {
            panic!("{}: not a 64-bit ELF", path.display())
        };
        use object::read::elf::{FileHeader, ProgramHeader};
        let endian = e.endian();
        let header = e.elf_header();
        let dynamic = header
            .program_headers(endian, &*data)
            .expect("program headers")
            .iter()
            .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
        ElfFacts {
            pie: header.e_type(endian) == object::elf::ET_DYN,
            dynamic,
            external_linker: comment.contains("GCC:")
                || comment.contains("clang")
                || (section(".init").is_some() && section(".eh_frame").is_some()),
            gopclntab_section: section(".gopclntab").is_some(),
            buildinfo_section: section(".go.buildinfo").is_some(),
            has_symbols: section(".symtab").is_some(),
            has_dwarf: section(".debug_info").is_some() || section(".zdebug_info").is_some(),
        }
    }
}

/// What a binary's `.go.buildinfo` records, read by Go's own reader (`go version -m`, a
/// toolchain of the fixtures' matrix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub go_version: String,
    /// The main package (`path`).
    pub path: Option<String>,
    /// The main module (`mod`; none in a GOPATH build such as Debian's).
    pub module: Option<String>,
}

/// None without build info.
pub fn build_info(binary: &Path) -> Option<BuildInfo> {
    let go = std::fs::read_dir(cache_dir().join("go"))
        .ok()?
        .flatten()
        .map(|d| d.path().join("go/bin/go"))
        .find(|p| p.is_file())
        .expect("a Go toolchain in the cache: run `cargo xtask setup`");
    let out = Command::new(go)
        .arg("version")
        .arg("-m")
        .arg(binary)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let go_version = lines.next()?.rsplit(' ').next()?.to_string();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}\t")))
            .and_then(|l| l.split('\t').next())
            .map(str::to_string)
    };
    Some(BuildInfo {
        go_version,
        path: field("path"),
        module: field("mod"),
    })
}

/// `GOROSCOPE_CACHE`, else `~/.cache/goroscope` (as `cache_dir` in xtask/src/project.rs).
fn cache_dir() -> PathBuf {
    std::env::var_os("GOROSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/goroscope")
        })
}

/// The installed program, if it is. In CI (`CI=true`) a missing program is a failure,
/// never a skip; elsewhere the test is skipped with a loud message.
pub fn program(test: &str, p: Program) -> Option<PathBuf> {
    let path = p.path();
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "{test}: {} is not installed ({}): run `cargo xtask setup`",
        path.display(),
        p.source()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPED {msg} !!!\n");
    None
}

// ---------------------------------------------------------------------------------------
// Tracebacks.

/// One frame of a goroutine's stack as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// An inlined call (printed with `(...)` for arguments and no pc offset).
    pub inlined: bool,
}

/// A goroutine's `created by FUNC [in goroutine N]` and the `FILE:LINE` line under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedBy {
    pub function: String,
    /// `in goroutine N` (Go 1.21+; Go 1.19 and 1.20 do not print it).
    pub parent_goid: Option<u64>,
    pub file: String,
    pub line: u32,
}

impl CreatedBy {
    /// `FUNC FILE:LINE`, as goroscope's `created_at`.
    pub fn site(&self) -> String {
        format!("{} {}:{}", self.function, self.file, self.line)
    }
}

/// One goroutine of a traceback.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Goroutine {
    pub goid: u64,
    /// The state without its qualifiers: `[chan receive, 5 minutes]` → `chan receive`,
    /// `[select, locked to thread]` → `select`.
    pub state: String,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// `...additional frames elided...` (Go ≤ 1.20, more than 100 frames): the bottom of
    /// the stack, and so the start function, is not in the traceback. (Go 1.21+ elides
    /// the middle instead, `...N frames elided...`, and keeps the bottom.)
    pub bottom_elided: bool,
    /// None for the main goroutine (never printed) and for goroutines whose creator the
    /// runtime hides (at the default traceback level, non-exported `runtime.*`).
    pub created_by: Option<CreatedBy>,
}

/// Frames that end every stack at `GOTRACEBACK=system` (and in every SIGQUIT dump, which
/// is a runtime throw and so always shows runtime frames) but run no code of the goroutine.
const GOEXIT: &str = "runtime.goexit";

impl Goroutine {
    /// The bottom frame's function, `runtime.goexit` left out; None when the traceback
    /// elided it or shows no stack (`goroutine running on other thread`).
    pub fn bottom_function(&self) -> Option<&str> {
        if self.bottom_elided {
            return None;
        }
        self.frames
            .iter()
            .rev()
            .map(|f| f.function.as_str())
            .find(|f| *f != GOEXIT)
    }

    /// The function the goroutine was started with, as goroscope reports it: the bottom
    /// frame, except that the wrapper the compiler generates for `go f(x)` (`…gowrapN`,
    /// Go 1.22+) or a method value (`…-fm`) is followed to the function it calls, the
    /// frame above it. (At the default traceback level the runtime hides such wrappers
    /// itself; a SIGQUIT dump shows them.)
    pub fn start_function(&self) -> Option<&str> {
        if self.bottom_elided {
            return None;
        }
        let mut frames = self
            .frames
            .iter()
            .rev()
            .map(|f| f.function.as_str())
            .filter(|f| *f != GOEXIT);
        let bottom = frames.next()?;
        if is_wrapper(bottom) {
            return Some(frames.next().unwrap_or(bottom));
        }
        Some(bottom)
    }

    pub fn has_frame(&self, function: &str) -> bool {
        self.frames.iter().any(|f| f.function == function)
    }
}

/// `pkg.F.gowrap3` or `pkg.T.M-fm`.
fn is_wrapper(function: &str) -> bool {
    if function.ends_with("-fm") {
        return true;
    }
    function
        .rsplit_once(".gowrap")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `goroutine N [state]:` or, at `GOTRACEBACK=system` and in SIGQUIT dumps of Go 1.23+,
/// `goroutine N gp=0x… m=… [state]:`.
fn parse_header(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("goroutine ")?;
    let (goid, rest) = rest.split_once(' ')?;
    let goid = goid.parse().ok()?;
    let rest = rest.strip_suffix("]:")?;
    let (_, state) = rest.rsplit_once('[')?;
    let state = state.split(", ").next().unwrap_or(state);
    Some((goid, state.to_string()))
}

/// `\tFILE:LINE [+0x…] [fp=… sp=… pc=…]`.
fn parse_location(line: &str) -> Option<(String, u32)> {
    let loc = line.strip_prefix('\t')?;
    let loc = loc.split(' ').next()?;
    let (file, line) = loc.rsplit_once(':')?;
    Some((file.to_string(), line.parse().ok()?))
}

/// `FUNC(ARGS)`: the function, and whether the call is inlined (`(...)`).
fn parse_call(line: &str) -> Option<(String, bool)> {
    if line.starts_with(char::is_whitespace) || !line.ends_with(')') {
        return None;
    }
    let open = line.rfind('(')?;
    if open == 0 {
        return None;
    }
    Some((line[..open].to_string(), line.ends_with("(...)")))
}

/// Parses every `goroutine N [...]:` block of `text` (anything else, such as log lines
/// before a SIGQUIT dump or the register dump after it, is skipped). Goroutine 0 (an M's
/// scheduler stack, which a SIGQUIT dump prints when the signal lands on an idle thread)
/// is kept: callers leave it out.
pub fn parse_traceback(text: &str) -> Vec<Goroutine> {
    let mut out = Vec::new();
    let mut cur: Option<Goroutine> = None;
    // What the next `\tFILE:LINE` line belongs to.
    enum Pending {
        None,
        Frame(String, bool),
        CreatedBy(String, Option<u64>),
    }
    let mut pending = Pending::None;
    for line in text.lines() {
        if let Some((goid, state)) = parse_header(line) {
            out.extend(cur.take());
            cur = Some(Goroutine {
                goid,
                state,
                ..Goroutine::default()
            });
            pending = Pending::None;
            continue;
        }
        let Some(g) = cur.as_mut() else { continue };
        if line.is_empty() {
            out.extend(cur.take());
            pending = Pending::None;
            continue;
        }
        if line.starts_with('\t') {
            if let Some((file, l)) = parse_location(line) {
                match std::mem::replace(&mut pending, Pending::None) {
                    Pending::Frame(function, inlined) => g.frames.push(Frame {
                        function,
                        file,
                        line: l,
                        inlined,
                    }),
                    Pending::CreatedBy(function, parent_goid) => {
                        g.created_by = Some(CreatedBy {
                            function,
                            parent_goid,
                            file,
                            line: l,
                        })
                    }
                    // `\tgoroutine running on other thread; stack unavailable`.
                    Pending::None => {}
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("created by ") {
            let (function, parent) = match rest.split_once(" in goroutine ") {
                Some((f, n)) => (f, n.trim().parse().ok()),
                None => (rest.trim(), None),
            };
            pending = Pending::CreatedBy(function.to_string(), parent);
            continue;
        }
        if line == "...additional frames elided..." {
            g.bottom_elided = true;
            continue;
        }
        if line.starts_with("...") && line.ends_with("frames elided...") {
            continue;
        }
        if let Some((function, inlined)) = parse_call(line) {
            pending = Pending::Frame(function, inlined);
            continue;
        }
        // Something else (a register dump without the blank line before it): the block
        // is over.
        out.extend(cur.take());
        pending = Pending::None;
    }
    out.extend(cur);
    out
}

/// The `goroutine profile: total N` of `/debug/pprof/goroutine?debug=1`: the runtime's
/// own count (`gcount()`, what `runtime.NumGoroutine` returns) when it was taken.
pub fn pprof_total(debug1: &str) -> Option<u64> {
    debug1
        .lines()
        .find_map(|l| l.strip_prefix("goroutine profile: total "))
        .and_then(|n| n.trim().parse().ok())
}

/// Goroutines of a `/debug/pprof/goroutine?debug=1` profile inside an HTTP handler
/// (`net/http.serverHandler.ServeHTTP` on their stack): 1 when the profile's own request
/// was the only one in flight.
pub fn pprof_in_handlers(debug1: &str) -> u64 {
    let mut n = 0;
    let mut count = 0;
    let mut counted = false;
    for l in debug1.lines() {
        if let Some((c, _)) = l.split_once(" @ ") {
            count = c.trim().parse().unwrap_or(0);
            counted = false;
        } else if !counted && l.contains("\tnet/http.serverHandler.ServeHTTP+") {
            n += count;
            counted = true;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// Views and their comparison.

/// The creation site given to the main goroutine on both sides: a traceback never
/// prints a `created by` for goroutine 1 (goroscope names its real creator, the ABI
/// wrapper of `runtime.newproc` called from `rt0_go`).
pub const MAIN_GOROUTINE: &str = "(main goroutine: no `created by` in tracebacks)";
/// The creation site of a goroutine whose `created by` the traceback hides.
pub const NO_CREATOR: &str = "(no `created by` in the traceback)";
/// The start function of a goroutine whose bottom frames the traceback does not show
/// (elided, or `goroutine running on other thread; stack unavailable`).
pub const ELIDED: &str = "(bottom frame not in the traceback)";

/// What is compared of one goroutine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// `FUNC FILE:LINE` of the `go` statement ([`MAIN_GOROUTINE`] for goroutine 1).
    pub site: String,
    pub start: String,
    /// The creating goroutine (None where the traceback does not say: Go ≤ 1.20).
    pub parent: Option<u64>,
}

/// Goroutines by goid, with their states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub goroutines: BTreeMap<u64, Entry>,
    pub states: BTreeMap<u64, String>,
}

/// The goroutines of one creation site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Site {
    pub count: u64,
    /// Start function → goroutines.
    pub starts: BTreeMap<String, u64>,
}

impl View {
    /// The oracle's view of `gs` (goroutine 0 left out). `default_level`: the traceback
    /// was printed at the default level (`/debug/pprof/goroutine?debug=2`: `runtime.Stack`
    /// forces it whatever `GOTRACEBACK` says), which hides the runtime's frames, and so the main
    /// goroutine's start function `runtime.main` below `main.main`.
    pub fn of_traceback(gs: &[Goroutine], default_level: bool) -> View {
        let mut v = View::default();
        for g in gs.iter().filter(|g| g.goid != 0) {
            let (site, parent) = match (&g.created_by, g.goid) {
                (_, 1) => (MAIN_GOROUTINE.to_string(), None),
                (Some(c), _) => (c.site(), c.parent_goid),
                (None, _) => (NO_CREATOR.to_string(), None),
            };
            let start = match g.start_function() {
                Some("main.main") if g.goid == 1 && default_level => "runtime.main",
                Some(s) => s,
                None => ELIDED,
            };
            v.goroutines.insert(
                g.goid,
                Entry {
                    site,
                    start: start.to_string(),
                    parent,
                },
            );
            v.states.insert(g.goid, g.state.clone());
        }
        v
    }

    /// goroscope's view, from `goroscope snapshot --json`.
    pub fn of_snapshot(snapshot: &Value) -> View {
        let mut v = View::default();
        for g in snapshot["goroutines"]
            .as_array()
            .unwrap_or_else(|| panic!("no goroutines in the snapshot: {snapshot}"))
        {
            let goid = g["goid"].as_u64().expect("goid");
            let site = if goid == 1 {
                MAIN_GOROUTINE.to_string()
            } else {
                g["created_at"].as_str().expect("created_at").to_string()
            };
            v.goroutines.insert(
                goid,
                Entry {
                    site,
                    start: g["start_function"]
                        .as_str()
                        .expect("start_function")
                        .to_string(),
                    parent: g["parent_goid"].as_u64(),
                },
            );
            v.states
                .insert(goid, g["state"].as_str().expect("state").to_string());
        }
        v
    }

    /// Only the goroutines `keep` accepts.
    pub fn filter(&self, mut keep: impl FnMut(u64, &Entry) -> bool) -> View {
        let goroutines: BTreeMap<u64, Entry> = self
            .goroutines
            .iter()
            .filter(|(g, e)| keep(**g, e))
            .map(|(g, e)| (*g, e.clone()))
            .collect();
        let states = self
            .states
            .iter()
            .filter(|(g, _)| goroutines.contains_key(g))
            .map(|(g, s)| (*g, s.clone()))
            .collect();
        View { goroutines, states }
    }

    /// Goroutines per creation site, with their start functions.
    pub fn sites(&self) -> BTreeMap<String, Site> {
        let mut out: BTreeMap<String, Site> = BTreeMap::new();
        for e in self.goroutines.values() {
            let s = out.entry(e.site.clone()).or_default();
            s.count += 1;
            *s.starts.entry(e.start.clone()).or_default() += 1;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.goroutines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.goroutines.is_empty()
    }

    /// This view with what `oracle` cannot tell blanked out: the parent where the
    /// traceback does not print it, the start function where it elided the bottom.
    fn as_known_by(&self, oracle: &View) -> View {
        let mut v = self.clone();
        for (goid, e) in v.goroutines.iter_mut() {
            if let Some(o) = oracle.goroutines.get(goid) {
                if o.parent.is_none() {
                    e.parent = None;
                }
                if o.start == ELIDED {
                    e.start = ELIDED.to_string();
                }
            }
        }
        v
    }
}

/// The per-site table, one line per site: `COUNT SITE  [start: F×n, …]`.
pub fn render_sites(sites: &BTreeMap<String, Site>) -> String {
    let mut out = String::new();
    let mut rows: Vec<_> = sites.iter().collect();
    rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    for (site, s) in rows {
        let _ = writeln!(out, "{:5} {site}  [start: {}]", s.count, starts(&s.starts));
    }
    out
}

fn starts(s: &BTreeMap<String, u64>) -> String {
    s.iter()
        .map(|(f, n)| format!("{f}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sites where `oracle` and `goroscope` differ, one line each (empty: none).
pub fn diff_sites(oracle: &BTreeMap<String, Site>, goroscope: &BTreeMap<String, Site>) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = oracle.keys().chain(goroscope.keys()).collect();
    let empty = Site::default();
    for k in keys {
        let o = oracle.get(k).unwrap_or(&empty);
        let g = goroscope.get(k).unwrap_or(&empty);
        if o != g {
            let _ = writeln!(
                out,
                "  {k}\n      oracle:    {} [start: {}]\n      goroscope: {} [start: {}]",
                o.count,
                starts(&o.starts),
                g.count,
                starts(&g.starts)
            );
        }
    }
    out
}

/// Goroutines where the views differ (site, start function, parent), one line each.
fn diff_goroutines(oracle: &View, goroscope: &View) -> String {
    let mut out = String::new();
    let goids: BTreeSet<&u64> = oracle
        .goroutines
        .keys()
        .chain(goroscope.goroutines.keys())
        .collect();
    for goid in goids {
        let o = oracle.goroutines.get(goid);
        let g = goroscope.goroutines.get(goid);
        if o != g {
            let _ = writeln!(
                out,
                "  goroutine {goid}: oracle {o:?}\n      goroscope {g:?}"
            );
        }
    }
    out
}

/// What a comparison found, for the test's report.
#[derive(Debug)]
pub struct Comparison {
    pub goroutines: usize,
    pub sites: BTreeMap<String, Site>,
    /// Goroutines whose state differs though goroscope saw the same wait state in both
    /// snapshots around the oracle: `(goid, oracle, goroscope)`.
    pub state_mismatches: Vec<(u64, String, String)>,
    /// States that differ where goroscope's two snapshots disagree too (a goroutine that
    /// moved): reported, not asserted.
    pub state_moves: usize,
}

/// Asserts that goroscope's snapshot `b` (equal, goroutine for goroutine, to a snapshot
/// `a` taken on the other side of the oracle, so nothing moved in between) agrees exactly
/// with the oracle: the same goroutines per creation site with the same start functions
/// (the requirement), and goroutine by goroutine the same site, start function and
/// parent where the traceback prints one. States are compared for goroutines that were
/// waiting for the same reason in `a` and `b`.
pub fn compare(what: &str, oracle: &View, a: &View, b: &View) -> Comparison {
    let known = b.as_known_by(oracle);
    let (os, gs) = (oracle.sites(), known.sites());
    let site_diff = diff_sites(&os, &gs);
    assert!(
        site_diff.is_empty(),
        "{what}: goroscope's goroutines per creation site differ from the program's own \
         traceback:\n{site_diff}\noracle ({} goroutines):\n{}\ngoroscope ({} goroutines):\n{}",
        oracle.len(),
        render_sites(&os),
        known.len(),
        render_sites(&gs),
    );
    let g_diff = diff_goroutines(oracle, &known);
    assert!(
        g_diff.is_empty(),
        "{what}: same sites, but goroutines differ from the traceback's:\n{g_diff}"
    );
    let mut state_mismatches = Vec::new();
    let mut state_moves = 0;
    for (goid, o) in &oracle.states {
        let (Some(sa), Some(sb)) = (a.states.get(goid), b.states.get(goid)) else {
            continue;
        };
        if o == sb {
            continue;
        }
        if sa == sb && !matches!(sb.as_str(), "running" | "runnable" | "syscall") {
            state_mismatches.push((*goid, o.clone(), sb.clone()));
        } else {
            state_moves += 1;
        }
    }
    Comparison {
        goroutines: oracle.len(),
        sites: os,
        state_mismatches,
        state_moves,
    }
}

/// `goroscope snapshot --pid PID --json` (every goroutine, the runtime's too).
pub fn snapshot(pid: u32) -> Value {
    goroscope_json(&["snapshot", "--pid", &pid.to_string()])
}

// ---------------------------------------------------------------------------------------
// Running the programs.

/// A real program started by a test: its own process group, a temporary directory,
/// stdin and stdout piped (kept open: esbuild stops serving when stdin closes, buf's LSP
/// talks over them), stderr into `DIR/stderr` (where a SIGQUIT dump goes). Dropping it
/// kills its process group and any process it started that left the group (by pid).
pub struct Target {
    child: Child,
    pub pid: u32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    pub dir: TempDir,
    name: String,
    /// Processes the target started (found before it is stopped), killed on drop.
    descendants: Vec<u32>,
}

impl Target {
    /// Starts `cmd` (whose working directory, if unset, becomes `dir`).
    pub fn start(name: &str, mut cmd: Command, dir: TempDir) -> Target {
        let stderr = std::fs::File::create(dir.0.join("stderr")).expect("stderr file");
        if cmd.get_current_dir().is_none() {
            cmd.current_dir(&dir.0);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Target {
            pid: child.id(),
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            dir,
            name: name.to_string(),
            descendants: Vec::new(),
        }
    }

    /// Starts a fixture that prints "ready <pid>" first, with `GOTRACEBACK=system` (its
    /// SIGQUIT dump then shows every goroutine), in a new temporary directory named
    /// after `tmp`; returns once it is ready, with its stdout still readable.
    pub fn start_fixture(
        what: &str,
        path: &std::path::Path,
        tmp: &str,
    ) -> (Target, std::io::BufReader<std::process::ChildStdout>) {
        use std::io::BufRead;
        let dir = TempDir::new(tmp);
        let mut cmd = Command::new(path);
        cmd.env("GOTRACEBACK", "system");
        let mut t = Target::start(what, cmd, dir);
        let mut out = std::io::BufReader::new(t.stdout.take().expect("stdout piped"));
        let mut ready = String::new();
        out.read_line(&mut ready).expect("read the ready line");
        assert!(ready.starts_with("ready "), "{what}: {ready}");
        (t, out)
    }

    /// Panics (with its stderr) if the program has exited.
    pub fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited {when} ({status}); stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr")).unwrap_or_default()
    }

    /// Every process below the target now (children of children…), from
    /// `/proc/PID/task/*/children`.
    pub fn children(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![self.pid];
        while let Some(p) = todo.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                for c in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
        out
    }

    /// Sends SIGQUIT and returns the dump the Go runtime writes to stderr before it
    /// exits (status 2). Processes the target started are killed when it is dropped.
    pub fn sigquit(&mut self) -> String {
        self.descendants = self.children();
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        unsafe { libc::kill(self.pid as i32, libc::SIGQUIT) };
        let status = wait_for(
            &format!("{} to exit after SIGQUIT", self.name),
            Duration::from_secs(30),
            || self.child.try_wait().expect("wait"),
        );
        let text = self.stderr();
        assert!(
            text.contains("SIGQUIT: quit"),
            "{} exited ({status}) without a SIGQUIT dump:\n{text}",
            self.name
        );
        text[text.find("SIGQUIT: quit").unwrap_or(0)..].to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created (its id is our child's pid)
        // and on processes it started, found while it ran.
        unsafe {
            if let Ok(None) = self.child.try_wait() {
                libc::kill(-(self.pid as i32), libc::SIGKILL);
            }
            for d in &self.descendants {
                libc::kill(*d as i32, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Takes goroscope snapshots `a`, then runs `oracle`, then `b`, until `a` and `b` agree
/// goroutine for goroutine (site, start function, parent) and `oracle` returns Some (it
/// may refuse a moment it sees as busy), at most `tries` times. Returns `(oracle, a, b)`.
pub fn around<T>(
    what: &str,
    pid: u32,
    tries: usize,
    mut oracle: impl FnMut() -> Option<T>,
) -> (T, View, View) {
    let mut last = String::new();
    for i in 0..tries {
        let a = View::of_snapshot(&snapshot(pid));
        let o = oracle();
        let b = View::of_snapshot(&snapshot(pid));
        match o {
            Some(o) if a.goroutines == b.goroutines => return (o, a, b),
            Some(_) => {
                last = format!(
                    "the program moved between the snapshots:\n{}",
                    diff_goroutines(&a, &b)
                )
            }
            None => last = "the oracle saw the program busy".to_string(),
        }
        eprintln!("{what}: try {}: {last}", i + 1);
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("{what}: not quiet after {tries} tries: {last}");
}

/// Waits until two goroscope snapshots `gap` apart agree goroutine for goroutine, and
/// returns both.
pub fn quiet(what: &str, pid: u32, gap: Duration, timeout: Duration) -> (View, View) {
    let deadline = Instant::now() + timeout;
    let mut prev = View::of_snapshot(&snapshot(pid));
    loop {
        std::thread::sleep(gap);
        let now = View::of_snapshot(&snapshot(pid));
        if now.goroutines == prev.goroutines {
            return (prev, now);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: goroutines still moving after {timeout:?}:\n{}",
            diff_goroutines(&prev, &now)
        );
        prev = now;
    }
}

/// The debug=2 oracle of a program serving `net/http/pprof` at `addr`: its goroutines
/// without the request's own (the one writing the dump, `net/http.serverHandler` on its
/// stack, and the connection's background reader, created at
/// `net/http.(*connReader).startBackgroundRead`, which lives only while a handler runs).
/// None when another request was in flight (a second handler): not a quiet moment.
pub fn pprof_oracle(addr: &str) -> Option<Vec<Goroutine>> {
    let r = crate::http_get(addr, "/debug/pprof/goroutine?debug=2", None).expect("pprof");
    assert_eq!(r.status, 200, "/debug/pprof/goroutine?debug=2: {}", r.body);
    let gs = parse_traceback(&r.body);
    assert!(!gs.is_empty(), "no goroutines in:\n{}", r.body);
    let in_handler = |g: &Goroutine| g.has_frame("net/http.serverHandler.ServeHTTP");
    let handlers: Vec<&Goroutine> = gs.iter().filter(|g| in_handler(g)).collect();
    let readers = gs.iter().filter(|g| is_background_reader(g)).count();
    if handlers.len() != 1 || readers > 1 {
        return None;
    }
    assert!(
        handlers[0].has_frame("runtime/pprof.writeGoroutineStacks"),
        "the handler in flight is not the dump's: {:?}",
        handlers[0]
    );
    Some(
        gs.into_iter()
            .filter(|g| !in_handler(g) && !is_background_reader(g))
            .collect(),
    )
}

fn is_background_reader(g: &Goroutine) -> bool {
    g.created_by
        .as_ref()
        .is_some_and(|c| c.function == "net/http.(*connReader).startBackgroundRead")
}

/// Go's own notion of a system goroutine (`runtime.isSystemGoroutine`), which
/// `runtime.NumGoroutine` and debug=2 leave out: started in package
/// `runtime`, except `runtime.main` (and the finalizer goroutine while it runs a
/// finalizer, never in a quiet program).
pub fn is_system_start(start: &str) -> bool {
    start.starts_with("runtime.") && start != "runtime.main"
}

// ---------------------------------------------------------------------------------------
// Talking to the programs.

/// A minimal LSP client over a target's stdin/stdout (`Content-Length` framing).
pub struct Lsp {
    stdin: ChildStdin,
    messages: Receiver<Value>,
    next_id: u64,
}

impl Lsp {
    pub fn new(target: &mut Target) -> Lsp {
        let stdin = target.stdin.take().expect("stdin");
        let stdout = target.stdout.take().expect("stdout");
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut len = None;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse::<usize>().ok();
                    }
                }
                let Some(len) = len else { return };
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let Ok(v) = serde_json::from_slice(&body) else {
                    return;
                };
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Lsp {
            stdin,
            messages,
            next_id: 1,
        }
    }

    fn send(&mut self, msg: Value) {
        let body = msg.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("LSP write");
        self.stdin.flush().expect("LSP flush");
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its response (messages before it are dropped).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        self.until(&format!("the response to {method}"), |m| {
            m["id"] == id && m.get("method").is_none()
        })
    }

    /// The next message `want` accepts (others are dropped).
    pub fn until(&mut self, what: &str, mut want: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("LSP: no {what} in time"));
            if want(&m) {
                return m;
            }
        }
    }
}

/// An HTTP/1.1 connection that made one request and stays open, idle (keep-alive): the
/// server keeps one goroutine blocked reading it. Closed when dropped.
pub struct IdleConn(#[allow(dead_code)] TcpStream);

impl IdleConn {
    pub fn open(addr: &str, path: &str) -> IdleConn {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
        // Headers, then Content-Length bytes of body.
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut len = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            r.read_line(&mut line).expect("response");
            let l = line.trim_end().to_ascii_lowercase();
            if first {
                assert!(l.starts_with("http/1.1 200"), "{addr}{path}: {l}");
                first = false;
            }
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            assert!(
                !l.starts_with("transfer-encoding:"),
                "{addr}{path}: chunked answer, use a path with a Content-Length"
            );
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).expect("body");
        IdleConn(s)
    }
}

/// Writes `files` (`(relative path, text)`) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGQUIT_127: &str = "\
SIGQUIT: quit
PC=0x499301 m=0 sigcode=0

goroutine 0 gp=0x30a26a0 m=0 mp=0x30a4900 [idle]:
runtime.futex(0x30a4a58, 0x80, 0x0, 0x0, 0x0, 0x0)
\truntime/sys_linux_amd64.s:575 +0x21 fp=0x7ffdd52a00f0 sp=0x7ffdd52a00e8 pc=0x499301
runtime.mstart()
\truntime/asm_amd64.s:395 +0x5 fp=0x7ffdd52a0238 sp=0x7ffdd52a0230 pc=0x494ea5

goroutine 1 gp=0x2312c1bdc1e0 m=0 mp=0x112e3a0 [syscall]:
syscall.Syscall6(0xf7, 0x3, 0xe, 0x2312c1df9c80, 0x4, 0x2312c1dbc240, 0x0)
\tsyscall/syscall_linux.go:96 +0x39 fp=0x2312c1df9bf8 sp=0x2312c1df9b98 pc=0x4ab459
os.(*Process).pidfdWait.func1(...)
\tos/pidfd_linux.go:108
main.main()
\tgithub.com/evilmartians/lefthook/v2/main.go:12 +0x105 fp=0x2312c1dfbeb8 sp=0x2312c1dfbe40 pc=0x9a1565
runtime.main()
\truntime/proc.go:302 +0x427 fp=0x2312c1dfbfe0 sp=0x2312c1dfbeb8 pc=0x4542e7
runtime.goexit({})
\truntime/asm_amd64.s:1264 +0x1 fp=0x2312c1dfbfe8 sp=0x2312c1dfbfe0 pc=0x4929c1

goroutine 3 gp=0x2312c1bdcd20 m=nil [GC sweep wait]:
runtime.gopark(0x0?, 0x0?, 0x0?, 0x0?, 0x0?)
\truntime/proc.go:474 +0xca fp=0x2312c1c21788 sp=0x2312c1c21768 pc=0x48bbea
runtime.bgsweep(0x2312c1c40000)
\truntime/mgcsweep.go:279 +0x94 fp=0x2312c1c217c8 sp=0x2312c1c21788 pc=0x43f094
runtime.gcenable.gowrap1()
\truntime/mgc.go:214 +0x17 fp=0x2312c1c217e0 sp=0x2312c1c217c8 pc=0x482557
runtime.goexit({})
\truntime/asm_amd64.s:1264 +0x1 fp=0x2312c1c217e8 sp=0x2312c1c217e0 pc=0x4929c1
created by runtime.gcenable in goroutine 1
\truntime/mgc.go:214 +0x66

goroutine 23 gp=0x2312c1cde3c0 m=nil [IO wait, 3 minutes]:
runtime.gopark(0x103bf98?, 0x7fde1826ba20?, 0x2?, 0x2?, 0x5?)
\truntime/proc.go:474 +0xca fp=0x2312c1c48b98 sp=0x2312c1c48b78 pc=0x48bbea
os/exec.(*Cmd).writerDescriptor.func1()
\tos/exec/exec.go:613 +0x34 fp=0x2312c1c48f60 sp=0x2312c1c48f00 pc=0x655b54
os/exec.(*Cmd).Start.func2(0x0?)
\tos/exec/exec.go:768 +0x2c fp=0x2312c1c48fc8 sp=0x2312c1c48f60 pc=0x655c4c
os/exec.(*Cmd).Start.gowrap1()
\tos/exec/exec.go:780 +0x1b fp=0x2312c1c48fe0 sp=0x2312c1c48fc8 pc=0x655bfb
runtime.goexit({})
\truntime/asm_amd64.s:1264 +0x1 fp=0x2312c1c48fe8 sp=0x2312c1c48fe0 pc=0x4929c1
created by os/exec.(*Cmd).Start in goroutine 1
\tos/exec/exec.go:767 +0x92b

goroutine 50 gp=0x2312c1cde5a0 m=nil [select, locked to thread]:
runtime.selectgo(0x2312c1d367a8, 0x2312c1d36790, 0x0?, 0x0, 0x0?, 0x1)
\truntime/select.go:351 +0xa97 fp=0x2312c1d36758 sp=0x2312c1d36618 pc=0x466457
runtime.ensureSigM.func1()
\truntime/signal_unix.go:1093 +0x188 fp=0x2312c1d367e0 sp=0x2312c1d36758 pc=0x4865c8
runtime.goexit({})
\truntime/asm_amd64.s:1264 +0x1 fp=0x2312c1d367e8 sp=0x2312c1d367e0 pc=0x4929c1
created by runtime.ensureSigM in goroutine 1
\truntime/signal_unix.go:1076 +0xc5

goroutine 7 gp=0x2312c1cdf680 m=2 mp=0x2312c1c25008 [running]:
\tgoroutine running on other thread; stack unavailable
created by main.worker in goroutine 1
\tmain.go:40 +0x8f3

rax    0xf7
rbx    0x3
";

    #[test]
    fn sigquit_dump() {
        let gs = parse_traceback(SIGQUIT_127);
        let goids: Vec<u64> = gs.iter().map(|g| g.goid).collect();
        assert_eq!(goids, [0, 1, 3, 23, 50, 7]);
        let g1 = &gs[1];
        assert_eq!(g1.state, "syscall");
        assert_eq!(g1.created_by, None);
        assert_eq!(g1.frames.len(), 5);
        assert!(g1.frames[1].inlined);
        assert!(!g1.frames[0].inlined);
        assert_eq!(
            g1.frames[2].file,
            "github.com/evilmartians/lefthook/v2/main.go"
        );
        assert_eq!(g1.frames[2].line, 12);
        assert_eq!(g1.bottom_function(), Some("runtime.main"));
        assert_eq!(g1.start_function(), Some("runtime.main"));

        let g3 = &gs[2];
        assert_eq!(g3.state, "GC sweep wait");
        assert_eq!(g3.bottom_function(), Some("runtime.gcenable.gowrap1"));
        assert_eq!(g3.start_function(), Some("runtime.bgsweep"));
        assert_eq!(
            g3.created_by,
            Some(CreatedBy {
                function: "runtime.gcenable".into(),
                parent_goid: Some(1),
                file: "runtime/mgc.go".into(),
                line: 214,
            })
        );
        assert_eq!(
            g3.created_by.as_ref().unwrap().site(),
            "runtime.gcenable runtime/mgc.go:214"
        );

        let g23 = &gs[3];
        assert_eq!(g23.state, "IO wait");
        assert_eq!(g23.start_function(), Some("os/exec.(*Cmd).Start.func2"));
        assert_eq!(gs[4].state, "select");
        assert_eq!(gs[4].start_function(), Some("runtime.ensureSigM.func1"));

        let g7 = &gs[5];
        assert_eq!(g7.state, "running");
        assert!(g7.frames.is_empty());
        assert_eq!(g7.start_function(), None);
        assert_eq!(
            g7.created_by.as_ref().unwrap().site(),
            "main.worker main.go:40"
        );
    }

    /// `/debug/pprof/goroutine?debug=2` of a Go 1.19 program: default level (no runtime
    /// frames, no wrappers), `created by` without the parent, and a stack deeper than
    /// 100 frames cut at the bottom.
    #[test]
    fn debug2_go119() {
        let mut deep = String::from("goroutine 9 [chan receive, 5 minutes]:\n");
        for i in 0..100 {
            deep.push_str(&format!("main.rec({i})\n\t/src/main.go:{}\n", 10 + i));
        }
        deep.push_str(
            "...additional frames elided...\ncreated by main.deep\n\t/src/main.go:7 +0x25\n",
        );
        let text = format!(
            "goroutine 404 [running]:\n\
runtime/pprof.writeGoroutineStacks({{0x7fc9edc18850, 0xc0004a2280}})\n\
\truntime/pprof/pprof.go:692 +0x70\n\
net/http.serverHandler.ServeHTTP({{0xc000133c50?}}, {{0x24ef888, 0xc0004a2280}}, 0xc0007b8f00)\n\
\tnet/http/server.go:2947 +0x30c\n\
net/http.(*conn).serve(0xc0002a0fa0, {{0x24f2a58, 0xc000b7e720}})\n\
\tnet/http/server.go:1991 +0x607\n\
created by net/http.(*Server).Serve\n\
\tnet/http/server.go:3102 +0x4db\n\
\n\
goroutine 1 [chan receive]:\n\
main.main()\n\
\t/src/main.go:90 +0x1e7\n\
\n\
goroutine 405 [IO wait]:\n\
internal/poll.runtime_pollWait(0x7fc9edd0e5b8, 0x72)\n\
\truntime/netpoll.go:305 +0x89\n\
net/http.(*connReader).backgroundRead(0xc0004a21e0)\n\
\tnet/http/server.go:678 +0x3f\n\
created by net/http.(*connReader).startBackgroundRead\n\
\tnet/http/server.go:674 +0xca\n\
\n\
{deep}\n\
goroutine 12 [select]:\n\
github.com/oklog/run.(*Group).Run.func1({{0x24e1f40?, 0xc00012a5a0?}})\n\
\tgithub.com/oklog/run/group.go:38 +0x2f\n\
created by github.com/oklog/run.(*Group).Run\n\
\tgithub.com/oklog/run/group.go:37 +0x22a\n"
        );
        let gs = parse_traceback(&text);
        assert_eq!(
            gs.iter().map(|g| g.goid).collect::<Vec<_>>(),
            [404, 1, 405, 9, 12]
        );
        assert_eq!(gs[3].state, "chan receive");
        assert_eq!(gs[3].frames.len(), 100);
        assert!(gs[3].bottom_elided);
        assert_eq!(gs[3].start_function(), None);
        assert_eq!(gs[3].created_by.as_ref().unwrap().parent_goid, None);
        assert_eq!(
            gs[3].created_by.as_ref().unwrap().site(),
            "main.deep /src/main.go:7"
        );

        let v = View::of_traceback(&gs, true);
        assert_eq!(v.goroutines[&1].site, MAIN_GOROUTINE);
        assert_eq!(v.goroutines[&1].start, "runtime.main");
        assert_eq!(v.goroutines[&9].start, ELIDED);
        assert_eq!(
            v.goroutines[&12],
            Entry {
                site: "github.com/oklog/run.(*Group).Run github.com/oklog/run/group.go:37".into(),
                start: "github.com/oklog/run.(*Group).Run.func1".into(),
                parent: None,
            }
        );
        let sites = v.sites();
        assert_eq!(sites.len(), 5);
        assert_eq!(sites["main.deep /src/main.go:7"].count, 1);
    }

    /// Go 1.21+ elides the middle of deep stacks and keeps the bottom.
    #[test]
    fn middle_elision_keeps_the_start_function() {
        let text = "goroutine 5 [sleep]:\n\
time.Sleep(0x3b9aca00)\n\
\truntime/time.go:195 +0x125\n\
...50 frames elided...\n\
main.rec(0x0)\n\
\tmain.go:9 +0x16\n\
main.start.gowrap1()\n\
\tmain.go:20 +0x25\n\
runtime.goexit({})\n\
\truntime/asm_amd64.s:1700 +0x1\n\
created by main.start in goroutine 1\n\
\tmain.go:20 +0x25\n";
        let gs = parse_traceback(text);
        assert_eq!(gs.len(), 1);
        assert!(!gs[0].bottom_elided);
        assert_eq!(gs[0].start_function(), Some("main.rec"));
    }

    #[test]
    fn wrappers() {
        assert!(is_wrapper("main.main.gowrap12"));
        assert!(is_wrapper("net/http.(*Server).Serve-fm"));
        assert!(!is_wrapper("main.gowrapper"));
        assert!(!is_wrapper("main.main.gowrap"));
        assert!(!is_wrapper("main.main.func1"));
    }

    #[test]
    fn comparison_and_diff() {
        let oracle = View::of_traceback(&parse_traceback(SIGQUIT_127), false);
        assert_eq!(oracle.len(), 5);
        let same = oracle.clone();
        let c = compare("same", &oracle, &same, &same);
        assert_eq!(c.goroutines, 5);
        assert!(c.state_mismatches.is_empty());

        let mut other = oracle.clone();
        other.goroutines.get_mut(&23).unwrap().start = "os/exec.(*Cmd).Start.gowrap1".into();
        let d = diff_sites(&oracle.sites(), &other.sites());
        assert!(
            d.contains("os/exec.(*Cmd).Start os/exec/exec.go:767"),
            "{d}"
        );
        assert!(d.contains("os/exec.(*Cmd).Start.gowrap1×1"), "{d}");
        let r = std::panic::catch_unwind(|| compare("other", &oracle, &other, &other));
        assert!(r.is_err());

        let mut moved = oracle.clone();
        moved.states.insert(23, "select".into());
        let c = compare("states", &oracle, &moved, &moved);
        assert_eq!(
            c.state_mismatches,
            [(23, "IO wait".into(), "select".into())]
        );
    }

    #[test]
    fn pprof_totals_and_system_goroutines() {
        let debug1 = "goroutine profile: total 28\n\
7 @ 0x1 0x2\n\
#\t0x1\tmain.f+0x1\tmain.go:1\n\
\n\
1 @ 0x3 0x4\n\
#\t0x3\truntime/pprof.writeGoroutineStacks+0x1\tpprof.go:1\n\
#\t0x4\tnet/http.serverHandler.ServeHTTP+0x2\tserver.go:2\n\
\n\
2 @ 0x3 0x4\n\
#\t0x4\tnet/http.serverHandler.ServeHTTP+0x2\tserver.go:2\n";
        assert_eq!(pprof_total(debug1), Some(28));
        assert_eq!(pprof_in_handlers(debug1), 3);
        assert!(is_system_start("runtime.bgsweep"));
        assert!(!is_system_start("runtime.main"));
        assert!(!is_system_start("main.main"));
    }
}
