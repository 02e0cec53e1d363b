//! Alerting end to end, pod-aware: a leaky Go program in a real containerd pod and a
//! contexts program on the host, `goroscope run` with no target, a real Prometheus
//! loading the shipped rules and sending to a real Alertmanager, which delivers
//! GoroutineLeakSuspected to a webhook with the pod's namespace, pod and the leaking
//! `site`. Then every panel query of the shipped Grafana dashboard is run against that
//! Prometheus and must return data.

use std::time::{Duration, Instant};

use integration_tests::containerd::{containerd_allowed, ContainerSpec, Containerd, PodSpec};
use integration_tests::prometheus::{Alertmanager, Prometheus, Webhook};
use integration_tests::{
    bpf_allowed, fixture, fixture_source, line_of, workspace_root, Agent, Churn,
};
use serde_json::Value;

const POD_UID: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// Every `expr` of the dashboard's panels (rows included), with its panel title.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/grafana/goroscope.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    walk(d["panels"].as_array().unwrap(), &mut out);
    out
}

/// Grafana's substitutions: every template variable is "All" (`.*`), intervals are
/// Grafana's defaults for a short range.
fn grafana_substitute(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    for v in ["instance", "exe", "namespace", "pod"] {
        e = e.replace(&format!("${v}"), ".*");
    }
    assert!(!e.contains('$'), "unknown variable in {expr}");
    e
}

#[test]
fn leak_in_a_pod_reaches_the_alertmanager_with_its_pod_and_every_dashboard_panel_has_data() {
    let test =
        "leak_in_a_pod_reaches_the_alertmanager_with_its_pod_and_every_dashboard_panel_has_data";
    if !bpf_allowed(test) || !containerd_allowed(test) {
        return;
    }
    let started = Instant::now();
    let ctd = Containerd::start();
    let image = ctd.import_fixture(&fixture(27, "leaky", "default"));
    let pod = ctd.run_pod(&PodSpec::new("shop", "checkout-7d9f", POD_UID).label("app", "checkout"));
    let api = ctd.run_container(&pod, &ContainerSpec::new("api", &image));
    // Contexts on the host, for the dashboard's context panels.
    let mut ctx = Churn::start(&fixture(27, "contexts", "default").path);

    let socket = ctd.socket.to_str().unwrap().to_string();
    // Default interval and leak thresholds: no target, only where the CRI socket is.
    let agent = Agent::start(&["--cri-socket", &socket]);
    let hook = Webhook::start();
    let am = Alertmanager::start(&hook.addr);
    let prom = Prometheus::start_with(&agent.addr, Some(&am.addr));
    // Once the contexts program is traced (minimum process age 5 s, then a refresh).
    integration_tests::wait_for(
        "the contexts program traced",
        Duration::from_secs(30),
        || {
            let q = format!("goroscope_process_info{{pid=\"{}\"}}", ctx.pid);
            (!prom.query(&q).is_empty()).then_some(())
        },
    );
    for c in ["early 4", "background 2", "children 50", "healthy 6"] {
        assert_eq!(ctx.cmd(c), c);
    }

    let site = format!(
        "tests/fixtures/go/leaky/main.go:{}",
        line_of(&fixture_source("leaky"), "go waitForReply(ch) // the leak")
    );
    let deadline = Instant::now() + Duration::from_secs(150);
    let alert = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(body) = hook.received.recv_timeout(left) else {
            panic!(
                "no GoroutineLeakSuspected for the pod reached the webhook in time; alerts in \
                 Prometheus: {:?}\nalertmanager log:\n{}",
                prom.alerts(),
                am.log()
            );
        };
        let found = body["alerts"].as_array().into_iter().flatten().find(|a| {
            a["labels"]["alertname"] == "GoroutineLeakSuspected"
                && a["labels"]["pod"] == "checkout-7d9f"
        });
        if let Some(a) = found {
            break a.clone();
        }
    };
    eprintln!(
        "GoroutineLeakSuspected delivered {:.1} s after the pod started",
        started.elapsed().as_secs_f64()
    );
    let l = &alert["labels"];
    assert_eq!(l["namespace"], "shop", "{alert}");
    assert_eq!(l["container"], "api", "{alert}");
    assert_eq!(l["pid"], api.pid.to_string(), "{alert}");
    assert_eq!(l["function"], "main.handleRequest", "{alert}");
    assert!(l["site"].as_str().unwrap().ends_with(&site), "{alert}");
    assert_eq!(
        alert["annotations"]["summary"],
        format!(
            "Goroutine leak suspected in pod shop/checkout-7d9f (api, pid {})",
            api.pid
        ),
        "{alert}"
    );

    // Every panel of the dashboard shows data for this node (an alert-style panel shows
    // nothing while all is well).
    let quiet = ["Agent: targets not attached (waiting executables excluded)"];
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    for (title, expr) in &queries {
        let q = grafana_substitute(expr);
        let r = prom.query(&q);
        if quiet.contains(&title.as_str()) {
            assert!(r.is_empty(), "{title}: {q} → {r:?}");
        } else {
            assert!(!r.is_empty(), "panel {title:?} has no data: {q}");
        }
    }
    // The pod row names the pod.
    let by_pod = prom.query(&grafana_substitute(
        r#"sum by (namespace, pod) (goroscope_site_leak_suspected{namespace=~"$namespace",pod=~"$pod"}) > 0"#,
    ));
    assert!(
        by_pod
            .iter()
            .any(|(m, _)| m["namespace"] == "shop" && m["pod"] == "checkout-7d9f"),
        "{by_pod:?}"
    );

    assert!(ctx.finish().success());
    assert!(agent.stop().success());
}
