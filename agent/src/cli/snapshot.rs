//! `goroscope snapshot --pid N`: goroutines grouped by creation site, read from the
//! process's memory (no probes). With `--observe SECONDS`, the probes are attached for
//! that long first, which adds per-site creation/exit counts and the contexts. Each
//! site shows where its goroutines block: their distinct stacks, read from outside. Over
//! an observation window the leak model judges the sites (30 s or more covers its
//! fastest scale).

use anyhow::{bail, Result};

use std::time::{Duration, Instant};

use crate::clock::mono_ns;
use crate::detect::leak::{LeakConfig, LeakDetector};
use crate::export::ProcessReport;
use crate::intake::StackInterest;
use crate::session::{Session, Target};

pub fn run(pid: u32, json: bool, observe: Option<f64>) -> Result<()> {
    // With an observation window the leak model judges the sites over it (refreshed every
    // second): a window of 30 s covers its fastest scale.
    let mut detector = LeakDetector::new(LeakConfig::default());
    let mut s = match observe {
        None => Session::inventory_only(pid)?,
        Some(secs) => {
            let d = super::check_interval("observe", secs)?;
            let mut s = Session::attach(Target::Pid(pid), goroscope_common::DEFAULT_MAX_LIVE)?;
            eprintln!("goroscope: observing pid {pid} for {:.1}s", d.as_secs_f64());
            let end = Instant::now() + d;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                std::thread::sleep(left.min(Duration::from_secs(1)));
                if Instant::now() < end {
                    detector.observe(mono_ns(), &s.refresh()?);
                }
            }
            s
        }
    };
    // Every stopped goroutine's stack, to say where they block.
    s.set_stack_interest_all(StackInterest::All);
    // One refresh: every stopped goroutine's stack in it (the per-refresh bound is for
    // the daemon, which reads the rest at its next refreshes).
    s.set_stack_budget_all(Some(usize::MAX));
    let tables = s.refresh()?;
    let verdicts = detector.observe(mono_ns(), &tables);
    let (Some(t), Some(v)) = (tables.into_iter().next(), verdicts.into_iter().next()) else {
        bail!("process {pid} exited");
    };
    if let Some(e) = &t.inventory_error {
        bail!("pid {pid}: {e}");
    }
    let observed = observe.is_some();
    if json {
        // The table, and with an observation window the suspected leaks.
        let report = ProcessReport {
            table: t,
            verdicts: v.sites,
            context_verdicts: v.contexts,
            other: None,
        };
        let mut j = serde_json::to_value(&report.table)?;
        if observed {
            j["suspected_leaks"] = serde_json::to_value(report.suspicions())?;
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!("{}", super::render::snapshot(&t, observed, Some(&v)));
    }
    Ok(())
}
