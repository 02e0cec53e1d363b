//! The leak workbench (the page at `/` of `goroscope run`, agent/src/export/web) in a real
//! browser: Debian's chromium, driven by puppeteer-core (tests/web/workbench.mjs) against
//! a live agent tracing the `leaky` and `contexts` fixtures. The page must make no request
//! to any host but the agent and log no error; the leaking site must be the first row of
//! the sites table with its exact file:line; clicking it must show its goroutines' blocking
//! stack with the blocking frame (`main.waitForReply main.go:LINE`) marked; the source view
//! must highlight the line asked for; the contexts process must show the context site its
//! goroutines wait on. Screenshots land in target/workbench/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_tests::{
    bpf_allowed, fixture, fixture_source, line_of, wait_for, workspace_root, Agent, Churn,
};
use serde_json::{json, Value};

const LEAK: &str = "go waitForReply(ch) // the leak";
const BLOCK: &str = "r := <-ch // nobody ever sends";
const BACKGROUND: &str = "// contexts: background";
const CHROMIUM: &str = "/usr/bin/chromium";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// chromium, node and tests/web/node_modules (installed by `cargo xtask setup`), or why
/// not.
fn browser_tools(web: &Path) -> Result<(), String> {
    if !Path::new(CHROMIUM).is_file() {
        return Err(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node is not installed".into());
    }
    if !web
        .join("node_modules/puppeteer-core/package.json")
        .is_file()
    {
        return Err(format!(
            "{}/node_modules has no puppeteer-core (cargo xtask setup, or npm ci there)",
            web.display()
        ));
    }
    Ok(())
}

fn site_of<'a>(p: &'a Value, file: &str, line: u32) -> Option<&'a Value> {
    p["sites"]
        .as_array()?
        .iter()
        .find(|s| s["file"].as_str().is_some_and(|f| f.ends_with(file)) && s["line"] == line)
}

#[test]
fn workbench_in_a_real_browser() {
    if !bpf_allowed("workbench_in_a_real_browser") {
        return;
    }
    let root = workspace_root();
    let web = root.join("tests/web");
    if let Err(why) = browser_tools(&web) {
        if ci() {
            panic!("workbench_in_a_real_browser must run in CI: {why}");
        }
        eprintln!("\n!!! SKIPPED workbench_in_a_real_browser: {why} !!!\n");
        return;
    }
    let started = Instant::now();
    let leaky = Churn::start(&fixture(27, "leaky", "default").path);
    let mut ctx = Churn::start(&fixture(27, "contexts", "default").path);
    let source_root = root.join("tests/fixtures/go");
    let agent = Agent::start(&[
        "--pid",
        &leaky.pid.to_string(),
        "--pid",
        &ctx.pid.to_string(),
        "--interval-seconds",
        "1",
        "--source-root",
        source_root.to_str().expect("UTF-8 path"),
    ]);
    wait_for("/readyz", Duration::from_secs(30), || {
        (agent.get("/readyz").status == 200).then_some(())
    });
    // Contexts are seen when created: after the agent attached.
    assert_eq!(ctx.cmd("background 2"), "background 2");
    assert_eq!(ctx.cmd("early 4"), "early 4");

    let leak_file = "tests/fixtures/go/leaky/main.go";
    let leak_line = line_of(&fixture_source("leaky"), LEAK);
    let block_line = line_of(&fixture_source("leaky"), BLOCK);
    let ctx_file = "tests/fixtures/go/contexts/main.go";
    let ctx_line = line_of(&fixture_source("contexts"), BACKGROUND);

    // The API says what the page should show: wait for the leak model (30 s scale) and for
    // the two goroutines waiting on their contexts.
    let api = |pid: u32| {
        let r = agent.get(&format!("/api/v1/processes/{pid}"));
        assert_eq!(r.status, 200, "/api/v1/processes/{pid}: {}", r.body);
        r.json()
    };
    // Stacks of a suspected site are read at the refresh after the verdict: the page shows
    // BLOCKED AT from then on.
    let p = wait_for(
        "the leak suspected by the API, with its blocking line",
        Duration::from_secs(90),
        || {
            let p = api(leaky.pid);
            site_of(&p, leak_file, leak_line)
                .is_some_and(|s| s["leak"]["suspected"] == true && s["blocked_at"].is_string())
                .then_some(p)
        },
    );
    eprintln!(
        "leak suspected {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    let site = site_of(&p, leak_file, leak_line).expect("leaking site");
    assert_eq!(site["function"], "main.handleRequest", "{site}");
    assert!(
        site["blocked_at"]
            .as_str()
            .is_some_and(|b| b.starts_with("main.waitForReply ")
                && b.ends_with(&format!("{leak_file}:{block_line}"))),
        "{site}"
    );
    wait_for(
        "2 goroutines waiting on contexts",
        Duration::from_secs(30),
        || {
            let p = api(ctx.pid);
            p["contexts"]
                .as_array()?
                .iter()
                .any(|c| {
                    c["file"].as_str().is_some_and(|f| f.ends_with(ctx_file))
                        && c["line"] == ctx_line
                        && c["waiting_goroutines"] == 2
                })
                .then_some(())
        },
    );
    let list = agent.get("/api/v1/processes").json();
    assert_eq!(list["source_root"], true, "{list}");

    let out_dir: PathBuf = root.join("target/workbench");
    let expect = json!({
        "pid": leaky.pid,
        "site_file": leak_file,
        "site_line": leak_line,
        "blocking_function": "main.waitForReply",
        "blocking_line": block_line,
        "contexts": {"pid": ctx.pid, "site_file": ctx_file, "site_line": ctx_line, "waiters": 2},
    });
    let base = format!("http://{}/", agent.addr);
    eprintln!(
        "node tests/web/workbench.mjs {base} {} '{expect}'",
        out_dir.display()
    );
    let out = Command::new("node")
        .current_dir(&web)
        .arg("workbench.mjs")
        .arg(&base)
        .arg(&out_dir)
        .arg(expect.to_string())
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- workbench.mjs stdout ---\n{stdout}--- workbench.mjs stderr ---\n{stderr}---");
    assert!(
        out.status.success(),
        "the workbench page failed in chromium ({}):\n{stderr}",
        out.status
    );
    for shot in [
        "overview.png",
        "drilldown.png",
        "source.png",
        "contexts.png",
    ] {
        let f = out_dir.join(shot);
        assert!(
            std::fs::metadata(&f).is_ok_and(|m| m.len() > 10_000),
            "no screenshot {}",
            f.display()
        );
    }
    drop(agent);
    drop(ctx);
    leaky.finish();
}
