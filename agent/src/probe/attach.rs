//! Attaching the kernel programs at the sites chosen by [`crate::gobin`], and detaching
//! them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aya::maps::Array;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::UProbe;
use goroscope_common::{CtxConfig, SiteConfig, CTX_HOLDER_ITABS, CTX_RANGES, MAX_SITE_CONFIGS};

use super::{Attached, Probes, Program, Scope};
use crate::gobin::{Analysis, Hook, ProbeSite};

/// The kernel program for a hook whose `*g` is in register `base_reg`.
fn program_name(hook: Hook, base_reg: u8) -> Option<&'static str> {
    use goroscope_common::reg;
    match (hook, base_reg) {
        (Hook::GoroutineCreate, reg::RBX) => Some("goroutine_create_rbx"),
        (Hook::GoroutineCreate, reg::RAX) => Some("goroutine_create_rax"),
        (Hook::GoroutineExit, reg::RAX) => Some("goroutine_exit_rax"),
        (Hook::ContextCreate, reg::RAX) => Some("context_create_rax"),
        (Hook::ContextCreate, reg::RDI) => Some("context_create_rdi"),
        (Hook::ContextCancel, reg::RAX) => Some("context_cancel_rax"),
        _ => None,
    }
}

impl Probes {
    /// Attaches `program` for `hooks` at the binary's chosen sites. `path` is the file to
    /// attach to (e.g. `/proc/PID/exe`).
    pub fn attach(
        &mut self,
        bin: &Analysis,
        path: &Path,
        hooks: &[Hook],
        scope: Scope,
        program: Program,
    ) -> Result<Vec<ProbeSite>> {
        self.attach_group(0, bin, path, hooks, scope, program)
    }

    /// As [`Probes::attach`], the probes tagged with `group` (e.g. one per binary) so
    /// that [`Probes::detach_group`] removes them together.
    pub fn attach_group(
        &mut self,
        group: u64,
        bin: &Analysis,
        path: &Path,
        hooks: &[Hook],
        scope: Scope,
        program: Program,
    ) -> Result<Vec<ProbeSite>> {
        let mut attached = Vec::new();
        for &hook in hooks {
            let sites: Vec<&ProbeSite> = bin.sites_for(hook).collect();
            if sites.is_empty() {
                bail!(
                    "{}: no probe site for {} ({})",
                    bin.path.display(),
                    hook.name(),
                    bin.missing_sites.join("; ")
                );
            }
            for site in sites {
                self.attach_in(group, bin, path, site, site.file_offset, scope, program)?;
                attached.push(site.clone());
            }
        }
        Ok(attached)
    }

    /// Attaches at an explicit file offset (the site's own, or e.g. the function entry
    /// for the benchmark's "usual way").
    pub fn attach_at(
        &mut self,
        bin: &Analysis,
        path: &Path,
        site: &ProbeSite,
        file_offset: u64,
        scope: Scope,
        program: Program,
    ) -> Result<()> {
        self.attach_in(0, bin, path, site, file_offset, scope, program)
    }

    #[allow(clippy::too_many_arguments)]
    fn attach_in(
        &mut self,
        group: u64,
        bin: &Analysis,
        path: &Path,
        site: &ProbeSite,
        file_offset: u64,
        scope: Scope,
        program: Program,
    ) -> Result<()> {
        let prog_name = match program {
            Program::Noop => "noop",
            Program::Goroscope => program_name(site.hook, site.base_reg).with_context(|| {
                format!(
                    "no kernel program for {} with the g in register #{}",
                    site.hook.name(),
                    site.base_reg
                )
            })?,
        };
        // A cookie freed by a detached group, or the next unused one; taken only once
        // the probe is attached.
        let (cookie, reused) = match self.free_cookies.last() {
            Some(&c) => (c, true),
            None if self.next_cookie < MAX_SITE_CONFIGS => (self.next_cookie, false),
            None => bail!(
                "too many probe sites attached at once (limit {MAX_SITE_CONFIGS}, about {} binaries)",
                MAX_SITE_CONFIGS / 4
            ),
        };
        let g = &bin.offsets.g;
        // Without `parentGoid` (Go < 1.21) the kernel reads the goid in its place; the
        // agent never takes a goroutine for its own parent.
        let parent = g.parent_goid.unwrap_or(g.goid);
        let cfg = SiteConfig::new(g.goid, parent, g.gopc, g.startpc).with_context(|| {
            format!(
                "runtime.g layout of {} not supported: parentGoid {}, gopc {}, startpc {} are not within {} bytes",
                bin.go_version,
                parent,
                g.gopc,
                g.startpc,
                goroscope_common::G_WINDOW
            )
        })?;
        let mut configs: Array<_, SiteConfig> = Array::try_from(
            self.ebpf
                .map_mut("SITE_CONFIG")
                .context("map SITE_CONFIG missing")?,
        )?;
        // A probe attached for one process runs only in it: its pid saves the programs a
        // helper call a hit.
        let tgid = match scope {
            Scope::Pid(pid) => pid.get(),
            Scope::AllProcesses => 0,
        };
        let cfg = SiteConfig { tgid, ..cfg };
        configs.set(cookie, cfg, 0).context("writing SITE_CONFIG")?;
        if site.hook == Hook::ContextCreate {
            self.write_context_config(bin, site, cookie, tgid)?;
        }

        let prog: &mut UProbe = self
            .ebpf
            .program_mut(prog_name)
            .with_context(|| format!("program {prog_name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading program {prog_name}"))?;
        }
        let uscope = match scope {
            Scope::Pid(pid) => UProbeScope::OneProcess(pid),
            Scope::AllProcesses => UProbeScope::AllProcesses,
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: Some(u64::from(cookie)),
        };
        let link = prog.attach(point, path, uscope).with_context(|| {
            format!(
                "attaching {} probe at {}+{:#x} (file offset {file_offset:#x}) in {}",
                site.hook.name(),
                site.function,
                site.offset,
                path.display()
            )
        })?;
        self.links.push(Attached {
            program: prog_name,
            hook: site.hook,
            link,
            cookie,
            group,
        });
        if reused {
            self.free_cookies.pop();
        } else {
            self.next_cookie += 1;
        }
        tracing::info!(
            hook = site.hook.name(),
            site = %format!("{}+{:#x}", site.function, site.offset),
            instruction = %site.instruction,
            emulated = site.emulated,
            "probe attached"
        );
        Ok(())
    }

    /// Detaches every probe (also done on drop).
    pub fn detach_all(&mut self) {
        let all: Vec<Attached> = self.links.drain(..).collect();
        self.detach(all);
    }

    /// Detaches the probes attached with [`Probes::attach_group`] for `group`; their
    /// cookies (configuration slots) are reused by later attachments. Returns how many
    /// probes were detached.
    pub fn detach_group(&mut self, group: u64) -> usize {
        let (gone, kept): (Vec<Attached>, Vec<Attached>) =
            self.links.drain(..).partition(|a| a.group == group);
        self.links = kept;
        let n = gone.len();
        self.free_cookies.extend(gone.iter().map(|a| a.cookie));
        self.detach(gone);
        n
    }

    fn detach(&mut self, links: Vec<Attached>) {
        for a in links {
            if let Some(p) = self.ebpf.program_mut(a.program) {
                if let Ok(p) = <&mut UProbe>::try_from(p) {
                    let _ = p.detach(a.link);
                }
            }
        }
    }

    /// Tells the context-creation probes of `group` (one binary) where the process's
    /// `chan struct{}` type descriptor is and which parent types hold their children
    /// (link-time addresses; the first `CTX_HOLDER_ITABS` are kept), once the agent has
    /// learned them: from then on, a context garbage collected before the agent judged it
    /// is told held (cancelled) from not (see `CTX_ONE_PROBE`). Written only when it
    /// changes.
    pub fn set_context_types(&mut self, group: u64, chan_type: u64, holders: &[u64]) -> Result<()> {
        let cookies: Vec<u32> = self
            .links
            .iter()
            .filter(|a| a.group == group && a.hook == Hook::ContextCreate)
            .map(|a| a.cookie)
            .collect();
        if cookies.is_empty() {
            return Ok(());
        }
        let mut itabs = [0u64; CTX_HOLDER_ITABS];
        for (slot, h) in itabs.iter_mut().zip(holders) {
            *slot = *h;
        }
        let mut ctx_configs: Array<_, CtxConfig> = Array::try_from(
            self.ebpf
                .map_mut("CTX_CONFIG")
                .context("map CTX_CONFIG missing")?,
        )?;
        for cookie in cookies {
            let mut c = ctx_configs.get(&cookie, 0).context("reading CTX_CONFIG")?;
            if (c.chan_type, c.holder_itabs) != (chan_type, itabs) {
                c.chan_type = chan_type;
                c.holder_itabs = itabs;
                ctx_configs
                    .set(cookie, c, 0)
                    .context("writing CTX_CONFIG")?;
            }
        }
        Ok(())
    }

    /// Hits of the empty (`noop`) probes so far, per hook, summed over CPUs (benchmarks).
    pub fn noop_hits(&self) -> Result<Vec<(Hook, u64)>> {
        let hits: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
            self.ebpf
                .map("NOOP_HITS")
                .context("map NOOP_HITS missing")?,
        )?;
        let mut out: Vec<(Hook, u64)> = Vec::new();
        for a in self.links.iter().filter(|a| a.program == "noop") {
            let n: u64 = hits.get(&a.cookie, 0)?.iter().sum();
            match out.iter_mut().find(|(h, _)| *h == a.hook) {
                Some((_, t)) => *t += n,
                None => out.push((a.hook, n)),
            }
        }
        Ok(out)
    }

    /// The configuration of a context-creation probe: where package `context`'s code is
    /// (the creation site is the first return address outside it) and the probe's
    /// address (for the PIE bias).
    fn write_context_config(
        &mut self,
        bin: &Analysis,
        site: &ProbeSite,
        cookie: u32,
        tgid: u32,
    ) -> Result<()> {
        let mut ranges = bin.context_ranges();
        if ranges.len() > CTX_RANGES {
            tracing::warn!(
                runs = ranges.len(),
                "package context's code is split in more than {CTX_RANGES} runs: \
                 creation sites inside the others show as context functions"
            );
            ranges.sort_by_key(|(a, b)| std::cmp::Reverse(b - a));
            ranges.truncate(CTX_RANGES);
        }
        let mut c = CtxConfig {
            probe_addr: site.address,
            flags: self.ctx_flags
                | if bin.context_create_called_outside {
                    goroscope_common::CTX_CHECK_CALLER
                } else {
                    0
                },
            tgid,
            done_off: bin.offsets.cancel_ctx.map_or(0, |cc| cc.done),
            ..CtxConfig::default()
        };
        for (slot, (a, b)) in c.ranges.iter_mut().zip(ranges) {
            *slot = [a, b];
        }
        let mut ctx_configs: Array<_, CtxConfig> = Array::try_from(
            self.ebpf
                .map_mut("CTX_CONFIG")
                .context("map CTX_CONFIG missing")?,
        )?;
        ctx_configs
            .set(cookie, c, 0)
            .context("writing CTX_CONFIG")?;
        Ok(())
    }
}
