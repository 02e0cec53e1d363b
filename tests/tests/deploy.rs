//! The alert rules: valid (`promtool check rules`), unit-tested (`promtool test rules`),
//! shipped identically as a PrometheusRule, and every alert has a summary, a description
//! and a runbook that exists in the repo.

use std::path::Path;
use std::process::Command;

use integration_tests::workspace_root;

const RULES: &str = "deploy/prometheus/goroscope-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/goroscope-rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";
const RUNBOOK_BASE: &str = "https://github.com/goroscope/goroscope/blob/main/";

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("promtool (Debian package prometheus, installed by `cargo xtask setup`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn rules_are_valid_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The PrometheusRule manifest is the rule file under `spec:`.
fn prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# Generated from deploy/prometheus/goroscope-rules.yml: edit that file, then run\n\
         # GOROSCOPE_BLESS=1 cargo test -p integration-tests --test deploy\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: goroscope\n  namespace: goroscope\n  \
         labels:\n    app.kubernetes.io/name: goroscope\n\
         spec:\n",
    );
    for line in rules.lines().filter(|l| !l.starts_with('#')) {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn prometheus_rule_manifest_matches_the_rule_file() {
    let root = workspace_root();
    let want = prometheus_rule(&std::fs::read_to_string(root.join(RULES)).unwrap());
    let path = root.join(PROMETHEUS_RULE);
    if std::env::var_os("GOROSCOPE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{PROMETHEUS_RULE} is out of date: run GOROSCOPE_BLESS=1 cargo test -p integration-tests --test deploy"
    );
}

#[test]
fn every_alert_has_summary_description_and_an_existing_runbook() {
    let root = workspace_root();
    let rules = std::fs::read_to_string(root.join(RULES)).unwrap();
    let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert_eq!(alerts.len(), 7);
    for a in alerts {
        let name = a.lines().next().unwrap().trim();
        for key in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(a.contains(key), "alert {name} has no {key}");
        }
        let url = a
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: "))
            .unwrap()
            .trim();
        let rel = url
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not in the repo"));
        assert!(
            Path::new(&root.join(rel)).is_file(),
            "{name}: runbook {rel} does not exist"
        );
    }
}

/// The Grafana dashboard: valid JSON, every query valid PromQL (checked by promtool as
/// recording rules) and using only pinned metric names.
#[test]
fn dashboard_queries_are_valid_and_use_pinned_metrics() {
    let root = workspace_root();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/goroscope.json")).unwrap(),
    )
    .expect("dashboard is JSON");
    let pinned: Vec<String> = std::fs::read_to_string(root.join("tests/stable-metrics.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("goroscope_"))
            {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| pinned.iter().any(|p| p == b))
                    .unwrap_or(word);
                assert!(
                    pinned.iter().any(|p| p == base),
                    "panel {:?} uses {word}, not a pinned metric",
                    p["title"]
                );
            }
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query_{n}\n        expr: '{}'\n",
                expr.replace('\'', "''")
            ));
        }
    }
    assert!(n >= 14, "{n} queries");
    let path = std::env::temp_dir().join(format!("goroscope-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

/// The DaemonSet's ConfigMap holds a config file the agent accepts as it is.
#[test]
fn daemonset_config_file_is_valid() {
    let yaml = std::fs::read_to_string(workspace_root().join("deploy/kubernetes/daemonset.yaml"))
        .expect("daemonset.yaml");
    let toml: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("goroscope.toml: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[[targets]]"), "{toml}");
    let path =
        std::env::temp_dir().join(format!("goroscope-daemonset-{}.toml", std::process::id()));
    std::fs::write(&path, &toml).unwrap();
    let args = goroscope::daemon::config::RunArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = goroscope::daemon::config::Config::resolve(&args);
    let _ = std::fs::remove_file(&path);
    let c = c.unwrap_or_else(|e| panic!("{e:#}\n{toml}"));
    assert_eq!(c.listen.port(), 9750);
    assert!(c.contexts);
    assert_eq!(
        c.targets,
        vec![goroscope::session::Target::Exe(
            "/usr/local/bin/myservice".into()
        )]
    );
}
