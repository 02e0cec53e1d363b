//! Go binary analysis: version and module (`.go.buildinfo`), functions and source lines
//! (`.gopclntab`), runtime struct layouts (DWARF or the built-in table), and probe sites
//! (x86-64 decoding). Works on stripped (`-ldflags="-s -w"`), PIE and cgo binaries.

pub mod buildinfo;
pub mod dwarf;
pub mod elf;
pub mod error;
pub mod moduledata;
pub mod offsets;
mod offsets_table;
pub mod pclntab;
pub mod runtime_vars;
pub mod sites;
pub mod version;

use std::collections::HashMap;
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
    pub main_path: Option<String>,
    pub module: Option<String>,
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
    /// Compiler-generated `go` statement wrappers (`f.gowrapN`, `f.funcN` in 1.21) →
    /// the function they start, so a goroutine's start function is the user's.
    #[serde(skip)]
    pub go_wrappers: HashMap<u64, String>,
    #[serde(skip)]
    pub pclntab: Pclntab,
}

/// Analyses the Go binary at `path`.
pub fn analyze(path: &Path) -> Result<Analysis, BinaryError> {
    let io = |source| BinaryError::Io {
        path: path.to_path_buf(),
        source,
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
    // PIE builds before Go 1.26 put the table in a RELRO section of their own.
    let pcln_section = elf
        .section(".gopclntab")
        .or_else(|| elf.section(".data.rel.ro.gopclntab"));
    let (info, version) = go_version(path, &elf, data, pcln_section.is_some())?;
    let (pcln_addr, pcln_data) =
        pcln_section.ok_or_else(|| corrupt(Malformed::new("no .gopclntab section")))?;
    let pclntab = read_pclntab(&elf, pcln_addr, pcln_data).map_err(corrupt)?;

    let facts = dwarf::read(&elf).map_err(corrupt)?;
    let (offsets, offsets_source) = choose_offsets(path, version, facts.as_ref())?;

    let runtime_vars = runtime_vars(&elf, &pclntab, facts.as_ref());
    let wait_reasons = runtime_vars::wait_reasons(&elf);
    let sites = sites::select(&elf, &pclntab, version, offsets);
    let go_wrappers = go_wrappers(&elf, &pclntab);

    Ok(Analysis {
        path: p(),
        go_version: info.go_version,
        version,
        main_path: info.main_path,
        module: info.module,
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
        go_wrappers,
        pclntab,
    })
}

/// The build info and Go version of a supported Go binary; `has_pclntab`: whether it
/// looks like Go without a build info (then it is corrupt, not "not Go").
fn go_version(
    path: &Path,
    elf: &elf::Elf<'_>,
    data: &[u8],
    has_pclntab: bool,
) -> Result<(buildinfo::BuildInfo, GoVersion), BinaryError> {
    let p = || path.to_path_buf();
    let corrupt = |m: Malformed| BinaryError::Corrupt {
        path: p(),
        what: m.0,
    };
    let bi_section = elf.section(".go.buildinfo").map(|(_, d)| d);
    let Some(bi_off) = buildinfo::locate(bi_section, data) else {
        return Err(if has_pclntab {
            corrupt(Malformed::new("no .go.buildinfo"))
        } else {
            BinaryError::NotGo(p())
        });
    };
    let info = match buildinfo::parse(&data[bi_off..]) {
        Ok(i) => i,
        Err(buildinfo::BuildInfoError::PointerFormat) => {
            return Err(BinaryError::UnsupportedGoVersion {
                path: p(),
                found: "older than go1.18 (pre-1.18 buildinfo format)".into(),
            })
        }
        Err(buildinfo::BuildInfoError::Malformed(m)) => return Err(corrupt(m)),
    };
    let version = GoVersion::parse(&info.go_version).ok_or_else(|| BinaryError::Unsupported {
        path: p(),
        what: format!("unrecognized Go version {:?}", info.go_version),
    })?;
    if !version.is_supported() {
        return Err(BinaryError::UnsupportedGoVersion {
            path: p(),
            found: info.go_version,
        });
    }
    Ok((info, version))
}

/// The pclntab at link-time address `addr`, with the inline trees when they are found.
fn read_pclntab(elf: &elf::Elf<'_>, addr: u64, data: &[u8]) -> Result<Pclntab, Malformed> {
    let text_section = elf.section(".text").map(|(a, _)| a);
    let mut pclntab = Pclntab::parse(data, |header| {
        if header != 0 {
            header
        } else if let Some(v) = elf.relative_reloc_at(addr + 24) {
            v
        } else {
            text_section.unwrap_or(0)
        }
    })?;
    if pclntab.by_name("runtime.main").next().is_none() {
        return Err(Malformed::new("pclntab has no runtime.main"));
    }
    // FUNCDATA (inline trees) for naming inlined functions; without it, a site inside an
    // inlined call is named after the function it was inlined into.
    if let Some(g) = moduledata::gofunc(elf, addr, pclntab.funcnametab_offset()) {
        if let Some((start, data)) = elf.section_containing(g) {
            pclntab.set_gofunc(data[(g - start) as usize..].to_vec());
        }
    }
    Ok(pclntab)
}

impl Analysis {
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

/// `go f(x)` makes the compiler start a closure (`caller.gowrapN` from Go 1.22,
/// `caller.funcN` before) that calls `f`; the runtime hides it in tracebacks. A closure
/// whose body makes exactly one call outside the runtime is treated as such a wrapper.
fn go_wrappers(elf: &elf::Elf<'_>, pcln: &Pclntab) -> HashMap<u64, String> {
    let is_closure = |name: &str| {
        let last = name.rsplit('.').next().unwrap_or("");
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        last.strip_prefix("gowrap").is_some_and(digits)
            || last.strip_prefix("func").is_some_and(digits)
    };
    let mut out = HashMap::new();
    for f in pcln.funcs.iter().filter(|f| is_closure(&f.name)) {
        let Some(calls) = sites::decode_calls(elf, f) else {
            continue;
        };
        let mut targets: Vec<&str> = calls
            .iter()
            .filter_map(|t| pcln.func_at(*t).filter(|c| c.entry == *t))
            .map(|c| c.name.as_str())
            // Runtime helpers (morestack, write barriers, panics) are not what a user
            // wrapper starts; a runtime wrapper starts a runtime function.
            .filter(|n| {
                !n.starts_with("runtime.morestack")
                    && (f.name.starts_with("runtime.") || !n.starts_with("runtime."))
            })
            .collect();
        targets.dedup();
        if let [only] = targets[..] {
            out.insert(f.entry, only.to_string());
        }
    }
    out
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
