//! The mapping from CRI listings to identities, and the resolver without a runtime
//! (no root needed).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::runtime_v1::{Container, ContainerMetadata, PodSandbox, PodSandboxMetadata};
use super::*;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A sandbox as kubelet makes it: metadata plus the pod's labels and kubelet's own.
fn sandbox(id: &str, ns: &str, name: &str, uid: &str, pod_labels: &[(&str, &str)]) -> PodSandbox {
    let mut l = labels(pod_labels);
    l.extend(labels(&[
        ("io.kubernetes.pod.namespace", ns),
        ("io.kubernetes.pod.name", name),
        ("io.kubernetes.pod.uid", uid),
    ]));
    PodSandbox {
        id: id.into(),
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: ns.into(),
            attempt: 0,
        }),
        labels: l,
        ..Default::default()
    }
}

fn container(id: &str, sandbox: &str, name: &str) -> Container {
    Container {
        id: id.into(),
        pod_sandbox_id: sandbox.into(),
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn identity_from_sandbox_metadata_and_container_name() {
    let sandboxes = [
        sandbox(
            "sb1",
            "shop",
            "checkout-7d9f",
            "uid-1",
            &[("app", "checkout"), ("pod-template-hash", "7d9f")],
        ),
        sandbox("sb2", "kube-system", "dns-1", "uid-2", &[]),
    ];
    let containers = [
        container("c1", "sb1", "api"),
        container("c2", "sb1", "sidecar"),
        container("c3", "sb2", "coredns"),
    ];
    let ids = identities(&containers, &sandboxes);
    assert_eq!(ids.len(), 3);
    assert_eq!(
        ids["c1"],
        PodIdentity {
            namespace: "shop".into(),
            pod: "checkout-7d9f".into(),
            container: "api".into(),
            pod_uid: "uid-1".into(),
            labels: BTreeMap::from([
                ("app".into(), "checkout".into()),
                ("pod-template-hash".into(), "7d9f".into()),
            ]),
        }
    );
    assert_eq!(ids["c2"].container, "sidecar");
    assert_eq!(ids["c2"].pod, "checkout-7d9f");
    assert_eq!(ids["c3"].namespace, "kube-system");
    assert!(ids["c3"].labels.is_empty());
}

#[test]
fn identity_falls_back_to_kubelet_labels() {
    // Sandbox without metadata: its kubelet labels name the pod.
    let mut sb = sandbox("sb1", "shop", "checkout-7d9f", "uid-1", &[("app", "x")]);
    sb.metadata = None;
    // Container without metadata: its kubelet label names it.
    let mut c = container("c1", "sb1", "");
    c.metadata = None;
    c.labels = labels(&[("io.kubernetes.container.name", "api")]);
    let ids = identities(&[c.clone()], &[sb]);
    assert_eq!(
        ids["c1"],
        PodIdentity {
            namespace: "shop".into(),
            pod: "checkout-7d9f".into(),
            container: "api".into(),
            pod_uid: "uid-1".into(),
            labels: BTreeMap::from([("app".into(), "x".into())]),
        }
    );
    // Sandbox not listed (created between the two calls): the container's own kubelet
    // labels still name the pod; no pod labels.
    c.labels.extend(labels(&[
        ("io.kubernetes.pod.namespace", "shop"),
        ("io.kubernetes.pod.name", "checkout-7d9f"),
        ("io.kubernetes.pod.uid", "uid-1"),
    ]));
    let ids = identities(&[c], &[]);
    assert_eq!(ids["c1"].namespace, "shop");
    assert_eq!(ids["c1"].pod, "checkout-7d9f");
    assert_eq!(ids["c1"].pod_uid, "uid-1");
    assert_eq!(ids["c1"].container, "api");
    assert!(ids["c1"].labels.is_empty());
}

#[test]
fn non_kubernetes_containers_and_empty_ids() {
    // A container made by another CRI client: no kubelet labels, still listed.
    let c = container("c1", "sb9", "plain");
    let ids = identities(&[c, container("", "sb9", "no-id")], &[]);
    assert_eq!(ids.len(), 1);
    assert_eq!(
        ids["c1"],
        PodIdentity {
            container: "plain".into(),
            ..Default::default()
        }
    );
}

#[test]
fn candidates_cover_host_mount_and_pid_1_root() {
    let c = candidate_sockets();
    for p in [
        "/run/containerd/containerd.sock",
        "/var/run/containerd/containerd.sock",
        "/run/k3s/containerd/containerd.sock",
        "/run/crio/crio.sock",
        "/host/run/containerd/containerd.sock",
        "/host/run/crio/crio.sock",
        "/proc/1/root/run/containerd/containerd.sock",
        "/proc/1/root/var/run/crio/crio.sock",
    ] {
        assert!(c.iter().any(|x| x.as_os_str() == p), "{p} not in {c:?}");
    }
    assert_eq!(c[0].as_os_str(), "/run/containerd/containerd.sock");
}

#[test]
fn no_socket_means_no_identity_and_no_error() {
    if find_socket().is_some() {
        eprintln!("a CRI socket exists on this host: the no-socket case is not testable here");
        return;
    }
    let r = PodResolver::start(None, Duration::from_secs(1));
    assert_eq!(r.status(), RuntimeStatus::default());
    for _ in 0..3 {
        assert_eq!(r.lookup(&"a".repeat(64)), None);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(r.status(), RuntimeStatus::default());
}

fn wait_error(r: &PodResolver) -> RuntimeStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = r.status();
        if s.error.is_some() {
            return s;
        }
        assert!(Instant::now() < deadline, "no error reported: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_socket_reports_one_line_and_lookups_stay_quick() {
    let dir = std::env::temp_dir().join(format!("goroscope-cri-missing-{}", std::process::id()));
    let socket = dir.join("nothing.sock");
    let r = PodResolver::start(Some(socket.clone()), Duration::from_secs(60));
    let t = Instant::now();
    assert_eq!(r.lookup(&"b".repeat(64)), None);
    assert!(t.elapsed() < Duration::from_millis(50));
    let s = wait_error(&r);
    assert_eq!(s.socket.as_deref(), Some(socket.as_path()));
    assert!(!s.connected);
    assert_eq!(s.containers, 0);
    let e = s.error.unwrap();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("ListContainers"), "{e}");
    eprintln!("error line: {e}");
    drop(r);
}

/// A Unix socket bound in a fresh directory of this test run (`goroscope-cri-WHAT-PID`)
/// that no one serves: `(directory, socket path, listener)`.
fn listening_socket(what: &str) -> (PathBuf, PathBuf, std::os::unix::net::UnixListener) {
    let dir = std::env::temp_dir().join(format!("goroscope-cri-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join(format!("{what}.sock"));
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    (dir, socket, listener)
}

#[test]
fn hung_runtime_times_out_without_blocking_lookups() {
    // A socket whose server never accepts: connecting works (the kernel's backlog),
    // no answer ever comes.
    let (dir, socket, _listener) = listening_socket("hung");
    let started = Instant::now();
    let r = PodResolver::start(Some(socket.clone()), Duration::from_secs(60));
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(r.lookup(&"c".repeat(64)), None);
        assert!(t.elapsed() < Duration::from_millis(50));
    }
    let s = wait_error(&r);
    let waited = started.elapsed();
    assert!(waited < CALL_TIMEOUT * 3, "{waited:?}");
    assert!(!s.connected);
    eprintln!("after {waited:?}: {}", s.error.unwrap());
    let t = Instant::now();
    drop(r);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resolver_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<PodResolver>();
}

#[test]
fn misses_are_debounced_to_one_refresh_a_second() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A runtime that hangs up on every connection: each refresh connects once.
    let (dir, socket, listener) = listening_socket("debounce");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    let r = PodResolver::start(Some(socket.clone()), Duration::from_secs(60));
    wait_error(&r);
    std::thread::sleep(Duration::from_millis(300));
    let first = accepted.load(Ordering::Relaxed);
    assert!(first >= 1, "the first refresh did not connect");
    // 3 s of lookups of ever new ids, and of the same ones again: at most one refresh
    // a second (plus one in flight).
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        n += 1;
        assert_eq!(r.lookup(&format!("{n:064x}")), None);
        assert_eq!(r.lookup(&format!("{:064x}", n / 2)), None);
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = accepted.load(Ordering::Relaxed) - first;
    eprintln!("{n} missed ids in 3 s: {during} refreshes after the first {first}");
    assert!((2..=4).contains(&during), "{during} refreshes in 3 s");
    // Without misses, nothing until the ttl (after the refresh asked for by the last
    // misses, at most two gaps later).
    std::thread::sleep(Duration::from_millis(2500));
    let settled = accepted.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        settled,
        "refreshes without misses"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
