//! Processes on this host: identity (pid + start time, so a reused pid is not mistaken
//! for the old process), executable, load bias, and reading their memory.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
        PathBuf::from(format!("/proc/{}/exe", self.pid))
    }
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

/// Processes running the file at `exe`, or a binary they see at the path `exe` in their
/// own mount namespace (a container: `/proc/PID/exe` reads as that path there), with the
/// (device, inode) of the binary each runs.
pub fn pids_running(exe: &Path) -> Vec<(u32, (u64, u64))> {
    let here = fs::metadata(exe).ok().map(|m| (m.dev(), m.ino()));
    let mut pids: Vec<(u32, (u64, u64))> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let link = format!("/proc/{pid}/exe");
            let m = fs::metadata(&link).ok()?;
            let ident = (m.dev(), m.ino());
            (Some(ident) == here || fs::read_link(&link).is_ok_and(|p| p == exe))
                .then_some((pid, ident))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Checks that `pid` exists, with a message an SRE can act on.
pub fn check_pid(pid: u32) -> Result<ProcessId> {
    if pid == 0 {
        bail!("--pid must be a process id, not 0");
    }
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
    let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
    let exe = exe.to_string_lossy();
    let exe = exe.trim_end_matches(" (deleted)");
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

/// Reads another process's memory with `process_vm_readv` (needs ptrace permission on
/// it: same user, or CAP_SYS_PTRACE).
pub struct ProcMem {
    pid: libc::pid_t,
}

impl ProcMem {
    pub fn new(pid: u32) -> ProcMem {
        ProcMem {
            pid: pid as libc::pid_t,
        }
    }

    /// Fills `buf` from `addr`; a short read is an error.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_many(&mut [(addr, buf)])
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Several reads in one system call (at most 1024 at once, IOV_MAX).
    pub fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> io::Result<()> {
        for chunk in reads.chunks_mut(1024) {
            let local: Vec<libc::iovec> = chunk
                .iter_mut()
                .map(|(_, b)| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|(a, b)| libc::iovec {
                    iov_base: *a as usize as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            let want: usize = chunk.iter().map(|(_, b)| b.len()).sum();
            // SAFETY: every local iovec points into a live, exclusively borrowed buffer of
            // the stated length; the remote iovecs are only read by the kernel, which
            // checks them against the target's address space.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n as usize != want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read from pid {}: {n} of {want} bytes", self.pid),
                ));
            }
        }
        Ok(())
    }
}
