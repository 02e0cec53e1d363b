//! Stacks of stopped goroutines, read from outside the process: from the `g.sched`
//! the runtime saved when the goroutine stopped (pc, sp, bp), by frame pointers, which Go
//! keeps on amd64: `[bp]` is the caller's bp, `[bp+8]` the return address into it, up to
//! the start function's frame (its saved bp is 0; its return address is
//! `runtime.goexit`). Many stacks are walked at once, one batched `process_vm_readv` per
//! depth level.
//!
//! Bounded cost: stacks are read only for the creation sites asked about
//! ([`StackInterest`], none by default), at most [`MAX_FRAMES`] frames deep, at most
//! [`STACKS_PER_REFRESH`] new ones per refresh (the rest at the next ones), and a
//! goroutine still stopped where it was (same goid, `sched.pc`, `sched.sp`) is not read
//! again. Identical stacks share one [`Arc`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::goroutines::{G_SCAN, STATUS_SYSCALL};
use super::memory::{u64_at, ProcMem};
use crate::gobin::Analysis;

/// Frames read per stack at most; deeper stacks are cut (and say so).
pub const MAX_FRAMES: usize = 64;
/// New stacks read per process and refresh at most.
pub const STACKS_PER_REFRESH: usize = 4096;

/// Whose stacks are read: the goroutines created at which `go` statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StackInterest {
    /// Nobody's (the default: the refresh costs nothing more).
    #[default]
    None,
    /// Every site's.
    All,
    /// The sites with these link-time gopcs ([`crate::model::SiteView::gopc`]).
    Sites(HashSet<u64>),
    /// A sample of these sites: at most this many stopped goroutines of each (the first
    /// in `allgs` order, the oldest), so the cost does not grow with a leak's size.
    Sample(HashSet<u64>, usize),
}

impl StackInterest {
    /// Whether goroutines created at `gopc` (link-time) have their stacks read.
    pub fn wants(&self, gopc: u64) -> bool {
        match self {
            StackInterest::None => false,
            StackInterest::All => true,
            StackInterest::Sites(s) | StackInterest::Sample(s, _) => s.contains(&gopc),
        }
    }

    /// Stopped goroutines read per site at most (None: all).
    pub fn per_site(&self) -> Option<usize> {
        match self {
            StackInterest::Sample(_, n) => Some(*n),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        match self {
            StackInterest::None => true,
            StackInterest::All => false,
            StackInterest::Sites(s) | StackInterest::Sample(s, _) => s.is_empty(),
        }
    }
}

/// A goroutine's stack: link-time code addresses, innermost first: where it stopped
/// (`g.sched.pc`, a return address into the function that parked it), then the return
/// address of each caller, down to `runtime.goexit`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stack {
    pub pcs: Vec<u64>,
    /// Cut at [`MAX_FRAMES`]: the bottom of the stack was not read.
    pub truncated: bool,
}

/// A stopped goroutine whose stack is wanted, as read by the inventory (runtime
/// addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub goid: u64,
    /// Address of its `runtime.g`.
    pub g: u64,
    /// Status, scan bit cleared.
    pub status: u32,
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// `g.stack.hi`: frames are below it.
    pub stack_hi: u64,
}

/// Outcome of walking one stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Runtime addresses, innermost first; `true`: cut at the frame limit.
    Read(Vec<u64>, bool),
    /// The chain is not a stack (a frame pointer that does not go up the stack, or
    /// memory that cannot be read): the goroutine moved while it was read.
    Broken,
}

/// Offset of `g.stack.hi` (`stack` is the first field of `runtime.g` in every Go
/// version: `lo`, `hi`).
pub const G_STACK_HI: u32 = 8;

/// Walks the stacks starting at `(pc, bp, stack_hi)` by frame pointers, all at once:
/// one batched read per depth level, each stack at most `max_frames` pcs.
pub fn walk(mem: &ProcMem, starts: &[(u64, u64, u64)], max_frames: usize) -> Vec<Walk> {
    struct W {
        pcs: Vec<u64>,
        bp: u64,
        hi: u64,
        done: Option<Walk>,
    }
    let mut ws: Vec<W> = starts
        .iter()
        .map(|&(pc, bp, hi)| W {
            pcs: vec![pc],
            bp,
            hi,
            done: (bp == 0).then(|| Walk::Read(vec![pc], false)),
        })
        .collect();
    loop {
        let active: Vec<usize> = (0..ws.len()).filter(|i| ws[*i].done.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let mut bufs = vec![[0u8; 16]; active.len()];
        let mut ok = vec![true; active.len()];
        {
            let mut reads: Vec<(u64, &mut [u8])> = active
                .iter()
                .zip(bufs.iter_mut())
                .map(|(i, b)| (ws[*i].bp, &mut b[..]))
                .collect();
            if mem.read_many(&mut reads).is_err() {
                // One bad frame pointer fails the batch: read them one by one.
                for ((addr, b), ok) in reads.iter_mut().zip(ok.iter_mut()) {
                    *ok = mem.read(*addr, b).is_ok();
                }
            }
        }
        for ((i, b), ok) in active.iter().zip(&bufs).zip(ok) {
            let w = &mut ws[*i];
            if !ok {
                w.done = Some(Walk::Broken);
                continue;
            }
            let next = u64_at(b, 0);
            let ret = u64_at(b, 8);
            if ret == 0 {
                w.done = Some(Walk::Read(std::mem::take(&mut w.pcs), false));
                continue;
            }
            w.pcs.push(ret);
            if next == 0 {
                w.done = Some(Walk::Read(std::mem::take(&mut w.pcs), false));
            } else if next <= w.bp || next >= w.hi {
                // Callers' frames are higher on the stack, and on it.
                w.done = Some(Walk::Broken);
            } else if w.pcs.len() >= max_frames {
                w.done = Some(Walk::Read(std::mem::take(&mut w.pcs), true));
            } else {
                w.bp = next;
            }
        }
    }
    ws.into_iter()
        .map(|w| w.done.unwrap_or(Walk::Broken))
        .collect()
}

/// A stack read earlier, valid while the goroutine stays stopped at the same pc and sp
/// (`None`: its chain was broken although the goroutine had not moved).
struct Cached {
    pc: u64,
    sp: u64,
    stack: Option<Arc<Stack>>,
}

/// The stacks of one process's stopped goroutines, kept between refreshes.
#[derive(Default)]
pub struct StackReader {
    pub interest: StackInterest,
    /// New stacks read per refresh at most (None: [`STACKS_PER_REFRESH`]).
    pub budget: Option<usize>,
    /// By goid.
    cache: HashMap<u64, Cached>,
    /// Every distinct stack held by `cache`, once.
    interned: HashSet<Arc<Stack>>,
}

impl StackReader {
    /// The stacks of `parked` (the goroutines of interest that are stopped, from this
    /// refresh's inventory) by goid: those cached, and up to [`STACKS_PER_REFRESH`] read
    /// now. `bias`: the load bias (the stacks hold link-time addresses).
    pub fn read(
        &mut self,
        mem: &ProcMem,
        a: &Analysis,
        bias: u64,
        parked: &[Parked],
    ) -> HashMap<u64, Arc<Stack>> {
        if self.interest.is_none() {
            self.cache.clear();
            self.interned.clear();
            return HashMap::new();
        }
        let mut out = HashMap::with_capacity(parked.len());
        let mut kept = HashSet::with_capacity(parked.len());
        let mut misses = Vec::new();
        for p in parked {
            match self.cache.get(&p.goid) {
                Some(c) if c.pc == p.pc && c.sp == p.sp => {
                    kept.insert(p.goid);
                    if let Some(s) = &c.stack {
                        out.insert(p.goid, s.clone());
                    }
                }
                _ if misses.len() < self.budget.unwrap_or(STACKS_PER_REFRESH) => misses.push(*p),
                _ => {}
            }
        }
        self.cache.retain(|goid, _| kept.contains(goid));
        let starts: Vec<(u64, u64, u64)> = misses
            .iter()
            .map(|p| (p.pc, frame_pointer(a, bias, p), p.stack_hi))
            .collect();
        let walks = walk(mem, &starts, MAX_FRAMES);
        let still = unmoved(mem, a, &misses);
        for ((p, w), still) in misses.iter().zip(walks).zip(still) {
            if !still {
                continue;
            }
            let stack = match w {
                Walk::Read(pcs, truncated) => {
                    let s = Stack {
                        pcs: pcs.into_iter().map(|pc| pc.wrapping_sub(bias)).collect(),
                        truncated,
                    };
                    let s = match self.interned.get(&s) {
                        Some(a) => a.clone(),
                        None => {
                            let a = Arc::new(s);
                            self.interned.insert(a.clone());
                            a
                        }
                    };
                    out.insert(p.goid, s.clone());
                    Some(s)
                }
                Walk::Broken => None,
            };
            self.cache.insert(
                p.goid,
                Cached {
                    pc: p.pc,
                    sp: p.sp,
                    stack,
                },
            );
        }
        // Stacks no goroutine has any more (the cache holds a reference to every
        // stack in use).
        self.interned.retain(|s| Arc::strong_count(s) > 1);
        out
    }
}

/// The frame pointer of the frame a goroutine stopped in. Parked goroutines (`gopark`
/// → `mcall`) have it in `g.sched.bp`. A goroutine in a system call stopped in
/// `entersyscall`, which before Go 1.23 saves no bp: it is computed from the sp
/// (`sched.pc` is a return address into the function that called `entersyscall`,
/// `sched.sp` that function's sp there; its frame pointer is just below its return
/// address), in every version alike. 0 (nothing above the top frame) when unknown.
fn frame_pointer(a: &Analysis, bias: u64, p: &Parked) -> u64 {
    if p.status != STATUS_SYSCALL {
        return p.bp;
    }
    match a.pclntab.sp_delta(p.pc.wrapping_sub(bias)) {
        Some(d) if d >= 16 => p.sp + d - 8,
        _ => 0,
    }
}

/// Whether each goroutine is still stopped where it was when the inventory read it
/// (status, `sched.pc`, `sched.sp` unchanged): a stack read while it ran is dropped.
fn unmoved(mem: &ProcMem, a: &Analysis, ps: &[Parked]) -> Vec<bool> {
    let o = &a.offsets.g;
    let lo = o.atomicstatus.min(o.sched_pc).min(o.sched_sp);
    let hi = o.atomicstatus.max(o.sched_pc).max(o.sched_sp) + 8;
    let size = (hi - lo) as usize;
    let mut bufs = vec![vec![0u8; size]; ps.len()];
    let mut reads: Vec<(u64, &mut [u8])> = ps
        .iter()
        .zip(bufs.iter_mut())
        .map(|(p, b)| (p.g + u64::from(lo), b.as_mut_slice()))
        .collect();
    if mem.read_many(&mut reads).is_err() {
        for (addr, b) in reads.iter_mut() {
            if mem.read(*addr, b).is_err() {
                b.fill(0);
            }
        }
    }
    ps.iter()
        .zip(&bufs)
        .map(|(p, b)| {
            (u64_at(b, o.atomicstatus - lo) as u32) & !G_SCAN == p.status
                && u64_at(b, o.sched_pc - lo) == p.pc
                && u64_at(b, o.sched_sp - lo) == p.sp
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake stack in this process's own memory: frames `[saved bp, return address]`
    /// from the top, each saved bp pointing at the next frame up; the last saved bp 0.
    fn fake(rets: &[u64]) -> (Vec<u64>, u64) {
        let mut words = vec![0u64; rets.len() * 2];
        let base = words.as_ptr() as u64;
        for (i, r) in rets.iter().enumerate() {
            let next = if i + 1 < rets.len() {
                base + (i as u64 + 1) * 16
            } else {
                0
            };
            words[i * 2] = next;
            words[i * 2 + 1] = *r;
        }
        (words, base)
    }

    #[test]
    fn walks_frame_pointers_of_many_stacks_at_once() {
        let mem = ProcMem::new(std::process::id());
        let (a, bp_a) = fake(&[0x11, 0x12, 0x13]);
        let (b, bp_b) = fake(&[0x21; 100]);
        let (mut c, bp_c) = fake(&[0x31, 0x32]);
        // A frame pointer that goes down the stack: not a stack.
        c[0] = bp_c - 16;
        let walks = walk(
            &mem,
            &[
                (0x10, bp_a, u64::MAX),
                (0x20, bp_b, u64::MAX),
                (0x30, bp_c, u64::MAX),
                (0x40, 0, u64::MAX),
                (0x50, bp_a, bp_a + 16),
            ],
            MAX_FRAMES,
        );
        assert_eq!(walks[0], Walk::Read(vec![0x10, 0x11, 0x12, 0x13], false));
        assert_eq!(
            walks[1],
            Walk::Read(vec![0x20].into_iter().chain([0x21; 63]).collect(), true)
        );
        assert_eq!(walks[2], Walk::Broken);
        assert_eq!(walks[3], Walk::Read(vec![0x40], false));
        // Frames beyond the goroutine's stack (`stack.hi`): not its stack.
        assert_eq!(walks[4], Walk::Broken);
        drop((a, b, c));
    }

    #[test]
    fn interest() {
        assert!(StackInterest::None.is_none());
        assert!(StackInterest::Sites(HashSet::new()).is_none());
        assert!(StackInterest::All.wants(7));
        let s = StackInterest::Sites([7].into());
        assert!(s.wants(7) && !s.wants(8) && !s.is_none());
        assert_eq!(s.per_site(), None);
        let sample = StackInterest::Sample([7].into(), 1024);
        assert!(sample.wants(7) && !sample.wants(8) && !sample.is_none());
        assert_eq!(sample.per_site(), Some(1024));
    }
}
