//! Where goroutines block: the stacks read from stopped goroutines, named and grouped
//! per creation site like `debug/pprof/goroutine?debug=1` (count, stack), with the line
//! an SRE looks for picked out of each stack ([`blocking_line`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::Symbols;
use crate::gobin::SourceLoc;
use crate::intake::Stack;
use crate::model::{BlockingStack, SiteBlocking, MAX_BLOCKING_STACKS};

/// Sample goids kept per group.
const SAMPLE_GOIDS: usize = 5;

/// A function's name as the runtime's traceback prints it: a generic function's type
/// arguments shown as `[...]` (`funcNameForPrint`).
pub fn print_name(name: &str) -> String {
    match (name.find('['), name.rfind(']')) {
        (Some(i), Some(j)) if j > i => format!("{}[...]{}", &name[..i], &name[j + 1..]),
        _ => name.to_string(),
    }
}

/// The import path of a function's package: up to the first `.` after the last `/`
/// (type arguments left out).
pub fn package_of(function: &str) -> &str {
    let name = function.split('[').next().unwrap_or(function);
    let last = name.rfind('/').map_or(0, |i| i + 1);
    match name[last..].find('.') {
        Some(i) => &name[..last + i],
        None => name,
    }
}

/// Whether a function is of the Go runtime or standard library: its package's import
/// path's first element has no dot (`net/http`, `sync`, `internal/poll`), except `main`.
pub fn is_standard(function: &str) -> bool {
    let pkg = package_of(function);
    let first = pkg.split('/').next().unwrap_or(pkg);
    pkg != "main" && !first.contains('.')
}

/// Index of the blocking line in `frames` (innermost first): the first frame outside the
/// standard library; else the first outside `runtime.` and `internal/`; else (a
/// goroutine of the runtime itself) the first frame below the runtime's parking
/// functions (`gopark`, `goparkunlock`).
pub fn blocking_line(frames: &[SourceLoc]) -> usize {
    if let Some(i) = frames.iter().position(|f| !is_standard(&f.function)) {
        return i;
    }
    let low_level = |f: &str| f.starts_with("runtime.") || f.starts_with("internal/");
    if let Some(i) = frames.iter().position(|f| !low_level(&f.function)) {
        return i;
    }
    let parking = |f: &str| matches!(f, "runtime.gopark" | "runtime.goparkunlock");
    frames
        .iter()
        .position(|f| !parking(&f.function))
        .unwrap_or(0)
}

/// One goroutine with a stack: its site, goid, state and stack.
pub struct Stopped<'a> {
    pub gopc: u64,
    pub goid: u64,
    pub state: &'a str,
    pub stack: &'a Arc<Stack>,
}

/// A stack's frames as shown: `function file:line` each, and the blocking line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    frames: Vec<String>,
    blocked_at: String,
    truncated: bool,
}

/// Names of stacks, kept while some goroutine has the stack.
#[derive(Default)]
pub struct StackNames(HashMap<Arc<Stack>, Arc<Named>>);

impl StackNames {
    fn get(&mut self, sym: &dyn Symbols, s: &Arc<Stack>) -> Arc<Named> {
        self.0
            .entry(s.clone())
            .or_insert_with(|| {
                let locs: Vec<SourceLoc> = sym
                    .stack_frames(&s.pcs)
                    .into_iter()
                    .map(|l| SourceLoc {
                        function: print_name(&l.function),
                        ..l
                    })
                    .collect();
                let at = blocking_line(&locs);
                Arc::new(Named {
                    blocked_at: locs.get(at).map(ToString::to_string).unwrap_or_default(),
                    frames: locs.iter().map(ToString::to_string).collect(),
                    truncated: s.truncated,
                })
            })
            .clone()
    }

    /// Drops the names of stacks no goroutine has now.
    fn keep(&mut self, used: &HashSet<*const Stack>) {
        self.0.retain(|s, _| used.contains(&Arc::as_ptr(s)));
    }
}

/// Per site, the goroutines grouped by stack (as named: two stacks that differ only in
/// pcs on the same lines are one group), most goroutines first, at most
/// [`MAX_BLOCKING_STACKS`] groups. `unread(gopc)`: stopped goroutines of the site
/// without a stack. `site(gopc)`: the site's `function file:line`. Sites come in
/// `order` (the table's), those with no stack read left out.
pub fn site_views(
    sym: &dyn Symbols,
    names: &mut StackNames,
    stopped: &[Stopped<'_>],
    order: impl Iterator<Item = (u64, String)>,
    mut unread: impl FnMut(u64) -> u64,
) -> Vec<SiteBlocking> {
    // Site → distinct stack (by pointer: identical stacks share one) → goroutines.
    let mut by_site: HashMap<u64, HashMap<*const Stack, Vec<&Stopped<'_>>>> = HashMap::new();
    let mut used = HashSet::new();
    for s in stopped {
        used.insert(Arc::as_ptr(s.stack));
        by_site
            .entry(s.gopc)
            .or_default()
            .entry(Arc::as_ptr(s.stack))
            .or_default()
            .push(s);
    }
    let mut out = Vec::new();
    for (gopc, site) in order {
        let Some(stacks) = by_site.get(&gopc) else {
            continue;
        };
        let mut groups: BTreeMap<Vec<String>, BlockingStack> = BTreeMap::new();
        let mut read = 0;
        for members in stacks.values() {
            let named = names.get(sym, members[0].stack);
            let g = groups
                .entry(named.frames.clone())
                .or_insert_with(|| BlockingStack {
                    blocked_at: named.blocked_at.clone(),
                    frames: named.frames.clone(),
                    truncated: named.truncated,
                    ..Default::default()
                });
            for m in members {
                g.count += 1;
                read += 1;
                *g.states.entry(m.state.to_string()).or_default() += 1;
                g.sample_goids.push(m.goid);
            }
        }
        let mut groups: Vec<BlockingStack> = groups.into_values().collect();
        for g in &mut groups {
            g.sample_goids.sort_unstable();
            g.sample_goids.truncate(SAMPLE_GOIDS);
        }
        // Most goroutines first; ties by blocking line, then stack, for a stable order.
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.blocked_at.cmp(&b.blocked_at))
                .then_with(|| a.frames.cmp(&b.frames))
        });
        let rest = groups.split_off(groups.len().min(MAX_BLOCKING_STACKS));
        out.push(SiteBlocking {
            gopc,
            site,
            read,
            stacks: groups,
            other_stacks: rest.len() as u64,
            other_goroutines: rest.iter().map(|g| g.count).sum(),
            unread: unread(gopc),
        });
    }
    names.keep(&used);
    out
}
