//! Loading the kernel programs and attaching them at the sites chosen by [`crate::gobin`].
//!
//! One BPF object serves every traced binary: each attached uprobe carries a cookie that
//! indexes its [`SiteConfig`] (which register holds the `*g`, field offsets for that Go
//! version) in the `SITE_CONFIG` array.

use std::num::NonZeroU32;

use anyhow::{bail, Context, Result};
use aya::maps::{Array, PerCpuHashMap};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;
use goroscope_common::{ProcCounters, SiteConfig, MAX_SITE_CONFIGS};

use crate::gobin::{Analysis, Hook, ProbeSite};

/// The kernel programs, built from `ebpf/goroscope-ebpf` by `agent/build.rs`.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOROSCOPE_BPF_OBJECT"));

/// Which processes a probe fires for.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Only this process.
    Pid(NonZeroU32),
    /// Every process running the binary, present and future.
    AllProcesses,
}

pub struct Probes {
    ebpf: Ebpf,
    next_cookie: u32,
}

/// The kernel program for a hook whose `*g` is in register `base_reg`.
fn program_name(hook: Hook, base_reg: u8) -> Option<&'static str> {
    use goroscope_common::reg;
    match (hook, base_reg) {
        (Hook::GoroutineCreate, reg::RBX) => Some("goroutine_create_rbx"),
        (Hook::GoroutineCreate, reg::RAX) => Some("goroutine_create_rax"),
        (Hook::GoroutineExit, reg::RAX) => Some("goroutine_exit_rax"),
        _ => None,
    }
}

impl Probes {
    /// Loads the BPF object into the kernel (maps created, programs not yet attached).
    pub fn load() -> Result<Probes> {
        let ebpf = Ebpf::load(BPF_OBJECT).map_err(|e| {
            let hint = if unsafe_is_root() {
                ""
            } else {
                " (loading BPF programs needs root, or CAP_BPF and CAP_PERFMON)"
            };
            anyhow::anyhow!("loading the BPF programs failed: {e}{hint}")
        })?;
        Ok(Probes {
            ebpf,
            next_cookie: 0,
        })
    }

    /// Attaches the programs for `hooks` at the binary's chosen sites.
    pub fn attach(
        &mut self,
        bin: &Analysis,
        hooks: &[Hook],
        scope: Scope,
    ) -> Result<Vec<ProbeSite>> {
        let mut attached = Vec::new();
        for &hook in hooks {
            let sites: Vec<&ProbeSite> =
                bin.probe_sites.iter().filter(|s| s.hook == hook).collect();
            if sites.is_empty() {
                bail!(
                    "{}: no probe site for {} ({})",
                    bin.path.display(),
                    hook.name(),
                    bin.missing_sites.join("; ")
                );
            }
            for site in sites {
                let Some(prog_name) = program_name(hook, site.base_reg) else {
                    bail!(
                        "no kernel program for {} with the g in register #{}",
                        hook.name(),
                        site.base_reg
                    );
                };
                let cookie = self.next_cookie;
                if cookie >= MAX_SITE_CONFIGS {
                    bail!("too many probe sites (limit {MAX_SITE_CONFIGS})");
                }
                let cfg = SiteConfig {
                    goid_off: bin.offsets.g.goid,
                    parent_goid_off: bin.offsets.g.parent_goid,
                    gopc_off: bin.offsets.g.gopc,
                    startpc_off: bin.offsets.g.startpc,
                };
                let mut configs: Array<_, SiteConfig> = Array::try_from(
                    self.ebpf
                        .map_mut("SITE_CONFIG")
                        .context("map SITE_CONFIG missing")?,
                )?;
                configs.set(cookie, cfg, 0).context("writing SITE_CONFIG")?;

                let prog: &mut UProbe = self
                    .ebpf
                    .program_mut(prog_name)
                    .with_context(|| format!("program {prog_name} missing"))?
                    .try_into()?;
                if prog.fd().is_err() {
                    prog.load()
                        .with_context(|| format!("loading program {prog_name}"))?;
                }
                let scope = match scope {
                    Scope::Pid(pid) => UProbeScope::OneProcess(pid),
                    Scope::AllProcesses => UProbeScope::AllProcesses,
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                    cookie: Some(u64::from(cookie)),
                };
                prog.attach(point, &bin.path, scope).with_context(|| {
                    format!(
                        "attaching {} probe at {}+{:#x} (file offset {:#x}) in {}",
                        hook.name(),
                        site.function,
                        site.offset,
                        site.file_offset,
                        bin.path.display()
                    )
                })?;
                self.next_cookie += 1;
                tracing::info!(
                    hook = hook.name(),
                    site = %format!("{}+{:#x}", site.function, site.offset),
                    instruction = %site.instruction,
                    emulated = site.emulated,
                    "probe attached"
                );
                attached.push(site.clone());
            }
        }
        Ok(attached)
    }

    /// Kernel counters of one process, summed over CPUs.
    pub fn counters(&self, tgid: u32) -> Result<ProcCounters> {
        let map: PerCpuHashMap<_, u32, ProcCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map("PROC_COUNTERS")
                .context("map PROC_COUNTERS missing")?,
        )?;
        let mut sum = ProcCounters::default();
        match map.get(&tgid, 0) {
            Ok(per_cpu) => {
                for c in per_cpu.iter() {
                    sum.created += c.created;
                    sum.exited += c.exited;
                    sum.read_errors += c.read_errors;
                }
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("reading PROC_COUNTERS"),
        }
        Ok(sum)
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
