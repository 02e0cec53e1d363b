//! `.go.buildinfo`: the Go version and main module recorded by the linker.
//!
//! Layout (Go ≥ 1.18, "inline strings" flag): 14-byte magic `\xff Go buildinf:`, pointer
//! size, flags (bit 1 = inline strings), padding to 32, then two uvarint-length-prefixed
//! strings: the Go version and the module info (`path\t<main package>\nmod\t<module>…`).

use super::error::{uvarint, Bytes, Malformed, PResult};

pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// Version string as recorded, e.g. `go1.21.13`.
    pub go_version: String,
    /// Main package path (`path` line), e.g. `example.com/app/cmd/server`.
    pub main_path: Option<String>,
    /// Main module path (`mod` line).
    pub module: Option<String>,
    /// Main module version (`mod` line's next column: `(devel)` for a local build, or a
    /// version such as `v1.2.3` for `go install path@version`).
    pub module_version: Option<String>,
    /// `build` lines: `(key, value)`, e.g. `("-buildmode", "pie")`, `("CGO_ENABLED", "1")`.
    pub settings: Vec<(String, String)>,
}

/// Why buildinfo could not be read.
pub enum BuildInfoError {
    /// Pre-1.18 pointer format: the toolchain is too old to support.
    PointerFormat,
    Malformed(Malformed),
}

impl From<Malformed> for BuildInfoError {
    fn from(m: Malformed) -> Self {
        BuildInfoError::Malformed(m)
    }
}

/// Finds the buildinfo blob: the `.go.buildinfo` section, or else the magic anywhere in
/// the file at 16-byte alignment (as `debug/buildinfo` does).
pub fn locate(section: Option<&[u8]>, file: &[u8]) -> Option<usize> {
    if let Some(s) = section {
        if s.starts_with(MAGIC) {
            // Offset within the file is recomputed by the caller from the slice.
            return Some(s.as_ptr() as usize - file.as_ptr() as usize);
        }
    }
    file.chunks_exact(16)
        .position(|c| c.starts_with(MAGIC))
        .map(|i| i * 16)
}

pub fn parse(blob: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    if !blob.starts_with(MAGIC) {
        return Err(Malformed::new("buildinfo magic missing").into());
    }
    let ptr_size = blob.u8_at(14)?;
    let flags = blob.u8_at(15)?;
    if flags & 2 == 0 {
        return Err(BuildInfoError::PointerFormat);
    }
    if ptr_size != 8 {
        return Err(Malformed::new(format!("buildinfo pointer size {ptr_size}")).into());
    }
    let mut pos = 32;
    let go_version = String::from_utf8(read_bytes(blob, &mut pos)?.to_vec())
        .map_err(|_| Malformed::new("buildinfo Go version is not UTF-8"))?;
    let modinfo = read_bytes(blob, &mut pos)?;
    // Module info is framed by 16-byte binary sentinels when present.
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[][..]
    };
    let modinfo = String::from_utf8_lossy(modinfo);
    let field = |key: &str| {
        modinfo.lines().find_map(|l| {
            let mut it = l.splitn(3, '\t');
            (it.next() == Some(key)).then(|| it.next().unwrap_or("").to_string())
        })
    };
    let module_version = modinfo.lines().find_map(|l| {
        let mut it = l.split('\t');
        (it.next() == Some("mod"))
            .then(|| it.nth(1).map(str::to_string))
            .flatten()
    });
    let settings = modinfo
        .lines()
        .filter_map(|l| l.strip_prefix("build\t"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(BuildInfo {
        settings,
        main_path: field("path"),
        module: field("mod"),
        module_version,
        go_version,
    })
}

fn read_bytes<'a>(blob: &'a [u8], pos: &mut usize) -> PResult<&'a [u8]> {
    let len = uvarint(blob, pos)?;
    let len = usize::try_from(len).map_err(|_| Malformed::new("buildinfo string length"))?;
    let bytes = blob.sub(*pos, len)?;
    *pos += len;
    Ok(bytes)
}
