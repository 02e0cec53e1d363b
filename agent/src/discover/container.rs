//! Which container a process runs in, from its `/proc/PID/cgroup`: the container id the
//! runtime gave it (what the CRI socket is asked about) and, for Kubernetes pods, the pod
//! uid in the cgroup path. Every layout of cgroup v1 and v2, with the cgroupfs and the
//! systemd drivers:
//!
//! | runtime | cgroupfs driver | systemd driver |
//! |---|---|---|
//! | containerd / CRI | `/kubepods/<qos>/pod<uid>/<id>` | `…/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | CRI-O | `/kubepods/<qos>/pod<uid>/crio-<id>` | `…/crio-<id>.scope` |
//! | Docker | `/docker/<id>` | `/system.slice/docker-<id>.scope` |
//! | podman | `/libpod_parent/libpod-<id>` | `/machine.slice/libpod-<id>.scope` |
//! | containerd (`ctr`, nerdctl) | `/<namespace>/<id>` | `…/nerdctl-<id>.scope` |

use std::fs;

use serde::Serialize;

/// The container runtime a container id belongs to, as far as the cgroup path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// containerd, through CRI (Kubernetes) or directly (ctr, nerdctl).
    Containerd,
    Crio,
    Docker,
    Podman,
    /// A 64-hex container id under a path that names no runtime.
    Unknown,
}

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// Full container id (64 hex digits).
    pub id: String,
    /// Kubernetes pod uid, when the cgroup path has one.
    pub pod_uid: Option<String>,
}

/// The container of `pid` (None: not in a container, or the process is gone).
pub fn of_pid(pid: u32) -> Option<ContainerRef> {
    parse(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The container named by the text of a `/proc/PID/cgroup` (every hierarchy of v1, the
/// single `0::` line of v2, or both in hybrid mode): the first line whose path ends in a
/// container.
pub fn parse(cgroup: &str) -> Option<ContainerRef> {
    cgroup.lines().find_map(|line| {
        // hierarchy-ID:controllers:path; the path may contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        parse_path(path)
    })
}

fn parse_path(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_uid = parts.iter().find_map(|p| pod_uid(p));
    let kube = parts.iter().any(|p| p.starts_with("kubepods"));
    // The container is the deepest component that names one (a process may sit in a
    // sub-cgroup of its container, e.g. systemd inside it).
    parts.iter().enumerate().rev().find_map(|(i, part)| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let (runtime, id) = if let Some(id) = part.strip_prefix("cri-containerd-") {
            (Runtime::Containerd, id)
        } else if let Some(id) = part.strip_prefix("crio-") {
            (Runtime::Crio, id)
        } else if let Some(id) = part.strip_prefix("docker-") {
            (Runtime::Docker, id)
        } else if let Some(id) = part.strip_prefix("libpod-") {
            (Runtime::Podman, id)
        } else if let Some(id) = part.strip_prefix("nerdctl-") {
            (Runtime::Containerd, id)
        } else if is_container_id(part) {
            let parent = i.checked_sub(1).map(|j| parts[j]).unwrap_or("");
            let runtime = if parent == "docker" {
                Runtime::Docker
            } else if parent == "libpod_parent" {
                Runtime::Podman
            } else if kube || i > 0 {
                // kubepods/…/pod<uid>/<id> (the runtime is asked through CRI), or
                // containerd's `/<namespace>/<id>`.
                Runtime::Containerd
            } else {
                Runtime::Unknown
            };
            (runtime, part)
        } else {
            return None;
        };
        // `libpod-conmon-<id>` is podman's monitor, not the container.
        is_container_id(id).then(|| ContainerRef {
            runtime,
            id: id.to_string(),
            pod_uid: pod_uid.clone(),
        })
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let tail = if let Some(t) = part.strip_prefix("pod") {
        t
    } else {
        part.rsplit_once("-pod")?.1
    };
    let uid = tail.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e5b0a9c2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
    const UID: &str = "5c1b2e0a-7d3f-4b8e-9a6c-1d2e3f4a5b6c";

    fn one(path: &str) -> Option<ContainerRef> {
        parse(&format!("0::{path}\n"))
    }

    #[test]
    fn kubernetes_cgroupfs_driver_v1_and_v2() {
        let v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        let want = ContainerRef {
            runtime: Runtime::Containerd,
            id: ID.into(),
            pod_uid: Some(UID.into()),
        };
        assert_eq!(parse(&v1), Some(want.clone()));
        assert_eq!(one(&format!("/kubepods/pod{UID}/{ID}")), Some(want));
    }

    #[test]
    fn kubernetes_systemd_driver_containerd_and_crio() {
        let u = UID.replace('-', "_");
        let base =
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice");
        let c = one(&format!("{base}/cri-containerd-{ID}.scope")).unwrap();
        assert_eq!(
            (c.runtime, c.id.as_str(), c.pod_uid.as_deref()),
            (Runtime::Containerd, ID, Some(UID))
        );
        let c = one(&format!("{base}/crio-{ID}.scope")).unwrap();
        assert_eq!(
            (c.runtime, c.pod_uid.as_deref()),
            (Runtime::Crio, Some(UID))
        );
        // CRI-O with the cgroupfs driver.
        let c = one(&format!("/kubepods/burstable/pod{UID}/crio-{ID}")).unwrap();
        assert_eq!((c.runtime, c.id.as_str()), (Runtime::Crio, ID));
    }

    #[test]
    fn docker_podman_and_plain_containerd() {
        let c = one(&format!("/docker/{ID}")).unwrap();
        assert_eq!((c.runtime, c.pod_uid), (Runtime::Docker, None));
        let c = parse(&format!("5:memory:/system.slice/docker-{ID}.scope\n")).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        let c = one(&format!("/machine.slice/libpod-{ID}.scope")).unwrap();
        assert_eq!(c.runtime, Runtime::Podman);
        let c = one(&format!("/libpod_parent/libpod-{ID}")).unwrap();
        assert_eq!(c.runtime, Runtime::Podman);
        // A process in a sub-cgroup of its container.
        let c = one(&format!("/machine.slice/libpod-{ID}.scope/container")).unwrap();
        assert_eq!((c.runtime, c.id.as_str()), (Runtime::Podman, ID));
        // podman's monitor is not the container.
        assert_eq!(
            one(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        let c = one(&format!("/k8s.io/{ID}")).unwrap();
        assert_eq!(c.runtime, Runtime::Containerd);
        assert_eq!(one(&format!("/{ID}")).unwrap().runtime, Runtime::Unknown);
    }

    #[test]
    fn host_processes_have_no_container() {
        assert_eq!(parse("0::/user.slice/user-0.slice/session-3.scope\n"), None);
        assert_eq!(
            parse("12:pids:/system.slice/containerd.service\n0::/init.scope\n"),
            None
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("garbage"), None);
        // Not 64 hex digits.
        assert_eq!(one("/docker/abc123"), None);
    }
}
