use std::path::PathBuf;

/// Why a file could not be analysed. Every variant renders as one line meant for an SRE.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    /// The source is in the message, not chained, so it is printed once.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}: is a directory, not a Go binary")]
    IsDirectory(PathBuf),
    #[error("{0}: not an ELF file")]
    NotElf(PathBuf),
    #[error(
        "{path}: unsupported ELF: {what} (goroscope supports 64-bit little-endian x86-64 ELF)"
    )]
    UnsupportedElf { path: PathBuf, what: String },
    #[error("{0}: ELF file is not a Go program (no Go build info and no Go function table)")]
    NotGo(PathBuf),
    #[error("{path}: unsupported Go version {found}: goroscope supports Go 1.19 and newer")]
    UnsupportedGoVersion { path: PathBuf, found: String },
    #[error("{path}: corrupt or truncated Go binary: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
}

/// Internal parse error before the path is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    pub fn new(what: impl Into<String>) -> Self {
        Malformed(what.into())
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type PResult<T> = Result<T, Malformed>;

/// Bounds-checked little-endian reads from a byte slice.
pub trait Bytes {
    fn sub(&self, off: usize, len: usize) -> PResult<&[u8]>;
    fn u8_at(&self, off: usize) -> PResult<u8>;
    fn u32_at(&self, off: usize) -> PResult<u32>;
    fn u64_at(&self, off: usize) -> PResult<u64>;
    /// NUL-terminated string starting at `off`.
    fn cstr_at(&self, off: usize) -> PResult<&str>;
}

impl Bytes for [u8] {
    fn sub(&self, off: usize, len: usize) -> PResult<&[u8]> {
        off.checked_add(len)
            .and_then(|end| self.get(off..end))
            .ok_or_else(|| Malformed::new(format!("read of {len} bytes at {off:#x} out of bounds")))
    }
    fn u8_at(&self, off: usize) -> PResult<u8> {
        Ok(self.sub(off, 1)?[0])
    }
    fn u32_at(&self, off: usize) -> PResult<u32> {
        let b = self.sub(off, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64_at(&self, off: usize) -> PResult<u64> {
        let b = self.sub(off, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn cstr_at(&self, off: usize) -> PResult<&str> {
        let rest = self
            .get(off..)
            .ok_or_else(|| Malformed::new(format!("string at {off:#x} out of bounds")))?;
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| Malformed::new(format!("unterminated string at {off:#x}")))?;
        std::str::from_utf8(&rest[..len])
            .map_err(|_| Malformed::new(format!("string at {off:#x} is not UTF-8")))
    }
}

/// Reads an unsigned LEB128 varint (as used by Go's pclntab and buildinfo).
pub fn uvarint(data: &[u8], pos: &mut usize) -> PResult<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = data.u8_at(*pos)?;
        *pos += 1;
        if shift >= 64 {
            return Err(Malformed::new("varint overflows 64 bits"));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}
