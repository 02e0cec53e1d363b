//! The workbench's JSON API (`/api/v1`) on real programs: the "created by" graph of the
//! `blockers` fixture with exact counts (Go 1.27, and Go 1.19, which records no parent
//! goids), a site's stacks read on demand, source lines from `--source-root` (and only
//! files the process names), and the page with its strict content policy.

use std::time::Duration;

use integration_tests::{
    bpf_allowed, fixture, fixture_source, line_of, wait_for, workspace_root, Agent, Churn,
};
use serde_json::Value;

const BLOCK: &str = "// blockers: blocking site";

/// The site of `sites` at `file:line`.
fn site_at<'a>(sites: &'a [Value], file: &str, line: u32) -> &'a Value {
    sites
        .iter()
        .find(|s| s["file"] == file && s["line"] == line)
        .unwrap_or_else(|| panic!("no site at {file}:{line} in {sites:#?}"))
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn api_serves_the_creation_graph_stacks_on_demand_and_source_lines() {
    if !bpf_allowed("api_serves_the_creation_graph_stacks_on_demand_and_source_lines") {
        return;
    }
    let src = fixture_source("blockers");
    let file = src.display().to_string();
    let block_line = line_of(&src, BLOCK);
    let spawner_line = line_of(&src, "go spawner(cmds, replies)");
    let never_line = line_of(&src, "<-never");

    let mut p = Churn::start(&fixture(27, "blockers", "default").path);
    assert_eq!(p.cmd("block 7"), "blocked 7");
    let mut old = Churn::start(&fixture(19, "blockers", "default").path);
    assert_eq!(old.cmd("block 3"), "blocked 3");
    let root = workspace_root().join("tests/fixtures/go");
    let agent = Agent::start(&[
        "--pid",
        &p.pid.to_string(),
        "--pid",
        &old.pid.to_string(),
        "--interval-seconds",
        "1",
        "--contexts",
        "false",
        "--source-root",
        root.to_str().expect("utf-8 path"),
    ]);
    wait_for("/readyz", Duration::from_secs(30), || {
        (agent.get("/readyz").status == 200).then_some(())
    });
    assert_eq!(p.cmd("finish 30"), "finished 30");

    // Both processes, the one with more goroutines first (nothing is suspected).
    let list = agent.get("/api/v1/processes").json();
    assert_eq!(list["source_root"], true);
    assert_eq!(list["interval_seconds"], 1.0);
    let pids: Vec<u64> = list["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| p["pid"].as_u64().expect("pid"))
        .collect();
    assert_eq!(pids, [u64::from(p.pid), u64::from(old.pid)]);
    assert_eq!(list["processes"][0]["suspected"], 0);

    // The graph, once the finished goroutines are gone from it.
    let detail = wait_for(
        "the finishing goroutines gone",
        Duration::from_secs(20),
        || {
            let d = agent.get(&format!("/api/v1/processes/{}", p.pid)).json();
            let sites = d["sites"].as_array()?;
            let finish = line_of(&src, "// blockers: finishing site");
            let done = sites
                .iter()
                .find(|s| s["file"] == file.as_str() && s["line"] == finish)
                .is_some_and(|s| s["live"] == 0 && s["exited"] == 30);
            done.then_some(d)
        },
    );
    assert_eq!(detail["parent_goids"], true);
    let sites = detail["sites"].as_array().expect("sites");
    let blocking = site_at(sites, &file, block_line);
    let spawner = site_at(sites, &file, spawner_line);
    assert_eq!(blocking["live"], 7);
    assert_eq!(
        blocking["source_url"],
        Value::Null,
        "no forge for this module"
    );
    // The main goroutine (goid 1) created the spawner.
    let main_site = sites
        .iter()
        .find(|s| {
            s["sample_goids"]
                .as_array()
                .is_some_and(|g| g.contains(&1.into()))
        })
        .expect("the main goroutine's site");
    let edges: Vec<(Value, String, u64)> = detail["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| {
            let to = sites
                .iter()
                .find(|s| s["id"] == e["to"])
                .expect("edge to a site");
            to["system"] == false
        })
        .map(|e| {
            (
                e["from"].clone(),
                e["to"].as_str().expect("to").to_string(),
                e["goroutines"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            (Value::from(id(spawner)), id(blocking), 7),
            (Value::from(id(main_site)), id(spawner), 1),
        ],
        "{:#}",
        detail["edges"]
    );
    assert_eq!(detail["module"]["path"], "goroscope.test/fixtures");

    // Stacks of a site nobody suspects: asked for, then read at a following refresh.
    let path = format!("/api/v1/processes/{}/sites/{}", p.pid, id(blocking));
    let first = agent.get(&path).json();
    assert_eq!(first["stacks"], "requested", "{first:#}");
    let drill = wait_for("the stacks read", Duration::from_secs(20), || {
        let d = agent.get(&path).json();
        (d["stacks"] == "read").then_some(d)
    });
    let stacks = drill["blocking"]["stacks"].as_array().expect("stacks");
    assert_eq!(stacks.len(), 1, "{drill:#}");
    assert_eq!(stacks[0]["count"], 7);
    let blocked_at = format!("main.blockForever {file}:{never_line}");
    assert_eq!(stacks[0]["blocked_at"], blocked_at.as_str());
    let marked: Vec<String> = stacks[0]["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["blocking"] == true)
        .map(|f| {
            format!(
                "{} {}:{}",
                f["function"].as_str().unwrap(),
                f["file"].as_str().unwrap(),
                f["line"]
            )
        })
        .collect();
    assert_eq!(marked, [blocked_at]);
    assert_eq!(
        drill["created_by"],
        serde_json::json!([{"from": id(spawner), "goroutines": 7}])
    );
    let spawner_drill = agent
        .get(&format!(
            "/api/v1/processes/{}/sites/{}",
            p.pid,
            id(spawner)
        ))
        .json();
    assert_eq!(
        spawner_drill["creates"],
        serde_json::json!([{"to": id(blocking), "goroutines": 7}])
    );
    assert_eq!(
        agent
            .get(&format!("/api/v1/processes/{}/sites/gdead", p.pid))
            .status,
        404
    );

    // Source lines of a file the process names, from the source root.
    let source = agent
        .get(&format!(
            "/api/v1/processes/{}/source?file={file}&line={block_line}&context=1",
            p.pid
        ))
        .json();
    assert_eq!(source["first_line"], block_line - 1);
    assert_eq!(source["lines"].as_array().expect("lines").len(), 3);
    assert!(
        source["lines"][1].as_str().expect("line").contains(BLOCK),
        "{source:#}"
    );
    let other = agent.get(&format!(
        "/api/v1/processes/{}/source?file=/etc/passwd&line=1",
        p.pid
    ));
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(
        agent.get("/api/v1/processes/1/source?file=x&line=1").status,
        404
    );

    // Go 1.19 records no parent goids: every creator is unknown.
    let d = agent.get(&format!("/api/v1/processes/{}", old.pid)).json();
    assert_eq!(d["parent_goids"], false);
    let old_sites = d["sites"].as_array().expect("sites");
    let old_block = site_at(old_sites, &file, block_line);
    assert_eq!(old_block["live"], 3);
    let to_block: Vec<&Value> = d["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| e["to"] == old_block["id"])
        .collect();
    assert_eq!(
        to_block,
        [&serde_json::json!({"from": null, "to": id(old_block), "goroutines": 3})]
    );

    // The page, with a policy that allows nothing from elsewhere.
    let page = agent.get("/");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("CSP header");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.body.contains("/ui/app.js"), "{}", page.body);
    assert_eq!(agent.get("/ui/app.js").status, 200);
    assert_eq!(agent.get("/ui/app.css").status, 200);
}
