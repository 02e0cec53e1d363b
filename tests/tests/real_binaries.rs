//! Oracle tests on real Go programs nobody here wrote (issue 11): goroscope's snapshot of
//! a live program against the program's own account of its goroutines, exactly.
//!
//! Each test starts its program (loopback listeners, a temporary directory, stopped by
//! pid), puts light load on it, waits until it is quiet, and compares, per creation site
//! (`created by FUNC` + `FILE:LINE`), the number of goroutines and their start functions,
//! then goroutine by goroutine the site, start function and parent goid (where the
//! traceback prints one), and the states of goroutines that stayed blocked. goroscope's
//! snapshots `a` and `b` bracket the oracle and must agree goroutine for goroutine (else
//! the program moved; retried), so the comparison can be exact.
//!
//! What each oracle includes, and so what is compared:
//! - a SIGQUIT dump (esbuild, buf, lefthook; Go 1.26/1.27) is a runtime throw: whatever
//!   `GOTRACEBACK` says short of `none`, it prints every goroutine, the runtime's own
//!   ("system": GC workers, finalizers…) too, with every frame (`runtime.goexit`, the
//!   `…gowrapN` wrappers). Every goroutine goroscope sees is compared; only goroutine 0
//!   (the scheduler stack of the thread the signal landed on) is left out. The programs
//!   run with `GOTRACEBACK=system` to say so. The start function is the bottom frame above
//!   `runtime.goexit`, a `…gowrapN`/`…-fm` wrapper followed to the frame it calls.
//! - `/debug/pprof/goroutine?debug=2` (prometheus, etcd; Go 1.19) is `runtime.Stack`,
//!   which always prints at the default traceback level whatever `GOTRACEBACK` says: the
//!   runtime leaves out its system goroutines (`runtime.isSystemGoroutine`: started in
//!   package `runtime`, except `runtime.main`) and hides runtime frames and compiler
//!   wrappers (funcID wrapper: Go 1.19's `go f(x)` wrappers, named like closures,
//!   `…funcN`) itself. goroscope's goroutines are compared without the system ones; the
//!   dumping request's own goroutines (its handler and the connection's background reader)
//!   are left out of the oracle; a dump showing another request in flight is retried. The
//!   main goroutine's bottom frame is then `main.main`, below which is `runtime.main` by
//!   construction.
//!
//! Then the probes (prometheus, etcd): `goroscope run --pid` under load, checked against
//! the program's own counts (see `probes_against_own_counts`).
//!
//! A missing program fails with `CI=true`, and is a loud skip elsewhere.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use integration_tests::deploy::TempDir;
use integration_tests::real::{
    around, build_info, compare, is_system_start, pprof_in_handlers, pprof_oracle, pprof_total,
    program, quiet, render_sites, write_files, Comparison, ElfFacts, IdleConn, Lsp, Program,
    Target, View,
};
use integration_tests::{bpf_allowed, free_port, http_get, wait_for, Agent};

const QUIET_GAP: Duration = Duration::from_millis(300);
const QUIET_TIMEOUT: Duration = Duration::from_secs(20);

/// Prints what was compared and asserts that no goroutine blocked in the same wait state
/// in both of goroscope's snapshots is in another state in the oracle.
fn report(what: &str, c: &Comparison) {
    eprintln!(
        "{what}: goroscope matches the oracle: {} goroutines in {} creation sites \
         ({} state differences of goroutines that moved)\n{}",
        c.goroutines,
        c.sites.len(),
        c.state_moves,
        render_sites(&c.sites)
    );
    assert!(
        c.state_mismatches.is_empty(),
        "{what}: states differ for goroutines that stayed put, (goid, oracle, goroscope): {:?}",
        c.state_mismatches
    );
}

/// Waits until the program is quiet, checks it survived goroscope's snapshots, dumps it
/// with SIGQUIT and compares every goroutine.
fn sigquit_oracle(what: &str, target: &mut Target) -> Comparison {
    let (a, b) = quiet(what, target.pid, QUIET_GAP, QUIET_TIMEOUT);
    target.assert_alive("after goroscope's snapshots");
    let dump = target.sigquit();
    let oracle = View::of_traceback(&integration_tests::real::parse_traceback(&dump), false);
    let c = compare(what, &oracle, &a, &b);
    report(what, &c);
    c
}

/// Waits until the program is quiet, then compares goroscope's non-system goroutines with
/// the program's `/debug/pprof/goroutine?debug=2` at `addr`.
fn pprof_oracle_compare(what: &str, target: &mut Target, addr: &str) -> Comparison {
    quiet(what, target.pid, QUIET_GAP, QUIET_TIMEOUT);
    let (gs, a, b) = around(what, target.pid, 10, || pprof_oracle(addr));
    target.assert_alive("after goroscope's snapshots");
    let oracle = View::of_traceback(&gs, true);
    let user = |v: &View| v.filter(|_, e| !is_system_start(&e.start));
    let c = compare(what, &oracle, &user(&a), &user(&b));
    report(what, &c);
    c
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

/// `lefthook run oracle` in a temporary git repository whose hook runs two commands in
/// parallel, each sleeping: lefthook waits on them with `os/exec` goroutines.
#[test]
fn lefthook_snapshot_matches_sigquit_dump() {
    let what = "lefthook_snapshot_matches_sigquit_dump";
    let Some(exe) = program(what, Program::Lefthook) else {
        return;
    };
    let dir = TempDir::new("lefthook");
    git(&dir.0, &["init", "-q", "."]);
    write_files(
        &dir.0,
        &[(
            "lefthook.yml",
            "oracle:\n  parallel: true\n  commands:\n    first:\n      run: sleep 600\n    \
             second:\n      run: sleep 600\n",
        )],
    );
    let mut cmd = Command::new(exe);
    cmd.args(["run", "oracle"])
        .env("GOTRACEBACK", "system")
        .env("NO_COLOR", "1");
    let mut t = Target::start("lefthook", cmd, dir);
    wait_for("lefthook's two commands", Duration::from_secs(30), || {
        t.assert_alive("before its commands ran");
        let sleeping = t
            .children()
            .into_iter()
            .filter(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|s| s == "sleep\n")
            })
            .count();
        (sleeping == 2).then_some(())
    });
    sigquit_oracle(what, &mut t);
}

/// `buf lsp serve` on stdin/stdout: initialize, open a .proto file, hover, complete.
#[test]
fn buf_lsp_snapshot_matches_sigquit_dump() {
    let what = "buf_lsp_snapshot_matches_sigquit_dump";
    let Some(exe) = program(what, Program::Buf) else {
        return;
    };
    let dir = TempDir::new("buf");
    let proto = "syntax = \"proto3\";\n\npackage oracle.v1;\n\n\
                 message Goroutine {\n  uint64 goid = 1;\n  string state = 2;\n}\n";
    write_files(
        &dir.0,
        &[
            ("buf.yaml", "version: v2\n"),
            ("oracle/v1/goroutine.proto", proto),
        ],
    );
    let home = dir.0.join("home");
    let mut cmd = Command::new(exe);
    cmd.args(["lsp", "serve"])
        .env("GOTRACEBACK", "system")
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("BUF_LOG_FORMAT", "text");
    let root = format!("file://{}", dir.0.display());
    let uri = format!("{root}/oracle/v1/goroutine.proto");
    let mut t = Target::start("buf lsp serve", cmd, dir);
    let mut lsp = Lsp::new(&mut t);
    let init = lsp.request(
        "initialize",
        json!({"processId": std::process::id(), "rootUri": root, "capabilities": {},
               "workspaceFolders": [{"uri": root, "name": "oracle"}]}),
    );
    assert!(init["result"]["capabilities"].is_object(), "{init}");
    lsp.notify("initialized", json!({}));
    lsp.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "protobuf", "version": 1, "text": proto}}),
    );
    lsp.until("diagnostics", |m| {
        m["method"] == "textDocument/publishDiagnostics"
    });
    let hover = lsp.request(
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": {"line": 5, "character": 3}}),
    );
    assert!(hover.get("error").is_none(), "{hover}");
    let completion = lsp.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": 6, "character": 3}}),
    );
    assert!(completion.get("error").is_none(), "{completion}");
    sigquit_oracle(what, &mut t);
    drop(lsp);
}

/// `esbuild --serve` of a directory and of a bundled entry point, after a few requests.
#[test]
fn esbuild_serve_snapshot_matches_sigquit_dump() {
    let what = "esbuild_serve_snapshot_matches_sigquit_dump";
    let Some(exe) = program(what, Program::Esbuild) else {
        return;
    };
    let dir = TempDir::new("esbuild");
    write_files(
        &dir.0,
        &[
            ("www/index.html", "<script src=\"out/app.js\"></script>\n"),
            (
                "src/app.ts",
                "import { greet } from './greet';\nconsole.log(greet('oracle'));\n",
            ),
            (
                "src/greet.ts",
                "export const greet = (who: string): string => `hello ${who}`;\n",
            ),
        ],
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(exe);
    cmd.args([
        "src/app.ts",
        "--bundle",
        "--outdir=www/out",
        "--servedir=www",
        &format!("--serve={addr}"),
    ])
    .env("GOTRACEBACK", "system");
    let mut t = Target::start("esbuild", cmd, dir);
    wait_for("esbuild serving", Duration::from_secs(30), || {
        t.assert_alive("before serving");
        http_get(&addr, "/", None).ok().filter(|r| r.status == 200)
    });
    for path in ["/", "/out/app.js", "/out/app.js", "/index.html"] {
        let r = http_get(&addr, path, None).expect("esbuild answers");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let js = http_get(&addr, "/out/app.js", None).unwrap().body;
    assert!(js.contains("hello"), "{js}");
    sigquit_oracle(what, &mut t);
}

/// Debian's Prometheus scraping itself every second, its TSDB in a temporary directory,
/// ready and queried.
fn start_prometheus(exe: &std::path::Path) -> (Target, String) {
    let dir = TempDir::new("prometheus-real");
    let addr = format!("127.0.0.1:{}", free_port());
    write_files(
        &dir.0,
        &[(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['{addr}']\n"
            ),
        )],
    );
    let mut cmd = Command::new(exe);
    cmd.arg(format!(
        "--config.file={}",
        dir.0.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.0.join("data").display()
    ))
    .arg(format!("--web.listen-address={addr}"))
    .env_remove("GOTRACEBACK");
    let mut t = Target::start("prometheus", cmd, dir);
    wait_for(
        "prometheus scraping itself",
        Duration::from_secs(60),
        || {
            t.assert_alive("before it was ready");
            let r = http_get(&addr, "/api/v1/query?query=up", None).ok()?;
            (r.status == 200 && r.body.contains("\"value\"")).then_some(())
        },
    );
    for path in [
        "/api/v1/query?query=go_goroutines",
        "/api/v1/query?query=rate(prometheus_http_requests_total%5B10s%5D)",
        "/api/v1/status/tsdb",
        "/api/v1/targets",
        "/-/healthy",
    ] {
        let r = http_get(&addr, path, None).expect("prometheus answers");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    (t, addr)
}

/// Debian's etcd, one member on loopback, its data in a temporary directory, pprof on,
/// a few keys written and read through the v3 JSON gateway.
fn start_etcd(exe: &std::path::Path) -> (Target, String) {
    let dir = TempDir::new("etcd");
    let client = format!("127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut cmd = Command::new(exe);
    cmd.args(["--name", "oracle", "--enable-pprof", "--data-dir"])
        .arg(dir.0.join("data"))
        .arg(format!("--listen-client-urls=http://{client}"))
        .arg(format!("--advertise-client-urls=http://{client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=oracle={peer}"))
        .env_remove("GOTRACEBACK")
        .env_remove("ETCDCTL_API");
    let mut t = Target::start("etcd", cmd, dir);
    wait_for("etcd healthy", Duration::from_secs(60), || {
        t.assert_alive("before it was healthy");
        let r = http_get(&client, "/health", None).ok()?;
        (r.status == 200 && r.body.contains("true")).then_some(())
    });
    // base64: "oracle" = b3JhY2xl, "goroutines" = Z29yb3V0aW5lcw==
    for i in 0..3 {
        let put = http_post(
            &client,
            "/v3/kv/put",
            &format!("{{\"key\":\"b3JhY2xl\",\"value\":\"Z29yb3V0aW5lcw{i}=\"}}"),
        );
        assert!(put.contains("\"revision\""), "{put}");
        let get = http_post(&client, "/v3/kv/range", "{\"key\":\"b3JhY2xl\"}");
        assert!(get.contains("\"kvs\""), "{get}");
    }
    for path in ["/version", "/health", "/metrics"] {
        let r = http_get(&client, path, None).expect("etcd answers");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    (t, client)
}

/// A POST of a JSON `body`, the response body (status 200 asserted).
fn http_post(addr: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "POST {path}: {out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn prometheus_snapshot_matches_pprof_debug2() {
    let what = "prometheus_snapshot_matches_pprof_debug2";
    let Some(exe) = program(what, Program::Prometheus) else {
        return;
    };
    let (mut t, addr) = start_prometheus(&exe);
    pprof_oracle_compare(what, &mut t, &addr);
}

#[test]
fn etcd_snapshot_matches_pprof_debug2() {
    let what = "etcd_snapshot_matches_pprof_debug2";
    let Some(exe) = program(what, Program::Etcd) else {
        return;
    };
    let (mut t, addr) = start_etcd(&exe);
    pprof_oracle_compare(what, &mut t, &addr);
}

/// `inspect-binary --json` on every real program against what the ELF file and Go's own
/// build-info reader say: the Go version, the main package and module (where there is
/// build info: esbuild has none, so they may be unknown), PIE, symbols, DWARF, the build
/// mode and linker, where pclntab and the version came from (issue 11 item 7: none of
/// these five is PIE; prometheus and etcd are cgo, dynamically linked by the external
/// linker); and every probe site found. Every program is
/// tried; the failures are listed together.
#[test]
fn inspect_binary_describes_real_programs() {
    let what = "inspect_binary_describes_real_programs";
    let mut failures = Vec::new();
    let mut table = String::new();
    for p in Program::ALL {
        let Some(path) = program(what, p) else {
            continue;
        };
        let elf = ElfFacts::of(&path);
        let truth_version = p.go_version();
        let info = build_info(&path);
        table.push_str(&format!("  {p:?}: {truth_version}, {info:?}, {elf:?}\n"));
        let out = Command::new(integration_tests::goroscope_bin())
            .args(["inspect-binary", "--json"])
            .arg(&path)
            .output()
            .expect("run goroscope");
        if !out.status.success() {
            failures.push(format!(
                "{p:?}: inspect-binary failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let mut wrong = Vec::new();
        let mut check = |field: &str, ok: bool, want: &str| {
            if !ok {
                wrong.push(format!("{p:?}: {field} is {}, want {want}", j[field]));
            }
        };
        let is = |field: &str, want: Value| j[field] == want;
        check(
            "go_version",
            is("go_version", json!(truth_version)),
            &truth_version,
        );
        if let Some(info) = &info {
            check(
                "module",
                is("module", json!(info.module)),
                &format!("{:?}", info.module),
            );
            check(
                "main_path",
                is("main_path", json!(info.path)),
                &format!("{:?}", info.path),
            );
        }
        check("pie", is("pie", json!(elf.pie)), &elf.pie.to_string());
        let symbols = elf.has_symbols.to_string();
        check(
            "has_symbols",
            is("has_symbols", json!(elf.has_symbols)),
            &symbols,
        );
        check(
            "has_dwarf",
            is("has_dwarf", json!(elf.has_dwarf)),
            &elf.has_dwarf.to_string(),
        );
        // Issue 11 item 7: how it was built, where pclntab and the version came from.
        let mode = match (elf.pie, elf.dynamic) {
            (false, false) => "static exe",
            (false, true) => "exe",
            (true, true) => "pie",
            (true, false) => "static-pie",
        };
        check("build_mode", is("build_mode", json!(mode)), mode);
        let linker = j["linker"].as_str().unwrap_or_default();
        if elf.external_linker {
            check("linker", linker.starts_with("external"), "external…");
        } else {
            check("linker", linker == "Go (internal)", "Go (internal)");
        }
        if elf.gopclntab_section {
            let want = "section .gopclntab";
            check("pclntab_source", is("pclntab_source", json!(want)), want);
        }
        let version_source = j["version_source"].as_str().unwrap_or_default();
        if elf.buildinfo_section {
            let want = "section .go.buildinfo";
            check("version_source", version_source == want, want);
        } else {
            let ok = version_source.starts_with("runtime.buildVersion");
            check("version_source", ok, "runtime.buildVersion…");
        }
        failures.extend(wrong);
        if j["functions"].as_u64().unwrap_or(0) < 1000 {
            failures.push(format!("{p:?}: functions {}", j["functions"]));
        }
        if !j["missing_sites"].as_array().is_some_and(|m| m.is_empty()) {
            failures.push(format!("{p:?}: missing probe sites {}", j["missing_sites"]));
        }
    }
    eprintln!("{what}: ground truth\n{table}");
    assert!(
        failures.is_empty(),
        "{what}:\n  {}\nground truth:\n{table}",
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// Probes.

/// One refresh of the agent, for one process: `/debug/goroutines?pid=N`.
#[derive(Debug, Clone)]
struct Refresh {
    /// Seconds since attach at this refresh: tells refreshes apart.
    at: f64,
    live: u64,
    created: u64,
    exited: u64,
    /// `function file:line` → (live, created, exited, start function).
    sites: std::collections::BTreeMap<String, (u64, u64, u64, String)>,
}

impl Refresh {
    fn get(agent: &Agent, pid: u32) -> Option<Refresh> {
        let r = agent.get(&format!("/debug/goroutines?pid={pid}"));
        if r.status != 200 {
            return None;
        }
        let d: Value = r.json();
        let counters = d["counters"].as_object()?;
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        Some(Refresh {
            at: d["attached_seconds"].as_f64()?,
            live: n(&d["live"]),
            created: n(&counters["created"]),
            exited: n(&counters["exited"]),
            sites: d["sites"]
                .as_array()?
                .iter()
                .map(|s| {
                    (
                        s["site"].as_str().unwrap_or_default().to_string(),
                        (
                            n(&s["live"]),
                            n(&s["created"]),
                            n(&s["exited"]),
                            s["start_function"].as_str().unwrap_or_default().to_string(),
                        ),
                    )
                })
                .collect(),
        })
    }

    /// The next refresh after this one.
    fn next(&self, agent: &Agent, pid: u32) -> Refresh {
        wait_for("the agent's next refresh", Duration::from_secs(30), || {
            Refresh::get(agent, pid).filter(|r| r.at > self.at)
        })
    }

    fn live_by_site(&self) -> std::collections::BTreeMap<&str, u64> {
        self.sites
            .iter()
            .filter(|(_, v)| v.0 > 0)
            .map(|(k, v)| (k.as_str(), v.0))
            .collect()
    }

    /// Live goroutines that `runtime.NumGoroutine` counts (not the runtime's own).
    fn user_live(&self) -> u64 {
        self.sites
            .values()
            .filter(|v| !is_system_start(&v.3))
            .map(|v| v.0)
            .sum()
    }

    /// Goroutines created since `before` at sites that are not the runtime's.
    fn user_created_since(&self, before: &Refresh) -> u64 {
        self.sites
            .iter()
            .filter(|(_, v)| !is_system_start(&v.3))
            .map(|(k, v)| v.1 - before.sites.get(k).map_or(0, |b| b.1))
            .sum()
    }

    /// An HTTP request in flight: a handler's background reader is alive.
    fn busy(&self) -> bool {
        self.sites
            .iter()
            .any(|(k, v)| k.starts_with("net/http.(*connReader).startBackgroundRead ") && v.0 > 0)
    }

    fn site_live(&self, function: &str) -> u64 {
        self.sites
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{function} ")))
            .map(|(_, v)| v.0)
            .sum()
    }

    /// Created and exited at sites of `function` since `before`.
    fn site_churn(&self, before: &Refresh, function: &str) -> (u64, u64) {
        let sum = |r: &Refresh| {
            r.sites
                .iter()
                .filter(|(k, _)| k.starts_with(&format!("{function} ")))
                .fold((0, 0), |(c, e), (_, v)| (c + v.1, e + v.2))
        };
        let (c1, e1) = sum(self);
        let (c0, e0) = sum(before);
        let less = |a: u64, b: u64| {
            a.checked_sub(b)
                .unwrap_or_else(|| panic!("{function}: counters went down: {b} → {a}"))
        };
        (less(c1, c0), less(e1, e0))
    }
}

/// Two consecutive refreshes with the same live goroutines per site and no request in
/// flight: returns the second.
fn agent_quiet(what: &str, agent: &Agent, pid: u32) -> Refresh {
    let mut prev = wait_for("the agent's first refresh", Duration::from_secs(60), || {
        Refresh::get(agent, pid)
    });
    let deadline = std::time::Instant::now() + QUIET_TIMEOUT;
    loop {
        let now = prev.next(agent, pid);
        if now.live_by_site() == prev.live_by_site() && !now.busy() && !prev.busy() {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not quiet: {:?} then {:?}",
            prev.live_by_site(),
            now.live_by_site()
        );
        prev = now;
    }
}

/// Asserts that goroscope's live count moved by exactly created − exited between two
/// quiet refreshes, for the process and for every site.
fn assert_consistent(what: &str, before: &Refresh, after: &Refresh) {
    assert_eq!(
        after.live as i64 - before.live as i64,
        (after.created - before.created) as i64 - (after.exited - before.exited) as i64,
        "{what}: live {} → {}, created {} → {}, exited {} → {}",
        before.live,
        after.live,
        before.created,
        after.created,
        before.exited,
        after.exited
    );
    let zero = (0, 0, 0, String::new());
    for (site, a) in &after.sites {
        let b = before.sites.get(site).unwrap_or(&zero);
        assert_eq!(
            a.0 as i64 - b.0 as i64,
            (a.1 as i64 - b.1 as i64) - (a.2 as i64 - b.2 as i64),
            "{what}: site {site}: live {} → {}, created {} → {}, exited {} → {}",
            b.0,
            a.0,
            b.1,
            a.1,
            b.2,
            a.2
        );
    }
}

/// The program's own counts at a quiet moment, bracketed by two equal refreshes `r0`,
/// `r1` of the agent (retried otherwise):
/// - `/debug/pprof/goroutine?debug=1`'s `total` is `gcount()`, what
///   `runtime.NumGoroutine` returns, taken with the world stopped while the request's own
///   two goroutines (its handler, the connection's background reader) are alive: it must
///   be goroscope's live non-system count + 2, exactly;
/// - `go_goroutines` on `/metrics` is `runtime.NumGoroutine()` too, but read from inside
///   the scrape, when the scrape's own goroutines are alive: the handler, the background
///   reader and the `prometheus.(*Registry).Gather` worker running the Go collector, plus
///   whatever more Gather had started by then (its closer, more workers: scheduling
///   decides; etcd answers 44 or 45 in a row, same program, same state, prometheus
///   n + 3 or n + 5). No outside observer can know that number, so the check is a
///   bracket: at least goroscope's count plus those 3, at most goroscope's count plus
///   every goroutine created meanwhile (counted by goroscope's probes; all exited, since
///   `r0` and `r1` agree).
///
/// Returns `(r1, pprof total, go_goroutines)`.
fn own_counts(what: &str, agent: &Agent, pid: u32, addr: &str) -> (Refresh, u64, u64) {
    for _ in 0..10 {
        let r0 = agent_quiet(what, agent, pid);
        let d1 = http_get(addr, "/debug/pprof/goroutine?debug=1", None).expect("pprof");
        let total = pprof_total(&d1.body).expect("goroutine profile total");
        if pprof_in_handlers(&d1.body) != 1 {
            eprintln!("{what}: another request in flight during the goroutine profile; again");
            continue;
        }
        let metrics = http_get(addr, "/metrics", None).expect("metrics");
        let g: u64 = metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix("go_goroutines "))
            .unwrap_or_else(|| panic!("{what}: no go_goroutines in /metrics"))
            .trim()
            .parse()
            .expect("go_goroutines is a count");
        let r1 = r0.next(agent, pid);
        if r1.live_by_site() != r0.live_by_site() || r1.busy() {
            eprintln!("{what}: moved around the program's own counts; again");
            continue;
        }
        let n = r1.user_live();
        assert_eq!(
            total,
            n + 2,
            "{what}: pprof total {total} vs goroscope's {n} non-system goroutines + the \
             request's 2; goroscope's sites: {:#?}",
            r1.live_by_site()
        );
        let (gather, gather_exited) = r1.site_churn(
            &r0,
            "github.com/prometheus/client_golang/prometheus.(*Registry).Gather",
        );
        assert_eq!(
            gather, gather_exited,
            "{what}: Gather's goroutines all exit"
        );
        let created = r1.user_created_since(&r0);
        assert!(
            (n + 3..=n + created).contains(&g),
            "{what}: go_goroutines {g} outside [{}, {}]: goroscope's {n} non-system \
             goroutines + the scrape's own: at least 3, at most the {created} goroutines \
             created meanwhile ({gather} at Gather)",
            n + 3,
            n + created
        );
        eprintln!(
            "{what}: goroscope {} live ({n} non-system); pprof total {total} = {n} + 2; \
             go_goroutines {g} = {n} + {} ({created} goroutines created meanwhile, {gather} \
             at Gather)",
            r1.live,
            g - n
        );
        return (r1, total, g);
    }
    panic!("{what}: never quiet around the program's own counts");
}

/// `goroscope run --pid` on the program: its own counts at rest; then `conns` idle
/// keep-alive connections and a few requests (goroutines that start and exit): at rest
/// again, the `net/http.(*Server).Serve` site has exactly `conns` more goroutines, the
/// program's own count moved by as much, and every live count moved by created − exited;
/// the connections closed, back to the start. The program must stay up throughout.
fn probes_against_own_counts(what: &str, t: &mut Target, addr: &str, load: &[&str]) {
    let conns = 10;
    let agent = Agent::start(&["--pid", &t.pid.to_string(), "--interval-seconds", "0.3"]);
    let (r0, total0, _) = own_counts(what, &agent, t.pid, addr);

    let idle: Vec<IdleConn> = (0..conns).map(|_| IdleConn::open(addr, load[0])).collect();
    for path in load {
        let r = http_get(addr, path, None).expect("load");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let (r1, total1, _) = own_counts(what, &agent, t.pid, addr);
    assert_consistent(what, &r0, &r1);
    let serve = "net/http.(*Server).Serve";
    assert_eq!(
        r1.site_live(serve),
        r0.site_live(serve) + conns,
        "{what}: one goroutine per idle connection at {serve}"
    );
    assert_eq!(total1, total0 + conns, "{what}: the program's own count");
    assert_eq!(r1.user_live(), r0.user_live() + conns);
    t.assert_alive("under load with the probes attached");

    drop(idle);
    let (r2, total2, _) = own_counts(what, &agent, t.pid, addr);
    assert_consistent(what, &r1, &r2);
    assert_eq!(
        r2.site_live(serve),
        r0.site_live(serve),
        "{what}: connections closed"
    );
    assert_eq!(
        total2, total0,
        "{what}: the program's own count, connections closed"
    );
    assert!(
        r2.created > r0.created && r2.exited > r0.exited,
        "{what}: the probes saw goroutines start and exit: {r0:?} {r2:?}"
    );
    eprintln!(
        "{what}: created {} exited {} while attached; live {} → {} → {}",
        r2.created - r0.created,
        r2.exited - r0.exited,
        r0.live,
        r1.live,
        r2.live
    );
    t.assert_alive("after the probes");
    let status = agent.stop();
    assert!(status.success(), "goroscope run: {status}");
    t.assert_alive("after the agent detached");
}

#[test]
fn prometheus_probes_match_its_own_counts() {
    let what = "prometheus_probes_match_its_own_counts";
    let Some(exe) = program(what, Program::Prometheus) else {
        return;
    };
    if !bpf_allowed(what) {
        return;
    }
    let (mut t, addr) = start_prometheus(&exe);
    probes_against_own_counts(
        what,
        &mut t,
        &addr,
        &[
            "/-/healthy",
            "/api/v1/query?query=sum(go_goroutines)",
            "/api/v1/query_range?query=up&start=0&end=100&step=10",
            "/api/v1/labels",
            "/federate?match%5B%5D=up",
        ],
    );
}

#[test]
fn etcd_probes_match_its_own_counts() {
    let what = "etcd_probes_match_its_own_counts";
    let Some(exe) = program(what, Program::Etcd) else {
        return;
    };
    if !bpf_allowed(what) {
        return;
    }
    let (mut t, addr) = start_etcd(&exe);
    probes_against_own_counts(what, &mut t, &addr, &["/version", "/health", "/metrics"]);
}
