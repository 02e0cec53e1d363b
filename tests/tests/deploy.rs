//! The alert rules: valid (`promtool check rules`), unit-tested (`promtool test rules`),
//! shipped identically as a PrometheusRule, and every alert has a summary, a description
//! and a runbook that exists in the repo. The Grafana dashboard: valid PromQL on pinned
//! metrics, and a dashboard as `@grafana/schema` types it. The DaemonSet's config file, as
//! the agent reads it; the systemd unit, as systemd reads it.

use std::path::Path;
use std::process::Command;

use integration_tests::deploy::{find, rendered, typecheck, TempDir};
use integration_tests::{goroscope_bin, workspace_root};

const RULES: &str = "deploy/prometheus/goroscope-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/goroscope-rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/overlays/prometheus-operator/prometheusrule.yaml";
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
    for p in panels(&dash) {
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

/// Every panel, also those inside collapsed rows; not the rows themselves.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

/// The TypeScript module that types the dashboard: `@grafana/schema`'s `Dashboard`, each
/// panel as the `Panel` of its type with that panel plugin's own options and field config
/// types (timeseries, table) or as a `RowPanel`, each query as a Prometheus query.
fn dashboard_module(dash: &serde_json::Value) -> String {
    let mut ts = String::from(
        "import type { Dashboard, Panel, RowPanel, DataQuery } from '@grafana/schema';
import type { Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig }
  from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as TableOptions, FieldConfig as TableFieldConfig }
  from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
// The fields of Grafana's Prometheus query (@grafana/schema has no type for it).
interface PrometheusQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  instant?: boolean;
  range?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  exemplar?: boolean;
  editorMode?: 'code' | 'builder';
}
type Queries = { targets: PrometheusQuery[] };
type TimeSeriesPanel = Panel<TimeSeriesOptions, TimeSeriesFieldConfig> & Queries &
  { type: 'timeseries'; options?: TimeSeriesOptions };
type TablePanel = Panel<TableOptions, TableFieldConfig> & Queries &
  { type: 'table'; options?: Partial<TableOptions> };
",
    );
    let mut names = Vec::new();
    for (i, p) in dash["panels"].as_array().unwrap().iter().enumerate() {
        let ty = match p["type"].as_str().unwrap() {
            "timeseries" => "TimeSeriesPanel",
            "table" => "TablePanel",
            "row" => "RowPanel",
            other => panic!("panel type {other}: add its options type to this test"),
        };
        ts.push_str(&format!("const panel{i} = {p} satisfies {ty};\n"));
        names.push(format!("panel{i}"));
    }
    let mut rest = dash.clone();
    rest.as_object_mut().unwrap().remove("panels");
    let rest = rest.to_string();
    ts.push_str(&format!(
        "export const dashboard: Dashboard = {}, \"panels\": [{}] }};\n",
        rest.strip_suffix('}').unwrap(),
        names.join(", ")
    ));
    ts
}

/// The dashboard type-checks (`tsc --strict`) against `@grafana/schema` (see
/// [`dashboard_module`]). Object literals get TypeScript's excess property checks: an unknown
/// or misspelt key fails, and so does a value of the wrong type.
#[test]
fn dashboard_type_checks_against_grafana_schema() {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/grafana/goroscope.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    typecheck(&[("dashboard.mts", dashboard_module(&dash))])
        .unwrap_or_else(|e| panic!("the dashboard does not type-check:\n{e}"));
    let mut typo = dash.clone();
    let p = typo["panels"][1].as_object_mut().unwrap();
    let title = p.remove("title").unwrap();
    p.insert("titel".into(), title);
    let err = typecheck(&[("dashboard.mts", dashboard_module(&typo))])
        .expect_err("a misspelt key type-checked");
    assert!(err.contains("titel"), "{err}");
    let mut wrong = dash.clone();
    wrong["refresh"] = serde_json::json!(30);
    let err = typecheck(&[("dashboard.mts", dashboard_module(&wrong))])
        .expect_err("refresh: 30 type-checked");
    assert!(
        err.contains("error TS2322: Type 'number' is not assignable to type 'string'"),
        "{err}"
    );
}

/// The base's ConfigMap holds a config file the agent accepts as it is: discovery (no
/// targets) with the selectors, runtime and limits of deploy/kubernetes/base/goroscope.toml.
#[test]
fn daemonset_config_file_is_valid() {
    let docs = rendered("deploy/kubernetes/base");
    let toml = find(&docs, "ConfigMap")["data"]["goroscope.toml"]
        .as_str()
        .expect("goroscope.toml in the ConfigMap")
        .to_string();
    let dir = TempDir::new("daemonset-config");
    let path = dir.0.join("goroscope.toml");
    std::fs::write(&path, &toml).unwrap();
    let args = goroscope::daemon::config::RunArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    let c = goroscope::daemon::config::Config::resolve(&args)
        .unwrap_or_else(|e| panic!("{e:#}\n{toml}"));
    assert_eq!(c.listen.port(), 9750);
    assert!(c.contexts);
    assert_eq!(c.log_format, goroscope::daemon::config::LogFormat::Json);
    assert_eq!(c.targets, vec![goroscope::session::Target::Node]);
    assert_eq!(
        c.discovery.namespace_exclude,
        vec!["kube-system".to_string()]
    );
    assert_eq!(c.min_process_age, std::time::Duration::from_secs(5));
    assert_eq!(c.cri_socket, None);
    assert_eq!(
        (c.max_goroutines_per_process, c.max_goroutines_per_node),
        (1_000_000, 2_000_000)
    );
}

/// The systemd unit, as systemd reads it: `systemd-analyze verify` (directives, the
/// executable) with no complaint about it, and the DaemonSet's capabilities as its bounding
/// set. The binary path is the one built for the tests (the unit's /usr/local/bin/goroscope
/// is not installed here); `systemd-analyze security` scores the hardening.
#[test]
fn systemd_unit_verifies() {
    let root = workspace_root();
    let unit = std::fs::read_to_string(root.join("deploy/systemd/goroscope.service")).unwrap();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    let docs = rendered("deploy/kubernetes/base");
    let want: Vec<String> = find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        ["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    assert_eq!(caps.split_whitespace().collect::<Vec<_>>(), want);
    assert!(unit.contains("ExecStart=/usr/local/bin/goroscope run --listen 127.0.0.1:9750"));

    let dir = TempDir::new("systemd-unit");
    let path = dir.0.join("goroscope.service");
    let bin = goroscope_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/goroscope", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by `cargo xtask setup`)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.lines().any(|l| l.contains("goroscope")),
        "systemd-analyze verify complains:\n{err}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("systemd-analyze security:\n{text}"));
    eprintln!("{score}");
}
