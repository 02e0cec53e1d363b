//! Probe-site selection by decoding x86-64 (iced-x86).
//!
//! Where a uprobe sits decides its cost: the kernel emulates a few instructions (push,
//! nop, call, jmp, jcc) in place and single-steps everything else, ~25–50× slower here.
//! So each hook is placed on an emulated instruction at which the registers still hold
//! what the kernel program reads, never on a function's first instruction (the stack
//! check, single-stepped), and never as a uretprobe (Go moves stacks).

use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter, Instruction, InstructionInfoFactory, IntelFormatter,
    Mnemonic, OpAccess, Register,
};
use serde::Serialize;

use goroscope_common::reg;

use super::elf::Elf;
use super::offsets::RuntimeOffsets;
use super::pclntab::{Func, Pclntab};
use super::version::GoVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// A goroutine was created (its goid, gopc, startpc, parentGoid are set).
    GoroutineCreate,
    /// A goroutine finished.
    GoroutineExit,
    /// A cancelable context was created (`(*cancelCtx).propagateCancel`; the function
    /// `propagateCancel` before Go 1.21).
    ContextCreate,
    /// A cancelable context was cancelled (`(*cancelCtx).cancel`).
    ContextCancel,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::GoroutineCreate => "goroutine-create",
            Hook::GoroutineExit => "goroutine-exit",
            Hook::ContextCreate => "context-create",
            Hook::ContextCancel => "context-cancel",
        }
    }
}

/// What kind of instruction the site is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteKind {
    /// The `nop` right before `CALL runtime.runqput` in `runtime.newproc.func1`.
    NopBeforeRunqput,
    /// `CALL runtime.runqput` in `runtime.newproc.func1`.
    CallRunqput,
    /// `push rbp` after the stack-growth check.
    PushRbp,
    /// First instruction after the stack-growth check (not emulated).
    AfterStackCheck,
    /// The stack check's conditional jump (emulated), in a function that runs on the
    /// system stack (g0), where the jump to `morestack` is never taken: one hit per call.
    StackCheckBranch,
    /// A `RET` of the function (for return values; not emulated).
    Ret,
}

/// Where a value the kernel program needs is, at the site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "in", rename_all = "kebab-case")]
pub enum Loc {
    Register { reg: String },
    Memory { base: String, offset: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueLoc {
    pub name: &'static str,
    #[serde(flatten)]
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSite {
    pub hook: Hook,
    pub function: String,
    pub function_entry: u64,
    /// Link-time virtual address of the probed instruction.
    pub address: u64,
    /// `address - function_entry`.
    pub offset: u64,
    /// Offset in the ELF file (what a uprobe attaches to).
    pub file_offset: u64,
    pub kind: SiteKind,
    /// Intel syntax of the probed instruction.
    pub instruction: String,
    /// Whether the kernel emulates this instruction (cheap) or single-steps it.
    pub emulated: bool,
    /// The register holding the pointer the kernel program starts from (see
    /// `goroscope_common::reg`).
    #[serde(skip)]
    pub base_reg: u8,
    pub values: Vec<ValueLoc>,
    /// Why the preferred site could not be used, if it could not.
    pub fallback: Option<String>,
    /// Offsets of every `RET` of the function, for hooks that need a return value.
    pub ret_offsets: Vec<u64>,
}

/// The result of site selection: sites found, and hooks that could not be placed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sites {
    pub sites: Vec<ProbeSite>,
    pub missing: Vec<String>,
    /// Whether the context-creation function is called from outside package `context`
    /// (a `WithCancel` inlined into its caller, e.g. with PGO): then the return address
    /// into the function that calls it may already be the creation site, and the kernel
    /// program checks it before walking up from there (one more read of the process's
    /// memory a hit; see `CTX_CHECK_CALLER`).
    #[serde(skip)]
    pub context_create_called_outside: bool,
}

/// A decoded function.
struct Body<'a> {
    func: &'a Func,
    insns: Vec<Instruction>,
}

pub(crate) fn decode_calls(elf: &Elf<'_>, func: &Func) -> Option<Vec<u64>> {
    let body = decode(elf, func)?;
    Some(
        body.insns
            .iter()
            .filter(|i| i.is_call_near())
            .map(|i| i.near_branch_target())
            .collect(),
    )
}

fn decode<'a>(elf: &Elf<'_>, func: &'a Func) -> Option<Body<'a>> {
    let len = usize::try_from(func.end.checked_sub(func.entry)?).ok()?;
    if len == 0 || len > 1 << 20 {
        return None;
    }
    let bytes = elf.bytes_at(func.entry, len)?;
    let mut decoder = Decoder::with_ip(64, bytes, func.entry, DecoderOptions::NONE);
    let insns = decoder.iter().collect();
    Some(Body { func, insns })
}

/// Picks the real (ABIInternal) function among those sharing `name`: an ABI0 wrapper
/// calls the function it wraps, so a candidate that another candidate calls is the real
/// one.
fn real_function<'a>(elf: &Elf<'_>, pcln: &'a Pclntab, name: &str) -> Option<&'a Func> {
    let candidates: Vec<&Func> = pcln.by_name(name).collect();
    if candidates.len() <= 1 {
        return candidates.first().copied();
    }
    for c in &candidates {
        if let Some(body) = decode(elf, c) {
            for i in &body.insns {
                if i.is_call_near() {
                    let t = i.near_branch_target();
                    if let Some(real) = candidates
                        .iter()
                        .find(|o| o.entry == t && o.entry != c.entry)
                    {
                        return Some(real);
                    }
                }
            }
        }
    }
    candidates.into_iter().max_by_key(|f| f.end - f.entry)
}

/// Whether the kernel's uprobe code emulates `i` instead of single-stepping it
/// (arch/x86/kernel/uprobes.c: push, nop, call rel32, jmp rel, jcc rel).
pub fn is_emulated(i: &Instruction) -> bool {
    i.code() == Code::Push_r64
        || i.mnemonic() == Mnemonic::Nop
        || i.code() == Code::Call_rel32_64
        || matches!(i.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64)
        || i.is_jcc_short_or_near()
}

fn text(i: &Instruction) -> String {
    let mut f = IntelFormatter::new();
    let mut s = String::new();
    f.format(i, &mut s);
    s
}

fn writes(info: &mut InstructionInfoFactory, i: &Instruction, r: Register) -> bool {
    info.info(i).used_registers().iter().any(|u| {
        u.register().full_register() == r.full_register()
            && matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
    })
}

fn reg_name(r: u8) -> &'static str {
    match r {
        reg::RAX => "rax",
        reg::RBX => "rbx",
        reg::RCX => "rcx",
        reg::RDI => "rdi",
        _ => "?",
    }
}

fn ret_offsets(body: &Body<'_>) -> Vec<u64> {
    body.insns
        .iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip() - body.func.entry)
        .collect()
}

struct Selector<'e, 'd> {
    elf: &'e Elf<'d>,
    pcln: &'e Pclntab,
    offsets: RuntimeOffsets,
    out: Sites,
}

impl Selector<'_, '_> {
    fn g_values(&self, base: u8) -> Vec<ValueLoc> {
        let b = reg_name(base).to_string();
        let g = &self.offsets.g;
        let mem = |name, offset| ValueLoc {
            name,
            loc: Loc::Memory {
                base: b.clone(),
                offset,
            },
        };
        let mut v = vec![
            ValueLoc {
                name: "g",
                loc: Loc::Register { reg: b.clone() },
            },
            mem("goid", g.goid),
        ];
        v.extend(g.parent_goid.map(|o| mem("parent_goid", o)));
        v.extend([mem("gopc", g.gopc), mem("startpc", g.startpc)]);
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        hook: Hook,
        body: &Body<'_>,
        i: &Instruction,
        kind: SiteKind,
        base_reg: u8,
        values: Vec<ValueLoc>,
        fallback: Option<String>,
    ) -> bool {
        let Some(file_offset) = self.elf.file_offset(i.ip()) else {
            self.out.missing.push(format!(
                "{}: {} at {:#x} is not in a loadable segment",
                hook.name(),
                body.func.name,
                i.ip()
            ));
            return false;
        };
        if let Some(reason) = &fallback {
            tracing::warn!(hook = hook.name(), function = %body.func.name, "probe site fallback: {reason}");
        }
        self.out.sites.push(ProbeSite {
            hook,
            function: body.func.name.clone(),
            function_entry: body.func.entry,
            address: i.ip(),
            offset: i.ip() - body.func.entry,
            file_offset,
            kind,
            instruction: text(i),
            emulated: is_emulated(i),
            base_reg,
            values,
            fallback,
            ret_offsets: ret_offsets(body),
        });
        true
    }

    /// `push rbp` after the stack check, with `arg` (an argument register) untouched
    /// before it; else (Go ≤ 1.20 sets up frames with `sub rsp` and `mov [rsp+N], rbp`)
    /// the stack check's jump when the function runs on g0 (`on_g0`), where it never
    /// branches, else the first instruction after the stack check (single-stepped: a
    /// stack check's jump on a goroutine's stack can branch to `morestack`, which runs
    /// the function again, and a second hit would count the call twice).
    #[allow(clippy::too_many_arguments)]
    fn after_prologue(
        &mut self,
        hook: Hook,
        func_name: &str,
        arg: Register,
        base_reg: u8,
        values: Vec<ValueLoc>,
        mut fallback: Option<String>,
        on_g0: bool,
    ) -> bool {
        let Some(func) = real_function(self.elf, self.pcln, func_name) else {
            self.out.missing.push(format!(
                "{}: {func_name} not found in the binary",
                hook.name()
            ));
            return false;
        };
        let Some(body) = decode(self.elf, func) else {
            self.out
                .missing
                .push(format!("{}: {func_name} could not be read", hook.name()));
            return false;
        };
        let mut info = InstructionInfoFactory::new();
        // The prologue is at most a handful of instructions; look at the first 16.
        let head = &body.insns[..body.insns.len().min(16)];
        for (idx, i) in head.iter().enumerate() {
            if idx > 0 && i.code() == Code::Push_r64 && i.op0_register() == Register::RBP {
                return self.push(
                    hook,
                    &body,
                    i,
                    SiteKind::PushRbp,
                    base_reg,
                    values,
                    fallback,
                );
            }
            if writes(&mut info, i, arg) {
                break;
            }
        }
        // No push rbp (NOSPLIT or unusual prologue): the instruction after the first
        // conditional jump (the stack check), if the argument is still intact there.
        let reason = format!("no `push rbp` after the stack check in {func_name}");
        fallback = Some(match fallback {
            Some(f) => format!("{f}; {reason}"),
            None => reason,
        });
        if let Some(pos) = head.iter().position(|i| i.is_jcc_short_or_near()) {
            let intact = !head[..=pos].iter().any(|p| writes(&mut info, p, arg));
            if intact && on_g0 {
                let i = head[pos];
                return self.push(
                    hook,
                    &body,
                    &i,
                    SiteKind::StackCheckBranch,
                    base_reg,
                    values,
                    fallback.map(|f| format!("{f}; the stack check's jump instead (runs on g0)")),
                );
            }
            if let Some(i) = head.get(pos + 1) {
                if intact {
                    let i = *i;
                    return self.push(
                        hook,
                        &body,
                        &i,
                        SiteKind::AfterStackCheck,
                        base_reg,
                        values,
                        fallback,
                    );
                }
            }
        }
        self.out.missing.push(format!(
            "{}: no usable site in {func_name} ({})",
            hook.name(),
            fallback.unwrap_or_default()
        ));
        false
    }

    fn creation(&mut self) {
        let values = self.g_values(reg::RBX);
        let reason = match self.creation_runqput(values) {
            Ok(()) => return,
            Err(reason) => format!("{reason:#}"),
        };
        // Fallback: every RET of runtime.newproc1, where RAX is the new g.
        let values = self.g_values(reg::RAX);
        let Some(body) = real_function(self.elf, self.pcln, "runtime.newproc1")
            .and_then(|f| decode(self.elf, f))
        else {
            self.out.missing.push(format!(
                "goroutine-create: {reason}, and runtime.newproc1 not found"
            ));
            return;
        };
        let rets: Vec<Instruction> = body
            .insns
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Ret)
            .copied()
            .collect();
        if rets.is_empty() {
            self.out.missing.push(format!(
                "goroutine-create: {reason}, and runtime.newproc1 has no RET"
            ));
        }
        for r in rets {
            let why =
                format!("{reason}; using RET of runtime.newproc1 (RAX = new g), single-stepped");
            self.push(
                Hook::GoroutineCreate,
                &body,
                &r,
                SiteKind::Ret,
                reg::RAX,
                values.clone(),
                Some(why),
            );
        }
    }

    fn creation_runqput(&mut self, values: Vec<ValueLoc>) -> anyhow::Result<()> {
        use anyhow::Context;
        let runqput = real_function(self.elf, self.pcln, "runtime.runqput")
            .context("runtime.runqput not found (inlined?)")?;
        let func = real_function(self.elf, self.pcln, "runtime.newproc.func1")
            .context("runtime.newproc.func1 not found")?;
        let body = decode(self.elf, func).context("runtime.newproc.func1 could not be read")?;
        let pos = body
            .insns
            .iter()
            .position(|i| i.is_call_near() && i.near_branch_target() == runqput.entry)
            .context("no CALL runtime.runqput in runtime.newproc.func1")?;
        let call = body.insns[pos];
        if pos > 0 && body.insns[pos - 1].mnemonic() == Mnemonic::Nop {
            let nop = body.insns[pos - 1];
            self.push(
                Hook::GoroutineCreate,
                &body,
                &nop,
                SiteKind::NopBeforeRunqput,
                reg::RBX,
                values,
                None,
            );
        } else {
            self.push(
                Hook::GoroutineCreate,
                &body,
                &call,
                SiteKind::CallRunqput,
                reg::RBX,
                values,
                None,
            );
        }
        Ok(())
    }

    fn exit(&mut self, version: GoVersion) {
        let values = self.g_values(reg::RAX);
        let has_gdestroy = self.pcln.by_name("runtime.gdestroy").next().is_some();
        if version.line() >= (1, 22) && has_gdestroy {
            self.after_prologue(
                Hook::GoroutineExit,
                "runtime.gdestroy",
                Register::RAX,
                reg::RAX,
                values,
                None,
                true,
            );
        } else {
            let fallback = (version.line() >= (1, 22))
                .then(|| "runtime.gdestroy not found; using runtime.goexit0".to_string());
            // goexit0 runs on g0 (through mcall), whose stack check never branches.
            self.after_prologue(
                Hook::GoroutineExit,
                "runtime.goexit0",
                Register::RAX,
                reg::RAX,
                values,
                fallback,
                true,
            );
        }
    }

    fn contexts(&mut self) {
        let ctx = |r: u8| {
            vec![ValueLoc {
                name: "ctx",
                loc: Loc::Register {
                    reg: reg_name(r).into(),
                },
            }]
        };
        // Go ≥ 1.21: a method, RAX = the new context. Go 1.19–1.20: a function of two
        // interfaces, the new context's data word in RDI.
        let create = if self
            .pcln
            .by_name("context.propagateCancel")
            .next()
            .is_some()
            && self
                .pcln
                .by_name("context.(*cancelCtx).propagateCancel")
                .next()
                .is_none()
        {
            ("context.propagateCancel", Register::RDI, reg::RDI)
        } else {
            (
                "context.(*cancelCtx).propagateCancel",
                Register::RAX,
                reg::RAX,
            )
        };
        for (hook, (func, arg, r)) in [
            (Hook::ContextCreate, create),
            (
                Hook::ContextCancel,
                ("context.(*cancelCtx).cancel", Register::RAX, reg::RAX),
            ),
        ] {
            if self.pcln.by_name(func).next().is_none() {
                self.out.missing.push(format!(
                    "{}: {func} not in the binary (context package not linked, or inlined)",
                    hook.name()
                ));
                continue;
            }
            self.after_prologue(hook, func, arg, r, ctx(r), None, false);
        }
        if let Some(f) = self.pcln.by_name(create.0).next() {
            self.out.context_create_called_outside =
                called_from_outside(self.elf, self.pcln, f.entry, "context.");
        }
    }
}

/// Whether a direct `CALL` to `entry` sits in a function whose name does not start with
/// `prefix`, found by scanning the code for `E8 rel32` (no disassembly: bytes that only
/// look like such a call make the answer true, the safe side).
fn called_from_outside(elf: &Elf<'_>, pcln: &Pclntab, entry: u64, prefix: &str) -> bool {
    let Some((start, text)) = elf.section_containing(entry) else {
        return true;
    };
    text.windows(5).enumerate().any(|(i, w)| {
        if w[0] != 0xE8 {
            return false;
        }
        let rel = i32::from_le_bytes([w[1], w[2], w[3], w[4]]) as i64;
        let at = start + i as u64;
        at.wrapping_add(5).wrapping_add_signed(rel) == entry
            && !pcln.func_at(at).is_some_and(|f| f.name.starts_with(prefix))
    })
}

/// Chooses the probe site of every hook.
pub fn select(elf: &Elf<'_>, pcln: &Pclntab, version: GoVersion, offsets: RuntimeOffsets) -> Sites {
    let mut s = Selector {
        elf,
        pcln,
        offsets,
        out: Sites::default(),
    };
    s.creation();
    s.exit(version);
    s.contexts();
    s.out
}
