//! Runtime variables read from outside the process: `runtime.allgs`/`allglen` (every
//! goroutine) and `runtime.waitReasonStrings` (names of wait reasons), with or without
//! symbols.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use serde::Serialize;

use super::elf::Elf;
use super::error::Bytes;
use super::pclntab::Pclntab;

/// Addresses of runtime variables (link-time; add the load bias for PIE).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeVars {
    /// `runtime.allgs` (a `[]*g`).
    pub allgs: Option<u64>,
    /// `runtime.allglen` (a `uintptr`).
    pub allglen: Option<u64>,
    /// Where they were found: `dwarf`, `symtab`, `code` (decoded from
    /// `runtime.allgadd`), or `none`.
    pub source: &'static str,
}

/// Finds `allgs` and `allglen` by decoding `runtime.allgadd`, for binaries without
/// symbols. In every supported version it reads `allgs`, `allgs+8` and `allgs+16`
/// (ptr, len, cap) RIP-relative, and ends with `lea R, allglen; xchg _, [R]`
/// (`atomic.Storeuintptr(&allglen, …)`), after the same for `allgptr`.
pub fn from_code(elf: &Elf<'_>, pcln: &Pclntab) -> Option<(u64, u64)> {
    let f = pcln.by_name("runtime.allgadd").next()?;
    let len = usize::try_from(f.end.checked_sub(f.entry)?).ok()?;
    let bytes = elf.bytes_at(f.entry, len.min(4096))?;
    let mut rip_refs = Vec::new();
    let mut lea: Vec<(Register, u64)> = Vec::new();
    let mut xchg_targets = Vec::new();
    for i in Decoder::with_ip(64, bytes, f.entry, DecoderOptions::NONE).iter() {
        let mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
        if mem && i.memory_base() == Register::RIP {
            let addr = i.memory_displacement64();
            if i.mnemonic() == Mnemonic::Lea {
                lea.push((i.op0_register(), addr));
            } else {
                rip_refs.push(addr);
            }
        } else if mem && i.mnemonic() == Mnemonic::Xchg {
            let base = i.memory_base();
            if let Some((_, addr)) = lea.iter().rev().find(|(r, _)| *r == base) {
                xchg_targets.push(*addr);
            }
        }
    }
    let allgs = rip_refs
        .iter()
        .copied()
        .filter(|a| rip_refs.contains(&(a + 8)) && rip_refs.contains(&(a + 16)))
        .min()?;
    let allglen = *xchg_targets.last()?;
    (allglen != allgs).then_some((allgs, allglen))
}

/// Names of the runtime's wait reasons, indexed by `g.waitreason`, read from the
/// binary's own `runtime.waitReasonStrings` (`[N]string`). Without symbols the array is
/// found by its second entry, `"GC assist marking"` (stable since Go 1.11).
pub fn wait_reasons(elf: &Elf<'_>) -> Vec<String> {
    let (start, count) = match elf.symbol("runtime.waitReasonStrings") {
        Some((addr, size)) if size >= 32 => (addr, (size / 16) as usize),
        _ => match find_wait_reason_array(elf) {
            Some(addr) => (addr, 128),
            None => return Vec::new(),
        },
    };
    let mut names = Vec::new();
    for i in 0..count {
        let Some(hdr) = elf.bytes_at(start + 16 * i as u64, 16) else {
            break;
        };
        let (Ok(ptr), Ok(len)) = (hdr.u64_at(0), hdr.u64_at(8)) else {
            break;
        };
        if i > 0 && (len == 0 || len > 64) {
            break;
        }
        let s = if len == 0 {
            String::new()
        } else {
            match elf
                .bytes_at(ptr, len as usize)
                .and_then(|b| std::str::from_utf8(b).ok())
            {
                Some(s) if s.bytes().all(|c| (0x20..0x7f).contains(&c)) => s.to_string(),
                _ => break,
            }
        };
        names.push(s);
    }
    if names.get(1).map(String::as_str) != Some("GC assist marking") {
        return Vec::new();
    }
    names
}

fn find_wait_reason_array(elf: &Elf<'_>) -> Option<u64> {
    const SECOND: &[u8] = b"GC assist marking";
    let (ro_addr, ro) = elf.section(".rodata")?;
    let string_addrs: Vec<u64> = ro
        .windows(SECOND.len())
        .enumerate()
        .filter(|(_, w)| *w == SECOND)
        .map(|(i, _)| ro_addr + i as u64)
        .collect();
    for sec in [".data", ".data.rel.ro", ".noptrdata"] {
        let Some((addr, data)) = elf.section(sec) else {
            continue;
        };
        for off in (16..data.len().saturating_sub(16)).step_by(8) {
            let (Ok(p), Ok(l)) = (data.u64_at(off), data.u64_at(off + 8)) else {
                break;
            };
            if l == SECOND.len() as u64 && string_addrs.contains(&p) {
                // Entry 0 is the empty string.
                if data.u64_at(off - 8) == Ok(0) {
                    return Some(addr + off as u64 - 16);
                }
            }
        }
    }
    None
}
