//! What is read from a process about the contexts the kernel tracks: which goroutines
//! are blocked on their done channels, and how many children the busiest parents hold
//! in their `children` maps (every child registered and not cancelled, including those
//! created before attach); and, with one probe per context (no cancel probe), which
//! tracked contexts were cancelled or garbage collected since the last refresh.

use std::collections::{HashMap, HashSet};

use goroscope_common::{CtxInfo, CtxSiteStats};

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
    /// The goroutine on each `runtime.g` that created a tracked context, now (by `g`;
    /// missing: could not be read). Whether it is still the creator is for the tracker
    /// to tell, from when it was created (see `track::contexts::creator`).
    pub on_g: HashMap<u64, OnG>,
}

/// The goroutine on a `runtime.g`, as read at a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnG {
    pub goid: u64,
    /// Whether a goroutine runs on it: false once the one that ran there exited (the
    /// `g` is dead, kept for reuse by a later goroutine).
    pub live: bool,
}

/// Reads `len` (> 0) bytes at each of `addrs` in one batch of `process_vm_readv` (one by
/// one if the batch fails: one unreadable address fails its batch): the bytes, `len` an
/// address, and whether each address could be read.
fn read_blocks(mem: &ProcMem, addrs: &[u64], len: usize) -> (Vec<u8>, Vec<bool>) {
    let mut bufs = vec![0u8; len * addrs.len()];
    let mut ok = vec![true; addrs.len()];
    {
        let mut reads: Vec<(u64, &mut [u8])> =
            addrs.iter().copied().zip(bufs.chunks_mut(len)).collect();
        if mem.read_many(&mut reads).is_err() {
            for (i, (addr, b)) in reads.iter_mut().enumerate() {
                ok[i] = mem.read(*addr, b).is_ok();
            }
        }
    }
    (bufs, ok)
}

/// Reads the words at offsets `a` and `b` of each of `bases` (the span between them, one
/// batch, see [`read_blocks`]): `None` where it could not be read.
fn read_word_pairs(mem: &ProcMem, bases: &[u64], a: u32, b: u32) -> Vec<Option<(u64, u64)>> {
    let lo = a.min(b);
    let len = (a.max(b) - lo + 8) as usize;
    let addrs: Vec<u64> = bases
        .iter()
        .map(|p| p.wrapping_add(u64::from(lo)))
        .collect();
    let (bufs, ok) = read_blocks(mem, &addrs, len);
    bufs.chunks(len)
        .zip(ok)
        .map(|(w, ok)| ok.then(|| (u64_at(w, a - lo), u64_at(w, b - lo))))
        .collect()
}

/// Reads the goroutine on every `g` that created one of `live` (status and goid, one
/// batch of `process_vm_readv`).
fn read_on_g(mem: &ProcMem, a: &Analysis, live: &HashMap<u64, CtxInfo>) -> HashMap<u64, OnG> {
    let o = &a.offsets.g;
    let mut gs: Vec<u64> = live.values().map(|i| i.g).filter(|&g| g != 0).collect();
    gs.sort_unstable();
    gs.dedup();
    let words = read_word_pairs(mem, &gs, o.atomicstatus, o.goid);
    gs.iter()
        .zip(words)
        .filter_map(|(g, w)| {
            let (status, goid) = w?;
            let live = goroutines::is_live(status as u32 & !goroutines::G_SCAN);
            Some((*g, OnG { goid, live }))
        })
        .collect()
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

/// What the process's memory says about a tracked context (one-probe mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its parent is still in its `Context` field and its `err` is nil.
    Live,
    /// `err` is set: cancelled.
    Cancelled,
    /// Its `Context` field no longer holds the recorded parent: the context was garbage
    /// collected and its memory reused (or the memory could not be read).
    Gone,
}

/// What `block` (read at a tracked context's address, covering its `Context`, `done` and
/// `err` fields) says about it. The recorded parent (itab and data words) must still be
/// in the `Context` field, else the memory belongs to something else now; `err` (an
/// `error` interface, or in newer releases an `atomic.Value` of one: either way its first
/// word) is non-zero once cancelled.
pub fn seen(info: &CtxInfo, block: &[u8], off: CancelCtxOffsets) -> Seen {
    let (itab, data) = (u64_at(block, off.context), u64_at(block, off.context + 8));
    if itab != info.parent_itab || data != info.parent {
        Seen::Gone
    } else if u64_at(block, off.err) != 0 {
        Seen::Cancelled
    } else {
        Seen::Live
    }
}

/// A tracked context the agent judged done with: cancelled, or collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub ctx: u64,
    pub info: CtxInfo,
    /// Cancelled (seen so, or gone while a `*cancelCtx` ancestor held it); else
    /// collected uncancelled as far as seen.
    pub cancelled: bool,
}

/// The verdict on a context that is gone: cancelled if an ancestor held it (`held`: a
/// context held in a `*cancelCtx`'s `children` map becomes garbage only once cancelled),
/// collected otherwise (a `Background` parent: cancelled or not, nobody can tell now).
pub fn judge(ctx: u64, info: CtxInfo, seen: Seen, held: impl FnOnce() -> bool) -> Option<Judged> {
    let cancelled = match seen {
        Seen::Live => return None,
        Seen::Cancelled => true,
        Seen::Gone => held(),
    };
    Some(Judged {
        ctx,
        info,
        cancelled,
    })
}

/// Whether a context's parent type is one seen holding children (`holders`): then the
/// context was registered in its parent's `children` map (or cancelled at once), whatever
/// became of the parent since — unlike reading the parent, which may be gone too.
pub fn held_by_type(holders: &[u64], info: &CtxInfo) -> bool {
    info.parent_itab != 0 && holders.contains(&info.parent_itab)
}

/// Counts a judged context (whose record the agent freed) for its site: cancelled with a
/// lifetime up to `now_ns` (an upper bound: cancelled at most one refresh earlier), or
/// collected.
pub fn account(sites: &mut HashMap<u64, CtxSiteStats>, j: &Judged, now_ns: u64) {
    let st = sites.entry(j.info.site).or_default();
    if j.cancelled {
        st.cancelled += 1;
        st.lifetime_ns_sum += now_ns.saturating_sub(j.info.created_ns);
    } else {
        st.collected += 1;
    }
}

/// Adds the agent's per-site counts to the kernel's.
pub fn merge_sites(kernel: &mut HashMap<u64, CtxSiteStats>, agent: &HashMap<u64, CtxSiteStats>) {
    for (site, a) in agent {
        kernel.entry(*site).or_default().add(a);
    }
}

/// The intake's memory of a process's contexts across refreshes.
#[derive(Debug, Default)]
pub struct ContextReader {
    /// Type word of a set `cancelCtx.done` (the `chan struct{}` type), once learned.
    chan_type: Option<u64>,
    /// One-probe mode: the cancellations and collections the agent saw (and whose
    /// records it freed), per creation site, since attach.
    seen: HashMap<u64, CtxSiteStats>,
    /// Itabs (runtime addresses) of parent types seen holding children: a parent of that
    /// type had the `chan struct{}` type in its own `done` (`*cancelCtx`, `*timerCtx`, …),
    /// in the order learned.
    holder_itabs: Vec<u64>,
}

/// Age after which a context seen live must be registered in its parent's `children`
/// map (registration follows its creation probe by well under a microsecond).
const SETTLED_NS: u64 = 1_000_000_000;

/// Distinct parent types checked per refresh at most to learn holder itabs.
const HOLDER_CHECKS: usize = 16;

impl ContextReader {
    /// The `chan struct{}` type word (runtime address), once learned.
    pub fn chan_type(&self) -> Option<u64> {
        self.chan_type
    }

    /// Itabs (runtime addresses) of the parent types seen holding children.
    pub fn holder_itabs(&self) -> &[u64] {
        &self.holder_itabs
    }

    /// Learns which parent types hold their children: for a few parent types not known
    /// yet, one live parent of each is read (its own `done` has the `chan struct{}` type).
    fn learn_holders(
        &mut self,
        mem: &ProcMem,
        off: CancelCtxOffsets,
        live: &HashMap<u64, CtxInfo>,
    ) {
        let Some(chan_type) = self.chan_type else {
            return;
        };
        let mut checked: std::collections::HashSet<u64> = Default::default();
        for info in live.values() {
            if checked.len() >= HOLDER_CHECKS {
                break;
            }
            if info.parent_itab == 0
                || self.holder_itabs.contains(&info.parent_itab)
                || !checked.insert(info.parent_itab)
            {
                continue;
            }
            if holds(mem, off, chan_type, info.parent) {
                self.holder_itabs.push(info.parent_itab);
            }
        }
    }

    /// One-probe mode: reads every tracked context of `live` in the process (one batch
    /// of `process_vm_readv`) and returns those cancelled or gone since they were
    /// recorded. Nothing is counted yet: see [`ContextReader::settle`].
    pub fn judge(
        &mut self,
        mem: &ProcMem,
        a: &Analysis,
        live: &HashMap<u64, CtxInfo>,
    ) -> Vec<Judged> {
        let Some(cc) = a.offsets.cancel_ctx else {
            return Vec::new();
        };
        if self.chan_type.is_none() {
            // From a parent's `done` (propagateCancel calls `parent.Done()`).
            let mut parents: Vec<u64> = live.values().map(|i| i.parent).collect();
            parents.sort_unstable();
            parents.dedup();
            self.chan_type = parents
                .iter()
                .take(8)
                .find_map(|p| learn_chan_type_at(mem, cc, *p));
        }
        let len = (cc.context.max(cc.done).max(cc.err) + 16) as usize;
        let ctxs: Vec<(u64, CtxInfo)> = live.iter().map(|(c, i)| (*c, *i)).collect();
        let addrs: Vec<u64> = ctxs.iter().map(|(c, _)| *c).collect();
        let (bufs, ok) = read_blocks(mem, &addrs, len);
        self.learn_holders(mem, cc, live);
        let seen_now: Vec<Seen> = ctxs
            .iter()
            .zip(bufs.chunks(len))
            .zip(&ok)
            .map(|(((_, info), b), ok)| if *ok { seen(info, b, cc) } else { Seen::Gone })
            .collect();
        let now = crate::clock::mono_ns();
        let dead_parents = self.dead_holders(mem, cc, &ctxs, &seen_now, now);
        let mut memo: HashMap<u64, bool> = HashMap::new();
        let mut out = Vec::new();
        for (((c, info), b), &s) in ctxs.iter().zip(bufs.chunks(len)).zip(&seen_now) {
            // A context cannot be live under a parent of a holder type that is cancelled
            // or holds no children (see `dead_holders`). Memory that says so is garbage,
            // partly reused (its `Context` words left, its `err` word overwritten by
            // another object): gone, and held, so cancelled.
            let s = if s == Seen::Live && dead_parents.contains(&info.parent) {
                Seen::Gone
            } else {
                s
            };
            if self.chan_type.is_none() && s != Seen::Gone && u64_at(b, cc.done + 8) != 0 {
                let ty = u64_at(b, cc.done);
                if is_empty_chan_type(mem, ty) {
                    self.chan_type = Some(ty);
                }
            }
            if s == Seen::Gone && self.chan_type.is_none() {
                self.chan_type = learn_chan_type_at(mem, cc, info.parent);
            }
            out.extend(judge(*c, *info, s, || self.held(mem, cc, info, &mut memo)));
        }
        out
    }

    /// The parents that cannot hold a live child, among those of the contexts seen live
    /// (`seen_now[i]` for `ctxs[i]`) for a while whose parent type is a known holder:
    /// read now (`children` and `err`, one batch), such a parent is cancelled, or its
    /// `children` map is nil, or it cannot be read. A live child keeps its parent
    /// reachable, so the parent's memory is still the parent; a `*cancelCtx` registers
    /// every child in its `children` map (made at the first) and cancels them all when
    /// cancelled, setting the map to nil only then. Contexts created less than
    /// [`SETTLED_NS`] before `now_ns` are left out: one is registered only after its
    /// probe fired.
    fn dead_holders(
        &self,
        mem: &ProcMem,
        off: CancelCtxOffsets,
        ctxs: &[(u64, CtxInfo)],
        seen_now: &[Seen],
        now_ns: u64,
    ) -> HashSet<u64> {
        let mut parents: Vec<u64> = ctxs
            .iter()
            .zip(seen_now)
            .filter(|((_, info), s)| {
                **s == Seen::Live
                    && now_ns.saturating_sub(info.created_ns) >= SETTLED_NS
                    && held_by_type(&self.holder_itabs, info)
            })
            .map(|((_, info), _)| info.parent)
            .collect();
        parents.sort_unstable();
        parents.dedup();
        let words = read_word_pairs(mem, &parents, off.children, off.err);
        parents
            .iter()
            .zip(words)
            .filter(|(_, w)| !matches!(w, Some((children, err)) if *err == 0 && *children != 0))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether the parent of a gone context held it: its type is a known holder, or the
    /// parent, read now, is a `*cancelCtx` (`memo`: by parent, read once a refresh).
    fn held(
        &self,
        mem: &ProcMem,
        off: CancelCtxOffsets,
        info: &CtxInfo,
        memo: &mut HashMap<u64, bool>,
    ) -> bool {
        held_by_type(&self.holder_itabs, info)
            || *memo.entry(info.parent).or_insert_with(|| {
                self.chan_type
                    .is_some_and(|t| holds(mem, off, t, info.parent))
            })
    }

    /// Counts the judged contexts whose records were freed (`freed[i]` for `judged[i]`)
    /// and takes them out of `live`; the others (a newer context took the address before
    /// the record was freed: the kernel counts the judged one) stay in `live` for this
    /// refresh, which the kernel's counters read before matches.
    pub fn settle(
        &mut self,
        live: &mut HashMap<u64, CtxInfo>,
        judged: &[Judged],
        freed: &[bool],
        now_ns: u64,
    ) {
        for (j, _) in judged.iter().zip(freed).filter(|(_, f)| **f) {
            account(&mut self.seen, j, now_ns);
            live.remove(&j.ctx);
        }
    }

    /// Judges stale records (an older record of an address that has a newer one): their
    /// context is gone, cancelled if its parent held it, else collected.
    pub fn judge_stale(
        &mut self,
        mem: &ProcMem,
        a: &Analysis,
        stale: &HashMap<u64, CtxInfo>,
    ) -> Vec<Judged> {
        let Some(cc) = a.offsets.cancel_ctx else {
            return Vec::new();
        };
        let mut memo = HashMap::new();
        stale
            .iter()
            .filter_map(|(c, info)| {
                judge(*c, *info, Seen::Gone, || {
                    self.held(mem, cc, info, &mut memo)
                })
            })
            .collect()
    }

    /// Counts the judged stale records that were freed (their addresses stay live with
    /// the newer records).
    pub fn settle_stale(&mut self, judged: &[Judged], freed: &[bool], now_ns: u64) {
        for (j, _) in judged.iter().zip(freed).filter(|(_, f)| **f) {
            account(&mut self.seen, j, now_ns);
        }
    }

    /// Adds what the agent saw (one-probe mode) to the kernel's per-site counters.
    pub fn merge_seen(&self, sites: &mut HashMap<u64, CtxSiteStats>) {
        merge_sites(sites, &self.seen);
    }

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
        let on_g = read_on_g(mem, a, live);
        let Some(cc) = a.offsets.cancel_ctx else {
            return ContextReads {
                done_waiters: Vec::new(),
                parents,
                on_g,
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
            on_g,
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
    parents
        .iter()
        .find_map(|p| learn_chan_type_at(mem, off, p.parent))
}

/// Learns the `chan struct{}` type word from one parent's `done` (see
/// [`learn_chan_type`]).
fn learn_chan_type_at(mem: &ProcMem, off: CancelCtxOffsets, parent: u64) -> Option<u64> {
    let ty = mem.read_u64(parent + u64::from(off.done)).ok()?;
    is_empty_chan_type(mem, ty).then_some(ty)
}

/// Whether `parent` holds its children in a `children` map: it is a `*cancelCtx` (or a
/// struct starting with one) — its `done` has the `chan struct{}` type word. A wrapper
/// (`valueCtx`) is not followed (see `held` in the BPF program, its twin).
fn holds(mem: &ProcMem, off: CancelCtxOffsets, chan_type: u64, parent: u64) -> bool {
    parent != 0 && mem.read_u64(parent + u64::from(off.done)).ok() == Some(chan_type)
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

    const OFF: CancelCtxOffsets = CancelCtxOffsets {
        context: 0,
        done: 24,
        children: 40,
        err: 48,
    };

    /// A `cancelCtx` block: parent (itab, data) and the `err` word.
    fn block(itab: u64, data: u64, err: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[0..8].copy_from_slice(&itab.to_le_bytes());
        b[8..16].copy_from_slice(&data.to_le_bytes());
        b[48..56].copy_from_slice(&err.to_le_bytes());
        b
    }

    fn rec(site: u64, created_ns: u64) -> CtxInfo {
        CtxInfo {
            site,
            created_ns,
            parent: 0xc000_0100,
            parent_itab: 0x4a_0000,
            ..CtxInfo::default()
        }
    }

    /// Parents laid out in this process's own memory (read back with
    /// `process_vm_readv`, as from a traced process): a parent of a holder type that is
    /// cancelled or holds no children cannot hold a live child; children seen live for a
    /// while are checked, new ones, cancelled ones or ones of other parent types not.
    #[test]
    fn dead_holders_are_read_from_memory() {
        const HOLDER: u64 = 0x4a_0000;
        // A `cancelCtx`: parent (itab, data), `children` (40) and `err` (48).
        let parent = |children: u64, err: u64| {
            let mut b = block(0x11, 0x22, err);
            b[40..48].copy_from_slice(&children.to_le_bytes());
            b
        };
        let (cancelled, childless, holding) = (parent(0xc0de, 7), parent(0, 0), parent(0xc0de, 0));
        let [pc, pe, ph] = [&cancelled, &childless, &holding].map(|b| b.as_ptr() as u64);
        // Seen at 10 s; contexts created at 1 s, but the one created at 9.5 s.
        const NOW: u64 = 10_000_000_000;
        let child = |parent, parent_itab| CtxInfo {
            parent,
            parent_itab,
            created_ns: 1_000_000_000,
            ..CtxInfo::default()
        };
        let ctxs = [
            (0xa0, child(pc, HOLDER)),
            (0xb0, child(pe, HOLDER)),
            (0xc0, child(ph, HOLDER)),
            // Not a holder type: its parent is not read.
            (0xd0, child(pc + 8, 0x5b_0000)),
            // Cancelled itself: nothing to check.
            (0xe0, child(pc + 16, HOLDER)),
            // Too new to be registered yet.
            (
                0xf0,
                CtxInfo {
                    created_ns: 9_500_000_000,
                    ..child(pc + 24, HOLDER)
                },
            ),
            // Its parent cannot be read.
            (0x100, child(8, HOLDER)),
        ];
        let seen_now = [
            Seen::Live,
            Seen::Live,
            Seen::Live,
            Seen::Live,
            Seen::Cancelled,
            Seen::Live,
            Seen::Live,
        ];
        let reader = ContextReader {
            holder_itabs: vec![HOLDER],
            ..ContextReader::default()
        };
        let mem = ProcMem::new(std::process::id());
        let got = reader.dead_holders(&mem, OFF, &ctxs, &seen_now, NOW);
        assert_eq!(got, HashSet::from([pc, pe, 8]));
    }

    #[test]
    fn seen_in_memory() {
        let i = rec(7, 0);
        assert_eq!(seen(&i, &block(0x4a_0000, 0xc000_0100, 0), OFF), Seen::Live);
        assert_eq!(
            seen(&i, &block(0x4a_0000, 0xc000_0100, 0x4b_0000), OFF),
            Seen::Cancelled
        );
        // Reused by something else (or by a context with another parent): gone, whatever
        // its `err` word holds.
        assert_eq!(seen(&i, &block(0x4a_0000, 0xc000_0200, 1), OFF), Seen::Gone);
        assert_eq!(seen(&i, &block(0x4a_0008, 0xc000_0100, 0), OFF), Seen::Gone);
    }

    #[test]
    fn held_by_the_parent_type() {
        let i = rec(7, 0);
        assert!(held_by_type(&[0x4b_0000, 0x4a_0000], &i));
        assert!(!held_by_type(&[0x4b_0000], &i));
        let no_itab = CtxInfo {
            parent_itab: 0,
            ..i
        };
        assert!(!held_by_type(&[0], &no_itab));
    }

    #[test]
    fn gone_contexts_are_cancelled_when_held() {
        let i = rec(7, 0);
        assert_eq!(judge(1, i, Seen::Live, || unreachable!()), None);
        let j = |s, held| judge(1, i, s, || held).map(|j| j.cancelled);
        assert_eq!(j(Seen::Cancelled, false), Some(true));
        assert_eq!(j(Seen::Gone, true), Some(true));
        assert_eq!(j(Seen::Gone, false), Some(false));
    }

    /// created = cancelled + uncancelled + collected, with the agent's counts merged
    /// into the kernel's, whichever saw each context, refresh after refresh.
    #[test]
    fn identity_across_kernel_and_agent_counts() {
        let mut r = ContextReader::default();
        // Refresh 1: 6 live records of site 7; the kernel counted 2 reused ones as
        // cancelled (held) and 1 as collected.
        let mut live: HashMap<u64, CtxInfo> =
            (0..6).map(|k| (0x1000 + k * 0x50, rec(7, 100))).collect();
        let kernel = CtxSiteStats {
            cancelled: 2,
            lifetime_ns_sum: 40,
            collected: 1,
        };
        let created = 6 + 3;
        // The agent judges 3 cancelled, 1 gone with a Background parent, 1 gone held;
        // the record of one cancelled was replaced by the kernel before it was freed.
        let judged: Vec<Judged> = [(0, true), (1, true), (2, true), (3, false), (4, true)]
            .iter()
            .map(|&(k, cancelled)| Judged {
                ctx: 0x1000 + k * 0x50,
                info: rec(7, 100),
                cancelled,
            })
            .collect();
        let freed = [true, true, false, true, true];
        r.settle(&mut live, &judged, &freed, 1_100);
        let mut sites = HashMap::from([(7, kernel)]);
        r.merge_seen(&mut sites);
        let st = sites[&7];
        assert_eq!(live.len(), 2, "the unfreed one stays live this refresh");
        assert_eq!((st.cancelled, st.collected), (2 + 3, 1 + 1));
        assert_eq!(st.cancelled + st.collected + live.len() as u64, created);
        assert_eq!(st.lifetime_ns_sum, 40 + 3 * 1_000);
        // Refresh 2: the kernel has counted the replaced one (held: cancelled) and
        // recorded the new context at its address; the agent's counts are kept.
        let mut sites = HashMap::from([(
            7,
            CtxSiteStats {
                cancelled: 3,
                lifetime_ns_sum: 50,
                collected: 1,
            },
        )]);
        r.merge_seen(&mut sites);
        let live2 = 2; // the one left live, and the new one
        assert_eq!(
            sites[&7].cancelled + sites[&7].collected + live2,
            created + 1
        );
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
