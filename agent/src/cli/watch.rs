//! `goroscope watch --pid N`: goroutines created and exited per interval.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::model::Totals;
use crate::session::{Session, Target};

pub fn run(pid: u32, interval: f64, duration: Option<f64>) -> Result<()> {
    let interval = super::check_interval("interval", interval)?;
    // Goroutines only: the context probes would cost the program without adding a column.
    let mut session =
        Session::attach_with(Target::Pid(pid), goroscope_common::DEFAULT_MAX_LIVE, false)?;
    let first = session.refresh()?;
    let t = first
        .first()
        .with_context(|| format!("process {pid} exited"))?;
    eprintln!(
        "goroscope: watching pid {pid} ({}, {}); Ctrl-C to stop",
        t.exe, t.go_version
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10}",
        "seconds", "created", "exited", "net"
    );
    let totals = |t: Option<&Totals>| t.cloned().unwrap_or_default();
    let start = Instant::now();
    let mut last = totals(t.counters.as_ref());
    loop {
        std::thread::sleep(interval);
        let tables = session.refresh()?;
        let Some(t) = tables.first() else {
            eprintln!("goroscope: process {pid} exited");
            return Ok(());
        };
        let now = totals(t.counters.as_ref());
        let created = now.created - last.created;
        let exited = now.exited - last.exited;
        println!(
            "{:>8.1} {:>12} {:>12} {:>+10}",
            start.elapsed().as_secs_f64(),
            created,
            exited,
            created as i64 - exited as i64
        );
        last = now;
        if duration.is_some_and(|d| start.elapsed() >= Duration::from_secs_f64(d)) {
            return Ok(());
        }
    }
}
