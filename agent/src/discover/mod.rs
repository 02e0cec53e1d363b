//! Finding the processes to trace. Today: the processes that run a given executable,
//! on this host or inside a container (their own mount namespace). Process discovery
//! (every Go process on the node) and container/pod identity will be stages here: they
//! decorate and select processes, they never decide what a goroutine is.

pub mod cri;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::process::exe_link;

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
            let link = exe_link(pid);
            let m = fs::metadata(&link).ok()?;
            let ident = (m.dev(), m.ino());
            (Some(ident) == here || fs::read_link(&link).is_ok_and(|p| p == exe))
                .then_some((pid, ident))
        })
        .collect();
    pids.sort_unstable();
    pids
}
