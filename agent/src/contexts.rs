//! Cancelable contexts of one traced process, by creation site: how many were created
//! and cancelled while attached, how many are still not cancelled and since when, and
//! which of those lost their cancel func for good (the runtime twin of `go vet`'s
//! lostcancel: the goroutine that created them has exited and nobody cancelled them).
//!
//! Sources: the kernel's `CTX_LIVE` map (every context created while attached and not
//! cancelled yet, with its creation site, creating goroutine and parent) and `CTX_SITES`
//! (created/cancelled counts per site).

use std::collections::{BTreeMap, HashMap, HashSet};

use goroscope_common::{CtxInfo, CtxSiteStats};
use serde::Serialize;

use crate::gobin::Analysis;
use crate::inventory::u64_at;
use crate::process::ProcMem;

/// The done channels of the tracked contexts.
pub struct DoneChannels {
    /// `*hchan` → creation site of the context it belongs to.
    pub by_chan: HashMap<u64, u64>,
    /// The type word of a set `done` (the `chan struct{}` type): every `*cancelCtx` with
    /// a done channel has it, which tells a `*cancelCtx` parent apart from other contexts.
    pub chan_type: Option<u64>,
}

/// Reads `cancelCtx.done` (an `atomic.Value`: interface type and data words; the data
/// word is the channel once `Done()` has been called) of every tracked context.
pub fn done_channels(mem: &ProcMem, done_off: u32, live: &HashMap<u64, CtxInfo>) -> DoneChannels {
    let ctxs: Vec<(&u64, &CtxInfo)> = live.iter().collect();
    let mut bufs = vec![[0u8; 16]; ctxs.len()];
    let mut reads: Vec<(u64, &mut [u8])> = ctxs
        .iter()
        .zip(bufs.iter_mut())
        .map(|((c, _), b)| (**c + u64::from(done_off), b.as_mut_slice()))
        .collect();
    let mut out = DoneChannels {
        by_chan: HashMap::new(),
        chan_type: None,
    };
    if mem.read_many(&mut reads).is_err() {
        return out;
    }
    for ((_, info), b) in ctxs.iter().zip(&bufs) {
        let (ty, chan) = (u64_at(b, 0), u64_at(b, 8));
        if chan != 0 {
            out.by_chan.insert(chan, info.site);
            out.chan_type.get_or_insert(ty);
        }
    }
    out
}

/// `abi.Type` (Go 1.21–1.27): `Kind_` at byte 23 (low 5 bits), and for a `ChanType`
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
pub fn learn_chan_type(
    mem: &ProcMem,
    off: crate::gobin::offsets::CancelCtxOffsets,
    parents: &[ParentView],
) -> Option<u64> {
    parents.iter().find_map(|p| {
        let ty = mem.read_u64(p.parent + u64::from(off.done)).ok()?;
        is_empty_chan_type(mem, ty).then_some(ty)
    })
}

/// `len(parent.children)` of each parent view whose parent is a `*cancelCtx` (its done
/// value has `chan_type`); the map's count is its first word in every supported Go
/// version (classic `hmap.count`, Swiss-table `Map.used`), a nil map has none.
pub fn read_children(
    mem: &ProcMem,
    off: crate::gobin::offsets::CancelCtxOffsets,
    chan_type: u64,
    parents: &mut [ParentView],
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

#[derive(Debug, Clone, Default, Serialize)]
pub struct ContextSiteView {
    /// Link-time return address of the call into package `context` (not a label).
    pub pc: u64,
    pub function: String,
    pub file: String,
    pub line: u32,
    pub created: u64,
    pub cancelled: u64,
    /// Created while attached and not cancelled yet.
    pub uncancelled: u64,
    pub oldest_uncancelled_age_seconds: f64,
    /// Uncancelled contexts whose creating goroutine has exited: nobody can call their
    /// cancel func any more unless it was handed on.
    pub lost_cancel: u64,
    /// Never cancelled, garbage collected (their memory was reused for a new context).
    pub collected: u64,
    /// Mean created→cancelled time of the cancelled ones.
    pub mean_lifetime_seconds: Option<f64>,
    /// Goroutines blocked on the done channel of this site's uncancelled contexts.
    pub waiting_goroutines: u64,
    /// Those goroutines by their own creation site (`function file:line`).
    pub waiters: BTreeMap<String, u64>,
}

impl ContextSiteView {
    pub fn location(&self) -> String {
        format!("{} {}:{}", self.function, self.file, self.line)
    }
}

/// A parent context with uncancelled children created while attached.
#[derive(Debug, Clone, Serialize)]
pub struct ParentView {
    /// The parent context's address (not a label).
    #[serde(skip)]
    pub parent: u64,
    /// `len(children)` of the parent, read from the process: every child registered
    /// with it that is not cancelled, including those created before attach (None: the
    /// parent is not a `*cancelCtx`, or it could not be read).
    pub children_map_len: Option<u64>,
    /// Where the parent was created, when goroscope saw it being created.
    pub parent_site: Option<String>,
    /// Its children created while attached that are not cancelled.
    pub uncancelled_children: u64,
    /// Creation site of most of those children.
    pub children_site: String,
}

/// Builds the per-site views. `live_goids` are the goroutines alive now (None when the
/// inventory could not be read: then `lost_cancel` stays 0).
pub fn views(
    a: &Analysis,
    now_ns: u64,
    live: &HashMap<u64, CtxInfo>,
    sites: &HashMap<u64, CtxSiteStats>,
    live_goids: Option<&HashSet<u64>>,
    waits: &HashMap<u64, BTreeMap<String, u64>>,
) -> (Vec<ContextSiteView>, Vec<ParentView>) {
    let mut by_site: HashMap<u64, (u64, u64, u64)> = HashMap::new(); // (n, oldest, lost)
    for info in live.values() {
        let e = by_site.entry(info.site).or_default();
        e.0 += 1;
        e.1 = e.1.max(now_ns.saturating_sub(info.created_ns));
        if live_goids.is_some_and(|g| !g.contains(&info.goid)) {
            e.2 += 1;
        }
    }
    let mut keys: Vec<u64> = by_site.keys().copied().collect();
    keys.extend(sites.keys().filter(|k| !by_site.contains_key(k)));
    let loc = |pc: u64| {
        if pc == 0 {
            return ("unknown".to_string(), String::new(), 0);
        }
        match a.pclntab.call_site_outside(pc, "context.") {
            Some(l) => (l.function, l.file, l.line),
            None => (format!("{pc:#x}"), String::new(), 0),
        }
    };
    let mut out: Vec<ContextSiteView> = keys
        .into_iter()
        .map(|pc| {
            let (n, oldest, lost) = by_site.get(&pc).copied().unwrap_or_default();
            let st = sites.get(&pc).copied().unwrap_or_default();
            let (function, file, line) = loc(pc);
            ContextSiteView {
                pc,
                function,
                file,
                line,
                created: st.cancelled + st.collected + n,
                cancelled: st.cancelled,
                uncancelled: n,
                oldest_uncancelled_age_seconds: oldest as f64 / 1e9,
                lost_cancel: lost,
                collected: st.collected,
                mean_lifetime_seconds: (st.cancelled > 0)
                    .then(|| st.lifetime_ns_sum as f64 / 1e9 / st.cancelled as f64),
                waiting_goroutines: waits.get(&pc).map_or(0, |w| w.values().sum()),
                waiters: waits.get(&pc).cloned().unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.uncancelled.cmp(&a.uncancelled).then(a.pc.cmp(&b.pc)));

    // Parents with the most uncancelled children.
    let mut parents: HashMap<u64, (u64, HashMap<u64, u64>)> = HashMap::new();
    for info in live.values() {
        let e = parents.entry(info.parent).or_default();
        e.0 += 1;
        *e.1.entry(info.site).or_default() += 1;
    }
    let mut pv: Vec<ParentView> = parents
        .into_iter()
        .map(|(parent, (n, sites))| {
            let child_site = sites
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map_or(0, |(s, _)| s);
            let (f, file, line) = loc(child_site);
            ParentView {
                parent,
                children_map_len: None,
                parent_site: live.get(&parent).map(|p| {
                    let (f, file, line) = loc(p.site);
                    format!("{f} {file}:{line}")
                }),
                uncancelled_children: n,
                children_site: format!("{f} {file}:{line}"),
            }
        })
        .collect();
    pv.sort_by_key(|p| std::cmp::Reverse(p.uncancelled_children));
    pv.truncate(10);
    (out, pv)
}
