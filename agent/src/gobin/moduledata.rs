//! `runtime.firstmoduledata`, found with or without symbols, for the fields the pclntab
//! alone does not give: `text` (the base of function entries when the pclntab header's
//! `textStart` is left 0, as in externally linked PIE binaries) and `gofunc` (the base of
//! every FUNCDATA offset: the inline trees that name inlined functions).
//!
//! The moduledata (section `.go.module` since Go 1.27, `.noptrdata` before, or
//! `.data.rel.ro` after the external linker) is the one place in the binary's data that
//! holds the pclntab's address (`pcHeader`) followed by the `funcnametab` slice pointer.
//! `text` is at 176 in every version from 1.18 on (after seven slices and `findfunctab`,
//! `minpc`, `maxpc`); `gofunc` moved with the versions (see [`gofunc`]).
//! In PIE binaries these words are filled in at load time: their link-time values are the
//! addends of R_X86_64_RELATIVE relocations.

use object::{Object, ObjectSection};

use super::elf::Elf;
use super::version::GoVersion;

/// Offset of `moduledata.text` (Go 1.18–1.27).
const TEXT: u64 = 176;
/// Offset of `moduledata.minpc`, the entry of the first function: equal to `text`.
const MINPC: u64 = 160;

/// Link-time address of the moduledata whose `pcHeader` is `pclntab`: the symbol when
/// the binary has one, else the data word that points at the pclntab and is followed by
/// the `funcnametab` pointer.
pub fn find(elf: &Elf<'_>, pclntab: u64, funcnametab_off: u64) -> Option<u64> {
    if let Some(md) = elf.symbol_address("runtime.firstmoduledata") {
        if elf.word_at(md) == Some(pclntab) {
            return Some(md);
        }
    }
    let funcnametab = pclntab.checked_add(funcnametab_off)?;
    // Candidates: 8-aligned words of the data sections equal to the pclntab address, and
    // relocated words whose link-time value is.
    let mut candidates: Vec<u64> = elf
        .relative_relocs()
        .iter()
        .filter(|(_, v)| **v == pclntab)
        .map(|(at, _)| *at)
        .collect();
    for name in [".go.module", ".noptrdata", ".data", ".data.rel.ro"] {
        if let Some(s) = elf.file.section_by_name(name) {
            let (addr, data) = (s.address(), s.data().unwrap_or_default());
            for (i, w) in data.chunks_exact(8).enumerate() {
                if u64::from_le_bytes(w.try_into().expect("8 bytes")) == pclntab {
                    candidates.push(addr.wrapping_add(8 * i as u64));
                }
            }
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|md| elf.word_at(md.wrapping_add(8)) == Some(funcnametab))
}

/// `moduledata.text`: where function entry offsets count from. Checked against `minpc`
/// (the first function's entry), which must not be below it.
pub fn text(elf: &Elf<'_>, md: u64) -> Option<u64> {
    let text = elf.word_at(md.wrapping_add(TEXT))?;
    let minpc = elf.word_at(md.wrapping_add(MINPC))?;
    (text != 0 && minpc >= text && elf.file_offset(text).is_some()).then_some(text)
}

/// `go:func.*` from the symbol table, else `moduledata.gofunc` of the moduledata at `md`:
/// at 304 in Go 1.18–1.19, 320 in 1.20–1.26 (`covctrs`, `ecovctrs` added) and 344 in
/// 1.27 (`typedesclen`, `itaboffset`, `itabsize` added).
pub fn gofunc(elf: &Elf<'_>, md: Option<u64>, version: GoVersion) -> Option<u64> {
    if let Some(a) = elf
        .symbol_address("go:func.*")
        .or_else(|| elf.symbol_address("go.func.*"))
    {
        return Some(a);
    }
    let off = match version.line() {
        (1, 0..=19) => 304,
        (1, 20..=26) => 320,
        _ => 344,
    };
    let g = elf.word_at(md?.wrapping_add(off))?;
    elf.bytes_at(g, 1).is_some().then_some(g)
}
