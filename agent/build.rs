//! Builds the kernel programs (`ebpf/goroscope-ebpf`) for `bpfel-unknown-none` and hands
//! the object to the agent through `GOROSCOPE_BPF_OBJECT`, so `cargo build` alone yields
//! a complete agent.
//!
//! The BPF crate is compiled with Debian's rustc (`/usr/bin/rustc`, package `rustc-web`),
//! which ships a prebuilt `core` for the BPF target, with `RUSTC_BOOTSTRAP=1` because
//! aya-ebpf uses an unstable feature, and linked by `bpf-linker`. `cargo xtask setup`
//! installs all of these. Override the compiler with `GOROSCOPE_BPF_RUSTC`.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf();
    let ebpf = root.join("ebpf/goroscope-ebpf");
    for p in [
        "ebpf/goroscope-ebpf/src",
        "ebpf/goroscope-ebpf/Cargo.toml",
        "ebpf/goroscope-ebpf/Cargo.lock",
        "ebpf/goroscope-common/src",
        "ebpf/goroscope-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=GOROSCOPE_BPF_RUSTC");

    let rustc = env::var_os("GOROSCOPE_BPF_RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/rustc"));
    if !rustc.exists() {
        fail(&format!(
            "the BPF programs need Debian's rustc at {} (package rustc-web) with \
             libstd-rust-web-dev-bpf and bpf-linker: run `cargo xtask setup`",
            rustc.display()
        ));
    }

    // One BPF target dir shared by all profiles of the agent (debug, release, clippy).
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("bpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut path = env::var_os("PATH").unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        paths.push(Path::new(&home).join("bin"));
        path = env::join_paths(paths).expect("PATH");
    }

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1");
    // Nothing of the outer build (clippy wrapper, host flags, jobserver) may leak in.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC_")
            || k == "RUSTFLAGS"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("RUSTC_BOOTSTRAP", "1");
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("running cargo for the BPF programs: {e}")));
    if !status.success() {
        fail("building the BPF programs failed (see above); `cargo xtask setup` installs the toolchain");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/goroscope");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("goroscope.bpf.o");
    std::fs::copy(&obj, &out).unwrap_or_else(|e| fail(&format!("copying {}: {e}", obj.display())));
    println!("cargo:rustc-env=GOROSCOPE_BPF_OBJECT={}", out.display());
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
