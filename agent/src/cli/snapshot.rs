//! `goroscope snapshot --pid N`: goroutines grouped by creation site, read from the
//! process's memory (no probes).

use anyhow::{bail, Result};

use crate::session::Session;

pub fn run(pid: u32, json: bool) -> Result<()> {
    let mut s = Session::inventory_only(pid)?;
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
        print!("{}", super::render::snapshot(t));
    }
    Ok(())
}
