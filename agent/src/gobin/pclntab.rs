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
    layout: Layout,
    /// The table's magic: which Go versions could have written it.
    pub magic: u32,
    pub text_start: u64,
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// All functions, sorted by entry.
    pub funcs: Vec<Func>,
    by_name: HashMap<String, Vec<usize>>,
    /// The binary's bytes from `go:func.*` on (FUNCDATA offsets are relative to it), when
    /// found: inline trees live there.
    gofunc: Option<Vec<u8>>,
}

/// `_func` fields and tables used here, and `runtime.inlinedCall`: the Go 1.20+ layout
/// (magic `0xfffffff1`, `startLine` added) and the Go 1.18–1.19 one (`0xfffffff0`).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// `_func.funcID` (a `uint8`).
    funcid: usize,
    nfuncdata: usize,
    /// The `pcdata` offsets follow the fixed fields, then the `funcdata` offsets.
    tables: usize,
    inlined_call_size: usize,
    /// Offsets in `inlinedCall` of the called function's name offset and `parentPc`.
    inlined_name: usize,
    inlined_parent_pc: usize,
}

/// 1.20+: entryOff, nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset,
/// startLine, funcID, flag, _, nfuncdata; `inlinedCall`: funcID u8, 3 pad bytes,
/// nameOff i32, parentPc i32, startLine i32.
const LAYOUT_GO120: Layout = Layout {
    funcid: 40,
    nfuncdata: 43,
    tables: 44,
    inlined_call_size: 16,
    inlined_name: 4,
    inlined_parent_pc: 8,
};
/// 1.18–1.19: no `startLine`; `inlinedCall`: parent i16, funcID u8, pad, file i32,
/// line i32, func_ i32, parentPc i32.
const LAYOUT_GO118: Layout = Layout {
    funcid: 36,
    nfuncdata: 39,
    tables: 40,
    inlined_call_size: 20,
    inlined_name: 12,
    inlined_parent_pc: 16,
};
const FUNC_NPCDATA: usize = 28;
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;

/// Offset of the function name table in the pclntab whose header starts `header`
/// (`moduledata.funcnametab` points there): read before the table is parsed, to find
/// the moduledata that gives the text start.
pub fn funcnametab_offset(header: &[u8]) -> PResult<u64> {
    Ok(word(header, 3)? as u64)
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
            layout: if magic == MAGIC_GO118 {
                LAYOUT_GO118
            } else {
                LAYOUT_GO120
            },
            magic,
            text_start,
            funcnametab,
            cutab,
            filetab,
            pctab,
            funcs: Vec::with_capacity(nfunc),
            by_name: HashMap::new(),
            gofunc: None,
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

    /// The function's `funcID` (what the runtime treats specially: `goexit`, wrappers…).
    pub fn func_id(&self, f: &Func) -> Option<u8> {
        self.data.u8_at(f.func_off + self.layout.funcid).ok()
    }

    /// `FuncIDWrapper`, the funcID of compiler-generated code (method and `go`/`defer`
    /// wrappers, type algorithms), which tracebacks hide. It is the last value of the
    /// enumeration (21 in Go 1.19–1.21, 22 in 1.22–1.24, 23 from 1.25), so the largest one
    /// in the table: every binary has generated code.
    pub fn wrapper_func_id(&self) -> Option<u8> {
        self.funcs.iter().filter_map(|f| self.func_id(f)).max()
    }

    /// The outermost inlined call at or after the function's entry, in pc order: for a
    /// wrapper whose only call was inlined into it.
    pub fn first_inlined(&self, f: &Func) -> Option<String> {
        // A wrapper is a few instructions; a longer function is not one (and a corrupt
        // table must not make this walk gigabytes).
        if f.end.saturating_sub(f.entry) > 1024 {
            return None;
        }
        let mut pc = f.entry;
        while pc < f.end {
            let frames = self.frames_at(pc);
            if frames.len() > 1 {
                return frames.get(frames.len() - 2).map(|l| l.function.clone());
            }
            pc += self.quantum;
        }
        None
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

    /// Gives the bytes of the binary from `go:func.*` on, which enables naming inlined
    /// functions.
    pub fn set_gofunc(&mut self, bytes: Vec<u8>) {
        self.gofunc = Some(bytes);
    }

    /// Whether inlined calls are expanded (the inline trees were found).
    pub fn expands_inlining(&self) -> bool {
        self.gofunc.is_some()
    }

    /// The source frames at `pc`, innermost first: the calls inlined at `pc` expanded like
    /// the runtime's traceback does (PCDATA_InlTreeIndex, FUNCDATA_InlTree), then the
    /// physical function.
    pub fn frames_at(&self, pc: u64) -> Vec<SourceLoc> {
        let Some(f) = self.func_at(pc) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut pc = pc;
        // An inline tree is as deep as the compiler's inlining (a handful of levels).
        for _ in 0..32 {
            let Some(mut loc) = self.source_at(pc) else {
                break;
            };
            match self.inlined_call(f, pc) {
                Some((name, parent_pc)) => {
                    loc.function = name;
                    out.push(loc);
                    pc = f.entry.wrapping_add(parent_pc);
                }
                None => {
                    out.push(loc);
                    break;
                }
            }
        }
        out
    }

    /// The inlined call `pc` is in, if any: its function's name and the offset of its
    /// call site in the physical function.
    fn inlined_call(&self, f: &Func, pc: u64) -> Option<(String, u64)> {
        let tree = self.gofunc.as_ref()?;
        let l = self.layout;
        let npcdata = self.data.u32_at(f.func_off + FUNC_NPCDATA).ok()? as usize;
        let nfuncdata = self.data.u8_at(f.func_off + l.nfuncdata).ok()? as usize;
        if npcdata <= PCDATA_INL_TREE_INDEX || nfuncdata <= FUNCDATA_INL_TREE {
            return None;
        }
        let table = self
            .data
            .u32_at(f.func_off + l.tables + PCDATA_INL_TREE_INDEX * 4)
            .ok()?;
        let ix = self.pcvalue(table, f.entry, pc).ok()??;
        let ix = usize::try_from(ix).ok()?; // -1: not in an inlined call
        let fd = self
            .data
            .u32_at(f.func_off + l.tables + (npcdata + FUNCDATA_INL_TREE) * 4)
            .ok()?;
        if fd == u32::MAX {
            return None;
        }
        let rec = (fd as usize).checked_add(ix.checked_mul(l.inlined_call_size)?)?;
        let name_off = tree.u32_at(rec.checked_add(l.inlined_name)?).ok()? as usize;
        let parent_pc = u64::from(tree.u32_at(rec.checked_add(l.inlined_parent_pc)?).ok()?);
        let name = self
            .data
            .cstr_at(self.funcnametab.checked_add(name_off)?)
            .ok()?;
        Some((name.to_string(), parent_pc))
    }

    /// The instruction of a call, given its return address: like the runtime's
    /// traceback, one byte back.
    fn call_pc(&self, return_pc: u64) -> Option<u64> {
        let f = self.func_at(return_pc)?;
        Some(if return_pc > f.entry {
            return_pc - 1
        } else {
            return_pc
        })
    }

    /// Where a `go` statement (or any call) is, given the return address recorded for it
    /// (`g.gopc`): the innermost frame, so a call inside an inlined function is named
    /// after that function.
    pub fn call_site(&self, return_pc: u64) -> Option<SourceLoc> {
        self.frames_at(self.call_pc(return_pc)?).into_iter().next()
    }

    /// The first frame at a call (given its return address) whose function is not in
    /// package `pkg` (e.g. `"context."`): for calls into that package from code it was
    /// inlined into. Falls back to the innermost frame.
    pub fn call_site_outside(&self, return_pc: u64, pkg: &str) -> Option<SourceLoc> {
        let frames = self.frames_at(self.call_pc(return_pc)?);
        let outside = frames.iter().position(|l| !l.function.starts_with(pkg));
        frames.into_iter().nth(outside.unwrap_or(0))
    }

    /// How far the stack pointer at `pc` is below its value at the function's entry
    /// (the `pcsp` table): the return address of the frame is at `sp + delta`.
    pub fn sp_delta(&self, pc: u64) -> Option<u64> {
        let f = self.func_at(pc)?;
        let pcsp = self.data.u32_at(f.func_off + 16).ok()?;
        u64::try_from(self.pcvalue(pcsp, f.entry, pc).ok()??).ok()
    }

    /// The source frames of a stack read from a goroutine, innermost first, as the
    /// runtime's traceback prints them: `pcs[0]` is where it stopped (`g.sched.pc`, a
    /// return address into the function that parked it), the others return addresses;
    /// each is looked up one byte back (at its call), except the frame a signal
    /// interrupted (the caller of `runtime.asyncPreempt` or `runtime.sigpanic`), and
    /// the calls inlined there are expanded. A pc outside every function is a frame
    /// named after its address.
    pub fn stack_frames(&self, pcs: &[u64]) -> Vec<SourceLoc> {
        let mut out = Vec::with_capacity(pcs.len() + 4);
        let mut exact = false;
        for &pc in pcs {
            let Some(f) = self.func_at(pc) else {
                out.push(SourceLoc {
                    function: format!("{pc:#x}"),
                    file: "?".into(),
                    line: 0,
                });
                exact = false;
                continue;
            };
            let at = if exact || pc == f.entry { pc } else { pc - 1 };
            let frames = self.frames_at(at);
            if frames.is_empty() {
                out.push(SourceLoc {
                    function: f.name.clone(),
                    file: "?".into(),
                    line: 0,
                });
            }
            out.extend(frames);
            exact = matches!(f.name.as_str(), "runtime.asyncPreempt" | "runtime.sigpanic");
        }
        out
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
