//! `.gopclntab`: the runtime's own function table (Go ≥ 1.18 layout). It survives
//! `-ldflags="-s -w"`, so it is the source of function names, entry/end addresses and
//! pc → `file:line` for stripped binaries too.
//!
//! Header (pointer size 8): magic u32, 2 pad bytes, pc quantum u8, pointer size u8, then
//! nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset,
//! pclnOffset as 8-byte words. `functab` at pclnOffset holds `nfunc + 1` pairs
//! (entryoff u32, funcoff u32); the `_func` records follow, addressed by funcoff.

use std::collections::HashMap;

use serde::Serialize;

use super::error::{uvarint, Bytes, Malformed, PResult};

pub const MAGIC_GO118: u32 = 0xfffffff0;
pub const MAGIC_GO120: u32 = 0xfffffff1;

/// One function of the binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Func {
    pub name: String,
    /// Link-time address of the first instruction.
    pub entry: u64,
    /// Address just past the last instruction.
    pub end: u64,
    /// Offset of the `_func` record within the pclntab.
    #[serde(skip)]
    func_off: usize,
}

/// A source position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceLoc {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.function, self.file, self.line)
    }
}

pub struct Pclntab {
    data: Vec<u8>,
    quantum: u64,
    pub text_start: u64,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// All functions, sorted by entry.
    pub funcs: Vec<Func>,
    by_name: HashMap<String, Vec<usize>>,
}

/// Reads a header word as an offset into the table.
fn word(data: &[u8], idx: usize) -> PResult<usize> {
    let v = data.u64_at(8 + idx * 8)?;
    usize::try_from(v).map_err(|_| Malformed::new("pclntab header word too large"))
}

impl Pclntab {
    /// Parses the table. `text_start` overrides the header's textStart, which is 0 in
    /// PIE binaries until relocated.
    pub fn parse(data: &[u8], text_start: impl FnOnce(u64) -> u64) -> PResult<Pclntab> {
        let magic = data.u32_at(0)?;
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err(Malformed::new(format!(
                "pclntab magic {magic:#x} is not a Go 1.18+ table"
            )));
        }
        let quantum = u64::from(data.u8_at(6)?);
        let ptr_size = data.u8_at(7)?;
        if ptr_size != 8 || quantum == 0 {
            return Err(Malformed::new(format!(
                "pclntab pointer size {ptr_size}, quantum {quantum}"
            )));
        }
        let nfunc = word(data, 0)?;
        let header_text = data.u64_at(8 + 2 * 8)?;
        let text_start = text_start(header_text);
        let funcnametab = word(data, 3)?;
        let cutab = word(data, 4)?;
        let filetab = word(data, 5)?;
        let pctab = word(data, 6)?;
        let functab = word(data, 7)?;
        // Every functab entry is 8 bytes: a count that does not fit is corruption, and
        // must not turn into a huge allocation.
        let table_len = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| Malformed::new("pclntab nfunc overflows"))?;
        data.sub(functab, table_len)?;

        let mut t = Pclntab {
            data: data.to_vec(),
            quantum,
            text_start,
            cutab,
            filetab,
            pctab,
            funcs: Vec::with_capacity(nfunc),
            by_name: HashMap::new(),
        };
        for i in 0..nfunc {
            let entry_off = t.data.u32_at(functab + i * 8)?;
            let func_off = t.data.u32_at(functab + i * 8 + 4)? as usize;
            let next_off = t.data.u32_at(functab + (i + 1) * 8)?;
            let rec = functab
                .checked_add(func_off)
                .ok_or_else(|| Malformed::new("funcoff overflows"))?;
            let name_off = t.data.u32_at(rec + 4)? as usize;
            let name = t
                .data
                .cstr_at(
                    funcnametab
                        .checked_add(name_off)
                        .ok_or_else(|| Malformed::new("nameoff overflows"))?,
                )?
                .to_string();
            let entry = text_start.wrapping_add(u64::from(entry_off));
            let end = text_start.wrapping_add(u64::from(next_off));
            if end < entry {
                return Err(Malformed::new(format!(
                    "function {name} ends before it starts"
                )));
            }
            t.by_name
                .entry(name.clone())
                .or_default()
                .push(t.funcs.len());
            t.funcs.push(Func {
                name,
                entry,
                end,
                func_off: rec,
            });
        }
        if t.funcs.windows(2).any(|w| w[0].entry > w[1].entry) {
            return Err(Malformed::new("functab is not sorted"));
        }
        Ok(t)
    }

    /// All functions with this name (ABI0 wrappers share the name of the function they
    /// wrap).
    pub fn by_name(&self, name: &str) -> impl Iterator<Item = &Func> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.funcs[i])
    }

    /// The function containing `pc`.
    pub fn func_at(&self, pc: u64) -> Option<&Func> {
        let i = self.funcs.partition_point(|f| f.entry <= pc);
        let f = self.funcs.get(i.checked_sub(1)?)?;
        (pc < f.end).then_some(f)
    }

    /// `function file:line` of the instruction at `pc`.
    pub fn source_at(&self, pc: u64) -> Option<SourceLoc> {
        let f = self.func_at(pc)?;
        let pcfile = self.data.u32_at(f.func_off + 20).ok()?;
        let pcln = self.data.u32_at(f.func_off + 24).ok()?;
        let cu_off = self.data.u32_at(f.func_off + 32).ok()?;
        let fileno = self.pcvalue(pcfile, f.entry, pc).ok()??;
        let line = self.pcvalue(pcln, f.entry, pc).ok()??;
        let fileno = u32::try_from(fileno).ok()?;
        let idx = (cu_off as usize).checked_add(fileno as usize)?;
        let file_off = self
            .data
            .u32_at(self.cutab.checked_add(idx.checked_mul(4)?)?)
            .ok()?;
        let file = self
            .data
            .cstr_at(self.filetab.checked_add(file_off as usize)?)
            .ok()?;
        Some(SourceLoc {
            function: f.name.clone(),
            file: file.to_string(),
            line: u32::try_from(line).ok()?,
        })
    }

    /// Where a `go` statement (or any call) is, given the return address recorded for it
    /// (`g.gopc`): like the runtime's traceback, look one byte back.
    pub fn call_site(&self, return_pc: u64) -> Option<SourceLoc> {
        let f = self.func_at(return_pc)?;
        let pc = if return_pc > f.entry {
            return_pc - 1
        } else {
            return_pc
        };
        self.source_at(pc)
    }

    /// Decodes a pc-value table (zigzag value deltas, pc deltas in quanta) and returns the
    /// value in effect at `target`.
    fn pcvalue(&self, table: u32, entry: u64, target: u64) -> PResult<Option<i64>> {
        if table == 0 {
            return Ok(None);
        }
        let mut pos = self
            .pctab
            .checked_add(table as usize)
            .ok_or_else(|| Malformed::new("pctab offset overflows"))?;
        let mut pc = entry;
        let mut val: i64 = -1;
        let mut first = true;
        loop {
            let uvdelta = uvarint(&self.data, &mut pos)?;
            if uvdelta == 0 && !first {
                return Ok(None);
            }
            first = false;
            let delta = ((uvdelta >> 1) as i64) ^ -((uvdelta & 1) as i64);
            val = val.wrapping_add(delta);
            let pcdelta = uvarint(&self.data, &mut pos)?;
            pc = pc.wrapping_add(pcdelta.wrapping_mul(self.quantum));
            if target < pc {
                return Ok(Some(val));
            }
        }
    }
}
