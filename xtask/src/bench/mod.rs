//! `cargo xtask bench …` (root): each benchmark drives fixtures and the release agent and
//! writes its results with the shared [`report::Report`] into `target/bench/`.

pub mod contexts;
pub mod discovery;
mod driven;
pub mod overhead;
mod report;
pub mod scale;
pub mod scrape;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::project::{cargo_in_root, is_root, root, run};
use crate::{fixtures, setup};

/// What every benchmark needs: root, positive `(--flag, value)` arguments, Go toolchains
/// and fixtures ready, and the agent built with optimizations; returns the agent's path.
fn prepare(bench: &str, positive: &[(&str, u64)]) -> Result<PathBuf> {
    if !is_root() {
        bail!("the {bench} benchmark attaches BPF programs: run it as root");
    }
    if positive.iter().any(|&(_, v)| v == 0) {
        let flags: Vec<&str> = positive.iter().map(|&(f, _)| f).collect();
        let (last, rest) = flags.split_last().expect("flags to check");
        let list = if rest.is_empty() {
            last.to_string()
        } else {
            format!("{} and {last}", rest.join(", "))
        };
        bail!("{list} must be positive");
    }
    setup::go()?;
    fixtures::build()?;
    run(&mut cargo_in_root(&[
        "build",
        "--release",
        "-q",
        "-p",
        "goroscope",
    ]))?;
    Ok(root().join("target/release/goroscope"))
}

/// Measurements per mode, in the order they were taken.
#[derive(Default)]
struct Samples(HashMap<&'static str, Vec<f64>>);

impl Samples {
    fn push(&mut self, mode: &'static str, v: f64) {
        self.0.entry(mode).or_default().push(v);
    }

    fn runs(&self, mode: &str) -> &[f64] {
        self.0.get(mode).map_or(&[], Vec::as_slice)
    }

    fn sorted(&self, mode: &str) -> Vec<f64> {
        let mut v = self.runs(mode).to_vec();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self, mode: &str) -> f64 {
        median(&mut self.runs(mode).to_vec())
    }
}

/// Sorts `v` and returns its median (the upper one of an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Value of the sample whose name (and labels, if given) are exactly `series` in a
/// Prometheus text.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}
