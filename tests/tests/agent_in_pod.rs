//! The agent as the DaemonSet runs it: a container of the image CI builds
//! (deploy/Dockerfile), in a real containerd pod with the host's PID namespace, a
//! read-only root, `drop: [ALL]` plus exactly the manifest's capabilities, the CRI socket
//! mounted read-only — and `goroscope run` with no target traces a Go program in another
//! pod, labelled with that pod. With any one of the capabilities dropped it cannot: the
//! list is minimal and true.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use integration_tests::containerd::{containerd_allowed, ContainerSpec, Containerd, Pod, PodSpec};
use integration_tests::deploy::{ensure_image_tar, find, rendered, IMAGE};
use integration_tests::{
    blockers_site_value, bpf_allowed, fixture, free_port, http_get, parse_metrics, wait_for,
};

const BLOCK: &str = "// blockers: blocking site";

/// The capabilities the base DaemonSet adds (after `drop: [ALL]`).
fn manifest_capabilities() -> Vec<String> {
    let docs = rendered("deploy/kubernetes/base");
    let c = &find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        ["securityContext"]["capabilities"];
    assert_eq!(c["drop"], serde_json::json!(["ALL"]));
    c["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Runs the agent's pod with `caps`; returns it and its metrics address.
fn agent_pod(ctd: &Containerd, caps: &[String], n: usize) -> (Pod, String) {
    let mut spec = PodSpec::new("goroscope", &format!("goroscope-{n}"), &uid(n));
    spec.host_pid = true;
    let pod = ctd.run_pod(&spec);
    let addr = format!("127.0.0.1:{}", free_port());
    let socket_dir = ctd.socket.parent().unwrap().to_path_buf();
    let socket_name = ctd.socket.file_name().unwrap().to_str().unwrap();
    let mut c = ContainerSpec::new("goroscope", IMAGE);
    c.args = [
        "run",
        "--listen",
        &addr,
        "--interval-seconds",
        "1",
        "--cri-socket",
        &format!("/host/run/containerd/{socket_name}"),
    ]
    .map(String::from)
    .to_vec();
    c.capabilities = caps.to_vec();
    c.drop_all = true;
    c.read_only_root = true;
    c.mounts = vec![(socket_dir, "/host/run/containerd".into(), true)];
    ctd.run_container(&pod, &c);
    (pod, addr)
}

fn uid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Live goroutines at the blocking site of `pid`, labelled with the shop pod, if the agent
/// at `addr` serves them.
fn traced(addr: &str, pid: u32) -> Option<f64> {
    let r = http_get(addr, "/metrics", None).ok()?;
    let s = parse_metrics(&r.body);
    blockers_site_value(
        &s,
        "goroscope_site_goroutines",
        pid,
        BLOCK,
        &[
            ("namespace", "shop"),
            ("pod", "checkout-7d9f"),
            ("container", "api"),
        ],
    )
}

#[test]
fn the_agent_container_traces_another_pod_with_exactly_the_manifests_capabilities() {
    let test = "the_agent_container_traces_another_pod_with_exactly_the_manifests_capabilities";
    if !bpf_allowed(test) || !containerd_allowed(test) {
        return;
    }
    let Some(image) = ensure_image_tar(test) else {
        return;
    };
    let caps = manifest_capabilities();
    let ctd = Containerd::start();
    ctd.import_tarball(&image);

    // The service: a binary of another user (0500 in a 0700 directory, as services are
    // installed), run by root in its container with the runtime's default capabilities.
    let private = ctd.dir.join("service");
    std::fs::create_dir(&private).unwrap();
    std::fs::copy(
        fixture(27, "blockers", "default").path,
        private.join("blockers"),
    )
    .unwrap();
    for (p, mode) in [(private.join("blockers"), 0o500), (private.clone(), 0o700)] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ctd.import_image("goroscope.test/service:1", &[], &["/srv/blockers"]);
    let pod = ctd.run_pod(&PodSpec::new("shop", "checkout-7d9f", &uid(99)));
    let mut spec = ContainerSpec::new("api", "goroscope.test/service:1");
    spec.env.push(("BLOCKERS_SCRIPT".into(), "block 6".into()));
    spec.mounts.push((private.clone(), "/srv".into(), true));
    let api = ctd.run_container(&pod, &spec);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", api.pid)).unwrap(),
        Path::new("/srv/blockers")
    );

    // With exactly the manifest's capabilities: traced, labelled with its pod.
    let (agent, addr) = agent_pod(&ctd, &caps, 0);
    wait_for(
        "the service traced by the agent's container",
        Duration::from_secs(40),
        || (traced(&addr, api.pid)? == 6.0).then_some(()),
    );
    ctd.remove_pod(&agent.id);

    // With any one dropped: not traced (the agent cannot load its probes, see the
    // service's executable, or read its binary).
    for (i, dropped) in caps.iter().enumerate() {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let (agent, addr) = agent_pod(&ctd, &fewer, i + 1);
        // The agent's first refresh plus the minimum process age, three times over.
        std::thread::sleep(Duration::from_secs(15));
        assert_eq!(
            traced(&addr, api.pid),
            None,
            "traced without {dropped}: the capability list is not minimal\n{}",
            ctd.container_log(&agent, "goroscope")
        );
        // And it says why, in one line.
        let log = ctd.container_log(&agent, "goroscope");
        let why = if dropped == "SYS_ADMIN" {
            "loading the BPF programs failed"
        } else {
            "cannot be examined"
        };
        let said: Vec<&str> = log.lines().filter(|l| l.contains(why)).collect();
        assert!(
            !said.is_empty(),
            "without {dropped} the agent does not say {why:?}:\n{log}"
        );
        eprintln!("without {dropped}: not traced; the agent said: {}", said[0]);
        ctd.remove_pod(&agent.id);
    }
}
