//! `cargo xtask lint` and `cargo xtask test` (what CI runs).

use anyhow::Result;

use crate::project::{cargo_in_root, fixtures_dir, run, step};
use crate::{fixtures, setup};

/// `cargo fmt --check` and `cargo clippy --workspace --all-targets -- -D warnings`.
pub fn lint() -> Result<()> {
    step("cargo fmt --check");
    run(&mut cargo_in_root(&["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy --all-targets -- -D warnings");
    run(&mut cargo_in_root(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Setup, fixtures, lint (unless `no_lint`), then `cargo test --workspace CARGO_ARGS`.
pub fn test(no_lint: bool, cargo_args: &[String]) -> Result<()> {
    setup::all()?;
    fixtures::build()?;
    if !no_lint {
        lint()?;
    }
    // The CLI tests run target/debug/goroscope, which `cargo test` of another package
    // does not rebuild.
    step("cargo build -p goroscope");
    run(&mut cargo_in_root(&[
        "build",
        "-p",
        "goroscope",
        "--bin",
        "goroscope",
    ]))?;
    step("cargo test --workspace");
    run(cargo_in_root(&["test", "--workspace"])
        .args(cargo_args)
        .env("GOROSCOPE_FIXTURES", fixtures_dir()))
}
