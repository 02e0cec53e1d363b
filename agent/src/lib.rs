//! goroscope: watches goroutines and contexts inside live Go programs with eBPF.
//!
//! The crate in data-flow order:
//! - [`gobin`]: binary analysis (version, functions and lines, runtime struct layouts,
//!   runtime variables, where the probes go);
//! - [`probe`]: the kernel programs: loading, attaching, reading their maps;
//! - [`discover`] and [`process`]: which processes to trace, and who a process is
//!   (pid + start time, executable, load bias); discovery decorates, never decides;
//! - [`intake`]: one [`intake::Observation`] per process per refresh: the kernel's
//!   records and what is read from the process's memory;
//! - [`track`]: pure merge of observations into [`model::ProcessTable`]s (unit-tested
//!   without root);
//! - [`model`]: the tables and views every later stage reads;
//! - [`session`]: a tracing session (probes + processes), refreshed on demand;
//! - [`detect`]: the leak model's verdicts;
//! - [`export`]: metrics, the HTTP server (and, later, a JSON API for a UI);
//! - [`daemon`]: `goroscope run` (config, refresher, server);
//! - [`cli`]: the other commands (`top`, `snapshot`, `watch`, `inspect-binary`).
//!
//! [`clock`] is the kernel's clock (CLOCK_MONOTONIC).

pub mod cli;
pub mod clock;
pub mod daemon;
pub mod detect;
pub mod discover;
pub mod export;
pub mod gobin;
pub mod intake;
pub mod model;
pub mod probe;
pub mod process;
pub mod session;
#[cfg(test)]
mod testdir;
pub mod track;
