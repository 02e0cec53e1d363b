//! What is read from a process about the contexts the kernel tracks: which goroutines
//! are blocked on their done channels, and how many children the busiest parents hold
//! in their `children` maps (every child registered and not cancelled, including those
//! created before attach).

use std::collections::HashMap;

use goroscope_common::CtxInfo;

use super::goroutines::{self, G};
use super::memory::{u64_at, ProcMem};
use crate::gobin::offsets::CancelCtxOffsets;
use crate::gobin::Analysis;

/// Parents whose children maps are read (the ones with the most uncancelled children).
pub const PARENTS_READ: usize = 10;

/// A parent context of tracked contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRecord {
    /// The parent's address.
    pub parent: u64,
    /// Its children created while attached that are not cancelled.
    pub uncancelled_children: u64,
    /// Creation site (link-time) of most of those children.
    pub children_site: u64,
    /// `len(parent.children)` read from the process (None: the parent is not a
    /// `*cancelCtx`, or it could not be read).
    pub children_map_len: Option<u64>,
}

/// What was read about the tracked contexts of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextReads {
    /// `(goid, context)`: the goroutine is blocked on the context's done channel.
    pub done_waiters: Vec<(u64, u64)>,
    /// The parents with the most uncancelled children, most first.
    pub parents: Vec<ParentRecord>,
}

/// The parents of `live` contexts with the most uncancelled children, most first (ties:
/// lower address first); `children_map_len` not read yet.
pub fn busiest_parents(live: &HashMap<u64, CtxInfo>, n: usize) -> Vec<ParentRecord> {
    let mut by_parent: HashMap<u64, (u64, HashMap<u64, u64>)> = HashMap::new();
    for info in live.values() {
        let e = by_parent.entry(info.parent).or_default();
        e.0 += 1;
        *e.1.entry(info.site).or_default() += 1;
    }
    let mut out: Vec<ParentRecord> = by_parent
        .into_iter()
        .map(|(parent, (n, sites))| ParentRecord {
            parent,
            uncancelled_children: n,
            children_site: sites
                .into_iter()
                .max_by_key(|(site, n)| (*n, std::cmp::Reverse(*site)))
                .map_or(0, |(s, _)| s),
            children_map_len: None,
        })
        .collect();
    out.sort_by_key(|p| (std::cmp::Reverse(p.uncancelled_children), p.parent));
    out.truncate(n);
    out
}

/// The intake's memory of a process's contexts across refreshes.
#[derive(Debug, Default)]
pub struct ContextReader {
    /// Type word of a set `cancelCtx.done` (the `chan struct{}` type), once learned.
    chan_type: Option<u64>,
}

impl ContextReader {
    /// Reads what the kernel's `live` contexts need from the process; `gs` is the
    /// inventory (None when it could not be read: no waiters then).
    pub fn read(
        &mut self,
        mem: &ProcMem,
        a: &Analysis,
        live: &HashMap<u64, CtxInfo>,
        gs: Option<&[G]>,
    ) -> ContextReads {
        let mut parents = busiest_parents(live, PARENTS_READ);
        let Some(cc) = a.offsets.cancel_ctx else {
            return ContextReads {
                done_waiters: Vec::new(),
                parents,
            };
        };
        let done = done_channels(mem, cc.done, live);
        if let Some(t) = done.chan_type {
            self.chan_type = Some(t);
        }
        let mut done_waiters = Vec::new();
        if let Some(gs) = gs.filter(|_| !done.by_chan.is_empty()) {
            for (i, chan) in goroutines::waiting_channels(mem, a, gs) {
                if let Some(ctx) = done.by_chan.get(&chan) {
                    done_waiters.push((gs[i].goid, *ctx));
                }
            }
        }
        if self.chan_type.is_none() {
            self.chan_type = learn_chan_type(mem, cc, &parents);
        }
        if let Some(t) = self.chan_type {
            read_children(mem, cc, t, &mut parents);
        }
        ContextReads {
            done_waiters,
            parents,
        }
    }
}

/// The done channels of the tracked contexts.
struct DoneChannels {
    /// `*hchan` → the context it belongs to.
    by_chan: HashMap<u64, u64>,
    /// The type word of a set `done` (the `chan struct{}` type): every `*cancelCtx` with
    /// a done channel has it, which tells a `*cancelCtx` parent apart from other contexts.
    chan_type: Option<u64>,
}

/// Reads `cancelCtx.done` (an `atomic.Value`: interface type and data words; the data
/// word is the channel once `Done()` has been called) of every tracked context.
fn done_channels(mem: &ProcMem, done_off: u32, live: &HashMap<u64, CtxInfo>) -> DoneChannels {
    let ctxs: Vec<u64> = live.keys().copied().collect();
    let mut bufs = vec![[0u8; 16]; ctxs.len()];
    let mut reads: Vec<(u64, &mut [u8])> = ctxs
        .iter()
        .zip(bufs.iter_mut())
        .map(|(c, b)| (*c + u64::from(done_off), b.as_mut_slice()))
        .collect();
    let mut out = DoneChannels {
        by_chan: HashMap::new(),
        chan_type: None,
    };
    if mem.read_many(&mut reads).is_err() {
        return out;
    }
    for (ctx, b) in ctxs.iter().zip(&bufs) {
        let (ty, chan) = (u64_at(b, 0), u64_at(b, 8));
        if chan != 0 {
            out.by_chan.insert(chan, *ctx);
            out.chan_type.get_or_insert(ty);
        }
    }
    out
}

/// `abi.Type` (Go 1.21–1.27; `runtime._type` in 1.19 has the same layout): `Kind_` at byte 23 (low 5 bits), and for a `ChanType`
/// `Elem` at 48 and `Dir` at 56.
const TYPE_KIND: usize = 23;
const KIND_MASK: u8 = 0x1f;
const KIND_CHAN: u8 = 18;
const CHANTYPE_ELEM: u32 = 48;
const CHANTYPE_DIR: u32 = 56;
const BOTH_DIR: u64 = 3;

/// Whether the type descriptor at `ty` (in the process) is `chan struct{}` (or another
/// bidirectional channel of a zero-size element): what `cancelCtx.done` holds.
fn is_empty_chan_type(mem: &ProcMem, ty: u64) -> bool {
    let mut t = [0u8; 64];
    if ty == 0 || mem.read(ty, &mut t).is_err() || t[TYPE_KIND] & KIND_MASK != KIND_CHAN {
        return false;
    }
    let elem = u64_at(&t, CHANTYPE_ELEM);
    u64_at(&t, CHANTYPE_DIR) == BOTH_DIR
        && elem != 0
        && mem.read_u64(elem).is_ok_and(|size| size == 0)
}

/// Learns the `chan struct{}` type word from the parents themselves when no tracked
/// context has had `Done()` called: a parent with children has (propagateCancel calls
/// `parent.Done()`), and its type descriptor is checked in the process's memory.
fn learn_chan_type(mem: &ProcMem, off: CancelCtxOffsets, parents: &[ParentRecord]) -> Option<u64> {
    parents.iter().find_map(|p| {
        let ty = mem.read_u64(p.parent + u64::from(off.done)).ok()?;
        is_empty_chan_type(mem, ty).then_some(ty)
    })
}

/// `len(parent.children)` of each parent that is a `*cancelCtx` (its done value has
/// `chan_type`); the map's count is its first word in every supported Go version
/// (classic `hmap.count`, Swiss-table `Map.used`), a nil map has none.
fn read_children(
    mem: &ProcMem,
    off: CancelCtxOffsets,
    chan_type: u64,
    parents: &mut [ParentRecord],
) {
    for p in parents.iter_mut() {
        if mem.read_u64(p.parent + u64::from(off.done)).ok() != Some(chan_type) {
            continue;
        }
        let Ok(m) = mem.read_u64(p.parent + u64::from(off.children)) else {
            continue;
        };
        p.children_map_len = if m == 0 {
            Some(0)
        } else {
            mem.read_u64(m).ok().filter(|n| *n < 1 << 40)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(site: u64, parent: u64) -> CtxInfo {
        CtxInfo {
            site,
            parent,
            ..CtxInfo::default()
        }
    }

    #[test]
    fn busiest_parents_by_uncancelled_children() {
        let mut live = HashMap::new();
        // Parent 0x100: 3 children (2 from site 7, 1 from 9); 0x200: 1; 0x300: 3 (site 5).
        for (i, (site, parent)) in [(7, 0x100), (7, 0x100), (9, 0x100), (8, 0x200)]
            .into_iter()
            .chain([(5, 0x300); 3])
            .enumerate()
        {
            live.insert(0x1000 + i as u64 * 0x40, ctx(site, parent));
        }
        let p = busiest_parents(&live, 2);
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.parent, p.uncancelled_children, p.children_site))
            .collect();
        assert_eq!(got, vec![(0x100, 3, 7), (0x300, 3, 5)]);
    }
}
