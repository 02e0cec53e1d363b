//! `goroscope inspect-binary`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::gobin::{self, Analysis};

pub fn run(path: &Path, json: bool) -> Result<()> {
    let a = gobin::analyze(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", render(&a));
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Human-readable report.
pub fn render(a: &Analysis) -> String {
    let mut s = String::new();
    let o = &a.offsets;
    let _ = writeln!(s, "binary:        {}", a.path.display());
    let _ = writeln!(
        s,
        "go version:    {} (from {})",
        a.go_version, a.version_source
    );
    let _ = writeln!(
        s,
        "module:        {}",
        a.module.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        s,
        "main package:  {}",
        a.main_path.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        s,
        "stripped:      {} (symbols: {}, DWARF: {})",
        yes(a.stripped),
        yes(a.has_symbols),
        yes(a.has_dwarf)
    );
    let _ = writeln!(s, "PIE:           {}", yes(a.pie));
    let settings: Vec<String> = a
        .build_settings
        .iter()
        .filter(|(k, _)| {
            ["-buildmode", "-ldflags", "CGO_ENABLED", "-trimpath"].contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        s,
        "build mode:    {}{}",
        a.build_mode,
        if settings.is_empty() {
            String::new()
        } else {
            format!(" (recorded: {})", settings.join(" "))
        }
    );
    let _ = writeln!(s, "linker:        {}", a.linker);
    let _ = writeln!(s, "pclntab:       {}", a.pclntab_source);
    let _ = writeln!(
        s,
        "functions:     {} (text starts at {:#x}; inlined calls {})",
        a.functions,
        a.text_start,
        if a.inlined_calls_expanded {
            "expanded"
        } else {
            "not expanded: inline trees not found"
        }
    );
    let _ = writeln!(s, "offsets from:  {}", a.offsets_source);
    let g = &o.g;
    let _ = writeln!(
        s,
        "runtime.g:     goid={} parentGoid={} gopc={} startpc={} atomicstatus={} waitreason={} waitsince={} labels={}",
        g.goid, g.parent_goid.map_or("-".to_string(), |p| p.to_string()), g.gopc, g.startpc, g.atomicstatus, g.waitreason, g.waitsince, g.labels
    );
    match &o.cancel_ctx {
        Some(c) => {
            let _ = writeln!(
                s,
                "cancelCtx:     Context={} done={} children={} err={}",
                c.context, c.done, c.children, c.err
            );
        }
        None => {
            let _ = writeln!(
                s,
                "cancelCtx:     (unknown: not in DWARF nor the built-in table)"
            );
        }
    }
    let addr = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v:#x}"));
    let _ = writeln!(
        s,
        "runtime vars:  allgs={} allglen={} (from {})",
        addr(a.runtime_vars.allgs),
        addr(a.runtime_vars.allglen),
        a.runtime_vars.source
    );
    probe_sites(&mut s, a);
    s
}

/// The probe sites section: where each hook sits, and what could not be placed.
fn probe_sites(s: &mut String, a: &Analysis) {
    let _ = writeln!(s, "probe sites:");
    for p in &a.probe_sites {
        let values: Vec<String> = p
            .values
            .iter()
            .map(|v| match &v.loc {
                gobin::sites::Loc::Register { reg } => format!("{}={reg}", v.name),
                gobin::sites::Loc::Memory { base, offset } => {
                    format!("{}=[{base}+{offset}]", v.name)
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "  {:<17} {}+{:#x} @ {:#x} (file offset {:#x}): {} [{}] {}",
            p.hook.name(),
            p.function,
            p.offset,
            p.address,
            p.file_offset,
            p.instruction,
            if p.emulated {
                "emulated"
            } else {
                "single-stepped"
            },
            values.join(" ")
        );
        let rets: Vec<String> = p.ret_offsets.iter().map(|r| format!("{r:#x}")).collect();
        let _ = writeln!(s, "  {:<17} RET offsets: {}", "", rets.join(" "));
        if let Some(f) = &p.fallback {
            let _ = writeln!(s, "  {:<17} fallback: {f}", "");
        }
    }
    for m in &a.missing_sites {
        let _ = writeln!(s, "  not placed: {m}");
    }
}
