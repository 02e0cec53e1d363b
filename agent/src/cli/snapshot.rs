//! `goroscope snapshot --pid N`: goroutines grouped by creation site, read from the
//! process's memory (no probes). With `--observe SECONDS`, the probes are attached for
//! that long first, which adds per-site creation/exit counts and the contexts. Each
//! site shows where its goroutines block: their distinct stacks, read from outside.

use anyhow::{bail, Result};

use crate::intake::StackInterest;
use crate::session::{Session, Target};

pub fn run(pid: u32, json: bool, observe: Option<f64>) -> Result<()> {
    let mut s = match observe {
        None => Session::inventory_only(pid)?,
        Some(secs) => {
            let d = super::check_interval("observe", secs)?;
            let s = Session::attach(Target::Pid(pid), goroscope_common::DEFAULT_MAX_LIVE)?;
            eprintln!("goroscope: observing pid {pid} for {:.1}s", d.as_secs_f64());
            std::thread::sleep(d);
            s
        }
    };
    // Every stopped goroutine's stack, to say where they block.
    s.set_stack_interest_all(StackInterest::All);
    // One refresh: every stopped goroutine's stack in it (the per-refresh bound is for
    // the daemon, which reads the rest at its next refreshes).
    s.set_stack_budget_all(Some(usize::MAX));
    let tables = s.refresh()?;
    let Some(t) = tables.first() else {
        bail!("process {pid} exited");
    };
    if let Some(e) = &t.inventory_error {
        bail!("pid {pid}: {e}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(t)?);
    } else {
        print!("{}", super::render::snapshot(t, observe.is_some()));
    }
    Ok(())
}
