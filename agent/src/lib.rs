//! goroscope: watches goroutines and contexts inside live Go programs with eBPF.
//!
//! Userspace is split by concern: [`gobin`] (binary analysis) → [`probe`] (loading and
//! attaching the kernel programs) → … (tracking, leak detection, exporters: later).

pub mod cli;
pub mod gobin;
pub mod inventory;
pub mod probe;
pub mod process;
pub mod session;
pub mod tracker;
