//! The inventory: every goroutine of a process, read from `runtime.allgs` from outside
//! (`process_vm_readv`), with no cooperation from the program: the goroutines that
//! existed before attach, and the current state (running, runnable, waiting on what) of
//! every live goroutine. Also the channels blocked goroutines wait on.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::memory::{u64_at, ProcMem};
use super::stacks::{self, Parked, StackInterest, Walk};
use crate::gobin::Analysis;

/// Upper bound on goroutines read, so a corrupted `allglen` cannot exhaust memory.
const MAX_GOROUTINES: u64 = 1 << 22;
/// `_Gscan` bit of `atomicstatus`.
pub(crate) const G_SCAN: u32 = 0x1000;

/// One goroutine as read from the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct G {
    pub goid: u64,
    /// `atomicstatus` without the scan bit.
    pub status: u32,
    pub wait_reason: u8,
    /// Return pc of the `go` statement (link-time address).
    pub gopc: u64,
    /// Entry of the goroutine's function (link-time address).
    pub startpc: u64,
    pub parent_goid: u64,
    /// `g.waiting`: first `*sudog` of the channel operations it is blocked in (0: none).
    #[serde(skip)]
    pub waiting: u64,
}

pub const STATUS_IDLE: u32 = 0;
pub const STATUS_RUNNABLE: u32 = 1;
pub const STATUS_RUNNING: u32 = 2;
pub const STATUS_SYSCALL: u32 = 3;
pub const STATUS_WAITING: u32 = 4;
pub const STATUS_DEAD: u32 = 6;
/// `_Gleaked` (Go 1.26 with `GOEXPERIMENT=goroutineleakprofile`, 1.27): a goroutine the
/// GC proved blocked forever; it is alive (blocked) until its next cycle.
pub const STATUS_LEAKED: u32 = 10;
/// `_Gdeadextra` (Go 1.27): a dead goroutine kept for a cgo extra M; not a live one.
pub const STATUS_DEAD_EXTRA: u32 = 11;

/// Whether a goroutine with this status (scan bit cleared) exists as far as the program
/// is concerned: not idle, not dead (statuses of Go 1.19–1.27).
pub fn is_live(status: u32) -> bool {
    !matches!(status, STATUS_IDLE | STATUS_DEAD | STATUS_DEAD_EXTRA)
}

/// Human name of a goroutine's state: the wait reason when waiting.
pub fn state_name(g: &G, wait_reasons: &[String]) -> String {
    state_name_of(g.status, g.wait_reason, wait_reasons)
}

/// [`state_name`] of a status (scan bit cleared) and wait reason.
pub fn state_name_of(status: u32, wait_reason: u8, wait_reasons: &[String]) -> String {
    match status {
        0 => "idle".into(),
        STATUS_RUNNABLE => "runnable".into(),
        STATUS_RUNNING => "running".into(),
        STATUS_SYSCALL => "syscall".into(),
        STATUS_WAITING => match wait_reasons.get(wait_reason as usize) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => format!("waiting (reason {wait_reason})"),
        },
        STATUS_DEAD => "dead".into(),
        8 => "copystack".into(),
        9 => "preempted".into(),
        // As Go's own traceback shows it: `[chan receive (leaked)]`.
        STATUS_LEAKED => match wait_reasons.get(wait_reason as usize) {
            Some(r) if !r.is_empty() => format!("{r} (leaked)"),
            _ => "leaked".into(),
        },
        STATUS_DEAD_EXTRA => "dead (cgo extra M)".into(),
        s => format!("status {s}"),
    }
}

/// Bytes read per batch of `process_vm_readv` calls: bounds the buffer whatever the
/// number of goroutines.
const BATCH_BYTES: usize = 1 << 20;
/// Longest single read: several `runtime.g`s next to each other in memory (the Go heap
/// puts them side by side in spans of their size class) are read in one piece.
const MAX_RANGE: u64 = 64 << 10;
/// Two `runtime.g`s at most this far apart (end of one to start of the next) are read in
/// one piece, the bytes between them included. Under a page, so those bytes lie in the
/// pages of the two `g`s, both mapped: the read cannot fail on a hole.
const MAX_GAP: u64 = 1024;

/// The live goroutines (not idle, not dead) of a process, at most `max` of them (the
/// first in address order), and how many more are alive beyond that bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub goroutines: Vec<G>,
    /// Live goroutines not kept because of `max` (counted, not read further).
    pub untracked: u64,
    /// Goroutines started by a wrapper whose callee only their stack tells (see
    /// [`resolve_start`]), not running: `(goid, sched.pc, sched.bp)`, runtime addresses.
    pub wrapper_stacks: Vec<(u64, u64, u64)>,
    /// Goroutines of the sites of interest that are stopped where their stack can be
    /// read (see [`stack_readable`]), collected in the same pass.
    pub parked: Vec<Parked>,
}

/// How the `runtime.g`s of a process are read, kept between refreshes: `allgs` only
/// grows and a `g` is never freed (a dead one is reused for a new goroutine), so the plan
/// changes only when the program has more goroutines at once than ever before.
#[derive(Debug, Default)]
pub struct Plan {
    /// Length and hash of `runtime.allgs` as last read (the pointer array itself is not
    /// kept: 8 bytes a goroutine).
    fingerprint: (u64, u64),
    /// Its non-zero pointers, ascending, without duplicates.
    sorted: Vec<u64>,
    /// Reads covering them: `(address, length, how many gs)`, in `sorted` order.
    ranges: Vec<(u64, u64, usize)>,
    /// Bytes read per `g` when the plan was made.
    size: u64,
    /// The batch buffer, reused.
    buf: Vec<u8>,
    /// The last inventory's vector, handed back once tracked ([`Plan::recycle`]): the
    /// next one fills it, with no new pages to fault in and zero.
    spare: Vec<G>,
}

impl Plan {
    /// Takes back the goroutines of an inventory that was used, for the next one.
    pub fn recycle(&mut self, mut gs: Vec<G>) {
        if gs.capacity() > self.spare.capacity() {
            gs.clear();
            self.spare = gs;
        }
    }

    /// Brings the reads up to date with `runtime.allgs` (`n` pointers at `array`), `size`
    /// bytes from each `g`: the array is read in pieces into the batch buffer and hashed;
    /// only if it changed (or `size` did) is it read again to make new reads.
    fn update(&mut self, mem: &ProcMem, array: u64, n: u64, size: u64) -> Result<()> {
        use std::hash::{BuildHasher, Hasher};
        const PIECE: u64 = (BATCH_BYTES / 8) as u64;
        let mut buf = std::mem::take(&mut self.buf);
        let mut each = |f: &mut dyn FnMut(&[u8])| -> Result<()> {
            let mut at = 0;
            while at < n {
                let k = (n - at).min(PIECE) as usize;
                if buf.len() < k * 8 {
                    buf.resize(k * 8, 0);
                }
                mem.read(array.wrapping_add(at * 8), &mut buf[..k * 8])
                    .context("reading the allgs array")?;
                f(&buf[..k * 8]);
                at += k as u64;
            }
            Ok(())
        };
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        each(&mut |b| h.write(b))?;
        let fingerprint = (n, h.finish());
        if fingerprint != self.fingerprint || size != self.size {
            self.sorted.clear();
            each(&mut |b| {
                self.sorted.extend(
                    b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .filter(|&p| p != 0),
                )
            })?;
            self.sorted.sort_unstable();
            self.sorted.dedup();
            self.ranges = ranges(&self.sorted, size);
            self.fingerprint = fingerprint;
            self.size = size;
        }
        self.buf = buf;
        Ok(())
    }
}

/// Coalesced reads of `size` bytes at each of `sorted` (ascending): `(address, length,
/// count)`; neighbours at most [`MAX_GAP`] apart share a read of at most [`MAX_RANGE`]
/// bytes (or one `g`).
fn ranges(sorted: &[u64], size: u64) -> Vec<(u64, u64, usize)> {
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for &p in sorted {
        if let Some((start, len, n)) = out.last_mut() {
            let end = *start + *len;
            if p >= end - size && p <= end + MAX_GAP && p + size - *start <= MAX_RANGE {
                *len = p + size - *start;
                *n += 1;
                continue;
            }
        }
        out.push((p, size, 1));
    }
    out
}

/// Whether a goroutine with this status has a stack to read in `g.sched`, stable while
/// it keeps the status: blocked (`_Gwaiting`, `_Gleaked`) or in a system call (stopped
/// in `entersyscall`; see `stacks::frame_pointer`). Runnable goroutines are not blocked
/// (their stack is where they were preempted, and they run again soon), running ones
/// have no saved stack.
pub fn stack_readable(status: u32) -> bool {
    matches!(status, STATUS_WAITING | STATUS_LEAKED | STATUS_SYSCALL)
}

/// Reads the live goroutines of the process, keeping at most `max`. `bias` is the load
/// bias (PIE); code addresses in the result are link-time addresses. Memory is bounded
/// by `max` (the goroutines kept) plus one batch buffer, not by the process's size.
/// The stopped goroutines of the sites in `interest` are listed in `parked`. `plan`
/// carries the reads over from the last refresh of the process.
pub fn read(
    mem: &ProcMem,
    a: &Analysis,
    bias: u64,
    max: usize,
    interest: &StackInterest,
    plan: &mut Plan,
) -> Result<Inventory> {
    let (Some(allgs), Some(allglen)) = (a.runtime_vars.allgs, a.runtime_vars.allglen) else {
        bail!("runtime.allgs not found in the binary: goroutines that existed before attach are not visible");
    };
    let mut hdr = [0u8; 16];
    mem.read(allgs.wrapping_add(bias), &mut hdr)
        .context("reading runtime.allgs")?;
    let ptr = u64::from_le_bytes(hdr[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(hdr[8..].try_into().expect("8 bytes"));
    let glen = mem
        .read_u64(allglen.wrapping_add(bias))
        .context("reading runtime.allglen")?;
    let n = len.min(glen);
    if n > MAX_GOROUTINES {
        bail!("runtime.allglen is {n}: not a plausible goroutine count");
    }
    let o = &a.offsets.g;
    let size = [
        o.sched_pc,
        o.sched_sp,
        o.sched_bp,
        stacks::G_STACK_HI,
        o.atomicstatus,
        o.goid,
        o.waitreason,
        o.parent_goid.unwrap_or(0),
        o.gopc,
        o.startpc,
        o.waiting,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as usize
        + 8;
    plan.update(mem, ptr, n, size as u64)?;
    let mut buf = std::mem::take(&mut plan.buf);
    let mut inv = Inventory {
        goroutines: std::mem::take(&mut plan.spare),
        ..Default::default()
    };
    inv.goroutines.clear();
    // Stopped goroutines of interest seen per site (for a sampled interest).
    let mut sampled: std::collections::HashMap<u64, usize> = Default::default();
    let mut next = 0;
    let mut first_g = 0;
    while next < plan.ranges.len() {
        // One batch: whole ranges up to BATCH_BYTES (at least one).
        let mut end = next;
        let mut bytes = 0;
        while end < plan.ranges.len()
            && (end == next || bytes + plan.ranges[end].1 as usize <= BATCH_BYTES)
        {
            bytes += plan.ranges[end].1 as usize;
            end += 1;
        }
        if buf.len() < bytes {
            buf.resize(bytes, 0);
        }
        {
            let mut rest = &mut buf[..bytes];
            let mut reads: Vec<(u64, &mut [u8])> = Vec::with_capacity(end - next);
            for &(addr, len, _) in &plan.ranges[next..end] {
                let (head, tail) = rest.split_at_mut(len as usize);
                reads.push((addr, head));
                rest = tail;
            }
            mem.read_many(&mut reads).context("reading goroutines")?;
        }
        let mut off = 0usize;
        for &(addr, len, count) in &plan.ranges[next..end] {
            for &gptr in &plan.sorted[first_g..first_g + count] {
                let at = off + (gptr - addr) as usize;
                let b = &buf[at..at + size];
                let status = (u64_at(b, o.atomicstatus) as u32) & !G_SCAN;
                if !is_live(status) {
                    continue;
                }
                if inv.goroutines.len() >= max {
                    inv.untracked += 1;
                    continue;
                }
                take(b, gptr, status, a, bias, interest, &mut sampled, &mut inv);
            }
            first_g += count;
            off += len as usize;
        }
        next = end;
    }
    plan.buf = buf;
    Ok(inv)
}

/// Keeps one live goroutine read at `gptr` (its words in `b`) in the inventory.
#[allow(clippy::too_many_arguments)]
fn take(
    b: &[u8],
    gptr: u64,
    status: u32,
    a: &Analysis,
    bias: u64,
    interest: &StackInterest,
    sampled: &mut std::collections::HashMap<u64, usize>,
    inv: &mut Inventory,
) {
    let o = &a.offsets.g;
    let startpc = u64_at(b, o.startpc).wrapping_sub(bias);
    let gopc = u64_at(b, o.gopc).wrapping_sub(bias);
    if stack_readable(status)
        && interest.wants(gopc)
        && interest.per_site().is_none_or(|cap| {
            let n = sampled.entry(gopc).or_insert(0usize);
            *n += 1;
            *n <= cap
        })
    {
        inv.parked.push(Parked {
            goid: u64_at(b, o.goid),
            g: gptr,
            status,
            pc: u64_at(b, o.sched_pc),
            sp: u64_at(b, o.sched_sp),
            bp: u64_at(b, o.sched_bp),
            stack_hi: u64_at(b, stacks::G_STACK_HI),
        });
    }
    let stopped = matches!(
        status,
        STATUS_RUNNABLE | STATUS_SYSCALL | STATUS_WAITING | STATUS_LEAKED
    );
    if stopped && a.unresolved_wrappers.contains(&startpc) {
        inv.wrapper_stacks.push((
            u64_at(b, o.goid),
            u64_at(b, o.sched_pc),
            u64_at(b, o.sched_bp),
        ));
    }
    inv.goroutines.push(G {
        goid: u64_at(b, o.goid),
        status,
        wait_reason: b[o.waitreason as usize],
        gopc,
        startpc,
        parent_goid: o.parent_goid.map_or(0, |off| u64_at(b, off)),
        waiting: if status == STATUS_WAITING {
            u64_at(b, o.waiting)
        } else {
            0
        },
    });
}

/// Frames walked per stack: a wrapper's callee is the second frame from the bottom,
/// and goroutine stacks are rarely deeper than this where they block.
const MAX_FRAMES: usize = 128;

/// What goroutines started by a wrapper that calls through a register (a func literal
/// with captured variables, `go iface.Method()`) really run: the function the runtime's
/// traceback shows at the bottom of their stack, above the hidden wrapper. The stack
/// stopped at `pc` (`g.sched.pc`) is walked from `bp` (`g.sched.bp`) by frame pointers (Go keeps them
/// on amd64): `[bp]` is the caller's `bp`, `[bp+8]` the return address, up to
/// `runtime.goexit`. The frame the wrapper called is the one whose return address is in
/// the wrapper; when the wrapper's call was inlined into it, the inlined function.
/// `None` for a stack that does not end as expected (it moved while read).
pub fn resolve_start(mem: &ProcMem, a: &Analysis, bias: u64, pc: u64, bp: u64) -> Option<String> {
    let Walk::Read(pcs, _) = stacks::walk(mem, &[(pc, bp, u64::MAX)], MAX_FRAMES).pop()? else {
        return None;
    };
    let pcs: Vec<u64> = pcs.into_iter().map(|p| p.wrapping_sub(bias)).collect();
    let t = &a.pclntab;
    let goexit = pcs
        .iter()
        .rposition(|p| t.func_at(*p).is_some_and(|f| f.name == "runtime.goexit"))?;
    // pcs[goexit - 1]: the return address into the wrapper; pcs[goexit - 2]: in the
    // function it called (the top frame's pc is where it stopped, not a return address).
    let into_wrapper = *pcs.get(goexit.checked_sub(1)?)?;
    let wrapper = t.func_at(into_wrapper)?;
    if !a.unresolved_wrappers.contains(&wrapper.entry) {
        return None;
    }
    let frames = t.frames_at(into_wrapper.wrapping_sub(1));
    if frames.len() > 1 {
        return Some(frames[frames.len() - 2].function.clone());
    }
    let callee = *pcs.get(goexit.checked_sub(2)?)?;
    t.func_at(callee).map(|f| f.name.clone())
}

/// Sudogs followed per goroutine (a `select` has one per case).
const MAX_SUDOGS: usize = 16;

/// The channels each blocked goroutine waits on: `(index in gs, *hchan)` pairs, read by
/// following `g.waiting` → `sudog.c` / `sudog.waitlink` (batched, one level per read).
pub fn waiting_channels(mem: &ProcMem, a: &Analysis, gs: &[G]) -> Vec<(usize, u64)> {
    let so = a.offsets.sudog;
    let size = so.c.max(so.waitlink) as usize + 8;
    let mut frontier: Vec<(usize, u64)> = gs
        .iter()
        .enumerate()
        .filter(|(_, g)| g.waiting != 0)
        .map(|(i, g)| (i, g.waiting))
        .collect();
    let mut out = Vec::new();
    for _ in 0..MAX_SUDOGS {
        if frontier.is_empty() {
            break;
        }
        let mut blocks = vec![vec![0u8; size]; frontier.len()];
        let mut reads: Vec<(u64, &mut [u8])> = frontier
            .iter()
            .zip(blocks.iter_mut())
            .map(|((_, p), b)| (*p, b.as_mut_slice()))
            .collect();
        if mem.read_many(&mut reads).is_err() {
            break;
        }
        let mut next = Vec::new();
        for ((i, _), b) in frontier.iter().zip(&blocks) {
            let c = u64_at(b, so.c);
            if c != 0 {
                out.push((*i, c));
            }
            let link = u64_at(b, so.waitlink);
            if link != 0 {
                next.push((*i, link));
            }
        }
        frontier = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_gs_share_a_read() {
        // Three gs side by side (448 bytes apart), one 900 bytes further, one a page away.
        let ptrs = [0x1000, 0x11c0, 0x1380, 0x1380 + 448 + 900, 0x9000];
        let r = ranges(&ptrs, 400);
        assert_eq!(
            r,
            vec![
                (0x1000, 0x1380 + 448 + 900 + 400 - 0x1000, 4),
                (0x9000, 400, 1)
            ]
        );
        // A read never exceeds MAX_RANGE unless one g is larger.
        let many: Vec<u64> = (0..1000).map(|i| 0x10000 + i * 448).collect();
        let r = ranges(&many, 400);
        assert!(r.iter().all(|(_, len, _)| *len <= MAX_RANGE));
        assert_eq!(r.iter().map(|(_, _, n)| n).sum::<usize>(), 1000);
        assert!(r.len() < 10, "{}", r.len());
    }

    #[test]
    fn live_statuses_of_every_version() {
        // _Gidle, _Gdead and Go 1.27's _Gdeadextra (a cgo extra M's goroutine) are not
        // goroutines of the program; _Gleaked (10) is one, blocked forever.
        let live: Vec<u32> = (0..=12).filter(|s| is_live(*s)).collect();
        assert_eq!(live, vec![1, 2, 3, 4, 5, 7, 8, 9, 10, 12]);
        let g = |status| G {
            goid: 1,
            status,
            wait_reason: 0,
            gopc: 0,
            startpc: 0,
            parent_goid: 0,
            waiting: 0,
        };
        assert_eq!(state_name(&g(STATUS_LEAKED), &[]), "leaked");
        assert_eq!(state_name(&g(STATUS_DEAD_EXTRA), &[]), "dead (cgo extra M)");
    }
}
