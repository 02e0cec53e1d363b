//! A real Prometheus (Debian's) for the tests: on loopback, in a temporary directory,
//! loading the shipped alert rules, optionally sending alerts to an Alertmanager; and a
//! real Alertmanager delivering to a webhook the test serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, http_get, wait_for, workspace_root};

/// A Prometheus server started by this test, on loopback, in a temporary directory.
pub struct Prometheus {
    server: Server,
}

impl Prometheus {
    pub fn start(scrape: &str) -> Prometheus {
        Prometheus::start_with(scrape, None)
    }

    /// As [`Prometheus::start`], sending alerts to the Alertmanager at `alertmanager`
    /// (resent every second). `scrape` may list several targets, separated by commas.
    pub fn start_with(scrape: &str, alertmanager: Option<&str>) -> Prometheus {
        let rules = workspace_root().join("deploy/prometheus/goroscope-rules.yml");
        let scrape = scrape.split(',').collect::<Vec<_>>().join("', '");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: goroscope\n    static_configs:\n      - targets: ['{scrape}']\n",
            rules.display()
        );
        if let Some(am) = alertmanager {
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\n"
            ));
        }
        let server = Server::start("prometheus", "prometheus", &config, |dir| {
            vec![
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                "--rules.alert.resend-delay=1s".into(),
            ]
        });
        Prometheus { server }
    }

    pub fn log(&self) -> String {
        self.server.log()
    }

    pub fn api(&self, path: &str) -> Value {
        let r = http_get(&self.server.addr, path, None).expect("Prometheus API");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"].clone()
    }

    /// Instant query: `(labels, value)` per series.
    pub fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// Alerts with their annotations: `(labels, annotations, state)`.
    pub fn alerts_annotated(&self) -> Vec<(Value, Value, String)> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"].clone(),
                    a["annotations"].clone(),
                    a["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Alerts: `(labels, state)`.
    pub fn alerts(&self) -> Vec<(Value, String)> {
        self.alerts_annotated()
            .into_iter()
            .map(|(labels, _, state)| (labels, state))
            .collect()
    }
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A webhook receiver on loopback: every POST body (JSON) goes to `received`.
pub struct Webhook {
    pub addr: String,
    pub received: Receiver<Value>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Ok(clone) = conn.try_clone() else {
                    continue;
                };
                let mut r = BufReader::new(clone);
                let mut len = 0usize;
                let mut line = String::new();
                // Headers, then a body of Content-Length bytes.
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Ok(v) = serde_json::from_slice(&body) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Webhook { addr, received }
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback, clustering off,
/// delivering every alert at once to `webhook`.
pub struct Alertmanager {
    server: Server,
    pub addr: String,
}

impl Alertmanager {
    pub fn start(webhook: &str) -> Alertmanager {
        let config = format!(
            "route:\n  receiver: test\n  group_by: ['alertname', 'namespace', 'pod', 'site']\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n    webhook_configs:\n      - url: 'http://{webhook}/alerts'\n        send_resolved: false\n"
        );
        let server = Server::start("alertmanager", "prometheus-alertmanager", &config, |dir| {
            vec![
                format!("--storage.path={}", dir.join("data").display()),
                "--cluster.listen-address=".into(),
            ]
        });
        Alertmanager {
            addr: server.addr.clone(),
            server,
        }
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A server of the Prometheus family started by a test: a temporary directory of its
/// own with its config (`NAME.yml`) and log (`NAME.log`), a loopback port, ready when
/// `/-/ready` answers. Dropping it stops it (by pid) and removes the directory.
struct Server {
    child: Child,
    dir: PathBuf,
    addr: String,
    name: &'static str,
}

impl Server {
    /// Starts `program` (a Debian package installed by `cargo xtask setup`) with
    /// `--config.file`, `--web.listen-address` and `args(dir)`.
    fn start(
        name: &'static str,
        program: &str,
        config: &str,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Server {
        let dir = std::env::temp_dir().join(format!("goroscope-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config_file = dir.join(format!("{name}.yml"));
        std::fs::write(&config_file, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(args(&dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} (Debian package, installed by `cargo xtask setup`): {e}")
            });
        let mut s = Server {
            child,
            dir,
            addr,
            name,
        };
        wait_for(&format!("{name} ready"), Duration::from_secs(60), || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("{program} exited ({status}):\n{}", s.log());
            }
            http_get(&s.addr, "/-/ready", None)
                .ok()
                .filter(|r| r.status == 200)
        });
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM to our own child, SIGKILL if it has not exited 20 s later.
fn terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
