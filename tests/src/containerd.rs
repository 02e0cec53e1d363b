//! A private containerd (Debian's `containerd` + `runc`, CRI plugin) for tests that need
//! real pods: started as our child with its own root, state, sockets and cgroup root,
//! images built from local files (no registry), pods and containers made over CRI with
//! goroscope's own client, kubelet-style. Dropping [`Containerd`] removes the pods, stops
//! the daemon by pid, kills what is left of ours (found by our socket or cgroup root, by
//! pid), unmounts and deletes its directories and cgroups.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use goroscope::discover::cri::runtime_v1::{
    Capability, ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ImageSpec, Int64Value, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, Mount,
    MountPropagation, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    VersionRequest,
};
use goroscope::discover::cri::CriClient;
use sha2::{Digest, Sha256};

use crate::is_root;

/// The sandbox ("pause") image every pod of a [`Containerd`] uses.
pub const PAUSE_IMAGE: &str = "goroscope.test/pause:1";
/// Longest wait for one CRI call of the harness (creating a sandbox unpacks its image).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A pause process: blocks until SIGTERM or SIGINT (it runs as PID 1 of the sandbox,
/// where signals without a handler are ignored).
const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
static void bye(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    for (;;) pause();
}
"#;

/// Whether containerd tests can run: root, and `containerd`, `ctr`, `runc` and a static
/// C toolchain (`gcc`, `libc6-dev`) installed. In CI (`CI=true`) a missing piece is a
/// failure, never a skip; elsewhere the test is skipped with a loud message.
pub fn containerd_allowed(test: &str) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !is_root() {
        missing.push("root".into());
    }
    for tool in ["containerd", "ctr", "runc", "gcc"] {
        if !on_path(tool) {
            missing.push(tool.into());
        }
    }
    if !Path::new("/usr/lib/cni/loopback").exists() {
        missing.push("/usr/lib/cni/loopback (containernetworking-plugins)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test}: containerd tests must run in CI but {what} missing \
             (`cargo xtask setup` installs the Debian packages; run as root)"
        );
    }
    eprintln!("\n!!! SKIPPED {test}: {what} missing (run `cargo xtask setup`, as root) !!!\n");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// A pod to run: kubelet-style metadata and labels.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's own labels (kubelet's `io.kubernetes.pod.*` are added).
    pub labels: Vec<(String, String)>,
    /// `hostPID`: the sandbox and its containers in the node's PID namespace.
    pub host_pid: bool,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, uid: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            labels: Vec::new(),
            host_pid: false,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.push((key.into(), value.into()));
        self
    }
}

/// A container to run in a pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Arguments after the image's entrypoint.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Linux capabilities, without the `CAP_` prefix (e.g. `BPF`, `PERFMON`). With
    /// [`ContainerSpec::drop_all`] these are all it has, like a manifest's `drop: [ALL]`.
    pub capabilities: Vec<String>,
    pub drop_all: bool,
    pub read_only_root: bool,
    /// Host path mounts: `(host path, container path, read-only)`.
    pub mounts: Vec<(PathBuf, String, bool)>,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            ..ContainerSpec::default()
        }
    }
}

/// A pod sandbox made by [`Containerd::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    /// The cgroup parent given to the runtime, kubelet-style:
    /// `/<harness root>/kubepods/besteffort/pod<uid>`.
    pub cgroup_parent: String,
    config: PodSandboxConfig,
}

/// A started container.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    /// The full 64-hex container id.
    pub id: String,
    /// Host pid of the container's process (from the runtime's verbose status).
    pub pid: u32,
}

/// A containerd of our own; see the module doc.
pub struct Containerd {
    child: Child,
    pub dir: PathBuf,
    /// Its gRPC (and CRI) socket.
    pub socket: PathBuf,
    /// The top cgroup (under every hierarchy) of this harness's pods, e.g.
    /// `goroscope-test-1234-0`.
    pub cgroup_root: String,
    rt: tokio::runtime::Runtime,
    cri: CriClient,
}

static STARTED: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// Starts a containerd (after [`containerd_allowed`]) and imports the pause image;
    /// panics with its log if it does not come up.
    pub fn start() -> Containerd {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = format!("goroscope-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{name}-containerd"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("cni")).expect("containerd dir");
        fs::write(
            dir.join("cni/10-loopback.conflist"),
            r#"{"cniVersion": "0.4.0", "name": "goroscope-test", "plugins": [{"type": "loopback"}]}"#,
        )
        .expect("cni conf");
        let socket = dir.join("containerd.sock");
        fs::write(dir.join("config.toml"), config(&dir, &socket)).expect("config.toml");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let cri = {
            let _guard = rt.enter();
            goroscope::discover::cri::connect(&socket, CALL_TIMEOUT).expect("CRI client")
        };
        let mut c = Containerd {
            child,
            dir,
            socket,
            cgroup_root: name,
            rt,
            cri,
        };
        c.wait_ready();
        let pause = c.build_pause();
        c.import_image(PAUSE_IMAGE, &[(pause.as_path(), "/pause")], &["/pause"]);
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", self.log_tail());
            }
            if self.socket.exists() {
                let mut cri = self.cri.clone();
                let version = self.rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        cri.version(VersionRequest::default()),
                    )
                    .await
                });
                if let Ok(Ok(v)) = version {
                    let v = v.into_inner();
                    eprintln!(
                        "containerd: {} {} (CRI {}) on {}",
                        v.runtime_name,
                        v.runtime_version,
                        v.runtime_api_version,
                        self.socket.display()
                    );
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} in time:\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `gcc -static` of [`PAUSE_C`].
    fn build_pause(&self) -> PathBuf {
        let src = self.dir.join("pause.c");
        let bin = self.dir.join("pause");
        fs::write(&src, PAUSE_C).expect("pause.c");
        let out = Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("gcc");
        assert!(
            out.status.success(),
            "gcc -static pause.c (needs libc6-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    }

    /// Builds an image named `name` (e.g. `goroscope.test/leaky:1`) of one layer holding
    /// `files` (`(host file, path in the image)`, executable) with `entrypoint`, as an
    /// OCI image layout tarball, and imports it with `ctr images import` into the
    /// `k8s.io` namespace (the CRI's).
    pub fn import_image(&self, name: &str, files: &[(&Path, &str)], entrypoint: &[&str]) {
        let tarball = self
            .dir
            .join(format!("{}.oci.tar", name.replace(['/', ':'], "_")));
        fs::write(&tarball, oci_image(name, files, entrypoint)).expect("write image");
        self.import_tarball(&tarball);
    }

    /// An image holding the Go fixture `f` at `/app/<name>`, its entrypoint; returns the
    /// image's name.
    pub fn import_fixture(&self, f: &crate::Fixture) -> String {
        let name = format!("goroscope.test/{}:{}-{}", f.name, f.go, f.variant);
        let inside = format!("/app/{}", f.name);
        self.import_image(&name, &[(f.path.as_path(), &inside)], &[&inside]);
        name
    }

    /// `ctr images import` of an image tarball (OCI layout or `docker save`).
    pub fn import_tarball(&self, tarball: &Path) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tarball)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr images import {}: {}{}",
            tarball.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a pod sandbox, kubelet-style: host network, metadata and `io.kubernetes.pod.*`
    /// labels, cgroup parent `/<cgroup root>/kubepods/besteffort/pod<uid>`.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod {
        let cgroup_parent = format!("/{}/kubepods/besteffort/pod{}", self.cgroup_root, spec.uid);
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
        let log_dir = self.dir.join("pods").join(&spec.uid);
        fs::create_dir_all(&log_dir).expect("pod log dir");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            // Host network: the node's UTS namespace too, no hostname of its own.
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels,
            annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(spec.host_pid, true)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut cri = self.cri.clone();
        let id = self
            .rt
            .block_on(cri.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        Pod {
            id,
            spec: spec.clone(),
            cgroup_parent,
            config,
        }
    }

    /// Creates and starts a container in `pod`, kubelet-style (its own PID namespace
    /// unless the pod is `host_pid`; stdin kept open, as the fixtures exit at its end),
    /// and returns its id and host pid.
    pub fn run_container(&self, pod: &Pod, spec: &ContainerSpec) -> RunningContainer {
        let labels = HashMap::from([
            (
                "io.kubernetes.container.name".to_string(),
                spec.name.clone(),
            ),
            ("io.kubernetes.pod.name".into(), pod.spec.name.clone()),
            (
                "io.kubernetes.pod.namespace".into(),
                pod.spec.namespace.clone(),
            ),
            ("io.kubernetes.pod.uid".into(), pod.spec.uid.clone()),
        ]);
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(k, v)| goroscope::discover::cri::runtime_v1::KeyValue {
                    key: k.clone(),
                    value: v.clone().into_bytes(),
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, path, ro)| Mount {
                    container_path: path.clone(),
                    host_path: host.to_string_lossy().into_owned(),
                    readonly: *ro,
                    propagation: MountPropagation::PropagationPrivate as i32,
                    ..Default::default()
                })
                .collect(),
            labels,
            log_path: format!("{}/0.log", spec.name),
            stdin: true,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: spec.capabilities.clone(),
                        drop_capabilities: if spec.drop_all {
                            vec!["ALL".into()]
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    }),
                    namespace_options: Some(namespaces(pod.spec.host_pid, false)),
                    run_as_user: Some(Int64Value { value: 0 }),
                    readonly_rootfs: spec.read_only_root,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        fs::create_dir_all(Path::new(&pod.config.log_directory).join(&spec.name))
            .expect("container log dir");
        let mut cri = self.cri.clone();
        let id = self
            .rt
            .block_on(cri.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {}: {e}\n{}", spec.name, self.log_tail()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {}: {e}\n{}", spec.name, self.log_tail()));
        let pid = self.container_pid(&id);
        RunningContainer { id, pid }
    }

    /// Host pid of a running container, from `ContainerStatus` (verbose: the runtime's
    /// `info` JSON has `pid`).
    pub fn container_pid(&self, id: &str) -> u32 {
        let mut cri = self.cri.clone();
        let status = self
            .rt
            .block_on(cri.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }))
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner();
        let info = status.info.get("info").expect("verbose status has info");
        let info: serde_json::Value = serde_json::from_str(info).expect("info is JSON");
        let pid = info["pid"].as_u64().unwrap_or(0) as u32;
        assert!(pid > 0, "no pid in the status of {id}: {info}");
        pid
    }

    /// The log a container wrote (CRI log format: `TIME STREAM TAG line`).
    pub fn container_log(&self, pod: &Pod, container: &str) -> String {
        fs::read_to_string(
            Path::new(&pod.config.log_directory)
                .join(container)
                .join("0.log"),
        )
        .unwrap_or_default()
    }

    /// Stops and removes a pod and its containers.
    pub fn remove_pod(&self, pod_id: &str) {
        let mut cri = self.cri.clone();
        self.rt.block_on(async {
            let _ = cri
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod_id.into(),
                })
                .await;
            let _ = cri
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id.into(),
                })
                .await;
        });
    }

    /// Pids of processes whose cgroup is under this harness's cgroup root, or whose
    /// command line names our directory (the shims).
    fn our_processes(&self) -> Vec<u32> {
        let me = std::process::id();
        let dir = self.dir.to_string_lossy().into_owned();
        let root = format!("/{}/", self.cgroup_root);
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me && pid != self.child.id())
            .filter(|pid| {
                let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cgroup.contains(&root) || String::from_utf8_lossy(&cmdline).contains(&dir)
            })
            .collect()
    }
}

/// Kubelet's namespaces: host network; PID of the pod (sandbox) or of each container,
/// or the node's with `hostPID`; IPC of the pod.
fn namespaces(host_pid: bool, sandbox: bool) -> NamespaceOption {
    let pid = match (host_pid, sandbox) {
        (true, _) => NamespaceMode::Node,
        (false, true) => NamespaceMode::Pod,
        (false, false) => NamespaceMode::Container,
    };
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// containerd's config: everything private to `dir` (root, state, sockets, runc's
/// state, `/opt`), the CRI plugin with the local pause image, `restrict_oom_score_adj`
/// (we may not lower our OOM score), overlayfs, runc v2 with cgroupfs, a loopback-only
/// CNI network (pods use the host's network anyway), the stream server on loopback.
fn config(dir: &Path, socket: &Path) -> String {
    let d = dir.display();
    let s = socket.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#
    )
}

/// An OCI image layout tarball: one uncompressed layer with `files` (and their parent
/// directories), a config with `entrypoint`, a manifest, an index naming it `name`.
fn oci_image(name: &str, files: &[(&Path, &str)], entrypoint: &[&str]) -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (host, path) in files {
        let rel = path.trim_start_matches('/');
        let mut parent = Path::new(rel).parent();
        let mut chain = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            chain.push(format!("{}/", p.display()));
            parent = p.parent();
        }
        for d in chain.into_iter().rev() {
            if !dirs.contains(&d) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                layer
                    .append_data(&mut h, &d, std::io::empty())
                    .expect("dir entry");
                dirs.push(d);
            }
        }
        let data = fs::read(host).expect("image file");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_cksum();
        layer
            .append_data(&mut h, rel, data.as_slice())
            .expect("file entry");
    }
    let layer = layer.into_inner().expect("layer tar");
    let layer_digest = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    })
    .to_string()
    .into_bytes();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append_data(&mut h, path, data).expect("image entry");
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion": "1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in [&layer, &config, &manifest] {
        let digest = sha256(blob);
        let hex = digest.trim_start_matches("sha256:");
        add(format!("blobs/sha256/{hex}"), blob);
    }
    out.into_inner().expect("image tar")
}

fn sha256(data: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in Sha256::digest(data) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The pods first (their processes, mounts, runc state), while containerd runs.
        let mut cri = self.cri.clone();
        let pods = self
            .rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    cri.list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await
            })
            .ok()
            .and_then(Result::ok)
            .map(|r| r.into_inner().items)
            .unwrap_or_default();
        for pod in pods {
            self.remove_pod(&pod.id);
        }
        // containerd itself, by pid.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever of ours outlived it (shims, containers if removal failed), by pid.
        for pid in self.our_processes() {
            // SAFETY: kill(2) with a pid read from /proc just now; at worst the process
            // is gone (ESRCH). These are processes of this harness (its cgroup root or
            // its directory in their command line).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.our_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Mounts under our directory (snapshots, shm), deepest first.
        let dir = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        // Our cgroups under every hierarchy, deepest first (rmdir removes empty ones).
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            remove_cgroups(&hierarchy.path().join(&self.cgroup_root));
        }
        remove_cgroups(&Path::new("/sys/fs/cgroup").join(&self.cgroup_root));
    }
}

fn remove_cgroups(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
