//! `goroscope bench-attach` (hidden): attaches in one of the benchmark's modes, prints
//! `attached`, keeps attached until stdin closes, then prints a JSON report; a `hits`
//! line on stdin prints the probe hits so far (empty programs) or the contexts recorded
//! so far (goroscope). Driven by `cargo xtask bench overhead` and `bench contexts`.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::gobin::{self, Hook};
use crate::probe::{Probes, Program, Scope};
use crate::process;
use crate::session::{ContextMode, Session, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// goroscope as it runs: its programs at its sites, the table refreshed every 5 s.
    Goroscope,
    /// Empty programs at goroscope's sites (the floor).
    Floor,
    /// Empty programs at the first instruction of runtime.newproc1 and runtime.gdestroy
    /// (or goexit0): the usual way.
    Entry,
}

fn rusage() -> (f64, u64) {
    // SAFETY: getrusage fills the zeroed struct we pass; RUSAGE_SELF always exists.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// Which hooks the floor and entry modes attach empty programs to (goroscope mode:
/// `goroutines` leaves the context probes out, like `contexts = false`; `created` is the
/// default context mode, one probe per context; `all` adds the cancel probe, like
/// `context_cancel_probe = true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    Goroutines,
    Contexts,
    /// Goroutine sites and the context creation site (goroscope's default).
    Created,
    /// Goroutine and context sites, creation and cancel.
    All,
}

pub fn run(pid: u32, mode: Mode, hooks: Hooks) -> Result<()> {
    // Each stdin line: `hits` asks for the probe hits so far (one JSON line); closing
    // stdin ends the run.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut refreshes = 0u64;
    let mut contexts_created = 0u64;
    let mut context_hits = serde_json::Map::new();
    let counters = match mode {
        Mode::Goroscope => {
            let contexts = match hooks {
                Hooks::Goroutines => ContextMode::Off,
                Hooks::Created => ContextMode::Created,
                Hooks::Contexts | Hooks::All => ContextMode::CancelProbe,
            };
            let mut s = Session::attach_with(
                Target::Pid(pid),
                goroscope_common::DEFAULT_MAX_LIVE,
                contexts,
            )?;
            println!("attached");
            let created = |t: &[crate::model::ProcessTable]| -> u64 {
                t.iter().flat_map(|t| &t.contexts).map(|c| c.created).sum()
            };
            loop {
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(l) if l == "hits" => {
                        // goroscope's programs do not count hits: the contexts it recorded.
                        let n = created(&s.refresh()?);
                        println!("{}", serde_json::json!({ "contexts_created": n }));
                    }
                    Ok(_) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        s.refresh()?;
                        refreshes += 1;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let t = s
                .refresh()?
                .into_iter()
                .next()
                .context("the process exited")?;
            contexts_created = t.contexts.iter().map(|c| c.created).sum();
            t.counters.unwrap_or_default()
        }
        Mode::Floor | Mode::Entry => {
            let probes = attach_empty(pid, mode, hooks)?;
            println!("attached");
            let hits = |p: &Probes| -> Result<serde_json::Map<String, serde_json::Value>> {
                Ok(p.noop_hits()?
                    .into_iter()
                    .map(|(hook, n)| (hook.name().to_string(), n.into()))
                    .collect())
            };
            while let Ok(l) = rx.recv() {
                if l == "hits" {
                    println!("{}", serde_json::Value::Object(hits(&probes)?));
                }
            }
            context_hits = hits(&probes)?;
            Default::default()
        }
    };
    let (cpu, rss_kb) = rusage();
    println!(
        "{}",
        serde_json::json!({
            "mode": format!("{mode:?}").to_lowercase(),
            "created": counters.created,
            "exited": counters.exited,
            "lost": counters.lost.total(),
            "contexts_created": contexts_created,
            "hits": context_hits,
            "agent_cpu_seconds": cpu,
            "agent_max_rss_kib": rss_kb,
            "refreshes": refreshes,
        })
    );
    Ok(())
}

/// Empty programs at goroscope's sites (`Floor`) or at the entries of the functions
/// holding them (`Entry`: the usual way), for `hooks`; detached when dropped.
fn attach_empty(pid: u32, mode: Mode, hooks: Hooks) -> Result<Probes> {
    let nz = process::nonzero_pid(pid)?;
    let exe = process::exe_link(pid);
    let bin = gobin::analyze(&exe)?;
    let mut p = Probes::load(goroscope_common::DEFAULT_MAX_LIVE)?;
    let hook_set: &[Hook] = match hooks {
        Hooks::Goroutines => &[Hook::GoroutineCreate, Hook::GoroutineExit],
        Hooks::Contexts => &[Hook::ContextCreate, Hook::ContextCancel],
        Hooks::Created => &[
            Hook::GoroutineCreate,
            Hook::GoroutineExit,
            Hook::ContextCreate,
        ],
        Hooks::All => &[
            Hook::GoroutineCreate,
            Hook::GoroutineExit,
            Hook::ContextCreate,
            Hook::ContextCancel,
        ],
    };
    for &hook in hook_set {
        for site in bin.sites_for(hook) {
            let off = match mode {
                Mode::Entry => {
                    let entry = match hook {
                        Hook::GoroutineCreate => {
                            bin.pclntab
                                .by_name("runtime.newproc1")
                                .last()
                                .context("entry function")?
                                .entry
                        }
                        _ => site.function_entry,
                    };
                    site.file_offset - site.address + entry
                }
                _ => site.file_offset,
            };
            p.attach_at(&bin, &exe, site, off, Scope::Pid(nz), Program::Noop)?;
        }
    }
    Ok(p)
}
