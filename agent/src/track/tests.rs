//! The track stage with observations built by hand: no kernel, no process, no root.

use std::collections::HashMap;

use goroscope_common::{lifetime_bucket, CtxInfo, CtxSiteStats, GoroutineInfo, Loss, SiteStats};

use super::{ProcessMeta, Symbols, Tracker};
use crate::gobin::SourceLoc;
use crate::intake::goroutines::{STATUS_RUNNING, STATUS_WAITING};
use crate::intake::{ContextReads, Observation, OnG, ParentRecord, G};
use crate::model::{ProcessTable, SiteView};
use crate::probe::{ContextRecords, ProcessRecords};
use crate::process::ProcessId;

const S: u64 = 1_000_000_000;
/// `go` statements of the fake binary: `main.fNN /src/main.go:NN` at gopc NN; gopcs
/// from 0x1000 up are in the runtime.
const SITE_A: u64 = 0x10;
const SITE_B: u64 = 0x20;
const SITE_C: u64 = 0x30;
const RUNTIME_SITE: u64 = 0x1000;
/// Wait reason index of "chan receive" in the fake binary.
const CHAN_RECEIVE: u8 = 2;

struct FakeBinary;

impl Symbols for FakeBinary {
    fn call_site(&self, pc: u64) -> Option<SourceLoc> {
        let function = if pc >= RUNTIME_SITE {
            format!("runtime.f{pc:x}")
        } else {
            format!("main.f{pc:x}")
        };
        (pc != 0xdead).then(|| SourceLoc {
            function,
            file: "/src/main.go".into(),
            line: pc as u32,
        })
    }
    fn start_function(&self, pc: u64) -> Option<String> {
        Some(format!("main.start{pc:x}"))
    }
    fn context_site(&self, pc: u64) -> Option<SourceLoc> {
        Some(SourceLoc {
            function: format!("main.ctx{pc:x}"),
            file: "/src/ctx.go".into(),
            line: pc as u32,
        })
    }
    fn stack_frames(&self, pcs: &[u64]) -> Vec<SourceLoc> {
        pcs.iter().flat_map(|pc| fake_frames(*pc)).collect()
    }
    fn wait_reasons(&self) -> &[String] {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| vec!["".into(), "select".into(), "chan receive".into()])
    }
}

const PROC: ProcessId = ProcessId {
    pid: 7,
    start_time: 100,
};

fn meta() -> ProcessMeta {
    ProcessMeta {
        id: PROC,
        exe: "/srv/app".into(),
        go_version: "go1.27.3".into(),
        build: Default::default(),
    }
}

/// A goroutine blocked on a channel, created at `gopc`.
fn g(goid: u64, gopc: u64) -> G {
    G {
        goid,
        status: STATUS_WAITING,
        wait_reason: CHAN_RECEIVE,
        gopc,
        startpc: gopc + 1,
        parent_goid: 1,
        waiting: 0,
    }
}

fn running(goid: u64, gopc: u64) -> G {
    G {
        status: STATUS_RUNNING,
        ..g(goid, gopc)
    }
}

fn obs(secs: u64, inventory: Vec<G>, kernel: Option<ProcessRecords>) -> Observation {
    Observation {
        process: PROC,
        now_ns: secs * S,
        inventory: Ok(inventory),
        untracked: 0,
        kernel,
        contexts: None,
        starts: Default::default(),
        stacks: Default::default(),
    }
}

/// A start function read from a goroutine's stack (a wrapper that calls through a
/// register) wins over the binary's guess, for that goroutine only.
#[test]
fn start_read_from_the_stack_wins() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let mut o = obs(1, vec![g(1, SITE_A), g(2, SITE_A), g(3, SITE_A)], None);
    o.starts.insert(1, "main.literal".into());
    o.starts.insert(2, "main.literal".into());
    let table = t.update(&o, &FakeBinary);
    let starts: Vec<&str> = table
        .goroutines
        .iter()
        .map(|g| g.start_function.as_str())
        .collect();
    assert_eq!(starts, ["main.literal", "main.literal", "main.start11"]);
    assert_eq!(site(&table, SITE_A).start_function, "main.literal");
}

/// Kernel records: goroutines created while attached (`(goid, gopc, created at s)`), and
/// per site the lifetimes (s) of those that exited.
fn kernel(live: &[(u64, u64, u64)], exited: &[(u64, &[u64])]) -> ProcessRecords {
    let mut k = ProcessRecords::default();
    for &(goid, gopc, at) in live {
        k.goroutines.insert(
            goid,
            GoroutineInfo {
                created_ns: at * S,
                gopc,
                startpc: gopc + 1,
                parent_goid: 1,
            },
        );
    }
    for &(gopc, lifetimes) in exited {
        let mut st = SiteStats::default();
        for l in lifetimes {
            st.lifetime_buckets[lifetime_bucket(l * S)] += 1;
            st.lifetime_ns_sum += l * S;
        }
        k.sites.insert(gopc, st);
    }
    k
}

fn site(t: &ProcessTable, gopc: u64) -> &SiteView {
    t.sites
        .iter()
        .find(|s| s.gopc == gopc)
        .unwrap_or_else(|| panic!("no site {gopc:#x} in {:#?}", t.sites))
}

/// `(live, waiting, created, exited)` of a site.
fn counts(s: &SiteView) -> (u64, u64, Option<u64>, Option<u64>) {
    (s.live, s.waiting, s.created, s.exited)
}

#[test]
fn inventory_and_kernel_merge_by_goid_without_double_counting() {
    // Attach at 0 s: goroutines 1-3 exist at site A.
    let attach = obs(0, vec![g(1, SITE_A), g(2, SITE_A), g(3, SITE_A)], None);
    let mut t = Tracker::new(meta(), &attach, &FakeBinary);
    // At 10 s: 4 and 5 were created at site B (8 s), two more at B came and went,
    // and 6 is in the inventory but not yet in the kernel's maps (created after they
    // were read): not counted this time.
    let inv = vec![
        g(1, SITE_A),
        g(2, SITE_A),
        g(3, SITE_A),
        g(4, SITE_B),
        running(5, SITE_B),
        g(6, SITE_B),
    ];
    let k = kernel(&[(4, SITE_B, 8), (5, SITE_B, 8)], &[(SITE_B, &[1, 3])]);
    let table = t.update(&obs(10, inv, Some(k)), &FakeBinary);

    assert_eq!(table.live, 5);
    assert_eq!(table.goroutines.len(), 5);
    let a = site(&table, SITE_A);
    assert_eq!(counts(a), (3, 3, Some(0), Some(0)));
    assert_eq!(
        (a.oldest_age_seconds, a.oldest_age_is_lower_bound),
        (10.0, true)
    );
    assert_eq!(a.location(), "main.f10 /src/main.go:16");
    assert_eq!(a.start_function, "main.start11");
    assert_eq!(a.states.get("chan receive"), Some(&3));
    let b = site(&table, SITE_B);
    // Created while attached: 2 exited + 2 live; 1 of the live ones is running.
    assert_eq!(counts(b), (2, 1, Some(4), Some(2)));
    assert_eq!(
        (b.oldest_age_seconds, b.oldest_age_is_lower_bound),
        (2.0, false)
    );
    assert_eq!(
        b.lifetime.as_ref().map(|l| (l.count, l.sum_seconds)),
        Some((2, 4.0))
    );
    let c = table.counters.as_ref().unwrap();
    assert_eq!((c.created, c.exited, c.lost.total()), (4, 2, 0));
    // Most live first.
    assert_eq!(table.sites[0].gopc, SITE_A);

    // Next refresh: 6 is now in the kernel's maps and counts once.
    let inv = vec![g(1, SITE_A), g(4, SITE_B), g(5, SITE_B), g(6, SITE_B)];
    let k = kernel(
        &[(4, SITE_B, 8), (5, SITE_B, 8), (6, SITE_B, 10)],
        &[(SITE_B, &[1, 3]), (SITE_A, &[])],
    );
    let mut k = k;
    // 2 and 3 existed before attach and exited: untracked exits of site A.
    k.sites.get_mut(&SITE_A).unwrap().exited_untracked = 2;
    let table = t.update(&obs(12, inv, Some(k)), &FakeBinary);
    assert_eq!(table.live, 4);
    assert_eq!(counts(site(&table, SITE_A)), (1, 1, Some(0), Some(2)));
    assert_eq!(counts(site(&table, SITE_B)), (3, 3, Some(5), Some(2)));
    assert_eq!(site(&table, SITE_A).oldest_age_seconds, 12.0);
}

#[test]
fn a_goroutine_created_and_exited_between_two_refreshes() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let table = t.update(
        &obs(5, vec![], Some(kernel(&[], &[(SITE_A, &[2])]))),
        &FakeBinary,
    );
    let a = site(&table, SITE_A);
    assert_eq!(counts(a), (0, 0, Some(1), Some(1)));
    let l = a.lifetime.as_ref().unwrap();
    assert_eq!((l.count, l.sum_seconds), (1, 2.0));
    // 2 s lies in the bucket up to 2^31 ns.
    let b = l.buckets.iter().position(|(_, n)| *n == 1).unwrap();
    assert_eq!(l.buckets[b].0, Some((1u64 << 31) as f64 / 1e9));
    assert_eq!(table.live, 0);
}

#[test]
fn without_probes_every_goroutine_counts_and_has_no_kernel_numbers() {
    let mut t = Tracker::new(meta(), &obs(0, vec![g(1, SITE_A)], None), &FakeBinary);
    let table = t.update(&obs(3, vec![g(1, SITE_A), g(2, SITE_A)], None), &FakeBinary);
    let a = site(&table, SITE_A);
    assert_eq!(counts(a), (2, 2, None, None));
    assert_eq!(a.lifetime, None);
    assert_eq!(table.counters, None);
    // Goroutine 2 was first seen at 3 s: age 0, a lower bound.
    let g2 = table.goroutines.iter().find(|g| g.goid == 2).unwrap();
    assert_eq!((g2.age_seconds, g2.age_is_lower_bound), (0.0, true));
}

#[test]
fn with_the_live_map_full_the_inventory_is_trusted() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let mut k = kernel(&[(1, SITE_A, 1)], &[]);
    k.counters.lost[Loss::LiveMapFull as usize] = 1;
    // Goroutine 2's creation could not be recorded: it counts, first seen now.
    let table = t.update(
        &obs(4, vec![g(1, SITE_A), g(2, SITE_A)], Some(k)),
        &FakeBinary,
    );
    assert_eq!(site(&table, SITE_A).live, 2);
    assert_eq!(
        table.counters.as_ref().unwrap().lost.get(Loss::LiveMapFull),
        1
    );
}

#[test]
fn without_the_inventory_the_kernel_says_what_is_alive() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let mut o = obs(6, vec![], Some(kernel(&[(9, SITE_B, 2)], &[])));
    o.inventory = Err("runtime.allgs not found".into());
    let table = t.update(&o, &FakeBinary);
    assert_eq!(
        table.inventory_error.as_deref(),
        Some("runtime.allgs not found")
    );
    assert_eq!(table.live, 1);
    let g9 = &table.goroutines[0];
    assert_eq!(
        (g9.goid, g9.state.as_str(), g9.age_seconds),
        (9, "runnable", 4.0)
    );
}

#[test]
fn growth_per_minute_against_the_oldest_sample_of_the_last_minute() {
    let gs = |n: u64| (1..=n).map(|i| g(i, SITE_A)).collect::<Vec<_>>();
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let growth = |t: &mut Tracker, secs: u64, n: u64| {
        let table = t.update(&obs(secs, gs(n), None), &FakeBinary);
        site(&table, SITE_A).growth_per_minute
    };
    // Less than 5 s of history: no growth yet.
    assert_eq!(growth(&mut t, 3, 3), None);
    assert_eq!(growth(&mut t, 5, 5), Some(60.0));
    assert_eq!(growth(&mut t, 30, 30), Some(60.0));
    // At 70 s the oldest sample within a minute is the one of 30 s: +40 in 40 s.
    assert_eq!(growth(&mut t, 70, 70), Some(60.0));
    // Flat from then on.
    assert_eq!(growth(&mut t, 100, 70), Some(0.0));
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let mut t = Tracker::new(meta(), &obs(0, vec![g(1, SITE_A)], None), &FakeBinary);
    let table = t.update(&obs(50, vec![g(1, SITE_A)], None), &FakeBinary);
    assert_eq!(table.attached_seconds, 50.0);
    // Same pid, another start time: history and ages start over.
    let mut o = obs(60, vec![g(1, SITE_B), g(2, SITE_B)], None);
    o.process = ProcessId {
        pid: PROC.pid,
        start_time: 999,
    };
    let table = t.update(&o, &FakeBinary);
    assert_eq!((table.pid, table.start_time), (7, 999));
    assert_eq!(table.attached_seconds, 0.0);
    let b = site(&table, SITE_B);
    assert_eq!((b.live, b.oldest_age_seconds), (2, 0.0));
    assert_eq!(b.growth_per_minute, None);
    assert_eq!(t.meta().id.start_time, 999);
}

#[test]
fn runtime_sites_are_system_and_unknown_sites_are_named_by_address() {
    let inv = vec![g(1, RUNTIME_SITE), g(2, 0xdead)];
    let t = Tracker::new(meta(), &obs(0, inv.clone(), None), &FakeBinary);
    let mut t = t;
    let table = t.update(&obs(1, inv, None), &FakeBinary);
    assert!(site(&table, RUNTIME_SITE).system);
    let unknown = site(&table, 0xdead);
    assert_eq!(
        (unknown.function.as_str(), unknown.file.as_str()),
        ("0xdead", "")
    );
    assert!(!unknown.system);
}

/// A context created at `site` by the goroutine on `runtime.g` `g` with parent
/// `parent`, at `at` s.
fn ctx(site: u64, g: u64, parent: u64, at: u64) -> CtxInfo {
    CtxInfo {
        created_ns: at * S,
        site,
        g,
        parent,
        parent_itab: 0,
    }
}

#[test]
fn the_creator_of_a_context_is_the_goroutine_on_its_g_if_older() {
    use crate::track::contexts::{creator, Creator};
    let on_g: HashMap<u64, OnG> = [
        (
            0x100,
            OnG {
                goid: 1,
                live: true,
            },
        ),
        (
            0x200,
            OnG {
                goid: 7,
                live: true,
            },
        ),
        (
            0x300,
            OnG {
                goid: 5,
                live: true,
            },
        ),
        (
            0x400,
            OnG {
                goid: 9,
                live: false,
            },
        ),
    ]
    .into();
    // Goroutines 7 and 5 were created while attached, at 1 s and 7 s; 1 before attach.
    let started = |goid| match goid {
        7 => Some(S),
        5 => Some(7 * S),
        _ => None,
    };
    let verdict = |g| creator(&ctx(0x500, g, 0, 4), &on_g, started);
    assert_eq!(verdict(0x100), Creator::Running(1));
    assert_eq!(verdict(0x200), Creator::Running(7));
    // The creator exited and its g now runs a newer goroutine, or nothing.
    assert_eq!(verdict(0x300), Creator::Exited);
    assert_eq!(verdict(0x400), Creator::Exited);
    assert_eq!(verdict(0x600), Creator::Unknown);
}

#[test]
fn contexts_by_creation_site_with_lost_cancels_waiters_and_parents() {
    const CTX_SITE: u64 = 0x500;
    const OTHER_SITE: u64 = 0x600;
    const PARENT: u64 = 0xc000_1000;
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let mut k = kernel(&[], &[]);
    let mut live = HashMap::new();
    // Three uncancelled at CTX_SITE: two made by goroutine 1 (alive, on g 0x100), one by
    // the goroutine on g 0x200, which now runs goroutine 5, created after the context:
    // the creator exited, its cancel func is lost.
    const G1: u64 = 0x100;
    const G2: u64 = 0x200;
    k.goroutines.insert(
        5,
        GoroutineInfo {
            created_ns: 7 * S,
            gopc: SITE_B,
            startpc: SITE_B + 1,
            parent_goid: 1,
        },
    );
    live.insert(0xa0, ctx(CTX_SITE, G1, PARENT, 2));
    live.insert(0xb0, ctx(CTX_SITE, G1, PARENT, 4));
    live.insert(0xc0, ctx(CTX_SITE, G2, PARENT, 6));
    let mut sites = HashMap::new();
    sites.insert(
        CTX_SITE,
        CtxSiteStats {
            cancelled: 4,
            lifetime_ns_sum: 2 * S,
            collected: 1,
        },
    );
    sites.insert(
        OTHER_SITE,
        CtxSiteStats {
            cancelled: 10,
            lifetime_ns_sum: 0,
            collected: 0,
        },
    );
    k.contexts = Some(ContextRecords { live, sites });
    let mut o = obs(10, vec![g(1, SITE_A), g(3, SITE_B), g(4, SITE_B)], None);
    o.kernel = Some(k);
    o.contexts = Some(ContextReads {
        // Goroutines 3 and 4 (created at site B) wait on 0xa0's done channel.
        done_waiters: vec![(3, 0xa0), (4, 0xa0)],
        parents: vec![ParentRecord {
            parent: PARENT,
            uncancelled_children: 3,
            children_site: CTX_SITE,
            children_map_len: Some(1161),
        }],
        on_g: [
            (
                G1,
                OnG {
                    goid: 1,
                    live: true,
                },
            ),
            (
                G2,
                OnG {
                    goid: 5,
                    live: true,
                },
            ),
        ]
        .into(),
    });
    let table = t.update(&o, &FakeBinary);

    let views: Vec<(u64, u64, u64, u64, u64, u64)> = table
        .contexts
        .iter()
        .map(|c| {
            (
                c.pc,
                c.created,
                c.cancelled,
                c.uncancelled,
                c.lost_cancel,
                c.waiting_goroutines,
            )
        })
        .collect();
    assert_eq!(
        views,
        vec![(CTX_SITE, 8, 4, 3, 1, 2), (OTHER_SITE, 10, 10, 0, 0, 0)]
    );
    let c = &table.contexts[0];
    assert_eq!(c.location(), "main.ctx500 /src/ctx.go:1280");
    assert_eq!(c.oldest_uncancelled_age_seconds, 8.0);
    assert_eq!(c.collected, 1);
    assert_eq!(c.mean_lifetime_seconds, Some(0.5));
    assert_eq!(
        c.waiters.iter().collect::<Vec<_>>(),
        vec![(&"main.f20 /src/main.go:32".to_string(), &2)]
    );
    assert_eq!(table.context_parents.len(), 1);
    let p = &table.context_parents[0];
    assert_eq!(
        (
            p.children_map_len,
            p.uncancelled_children,
            p.children_site.as_str()
        ),
        (Some(1161), 3, "main.ctx500 /src/ctx.go:1280")
    );
    // The parent was created before attach: its site is unknown.
    assert_eq!(p.parent_site, None);
}

#[test]
fn no_context_records_no_context_views() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let table = t.update(
        &obs(1, vec![g(1, SITE_A)], Some(kernel(&[], &[]))),
        &FakeBinary,
    );
    assert!(table.contexts.is_empty() && table.context_parents.is_empty());
}

// ---------------------------------------------------------------------------------------
// Where goroutines block.

/// The fake binary's code for stacks: a pc names its frames, innermost first (several
/// when calls are inlined there).
fn fake_frames(pc: u64) -> Vec<SourceLoc> {
    let l = |function: &str, file: &str, line: u32| SourceLoc {
        function: function.into(),
        file: file.into(),
        line,
    };
    match pc {
        0x100 => vec![l("runtime.gopark", "/go/runtime/proc.go", 435)],
        0x101 => vec![l("runtime.chanrecv", "/go/runtime/chan.go", 664)],
        // `main.helper` inlined into `main.worker`.
        0x102 => vec![
            l("main.helper", "/src/main.go", 50),
            l("main.worker", "/src/main.go", 60),
        ],
        0x103 => vec![l("runtime.goexit", "/go/runtime/asm_amd64.s", 1700)],
        0x104 => vec![l("main.worker", "/src/main.go", 61)],
        0x105 => vec![l("sync.(*Mutex).Lock", "/go/sync/mutex.go", 46)],
        0x106 => vec![l("github.com/acme/pool.(*Pool).Get", "/mod/pool.go", 9)],
        0x107 => vec![l("main.Map[go.shape.int]", "/src/generic.go", 3)],
        0x200 => vec![l(
            "internal/poll.(*FD).Read",
            "/go/internal/poll/fd_unix.go",
            165,
        )],
        0x201 => vec![l("net.(*conn).Read", "/go/net/net.go", 194)],
        0x202 => vec![l("net/http.(*conn).serve", "/go/net/http/server.go", 2000)],
        0x300 => vec![l("runtime.goparkunlock", "/go/runtime/proc.go", 441)],
        0x301 => vec![l("runtime.bgsweep", "/go/runtime/mgcsweep.go", 300)],
        // A second return address on the same line as 0x104.
        0x404 => vec![l("main.worker", "/src/main.go", 61)],
        pc => vec![l(&format!("main.f{pc:x}"), "/src/main.go", pc as u32)],
    }
}

fn stack(pcs: &[u64]) -> std::sync::Arc<crate::intake::Stack> {
    std::sync::Arc::new(crate::intake::Stack {
        pcs: pcs.to_vec(),
        truncated: false,
    })
}

fn with_stacks(
    mut o: Observation,
    stacks: &[(u64, &std::sync::Arc<crate::intake::Stack>)],
) -> Observation {
    for (goid, s) in stacks {
        o.stacks.insert(*goid, (*s).clone());
    }
    o
}

/// Goroutines with one stack are one group, most goroutines first, named like the
/// runtime's traceback (inlined calls expanded), with the blocking line outside the
/// standard library; stopped goroutines without a stack are counted as unread; sites
/// with no stack read have no entry.
#[test]
fn stacks_grouped_per_site_with_their_blocking_line() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let recv = stack(&[0x100, 0x101, 0x102, 0x103]);
    let lock = stack(&[0x100, 0x105, 0x104, 0x103]);
    let inv = vec![
        g(1, SITE_A),
        g(2, SITE_A),
        g(3, SITE_A),
        g(4, SITE_A),
        g(5, SITE_A),
        running(6, SITE_A),
        g(7, SITE_B),
    ];
    let o = with_stacks(
        obs(1, inv, None),
        &[(3, &recv), (1, &recv), (2, &recv), (4, &lock)],
    );
    let table = t.update(&o, &FakeBinary);
    assert_eq!(table.blocking.len(), 1, "{:#?}", table.blocking);
    let b = table.blocking_of(SITE_A).expect("site A");
    assert_eq!(b.site, "main.f10 /src/main.go:16");
    assert_eq!((b.read, b.unread, b.other_stacks), (4, 1, 0));
    assert_eq!(b.stacks.len(), 2);
    let s = &b.stacks[0];
    assert_eq!(s.count, 3);
    assert_eq!(s.blocked_at, "main.helper /src/main.go:50");
    assert_eq!(
        s.frames,
        [
            "runtime.gopark /go/runtime/proc.go:435",
            "runtime.chanrecv /go/runtime/chan.go:664",
            "main.helper /src/main.go:50",
            "main.worker /src/main.go:60",
            "runtime.goexit /go/runtime/asm_amd64.s:1700",
        ]
    );
    assert_eq!(s.sample_goids, [1, 2, 3]);
    assert_eq!(s.states.get("chan receive"), Some(&3));
    assert_eq!(b.stacks[1].count, 1);
    assert_eq!(b.stacks[1].blocked_at, "main.worker /src/main.go:61");
    assert_eq!(b.blocked_at(), Some("main.helper /src/main.go:50"));
    assert_eq!(
        table.blocked_at(site(&table, SITE_A)),
        Some("main.helper /src/main.go:50")
    );
    assert_eq!(table.blocked_at(site(&table, SITE_B)), None);
    // Without stacks, no entry (and nothing kept).
    let table = t.update(&obs(2, vec![g(1, SITE_A)], None), &FakeBinary);
    assert!(table.blocking.is_empty());
}

/// Stacks that differ only in return addresses on the same lines are one group; past
/// ten groups the rest are counted.
#[test]
fn same_lines_one_group_and_at_most_ten_groups() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let a = stack(&[0x100, 0x104, 0x103]);
    let b = stack(&[0x100, 0x404, 0x103]);
    let mut inv = vec![g(1, SITE_A), g(2, SITE_A)];
    let others: Vec<_> = (0..12u64).map(|i| stack(&[0x100, 0x1000 + i])).collect();
    let mut stacks = vec![(1, &a), (2, &b)];
    for (i, s) in others.iter().enumerate() {
        inv.push(g(100 + i as u64, SITE_A));
        stacks.push((100 + i as u64, s));
    }
    let table = t.update(&with_stacks(obs(1, inv, None), &stacks), &FakeBinary);
    let b = table.blocking_of(SITE_A).unwrap();
    assert_eq!(b.stacks[0].count, 2);
    assert_eq!(b.stacks[0].sample_goids, [1, 2]);
    assert_eq!(b.stacks.len(), 10);
    assert_eq!((b.other_stacks, b.other_goroutines), (3, 3));
    assert_eq!(b.read, 14);
}

/// The blocking line: outside the standard library (a module path has a dot, `main`
/// is the program's); in stacks of the standard library only, outside `runtime.` and
/// `internal/`; in the runtime's own goroutines, below the parking functions. Generic
/// functions are named as tracebacks print them.
#[test]
fn blocking_line_rules() {
    use super::blocking::{blocking_line, is_standard, package_of, print_name};
    let names = |pcs: &[u64]| -> Vec<SourceLoc> {
        FakeBinary
            .stack_frames(pcs)
            .into_iter()
            .map(|l| SourceLoc {
                function: print_name(&l.function),
                ..l
            })
            .collect()
    };
    let at = |pcs: &[u64]| names(pcs)[blocking_line(&names(pcs))].to_string();
    assert_eq!(
        at(&[0x100, 0x105, 0x106, 0x104]),
        "github.com/acme/pool.(*Pool).Get /mod/pool.go:9"
    );
    assert_eq!(
        at(&[0x100, 0x200, 0x201, 0x202, 0x103]),
        "net.(*conn).Read /go/net/net.go:194"
    );
    assert_eq!(
        at(&[0x100, 0x300, 0x301, 0x103]),
        "runtime.bgsweep /go/runtime/mgcsweep.go:300"
    );
    assert_eq!(at(&[0x100, 0x107]), "main.Map[...] /src/generic.go:3");
    assert_eq!(package_of("github.com/a/b.(*T).M"), "github.com/a/b");
    assert_eq!(package_of("net/http.(*conn).serve"), "net/http");
    assert_eq!(package_of("main.main.func1"), "main");
    assert_eq!(
        package_of("example.com/m/v2.F[go.shape.*uint8]"),
        "example.com/m/v2"
    );
    assert!(is_standard("internal/poll.(*FD).Read"));
    assert!(is_standard("sync.(*WaitGroup).Wait"));
    assert!(!is_standard("main.main"));
    assert!(!is_standard("gopkg.in/yaml%2ev3.(*parser).parse"));
}

/// Without goroutine views (the daemon), a table is the same but for its goroutine list:
/// sites, states, ages and sample goids come from the per-site sums.
#[test]
fn tables_without_goroutine_views_are_the_same_but_for_the_list() {
    let attach = obs(0, vec![g(9, SITE_A), g(3, SITE_A), g(1, SITE_A)], None);
    let refresh = || {
        let inv = vec![
            g(1, SITE_A),
            g(3, SITE_A),
            g(4, SITE_B),
            running(5, SITE_B),
            g(6, SITE_B),
            g(8, SITE_A),
            g(7, SITE_A),
            g(2, SITE_A),
            running(11, SITE_A),
        ];
        let k = kernel(
            &[
                (4, SITE_B, 8),
                (5, SITE_B, 8),
                (6, SITE_B, 9),
                (7, SITE_A, 2),
            ],
            &[(SITE_B, &[1, 3])],
        );
        obs(10, inv, Some(k))
    };
    let mut with = Tracker::new(meta(), &attach, &FakeBinary);
    let mut without = Tracker::new(meta(), &attach, &FakeBinary);
    without.set_keep_goroutines(false);
    let a = with.update(&refresh(), &FakeBinary);
    let b = without.update(&refresh(), &FakeBinary);
    assert_eq!(a.goroutines.len(), 6);
    assert!(b.goroutines.is_empty());
    assert_eq!(a.sites, b.sites);
    assert_eq!(a.states, b.states);
    assert_eq!(
        a.states,
        [("chan receive".to_string(), 5), ("running".to_string(), 1)].into()
    );
    assert_eq!(a.live, 6);
    let s = site(&b, SITE_A);
    // 1 and 3 alive since attach (10 s, a lower bound), 7 created at 2 s; 8, 2 and 11
    // neither alive at attach nor seen created: not counted yet.
    assert_eq!(s.sample_goids, [1, 3, 7]);
    assert_eq!(
        (s.oldest_age_seconds, s.oldest_age_is_lower_bound),
        (10.0, true)
    );
    assert_eq!(s.ages.at_least(9.0), 2);
    // Goroutine 9 exited: forgotten, a new 9 later would not count as alive at attach.
    let mut c = Tracker::new(meta(), &attach, &FakeBinary);
    let t = c.update(
        &obs(5, vec![g(1, SITE_A)], Some(kernel(&[], &[]))),
        &FakeBinary,
    );
    assert_eq!(t.live, 1);
    let t = c.update(
        &obs(6, vec![g(1, SITE_A), g(9, SITE_A)], Some(kernel(&[], &[]))),
        &FakeBinary,
    );
    assert_eq!(t.live, 1, "{:?}", t.goroutines);
}

/// "Created by": goroutines counted by their creator's creation site; a creator that is
/// gone (or unknown: parent goid 0) leaves them with no creator site.
#[test]
fn site_edges_by_the_creators_site() {
    let mut t = Tracker::new(meta(), &obs(0, vec![], None), &FakeBinary);
    let child = |goid, gopc, parent| G {
        parent_goid: parent,
        ..g(goid, gopc)
    };
    let table = t.update(
        &obs(
            1,
            vec![
                // goroutine 10 (site A) created 3 goroutines at B and 20 (site B) one at C;
                // goroutine 99 is gone: its 2 goroutines at C have no creator site.
                child(10, SITE_A, 1),
                child(11, SITE_B, 10),
                child(12, SITE_B, 10),
                child(20, SITE_B, 10),
                child(21, SITE_C, 20),
                child(22, SITE_C, 99),
                child(23, SITE_C, 99),
                child(24, SITE_C, 0),
            ],
            None,
        ),
        &FakeBinary,
    );
    let edges: Vec<(Option<u64>, u64, u64)> = table
        .site_edges
        .iter()
        .map(|e| (e.from, e.to, e.goroutines))
        .collect();
    assert_eq!(
        edges,
        [
            (Some(SITE_A), SITE_B, 3),
            (None, SITE_C, 3),
            (None, SITE_A, 1),
            (Some(SITE_B), SITE_C, 1),
        ]
    );
}
