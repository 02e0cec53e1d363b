//! The views every later stage reads: the table of one traced process
//! ([`ProcessTable`]: its goroutines, creation sites and contexts), what the kernel
//! counted for it ([`Totals`], losses by [`Loss`]), and how full the kernel maps are
//! ([`MapFill`]). Built by [`crate::track`]; read by the leak model, the exporter and the
//! CLI. Plain data: no reading, no merging here.

use std::collections::BTreeMap;

use goroscope_common::{Loss, ProcCounters, LIFETIME_BUCKETS};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// Upper bound (seconds) of lifetime histogram bucket `b` (`None` for the last, +Inf).
pub fn bucket_upper_seconds(b: usize) -> Option<f64> {
    (b + 1 < LIFETIME_BUCKETS).then(|| (1u64 << (b + 10)) as f64 / 1e9)
}

/// Live goroutines (or uncancelled contexts) of a site by age, in buckets an eighth of an
/// octave wide (bucket `i > 0` holds ages in `[2^((i-1)/8), 2^(i/8))` seconds, bucket 0
/// ages under 1 s, the last one everything older than about 48 days): what the leak
/// model's retention test needs ("how many are older than x"), in a bounded size
/// whatever the number of goroutines. Not serialized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgeHistogram(Vec<u32>);

impl AgeHistogram {
    const PER_OCTAVE: f64 = 8.0;
    const BUCKETS: usize = 8 * 22 + 2;

    fn bucket(age_seconds: f64) -> usize {
        if age_seconds < 1.0 {
            return 0;
        }
        let i = (age_seconds.log2() * Self::PER_OCTAVE).floor() as usize + 1;
        i.min(Self::BUCKETS - 1)
    }

    /// Lower bound (seconds) of bucket `i`.
    fn lower(i: usize) -> f64 {
        if i == 0 {
            0.0
        } else {
            ((i - 1) as f64 / Self::PER_OCTAVE).exp2()
        }
    }

    pub fn add(&mut self, age_seconds: f64) {
        self.add_to(Self::bucket(age_seconds));
    }

    /// The bucket of an age in ns (for [`AgeHistogram::add_to`]): callers adding many
    /// equal ages compute it once.
    pub fn bucket_of_ns(age_ns: u64) -> usize {
        Self::bucket(age_ns as f64 / 1e9)
    }

    /// Adds one age to bucket `b` (from [`AgeHistogram::bucket_of_ns`]).
    pub fn add_to(&mut self, b: usize) {
        if self.0.is_empty() {
            self.0 = vec![0; Self::BUCKETS];
        }
        let b = &mut self.0[b.min(Self::BUCKETS - 1)];
        *b = b.saturating_add(1);
    }

    /// How many are surely at least `x` seconds old: those in buckets whose lower bound
    /// is `x` or more (an undercount by at most an eighth of an octave, 9%, of `x`).
    pub fn at_least(&self, x: f64) -> u64 {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, _)| Self::lower(*i) >= x)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// One live goroutine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoroutineView {
    pub goid: u64,
    pub parent_goid: u64,
    pub state: String,
    /// `function file:line` of the `go` statement that created it.
    pub created_at: String,
    pub start_function: String,
    pub age_seconds: f64,
    /// The goroutine existed before attach: its age is at least `age_seconds`.
    pub age_is_lower_bound: bool,
    /// Blocked (Go status `_Gwaiting`: channel, select, sleep, IO wait, lock…, or
    /// `_Gleaked`).
    pub waiting: bool,
    /// Proven leaked by the Go runtime (status `_Gleaked`).
    pub leaked: bool,
}

/// Lifetimes of a site's goroutines that were created while attached and exited.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Lifetime {
    pub count: u64,
    pub sum_seconds: f64,
    /// `(upper bound in seconds or None for +Inf, count in that bucket)`, non-cumulative.
    pub buckets: Vec<(Option<f64>, u64)>,
}

/// A creation site: the goroutines created at one `go` statement.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SiteView {
    /// Link-time address of the `go` statement's return pc.
    pub gopc: u64,
    pub function: String,
    pub file: String,
    pub line: u32,
    /// Created by the Go runtime itself (e.g. GC workers).
    pub system: bool,
    pub start_function: String,
    pub live: u64,
    /// Live goroutines that are blocked (`_Gwaiting`, or `_Gleaked`).
    pub waiting: u64,
    /// Live goroutines the Go runtime itself proved leaked (status `_Gleaked`, set by the
    /// GC cycle of a `goroutineleak` profile: Go 1.27, or 1.26 with
    /// `GOEXPERIMENT=goroutineleakprofile`); counted in `waiting` too.
    pub leaked: u64,
    /// Created while attached (None without probes).
    pub created: Option<u64>,
    /// Exited while attached, whenever they were created (None without probes).
    pub exited: Option<u64>,
    pub oldest_age_seconds: f64,
    pub oldest_age_is_lower_bound: bool,
    /// Change of `live` per minute over the last minute (or what history there is, from
    /// 5 s on).
    pub growth_per_minute: Option<f64>,
    pub states: BTreeMap<String, u64>,
    pub dominant_state: String,
    pub lifetime: Option<Lifetime>,
    pub sample_goids: Vec<u64>,
    /// Live goroutines by age (for the leak model).
    #[serde(skip)]
    pub ages: AgeHistogram,
}

impl SiteView {
    pub fn location(&self) -> String {
        format!("{} {}:{}", self.function, self.file, self.line)
    }
}

/// Goroutines of one creation site stopped at the same stack.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockingStack {
    pub count: u64,
    /// The blocking line an SRE looks for, `function file:line`: the first frame from the
    /// top outside the Go runtime and standard library (a package whose import path's
    /// first element has no dot, `main` excepted); when the whole stack is standard
    /// library (e.g. `net/http`'s connection goroutines), the first frame outside
    /// `runtime.` and `internal/`; when it is all runtime (the runtime's own
    /// goroutines), the bottom frame (the goroutine's own function).
    pub blocked_at: String,
    /// Every frame, innermost first, as the runtime's traceback prints them at
    /// `GOTRACEBACK=system`: `function file:line`, inlined calls expanded, callers at
    /// the line of their call, `runtime.goexit` last.
    pub frames: Vec<String>,
    /// The stack was cut at the depth limit (its bottom frames are missing).
    pub truncated: bool,
    /// The goroutines' states (wait reasons).
    pub states: BTreeMap<String, u64>,
    pub sample_goids: Vec<u64>,
}

/// Where the goroutines of one creation site are stopped, for a site whose stacks were
/// read (see `intake::StackInterest`): their distinct stacks, grouped like
/// `debug/pprof/goroutine?debug=1`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SiteBlocking {
    /// The site ([`SiteView::gopc`]).
    pub gopc: u64,
    /// `function file:line` of the site ([`SiteView::location`]).
    pub site: String,
    /// Goroutines whose stack was read.
    pub read: u64,
    /// Distinct stacks, most goroutines first, at most [`MAX_BLOCKING_STACKS`].
    pub stacks: Vec<BlockingStack>,
    /// Stacks beyond those, and their goroutines.
    pub other_stacks: u64,
    pub other_goroutines: u64,
    /// Stopped goroutines of the site whose stack is not read (yet): beyond the
    /// per-refresh budget, or moved while it was read.
    pub unread: u64,
}

/// Distinct stacks kept per site.
pub const MAX_BLOCKING_STACKS: usize = 10;

impl SiteBlocking {
    /// The dominant blocking line: `blocked_at` of the largest group.
    pub fn blocked_at(&self) -> Option<&str> {
        self.stacks.first().map(|s| s.blocked_at.as_str())
    }
}

/// Cancelable contexts created at one call into package `context`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// Garbage collected without being seen cancelled (their memory was reused, or holds
    /// something else now). With the cancel probe: never cancelled. With one probe per
    /// context (the default), also contexts of a `Background`/`TODO` parent that were
    /// cancelled and collected between two refreshes (README, "One probe per context").
    pub collected: u64,
    /// Mean created→cancelled time of the cancelled ones (with one probe per context, an
    /// upper bound: to the refresh that saw them cancelled).
    pub mean_lifetime_seconds: Option<f64>,
    /// Goroutines blocked on the done channel of this site's uncancelled contexts.
    pub waiting_goroutines: u64,
    /// Those goroutines by their own creation site (`function file:line`).
    pub waiters: BTreeMap<String, u64>,
    /// Uncancelled contexts by age (for the leak model).
    #[serde(skip)]
    pub ages: AgeHistogram,
}

impl ContextSiteView {
    pub fn location(&self) -> String {
        format!("{} {}:{}", self.function, self.file, self.line)
    }
}

/// A parent context with uncancelled children created while attached.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// Events the kernel could not record, by reason; serialized as `{reason: count}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses(pub ProcCounters);

impl Losses {
    pub fn get(&self, reason: Loss) -> u64 {
        self.0.get(reason)
    }

    /// `(reason, count)` for every reason, in the order of [`Loss::ALL`].
    pub fn iter(&self) -> impl Iterator<Item = (Loss, u64)> {
        let counts = self.0;
        Loss::ALL.into_iter().map(move |r| (r, counts.get(r)))
    }

    /// Events lost for any reason.
    pub fn total(&self) -> u64 {
        self.0.total()
    }
}

impl Serialize for Losses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Loss::ALL.len()))?;
        for (r, n) in self.iter() {
            m.serialize_entry(r.name(), &n)?;
        }
        m.end()
    }
}

/// What the kernel counted for one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Goroutines created while attached.
    pub created: u64,
    /// Goroutines exited while attached (whenever created).
    pub exited: u64,
    /// Probe events not recorded, by reason.
    pub lost: Losses,
}

/// The table of one traced process at one refresh.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessTable {
    pub pid: u32,
    /// Process start time (clock ticks after boot): tells a reused pid apart.
    pub start_time: u64,
    pub exe: String,
    pub go_version: String,
    pub attached_seconds: f64,
    /// Live goroutines: those tracked (in `goroutines`) plus `untracked`.
    pub live: u64,
    /// Live goroutines beyond the budget of tracked goroutines (see the `[limits]`
    /// config): counted, not attributed to sites.
    pub untracked: u64,
    /// The container and pod of the process (empty on a plain host).
    pub identity: Identity,
    pub sites: Vec<SiteView>,
    /// Tracked live goroutines by state (running, runnable, syscall, or the wait reason).
    pub states: BTreeMap<String, u64>,
    /// Every tracked goroutine, when asked for (`Session::set_goroutine_views`; the
    /// daemon does not keep them: their sums per site and state are what it needs).
    pub goroutines: Vec<GoroutineView>,
    /// Kernel counters (None without probes).
    pub counters: Option<Totals>,
    /// Why the inventory could not be read, if it could not (then `live` counts only
    /// goroutines created since attach).
    pub inventory_error: Option<String>,
    /// Cancelable contexts by creation site (empty without context probes).
    pub contexts: Vec<ContextSiteView>,
    /// Parents with the most uncancelled children.
    pub context_parents: Vec<ParentView>,
    /// Where goroutines are stopped, per creation site, for the sites whose stacks were
    /// read (none unless asked for: `Session::set_stack_interest`), in the order of
    /// `sites`.
    pub blocking: Vec<SiteBlocking>,
    /// "Created by": live goroutines per (creator's site, site), most first (see
    /// `track::edges`).
    pub site_edges: Vec<SiteEdge>,
    /// The program's build: module, revision, where its sources were (source links).
    #[serde(skip)]
    pub build: BuildSource,
}

/// Live goroutines of site `to` whose creator is a live goroutine of site `from` (None:
/// the creator has exited, is not tracked, or is not known: Go < 1.21 has no
/// `g.parentGoid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteEdge {
    /// Creation site ([`SiteView::gopc`]) of the creators.
    pub from: Option<u64>,
    pub to: u64,
    pub goroutines: u64,
}

/// What the binary says of its sources (from `.go.buildinfo` and `.gopclntab`): enough
/// to link a `file:line` to the code at the exact revision, or to find the file in a
/// local checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildSource {
    /// `go1.27.3`.
    pub go_version: String,
    /// Main module path (`mod` line), e.g. `github.com/org/repo/sub`.
    pub module: Option<String>,
    /// Main module version (`(devel)` for a local build).
    pub module_version: Option<String>,
    /// `vcs.revision` of the build, when recorded.
    pub revision: Option<String>,
    /// `vcs.modified`.
    pub modified: Option<bool>,
    /// Where the main module's root was at build time as the file names show it (an
    /// absolute directory, or the module path with `-trimpath`), found from the main
    /// package's files; None when it cannot be told.
    pub module_root: Option<String>,
}

impl ProcessTable {
    /// Where the goroutines of the site at `gopc` are stopped, if their stacks were read.
    pub fn blocking_of(&self, gopc: u64) -> Option<&SiteBlocking> {
        self.blocking.iter().find(|b| b.gopc == gopc)
    }

    /// The dominant blocking line of a site (`blocked_at` of its largest group of
    /// stacks); None when no stack of it was read.
    pub fn blocked_at(&self, site: &SiteView) -> Option<&str> {
        self.blocking_of(site.gopc)?.blocked_at()
    }
}

/// Where a process runs: its container and Kubernetes pod, as far as known (empty
/// strings otherwise). Set by discovery, after tracking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Container id (64 hex digits) from the process's cgroup.
    pub container_id: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    /// The pod's labels (not exported as series labels; see `goroscope_pod_info`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
}

/// Fill ratio (0..1) of the kernel maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MapFill {
    /// Slot array of live goroutines.
    pub goroutine_slots: f64,
    /// Overflow hash map of live goroutines.
    pub goroutine_overflow: f64,
    /// Per-site statistics.
    pub sites: f64,
    /// Slot array of uncancelled contexts.
    pub context_slots: f64,
    /// Overflow hash map of uncancelled contexts.
    pub context_overflow: f64,
}

impl MapFill {
    /// `(map label, ratio)` of every map.
    pub fn ratios(&self) -> [(&'static str, f64); 5] {
        [
            ("goroutine_slots", self.goroutine_slots),
            ("goroutine_overflow", self.goroutine_overflow),
            ("sites", self.sites),
            ("context_slots", self.context_slots),
            ("context_overflow", self.context_overflow),
        ]
    }

    /// The fuller of two readings, map by map (several probe sets: the fullest counts).
    pub fn max(self, o: MapFill) -> MapFill {
        MapFill {
            goroutine_slots: self.goroutine_slots.max(o.goroutine_slots),
            goroutine_overflow: self.goroutine_overflow.max(o.goroutine_overflow),
            sites: self.sites.max(o.sites),
            context_slots: self.context_slots.max(o.context_slots),
            context_overflow: self.context_overflow.max(o.context_overflow),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_serialize_by_reason_name() {
        let mut c = ProcCounters::default();
        c.lost[Loss::LiveMapFull as usize] = 3;
        let json = serde_json::to_value(Losses(c)).unwrap();
        assert_eq!(json["live_map_full"], 3);
        assert_eq!(json["read_error"], 0);
        assert_eq!(json.as_object().unwrap().len(), Loss::ALL.len());
    }

    #[test]
    fn map_fill_max_is_per_map() {
        let a = MapFill {
            sites: 0.5,
            goroutine_slots: 0.1,
            ..MapFill::default()
        };
        let b = MapFill {
            sites: 0.2,
            goroutine_slots: 0.3,
            ..MapFill::default()
        };
        let m = a.max(b);
        assert_eq!((m.sites, m.goroutine_slots), (0.5, 0.3));
    }
}
