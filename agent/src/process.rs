//! Processes on this host: identity (pid + start time, so a reused pid is not mistaken
//! for the old process), executable and load bias. Reading their memory is
//! [`crate::intake::memory`]; finding them, [`crate::discover`].

use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// A process, identified across pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: u32) -> io::Result<ProcessId> {
        Ok(ProcessId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still exists (not just a process with its pid).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid).is_ok_and(|t| t == self.start_time)
    }

    /// `/proc/PID/exe`: opens the process's executable even if it was deleted or
    /// replaced on disk.
    pub fn exe_link(&self) -> PathBuf {
        exe_link(self.pid)
    }
}

/// `/proc/PID/exe` of any pid.
pub fn exe_link(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// The path of `pid`'s executable as the process sees it (in its own mount namespace),
/// without the ` (deleted)` the kernel appends when the file was removed or replaced.
pub fn exe_path(pid: u32) -> io::Result<PathBuf> {
    let link = fs::read_link(exe_link(pid))?;
    Ok(
        match link.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(s) => PathBuf::from(s),
            None => link,
        },
    )
}

/// A process id given by the user: anything but 0.
pub fn nonzero_pid(pid: u32) -> Result<NonZeroU32> {
    NonZeroU32::new(pid).context("--pid must be a process id, not 0")
}

fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    rest.split_whitespace()
        .nth(19) // field 22; `rest` starts at field 3
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
}

/// Checks that `pid` exists, with a message an SRE can act on.
pub fn check_pid(pid: u32) -> Result<ProcessId> {
    nonzero_pid(pid)?;
    let id = ProcessId::of(pid).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow::anyhow!("no process with pid {pid}"),
        _ => anyhow::anyhow!("reading /proc/{pid}: {e}"),
    })?;
    fs::read_link(id.exe_link()).with_context(|| {
        format!("cannot see the executable of pid {pid} (kernel thread, or not permitted)")
    })?;
    Ok(id)
}

/// The load bias of a PIE executable in `pid`: runtime address = link address + bias.
/// Zero for non-PIE executables.
pub fn load_bias(pid: u32, first_load_vaddr: u64, first_load_offset: u64) -> Result<u64> {
    let exe = exe_path(pid)?;
    let exe = exe.to_string_lossy();
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(2).unwrap_or("");
        if path != exe {
            continue;
        }
        let start = u64::from_str_radix(range.split('-').next().unwrap_or(""), 16)?;
        let offset = u64::from_str_radix(offset, 16)?;
        if offset == first_load_offset & !0xfff {
            return Ok(start.wrapping_sub(first_load_vaddr & !0xfff));
        }
    }
    bail!("pid {pid}: executable {exe} not found in /proc/{pid}/maps")
}
