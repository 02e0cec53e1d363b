//! Go toolchain versions as recorded in `.go.buildinfo` (`go1.21.13`, `go1.22rc1`,
//! `go1.23.4 X:boringcrypto`, `devel go1.24-abcdef …`).

use std::fmt;

/// Oldest Go release goroscope supports.
pub const MIN_SUPPORTED: GoVersion = GoVersion {
    major: 1,
    minor: 19,
    patch: 0,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// Parses the version string found in buildinfo. Returns `None` when no
    /// `goMAJOR.MINOR` can be found in it.
    pub fn parse(s: &str) -> Option<GoVersion> {
        // "devel go1.24-abc" and "go1.21.13 X:exp" both carry a "goX.Y" word.
        let word = s.split_whitespace().find(|w| w.starts_with("go"))?;
        let rest = &word[2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let mut parts = rest[..end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }

    /// `1.21`: the release line whose runtime layout this version shares.
    pub fn line(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    pub fn is_supported(&self) -> bool {
        *self >= MIN_SUPPORTED
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_rc_devel_and_experiments() {
        let v = |s| GoVersion::parse(s).map(|v| (v.major, v.minor, v.patch));
        assert_eq!(v("go1.21.13"), Some((1, 21, 13)));
        assert_eq!(v("go1.22rc1"), Some((1, 22, 0)));
        assert_eq!(v("go1.23.4 X:boringcrypto"), Some((1, 23, 4)));
        assert_eq!(v("devel go1.24-abcdef Tue"), Some((1, 24, 0)));
        assert_eq!(v("weird"), None);
        assert!(!GoVersion::parse("go1.18.10").unwrap().is_supported());
        assert!(GoVersion::parse("go1.19.8").unwrap().is_supported());
    }
}
