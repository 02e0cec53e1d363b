//! Helpers for goroscope's integration tests: the Go fixture builds (made by
//! `cargo xtask fixtures`), driving fixture processes, and the BPF privilege gate;
//! [`containerd`]: a private containerd making real pods over CRI; [`real`]: real Go
//! programs nobody here wrote and their own tracebacks, the oracle of
//! tests/tests/real_binaries.rs.

pub mod containerd;

pub mod deploy;
pub mod prometheus;
pub mod real;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// One built fixture binary.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Go version that built it, e.g. `1.21.13` (or `1.19` for Debian's old toolchain).
    pub go: String,
    pub name: String,
    /// `default`, `stripped` (`-ldflags=-s -w`) or `pie` (`-buildmode=pie`).
    pub variant: String,
    pub path: PathBuf,
}

impl Fixture {
    /// `(major, minor)` of the Go version.
    pub fn line(&self) -> (u32, u32) {
        let mut it = self.go.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// Every fixture build listed in the manifest written by `cargo xtask fixtures`.
pub fn fixtures() -> Vec<Fixture> {
    let dir = std::env::var_os("GOROSCOPE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/fixtures"));
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the Go fixtures are not built; run `cargo xtask test` (or `cargo xtask fixtures`)",
            manifest.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    v.as_array()
        .expect("manifest is a list")
        .iter()
        .map(|f| Fixture {
            go: f["go"].as_str().expect("go").to_string(),
            name: f["name"].as_str().expect("name").to_string(),
            variant: f["variant"].as_str().expect("variant").to_string(),
            path: PathBuf::from(f["path"].as_str().expect("path")),
        })
        .collect()
}

/// The main matrix of fixture `name`: Go 1.21–1.27 built by Go's own linker (default,
/// stripped, PIE). See [`builds`] for every build (Go 1.19, the external linker).
pub fn supported(name: &str) -> Vec<Fixture> {
    fixtures()
        .into_iter()
        .filter(|f| {
            f.name == name
                && f.line() >= (1, 21)
                && ["default", "stripped", "pie"].contains(&f.variant.as_str())
        })
        .collect()
}

/// Every build of fixture `name`: all Go versions (1.19 from Debian included) and all
/// variants (`extpie`, `staticpie`, `extstripped` by the external linker included).
pub fn builds(name: &str) -> Vec<Fixture> {
    fixtures().into_iter().filter(|f| f.name == name).collect()
}

/// The fixture `name`/`variant` built by the newest Go of the `1.MINOR` line.
pub fn fixture(minor: u32, name: &str, variant: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|f| f.line() == (1, minor) && f.name == name && f.variant == variant)
        .unwrap_or_else(|| panic!("no fixture {name}-{variant} for Go 1.{minor} in the manifest"))
}

/// Path of the `goroscope` binary built alongside the tests.
pub fn goroscope_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/goroscope
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("goroscope");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} not built: run `cargo xtask test`", bin.display()));
    let root = workspace_root();
    for dir in [
        "agent/src",
        "agent/build.rs",
        "ebpf/goroscope-ebpf/src",
        "ebpf/goroscope-common/src",
    ] {
        if let Some(newer) = newest_mtime(&root.join(dir)).filter(|t| *t > built) {
            panic!(
                "{} is older than {dir} ({newer:?}): run `cargo build -p goroscope` \
                 (`cargo xtask test` does)",
                bin.display()
            );
        }
    }
    bin
}

fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Runs `goroscope ARGS`, asserts success, and returns what it printed.
pub fn goroscope_text(args: &[&str]) -> String {
    let out = Command::new(goroscope_bin())
        .args(args)
        .output()
        .expect("run goroscope");
    assert!(
        out.status.success(),
        "goroscope {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("goroscope printed UTF-8")
}

/// Runs `goroscope ARGS --json`, asserts success, and returns the parsed output.
pub fn goroscope_json(args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    serde_json::from_str(&goroscope_text(&args)).expect("goroscope printed JSON")
}

/// Source line (1-based) of the first line of `file` containing `needle`.
pub fn line_of(file: &Path, needle: &str) -> u32 {
    let text = std::fs::read_to_string(file).expect("fixture source");
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", file.display()))
}

pub fn fixture_source(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures/go")
        .join(name)
        .join("main.go")
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether BPF tests can run. In CI (`CI=true`) a missing privilege is a failure, never
/// a skip; elsewhere the test is skipped with a loud message.
pub fn bpf_allowed(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: BPF tests must run in CI but this process is not root");
    }
    eprintln!(
        "\n!!! SKIPPED {test}: not root, cannot load BPF programs (run as root to test) !!!\n"
    );
    false
}

/// A running fixture, driven over stdin/stdout (see each fixture's main.go). Dropping
/// it kills the process if it is still running: tests stop only what they started.
pub struct Churn {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub pid: u32,
    /// The fixture's first line, `ready <pid> …`.
    pub ready: String,
}

const LINE_TIMEOUT: Duration = Duration::from_secs(60);

impl Churn {
    pub fn start(path: &Path) -> Churn {
        Churn::start_with(Command::new(path))
    }

    /// Starts a fixture through `cmd` (which must end up exec'ing it, same pid).
    pub fn start_with(cmd: Command) -> Churn {
        let c = Churn::start_any(cmd);
        let words: Vec<&str> = c.ready.split_whitespace().collect();
        assert_eq!(
            words[..2],
            ["ready", &c.pid.to_string()],
            "unexpected first line"
        );
        c
    }

    /// Starts a fixture through `cmd`, which may run it as a child (e.g. `unshare
    /// --fork`): `pid` is then that of `cmd`, not of the fixture.
    pub fn start_any(mut cmd: Command) -> Churn {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut c = Churn {
            pid: child.id(),
            child,
            stdin,
            lines,
            ready: String::new(),
        };
        c.ready = c.line();
        assert!(
            c.ready.starts_with("ready "),
            "unexpected first line {:?}",
            c.ready
        );
        c
    }

    /// Sends one command line and returns the reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush");
        self.line()
    }

    pub fn line(&mut self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("fixture did not print the expected line in time")
    }

    /// `churn`: starts `n` goroutines and waits until the program says they finished.
    pub fn spawn(&mut self, n: u64) {
        assert_eq!(self.cmd(&format!("go {n}")), format!("done {n}"));
    }

    /// Closes stdin and waits for the program to say goodbye and exit.
    pub fn finish(self) -> ExitStatus {
        let (last, status) = self.finish_with();
        assert_eq!(last, "bye");
        status
    }

    /// Closes stdin, waits for the program's last line and its exit.
    pub fn finish_with(mut self) -> (String, ExitStatus) {
        drop(self.stdin.take());
        let last = self.line();
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (last, status);
            }
            assert!(Instant::now() < deadline, "fixture did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response read by [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A GET of `http://ADDR/PATH` (with `Accept: ACCEPT` if given); any status is a
/// response, only a failed exchange is an error. Plain HTTP, no proxy, no connection
/// kept between calls, at most 30 s of silence per read.
pub fn http_get(addr: &str, path: &str, accept: Option<&str>) -> std::io::Result<HttpResponse> {
    static HTTP: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_idle_connections(0)
            .timeout_per_read(Some(Duration::from_secs(30)))
            .build()
            .new_agent()
    });
    let mut request = http.get(format!("http://{addr}{path}"));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let mut response = request.call().map_err(ureq::Error::into_io)?;
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes());
            (n.as_str().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(ureq::Error::into_io)?;
    Ok(HttpResponse {
        status: response.status().as_u16(),
        headers,
        body,
    })
}

/// A free TCP port on loopback (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind loopback")
        .port()
}

/// A `goroscope run` daemon listening on loopback, with JSON logs collected. Dropping it
/// sends SIGTERM to its pid (and SIGKILL if it does not exit).
pub struct Agent {
    child: Child,
    logs: Receiver<String>,
    /// Log lines read so far.
    pub log: Vec<String>,
    /// `127.0.0.1:PORT` of its HTTP server.
    pub addr: String,
}

impl Agent {
    /// Starts `goroscope run ARGS --listen 127.0.0.1:0 --log-format json` and waits until
    /// it says where it listens.
    pub fn start(args: &[&str]) -> Agent {
        let mut child = Command::new(goroscope_bin())
            .arg("run")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start goroscope run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("goroscope: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut a = Agent {
            child,
            logs,
            log: Vec::new(),
            addr: String::new(),
        };
        let addr = a.wait_log("listening", Duration::from_secs(60));
        a.addr = addr["addr"].as_str().expect("addr field").to_string();
        a
    }

    /// Waits for a JSON log line whose message starts with `message`.
    pub fn wait_log(&mut self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.logs.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "goroscope did not log {message:?} in time; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log.join("\n")
                ),
            };
            self.log.push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
            {
                return v;
            }
        }
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(&self.addr, path, None).expect("GET from goroscope")
    }

    /// The JSON log lines logged since the last call (or [`Agent::wait_log`]), without
    /// waiting; they are also kept in `log`.
    pub fn drain_log(&mut self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(line) = self.logs.try_recv() {
            self.log.push(line.clone());
            if let Ok(v) = serde_json::from_str(&line) {
                out.push(v);
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(s)) = self.child.try_wait() {
            return s;
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One sample of Prometheus text: `(name, labels, value)`.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses Prometheus text.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut ls = Vec::new();
        let mut rest = labels;
        while let Some((k, v)) = rest.split_once("=\"") {
            // Values in tests have no escaped quotes.
            let (val, tail) = v.split_once('"').expect("closing quote");
            ls.push((k.trim_start_matches(',').to_string(), val.to_string()));
            rest = tail;
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().expect("numeric value"),
        };
        out.push((name.to_string(), ls, v));
    }
    out
}

/// The value of label `name` in a sample's labels.
pub fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Value of metric `name` of process `pid` for the blockers fixture's site marked
/// `marker` (site label ends with `blockers/main.go:LINE`), with the `extra` labels.
pub fn blockers_site_value(
    samples: &[Sample],
    name: &str,
    pid: u32,
    marker: &str,
    extra: &[(&str, &str)],
) -> Option<f64> {
    let suffix = format!(
        "tests/fixtures/go/blockers/main.go:{}",
        line_of(&fixture_source("blockers"), marker)
    );
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && label(l, "pid") == Some(&pid.to_string())
                && label(l, "site").is_some_and(|s| s.ends_with(&suffix))
                && extra.iter().all(|(k, v)| label(l, k) == Some(v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {suffix}: {found:?}");
    found.first().copied()
}

/// One scrape of the agent's `/metrics`: the text and its samples.
pub fn scrape(agent: &Agent) -> (String, Vec<Sample>) {
    let r = agent.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    let s = parse_metrics(&r.body);
    (r.body, s)
}

/// `unshare --mount ARGS…`: runs `exe` (a path under `seen`) in a new mount namespace
/// where `image` is bind-mounted at `seen`, so the path exists only there (`args`: more
/// namespaces, e.g. `--pid --fork`).
pub fn bind_mounted(image: &Path, seen: &Path, exe: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(args).args([
        "--mount",
        "sh",
        "-c",
        &format!(
            "mount --bind {} {} && exec {}",
            image.display(),
            seen.display(),
            exe.display()
        ),
    ]);
    cmd
}
