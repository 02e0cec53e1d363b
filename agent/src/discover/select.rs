//! Which discovered processes are traced: executable globs, Kubernetes namespaces,
//! container names and a pod label selector (the syntax of `kubectl get -l`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// The selectors as configured (`[discovery]` in the config file).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectorConfig {
    /// Globs on the executable path as the process sees it; empty: every executable.
    pub exe_include: Vec<String>,
    pub exe_exclude: Vec<String>,
    /// Kubernetes namespaces (globs); empty: every namespace (and processes in none).
    pub namespace_include: Vec<String>,
    pub namespace_exclude: Vec<String>,
    /// Container names (globs).
    pub container_include: Vec<String>,
    pub container_exclude: Vec<String>,
    /// Pod label selector, e.g. `app in (api,web),tier!=batch`.
    pub pod_selector: String,
    /// Processes younger than this are not traced yet (short-lived tools come and go);
    /// default 5.
    pub min_process_age_seconds: Option<f64>,
}

/// What a process's pod says about it.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub container: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Whether to trace a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Trace,
    Skip,
    /// The decision needs the process's pod, not known yet.
    Wait,
}

/// Compiled selectors.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    exe_include: Option<GlobSet>,
    exe_exclude: Option<GlobSet>,
    namespace_include: Option<GlobSet>,
    namespace_exclude: Option<GlobSet>,
    container_include: Option<GlobSet>,
    container_exclude: Option<GlobSet>,
    pods: Vec<Requirement>,
}

fn globs(key: &str, patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).with_context(|| format!("discovery.{key}: bad glob {p:?}"))?);
    }
    Ok(Some(b.build()?))
}

impl Selector {
    pub fn new(c: &SelectorConfig) -> Result<Selector> {
        Ok(Selector {
            exe_include: globs("exe_include", &c.exe_include)?,
            exe_exclude: globs("exe_exclude", &c.exe_exclude)?,
            namespace_include: globs("namespace_include", &c.namespace_include)?,
            namespace_exclude: globs("namespace_exclude", &c.namespace_exclude)?,
            container_include: globs("container_include", &c.container_include)?,
            container_exclude: globs("container_exclude", &c.container_exclude)?,
            pods: parse_label_selector(&c.pod_selector)
                .with_context(|| format!("discovery.pod_selector {:?}", c.pod_selector))?,
        })
    }

    /// Whether any selector needs the process's pod.
    pub fn needs_pod(&self) -> bool {
        self.namespace_include.is_some()
            || self.namespace_exclude.is_some()
            || self.container_include.is_some()
            || self.container_exclude.is_some()
            || !self.pods.is_empty()
    }

    /// The decision for a process running `exe`. `workload`: its pod, when known;
    /// `pod_pending`: it runs in a container whose pod may still become known.
    pub fn decide(&self, exe: &str, workload: Option<Workload<'_>>, pod_pending: bool) -> Decision {
        let skip = |set: &Option<GlobSet>, v: &str| set.as_ref().is_some_and(|s| s.is_match(v));
        let not_in = |set: &Option<GlobSet>, v: &str| set.as_ref().is_some_and(|s| !s.is_match(v));
        if skip(&self.exe_exclude, exe) || not_in(&self.exe_include, exe) {
            return Decision::Skip;
        }
        if !self.needs_pod() {
            return Decision::Trace;
        }
        let empty = BTreeMap::new();
        let w = match workload {
            Some(w) => w,
            None if pod_pending => return Decision::Wait,
            // Not in a pod: no namespace, no container name, no labels.
            None => Workload {
                namespace: "",
                container: "",
                labels: &empty,
            },
        };
        let out = skip(&self.namespace_exclude, w.namespace)
            || not_in(&self.namespace_include, w.namespace)
            || skip(&self.container_exclude, w.container)
            || not_in(&self.container_include, w.container)
            || !self.pods.iter().all(|r| r.matches(w.labels));
        if out {
            Decision::Skip
        } else {
            Decision::Trace
        }
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // As in Kubernetes: a pod without the label matches `notin` and `!=`.
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        }
    }
}

/// Parses a Kubernetes label selector: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, separated by commas.
fn parse_label_selector(s: &str) -> Result<Vec<Requirement>> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        bail!("unbalanced parentheses");
    }
    parts.push(&s[start..]);
    let mut out = Vec::new();
    for p in parts.into_iter().map(str::trim) {
        if p.is_empty() {
            if s.trim().is_empty() {
                continue;
            }
            bail!("empty requirement");
        }
        out.push(requirement(p)?);
    }
    Ok(out)
}

fn requirement(p: &str) -> Result<Requirement> {
    let key = |k: &str| -> Result<String> {
        let k = k.trim();
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            bail!("bad label key {k:?}");
        }
        Ok(k.to_string())
    };
    let set = |v: &str| -> Result<Vec<String>> {
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .with_context(|| format!("expected (values) in {p:?}"))?;
        Ok(inner.split(',').map(|x| x.trim().to_string()).collect())
    };
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(k)?));
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Requirement::NotIn(key(k)?, vec![v.trim().to_string()]));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(Requirement::In(key(k)?, vec![v.trim().to_string()]));
    }
    if let Some((k, v)) = p.split_once(" notin ") {
        return Ok(Requirement::NotIn(key(k)?, set(v)?));
    }
    if let Some((k, v)) = p.split_once(" in ") {
        return Ok(Requirement::In(key(k)?, set(v)?));
    }
    Ok(Requirement::Exists(key(p)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_syntax() {
        use Requirement::*;
        let r = parse_label_selector("app in (api, web),tier!=batch,!canary,env==prod,team=x,gpu")
            .unwrap();
        assert_eq!(
            r,
            vec![
                In("app".into(), vec!["api".into(), "web".into()]),
                NotIn("tier".into(), vec!["batch".into()]),
                NotExists("canary".into()),
                In("env".into(), vec!["prod".into()]),
                In("team".into(), vec!["x".into()]),
                Exists("gpu".into()),
            ]
        );
        assert_eq!(parse_label_selector("").unwrap(), vec![]);
        assert_eq!(
            parse_label_selector("k notin (a)").unwrap(),
            vec![NotIn("k".into(), vec!["a".into()])]
        );
        assert!(parse_label_selector("app in (a").is_err());
        assert!(parse_label_selector("a=b,,c").is_err());
        assert!(parse_label_selector("bad key=1").is_err());
    }

    #[test]
    fn decisions() {
        let s = Selector::new(&SelectorConfig {
            exe_exclude: vec!["/usr/bin/*".into()],
            namespace_exclude: vec!["kube-system".into()],
            pod_selector: "app in (api,web),tier!=batch".into(),
            ..Default::default()
        })
        .unwrap();
        let api = labels(&[("app", "api")]);
        let w = |ns, labels| {
            Some(Workload {
                namespace: ns,
                container: "c",
                labels,
            })
        };
        assert_eq!(
            s.decide("/srv/api", w("shop", &api), false),
            Decision::Trace
        );
        assert_eq!(
            s.decide("/usr/bin/dockerd", w("shop", &api), false),
            Decision::Skip
        );
        assert_eq!(
            s.decide("/srv/api", w("kube-system", &api), false),
            Decision::Skip
        );
        let batch = labels(&[("app", "api"), ("tier", "batch")]);
        assert_eq!(
            s.decide("/srv/api", w("shop", &batch), false),
            Decision::Skip
        );
        assert_eq!(s.decide("/srv/api", None, true), Decision::Wait);
        // A host process has no labels: `app in (…)` does not match it.
        assert_eq!(s.decide("/srv/api", None, false), Decision::Skip);

        let only_exe = Selector::new(&SelectorConfig {
            exe_include: vec!["**/myservice".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(!only_exe.needs_pod());
        assert_eq!(
            only_exe.decide("/srv/bin/myservice", None, true),
            Decision::Trace
        );
        assert_eq!(
            only_exe.decide("/srv/bin/other", None, true),
            Decision::Skip
        );
        let all = Selector::new(&SelectorConfig::default()).unwrap();
        assert_eq!(all.decide("/anything", None, true), Decision::Trace);
        assert!(Selector::new(&SelectorConfig {
            exe_include: vec!["[".into()],
            ..Default::default()
        })
        .is_err());
    }
}
