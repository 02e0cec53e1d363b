//! "Created by": the live goroutines of each creation site, by the creation site of the
//! goroutine that created them (`g.parentGoid`, Go 1.21+), for the workbench's topology.
//!
//! Two passes over the inventory and no per-goroutine record: the first counts the live
//! goroutines by `(creator goid, creation site)` — a handful of creators make most
//! goroutines, so consecutive goroutines mostly share a key and the count is bumped in
//! place —, the second finds each creator's own site among the live goroutines. A
//! creator that has exited (or is not tracked) leaves its goroutines with an unknown
//! creator site. The distinct creators counted are bounded ([`MAX_CREATORS`]): beyond,
//! goroutines count with an unknown creator, so the cost stays bounded whatever the
//! program does.

use std::collections::HashMap;

use crate::intake::goroutines::G;
use crate::model::SiteEdge;

/// Distinct `(creator goid, creation site)` pairs counted per refresh.
pub const MAX_CREATORS: usize = 16_384;

/// Live goroutines by `(creator goid, creation site)`, built one goroutine at a time.
#[derive(Debug, Default)]
pub struct Creators {
    counts: foldhash::HashMap<(u64, u64), u64>,
    /// The key of the last goroutine and its count not yet added to `counts`.
    run: Option<((u64, u64), u64)>,
}

impl Creators {
    /// Counts a live goroutine created at `gopc` by goroutine `parent_goid` (0: unknown,
    /// as on Go < 1.21 or for goroutines the runtime started on the system stack).
    pub fn add(&mut self, parent_goid: u64, gopc: u64) {
        let key = (parent_goid, gopc);
        match &mut self.run {
            Some((k, n)) if *k == key => *n += 1,
            _ => {
                self.flush();
                self.run = Some((key, 1));
            }
        }
    }

    fn flush(&mut self) {
        let Some(((parent, gopc), n)) = self.run.take() else {
            return;
        };
        let key = if self.counts.len() < MAX_CREATORS || self.counts.contains_key(&(parent, gopc)) {
            (parent, gopc)
        } else {
            (0, gopc)
        };
        *self.counts.entry(key).or_default() += n;
    }

    /// The edges, creator site → site, most goroutines first: `gs` is the same
    /// inventory the goroutines were counted from (where the creators are looked up).
    pub fn resolve(mut self, gs: &[G]) -> Vec<SiteEdge> {
        self.flush();
        let mut creator_site: foldhash::HashMap<u64, u64> = Default::default();
        let wanted: foldhash::HashSet<u64> = self
            .counts
            .keys()
            .map(|(p, _)| *p)
            .filter(|p| *p != 0)
            .collect();
        if !wanted.is_empty() {
            for g in gs {
                if wanted.contains(&g.goid) {
                    creator_site.insert(g.goid, g.gopc);
                }
            }
        }
        let mut edges: HashMap<(Option<u64>, u64), u64> = HashMap::new();
        for ((parent, gopc), n) in self.counts {
            let from = creator_site.get(&parent).copied();
            *edges.entry((from, gopc)).or_default() += n;
        }
        let mut out: Vec<SiteEdge> = edges
            .into_iter()
            .map(|((from, to), goroutines)| SiteEdge {
                from,
                to,
                goroutines,
            })
            .collect();
        out.sort_by(|a, b| {
            b.goroutines
                .cmp(&a.goroutines)
                .then(a.to.cmp(&b.to))
                .then(a.from.cmp(&b.from))
        });
        out
    }
}
