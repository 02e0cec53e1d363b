//! Configuration of the `goroscope run` daemon: a TOML file, overridden by environment
//! variables and flags (flags and `GOROSCOPE_*` variables are parsed together by clap;
//! they win over the file, which wins over the defaults).
//!
//! ```toml
//! listen = "0.0.0.0:9750"
//! interval_seconds = 5
//! top_sites = 20
//! max_live_goroutines = 65536
//! log_format = "json"
//! contexts = true      # false: goroutines only, no context probes (cheaper)
//! context_cancel_probe = false  # true: a second probe per context, at its cancel
//! source_root = "/src/myservice"  # workbench: source lines from this checkout
//! web_config_file = "/etc/goroscope/web.yml"  # TLS and basic auth (export::webconfig)
//!
//! # No [[targets]]: every Go process of the host (discovery), selected by [discovery].
//! [[targets]]
//! exe = "/usr/local/bin/myservice"
//! [[targets]]
//! pid = 4242
//!
//! [discovery]
//! min_process_age_seconds = 5
//! exe_include = []            # globs; empty: all
//! exe_exclude = []
//! namespace_include = []      # Kubernetes namespaces (globs)
//! namespace_exclude = []
//! container_include = []      # container names (globs)
//! container_exclude = []
//! pod_selector = ""           # e.g. "app in (api,web),tier!=batch"
//!
//! [runtime]
//! cri_socket = ""             # empty: the usual paths
//! pod_cache_seconds = 30
//! pod_labels = []             # pod labels copied into goroscope_pod_info
//!
//! [limits]
//! max_goroutines_per_process = 1000000
//! max_goroutines_per_node = 2000000
//!
//! [leak]
//! min_waiting_ratio = 0.8
//! min_retained_ratio = 0.9
//! scales = [
//!   { window_seconds = 30, min_growth = 10, buckets = 3 },
//!   { window_seconds = 600, min_growth = 20, buckets = 6 },
//!   { window_seconds = 5400, min_growth = 30, buckets = 6 },
//! ]
//! ```
//!
//! Unknown keys and bad values are errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::detect::leak::LeakConfig;
use crate::discover::select::{Selector, SelectorConfig};
use crate::export::webconfig::WebConfig;
use crate::session::Target;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9750";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[targets]]` entry: exactly one of `pid` and `exe`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    pub pid: Option<u32>,
    pub exe: Option<PathBuf>,
}

/// The config file as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub interval_seconds: Option<f64>,
    pub top_sites: Option<usize>,
    pub max_live_goroutines: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub contexts: Option<bool>,
    pub context_cancel_probe: Option<bool>,
    pub source_root: Option<PathBuf>,
    pub web_config_file: Option<PathBuf>,
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    pub leak: Option<LeakConfig>,
    pub discovery: Option<SelectorConfig>,
    pub runtime: Option<RuntimeConfig>,
    pub limits: Option<LimitsConfig>,
}

/// `[runtime]`: the node's container runtime, for pod identity.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// CRI socket; empty: found at the usual paths.
    pub cri_socket: Option<PathBuf>,
    pub pod_cache_seconds: Option<f64>,
    /// Pod labels copied into `goroscope_pod_info` (never onto every series).
    pub pod_labels: Option<Vec<String>>,
}

/// `[limits]`: the agent's memory is bounded by these, not by the traced services.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_goroutines_per_process: Option<usize>,
    pub max_goroutines_per_node: Option<usize>,
}

pub const DEFAULT_MAX_GOROUTINES_PER_PROCESS: usize = 1_000_000;
pub const DEFAULT_MAX_GOROUTINES_PER_NODE: usize = 2_000_000;

/// Flags and environment variables of `goroscope run` (all optional: they override the
/// file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long, env = "GOROSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Trace this process (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Trace every process running this Go executable, present and future (repeatable).
    /// Without --pid, --exe or [[targets]]: every Go process of the host.
    #[arg(long)]
    pub exe: Vec<PathBuf>,
    /// Discovery: trace only executables matching these globs (repeatable).
    #[arg(long, env = "GOROSCOPE_EXE_INCLUDE", value_delimiter = ',')]
    pub exe_include: Vec<String>,
    /// Discovery: never trace executables matching these globs (repeatable).
    #[arg(long, env = "GOROSCOPE_EXE_EXCLUDE", value_delimiter = ',')]
    pub exe_exclude: Vec<String>,
    /// Discovery: trace only pods in these Kubernetes namespaces (repeatable).
    #[arg(long, env = "GOROSCOPE_NAMESPACE_INCLUDE", value_delimiter = ',')]
    pub namespace_include: Vec<String>,
    /// Discovery: never trace pods in these Kubernetes namespaces (repeatable).
    #[arg(long, env = "GOROSCOPE_NAMESPACE_EXCLUDE", value_delimiter = ',')]
    pub namespace_exclude: Vec<String>,
    /// Discovery: pod label selector, e.g. "app in (api,web),tier!=batch".
    #[arg(long, env = "GOROSCOPE_POD_SELECTOR")]
    pub pod_selector: Option<String>,
    /// Discovery: processes younger than this are not traced yet [default: 5].
    #[arg(long, env = "GOROSCOPE_MIN_PROCESS_AGE_SECONDS")]
    pub min_process_age_seconds: Option<f64>,
    /// CRI socket of the node's container runtime, for pod identity [default: the
    /// usual paths of containerd and CRI-O].
    #[arg(long, env = "GOROSCOPE_CRI_SOCKET")]
    pub cri_socket: Option<PathBuf>,
    /// Goroutines tracked per process; beyond, they are counted only [default: 1000000].
    #[arg(long, env = "GOROSCOPE_MAX_GOROUTINES_PER_PROCESS")]
    pub max_goroutines_per_process: Option<usize>,
    /// Goroutines tracked on the node, all processes together [default: 2000000].
    #[arg(long, env = "GOROSCOPE_MAX_GOROUTINES_PER_NODE")]
    pub max_goroutines_per_node: Option<usize>,
    /// Address of the HTTP server (/metrics, /healthz, /readyz, /debug/goroutines)
    /// [default: 0.0.0.0:9750].
    #[arg(long, env = "GOROSCOPE_LISTEN")]
    pub listen: Option<String>,
    /// Web config file (YAML, as the Prometheus exporter toolkit's): TLS and basic auth
    /// of the HTTP server [default: none, plain HTTP without auth].
    #[arg(long, env = "GOROSCOPE_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Seconds between refreshes of the goroutine tables [default: 5].
    #[arg(long, env = "GOROSCOPE_INTERVAL_SECONDS")]
    pub interval_seconds: Option<f64>,
    /// Sites per process with their own metric series; the rest fold into site="other"
    /// [default: 20].
    #[arg(long, env = "GOROSCOPE_TOP_SITES")]
    pub top_sites: Option<usize>,
    /// Bound of the kernel's overflow map of live goroutines [default: 65536].
    #[arg(long, env = "GOROSCOPE_MAX_LIVE_GOROUTINES")]
    pub max_live_goroutines: Option<u32>,
    /// Log format [default: text].
    #[arg(long, value_enum, env = "GOROSCOPE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Trace contexts too (one more probe, hit per cancelable context created;
    /// cancellations are read from memory at each refresh); `false` traces goroutines
    /// only [default: true].
    #[arg(long, env = "GOROSCOPE_CONTEXTS", value_name = "BOOL")]
    pub contexts: Option<bool>,
    /// With contexts traced, a second probe at `(*cancelCtx).cancel`: cancellations
    /// exact and at once, about twice the cost per context [default: false].
    #[arg(long, env = "GOROSCOPE_CONTEXT_CANCEL_PROBE", value_name = "BOOL")]
    pub context_cancel_probe: Option<bool>,
    /// Leak model: its time scales, `WINDOW_SECONDS:MIN_GROWTH[:BUCKETS]`, fastest
    /// first [default: 30:10:3,600:20:6,5400:30:6].
    #[arg(long, env = "GOROSCOPE_LEAK_SCALES", value_name = "SCALES")]
    pub leak_scales: Option<String>,
    /// Leak model: least share of blocked goroutines at the site [default: 0.8].
    #[arg(long, env = "GOROSCOPE_LEAK_MIN_WAITING_RATIO")]
    pub leak_min_waiting_ratio: Option<f64>,
    /// Workbench: show source lines from this directory (a checkout of the traced
    /// programs' sources); the agent reads only the files their goroutines name.
    #[arg(long, env = "GOROSCOPE_SOURCE_ROOT", value_name = "DIR")]
    pub source_root: Option<PathBuf>,
}

/// The effective, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS and basic auth of the HTTP server (None: plain HTTP, no auth).
    pub web: Option<WebConfig>,
    pub interval: Duration,
    pub top_sites: usize,
    pub max_live_goroutines: u32,
    pub log_format: LogFormat,
    pub contexts: bool,
    /// A probe at cancel too (two per context), not cancellations read from memory.
    pub context_cancel_probe: bool,
    pub targets: Vec<Target>,
    pub leak: LeakConfig,
    /// Selectors of node discovery (when `targets` is `[Target::Node]`).
    pub discovery: SelectorConfig,
    pub min_process_age: Duration,
    pub cri_socket: Option<PathBuf>,
    pub pod_cache: Duration,
    pub pod_labels: Vec<String>,
    pub max_goroutines_per_process: usize,
    pub max_goroutines_per_node: usize,
    /// Workbench source lines from here.
    pub source_root: Option<PathBuf>,
    /// Read the stacks of every site's goroutines (a sample of each), not only of
    /// suspected sites and those the workbench asks for (`goroscope serve`).
    pub stacks_of_every_site: bool,
}

impl RunArgs {
    /// The leak model's thresholds: the file's (or the defaults), overridden by flags.
    fn leak(&self, mut leak: LeakConfig) -> Result<LeakConfig> {
        if let Some(v) = &self.leak_scales {
            leak.scales = LeakConfig::parse_scales(v)?;
        }
        if let Some(v) = self.leak_min_waiting_ratio {
            leak.min_waiting_ratio = v;
        }
        leak.validate()?;
        Ok(leak)
    }

    /// The file's `[discovery]` with the flags over it, checked (globs, label selector).
    fn discovery(&self, mut d: SelectorConfig) -> Result<SelectorConfig> {
        let over = |v: &mut Vec<String>, flag: &Vec<String>| {
            if !flag.is_empty() {
                *v = flag.clone();
            }
        };
        over(&mut d.exe_include, &self.exe_include);
        over(&mut d.exe_exclude, &self.exe_exclude);
        over(&mut d.namespace_include, &self.namespace_include);
        over(&mut d.namespace_exclude, &self.namespace_exclude);
        if let Some(s) = &self.pod_selector {
            d.pod_selector = s.clone();
        }
        if let Some(a) = self.min_process_age_seconds {
            d.min_process_age_seconds = Some(a);
        }
        Selector::new(&d)?;
        Ok(d)
    }

    /// The file's targets and the flags', without duplicates; none: the whole node.
    fn targets(&self, file: &[TargetEntry]) -> Result<Vec<Target>> {
        let mut targets = Vec::new();
        for (i, t) in file.iter().enumerate() {
            targets.push(match (t.pid, &t.exe) {
                (Some(0), None) => bail!("targets[{i}].pid must not be 0"),
                (Some(p), None) => Target::Pid(p),
                (None, Some(e)) => Target::Exe(e.clone()),
                _ => bail!("targets[{i}] needs exactly one of `pid` and `exe`"),
            });
        }
        targets.extend(self.pid.iter().map(|p| Target::Pid(*p)));
        targets.extend(self.exe.iter().cloned().map(Target::Exe));
        if targets.is_empty() {
            // Nothing named: every Go process of the host.
            targets.push(Target::Node);
        }
        let mut seen = std::collections::HashSet::new();
        targets.retain(|t| seen.insert(t.clone()));
        Ok(targets)
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }
}

impl Config {
    /// Merges flags/env over the file over the defaults, and validates.
    pub fn resolve(args: &RunArgs) -> Result<Config> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let listen_s = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            anyhow::anyhow!(
                "listen: {listen_s:?} is not an address like 0.0.0.0:9750 or [::1]:9750"
            )
        })?;
        let web = match args
            .web_config_file
            .clone()
            .or(file.web_config_file)
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(p) => Some(WebConfig::load(&p)?),
            None => None,
        };
        let interval = args
            .interval_seconds
            .or(file.interval_seconds)
            .unwrap_or(5.0);
        if !(0.1..=3600.0).contains(&interval) {
            bail!("interval_seconds must be between 0.1 and 3600, not {interval}");
        }
        let top_sites = args.top_sites.or(file.top_sites).unwrap_or(20);
        if !(1..=1000).contains(&top_sites) {
            bail!("top_sites must be between 1 and 1000, not {top_sites}");
        }
        let max_live = args
            .max_live_goroutines
            .or(file.max_live_goroutines)
            .unwrap_or(goroscope_common::DEFAULT_MAX_LIVE);
        if !(1024..=16 << 20).contains(&max_live) {
            bail!("max_live_goroutines must be between 1024 and 16777216, not {max_live}");
        }
        let leak = args.leak(file.leak.unwrap_or_default())?;
        if let Some(s) = leak
            .scales
            .iter()
            .find(|s| s.window_seconds / f64::from(s.buckets) < interval - 1e-9)
        {
            bail!(
                "leak.scales: a bucket of the {}-second scale ({} s) is shorter than interval_seconds ({interval}): every bucket needs a refresh",
                s.window_seconds,
                s.window_seconds / f64::from(s.buckets)
            );
        }
        let targets = args.targets(&file.targets)?;
        let discovery = args.discovery(file.discovery.unwrap_or_default())?;
        let min_age = discovery.min_process_age_seconds.unwrap_or(5.0);
        if !(0.0..=86400.0).contains(&min_age) {
            bail!("discovery.min_process_age_seconds must be between 0 and 86400, not {min_age}");
        }
        let runtime = file.runtime.unwrap_or_default();
        let cri_socket = args
            .cri_socket
            .clone()
            .or(runtime.cri_socket)
            .filter(|p| !p.as_os_str().is_empty());
        let pod_cache = runtime.pod_cache_seconds.unwrap_or(30.0);
        if !(1.0..=3600.0).contains(&pod_cache) {
            bail!("runtime.pod_cache_seconds must be between 1 and 3600, not {pod_cache}");
        }
        let pod_labels = runtime.pod_labels.unwrap_or_default();
        for l in &pod_labels {
            if l.is_empty() || l.len() > 317 || l.contains(char::is_whitespace) {
                bail!("runtime.pod_labels: {l:?} is not a Kubernetes label key");
            }
        }
        let limits = file.limits.unwrap_or_default();
        let per_process = args
            .max_goroutines_per_process
            .or(limits.max_goroutines_per_process)
            .unwrap_or(DEFAULT_MAX_GOROUTINES_PER_PROCESS);
        let per_node = args
            .max_goroutines_per_node
            .or(limits.max_goroutines_per_node)
            .unwrap_or(DEFAULT_MAX_GOROUTINES_PER_NODE);
        if per_process == 0 || per_node == 0 {
            bail!("limits.max_goroutines_per_process and limits.max_goroutines_per_node must be at least 1");
        }
        let source_root = args.source_root.clone().or(file.source_root);
        if let Some(r) = &source_root {
            if !r.is_dir() {
                bail!("source_root: {} is not a directory", r.display());
            }
        }
        Ok(Config {
            listen,
            web,
            interval: Duration::from_secs_f64(interval),
            top_sites,
            max_live_goroutines: max_live,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            contexts: args.contexts.or(file.contexts).unwrap_or(true),
            context_cancel_probe: args
                .context_cancel_probe
                .or(file.context_cancel_probe)
                .unwrap_or(false),
            targets,
            leak,
            discovery,
            min_process_age: Duration::from_secs_f64(min_age),
            cri_socket,
            pod_cache: Duration::from_secs_f64(pod_cache),
            pod_labels,
            max_goroutines_per_process: per_process,
            max_goroutines_per_node: per_node,
            source_root,
            stacks_of_every_site: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (crate::testdir::Dir, RunArgs) {
        let d = crate::testdir::Dir::new("config");
        let p = d.0.join("goroscope.toml");
        std::fs::write(&p, text).unwrap();
        (
            d,
            RunArgs {
                config: Some(p),
                ..RunArgs::default()
            },
        )
    }

    fn err(text: &str) -> String {
        let (_d, a) = file(text);
        format!("{:#}", Config::resolve(&a).unwrap_err())
    }

    #[test]
    fn full_file_and_flag_override() {
        let (_d, mut a) = file(
            "listen = \"127.0.0.1:9999\"\ninterval_seconds = 2\ntop_sites = 5\n\
             log_format = \"json\"\ncontexts = false\n[[targets]]\nexe = \"/bin/svc\"\n\
             [[targets]]\npid = 42\n[leak]\nmin_retained_ratio = 0.5\n\
             scales = [{ window_seconds = 60, min_growth = 3 }]\n",
        );
        let c = Config::resolve(&a).unwrap();
        assert!(!c.contexts);
        assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.top_sites, 5);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.targets,
            vec![Target::Exe("/bin/svc".into()), Target::Pid(42)]
        );
        assert_eq!(c.leak.scales.len(), 1);
        assert_eq!(
            (c.leak.scales[0].min_growth, c.leak.scales[0].buckets),
            (3, 6)
        );
        assert_eq!(c.leak.min_retained_ratio, 0.5);
        assert_eq!(c.leak.min_waiting_ratio, 0.8);
        a.leak_scales = Some("20:5:2,300:9".into());
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.leak.scales[1].window_seconds, 300.0);
        assert_eq!(c.leak.scales[0].buckets, 2);
        a.leak_scales = Some("2:5:2".into());
        let e = Config::resolve(&a).unwrap_err().to_string();
        assert!(e.contains("shorter than interval_seconds"), "{e}");
        a.leak_scales = None;
        a.top_sites = Some(7);
        a.listen = Some("[::1]:1".into());
        a.pid = vec![42, 43];
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.top_sites, 7);
        assert_eq!(c.listen, "[::1]:1".parse().unwrap());
        assert!(!c.contexts);
        a.contexts = Some(true);
        assert!(Config::resolve(&a).unwrap().contexts);
        assert!(!Config::resolve(&a).unwrap().context_cancel_probe);
        a.context_cancel_probe = Some(true);
        assert!(Config::resolve(&a).unwrap().context_cancel_probe);
        // Duplicates collapse.
        assert_eq!(c.targets.len(), 3);
    }

    #[test]
    fn web_config_file_from_the_file_the_environment_or_the_flag() {
        let (d, mut a) = file("");
        let web = d.0.join("web.yml");
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&web, format!("basic_auth_users:\n  alice: {hash}\n")).unwrap();
        let other = d.0.join("other.yml");
        std::fs::write(&other, "# nothing: plain HTTP\n").unwrap();
        assert_eq!(Config::resolve(&a).unwrap().web, None);
        let text = format!("web_config_file = {:?}\n", web.display().to_string());
        std::fs::write(a.config.as_ref().unwrap(), text).unwrap();
        let c = Config::resolve(&a).unwrap();
        let w = c.web.expect("web config");
        assert_eq!(w.path, web);
        assert_eq!(w.users.keys().collect::<Vec<_>>(), ["alice"]);
        // The flag (or GOROSCOPE_WEB_CONFIG_FILE, parsed by clap into the same field)
        // wins over the file.
        a.web_config_file = Some(other.clone());
        let w = Config::resolve(&a).unwrap().web.expect("web config");
        assert_eq!(w.path, other);
        assert!(w.users.is_empty() && w.tls.is_none());
        // An empty value: none.
        a.web_config_file = Some(PathBuf::new());
        std::fs::write(a.config.as_ref().unwrap(), "").unwrap();
        assert_eq!(Config::resolve(&a).unwrap().web, None);
        // A bad one stops everything, naming the key inside it.
        std::fs::write(&other, "tls_server_config:\n  certfile: x\n").unwrap();
        a.web_config_file = Some(other);
        let e = format!("{:#}", Config::resolve(&a).unwrap_err());
        assert!(
            e.contains("web_config_file") && e.contains("certfile"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn defaults_need_only_a_target() {
        let a = RunArgs {
            pid: vec![1],
            ..RunArgs::default()
        };
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.top_sites, 20);
        assert!(c.contexts);
        assert!(!c.context_cancel_probe, "one probe per context by default");
        assert_eq!(c.leak, LeakConfig::default());
        assert_eq!(c.max_goroutines_per_process, 1_000_000);
        assert_eq!(c.max_goroutines_per_node, 2_000_000);
        // Nothing named: the whole node.
        let node = Config::resolve(&RunArgs::default()).unwrap();
        assert_eq!(node.targets, vec![Target::Node]);
        assert_eq!(node.min_process_age, Duration::from_secs(5));
        assert_eq!(node.cri_socket, None);
        assert_eq!(node.pod_cache, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listne = \"x\"\n", "listne"),
            ("[leak]\nwindow = 3\n", "window"),
            ("[[targets]]\npid = 1\nexe = \"/x\"\n", "targets[0]"),
            ("[[targets]]\nname = \"x\"\n", "name"),
            ("[[targets]]\n", "targets[0]"),
            ("interval_seconds = \"5s\"\n", "interval_seconds"),
            (
                "interval_seconds = 0\n[[targets]]\npid=1\n",
                "interval_seconds",
            ),
            ("top_sites = 0\n[[targets]]\npid=1\n", "top_sites"),
            ("listen = \"9750\"\n[[targets]]\npid=1\n", "listen"),
            ("log_format = \"xml\"\n", "log_format"),
            ("contexts = \"no\"\n", "contexts"),
            (
                "[leak]\nmin_waiting_ratio = 2.0\n[[targets]]\npid=1\n",
                "leak.min_waiting_ratio",
            ),
            (
                "[leak]\nscales = [{ window_seconds = 0.5, min_growth = 1 }]\n[[targets]]\npid=1\n",
                "leak.scales[0].window_seconds",
            ),
            (
                "max_live_goroutines = 5\n[[targets]]\npid=1\n",
                "max_live_goroutines",
            ),
            ("this is not toml", "goroscope.toml"),
            (
                "[discovery]\nexe_include = [\"[\"]\n",
                "discovery.exe_include",
            ),
            (
                "[discovery]\npod_selector = \"app in (a\"\n",
                "discovery.pod_selector",
            ),
            (
                "[discovery]\nmin_process_age_seconds = -1\n",
                "discovery.min_process_age_seconds",
            ),
            ("[discovery]\nnamespaces = []\n", "namespaces"),
            (
                "[runtime]\npod_cache_seconds = 0\n",
                "runtime.pod_cache_seconds",
            ),
            ("[runtime]\npod_labels = [\"a b\"]\n", "runtime.pod_labels"),
            (
                "[limits]\nmax_goroutines_per_node = 0\n",
                "limits.max_goroutines_per_node",
            ),
            ("[limits]\nmax_goroutines = 5\n", "max_goroutines"),
            ("web_config = \"/x.yml\"\n", "web_config"),
            (
                "web_config_file = \"/nonexistent/web.yml\"\n",
                "web_config_file /nonexistent/web.yml",
            ),
            ("web_config_file = 5\n", "web_config_file"),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?}: error {e:?} does not name {key}");
        }
        let missing = RunArgs {
            config: Some("/nonexistent/goroscope.toml".into()),
            ..RunArgs::default()
        };
        let e = format!("{:#}", Config::resolve(&missing).unwrap_err());
        assert!(e.contains("/nonexistent/goroscope.toml"), "{e}");
    }
}
