//! `goroscope watch --pid N`: goroutines created and exited per interval.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::gobin::{self, Hook};
use crate::probe::{Probes, Program, Scope};

pub fn run(pid: u32, interval: f64, duration: Option<f64>) -> Result<()> {
    let Some(nz) = NonZeroU32::new(pid) else {
        bail!("--pid must be a process id, not 0");
    };
    let interval = super::check_interval("interval", interval)?;
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let target = std::fs::read_link(&exe).with_context(|| format!("process {pid} not found"))?;
    let bin = gobin::analyze(&exe)?;
    let mut probes = Probes::load(goroscope_common::DEFAULT_MAX_LIVE)?;
    probes.attach(
        &bin,
        &exe,
        &[Hook::GoroutineCreate, Hook::GoroutineExit],
        Scope::Pid(nz),
        Program::Goroscope,
    )?;
    eprintln!(
        "goroscope: watching pid {pid} ({}, {}); Ctrl-C to stop",
        target.display(),
        bin.go_version
    );
    println!(
        "{:>8} {:>12} {:>12} {:>10}",
        "seconds", "created", "exited", "net"
    );
    let start = Instant::now();
    let mut last = probes.totals(pid)?;
    loop {
        std::thread::sleep(interval);
        let now = probes.totals(pid)?;
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
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("goroscope: process {pid} exited");
            return Ok(());
        }
        if duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d) {
            return Ok(());
        }
    }
}
