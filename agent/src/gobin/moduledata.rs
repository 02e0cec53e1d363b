//! `runtime.firstmoduledata`, found without symbols, for one field: `gofunc`, the base of
//! every FUNCDATA offset (the inline trees that name inlined functions).
//!
//! The moduledata (section `.go.module` since Go 1.27, `.noptrdata` before) is the one
//! place in the binary's data that holds the pclntab's address (`pcHeader`) followed by
//! the `funcnametab` slice pointer. Its layout changed in Go 1.27 (type and itab ranges
//! before `rodata`), so `gofunc` is found as the word after the last one of the header
//! that holds the start of `.rodata` (`moduledata.rodata`).
//! In PIE binaries these words are filled in at load time: their link-time values are the
//! addends of R_X86_64_RELATIVE relocations.

use object::{Object, ObjectSection};

use super::elf::Elf;

/// `go:func.*` from the symbol table, else from the moduledata.
pub fn gofunc(elf: &Elf<'_>, pclntab: u64, funcnametab_off: u64) -> Option<u64> {
    if let Some(a) = elf
        .symbol_address("go:func.*")
        .or_else(|| elf.symbol_address("go.func.*"))
    {
        return Some(a);
    }
    let funcnametab = pclntab.checked_add(funcnametab_off)?;
    // Candidates: 8-aligned words of the data sections equal to the pclntab address, and
    // relocated words whose link-time value is.
    let mut candidates: Vec<u64> = elf
        .file
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| {
            r.kind() == object::RelocationKind::Relative && r.addend() as u64 == pclntab
        })
        .map(|(off, _)| off)
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
    let rodata = elf.section(".rodata")?.0;
    for md in candidates {
        if elf.word_at(md.wrapping_add(8)) != Some(funcnametab) {
            continue;
        }
        // `rodata` is at offset 312 in Go 1.21–1.26 and 336 in 1.27; `types` (296) holds
        // the same address, so the last match counts.
        let Some(off) = (296..=344)
            .step_by(8)
            .filter(|off| elf.word_at(md.wrapping_add(*off)) == Some(rodata))
            .last()
        else {
            continue;
        };
        let g = elf.word_at(md.wrapping_add(off + 8))?;
        return elf.bytes_at(g, 1).is_some().then_some(g);
    }
    None
}
