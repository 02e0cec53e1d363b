//! `cargo xtask bench scrape`: time of a /metrics scrape of `goroscope run` tracing many
//! processes (the `sites` fixture) with 100 `go` sites each. Writes
//! `target/bench/scrape.md`.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::driven::Driven;
use super::report::Report;
use super::{median, sample};
use crate::project::fixtures_dir;

pub fn run(processes: usize, scrapes: usize) -> Result<()> {
    let agent_bin = super::prepare(
        "scrape",
        &[
            ("--processes", processes as u64),
            ("--scrapes", scrapes as u64),
        ],
    )?;
    let fixture = fixtures_dir().join("go1.26.6/sites-default");
    let mut procs = Vec::new();
    for _ in 0..processes {
        let mut p = Driven::start(&mut Command::new(&fixture))?;
        p.ready_pid()?;
        procs.push(p);
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Driven::start(
        Command::new(&agent_bin)
            .args(["run", "--exe"])
            .arg(&fixture)
            .args(["--listen", &addr, "--top-sites", "120", "--log", "warn"]),
    )?;
    let scraper = Scraper::new(&addr);
    let (series, bytes) = scraper.wait_for_sites(processes)?;
    let mut wall = Vec::with_capacity(scrapes);
    let mut render = Vec::with_capacity(scrapes);
    for _ in 0..scrapes {
        let t = Instant::now();
        let body = scraper.metrics()?;
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(v) = sample(&body, "goroscope_scrape_duration_seconds") {
            render.push(v * 1e3);
        }
    }
    drop(agent);
    for p in procs {
        p.finish()?;
    }
    report(
        processes,
        scrapes,
        (series, bytes),
        &Timings::of(wall, render),
    )
    .write()
}

/// Scrape times, ms.
struct Timings {
    median: f64,
    p90: f64,
    max: f64,
    /// Median of what the agent says rendering took (NaN if it never said).
    render_median: f64,
}

impl Timings {
    fn of(mut wall: Vec<f64>, mut render: Vec<f64>) -> Timings {
        let max = wall.iter().copied().fold(0.0, f64::max);
        let median_wall = median(&mut wall);
        Timings {
            median: median_wall,
            p90: wall[wall.len() * 9 / 10],
            max,
            render_median: if render.is_empty() {
                f64::NAN
            } else {
                median(&mut render)
            },
        }
    }
}

/// The Markdown report; `(series, bytes)` of one scrape.
fn report(
    processes: usize,
    scrapes: usize,
    (series, bytes): (usize, usize),
    t: &Timings,
) -> Report {
    let mut report = Report::new("scrape", "Scrape benchmark");
    report.paragraph(&format!(
        "`goroscope run --exe sites-default` (Go 1.26.6) tracing {processes} processes with \
         100 `go` sites each (5 goroutines per site), `--top-sites 120`: {series} samples, \
         {bytes} bytes per scrape (Prometheus text)."
    ));
    let ms = |what: &str, v: f64| vec![what.to_string(), format!("{v:.2}")];
    let median = format!("scrape wall time, median of {scrapes} (HTTP/1.0 over loopback)");
    report.table(
        &["", "ms"],
        &[
            ms(&median, t.median),
            ms("scrape wall time, p90", t.p90),
            ms("scrape wall time, max", t.max),
            ms(
                "render time (goroscope_scrape_duration_seconds), median",
                t.render_median,
            ),
        ],
    );
    report.line("Goal: under 50 ms.");
    report
}

/// Scrapes the agent's /metrics like a Prometheus without keep-alive: HTTP/1.0, a new
/// connection per scrape.
pub(super) struct Scraper {
    http: ureq::Agent,
    url: String,
}

impl Scraper {
    pub(super) fn new(addr: &str) -> Scraper {
        let http = ureq::Agent::config_builder()
            .proxy(None)
            .max_idle_connections(0)
            .build()
            .new_agent();
        Scraper {
            http,
            url: format!("http://{addr}/metrics"),
        }
    }

    /// The body of a 200 response (any other status is an error).
    pub(super) fn metrics(&self) -> Result<String> {
        let mut response = self
            .http
            .get(&self.url)
            .version(ureq::http::Version::HTTP_10)
            .call()?;
        // No size limit: the body grows with the number of traced processes.
        Ok(response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()?)
    }

    /// Waits until every process and its 100 sites are in the metrics; returns the
    /// number of samples and the size of that scrape.
    fn wait_for_sites(&self, processes: usize) -> Result<(usize, usize)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(body) = self.metrics() {
                let traced = sample(&body, "goroscope_traced_processes");
                let sites = body
                    .lines()
                    .filter(|l| l.starts_with("goroscope_site_goroutines{") && l.ends_with(" 5"))
                    .count();
                if traced == Some(processes as f64) && sites >= processes * 100 {
                    let series = body.lines().filter(|l| !l.starts_with('#')).count();
                    return Ok((series, body.len()));
                }
            }
            if Instant::now() > deadline {
                bail!("the agent did not trace {processes} processes with 100 sites each in time");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
