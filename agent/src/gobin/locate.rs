//! Where a Go binary keeps its function table (pclntab) and its Go version, however it
//! was linked.
//!
//! - pclntab: the `.gopclntab` section (internal linking; `.data.rel.ro.gopclntab` for
//!   PIE before Go 1.26), else the `runtime.pclntab` symbol, else the moduledata's
//!   `pcHeader` (symbol `runtime.firstmoduledata`), else a scan of the read-only data
//!   for the pclntab header (magic, `00 00`, pc quantum 1, pointer size 8), preferring a
//!   header a moduledata points at. With the external linker and
//!   `-buildmode=pie` (cgo, `-linkmode=external`, static-pie) the table has no section
//!   of its own: it sits inside `.data.rel.ro`.
//! - version: `.go.buildinfo` (or its magic anywhere in the file), else
//!   `runtime.buildVersion` (a Go string), found by symbol or, without symbols, in
//!   `runtime.schedinit`, which stores the length 7 of `"unknown"` into it when it is
//!   empty (`MOV qword [rip+buildVersion+8], 7`, every version since 1.5).

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{elf, Object, ObjectSection};
use serde::Serialize;

use super::elf::Elf;
use super::error::Bytes;
use super::moduledata;
use super::pclntab::{funcnametab_offset, Pclntab, MAGIC_GO118, MAGIC_GO120};

/// pclntab magics of toolchains goroscope does not read (Go 1.2–1.15 and 1.16–1.17).
pub const MAGIC_GO12: u32 = 0xfffffffb;
pub const MAGIC_GO116: u32 = 0xfffffffa;

/// The function table, where it was found.
pub struct Located<'d> {
    /// Link-time address of the header.
    pub addr: u64,
    /// From the header to the end of the section holding it.
    pub data: &'d [u8],
    pub magic: u32,
    /// How it was found, for `inspect-binary`.
    pub source: String,
}

/// The pclntab, however the binary was linked; `None` if there is none (not Go).
pub fn pclntab<'d>(e: &Elf<'d>) -> Option<Located<'d>> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some((addr, data)) = e.section(name) {
            if let Some(magic) = header_magic(data) {
                return Some(Located {
                    addr,
                    data,
                    magic,
                    source: format!("section {name}"),
                });
            }
        }
    }
    let by_symbol = |name: &str, addr: Option<u64>| {
        let addr = addr?;
        let (start, data) = e.section_containing(addr)?;
        let data = &data[usize::try_from(addr - start).ok()?..];
        Some(Located {
            addr,
            data,
            magic: header_magic(data)?,
            source: format!("symbol {name}"),
        })
    };
    if let Some(l) = by_symbol("runtime.pclntab", e.symbol_address("runtime.pclntab")) {
        return Some(l);
    }
    let md = e
        .symbol_address("runtime.firstmoduledata")
        .and_then(|md| e.word_at(md));
    if let Some(l) = by_symbol("runtime.firstmoduledata (pcHeader)", md) {
        return Some(l);
    }
    scan(e)
}

/// The magic of a plausible pclntab header at the start of `data`.
fn header_magic(data: &[u8]) -> Option<u32> {
    let magic = data.u32_at(0).ok()?;
    let known = [MAGIC_GO118, MAGIC_GO120, MAGIC_GO116, MAGIC_GO12].contains(&magic);
    (known && data.get(4..8) == Some(&[0, 0, 1, 8][..])).then_some(magic)
}

/// Headers in the allocated, non-executable sections; the first one a moduledata points
/// at wins, else the first one.
fn scan<'d>(e: &Elf<'d>) -> Option<Located<'d>> {
    let mut found: Vec<(u64, &'d [u8], u32, String)> = Vec::new();
    for s in e.file.sections() {
        let Ok(name) = s.name() else { continue };
        let object::SectionFlags::Elf { sh_flags } = s.flags() else {
            continue;
        };
        let alloc = sh_flags & u64::from(elf::SHF_ALLOC) != 0;
        let exec = sh_flags & u64::from(elf::SHF_EXECINSTR) != 0;
        if !alloc || exec || s.kind() == object::SectionKind::UninitializedData {
            continue;
        }
        let Ok(data) = s.data() else { continue };
        // The header is at least 4-aligned (it starts with a uint32).
        for off in (0..data.len().saturating_sub(64)).step_by(4) {
            if data[off + 3] != 0xff || data[off + 2] != 0xff {
                continue;
            }
            if let Some(magic) = header_magic(&data[off..]) {
                found.push((s.address() + off as u64, &data[off..], magic, name.into()));
            }
        }
    }
    let by_moduledata = |addr: u64, data: &[u8]| {
        funcnametab_offset(data).is_ok_and(|f| moduledata::find(e, addr, f).is_some())
    };
    let pick = found
        .iter()
        .position(|(addr, data, ..)| by_moduledata(*addr, data))
        .unwrap_or(0);
    let (addr, data, magic, section) = found.into_iter().nth(pick)?;
    Some(Located {
        addr,
        data,
        magic,
        source: format!("pclntab header found in {section} at {addr:#x}"),
    })
}

/// The Go version from `runtime.buildVersion` and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildVersion {
    pub version: String,
    pub source: String,
}

/// `runtime.buildVersion`, by symbol, else by the store in `runtime.schedinit`.
pub fn build_version(e: &Elf<'_>, pcln: &Pclntab) -> Option<BuildVersion> {
    if let Some(addr) = e.symbol_address("runtime.buildVersion") {
        if let Some(version) = go_string(e, addr) {
            return Some(BuildVersion {
                version,
                source: "runtime.buildVersion symbol".into(),
            });
        }
    }
    let f = pcln.by_name("runtime.schedinit").next()?;
    let len = usize::try_from(f.end.checked_sub(f.entry)?).ok()?;
    let bytes = e.bytes_at(f.entry, len.min(1 << 16))?;
    for i in Decoder::with_ip(64, bytes, f.entry, DecoderOptions::NONE).iter() {
        let stores_seven = i.mnemonic() == Mnemonic::Mov
            && i.op0_kind() == OpKind::Memory
            && i.memory_base() == Register::RIP
            && i.memory_size() == iced_x86::MemorySize::UInt64
            && i.op_count() == 2
            && matches!(i.op1_kind(), OpKind::Immediate32to64 | OpKind::Immediate32)
            && i.immediate(1) == 7;
        if !stores_seven {
            continue;
        }
        let addr = i.memory_displacement64().wrapping_sub(8);
        if let Some(version) = go_string(e, addr) {
            return Some(BuildVersion {
                version,
                source: "runtime.buildVersion, found in runtime.schedinit".into(),
            });
        }
    }
    None
}

/// A Go string header (pointer, length) at `addr` holding a Go version.
fn go_string(e: &Elf<'_>, addr: u64) -> Option<String> {
    let ptr = e.word_at(addr)?;
    let len = e.word_at(addr + 8)?;
    if len == 0 || len > 128 {
        return None;
    }
    let s = std::str::from_utf8(e.bytes_at(ptr, len as usize)?).ok()?;
    (s.bytes().all(|b| (0x20..0x7f).contains(&b)) && super::GoVersion::parse(s).is_some())
        .then(|| s.to_string())
}

/// Lines of Go whose pclntab has this magic, for checking a version against it.
pub fn magic_lines(magic: u32) -> &'static str {
    match magic {
        MAGIC_GO120 => "1.20 or newer",
        MAGIC_GO118 => "1.18 or 1.19",
        MAGIC_GO116 => "1.16 or 1.17",
        _ => "1.2 to 1.15",
    }
}

/// Whether a version agrees with the pclntab's magic.
pub fn magic_matches(magic: u32, v: super::GoVersion) -> bool {
    match magic {
        MAGIC_GO120 => v.line() >= (1, 20),
        MAGIC_GO118 => v.line() >= (1, 18) && v.line() < (1, 20),
        MAGIC_GO116 => v.line() >= (1, 16) && v.line() < (1, 18),
        _ => v.line() < (1, 16),
    }
}
