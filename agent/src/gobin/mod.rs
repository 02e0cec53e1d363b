//! Go binary analysis: version and module (`.go.buildinfo`, else `runtime.buildVersion`),
//! functions and source lines (the pclntab, with or without a section of its own: see
//! `locate`), runtime struct layouts (DWARF or the built-in table), and probe sites
//! (x86-64 decoding). Works on Go 1.19–1.27, stripped (`-ldflags="-s -w"`), PIE, cgo and
//! externally linked (static-pie included) binaries.

pub mod buildinfo;
pub mod dwarf;
pub mod elf;
pub mod error;
pub mod locate;
pub mod moduledata;
pub mod offsets;
mod offsets_table;
pub mod pclntab;
pub mod runtime_vars;
pub mod sites;
pub mod version;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use error::BinaryError;
pub use offsets::{CancelCtxOffsets, GOffsets, OffsetsSource, RuntimeOffsets};
pub use pclntab::{Pclntab, SourceLoc};
pub use sites::{Hook, ProbeSite, SiteKind, Sites};
pub use version::GoVersion;

use error::Malformed;

pub use runtime_vars::RuntimeVars;

/// Everything goroscope knows about one Go binary.
#[derive(Serialize)]
pub struct Analysis {
    pub path: PathBuf,
    /// The version string as recorded (e.g. `go1.21.13`).
    pub go_version: String,
    #[serde(skip)]
    pub version: GoVersion,
    /// Where the version came from: the build info, or `runtime.buildVersion`.
    pub version_source: String,
    pub main_path: Option<String>,
    pub module: Option<String>,
    /// Its version (`(devel)` for a local build).
    pub module_version: Option<String>,
    /// `build` settings of the build info (`-buildmode=pie`, `CGO_ENABLED=1`, …).
    pub build_settings: Vec<(String, String)>,
    /// `exe`, `static exe`, `pie` or `static-pie`, from the ELF headers.
    pub build_mode: String,
    /// `Go (internal)` or the external linker that wrote the file.
    pub linker: String,
    /// Where the function table was found.
    pub pclntab_source: String,
    pub has_symbols: bool,
    pub has_dwarf: bool,
    /// No symbol table and no DWARF (`-ldflags="-s -w"`).
    pub stripped: bool,
    pub pie: bool,
    pub text_start: u64,
    /// `(p_vaddr, p_offset)` of the first PT_LOAD segment, to compute the load bias of
    /// a PIE process.
    #[serde(skip)]
    pub first_load: (u64, u64),
    pub functions: usize,
    /// Whether the inline trees were found, so sites inside inlined calls are named after
    /// the inlined function.
    pub inlined_calls_expanded: bool,
    pub offsets: RuntimeOffsets,
    pub offsets_source: OffsetsSource,
    pub runtime_vars: RuntimeVars,
    /// Names of `g.waitreason` values, from the binary's `runtime.waitReasonStrings`.
    pub wait_reasons: Vec<String>,
    pub probe_sites: Vec<ProbeSite>,
    /// Hooks that could not be placed, with the reason.
    pub missing_sites: Vec<String>,
    /// Whether the context-creation function is called from outside package `context`
    /// (see [`Sites::context_create_called_outside`]).
    pub context_create_called_outside: bool,
    /// Compiler-generated `go` statement wrappers (`f.gowrapN`, `f.funcN` in 1.21) →
    /// the function they start, so a goroutine's start function is the user's.
    #[serde(skip)]
    pub go_wrappers: HashMap<u64, String>,
    /// Entries of wrappers whose callee is not in their code (a call through a register:
    /// a func literal with captured variables, an interface method): the goroutine's
    /// stack says what they called (see `intake::goroutines::resolve_start`).
    #[serde(skip)]
    pub unresolved_wrappers: HashSet<u64>,
    #[serde(skip)]
    pub pclntab: Pclntab,
}

/// Analyses the Go binary at `path`.
pub fn analyze(path: &Path) -> Result<Analysis, BinaryError> {
    let io = |err| BinaryError::Io {
        path: path.to_path_buf(),
        err,
    };
    if std::fs::metadata(path).map_err(io)?.is_dir() {
        return Err(BinaryError::IsDirectory(path.to_path_buf()));
    }
    let data = std::fs::read(path).map_err(io)?;
    analyze_bytes(path, &data)
}

/// Analyses a Go binary already in memory; `path` is used in messages.
pub fn analyze_bytes(path: &Path, data: &[u8]) -> Result<Analysis, BinaryError> {
    let p = || path.to_path_buf();
    let corrupt = |m: Malformed| BinaryError::Corrupt {
        path: p(),
        what: m.0,
    };
    match elf::check_ident(data) {
        Ok(()) => {}
        Err(elf::ElfCheck::NotElf) => return Err(BinaryError::NotElf(p())),
        Err(elf::ElfCheck::Unsupported(what)) => {
            return Err(BinaryError::UnsupportedElf { path: p(), what })
        }
    }
    let elf = elf::Elf::parse(data).map_err(corrupt)?;

    // Version first: an old toolchain deserves that message, not a parse error.
    let located = locate::pclntab(&elf);
    let info = build_info(path, &elf, data)?;
    let Some(located) = located else {
        return Err(match info {
            None => BinaryError::NotGo(p()),
            Some((i, _)) => corrupt(Malformed::new(format!(
                "{} build info but no function table (no .gopclntab section, no \
                 runtime.pclntab symbol, no pclntab header in the data)",
                i.go_version
            ))),
        });
    };
    // The recorded build info with its version, if that version is supported.
    let recorded = info
        .map(|(i, source)| check_supported(path, &i.go_version).map(|v| (i, source, v)))
        .transpose()?;
    // An old table with no build info to say otherwise: an old toolchain. (With build
    // info of a supported version, an old table is corrupt: the parse says so.)
    if recorded.is_none() && ![pclntab::MAGIC_GO118, pclntab::MAGIC_GO120].contains(&located.magic)
    {
        return Err(BinaryError::UnsupportedGoVersion {
            path: p(),
            found: format!(
                "Go {} (its function table has the format of those releases)",
                locate::magic_lines(located.magic)
            ),
        });
    }
    let (mut pclntab, md) = read_pclntab(&elf, &located).map_err(corrupt)?;

    let (info, version_source, version) = match recorded {
        Some(r) => r,
        None => {
            let Some(v) = locate::build_version(&elf, &pclntab) else {
                return Err(BinaryError::Unsupported {
                    path: p(),
                    what: "Go binary without build info (.go.buildinfo), and its Go version \
                           (runtime.buildVersion) could not be found"
                        .into(),
                });
            };
            let version = check_supported(path, &v.version)?;
            let info = buildinfo::BuildInfo {
                go_version: v.version,
                main_path: None,
                module: None,
                module_version: None,
                settings: Vec::new(),
            };
            (info, v.source, version)
        }
    };
    if !locate::magic_matches(pclntab.magic, version) {
        return Err(corrupt(Malformed::new(format!(
            "version {} disagrees with its function table, whose format is that of Go {}",
            info.go_version,
            locate::magic_lines(pclntab.magic)
        ))));
    }

    // FUNCDATA (inline trees) for naming inlined functions; without it, a site inside an
    // inlined call is named after the function it was inlined into.
    if let Some(g) = moduledata::gofunc(&elf, md, version) {
        if let Some((start, data)) = elf.section_containing(g) {
            pclntab.set_gofunc(data[(g - start) as usize..].to_vec());
        }
    }

    let facts = dwarf::read(&elf).map_err(corrupt)?;
    let (offsets, offsets_source) = choose_offsets(path, version, facts.as_ref())?;

    let runtime_vars = runtime_vars(&elf, &pclntab, facts.as_ref());
    let wait_reasons = runtime_vars::wait_reasons(&elf);
    let sites = sites::select(&elf, &pclntab, version, offsets);
    let (go_wrappers, unresolved_wrappers) = go_wrappers(&elf, &pclntab);

    Ok(Analysis {
        path: p(),
        go_version: info.go_version,
        version,
        version_source,
        main_path: info.main_path,
        module: info.module,
        module_version: info.module_version,
        build_settings: info.settings,
        build_mode: elf.build_mode().to_string(),
        linker: elf.linker(),
        pclntab_source: located.source,
        has_symbols: elf.has_symtab(),
        has_dwarf: elf.has_dwarf(),
        stripped: !elf.has_symtab() && !elf.has_dwarf(),
        pie: elf.is_pie(),
        text_start: pclntab.text_start,
        first_load: elf.first_load(),
        functions: pclntab.funcs.len(),
        inlined_calls_expanded: pclntab.expands_inlining(),
        offsets,
        offsets_source,
        runtime_vars,
        wait_reasons,
        probe_sites: sites.sites,
        missing_sites: sites.missing,
        context_create_called_outside: sites.context_create_called_outside,
        go_wrappers,
        unresolved_wrappers,
        pclntab,
    })
}

/// The build info recorded by the linker, if any, and where it was found.
fn build_info(
    path: &Path,
    elf: &elf::Elf<'_>,
    data: &[u8],
) -> Result<Option<(buildinfo::BuildInfo, String)>, BinaryError> {
    let bi_section = elf.section(".go.buildinfo").map(|(_, d)| d);
    let Some(bi_off) = buildinfo::locate(bi_section, data) else {
        return Ok(None);
    };
    let source = if bi_section.is_some_and(|s| s.starts_with(buildinfo::MAGIC)) {
        "section .go.buildinfo".to_string()
    } else {
        format!("build info found at file offset {bi_off:#x}")
    };
    match buildinfo::parse(&data[bi_off..]) {
        Ok(i) => Ok(Some((i, source))),
        Err(buildinfo::BuildInfoError::PointerFormat) => Err(BinaryError::UnsupportedGoVersion {
            path: path.to_path_buf(),
            found: "older than go1.18 (pre-1.18 buildinfo format)".into(),
        }),
        Err(buildinfo::BuildInfoError::Malformed(m)) => Err(BinaryError::Corrupt {
            path: path.to_path_buf(),
            what: m.0,
        }),
    }
}

/// The parsed version, if goroscope supports it.
fn check_supported(path: &Path, go_version: &str) -> Result<GoVersion, BinaryError> {
    let version = GoVersion::parse(go_version).ok_or_else(|| BinaryError::Unsupported {
        path: path.to_path_buf(),
        what: format!("unrecognized Go version {go_version:?}"),
    })?;
    if !version.is_supported() {
        return Err(BinaryError::UnsupportedGoVersion {
            path: path.to_path_buf(),
            found: go_version.to_string(),
        });
    }
    Ok(version)
}

/// The pclntab and the address of the moduledata that points at it.
fn read_pclntab(
    elf: &elf::Elf<'_>,
    located: &locate::Located<'_>,
) -> Result<(Pclntab, Option<u64>), Malformed> {
    let addr = located.addr;
    let md = moduledata::find(elf, addr, pclntab::funcnametab_offset(located.data)?);
    let pclntab = Pclntab::parse(located.data, |header| {
        // 0 until relocated in PIE binaries; with the external linker, not even
        // relocated (the runtime uses moduledata.text).
        if header != 0 {
            header
        } else if let Some(v) = elf.relative_reloc_at(addr + 24) {
            v
        } else if let Some(v) = md.and_then(|md| moduledata::text(elf, md)) {
            v
        } else if let Some(v) = elf.symbol_address("runtime.text") {
            v
        } else {
            elf.section(".text").map_or(0, |(a, _)| a)
        }
    })?;
    if pclntab.by_name("runtime.main").next().is_none() {
        return Err(Malformed::new("pclntab has no runtime.main"));
    }
    Ok((pclntab, md))
}

impl Analysis {
    /// What the binary tells of its sources: module, version, VCS revision and where the
    /// main module's root was at build time (see [`module_root`]).
    pub fn build_source(&self) -> crate::model::BuildSource {
        let setting = |k: &str| {
            self.build_settings
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let main_file = self
            .pclntab
            .by_name("main.main")
            .next()
            .and_then(|f| self.pclntab.source_at(f.entry))
            .map(|l| l.file);
        crate::model::BuildSource {
            go_version: self.go_version.clone(),
            module: self.module.clone(),
            module_version: self.module_version.clone(),
            revision: setting("vcs.revision").filter(|r| !r.is_empty()),
            modified: setting("vcs.modified").map(|m| m == "true"),
            module_root: match (&self.module, &self.main_path, main_file) {
                (Some(m), Some(p), Some(f)) => module_root(m, p, &f),
                _ => None,
            },
        }
    }

    /// The probe sites chosen for `hook` (several for a fallback at every `RET`).
    pub fn sites_for(&self, hook: Hook) -> impl Iterator<Item = &ProbeSite> {
        self.probe_sites.iter().filter(move |s| s.hook == hook)
    }

    /// Whether every hook of `hooks` has a probe site.
    pub fn has_sites(&self, hooks: &[Hook]) -> bool {
        hooks.iter().all(|h| self.sites_for(*h).next().is_some())
    }

    /// Link-time `[start, end)` ranges of package `context`'s code: runs of consecutive
    /// `context.*` functions.
    pub fn context_ranges(&self) -> Vec<(u64, u64)> {
        let mut funcs: Vec<&pclntab::Func> = self.pclntab.funcs.iter().collect();
        funcs.sort_by_key(|f| f.entry);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for f in funcs {
            if f.name.starts_with("context.") {
                run = Some(match run {
                    Some((start, _)) => (start, f.end),
                    None => (f.entry, f.end),
                });
            } else if let Some(r) = run.take() {
                out.push(r);
            }
        }
        out.extend(run);
        out
    }

    /// Name of the function starting at (or containing) link-time `pc`, seen through
    /// `go` statement wrappers.
    pub fn start_function(&self, pc: u64) -> Option<String> {
        let f = self.pclntab.func_at(pc)?;
        Some(
            self.go_wrappers
                .get(&f.entry)
                .cloned()
                .unwrap_or_else(|| f.name.clone()),
        )
    }
}

/// `go f(x)` makes the compiler start a wrapper closure (`caller.gowrapN` from Go 1.22,
/// `caller.funcN` before) that calls `f`; so do method values (`T.M-fm`). The runtime
/// hides such wrappers (funcID `wrapper`) in tracebacks, so a goroutine's start function
/// is the one the wrapper calls: the function inlined into the wrapper when the call was
/// inlined (`go func(n int) { … }(1)`), else its single direct `CALL` outside the
/// runtime's helpers. Wrappers that call through a register are returned apart
/// (unresolved). A closure the user wrote (`go func() { … }()`) is not a wrapper and
/// keeps its name.
fn go_wrappers(elf: &elf::Elf<'_>, pcln: &Pclntab) -> (HashMap<u64, String>, HashSet<u64>) {
    let mut out = HashMap::new();
    let mut unresolved = HashSet::new();
    let Some(wrapper) = pcln.wrapper_func_id() else {
        return (out, unresolved);
    };
    let helper = |n: &str| {
        [
            "morestack",
            "panic",
            "gcWriteBarrier",
            "wbBuf",
            "duff",
            "memmove",
            "typedmemmove",
        ]
        .iter()
        .any(|h| n.strip_prefix("runtime.").is_some_and(|r| r.starts_with(h)))
    };
    for f in pcln.funcs.iter() {
        if pcln.func_id(f) != Some(wrapper)
            || f.name.starts_with("type:")
            || f.name.starts_with("type.")
        {
            continue;
        }
        if let Some(inlined) = pcln.first_inlined(f) {
            out.insert(f.entry, inlined);
            continue;
        }
        let Some(calls) = sites::decode_calls(elf, f) else {
            continue;
        };
        let mut targets: Vec<&str> = calls
            .iter()
            .filter_map(|t| pcln.func_at(*t).filter(|c| c.entry == *t))
            .map(|c| c.name.as_str())
            // A runtime wrapper starts a runtime function; a user's never does.
            .filter(|n| {
                !helper(n) && (f.name.starts_with("runtime.") || !n.starts_with("runtime."))
            })
            .collect();
        targets.dedup();
        match targets[..] {
            [only] => {
                out.insert(f.entry, only.to_string());
            }
            _ => {
                unresolved.insert(f.entry);
            }
        }
    }
    (out, unresolved)
}

fn choose_offsets(
    path: &Path,
    version: GoVersion,
    facts: Option<&dwarf::DwarfFacts>,
) -> Result<(RuntimeOffsets, OffsetsSource), BinaryError> {
    let table = offsets::builtin(version);
    let reason = match facts.map(offsets::from_dwarf) {
        Some(Ok(mut o)) => {
            // A program that never uses context has no cancelCtx in DWARF.
            if o.cancel_ctx.is_none() {
                o.cancel_ctx = table.and_then(|t| t.cancel_ctx);
            }
            return Ok((o, OffsetsSource::Dwarf));
        }
        Some(Err(why)) => format!("{why:#}"),
        None => "binary has no DWARF".to_string(),
    };
    match table {
        Some(t) => Ok((
            t,
            OffsetsSource::BuiltinTable {
                go: format!("{}.{}", version.major, version.minor),
                reason,
            },
        )),
        None => Err(BinaryError::Unsupported {
            path: path.to_path_buf(),
            what: format!(
                "{reason}, and the built-in offsets table has no Go {}.{} (it covers {}): \
                 build the program without -ldflags=-w, or use a goroscope that knows this version",
                version.major,
                version.minor,
                offsets::builtin_lines().join(", ")
            ),
        }),
    }
}

fn runtime_vars(
    elf: &elf::Elf<'_>,
    pclntab: &Pclntab,
    facts: Option<&dwarf::DwarfFacts>,
) -> RuntimeVars {
    if let Some(f) = facts {
        let allgs = f.variables.get("runtime.allgs").copied();
        let allglen = f.variables.get("runtime.allglen").copied();
        if allgs.is_some() && allglen.is_some() {
            return RuntimeVars {
                allgs,
                allglen,
                source: "dwarf",
            };
        }
    }
    if let (Some(allgs), Some(allglen)) = (
        elf.symbol_address("runtime.allgs"),
        elf.symbol_address("runtime.allglen"),
    ) {
        return RuntimeVars {
            allgs: Some(allgs),
            allglen: Some(allglen),
            source: "symtab",
        };
    }
    match runtime_vars::from_code(elf, pclntab) {
        Some((allgs, allglen)) => RuntimeVars {
            allgs: Some(allgs),
            allglen: Some(allglen),
            source: "code",
        },
        None => RuntimeVars {
            allgs: None,
            allglen: None,
            source: "none",
        },
    }
}

/// The main module's root directory as the binary's file names show it: the directory of
/// `main.main`'s file less the main package's path inside the module (`main_path` less
/// `module`). `/src/app/cmd/server/main.go` of package `example.com/app/cmd/server` in
/// module `example.com/app` → `/src/app`; with `-trimpath` the file is
/// `example.com/app/cmd/server/main.go` and the root `example.com/app`.
pub fn module_root(module: &str, main_path: &str, main_file: &str) -> Option<String> {
    let dir = main_file.rsplit_once('/')?.0;
    let inner = if main_path == module {
        ""
    } else {
        main_path.strip_prefix(module)?.strip_prefix('/')?
    };
    if inner.is_empty() {
        return Some(dir.to_string());
    }
    let root = dir.strip_suffix(inner)?.strip_suffix('/')?;
    (!root.is_empty()).then(|| root.to_string())
}

#[cfg(test)]
mod module_root_tests {
    use super::module_root;

    #[test]
    fn the_root_is_the_main_package_dir_less_its_path_in_the_module() {
        let r = |m, p, f| module_root(m, p, f);
        assert_eq!(
            r(
                "example.com/app",
                "example.com/app/cmd/server",
                "/src/app/cmd/server/main.go"
            ),
            Some("/src/app".into())
        );
        assert_eq!(
            r("example.com/app", "example.com/app", "/home/u/app/main.go"),
            Some("/home/u/app".into())
        );
        assert_eq!(
            r(
                "example.com/app",
                "example.com/app/cmd/x",
                "example.com/app/cmd/x/main.go"
            ),
            Some("example.com/app".into())
        );
        // The file is not where the package path says: unknown.
        assert_eq!(
            r(
                "example.com/app",
                "example.com/app/cmd/x",
                "/src/other/main.go"
            ),
            None
        );
        assert_eq!(r("example.com/app", "example.org/x", "/a/main.go"), None);
    }
}
