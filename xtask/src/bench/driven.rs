//! Processes a benchmark drives line by line: the bench fixtures (`ready PID`, then a
//! reply per command) and `goroscope bench-attach` (`attached`, then a JSON report when
//! its stdin closes).

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A child process driven line by line over stdin/stdout. Dropping it kills the child
/// (by its pid) if it is still running.
pub struct Driven {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
}

impl Driven {
    pub fn start(cmd: &mut Command) -> Result<Driven> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Driven { child, stdin, out })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn line(&mut self) -> Result<String> {
        self.out
            .next()
            .context("process ended early")?
            .map_err(Into::into)
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The pid a bench fixture announces in its first line, `ready <pid>`.
    pub fn ready_pid(&mut self) -> Result<String> {
        Ok(self
            .line()?
            .strip_prefix("ready ")
            .context("fixture did not say ready")?
            .to_string())
    }

    /// Sends `cmd` to a bench fixture and parses its reply, `<prefix> <number>`.
    pub fn reply_value(&mut self, cmd: &str, prefix: &str) -> Result<f64> {
        self.send(cmd)?;
        let l = self.line()?;
        l.strip_prefix(prefix)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("fixture said {l:?}"))
    }

    /// Closes stdin and returns the remaining output.
    pub fn finish(mut self) -> Result<Vec<String>> {
        drop(self.stdin.take());
        let rest: Vec<String> = self.out.by_ref().collect::<Result<_, _>>()?;
        self.child.wait()?;
        Ok(rest)
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // Only our own child, by its pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A bench fixture that said `ready PID`, and `goroscope bench-attach` on it in a mode
/// (none for mode `none`).
pub struct Traced {
    pub target: Driven,
    pub pid: String,
    attached: Option<Driven>,
}

impl Traced {
    /// Starts the fixture `cmd`, then `AGENT bench-attach` on it in `mode` with `hooks`,
    /// and waits until the agent says it is attached.
    pub fn start(cmd: &mut Command, agent: &Path, mode: &str, hooks: &str) -> Result<Traced> {
        let mut target = Driven::start(cmd)?;
        let pid = target.ready_pid()?;
        if mode == "none" {
            return Ok(Traced {
                target,
                pid,
                attached: None,
            });
        }
        let mut a = Driven::start(Command::new(agent).args([
            "bench-attach",
            "--pid",
            &pid,
            "--mode",
            mode,
            "--hooks",
            hooks,
        ]))?;
        let l = a.line()?;
        if l != "attached" {
            bail!("agent said {l:?}");
        }
        Ok(Traced {
            target,
            pid,
            attached: Some(a),
        })
    }

    /// Sends `line` to the agent and parses its one-line JSON reply (None in mode
    /// `none`).
    pub fn ask_agent(&mut self, line: &str) -> Result<Option<serde_json::Value>> {
        let Some(a) = self.attached.as_mut() else {
            return Ok(None);
        };
        a.send(line)?;
        Ok(Some(serde_json::from_str(&a.line()?)?))
    }

    /// Detaches the agent, then ends the fixture; the agent's JSON report (its last
    /// line), None in mode `none`.
    pub fn finish(mut self) -> Result<Option<serde_json::Value>> {
        let report = match self.attached.take() {
            Some(a) => {
                let out = a.finish()?;
                Some(serde_json::from_str(out.last().context("agent report")?)?)
            }
            None => None,
        };
        self.target.finish()?;
        Ok(report)
    }
}
