//! Bad input gets a one-line error and a non-zero exit, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use goroscope::gobin::{self, BinaryError};
use integration_tests::{fixture, goroscope_bin};

fn tmp(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("goroscope-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn churn(minor: u32, variant: &str) -> Vec<u8> {
    std::fs::read(fixture(minor, "churn", variant).path).unwrap()
}

/// A churn build; `nobuildinfo` is the stripped one without its build info.
fn variant_data(minor: u32, variant: &str) -> Vec<u8> {
    match variant {
        "nobuildinfo" => without_buildinfo(churn(minor, "stripped")),
        v => churn(minor, v),
    }
}

/// Runs the CLI and checks: exit code 2, exactly one line on stderr containing `needle`.
fn cli_error(path: &Path, needle: &str) {
    let out = Command::new(goroscope_bin())
        .arg("inspect-binary")
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
    assert!(out.stdout.is_empty());
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("goroscope: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn missing_file() {
    let p = Path::new("/nonexistent/goroscope/app");
    assert!(matches!(gobin::analyze(p), Err(BinaryError::Io { .. })));
    cli_error(p, "No such file or directory");
}

#[test]
fn directory() {
    let p = std::env::temp_dir();
    assert!(matches!(
        gobin::analyze(&p),
        Err(BinaryError::IsDirectory(_))
    ));
    cli_error(&p, "is a directory, not a Go binary");
}

#[test]
fn not_elf_and_empty() {
    for (name, data) in [("text", &b"#!/bin/sh\necho hi\n"[..]), ("empty", &b""[..])] {
        let p = tmp(name, data);
        assert!(
            matches!(gobin::analyze(&p), Err(BinaryError::NotElf(_))),
            "{name}"
        );
        cli_error(&p, "not an ELF file");
    }
}

#[test]
fn elf_that_is_not_go() {
    let p = Path::new("/bin/true");
    assert!(matches!(gobin::analyze(p), Err(BinaryError::NotGo(_))));
    cli_error(p, "ELF file is not a Go program");
}

#[test]
fn unsupported_elf_kinds() {
    let base = churn(21, "default");
    // (byte offset, new value, expected message)
    for (off, val, needle) in [
        (4usize, 1u8, "32-bit ELF"),
        (5, 2, "big-endian ELF"),
        (18, 183, "architecture arm64"),
    ] {
        let mut d = base.clone();
        d[off] = val;
        if off == 18 {
            d[19] = 0;
        }
        let p = tmp(&format!("elf-{off}"), &d);
        let e = gobin::analyze(&p).err().expect("must fail");
        assert!(matches!(e, BinaryError::UnsupportedElf { .. }), "{e}");
        cli_error(&p, needle);
    }
}

#[test]
fn go_older_than_1_19() {
    // A 1.21 build whose recorded version says 1.18.
    let mut d = churn(21, "default");
    let pos = buildinfo_version(&d);
    assert_eq!(&d[pos..pos + 9], b"go1.21.13");
    d[pos..pos + 9].copy_from_slice(b"go1.18.13");
    let p = tmp("go118", &d);
    let e = gobin::analyze(&p).err().expect("must fail");
    assert!(matches!(e, BinaryError::UnsupportedGoVersion { .. }), "{e}");
    cli_error(&p, "unsupported Go version go1.18.13");
    cli_error(&p, "goroscope supports Go 1.19 and newer");

    // A version that disagrees with the function table's format: corrupt, not a guess.
    d[pos..pos + 9].copy_from_slice(b"go1.19.13");
    let p = tmp("go119-table120", &d);
    cli_error(&p, "version go1.19.13 disagrees with its function table, whose format is that of Go 1.20 or newer");

    // No build info and a Go 1.16–1.17 table: an old toolchain.
    let mut d = churn(21, "stripped");
    let pos = buildinfo_version(&d) - 33;
    d[pos..pos + 14].fill(0);
    let pcln = find(&d, &[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
    d[pcln] = 0xfa;
    let p = tmp("go116", &d);
    cli_error(&p, "unsupported Go version Go 1.16 or 1.17");
}

/// Offset of the Go version's text in `.go.buildinfo` (uvarint length at +32, text at
/// +33).
fn buildinfo_version(d: &[u8]) -> usize {
    find(d, b"\xff Go buildinf:") + 33
}

fn find(d: &[u8], needle: &[u8]) -> usize {
    d.windows(needle.len())
        .position(|w| w == needle)
        .expect("pattern in the binary")
}

/// `data` without its build info (the magic wiped), as some release pipelines ship Go
/// binaries (esbuild's npm package has no `.go.buildinfo`).
fn without_buildinfo(mut data: Vec<u8>) -> Vec<u8> {
    let pos = buildinfo_version(&data) - 33;
    data[pos..pos + 14].fill(0);
    data
}

/// Without build info the version comes from `runtime.buildVersion`: by symbol, or found
/// through `runtime.schedinit` in stripped builds; nothing calls the binary corrupt.
#[test]
fn version_without_buildinfo() {
    for (minor, variant, source) in [
        (
            19,
            "stripped",
            "runtime.buildVersion, found in runtime.schedinit",
        ),
        (21, "extpie", "runtime.buildVersion symbol"),
        (
            27,
            "stripped",
            "runtime.buildVersion, found in runtime.schedinit",
        ),
        (24, "staticpie", "runtime.buildVersion symbol"),
    ] {
        let f = fixture(minor, "churn", variant);
        let p = tmp(
            &format!("nobuildinfo-{minor}-{variant}"),
            &without_buildinfo(std::fs::read(&f.path).unwrap()),
        );
        let a = gobin::analyze(&p).unwrap_or_else(|e| panic!("{e}"));
        let recorded = gobin::analyze(&f.path).unwrap().go_version;
        assert_eq!(a.go_version, recorded, "{}", p.display());
        assert_eq!(a.version_source, source, "{}", p.display());
        assert_eq!((a.module, a.main_path), (None, None));
        assert!(a.missing_sites.is_empty(), "{:?}", a.missing_sites);
    }
}

fn analyze_no_panic(what: &str, data: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        let _ = gobin::analyze_bytes(Path::new(what), data);
    }))
    .map_err(|_| what.to_string())
}

/// Offsets worth hitting: every byte of the ELF header, the first bytes of each section
/// that goroscope reads, and a spread over the whole file.
fn interesting_offsets(data: &[u8], stride: usize) -> Vec<usize> {
    use object::{Object, ObjectSection};
    let mut offs: Vec<usize> = (0..64).collect();
    let file = object::File::parse(data).unwrap();
    for name in [
        ".go.buildinfo",
        ".gopclntab",
        ".data.rel.ro.gopclntab",
        ".data.rel.ro",
        ".go.module",
        ".noptrdata",
        ".debug_info",
        ".debug_abbrev",
        ".text",
    ] {
        if let Some(s) = file.section_by_name(name) {
            if let Some((start, size)) = s.file_range() {
                let start = start as usize;
                offs.extend((start..start + 96.min(size as usize)).step_by(1));
                offs.extend((start..start + size as usize).step_by((size as usize / 40).max(1)));
            }
        }
    }
    offs.extend((0..data.len()).step_by(stride));
    offs.retain(|&o| o < data.len());
    offs.sort_unstable();
    offs.dedup();
    offs
}

#[test]
fn truncated_binaries_fail_cleanly() {
    for (minor, variant) in [
        (21, "default"),
        (24, "pie"),
        (27, "stripped"),
        (21, "extpie"),
        (24, "staticpie"),
        (19, "extstripped"),
        (27, "nobuildinfo"),
    ] {
        let data = variant_data(minor, variant);
        let mut panics = Vec::new();
        let mut cuts = interesting_offsets(&data, data.len() / 150);
        cuts.push(data.len() - 1);
        for cut in cuts {
            let what = format!("go1.{minor} {variant} cut at {cut:#x}");
            match catch_unwind(AssertUnwindSafe(|| {
                gobin::analyze_bytes(Path::new(&what), &data[..cut])
            })) {
                Err(_) => panics.push(what),
                Ok(r) => assert!(r.is_err(), "{what}: a truncated binary was accepted"),
            }
        }
        assert!(panics.is_empty(), "panicked: {panics:?}");
    }
}

#[test]
fn flipped_bytes_never_panic() {
    // (build, stride, every how many offsets: an analysis takes 30–60 ms in a debug
    // build, so the later builds try a quarter of theirs.) One thread per build.
    let builds = [
        (21, "stripped", 2039, 1),
        (27, "stripped", 2039, 1),
        (24, "default", 60_000, 1),
        (21, "extpie", 60_000, 4),
        (19, "staticpie", 60_000, 4),
        (27, "nobuildinfo", 4093, 4),
    ];
    let panics: Vec<String> = std::thread::scope(|scope| {
        let threads: Vec<_> = builds
            .iter()
            .map(|&(minor, variant, stride, every)| {
                scope.spawn(move || {
                    let data = variant_data(minor, variant);
                    let offs = interesting_offsets(&data, stride);
                    assert!(offs.len() > 300, "{}", offs.len());
                    let mut panics = Vec::new();
                    for &off in offs.iter().step_by(every) {
                        let mut d = data.clone();
                        d[off] ^= 0xff;
                        let what = format!("go1.{minor} {variant} flip {off:#x}");
                        if let Err(p) = analyze_no_panic(&what, &d) {
                            panics.push(p);
                        }
                    }
                    panics
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("fuzz thread"))
            .collect()
    });
    assert!(panics.is_empty(), "panicked: {panics:?}");
}

/// A truncated binary through the CLI: one line, exit 2.
#[test]
fn cli_on_truncated_binary() {
    let data = churn(27, "default");
    let p = tmp("cut", &data[..data.len() / 2]);
    cli_error(&p, "corrupt or truncated Go binary");
}
