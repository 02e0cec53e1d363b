//! Source lines for the workbench: a link to the exact revision on a well-known forge,
//! built from what the binary recorded (`.go.buildinfo`: module path, version,
//! `vcs.revision`; file names from `.gopclntab`), and the lines themselves from a local
//! checkout the operator names (`--source-root`). Nothing here fetches anything.

use std::path::{Component, Path, PathBuf};

use crate::model::BuildSource;

/// Forges whose web UI shows a file at a revision, by host: repositories are
/// `host/owner/repo`.
const FORGES: &[(&str, Forge)] = &[
    ("github.com", Forge::GitHub),
    ("gitlab.com", Forge::GitLab),
    ("bitbucket.org", Forge::Bitbucket),
    ("codeberg.org", Forge::Gitea),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forge {
    GitHub,
    GitLab,
    Bitbucket,
    Gitea,
}

/// A file of a repository at a revision.
struct RepoFile<'a> {
    /// `host/owner/repo`.
    repo: String,
    forge: Forge,
    revision: &'a str,
    /// Path inside the repository.
    path: String,
}

impl RepoFile<'_> {
    fn url(&self, line: u32) -> String {
        let RepoFile {
            repo,
            revision,
            path,
            ..
        } = self;
        match self.forge {
            Forge::GitHub => format!("https://{repo}/blob/{revision}/{path}#L{line}"),
            Forge::GitLab => format!("https://{repo}/-/blob/{revision}/{path}#L{line}"),
            Forge::Bitbucket => format!("https://{repo}/src/{revision}/{path}#lines-{line}"),
            Forge::Gitea => format!("https://{repo}/src/commit/{revision}/{path}#L{line}"),
        }
    }
}

/// `(repository, forge, directory of the module inside it)` of a module path on a known
/// forge (`golang.org/x/NAME` is mirrored at `github.com/golang/NAME`). A last element
/// `vN` (major version suffix) is not taken as a directory: most modules put `v2` on a
/// branch, not in a subdirectory.
fn repo_of(module: &str) -> Option<(String, Forge, String)> {
    let module = match module.strip_prefix("golang.org/x/") {
        Some(name) => format!("github.com/golang/{name}"),
        None => module.to_string(),
    };
    let mut parts = module.split('/');
    let (host, owner, repo) = (parts.next()?, parts.next()?, parts.next()?);
    let forge = FORGES.iter().find(|(h, _)| *h == host)?.1;
    let mut dir: Vec<&str> = parts.collect();
    if dir.last().is_some_and(|v| {
        v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit())
    }) {
        dir.pop();
    }
    Some((format!("{host}/{owner}/{repo}"), forge, dir.join("/")))
}

/// The revision a version names: a tag (`v1.2.3`, `v1.2.3+incompatible` less its suffix),
/// or the commit of a pseudo-version (`v0.0.0-20240102150405-abcdef123456`); None for
/// `(devel)`.
fn revision_of(version: &str) -> Option<&str> {
    if !version.starts_with('v') {
        return None;
    }
    let version = version.strip_suffix("+incompatible").unwrap_or(version);
    // A pseudo-version ends with `-yyyymmddhhmmss-commit` (12 hex digits).
    if let Some((head, commit)) = version.rsplit_once('-') {
        if commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some((_, stamp)) = head.rsplit_once(['-', '.']) {
                if stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(commit);
                }
            }
        }
    }
    Some(version)
}

/// Joins a module directory inside the repository and a path inside the module.
fn in_repo(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    }
}

/// The web link to `file:line` at the exact revision, for files of the main module (at
/// its `vcs.revision`, or the commit or tag its version names), of a dependency module
/// (file names in the module cache: `…/pkg/mod/host/owner/repo@version/…`, or
/// `host/owner/repo@version/…` with `-trimpath`) and of the standard library (at the
/// Go release's tag). None when the file is none of these or its forge is not known.
pub fn source_url(build: &BuildSource, function: &str, file: &str, line: u32) -> Option<String> {
    main_module_file(build, file)
        .or_else(|| dependency_file(file))
        .or_else(|| std_file(build, function, file))
        .map(|f| f.url(line))
}

fn main_module_file<'a>(build: &'a BuildSource, file: &str) -> Option<RepoFile<'a>> {
    let rel = file
        .strip_prefix(build.module_root.as_deref()?)?
        .strip_prefix('/')?;
    let (repo, forge, dir) = repo_of(build.module.as_deref()?)?;
    let revision = build
        .revision
        .as_deref()
        .or_else(|| revision_of(build.module_version.as_deref()?))?;
    Some(RepoFile {
        repo,
        forge,
        revision,
        path: in_repo(&dir, rel),
    })
}

fn dependency_file(file: &str) -> Option<RepoFile<'_>> {
    // `host/owner/repo[/sub]@version/path`, after `/pkg/mod/` or at the start.
    let tail = match file.find("/pkg/mod/") {
        Some(i) => &file[i + "/pkg/mod/".len()..],
        None => file,
    };
    let (module, rest) = tail.split_once('@')?;
    let (version, rel) = rest.split_once('/')?;
    // The module cache escapes capitals (`!a` for `A`).
    let module = unescape_module(module)?;
    let (repo, forge, dir) = repo_of(&module)?;
    Some(RepoFile {
        repo,
        forge,
        revision: revision_of(version)?,
        path: in_repo(&dir, rel),
    })
}

fn unescape_module(m: &str) -> Option<String> {
    let mut out = String::with_capacity(m.len());
    let mut bang = false;
    for c in m.chars() {
        match (bang, c) {
            (false, '!') => bang = true,
            (true, c) if c.is_ascii_lowercase() => {
                out.push(c.to_ascii_uppercase());
                bang = false;
            }
            (true, _) => return None,
            (false, c) => out.push(c),
        }
    }
    (!bang).then_some(out)
}

/// A standard library file (`…/src/<package path>/file.go` of a function whose package's
/// first element has no dot) at the release tag, in the Go repository's GitHub mirror.
fn std_file<'a>(build: &'a BuildSource, function: &str, file: &str) -> Option<RepoFile<'a>> {
    let pkg_path = package_path(function)?;
    if pkg_path.split('/').next()?.contains('.') || pkg_path == "main" {
        return None;
    }
    let version = build.go_version.as_str();
    // Release tags only (`go1.27.3`); `devel` builds and experiments (` X:…`) have none.
    if !version.starts_with("go1.") || version.contains(' ') {
        return None;
    }
    let needle = format!("/src/{pkg_path}/");
    let i = file.rfind(&needle)?;
    Some(RepoFile {
        repo: "github.com/golang/go".into(),
        forge: Forge::GitHub,
        revision: version,
        path: file[i + 1..].to_string(),
    })
}

/// The import path of a function's package: `net/http.(*conn).serve` → `net/http`,
/// `runtime.gopark` → `runtime`.
fn package_path(function: &str) -> Option<&str> {
    let last_slash = function.rfind('/').map_or(0, |i| i + 1);
    let dot = function[last_slash..].find('.')? + last_slash;
    Some(&function[..dot])
}

/// Lines around one line of a file, read from the source root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Excerpt {
    /// The file as the binary names it.
    pub file: String,
    /// Where it was found.
    pub path: String,
    pub line: u32,
    pub first_line: u32,
    pub lines: Vec<String>,
}

/// Why no excerpt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    NoRoot,
    NotFound,
    Unreadable(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::NoRoot => write!(f, "no source root configured (--source-root)"),
            SourceError::NotFound => write!(f, "not found under the source root"),
            SourceError::Unreadable(e) => write!(f, "cannot read it: {e}"),
        }
    }
}

/// Source files bigger than this are not shown.
const MAX_FILE_BYTES: u64 = 8 << 20;
/// Lines shown on each side of the line asked for, at most.
pub const MAX_CONTEXT_LINES: u32 = 200;

/// Where `file` (a name from the binary) is under `root`: for a file of the main module,
/// its path inside the module (`root` is a checkout of the module); otherwise the
/// longest trailing part of its name that exists under `root` (`root` holds the sources
/// in another layout, e.g. a GOPATH or a vendor tree), at least its directory and name
/// (a bare `main.go` would find another program's). Only regular files inside `root`
/// (symbolic links resolved) are returned.
pub fn locate(root: &Path, build: &BuildSource, file: &str) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    let in_module = build
        .module_root
        .as_deref()
        .and_then(|r| file.strip_prefix(r)?.strip_prefix('/'));
    let parts: Vec<&str> = file.split('/').filter(|p| !p.is_empty()).collect();
    let candidates = in_module
        .into_iter()
        .map(str::to_string)
        .chain((0..parts.len().saturating_sub(1).max(1)).map(|i| parts[i..].join("/")));
    for rel in candidates {
        let rel = Path::new(&rel);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            continue;
        }
        let Ok(p) = root.join(rel).canonicalize() else {
            continue;
        };
        if p.starts_with(&root) && p.is_file() {
            return Some(p);
        }
    }
    None
}

/// The lines `line - context ..= line + context` of `file` found under `root`.
pub fn excerpt(
    root: Option<&Path>,
    build: &BuildSource,
    file: &str,
    line: u32,
    context: u32,
) -> Result<Excerpt, SourceError> {
    let root = root.ok_or(SourceError::NoRoot)?;
    let path = locate(root, build, file).ok_or(SourceError::NotFound)?;
    let meta = std::fs::metadata(&path).map_err(|e| SourceError::Unreadable(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(SourceError::Unreadable(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} shown",
            meta.len()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| SourceError::Unreadable(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let context = context.min(MAX_CONTEXT_LINES);
    let first_line = line.saturating_sub(context).max(1);
    let last = line.saturating_add(context);
    let lines = text
        .lines()
        .skip(first_line as usize - 1)
        .take((last - first_line + 1) as usize)
        .map(str::to_string)
        .collect();
    Ok(Excerpt {
        file: file.to_string(),
        path: path.display().to_string(),
        line,
        first_line,
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(module: &str, version: &str, revision: Option<&str>, root: &str) -> BuildSource {
        BuildSource {
            go_version: "go1.27.3".into(),
            module: Some(module.into()),
            module_version: Some(version.into()),
            revision: revision.map(str::to_string),
            modified: Some(false),
            module_root: Some(root.into()),
        }
    }

    #[test]
    fn main_module_files_link_to_the_vcs_revision() {
        let b = build(
            "github.com/acme/shop/api",
            "(devel)",
            Some("0123abcd"),
            "/src/shop/api",
        );
        assert_eq!(
            source_url(&b, "main.main", "/src/shop/api/cmd/server/main.go", 28).as_deref(),
            Some("https://github.com/acme/shop/blob/0123abcd/api/cmd/server/main.go#L28")
        );
        // -trimpath: the root is the module path.
        let b = build(
            "gitlab.com/acme/shop/v2",
            "v2.1.0",
            None,
            "gitlab.com/acme/shop/v2",
        );
        assert_eq!(
            source_url(&b, "main.main", "gitlab.com/acme/shop/v2/main.go", 7).as_deref(),
            Some("https://gitlab.com/acme/shop/-/blob/v2.1.0/main.go#L7")
        );
        // A local build with no VCS information: no revision, no link.
        let b = build("github.com/acme/shop", "(devel)", None, "/src/shop");
        assert_eq!(source_url(&b, "main.main", "/src/shop/main.go", 1), None);
        // A module on no known forge.
        let b = build("goroscope.test/fixtures", "(devel)", Some("abc"), "/src");
        assert_eq!(source_url(&b, "main.main", "/src/leaky/main.go", 1), None);
    }

    #[test]
    fn dependencies_link_to_their_version_and_std_to_the_release() {
        let b = BuildSource {
            go_version: "go1.27.3".into(),
            ..Default::default()
        };
        assert_eq!(
            source_url(
                &b,
                "github.com/BurntSushi/toml.Decode",
                "/root/go/pkg/mod/github.com/!burnt!sushi/toml@v1.3.2/decode.go",
                40
            )
            .as_deref(),
            Some("https://github.com/BurntSushi/toml/blob/v1.3.2/decode.go#L40")
        );
        assert_eq!(
            source_url(
                &b,
                "golang.org/x/sync/errgroup.(*Group).Go",
                "golang.org/x/sync@v0.0.0-20240102150405-abcdef123456/errgroup/errgroup.go",
                9
            )
            .as_deref(),
            Some("https://github.com/golang/sync/blob/abcdef123456/errgroup/errgroup.go#L9")
        );
        assert_eq!(
            source_url(
                &b,
                "net/http.(*conn).serve",
                "/usr/lib/go/src/net/http/server.go",
                2100
            )
            .as_deref(),
            Some("https://github.com/golang/go/blob/go1.27.3/src/net/http/server.go#L2100")
        );
        assert_eq!(package_path("runtime.gopark"), Some("runtime"));
        assert_eq!(
            package_path("example.com/a/b.(*T).m"),
            Some("example.com/a/b")
        );
    }

    #[test]
    fn excerpts_come_from_inside_the_source_root_only() {
        let dir = crate::testdir::Dir::new("source");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        dir.write("checkout/leaky/main.go", &text);
        dir.write("secret.go", "no");
        let root = dir.0.join("checkout");
        let b = build(
            "goroscope.test/fixtures",
            "(devel)",
            None,
            "/build/fixtures",
        );
        // The main module's file, by its path in the module.
        let e = excerpt(Some(&root), &b, "/build/fixtures/leaky/main.go", 28, 2).unwrap();
        assert_eq!((e.first_line, e.line), (26, 28));
        assert_eq!(
            e.lines,
            ["line 26", "line 27", "line 28", "line 29", "line 30"]
        );
        // Another file, by the longest trailing part of its name found.
        let e = excerpt(
            Some(&root),
            &BuildSource::default(),
            "/x/y/leaky/main.go",
            1,
            1,
        )
        .unwrap();
        assert_eq!((e.first_line, e.lines.len()), (1, 2));
        // Nothing outside the root, whatever the name.
        for f in ["/build/fixtures/../secret.go", "../secret.go", "/secret.go"] {
            assert_eq!(
                excerpt(Some(&root), &b, f, 1, 1),
                Err(SourceError::NotFound),
                "{f}"
            );
        }
        assert_eq!(excerpt(None, &b, "/a.go", 1, 1), Err(SourceError::NoRoot));
    }
}
