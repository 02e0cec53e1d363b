//! The ELF container: architecture checks, sections, symbols and address translation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

use super::error::{Malformed, PResult};

/// Largest decompressed section we accept. A real Go binary's biggest DWARF section is a
/// few tens of MiB; a corrupted header must not make us allocate gigabytes.
const MAX_DECOMPRESSED: u64 = 512 << 20;

/// A parsed 64-bit little-endian x86-64 ELF file.
pub struct Elf<'data> {
    pub file: ElfFile64<'data, Endianness>,
    pub data: &'data [u8],
    /// R_X86_64_RELATIVE relocations (target → link-time value), read once on first use:
    /// a static-pie binary has thousands and several lookups are made per analysis.
    relative: OnceLock<HashMap<u64, u64>>,
}

/// What kind of ELF file this is, for error messages about unsupported ones.
pub enum ElfCheck {
    NotElf,
    Unsupported(String),
}

/// Checks the identification bytes before handing the file to `object`, so each kind of
/// unsupported ELF gets its own message.
pub fn check_ident(data: &[u8]) -> Result<(), ElfCheck> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(ElfCheck::NotElf);
    }
    match data[4] {
        elf::ELFCLASS64 => {}
        elf::ELFCLASS32 => return Err(ElfCheck::Unsupported("32-bit ELF".into())),
        c => return Err(ElfCheck::Unsupported(format!("unknown ELF class {c}"))),
    }
    match data[5] {
        elf::ELFDATA2LSB => {}
        elf::ELFDATA2MSB => return Err(ElfCheck::Unsupported("big-endian ELF".into())),
        d => {
            return Err(ElfCheck::Unsupported(format!(
                "unknown ELF data encoding {d}"
            )))
        }
    }
    let machine = u16::from_le_bytes([data[18], data[19]]);
    if machine != elf::EM_X86_64 {
        let name = match machine {
            elf::EM_AARCH64 => "arm64".to_string(),
            elf::EM_386 => "386".to_string(),
            elf::EM_RISCV => "riscv64".to_string(),
            elf::EM_PPC64 => "ppc64".to_string(),
            elf::EM_S390 => "s390x".to_string(),
            m => format!("machine {m}"),
        };
        return Err(ElfCheck::Unsupported(format!("architecture {name}")));
    }
    Ok(())
}

impl<'data> Elf<'data> {
    pub fn parse(data: &'data [u8]) -> PResult<Self> {
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| Malformed::new(format!("ELF: {e}")))?;
        // A partly copied file must be refused, even where the missing part is one we
        // would not have read.
        let e = file.endian();
        for sh in file.elf_section_table().iter() {
            if sh.sh_type(e) == elf::SHT_NOBITS {
                continue;
            }
            let end = sh.sh_offset(e).checked_add(sh.sh_size(e));
            if end.is_none_or(|end| end > data.len() as u64) {
                let name = file
                    .elf_section_table()
                    .section_name(e, sh)
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return Err(Malformed::new(format!(
                    "section {name} extends past the end of the file (truncated?)"
                )));
            }
        }
        Ok(Elf {
            file,
            data,
            relative: OnceLock::new(),
        })
    }

    /// Position-independent executable (or shared object): addresses are relative to
    /// the load base.
    pub fn is_pie(&self) -> bool {
        let e = self.file.endian();
        self.file.elf_header().e_type(e) == elf::ET_DYN
    }

    /// `exe`, `static exe`, `pie` or `static-pie`: the ELF type, and whether the file
    /// asks for a dynamic loader (PT_INTERP).
    pub fn build_mode(&self) -> &'static str {
        let e = self.file.endian();
        let interp = self
            .file
            .elf_program_headers()
            .iter()
            .any(|ph| ph.p_type(e) == elf::PT_INTERP);
        match (self.is_pie(), interp) {
            (false, true) => "exe",
            (false, false) => "static exe",
            (true, true) => "pie",
            (true, false) => "static-pie",
        }
    }

    /// Which linker wrote the file: Go's own writes no `.comment` and none of the C
    /// runtime's sections (`.init`, `.eh_frame`); an external one (cgo, `-linkmode=external`)
    /// is named by its `.comment` when it leaves one.
    pub fn linker(&self) -> String {
        let comment = self.section(".comment").map(|(_, d)| {
            d.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
        });
        let c_runtime = [".init", ".eh_frame", ".init_array"]
            .iter()
            .any(|n| self.file.section_by_name(n).is_some());
        match comment {
            Some(lines) if !lines.is_empty() => {
                let linker = lines
                    .iter()
                    .find(|l| l.starts_with("Linker:"))
                    .or_else(|| lines.last())
                    .cloned()
                    .unwrap_or_default();
                format!("external ({linker})")
            }
            _ if c_runtime => "external".to_string(),
            _ => "Go (internal)".to_string(),
        }
    }

    pub fn has_symtab(&self) -> bool {
        self.file.section_by_name(".symtab").is_some()
    }

    pub fn has_dwarf(&self) -> bool {
        self.file.section_by_name(".debug_info").is_some()
            || self.file.section_by_name(".zdebug_info").is_some()
    }

    /// Raw (uncompressed) bytes and virtual address of a section.
    pub fn section(&self, name: &str) -> Option<(u64, &'data [u8])> {
        let s = self.file.section_by_name(name)?;
        let data = s.data().ok()?;
        Some((s.address(), data))
    }

    /// Section contents, decompressed when needed (SHF_COMPRESSED or `.zdebug_*`),
    /// with a size bound. Missing section → `Ok(None)`.
    pub fn section_decompressed(&self, name: &str) -> PResult<Option<Cow<'data, [u8]>>> {
        let zname = name.strip_prefix('.').map(|n| format!(".z{n}"));
        let Some(s) = self
            .file
            .section_by_name(name)
            .or_else(|| zname.and_then(|z| self.file.section_by_name(&z)))
        else {
            return Ok(None);
        };
        let range = s
            .compressed_file_range()
            .map_err(|e| Malformed::new(format!("section {name}: {e}")))?;
        let raw = self
            .data
            .get(range.offset as usize..)
            .and_then(|d| d.get(..range.compressed_size as usize))
            .ok_or_else(|| Malformed::new(format!("section {name} extends past end of file")))?;
        match range.format {
            object::CompressionFormat::None => Ok(Some(Cow::Borrowed(raw))),
            object::CompressionFormat::Zlib => {
                if range.uncompressed_size > MAX_DECOMPRESSED {
                    return Err(Malformed::new(format!(
                        "section {name} claims {} bytes uncompressed",
                        range.uncompressed_size
                    )));
                }
                let mut out = Vec::with_capacity(range.uncompressed_size as usize);
                flate2::read::ZlibDecoder::new(raw)
                    .take(range.uncompressed_size)
                    .read_to_end(&mut out)
                    .map_err(|e| Malformed::new(format!("section {name}: zlib: {e}")))?;
                if out.len() as u64 != range.uncompressed_size {
                    return Err(Malformed::new(format!("section {name}: short zlib data")));
                }
                Ok(Some(Cow::Owned(out)))
            }
            f => Err(Malformed::new(format!(
                "section {name}: unsupported compression {f:?}"
            ))),
        }
    }

    /// Address and size of a symbol in `.symtab` (unstripped binaries only).
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    }

    /// Address of a symbol in `.symtab` (unstripped binaries only).
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        self.symbol(name).map(|(a, _)| a)
    }

    /// `(p_vaddr, p_offset)` of the first PT_LOAD segment.
    pub fn first_load(&self) -> (u64, u64) {
        let e = self.file.endian();
        self.file
            .elf_program_headers()
            .iter()
            .find(|ph| ph.p_type(e) == elf::PT_LOAD)
            .map_or((0, 0), |ph| (ph.p_vaddr(e), ph.p_offset(e)))
    }

    /// Translates a link-time virtual address to an offset in the file (what uprobes
    /// attach to), through the PT_LOAD segment that maps it.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let e = self.file.endian();
        self.file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(e) == elf::PT_LOAD)
            .find_map(|ph| {
                let start = ph.p_vaddr(e);
                let len = ph.p_filesz(e);
                (vaddr >= start && vaddr - start < len).then(|| vaddr - start + ph.p_offset(e))
            })
    }

    /// Bytes at a virtual address, through the section that contains it.
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&'data [u8]> {
        let e = self.file.endian();
        for sh in self.file.elf_section_table().iter() {
            if sh.sh_type(e) == elf::SHT_NOBITS || sh.sh_flags(e) & u64::from(elf::SHF_ALLOC) == 0 {
                continue;
            }
            let start = sh.sh_addr(e);
            let size = sh.sh_size(e);
            if vaddr >= start && vaddr - start < size {
                let data = sh.data(e, self.data).ok()?;
                let off = (vaddr - start) as usize;
                return data.get(off..off.checked_add(len)?);
            }
        }
        None
    }

    /// Address and contents of the allocated section that holds `vaddr`.
    pub fn section_containing(&self, vaddr: u64) -> Option<(u64, &'data [u8])> {
        let e = self.file.endian();
        self.file.elf_section_table().iter().find_map(|sh| {
            let (start, size) = (sh.sh_addr(e), sh.sh_size(e));
            (sh.sh_type(e) != elf::SHT_NOBITS
                && sh.sh_flags(e) & u64::from(elf::SHF_ALLOC) != 0
                && vaddr >= start
                && vaddr - start < size)
                .then(|| Some((start, sh.data(e, self.data).ok()?)))
                .flatten()
        })
    }

    /// The pointer-sized word at `vaddr` as the loaded program sees it: the file's value,
    /// or, when that is 0 (PIE), the link-time value its relocation puts there.
    pub fn word_at(&self, vaddr: u64) -> Option<u64> {
        let v = u64::from_le_bytes(self.bytes_at(vaddr, 8)?.try_into().ok()?);
        if v != 0 {
            return Some(v);
        }
        self.relative_reloc_at(vaddr)
    }

    /// For PIE binaries: the addend of an R_X86_64_RELATIVE relocation that targets
    /// `vaddr`, i.e. the link-time value stored there once relocated.
    pub fn relative_reloc_at(&self, vaddr: u64) -> Option<u64> {
        self.relative_relocs().get(&vaddr).copied()
    }

    /// Every R_X86_64_RELATIVE relocation: target address → link-time value.
    pub fn relative_relocs(&self) -> &HashMap<u64, u64> {
        self.relative.get_or_init(|| {
            self.file
                .dynamic_relocations()
                .into_iter()
                .flatten()
                .filter(|(_, r)| r.kind() == object::RelocationKind::Relative)
                .map(|(off, r)| (off, r.addend() as u64))
                .collect()
        })
    }
}
