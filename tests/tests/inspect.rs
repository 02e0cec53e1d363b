//! `inspect-binary` and the analysis behind it, on real Go builds of every version of the
//! matrix, each as default, stripped (`-s -w`) and PIE.

use std::collections::HashMap;
use std::process::Command;

use goroscope::gobin::{self, offsets, Hook, OffsetsSource, SiteKind};
use integration_tests::{builds, fixture, fixture_source, goroscope_json, line_of, supported};

/// Bytes of the file at a site's file offset.
fn file_bytes(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    data[off as usize..off as usize + len].to_vec()
}

#[test]
fn matrix_is_complete() {
    let f = supported("churn");
    let mut lines: Vec<(u32, u32)> = f.iter().map(|f| f.line()).collect();
    lines.dedup();
    // Go 1.21 … 1.27, three variants each.
    assert_eq!(lines, (21..=27).map(|m| (1, m)).collect::<Vec<_>>());
    assert_eq!(f.len(), 7 * 3);
}

#[test]
fn version_build_kind_and_offsets_source() {
    for f in supported("churn") {
        let a = gobin::analyze(&f.path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.go_version, format!("go{}", f.go), "{}", f.path.display());
        assert_eq!(a.module.as_deref(), Some("goroscope.test/fixtures"));
        assert_eq!(
            a.main_path.as_deref(),
            Some("goroscope.test/fixtures/churn")
        );
        match f.variant.as_str() {
            "stripped" => {
                assert!(a.stripped && !a.has_dwarf && !a.has_symbols && !a.pie);
                assert!(
                    matches!(&a.offsets_source, OffsetsSource::BuiltinTable { go, .. } if *go == format!("1.{}", f.line().1)),
                    "{:?}",
                    a.offsets_source
                );
            }
            "pie" => {
                assert!(a.pie && a.has_dwarf && !a.stripped);
                assert_eq!(a.offsets_source, OffsetsSource::Dwarf);
            }
            _ => {
                assert!(!a.pie && a.has_dwarf && a.has_symbols && !a.stripped);
                assert_eq!(a.offsets_source, OffsetsSource::Dwarf);
                assert_eq!(a.runtime_vars.source, "dwarf");
                assert!(a.runtime_vars.allgs.is_some() && a.runtime_vars.allglen.is_some());
            }
        }
    }
}

#[test]
fn stripped_and_unstripped_builds_agree_on_offsets() {
    let mut by_version: HashMap<String, Vec<(String, gobin::RuntimeOffsets)>> = HashMap::new();
    for f in supported("churn") {
        let a = gobin::analyze(&f.path).unwrap();
        by_version
            .entry(f.go.clone())
            .or_default()
            .push((f.variant, a.offsets));
    }
    assert_eq!(by_version.len(), 7);
    for (go, offs) in by_version {
        assert_eq!(offs.len(), 3);
        for (variant, o) in &offs {
            assert_eq!(
                *o, offs[0].1,
                "Go {go}: {variant} differs from {}",
                offs[0].0
            );
            assert!(o.cancel_ctx.is_some());
        }
    }
}

/// The built-in table (used for stripped binaries) equals what DWARF says, for every
/// version of the matrix: regenerate it with `cargo xtask gen-offsets` when this fails.
#[test]
fn builtin_table_equals_dwarf() {
    let defaults: Vec<_> = builds("churn")
        .into_iter()
        .filter(|f| f.variant == "default")
        .collect();
    assert_eq!(defaults.len(), 8, "Go 1.19 and 1.21–1.27");
    for f in defaults {
        let a = gobin::analyze(&f.path).unwrap();
        assert_eq!(a.offsets_source, OffsetsSource::Dwarf);
        assert_eq!(
            Some(a.offsets),
            offsets::builtin(a.version),
            "Go {}: built-in table differs from DWARF",
            f.go
        );
    }
    // The documented, independently known layouts (shared/notes/go-runtime.md).
    let g = |minor| {
        offsets::builtin(gobin::GoVersion {
            major: 1,
            minor,
            patch: 0,
        })
        .unwrap()
        .g
    };
    assert_eq!(
        (g(22).goid, g(22).gopc, g(22).parent_goid),
        (152, 280, Some(272))
    );
    // Go 1.19: no parentGoid yet.
    assert_eq!(
        (g(19).goid, g(19).gopc, g(19).startpc, g(19).parent_goid),
        (152, 296, 312, None)
    );
    assert_eq!(
        (g(23).goid, g(23).gopc, g(23).atomicstatus),
        (160, 288, 152)
    );
    assert_eq!((g(26).goid, g(26).gopc, g(26).startpc), (152, 288, 304));
}

#[test]
fn probe_sites_are_the_cheap_ones_on_every_build() {
    for f in supported("churn") {
        let a = gobin::analyze(&f.path).unwrap();
        let what = format!("{} ({})", f.path.display(), f.go);
        assert!(a.missing_sites.is_empty(), "{what}: {:?}", a.missing_sites);
        assert_eq!(a.probe_sites.len(), 4, "{what}");
        for s in &a.probe_sites {
            assert!(s.emulated, "{what}: {:?} not emulated", s.hook);
            assert!(s.fallback.is_none(), "{what}: {:?}", s.fallback);
            assert!(s.offset > 0, "{what}: {:?} on a first instruction", s.hook);
            assert_eq!(s.address, s.function_entry + s.offset);
            // The file offset really holds the instruction named.
            let b = file_bytes(&f.path, s.file_offset, 2);
            match s.kind {
                SiteKind::PushRbp => assert_eq!(b[0], 0x55, "{what}: {:?}", s.hook),
                SiteKind::CallRunqput => assert_eq!(b[0], 0xe8, "{what}"),
                SiteKind::NopBeforeRunqput => assert_eq!(b, [0x0f, 0x1f], "{what}"),
                k => panic!("{what}: unexpected kind {k:?}"),
            }
            // Every listed RET is a RET.
            assert!(!s.ret_offsets.is_empty(), "{what}");
            let func_file = s.file_offset - s.offset;
            for r in &s.ret_offsets {
                assert_eq!(
                    file_bytes(&f.path, func_file + r, 1),
                    [0xc3],
                    "{what}: RET at +{r:#x}"
                );
            }
        }
        let one = |h: Hook| {
            let v: Vec<_> = a.sites_for(h).collect();
            assert_eq!(v.len(), 1, "{what}: {h:?}");
            v[0].clone()
        };
        let create = one(Hook::GoroutineCreate);
        assert_eq!(create.function, "runtime.newproc.func1");
        // Go 1.23+ emits a 5-byte nop right before the call; the nop is cheaper.
        let want = if f.line() >= (1, 23) {
            SiteKind::NopBeforeRunqput
        } else {
            SiteKind::CallRunqput
        };
        assert_eq!(create.kind, want, "{what}");
        assert_eq!(create.values[0].name, "g");
        assert_eq!(
            create.values[0].loc,
            gobin::sites::Loc::Register { reg: "rbx".into() }
        );
        let exit = one(Hook::GoroutineExit);
        let want = if f.line() >= (1, 22) {
            "runtime.gdestroy"
        } else {
            "runtime.goexit0"
        };
        assert_eq!(
            (exit.function.as_str(), exit.kind),
            (want, SiteKind::PushRbp),
            "{what}"
        );
        assert_eq!(
            exit.values[0].loc,
            gobin::sites::Loc::Register { reg: "rax".into() }
        );
        assert_eq!(
            one(Hook::ContextCreate).function,
            "context.(*cancelCtx).propagateCancel"
        );
        assert_eq!(
            one(Hook::ContextCancel).function,
            "context.(*cancelCtx).cancel"
        );
    }
}

/// pc → `function file:line` from `.gopclntab`, the same with and without DWARF.
#[test]
fn source_lines_from_pclntab() {
    let src = fixture_source("churn");
    let go_line = line_of(&src, "// churn: creation site");
    let work_line = line_of(&src, "func work(");
    let spawn_first = line_of(&src, "func spawn(");
    let all = builds("churn");
    assert_eq!(all.len(), 8 * 6, "8 Go versions x 6 variants");
    for f in all {
        let a = gobin::analyze(&f.path).unwrap_or_else(|e| panic!("{e}"));
        let t = &a.pclntab;
        let work = t.by_name("main.work").next().expect("main.work");
        let loc = t.source_at(work.entry).expect("main.work resolves");
        assert_eq!(loc.function, "main.work");
        assert!(
            loc.file.ends_with("tests/fixtures/go/churn/main.go"),
            "{}",
            loc.file
        );
        assert_eq!(loc.line, work_line, "{}", f.path.display());

        let spawn = t.by_name("main.spawn").next().expect("main.spawn");
        let lines: std::collections::BTreeSet<u32> = (spawn.entry..spawn.end)
            .filter_map(|pc| t.source_at(pc))
            .inspect(|l| assert_eq!(l.function, "main.spawn"))
            // (Code inlined from other files has their lines: Go 1.19 inlines more.)
            .filter(|l| l.file.ends_with("churn/main.go"))
            .map(|l| l.line)
            .collect();
        assert!(lines.contains(&go_line), "{}: {lines:?}", f.path.display());
        assert!(
            lines.iter().all(|&l| l >= spawn_first && l <= go_line + 3),
            "{}: {lines:?}",
            f.path.display()
        );
        assert!(t.source_at(spawn.end + 0x100_0000).is_none());
    }
}

#[test]
fn cli_text_and_json() {
    let bin = integration_tests::goroscope_bin();
    for f in supported("churn") {
        let j = goroscope_json(&["inspect-binary", f.path.to_str().unwrap()]);
        assert_eq!(j["go_version"], format!("go{}", f.go));
        assert_eq!(j["stripped"], f.variant == "stripped");
        assert_eq!(j["pie"], f.variant == "pie");
        assert_eq!(j["probe_sites"].as_array().unwrap().len(), 4);
    }
    let f = &supported("churn")[0];
    let out = Command::new(&bin)
        .arg("inspect-binary")
        .arg(&f.path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "go version:    go1.21.13 (from section .go.buildinfo)",
        "build mode:    static exe (recorded: -buildmode=exe CGO_ENABLED=0)",
        "linker:        Go (internal)",
        "pclntab:       section .gopclntab",
        "offsets from:  DWARF",
        "runtime.g:     goid=152 parentGoid=272 gopc=280 startpc=296",
        "goroutine-create  runtime.newproc.func1+0x",
        "goroutine-exit    runtime.goexit0+0xa",
        "push rbp [emulated] g=rax goid=[rax+152]",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[test]
fn help_describes_every_command() {
    let out = Command::new(integration_tests::goroscope_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["inspect-binary", "watch"] {
        assert!(text.contains(cmd), "{cmd} missing from --help:\n{text}");
    }
}

/// Calls inside inlined functions are named after the inlined function (inline trees
/// found through the moduledata, with or without symbols, PIE or not), and the outer
/// frame is the line that called it.
#[test]
fn inlined_calls_are_expanded() {
    let src = fixture_source("contexts");
    let helper_line = line_of(&src, "// contexts: inlined helper");
    let caller_line = line_of(&src, "ctx, _ := withHourTimeout(parent)");
    for f in supported("churn") {
        let a = gobin::analyze(&f.path).unwrap();
        assert!(a.pclntab.expands_inlining(), "{}", f.path.display());
    }
    let builds = supported("contexts");
    assert_eq!(builds.len(), 9, "contexts: 3 versions x 3 variants");
    for f in builds {
        let what = f.path.display().to_string();
        let a = gobin::analyze(&f.path).unwrap();
        let t = &a.pclntab;
        assert!(t.expands_inlining(), "{what}: inline trees not found");
        let j = goroscope_json(&["inspect-binary", f.path.to_str().unwrap()]);
        assert_eq!(j["inlined_calls_expanded"], true, "{what}");
        let caller = t.by_name("main.inlined").next().expect("main.inlined");
        let stacks: Vec<Vec<(String, u32)>> = (caller.entry..caller.end)
            .map(|pc| {
                t.frames_at(pc)
                    .into_iter()
                    .map(|l| (l.function, l.line))
                    .collect()
            })
            .collect();
        assert!(
            stacks.contains(&vec![
                ("main.withHourTimeout".to_string(), helper_line),
                ("main.inlined".to_string(), caller_line),
            ]),
            "{what}: no pc inside the inlined helper"
        );
        // Every stack ends in the physical function, and inlined frames only appear
        // where the compiler inlined something.
        let odd: Vec<_> = stacks
            .iter()
            // (The padding after the last instruction has no source position.)
            .filter(|s| s.last().is_some_and(|(f, _)| f != "main.inlined"))
            .collect();
        assert!(odd.is_empty(), "{what}: {odd:?}");
        assert!(stacks.iter().any(|s| s.len() == 1));
        // Where nothing is inlined, the one frame is the function itself.
        let dropped = t.by_name("main.dropped").next().unwrap();
        let lines: Vec<_> = (dropped.entry..dropped.end)
            .map(|pc| t.frames_at(pc))
            .filter(|s| s.len() == 1)
            .collect();
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|s| s[0].function == "main.dropped"));
    }
}

/// Go 1.19 (Debian's toolchain): offsets from DWARF or the built-in table, no
/// `parentGoid`, and the sites its older code allows: frames set up with `sub rsp`, so no
/// `push rbp`; `goexit0` on g0 (its stack check's jump, emulated); `propagateCancel` a
/// function whose new context is in RDI (after the stack check, single-stepped).
#[test]
fn go1_19_sites_per_hook() {
    for variant in [
        "default",
        "stripped",
        "pie",
        "extpie",
        "staticpie",
        "extstripped",
    ] {
        let f = fixture(19, "churn", variant);
        let what = format!("Go 1.19 {variant}");
        let a = gobin::analyze(&f.path).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(a.go_version, "go1.19.8", "{what}");
        assert_eq!(a.offsets.g.parent_goid, None, "{what}");
        assert!(a.missing_sites.is_empty(), "{what}: {:?}", a.missing_sites);
        let one = |h: Hook| {
            let v: Vec<_> = a.sites_for(h).collect();
            assert_eq!(v.len(), 1, "{what}: {h:?}");
            v[0].clone()
        };
        let create = one(Hook::GoroutineCreate);
        assert_eq!(
            (create.function.as_str(), create.emulated),
            ("runtime.newproc.func1", true),
            "{what}"
        );
        let exit = one(Hook::GoroutineExit);
        assert_eq!(
            (exit.function.as_str(), exit.kind, exit.emulated),
            ("runtime.goexit0", SiteKind::StackCheckBranch, true),
            "{what}"
        );
        let ctx = one(Hook::ContextCreate);
        assert_eq!(
            (ctx.function.as_str(), ctx.kind, ctx.emulated),
            ("context.propagateCancel", SiteKind::AfterStackCheck, false),
            "{what}"
        );
        assert_eq!(
            ctx.values[0].loc,
            gobin::sites::Loc::Register { reg: "rdi".into() }
        );
        let cancel = one(Hook::ContextCancel);
        assert_eq!(
            (cancel.function.as_str(), cancel.kind),
            ("context.(*cancelCtx).cancel", SiteKind::AfterStackCheck),
            "{what}"
        );
    }
}

/// How each build was made and where its pclntab and version came from, as
/// `inspect-binary` reports them.
#[test]
fn build_mode_linker_and_sources() {
    let text_start = |f: &integration_tests::Fixture| {
        // The `runtime.text` symbol of the unstripped builds: where functions start.
        use object::{Object, ObjectSymbol};
        let data = std::fs::read(&f.path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok("runtime.text"))
            .map(|s| s.address());
        sym
    };
    for f in builds("churn") {
        let what = format!("{} {}", f.go, f.variant);
        let a = gobin::analyze(&f.path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (mode, external) = match f.variant.as_str() {
            "default" | "stripped" => ("static exe", false),
            "pie" => ("pie", false),
            "extpie" => ("pie", true),
            "staticpie" => ("static-pie", true),
            "extstripped" => ("exe", true),
            v => panic!("unknown variant {v}"),
        };
        assert_eq!(a.build_mode, mode, "{what}");
        assert_eq!(
            a.linker.starts_with("external"),
            external,
            "{what}: {}",
            a.linker
        );
        assert_eq!(a.version_source, "section .go.buildinfo", "{what}");
        assert!(a.pclntab.expands_inlining(), "{what}");
        // With the external linker and PIE, the table has no section before Go 1.26
        // (it sits in `.data.rel.ro`): the `runtime.pclntab` symbol finds it.
        let sectionless = external && f.variant != "extstripped" && f.line() < (1, 26);
        let want = if sectionless {
            "symbol runtime.pclntab"
        } else if f.variant == "pie" && f.line() < (1, 26) {
            "section .data.rel.ro.gopclntab"
        } else {
            "section .gopclntab"
        };
        assert_eq!(a.pclntab_source, want, "{what}");
        if let Some(t) = text_start(&f) {
            assert_eq!(a.text_start, t, "{what}: text start");
        }
    }
}

/// External-linker PIE and static-pie builds with their symbols stripped (`strip`, as
/// distro packages do): no `.gopclntab` section before Go 1.26 and no symbol, so the
/// pclntab header is found in `.data.rel.ro`; the answer equals the unstripped build's.
#[test]
fn sectionless_pclntab_found_without_symbols() {
    let dir = std::env::temp_dir().join(format!("goroscope-strip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (minor, variant) in [
        (19, "extpie"),
        (21, "extpie"),
        (24, "staticpie"),
        (25, "extpie"),
    ] {
        let f = fixture(minor, "churn", variant);
        let what = format!("Go 1.{minor} {variant}");
        let copy = dir.join(format!("churn-{minor}-{variant}"));
        let st = Command::new("strip")
            .arg("-o")
            .arg(&copy)
            .arg(&f.path)
            .status()
            .expect("strip (binutils) runs");
        assert!(st.success(), "{what}");
        let full = gobin::analyze(&f.path).unwrap();
        let a = gobin::analyze(&copy).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!a.has_symbols && !a.has_dwarf, "{what}");
        assert!(
            a.pclntab_source
                .starts_with("pclntab header found in .data.rel.ro at 0x"),
            "{what}: {}",
            a.pclntab_source
        );
        assert_eq!(a.functions, full.functions, "{what}");
        assert_eq!(a.text_start, full.text_start, "{what}");
        assert!(a.pclntab.expands_inlining(), "{what}");
        assert_eq!(a.runtime_vars.allgs, full.runtime_vars.allgs, "{what}");
        assert_eq!(a.runtime_vars.source, "code", "{what}");
        let addrs = |a: &gobin::Analysis| -> Vec<(Hook, u64)> {
            a.probe_sites.iter().map(|s| (s.hook, s.address)).collect()
        };
        assert_eq!(addrs(&a), addrs(&full), "{what}");
        assert!(a.missing_sites.is_empty(), "{what}: {:?}", a.missing_sites);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
