//! Finding the processes to trace, and who they are. A pipeline of stages that select
//! and decorate processes; they never decide what a goroutine is:
//!
//! 1. [`NodeScanner`]: every Go process on the host, by polling `/proc` (the Go verdict
//!    is cached per binary (device, inode), so a scan of 500 processes reads no binary
//!    twice), minus goroscope itself and processes younger than a minimum age;
//! 2. [`container`]: the container a process runs in, from its `/proc/PID/cgroup`;
//! 3. [`cri`]: the pod of that container, from the node's container runtime;
//! 4. [`select`]: the configured include/exclude selectors.
//!
//! Also [`pids_running`]: the processes of one executable (`--exe`).

pub mod container;
pub mod cri;
pub mod select;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object::{Object, ObjectSection};

use crate::process::{exe_link, exe_path, ProcessId};

/// Processes running the file at `exe`, or a binary they see at the path `exe` in their
/// own mount namespace (a container: `/proc/PID/exe` reads as that path there), with the
/// (device, inode) of the binary each runs.
pub fn pids_running(exe: &Path) -> Vec<(u32, (u64, u64))> {
    let here = fs::metadata(exe).ok().map(|m| (m.dev(), m.ino()));
    let mut pids: Vec<(u32, (u64, u64))> = all_pids()
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

fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// A Go process found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: ProcessId,
    /// (device, inode) of the binary it runs.
    pub ident: (u64, u64),
    /// Its executable's path as the process sees it (in its own mount namespace).
    pub exe: PathBuf,
    pub container: Option<container::ContainerRef>,
}

/// What the last scan did (for logs, metrics and the discovery benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScanStats {
    /// Processes with a readable executable (kernel threads have none).
    pub processes: usize,
    /// Of which run a Go binary.
    pub go_processes: usize,
    /// Processes whose executable goroscope may not look at (permission denied: it lacks
    /// CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH), so it cannot tell whether they run Go.
    pub unreadable: usize,
    /// Distinct binaries examined since start (each read once).
    pub binaries_examined: u64,
    /// Go processes traced, excluded by the selectors, whose binary cannot be traced
    /// (e.g. an unsupported Go version), waiting for their pod to be known (filled in by
    /// the session).
    pub traced: usize,
    pub excluded: usize,
    pub untraceable: usize,
    pub waiting_for_pod: usize,
    /// Time the scan took.
    pub seconds: f64,
}

/// Finds the Go processes of the host by polling `/proc`.
#[derive(Debug)]
pub struct NodeScanner {
    /// Go or not, per binary (device, inode), with its modification time (a file
    /// rewritten in place is examined again). Only binaries running at the last scan
    /// are kept.
    verdicts: HashMap<(u64, u64), (i64, bool)>,
    min_age: Duration,
    own_pid: u32,
    stats: ScanStats,
    /// Whether unreadable processes were already reported (once per run of them).
    unreadable_said: bool,
}

/// `/proc/PID/stat` start times are in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;

impl NodeScanner {
    pub fn new(min_age: Duration) -> NodeScanner {
        NodeScanner {
            verdicts: HashMap::new(),
            min_age,
            own_pid: std::process::id(),
            stats: ScanStats::default(),
            unreadable_said: false,
        }
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Whether a process ran the binary (device, inode) at the last scan.
    pub fn running(&self, ident: (u64, u64)) -> bool {
        self.verdicts.contains_key(&ident)
    }

    /// The Go processes of the host old enough to be traced, except goroscope itself
    /// and those `known` already.
    pub fn scan(&mut self, known: impl Fn(ProcessId) -> bool) -> Vec<Candidate> {
        let t0 = Instant::now();
        let uptime = uptime_seconds();
        let mut seen = HashMap::with_capacity(self.verdicts.len());
        let mut out = Vec::new();
        let (mut processes, mut go, mut unreadable) = (0, 0, 0);
        let mut first_denied = None;
        for pid in all_pids() {
            if pid == self.own_pid {
                continue;
            }
            let link = exe_link(pid);
            let m = match fs::metadata(&link) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    unreadable += 1;
                    first_denied.get_or_insert((pid, e));
                    continue;
                }
                Err(_) => continue, // kernel thread, or exited
            };
            processes += 1;
            let ident = (m.dev(), m.ino());
            let is_go = match self.verdicts.get(&ident) {
                Some(&(mtime, v)) if mtime == m.mtime() => v,
                _ => {
                    self.stats.binaries_examined += 1;
                    match go_verdict(&link) {
                        Ok(v) => v,
                        Err(e) => {
                            // Not cached: tried again at the next scan.
                            unreadable += 1;
                            first_denied.get_or_insert((pid, e));
                            continue;
                        }
                    }
                }
            };
            seen.insert(ident, (m.mtime(), is_go));
            if !is_go {
                continue;
            }
            go += 1;
            let Ok(id) = ProcessId::of(pid) else { continue };
            if known(id) {
                continue;
            }
            let age = uptime.map(|u| u - id.start_time as f64 / USER_HZ);
            if age.is_some_and(|a| a < self.min_age.as_secs_f64()) {
                continue;
            }
            let Ok(exe) = exe_path(pid) else {
                continue;
            };
            out.push(Candidate {
                id,
                ident,
                exe,
                container: container::of_pid(pid),
            });
        }
        self.verdicts = seen;
        match first_denied {
            Some((pid, e)) if !self.unreadable_said => {
                tracing::warn!(
                    processes = unreadable,
                    example_pid = pid,
                    "processes whose executable cannot be examined ({e}): they are not traced; \
                     goroscope needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH \
                     (goroscope_discovery_processes{{kind=\"unreadable\"}})"
                );
                self.unreadable_said = true;
            }
            None => self.unreadable_said = false,
            _ => {}
        }
        self.stats = ScanStats {
            processes,
            go_processes: go,
            unreadable,
            binaries_examined: self.stats.binaries_examined,
            seconds: t0.elapsed().as_secs_f64(),
            ..ScanStats::default()
        };
        out
    }
}

fn uptime_seconds() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether the file is a Go executable: an ELF file with a section only the Go linker
/// writes (`.go.buildinfo`, `.gopclntab`, `.note.go.buildid`; external linking and
/// stripping keep at least one). Reads the ELF and section headers only. An error when
/// the file cannot be opened (e.g. permission denied), so that a binary goroscope may not
/// read is not mistaken for a non-Go one.
fn go_verdict(path: &Path) -> std::io::Result<bool> {
    let f = fs::File::open(path)?;
    let cache = object::ReadCache::new(f);
    let Ok(obj) = object::File::parse(&cache) else {
        return Ok(false);
    };
    Ok(obj.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_binary_is_not_go() {
        // The test binary itself: ELF, not Go.
        let me = std::env::current_exe().unwrap();
        assert!(!go_verdict(&me).unwrap());
        assert!(go_verdict(Path::new("/nonexistent")).is_err());
        assert!(!go_verdict(Path::new("/proc/self/status")).unwrap());
    }

    #[test]
    fn the_scan_skips_itself_and_non_go_processes() {
        let mut s = NodeScanner::new(Duration::ZERO);
        let found = s.scan(|_| false);
        assert!(found.iter().all(|c| c.id.pid != std::process::id()));
        let st = s.stats();
        assert!(st.processes >= 1, "{st:?}");
        assert!(found.len() <= st.go_processes, "{st:?}");
        // A second scan examines no binary again.
        let examined = st.binaries_examined;
        s.scan(|_| false);
        assert!(s.stats().binaries_examined <= examined + 2);
    }
}
