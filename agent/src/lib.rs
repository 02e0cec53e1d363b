//! goroscope: watches goroutines and contexts inside live Go programs with eBPF.
//!
//! Userspace is split by concern: [`gobin`] (binary analysis) → [`probe`] (loading and
//! attaching the kernel programs) → [`session`]/[`tracker`] (goroutine tables) → [`leak`] (the leak model) →
//! [`exporter`] (metrics and HTTP), run by [`daemon`].

pub mod cli;
pub mod config;
pub mod contexts;
pub mod daemon;
pub mod exporter;
pub mod gobin;
pub mod inventory;
pub mod leak;
pub mod probe;
pub mod process;
pub mod session;
pub mod tracker;
