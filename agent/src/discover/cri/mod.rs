//! Pod identity: the Kubernetes namespace, pod and container of a container id, asked of
//! the node's container runtime (containerd, CRI-O) over its CRI socket.
//!
//! A [`PodResolver`] owns one background thread with a small current-thread tokio
//! runtime. It lists every container and every pod sandbox (one `ListContainers` and one
//! `ListPodSandbox` per refresh, never a call per container) every `ttl`, or about a
//! second after a [`PodResolver::lookup`] missed, with a timeout on each call, and swaps
//! the resulting map in. Lookups only read that map: they never wait for the runtime.
//! Without a runtime socket (a plain host) every lookup is `None` and nothing fails.
//!
//! The mapping from the runtime's answers to [`PodIdentity`] is the pure function
//! [`identities`].
//!
//! Why the CRI and not the Kubernetes API: an agent could instead watch the pods of its
//! node on the API server (`fieldSelector=spec.nodeName=NODE`) and match
//! `status.containerStatuses[].containerID` (`containerd://ID`) to the id in
//! `/proc/PID/cgroup`, which would also give owners and annotations. But that needs a
//! ServiceAccount with RBAC to list and watch pods, the API server reachable from every
//! node (one more watch per node on it), and a container's id appears there only once
//! kubelet has reported its status, seconds after its process started. The runtime's
//! socket is on the node, knows a container as soon as it is created (before its
//! process runs), needs no credentials and no network, and answers the same for
//! containerd and CRI-O; the cost is a read-only hostPath mount of the socket.

#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags
)]
pub mod runtime_v1;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, Notify};
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use runtime_v1::runtime_service_client::RuntimeServiceClient;
use runtime_v1::{Container, ListContainersRequest, ListPodSandboxRequest, PodSandbox};

/// The generated CRI runtime client over a tonic channel (see [`connect`]).
pub type CriClient = RuntimeServiceClient<Channel>;

/// Where container runtimes put their CRI socket: containerd, k3s's containerd, CRI-O.
/// [`candidate_sockets`] also looks for each under `/host` (a DaemonSet mounting the
/// host's `/run` at `/host/run`) and under `/proc/1/root` (a container with `hostPID`).
pub const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// Longest wait for one call to the runtime (connecting included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest time between two refreshes (misses are debounced to this).
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// Longest `ttl` honoured.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// kubelet's limit for CRI responses (a node with many containers exceeds gRPC's 4 MiB).
const MAX_MESSAGE: usize = 16 << 20;
/// Missed ids remembered at once (beyond, a miss waits for the next periodic refresh).
const MAX_MISSES: usize = 4096;
/// Labels kubelet adds to sandboxes and containers; not pod labels.
const KUBERNETES_PREFIX: &str = "io.kubernetes.";
const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const LABEL_POD: &str = "io.kubernetes.pod.name";
const LABEL_UID: &str = "io.kubernetes.pod.uid";
const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

/// Who a container is in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    /// The pod's labels (kubelet's own `io.kubernetes.*` ones left out).
    pub labels: BTreeMap<String, String>,
}

/// The runtime connection as last seen, for `/readyz`, logs and a metric.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RuntimeStatus {
    /// The CRI socket used (`None`: none configured and none at the usual paths).
    pub socket: Option<PathBuf>,
    /// Whether the last refresh listed the containers.
    pub connected: bool,
    /// Why the last refresh failed, on one line.
    pub error: Option<String>,
    /// Containers known (from the last successful refresh).
    pub containers: usize,
}

/// The paths [`PodResolver::start`] tries, in order: [`SOCKETS`] as they are, under
/// `/host`, under `/proc/1/root`.
pub fn candidate_sockets() -> Vec<PathBuf> {
    let prefixes = [
        Path::new("/"),
        Path::new("/host"),
        Path::new("/proc/1/root"),
    ];
    prefixes
        .iter()
        .flat_map(|prefix| {
            SOCKETS
                .iter()
                .map(move |s| prefix.join(s.trim_start_matches('/')))
        })
        .collect()
}

/// The first of [`candidate_sockets`] that is a Unix socket.
pub fn find_socket() -> Option<PathBuf> {
    candidate_sockets()
        .into_iter()
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
}

/// The identity of every container listed, by container id: namespace, pod and uid from
/// its sandbox's metadata (else the kubelet labels of the sandbox, else of the
/// container), the container's name from its metadata (else its kubelet label), and the
/// sandbox's labels without the `io.kubernetes.*` ones.
pub fn identities(
    containers: &[Container],
    sandboxes: &[PodSandbox],
) -> HashMap<String, PodIdentity> {
    let by_id: HashMap<&str, &PodSandbox> = sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
    containers
        .iter()
        .filter(|c| !c.id.is_empty())
        .map(|c| {
            let sandbox = by_id.get(c.pod_sandbox_id.as_str()).copied();
            (c.id.clone(), identity(c, sandbox))
        })
        .collect()
}

fn identity(c: &Container, sandbox: Option<&PodSandbox>) -> PodIdentity {
    let nonempty = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
    let label = |key: &str| {
        nonempty(sandbox.and_then(|s| s.labels.get(key)))
            .or_else(|| nonempty(c.labels.get(key)))
            .unwrap_or_default()
    };
    let meta = sandbox.and_then(|s| s.metadata.as_ref());
    PodIdentity {
        namespace: nonempty(meta.map(|m| &m.namespace)).unwrap_or_else(|| label(LABEL_NAMESPACE)),
        pod: nonempty(meta.map(|m| &m.name)).unwrap_or_else(|| label(LABEL_POD)),
        pod_uid: nonempty(meta.map(|m| &m.uid)).unwrap_or_else(|| label(LABEL_UID)),
        container: nonempty(c.metadata.as_ref().map(|m| &m.name))
            .or_else(|| nonempty(c.labels.get(LABEL_CONTAINER)))
            .unwrap_or_default(),
        labels: sandbox
            .map(|s| {
                s.labels
                    .iter()
                    .filter(|(k, _)| !k.starts_with(KUBERNETES_PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Pod identities of container ids, cached from the container runtime by a background
/// thread (stopped when the resolver is dropped). `Send + Sync`: share it in an `Arc`.
pub struct PodResolver {
    shared: Arc<Shared>,
    ttl: Duration,
    /// Dropping it tells the worker to stop.
    stop: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<()>>,
}

struct Shared {
    identities: RwLock<HashMap<String, PodIdentity>>,
    status: Mutex<RuntimeStatus>,
    /// Ids looked up and not found, by what became of them.
    misses: Mutex<HashMap<String, Miss>>,
    /// A miss asks for an early refresh.
    wake: Notify,
}

enum Miss {
    /// Asked for; the next refresh tells.
    Pending,
    /// Not known to the runtime at the refresh after the miss; asked again after `ttl`.
    Absent(Instant),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PodResolver {
    /// Starts resolving from the CRI socket `socket`, or (`None`) the first found of
    /// [`candidate_sockets`] (looked for again at each refresh until one is). `ttl`: how
    /// long a listing stays fresh (at least [`MIN_REFRESH_GAP`], at most a day).
    pub fn start(socket: Option<PathBuf>, ttl: Duration) -> PodResolver {
        let ttl = ttl.clamp(MIN_REFRESH_GAP, MAX_TTL);
        let found = socket.clone().or_else(find_socket);
        match (&socket, &found) {
            (Some(s), _) => info!(socket = %s.display(), "pod identity from the CRI socket"),
            (None, Some(s)) => {
                info!(socket = %s.display(), "pod identity from the CRI socket found")
            }
            (None, None) => info!(
                "no container runtime socket at the usual paths: pods are not named \
                 (set the CRI socket to name them)"
            ),
        }
        let shared = Arc::new(Shared {
            identities: RwLock::new(HashMap::new()),
            status: Mutex::new(RuntimeStatus {
                socket: found,
                ..RuntimeStatus::default()
            }),
            misses: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        let mut worker = Worker {
            shared: shared.clone(),
            configured: socket,
            ttl,
            client: None,
            failing: false,
        };
        let spawned = std::thread::Builder::new()
            .name("goroscope-cri".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker.run(stopped)),
                    Err(e) => warn!(error = %e, "pod identity: no runtime for the CRI client"),
                }
            });
        let worker = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                warn!(error = %e, "pod identity: cannot start the CRI thread");
                None
            }
        };
        PodResolver {
            shared,
            ttl,
            stop: Some(stop),
            worker,
        }
    }

    /// The cached identity of `container_id` (the full 64-hex id, as in
    /// `/proc/PID/cgroup`), or `None`. Never waits for the runtime: a miss asks the
    /// background thread to refresh soon (at most once a second; an id the runtime did
    /// not know is asked about again only after `ttl`).
    pub fn lookup(&self, container_id: &str) -> Option<PodIdentity> {
        let known = self
            .shared
            .identities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container_id)
            .cloned();
        if known.is_some() {
            return known;
        }
        let mut misses = lock(&self.shared.misses);
        let ask = match misses.get(container_id) {
            None => misses.len() < MAX_MISSES,
            Some(Miss::Pending) => false,
            Some(Miss::Absent(at)) => at.elapsed() >= self.ttl,
        };
        if ask {
            misses.insert(container_id.to_string(), Miss::Pending);
            drop(misses);
            self.shared.wake.notify_one();
        }
        None
    }

    /// Which socket, whether the last listing worked, its error, how many containers.
    pub fn status(&self) -> RuntimeStatus {
        lock(&self.shared.status).clone()
    }
}

impl Drop for PodResolver {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The background side: the connection and the refresh loop.
struct Worker {
    shared: Arc<Shared>,
    /// The socket given to [`PodResolver::start`], if any.
    configured: Option<PathBuf>,
    ttl: Duration,
    /// The socket in use and its client (connected lazily, reconnected by tonic).
    client: Option<(PathBuf, CriClient)>,
    /// A warning was logged for the current run of failures.
    failing: bool,
}

impl Worker {
    async fn run(&mut self, mut stopped: oneshot::Receiver<()>) {
        let mut last: Option<Instant> = None;
        loop {
            if let Some(last) = last {
                let due = tokio::time::Instant::from_std(last + self.ttl);
                let soonest = tokio::time::Instant::from_std(last + MIN_REFRESH_GAP);
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep_until(due) => {}
                    _ = self.shared.wake.notified() => tokio::select! {
                        _ = &mut stopped => return,
                        _ = tokio::time::sleep_until(soonest) => {}
                    },
                }
            }
            last = Some(Instant::now());
            tokio::select! {
                _ = &mut stopped => return,
                _ = self.refresh() => {}
            }
        }
    }

    /// One listing of containers and sandboxes; the map is replaced only on success
    /// (a container id's identity never changes, so an old map is still right).
    async fn refresh(&mut self) {
        let socket = match (&self.configured, &self.client) {
            (Some(s), _) => Some(s.clone()),
            (None, Some((s, _))) => Some(s.clone()),
            (None, None) => {
                let found = find_socket();
                if let Some(s) = &found {
                    if lock(&self.shared.status).socket.as_ref() != Some(s) {
                        info!(socket = %s.display(), "pod identity from the CRI socket found");
                    }
                }
                found
            }
        };
        let Some(socket) = socket else {
            *lock(&self.shared.status) = RuntimeStatus::default();
            self.settle_misses();
            return;
        };
        if self.client.as_ref().is_none_or(|(s, _)| *s != socket) {
            match connect(&socket, CALL_TIMEOUT) {
                Ok(c) => self.client = Some((socket.clone(), c)),
                Err(e) => {
                    self.fail(&socket, e);
                    self.settle_misses();
                    return;
                }
            }
        }
        let Some((_, client)) = self.client.as_mut() else {
            return;
        };
        match list(client).await {
            Ok((containers, sandboxes)) => {
                let map = identities(&containers, &sandboxes);
                let n = map.len();
                *self
                    .shared
                    .identities
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = map;
                let was = std::mem::replace(
                    &mut *lock(&self.shared.status),
                    RuntimeStatus {
                        socket: Some(socket.clone()),
                        connected: true,
                        error: None,
                        containers: n,
                    },
                );
                if !was.connected {
                    info!(socket = %socket.display(), containers = n, "CRI runtime answered");
                }
                self.failing = false;
            }
            Err(e) => self.fail(&socket, e),
        }
        self.settle_misses();
    }

    /// Records a failed refresh: one warning per run of failures, the error in the
    /// status; a socket found (not configured) is looked for again next time.
    fn fail(&mut self, socket: &Path, error: String) {
        if !self.failing {
            warn!(socket = %socket.display(), %error,
                "CRI runtime unreachable: pods are not named until it answers (retrying)");
            self.failing = true;
        }
        let containers = self
            .shared
            .identities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        *lock(&self.shared.status) = RuntimeStatus {
            socket: Some(socket.to_path_buf()),
            connected: false,
            error: Some(error),
            containers,
        };
        if self.configured.is_none() {
            self.client = None;
        }
    }

    /// After a refresh: misses now known are forgotten, pending ones become absent,
    /// absent ones older than `ttl` are forgotten (a new miss asks again).
    fn settle_misses(&self) {
        let known = self
            .shared
            .identities
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        lock(&self.shared.misses).retain(|id, miss| {
            if known.contains_key(id) {
                return false;
            }
            match miss {
                Miss::Pending => {
                    *miss = Miss::Absent(now);
                    true
                }
                Miss::Absent(at) => now.duration_since(*at) < self.ttl,
            }
        });
    }
}

/// A CRI runtime client of the socket at `socket`, connecting on first use and again
/// after the connection broke; every call (connecting included) times out after
/// `timeout`. Must be called inside a tokio runtime.
pub fn connect(socket: &Path, timeout: Duration) -> Result<CriClient, String> {
    let path = socket
        .to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", socket.display()))?;
    let endpoint = Endpoint::from_shared(format!("unix://{path}"))
        .map_err(|e| format!("{path}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    Ok(RuntimeServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(MAX_MESSAGE))
}

/// `ListContainers` and `ListPodSandbox` (every container and sandbox, no filter), each
/// bounded by [`CALL_TIMEOUT`]; the error on one line.
async fn list(client: &mut CriClient) -> Result<(Vec<Container>, Vec<PodSandbox>), String> {
    let containers = tokio::time::timeout(
        CALL_TIMEOUT,
        client.list_containers(ListContainersRequest::default()),
    )
    .await
    .map_err(|_| format!("ListContainers: no answer in {CALL_TIMEOUT:?}"))?
    .map_err(|s| format!("ListContainers: {}", status_line(&s)))?
    .into_inner()
    .containers;
    let sandboxes = tokio::time::timeout(
        CALL_TIMEOUT,
        client.list_pod_sandbox(ListPodSandboxRequest::default()),
    )
    .await
    .map_err(|_| format!("ListPodSandbox: no answer in {CALL_TIMEOUT:?}"))?
    .map_err(|s| format!("ListPodSandbox: {}", status_line(&s)))?
    .into_inner()
    .items;
    Ok((containers, sandboxes))
}

/// A gRPC status as one line: code, message, and the causes not already in it.
fn status_line(status: &tonic::Status) -> String {
    let mut line = format!("{:?}", status.code());
    if !status.message().is_empty() {
        line.push_str(": ");
        line.push_str(status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
