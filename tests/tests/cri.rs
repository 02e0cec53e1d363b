//! Pod identity from a real container runtime: a private containerd (Debian's, CRI
//! plugin) runs a kubelet-style pod with a Go fixture, and goroscope's `PodResolver`
//! names its container; without a runtime, or with a wrong socket, nothing fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use goroscope::discover::cri::{find_socket, PodIdentity, PodResolver};
use integration_tests::containerd::{containerd_allowed, ContainerSpec, Containerd, PodSpec};
use integration_tests::{fixture, wait_for};

const UID: &str = "0f6c8a4e-3b7d-4c51-9a2e-7d9f1c2b3a40";

#[test]
fn resolver_names_the_container_of_a_containerd_pod() {
    let test = "resolver_names_the_container_of_a_containerd_pod";
    if !containerd_allowed(test) {
        return;
    }
    let started = Instant::now();
    let ctd = Containerd::start();
    let image = ctd.import_fixture(&fixture(27, "leaky", "default"));
    let pod = ctd.run_pod(&PodSpec::new("shop", "checkout-7d9f", UID).label("app", "checkout"));
    let api = ctd.run_container(&pod, &ContainerSpec::new("api", &image));
    let up = started.elapsed();
    assert_eq!(api.id.len(), 64, "{}", api.id);
    assert!(api.id.bytes().all(|b| b.is_ascii_hexdigit()), "{}", api.id);

    // The container's process is the Go fixture, running (it says so on stdout).
    let exe = std::fs::read_link(format!("/proc/{}/exe", api.pid)).expect("exe");
    assert_eq!(exe, PathBuf::from("/app/leaky"), "pid {}", api.pid);
    wait_for("the fixture's ready line", Duration::from_secs(20), || {
        ctd.container_log(&pod, "api")
            .contains(" stdout F ready ")
            .then_some(())
    });

    // What discovery parses: the container id in the process's cgroup lines.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", api.pid)).expect("cgroup");
    eprintln!("cgroup of the container's process {}:\n{cgroup}", api.pid);
    let expected = format!("{}/{}", pod.cgroup_parent, api.id);
    assert!(
        cgroup.lines().any(|l| l.ends_with(&format!(":{expected}"))),
        "no cgroup line ends with {expected}:\n{cgroup}"
    );

    // The resolver: a miss first (nothing listed yet), then the identity soon after.
    let resolver = PodResolver::start(Some(ctd.socket.clone()), Duration::from_secs(60));
    let asked = Instant::now();
    let identity = wait_for("the pod identity", Duration::from_secs(20), || {
        resolver.lookup(&api.id)
    });
    let resolved_in = asked.elapsed();
    assert_eq!(
        identity,
        PodIdentity {
            namespace: "shop".into(),
            pod: "checkout-7d9f".into(),
            container: "api".into(),
            pod_uid: UID.into(),
            labels: BTreeMap::from([("app".into(), "checkout".into())]),
        }
    );
    let status = resolver.status();
    assert_eq!(status.socket.as_deref(), Some(ctd.socket.as_path()));
    assert!(status.connected, "{status:?}");
    assert_eq!(status.error, None);
    assert_eq!(status.containers, 1, "{status:?}");
    assert_eq!(resolver.lookup(&"0".repeat(64)), None);
    assert!(
        PathBuf::from(format!("/proc/{}", api.pid)).exists(),
        "the fixture exited (its stdin must stay open)"
    );
    let took = started.elapsed();

    // Dropping the harness leaves nothing of its own behind.
    let dir = ctd.dir.clone();
    drop(ctd);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !PathBuf::from(format!("/proc/{}", api.pid)).exists(),
        "container process {} left running",
        api.pid
    );
    eprintln!(
        "containerd + pod + container up in {up:?}, identity resolved {resolved_in:?} \
         after the first lookup, test {took:?} (cleanup {:?})",
        started.elapsed() - took
    );
}

/// What a later test needs to run goroscope itself as a pod: host PID namespace, only
/// the listed capabilities, a read-only root, a read-only host path mount.
#[test]
fn containers_get_host_pid_exact_capabilities_read_only_root_and_mounts() {
    let test = "containers_get_host_pid_exact_capabilities_read_only_root_and_mounts";
    if !containerd_allowed(test) {
        return;
    }
    let ctd = Containerd::start();
    let image = ctd.import_fixture(&fixture(27, "leaky", "default"));
    let host_dir = ctd.dir.join("host-data");
    std::fs::create_dir_all(&host_dir).unwrap();
    let mut spec = PodSpec::new(
        "goroscope",
        "goroscope-x1",
        "11111111-2222-3333-4444-555555555555",
    );
    spec.host_pid = true;
    let pod = ctd.run_pod(&spec);
    let mut c = ContainerSpec::new("agent", &image);
    c.drop_all = true;
    c.capabilities = vec!["BPF".into(), "PERFMON".into(), "SYS_PTRACE".into()];
    c.read_only_root = true;
    c.mounts = vec![(host_dir.clone(), "/host/data".into(), true)];
    let agent = ctd.run_container(&pod, &c);

    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid)).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_BPF 39, CAP_PERFMON 38, CAP_SYS_PTRACE 19.
    assert_eq!(cap_eff, (1 << 39) | (1 << 38) | (1 << 19), "{status}");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_eq!(
        ns(&agent.pid.to_string()),
        ns("self"),
        "not in the host PID namespace"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", agent.pid)).unwrap();
    let mount = |point: &str| {
        mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("no mount at {point}:\n{mountinfo}"))
            .to_string()
    };
    for point in ["/", "/host/data"] {
        let line = mount(point);
        let options = line.split(' ').nth(5).unwrap();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{point} not read-only: {line}"
        );
    }
}

#[test]
fn resolver_on_a_missing_socket_says_why_on_one_line() {
    let socket = std::env::temp_dir().join(format!(
        "goroscope-cri-test-{}/no-such.sock",
        std::process::id()
    ));
    let resolver = PodResolver::start(Some(socket.clone()), Duration::from_secs(60));
    assert_eq!(resolver.lookup(&"a".repeat(64)), None);
    let status = wait_for("the error", Duration::from_secs(10), || {
        Some(resolver.status()).filter(|s| s.error.is_some())
    });
    eprintln!("status: {status:?}");
    assert_eq!(status.socket, Some(socket));
    assert!(!status.connected);
    let error = status.error.unwrap();
    assert!(
        !error.contains('\n') && error.contains("ListContainers"),
        "{error}"
    );
    assert_eq!(resolver.lookup(&"a".repeat(64)), None);
}

#[test]
fn resolver_without_a_runtime_names_nothing() {
    if let Some(s) = find_socket() {
        eprintln!(
            "!!! a CRI socket exists on this host ({}): the no-runtime case is not tested !!!",
            s.display()
        );
        return;
    }
    let resolver = PodResolver::start(None, Duration::from_secs(1));
    for _ in 0..5 {
        assert_eq!(resolver.lookup(&"a".repeat(64)), None);
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = resolver.status();
    assert_eq!(status.socket, None);
    assert!(!status.connected);
    assert_eq!(status.error, None);
}
