//! Pod identity from the node's container runtime (CRI). Placeholder API until the CRI
//! client lands: no runtime, every lookup is None.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Who a container is in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    pub labels: BTreeMap<String, String>,
}

/// The state of the connection to the runtime.
#[derive(Debug, Clone, Default)]
pub struct RuntimeStatus {
    pub socket: Option<PathBuf>,
    pub connected: bool,
    pub error: Option<String>,
    pub containers: usize,
}

pub struct PodResolver {}

impl PodResolver {
    pub fn start(_socket: Option<PathBuf>, _ttl: Duration) -> PodResolver {
        PodResolver {}
    }
    pub fn lookup(&self, _container_id: &str) -> Option<PodIdentity> {
        None
    }
    pub fn status(&self) -> RuntimeStatus {
        RuntimeStatus::default()
    }
}
