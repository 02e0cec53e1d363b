//! `cargo xtask fixtures`: builds the Go test programs under `tests/fixtures/go/` for every
//! Go version of the matrix into `target/fixtures/` (incremental: a stamp per binary), and
//! lists them in `target/fixtures/manifest.json` for the integration tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::project::{cache_dir, fixtures_dir, go_bin, root, run, step, GO_MATRIX};

/// Go 1.19 from Debian (what Debian 12's own Go services are built with; no 1.20
/// toolchain can be installed here): `(version, go binary)`; every variant is built.
const OLD_GO: &[(&str, &str)] = &[("1.19", "/usr/lib/go-1.19/bin/go")];

/// Fixtures built only with some Go versions: `(name, versions, all variants)`; without
/// all variants only the default build (the leak model's programs: their answers do not
/// depend on how the binary was built).
const NARROW_FIXTURES: &[(&str, &[&str], bool)] = &[
    ("leaky", &["1.21.13", "1.24.11", "1.27.3"], false),
    ("healthy", &["1.21.13", "1.24.11", "1.27.3"], false),
    ("sites", &["1.26.6"], false),
    ("contexts", &["1.19", "1.21.13", "1.24.11", "1.27.3"], true),
    ("blocking", &["1.19", "1.21.13", "1.24.11", "1.27.3"], true),
    ("ctxbench", &["1.27.3"], false),
    ("scale", &["1.27.3"], false),
    (
        "leakshapes",
        &["1.21.13", "1.24.11", "1.26.6", "1.27.3"],
        false,
    ),
    (
        "starts",
        &["1.19", "1.21.13", "1.22.10", "1.24.11", "1.27.3"],
        false,
    ),
];

/// A build variant: `(name, go build flags, cgo)`.
type Variant = (&'static str, &'static [&'static str], bool);

/// Build variants of every fixture.
const VARIANTS: &[Variant] = &[
    ("default", &[], false),
    ("stripped", &["-ldflags=-s -w"], false),
    ("pie", &["-buildmode=pie"], false),
];

/// Builds by the external linker (gcc), as cgo programs and distro packages are linked:
/// PIE (the pclntab has no section of its own: it sits in `.data.rel.ro`), static-pie
/// (the Docker CLI's way: no relocation for the pclntab's text start), and stripped
/// non-PIE. Only for these fixtures, with every Go version.
const EXTERNAL_VARIANTS: &[Variant] = &[
    (
        "extpie",
        &["-buildmode=pie", "-ldflags=-linkmode=external"],
        true,
    ),
    (
        "staticpie",
        &[
            "-buildmode=pie",
            "-ldflags=-linkmode=external -extldflags=-static-pie",
        ],
        true,
    ),
    ("extstripped", &["-ldflags=-linkmode=external -s -w"], true),
];
const EXTERNAL_FIXTURES: &[&str] = &["blockers", "churn", "cgocallback"];
/// Fixtures that need cgo (`import "C"`): built only with the external variants.
const CGO_ONLY: &[&str] = &["cgocallback"];

/// Extra builds with a `GOEXPERIMENT`: `(fixture, Go version, variant name, experiment)`.
/// Go 1.26's goroutine leak profile (`_Gleaked`) is behind an experiment.
const EXPERIMENT_BUILDS: &[(&str, &str, &str, &str)] =
    &[("leakshapes", "1.26.6", "leakexp", "goroutineleakprofile")];

/// Builds what is missing or stale and writes the manifest.
pub fn build() -> Result<()> {
    let started = Instant::now();
    let src = root().join("tests/fixtures/go");
    let names = fixture_names(&src)?;
    let out_root = fixtures_dir();
    let mut manifest = Vec::new();
    let mut built = 0;
    let toolchains = GO_MATRIX
        .iter()
        .map(|v| (*v, go_bin(v)))
        .chain(OLD_GO.iter().map(|(v, go)| (*v, PathBuf::from(go))));
    for (v, go) in toolchains {
        let out_dir = out_root.join(format!("go{v}"));
        fs::create_dir_all(&out_dir)?;
        for name in &names {
            let hash = source_hash(&src, name)?;
            let narrow = NARROW_FIXTURES.iter().find(|(n, _, _)| n == name);
            if narrow.is_some_and(|(_, versions, _)| !versions.contains(&v)) {
                continue;
            }
            let mut variants: Vec<&Variant> = if CGO_ONLY.contains(&name.as_str()) {
                Vec::new()
            } else if narrow.is_some_and(|(_, _, all)| !all) {
                VARIANTS[..1].iter().collect()
            } else {
                VARIANTS.iter().collect()
            };
            if EXTERNAL_FIXTURES.contains(&name.as_str()) {
                variants.extend(EXTERNAL_VARIANTS);
            }
            let experiments = EXPERIMENT_BUILDS
                .iter()
                .filter(|(n, version, _, _)| n == name && *version == v)
                .map(|(_, _, variant, exp)| ((*variant, &[][..], false), *exp));
            let builds: Vec<(Variant, &str)> = variants
                .into_iter()
                .map(|v| (*v, ""))
                .chain(experiments)
                .collect();
            for (variant, goexperiment) in builds {
                let go_build = GoBuild {
                    go: &go,
                    version: v,
                    src: &src,
                    name,
                    hash,
                    goexperiment,
                };
                let (out, rebuilt) = go_build.variant(&out_dir, &variant)?;
                built += usize::from(rebuilt);
                manifest.push(serde_json::json!({
                    "go": v, "name": name, "variant": variant.0, "path": out,
                }));
            }
        }
    }
    fs::write(
        out_root.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    step(&format!(
        "fixtures: {} binaries ({} rebuilt) in {:.1}s",
        manifest.len(),
        built,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One fixture program built with one Go toolchain.
struct GoBuild<'a> {
    go: &'a Path,
    version: &'a str,
    /// `tests/fixtures/go`, the Go module.
    src: &'a Path,
    name: &'a str,
    /// [`source_hash`] of the program.
    hash: u64,
    /// `GOEXPERIMENT` (empty: none).
    goexperiment: &'a str,
}

impl GoBuild<'_> {
    /// Builds `out_dir/NAME-VARIANT` unless its stamp says it is up to date; returns its
    /// path and whether it was rebuilt.
    fn variant(&self, out_dir: &Path, (variant, flags, cgo): &Variant) -> Result<(PathBuf, bool)> {
        let (v, name) = (self.version, self.name);
        let out = out_dir.join(format!("{name}-{variant}"));
        let stamp = out.with_extension("stamp");
        let cgo_mark = if *cgo { " cgo" } else { "" };
        let exp = if self.goexperiment.is_empty() {
            String::new()
        } else {
            format!(" GOEXPERIMENT={}", self.goexperiment)
        };
        let want = format!("{:016x} {v} {flags:?}{cgo_mark}{exp}", self.hash);
        if out.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
            return Ok((out, false));
        }
        run(Command::new(self.go)
            .current_dir(self.src)
            .args(["build", "-o"])
            .arg(&out)
            .args(*flags)
            .arg(format!("./{name}"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", cache_dir().join("gocache").join(v))
            .env("GOPATH", cache_dir().join("gopath"))
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", if *cgo { "1" } else { "0" })
            .env("GOEXPERIMENT", self.goexperiment))
        .with_context(|| format!("building fixture {name} ({variant}) with Go {v}"))?;
        fs::write(&stamp, &want)?;
        Ok((out, true))
    }
}

/// The programs: directories of `src` with a `main.go`, sorted.
fn fixture_names(src: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in fs::read_dir(src)? {
        let e = e?;
        if e.file_type()?.is_dir() && e.path().join("main.go").exists() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// FNV-1a, for build stamps (stable across Rust versions, unlike `DefaultHasher`).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// Hash of `go.mod` and the program's files (names and contents).
fn source_hash(src: &Path, name: &str) -> Result<u64> {
    let mut h = 0xcbf29ce484222325u64;
    fnv(&mut h, &fs::read(src.join("go.mod"))?);
    let mut files: Vec<PathBuf> = fs::read_dir(src.join(name))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        fnv(&mut h, f.file_name().unwrap_or_default().as_encoded_bytes());
        fnv(&mut h, &fs::read(&f)?);
    }
    Ok(h)
}
