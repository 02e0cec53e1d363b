//! Cancelable contexts of one traced process, by creation site: how many were created
//! and cancelled while attached, how many are still not cancelled and since when, and
//! which of those lost their cancel func for good (the runtime twin of `go vet`'s
//! lostcancel: the goroutine that created them has exited and nobody cancelled them).

use std::collections::{BTreeMap, HashMap};

use super::Symbols;
use goroscope_common::CtxInfo;

use crate::intake::{ContextReads, OnG};
use crate::model::{AgeHistogram, ContextSiteView, ParentView};
use crate::probe::ContextRecords;

/// `(function, file, line)` of a context creation site (link-time return address of the
/// call into package `context`; 0: the kernel found none).
fn location(sym: &dyn Symbols, pc: u64) -> (String, String, u32) {
    if pc == 0 {
        return ("unknown".to_string(), String::new(), 0);
    }
    match sym.context_site(pc) {
        Some(l) => (l.function, l.file, l.line),
        None => (format!("{pc:#x}"), String::new(), 0),
    }
}

fn location_string(sym: &dyn Symbols, pc: u64) -> String {
    let (f, file, line) = location(sym, pc);
    format!("{f} {file}:{line}")
}

/// Goroutines blocked on a context's done channel, by the context's creation site and
/// the goroutine's own creation site. `goroutine_site(goid)` names the latter.
pub fn waiters(
    c: &ContextRecords,
    reads: &ContextReads,
    mut goroutine_site: impl FnMut(u64) -> String,
) -> HashMap<u64, BTreeMap<String, u64>> {
    let mut out: HashMap<u64, BTreeMap<String, u64>> = HashMap::new();
    for (goid, ctx) in &reads.done_waiters {
        if let Some(info) = c.live.get(ctx) {
            *out.entry(info.site)
                .or_default()
                .entry(goroutine_site(*goid))
                .or_default() += 1;
        }
    }
    out
}

/// What became of the goroutine that created a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    /// It still runs (its goid).
    Running(u64),
    /// It exited: its `g` is dead, or runs a goroutine created after the context.
    Exited,
    /// Its `g` could not be read.
    Unknown,
}

/// The creator of context `info`: the goroutine on its `g` now (`on_g`, read at this
/// refresh) if that one was created before the context — a `g` runs one goroutine at a
/// time, and is reused for a later one once it exits. `started(goid)` is the creation
/// time the kernel recorded for goroutines created while attached (the clock of
/// `info.created_ns`); one without a record was created before attach, before every
/// tracked context.
pub fn creator(
    info: &CtxInfo,
    on_g: &HashMap<u64, OnG>,
    started: impl Fn(u64) -> Option<u64>,
) -> Creator {
    match on_g.get(&info.g) {
        None => Creator::Unknown,
        Some(o) if !o.live => Creator::Exited,
        Some(o) => match started(o.goid) {
            Some(t) if t > info.created_ns => Creator::Exited,
            _ => Creator::Running(o.goid),
        },
    }
}

/// The per-site views, most uncancelled first. `creator_exited` tells the contexts
/// whose creating goroutine has exited (see [`creator`]: false when unknown).
pub fn site_views(
    sym: &dyn Symbols,
    now_ns: u64,
    c: &ContextRecords,
    creator_exited: &dyn Fn(&CtxInfo) -> bool,
    waits: &HashMap<u64, BTreeMap<String, u64>>,
) -> Vec<ContextSiteView> {
    let mut by_site: HashMap<u64, (u64, u64, u64)> = HashMap::new(); // (n, oldest, lost)
    let mut ages: HashMap<u64, AgeHistogram> = HashMap::new();
    for info in c.live.values() {
        let e = by_site.entry(info.site).or_default();
        let age = now_ns.saturating_sub(info.created_ns);
        e.0 += 1;
        e.1 = e.1.max(age);
        ages.entry(info.site).or_default().add(age as f64 / 1e9);
        if creator_exited(info) {
            e.2 += 1;
        }
    }
    let mut keys: Vec<u64> = by_site.keys().copied().collect();
    keys.extend(c.sites.keys().filter(|k| !by_site.contains_key(k)));
    let mut out: Vec<ContextSiteView> = keys
        .into_iter()
        .map(|pc| {
            let (n, oldest, lost) = by_site.get(&pc).copied().unwrap_or_default();
            let st = c.sites.get(&pc).copied().unwrap_or_default();
            let (function, file, line) = location(sym, pc);
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
                ages: ages.remove(&pc).unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.uncancelled.cmp(&a.uncancelled).then(a.pc.cmp(&b.pc)));
    out
}

/// The parents with the most uncancelled children, named.
pub fn parent_views(
    sym: &dyn Symbols,
    c: &ContextRecords,
    reads: &ContextReads,
) -> Vec<ParentView> {
    reads
        .parents
        .iter()
        .map(|p| ParentView {
            parent: p.parent,
            children_map_len: p.children_map_len,
            parent_site: c.live.get(&p.parent).map(|i| location_string(sym, i.site)),
            uncancelled_children: p.uncancelled_children,
            children_site: location_string(sym, p.children_site),
        })
        .collect()
}
