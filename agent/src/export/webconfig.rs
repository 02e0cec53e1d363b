//! Optional TLS and basic auth of the HTTP server, configured by a web config file in the
//! style of the Prometheus exporter toolkit's (YAML):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # PEM chain, leaf first; relative to this file's folder
//!   key_file: server.key         # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! basic_auth_users:
//!   alice: $2y$10$...            # bcrypt hash (`htpasswd -nBC 10 alice`)
//! # goroscope's own: paths served without auth (kubelet probes), default none
//! unauthenticated_paths: ["/healthz", "/readyz"]
//! ```
//!
//! No web config: plain HTTP without auth, exactly as before. The file is read and the
//! certificate and key loaded once, at start; any problem (missing file, bad YAML, an
//! unknown key, bad PEM, a key that is not the certificate's, a bad hash) stops the agent
//! with one line naming it.
//!
//! bcrypt costs tens of milliseconds on purpose, so a successful check is remembered (a
//! SHA-256 digest of user, password and hash, in a small bounded cache) and a scraper
//! sending the same credentials every few seconds pays it once. Failures are never
//! remembered: a wrong password always goes through bcrypt, off the async workers and at
//! most [`MAX_CONCURRENT_BCRYPT`] at a time, so wrong guesses cannot starve the server.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Remembered successful logins (distinct user/password pairs; the oldest goes first).
pub const AUTH_CACHE_ENTRIES: usize = 64;
/// bcrypt checks running at once; more wait.
pub const MAX_CONCURRENT_BCRYPT: usize = 2;
/// TLS handshakes in progress at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 64;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "goroscope";

/// The web config file as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    #[serde(default)]
    unauthenticated_paths: Vec<String>,
}

/// `tls_server_config`: the server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A validated web config (paths resolved against the file's folder, hashes checked).
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub tls: Option<TlsServerConfig>,
    /// User name → bcrypt hash.
    pub users: BTreeMap<String, String>,
    pub unauthenticated_paths: Vec<String>,
}

impl WebConfig {
    /// Reads and checks the file; errors are one line naming the file and the key.
    pub fn load(path: &Path) -> Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading web_config_file {}", path.display()))?;
        WebConfig::parse(&text, path)
            .map_err(|e| anyhow!("web_config_file {}: {}", path.display(), one_line(&e)))
    }

    /// Parses `text`, the content of the file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig> {
        // An empty file (or comments only) is a config with nothing in it, as for the
        // exporter toolkit.
        let file: WebConfigFile = serde_norway::from_str::<Option<WebConfigFile>>(text)
            .map_err(|e| anyhow!("{e}"))?
            .unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new(""));
        let tls = file.tls_server_config.map(|t| {
            let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
            TlsServerConfig {
                cert_file: resolve(t.cert_file),
                key_file: resolve(t.key_file),
            }
        });
        if let Some(t) = &tls {
            for (key, p) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                if p.as_os_str().is_empty() || p == dir {
                    bail!("tls_server_config.{key} must name a file");
                }
            }
        }
        for (user, hash) in &file.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                bail!("basic_auth_users: {user:?} is not a user name (empty, or has a ':')");
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|e| {
                anyhow!("basic_auth_users.{user}: not a bcrypt hash like $2y$10$…: {e}")
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                bail!(
                    "basic_auth_users.{user}: bcrypt cost {} is not between 4 and 31",
                    parts.get_cost()
                );
            }
        }
        for p in &file.unauthenticated_paths {
            if !p.starts_with('/') {
                bail!("unauthenticated_paths: {p:?} is not a path starting with /");
            }
        }
        if !file.unauthenticated_paths.is_empty() && file.basic_auth_users.is_empty() {
            bail!(
                "unauthenticated_paths needs basic_auth_users (without users nothing needs auth)"
            );
        }
        Ok(WebConfig {
            path: path.to_path_buf(),
            tls,
            users: file.basic_auth_users,
            unauthenticated_paths: file.unauthenticated_paths,
        })
    }
}

/// The error chain on one line, without trailing blanks.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the server needs at run time: the TLS config and the authenticator, both loaded
/// from a [`WebConfig`] (or none: plain HTTP, no auth).
#[derive(Clone, Default)]
pub struct WebSecurity {
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
}

impl WebSecurity {
    /// Loads the certificate and key; `None`: plain HTTP without auth.
    pub fn new(web: Option<&WebConfig>) -> Result<WebSecurity> {
        let Some(web) = web else {
            return Ok(WebSecurity::default());
        };
        let tls = match &web.tls {
            Some(t) => Some(tls_config(t).map_err(|e| {
                anyhow!("web_config_file {}: {}", web.path.display(), one_line(&e))
            })?),
            None => None,
        };
        let auth = (!web.users.is_empty()).then(|| {
            Arc::new(BasicAuth::new(
                web.users.clone(),
                web.unauthenticated_paths.clone(),
            ))
        });
        Ok(WebSecurity { tls, auth })
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn basic_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// `router` behind the auth check, if there is one.
    pub fn protect(&self, router: Router) -> Router {
        match &self.auth {
            Some(auth) => router.layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                require_auth,
            )),
            None => router,
        }
    }
}

/// Serves `router` on `listener` (TLS and auth as `security` says) until `shutdown`
/// completes, then waits for the requests in flight. Without TLS and auth this is
/// `axum::serve` with graceful shutdown, nothing more.
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    security: &WebSecurity,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let router = security.protect(router);
    match &security.tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = TlsListener::new(listener, tls.clone())?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The rustls server config (ring, TLS 1.2 and 1.3, HTTP/1.1) of the PEM files.
fn tls_config(t: &TlsServerConfig) -> Result<Arc<rustls::ServerConfig>> {
    let read = |key: &str, p: &Path| {
        std::fs::read(p).with_context(|| format!("tls_server_config.{key} {}", p.display()))
    };
    let cert_pem = read("cert_file", &t.cert_file)?;
    let key_pem = read("key_file", &t.key_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!(
                "tls_server_config.cert_file {}: bad PEM: {e}",
                t.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "tls_server_config.cert_file {}: no CERTIFICATE in it (PEM expected)",
            t.cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "tls_server_config.key_file {}: no PRIVATE KEY in it (PEM expected)",
            t.key_file.display()
        ),
        e => anyhow!(
            "tls_server_config.key_file {}: bad PEM: {e}",
            t.key_file.display()
        ),
    })?;
    // ring, not aws-lc-rs (which needs cmake and a C toolchain of its own to build).
    // rustls 0.23.48 deprecates it for having no post-quantum key exchange: X25519 and
    // the NIST curves remain, which is what Prometheus's Go TLS negotiates by default too.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls_server_config: TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => anyhow!(
                "tls_server_config: key_file {} is not the key of cert_file {}",
                t.key_file.display(),
                t.cert_file.display()
            ),
            e => anyhow!(
                "tls_server_config: cannot use key_file {} with cert_file {}: {e}",
                t.key_file.display(),
                t.cert_file.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections have finished their TLS handshake. Handshakes run in
/// their own tasks (a client that connects and says nothing holds up no one), at most
/// [`MAX_HANDSHAKES`] at once and each for at most [`HANDSHAKE_TIMEOUT`]; a failed one
/// (plain HTTP to this port, a client that does not trust the certificate) is dropped.
struct TlsListener {
    ready: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = tokio::spawn(accept_tls(
            listener,
            tokio_rustls::TlsAcceptor::from(config),
            tx,
        ));
        Ok(TlsListener {
            ready,
            addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The server stopped accepting (shutdown): so does the TCP listener.
        self.acceptor.abort();
    }
}

async fn accept_tls(
    mut listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ready: mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        // axum's accept: retries, and waits a second after errors like EMFILE.
        let (tcp, peer) = axum::serve::Listener::accept(&mut listener).await;
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task is gone (it never returns unless aborted): no more
            // connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Basic auth against bcrypt hashes, with a cache of successful checks.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    open_paths: Vec<String>,
    /// SHA-256 of (user, password, hash) of recent successful logins, oldest first.
    cache: Mutex<VecDeque<[u8; 32]>>,
    bcrypt_slots: Semaphore,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>, open_paths: Vec<String>) -> BasicAuth {
        BasicAuth {
            users,
            open_paths,
            cache: Mutex::new(VecDeque::with_capacity(AUTH_CACHE_ENTRIES)),
            bcrypt_slots: Semaphore::new(MAX_CONCURRENT_BCRYPT),
        }
    }

    /// Whether `path` is served without auth.
    pub fn is_open(&self, path: &str) -> bool {
        self.open_paths.iter().any(|p| p == path)
    }

    fn key(user: &str, password: &[u8], hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        // Lengths first: no two different (user, password, hash) give the same input.
        for part in [user.as_bytes(), password, hash.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    /// Whether these credentials were checked right recently (cheap: no bcrypt).
    pub fn cached(&self, user: &[u8], password: &[u8]) -> bool {
        let Some((user, hash)) = self.user(user) else {
            return false;
        };
        let key = BasicAuth::key(user, password, hash);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    fn user(&self, user: &[u8]) -> Option<(&str, &str)> {
        let user = std::str::from_utf8(user).ok()?;
        self.users
            .get_key_value(user)
            .map(|(u, h)| (u.as_str(), h.as_str()))
    }

    /// Whether the password is the user's: from the cache, else by bcrypt (slow: call it
    /// off the async workers). Only successes are cached.
    pub fn verify(&self, user: &[u8], password: &[u8]) -> bool {
        let Some((user, hash)) = self.user(user) else {
            // An unknown user costs a bcrypt too, so the time taken does not tell which
            // names exist.
            if let Some(hash) = self.users.values().next() {
                let _ = bcrypt::verify(password, hash);
            }
            return false;
        };
        let key = BasicAuth::key(user, password, hash);
        if self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return true;
        }
        if !bcrypt::verify(password, hash).unwrap_or(false) {
            return false;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.contains(&key) {
            if cache.len() >= AUTH_CACHE_ENTRIES {
                cache.pop_front();
            }
            cache.push_back(key);
        }
        true
    }
}

/// `(user, password)` of an `Authorization: Basic …` header.
fn basic_credentials(value: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"goroscope\""),
        )],
        "unauthorized\n",
    )
        .into_response()
}

/// The middleware: the request goes on with right credentials or to an open path, else
/// 401 with a Basic challenge.
async fn require_auth(State(auth): State<Arc<BasicAuth>>, req: Request, next: Next) -> Response {
    if auth.is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let Some((user, password)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(basic_credentials)
    else {
        return unauthorized();
    };
    if auth.cached(&user, &password) {
        return next.run(req).await;
    }
    let Ok(_slot) = auth.bcrypt_slots.acquire().await else {
        return unauthorized();
    };
    let checker = auth.clone();
    let ok = tokio::task::spawn_blocking(move || checker.verify(&user, &password))
        .await
        .unwrap_or(false);
    drop(_slot);
    if ok {
        next.run(req).await
    } else {
        tracing::debug!(
            path = req.uri().path(),
            "HTTP request with wrong credentials"
        );
        unauthorized()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::Dir;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn parse(text: &str) -> Result<WebConfig> {
        WebConfig::parse(text, Path::new("/etc/goroscope/web.yml"))
    }

    fn err(text: &str) -> String {
        one_line(&parse(text).unwrap_err())
    }

    #[test]
    fn parses_the_exporter_toolkit_keys() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n\
             basic_auth_users:\n  alice: {hash}\n  bob: '{hash}'\n\
             unauthenticated_paths: [\"/healthz\", \"/readyz\"]\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/goroscope/server.crt"));
        assert_eq!(tls.key_file, Path::new("/abs/server.key"));
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.users["alice"], hash);
        assert_eq!(c.unauthenticated_paths, ["/healthz", "/readyz"]);
        // Empty, or comments only: nothing configured.
        for empty in ["", "# nothing\n", "---\n"] {
            let c = parse(empty).unwrap();
            assert!(c.tls.is_none() && c.users.is_empty(), "{empty:?}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        for (text, key) in [
            ("tls_server_config:\n  cert_file: a\n", "key_file"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
                "client_ca_file",
            ),
            ("basic_auth_user:\n  alice: x\n", "basic_auth_user"),
            (
                "basic_auth_users:\n  alice: plain\n",
                "basic_auth_users.alice",
            ),
            ("basic_auth_users: [alice]\n", "basic_auth_users"),
            (
                &format!("basic_auth_users:\n  'a:b': '{hash}'\n"),
                "basic_auth_users",
            ),
            (
                &format!("basic_auth_users:\n  a: '{hash}'\nunauthenticated_paths: [healthz]\n"),
                "unauthenticated_paths",
            ),
            (
                "unauthenticated_paths: [/healthz]\n",
                "unauthenticated_paths",
            ),
            ("tls_server_config: [\n", "tls_server_config"),
            ("basic_auth_users: {alice: x\n", "line"),
        ] {
            let e = err(text);
            eprintln!("{text:?}: {e}");
            assert!(e.contains(key), "{text:?}: {e:?} does not name {key}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // A cost bcrypt refuses.
        let expensive = hash.replacen("$04$", "$99$", 1);
        let e = err(&format!("basic_auth_users:\n  alice: '{expensive}'\n"));
        assert!(e.contains("basic_auth_users.alice"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let e = one_line(&WebConfig::load(Path::new("/nonexistent/web.yml")).unwrap_err());
        assert!(e.contains("/nonexistent/web.yml"), "{e}");
    }

    fn auth(open: &[&str]) -> (Arc<BasicAuth>, Router) {
        let users = BTreeMap::from([("alice".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = Arc::new(BasicAuth::new(
            users,
            open.iter().map(|s| s.to_string()).collect(),
        ));
        let router = Router::new()
            .route("/metrics", get(|| async { "metrics\n" }))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                require_auth,
            ));
        (auth, router)
    }

    fn basic(user: &str, password: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b}")
    }

    async fn status(router: &Router, path: &str, authorization: Option<&str>) -> Response {
        let mut req = Request::builder().uri(path);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn auth_decisions() {
        let (auth, router) = auth(&["/healthz"]);
        let challenge = |r: &Response| {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                r.headers()[header::WWW_AUTHENTICATE],
                "Basic realm=\"goroscope\""
            );
        };
        // Missing header, other schemes, garbage.
        challenge(&status(&router, "/metrics", None).await);
        challenge(&status(&router, "/metrics", Some("Bearer abc")).await);
        challenge(&status(&router, "/metrics", Some("Basic !!!")).await);
        challenge(&status(&router, "/metrics", Some("Basic YWxpY2U=")).await); // no ':'
                                                                               // Wrong password, unknown user, a right password's prefix.
        challenge(&status(&router, "/metrics", Some(&basic("alice", "wrong"))).await);
        challenge(&status(&router, "/metrics", Some(&basic("bob", "secret"))).await);
        challenge(&status(&router, "/metrics", Some(&basic("alice", "secre"))).await);
        // Unknown paths ask for auth too (no route enumeration).
        challenge(&status(&router, "/nothing", None).await);
        // Right password.
        let r = status(&router, "/metrics", Some(&basic("alice", "secret"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = status(&router, "/metrics", Some(&basic_lower("alice", "secret"))).await;
        assert_eq!(r.status(), StatusCode::OK, "the scheme is case-insensitive");
        assert!(auth.cached(b"alice", b"secret"));
        // Once the right password is cached, wrong ones still fail.
        challenge(&status(&router, "/metrics", Some(&basic("alice", "wrong"))).await);
        challenge(&status(&router, "/metrics", Some(&basic("alice", "secret "))).await);
        assert!(!auth.cached(b"alice", b"wrong"));
        // Open path: no header needed, and a wrong one does not matter.
        assert_eq!(
            status(&router, "/healthz", None).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            status(&router, "/healthz", Some(&basic("alice", "wrong")))
                .await
                .status(),
            StatusCode::OK
        );
        // Only that exact path.
        challenge(&status(&router, "/healthz/", None).await);
        let (_, closed) = self::auth(&[]);
        challenge(&status(&closed, "/healthz", None).await);
    }

    fn basic_lower(user: &str, password: &str) -> String {
        basic(user, password).replacen("Basic", "basic", 1)
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_only_successes() {
        let users = BTreeMap::from([("alice".to_string(), bcrypt::hash("secret", 4).unwrap())]);
        let auth = BasicAuth::new(users, vec![]);
        assert!(!auth.verify(b"alice", b"wrong"));
        assert!(auth.cache.lock().unwrap().is_empty());
        assert!(!auth.verify(b"nobody", b"secret"));
        assert!(auth.cache.lock().unwrap().is_empty());
        assert!(auth.verify(b"alice", b"secret"));
        assert!(auth.verify(b"alice", b"secret"));
        assert_eq!(auth.cache.lock().unwrap().len(), 1);
        // Fill it past its bound with fake entries: the oldest goes.
        for i in 0..AUTH_CACHE_ENTRIES as u8 {
            let mut cache = auth.cache.lock().unwrap();
            if cache.len() >= AUTH_CACHE_ENTRIES {
                cache.pop_front();
            }
            cache.push_back([i; 32]);
        }
        assert!(!auth.cached(b"alice", b"secret"));
        assert!(auth.verify(b"alice", b"secret"), "evicted: checked again");
        assert_eq!(auth.cache.lock().unwrap().len(), AUTH_CACHE_ENTRIES);
        // The key separates the parts: ("a", "bc") is not ("ab", "c").
        assert_ne!(
            BasicAuth::key("a", b"bc", "h"),
            BasicAuth::key("ab", b"c", "h")
        );
    }

    /// A self-signed certificate for localhost and its key, PEM.
    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn tls_files_are_checked_at_start() {
        let d = Dir::new("webconfig");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        d.write("server.crt", &cert);
        d.write("server.key", &key);
        d.write("other.key", &other_key);
        d.write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        d.write("empty.pem", "nothing here\n");
        let load = |cert: &str, key: &str| {
            let p = d.write(
                "web.yml",
                &format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"),
            );
            WebConfig::load(&p).and_then(|c| WebSecurity::new(Some(&c)))
        };
        // Relative to the web config's folder.
        let ok = load("server.crt", "server.key").unwrap();
        assert!(ok.tls() && !ok.basic_auth());
        for (cert, key, want) in [
            ("missing.crt", "server.key", "tls_server_config.cert_file"),
            ("server.crt", "missing.key", "tls_server_config.key_file"),
            ("garbage.pem", "server.key", "cert_file"),
            ("empty.pem", "server.key", "no CERTIFICATE"),
            ("server.crt", "empty.pem", "no PRIVATE KEY"),
            ("server.crt", "server.crt", "no PRIVATE KEY"),
            ("server.crt", "other.key", "is not the key of cert_file"),
        ] {
            let e = one_line(&load(cert, key).err().unwrap());
            eprintln!("{cert} {key}: {e}");
            assert!(e.contains(want), "{cert} {key}: {e:?} does not say {want}");
            assert!(e.contains("web_config_file"), "{e}");
            assert_eq!(
                format!("{:#}", load(cert, key).err().unwrap())
                    .lines()
                    .count(),
                1
            );
        }
        assert!(WebSecurity::new(None).is_ok_and(|s| !s.tls() && !s.basic_auth()));
    }

    /// TLS and auth together through [`serve`], over loopback.
    #[tokio::test]
    async fn serves_tls_with_auth_and_stops() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = Dir::new("webconfig");
        let (cert, key) = self_signed();
        d.write("server.crt", &cert);
        d.write("server.key", &key);
        let hash = bcrypt::hash("secret", 4).unwrap();
        let p = d.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
                 basic_auth_users:\n  alice: '{hash}'\n"
            ),
        );
        let security = WebSecurity::new(Some(&WebConfig::load(&p).unwrap())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().route("/metrics", get(|| async { "metrics\n" }));
        let server = tokio::spawn(async move {
            serve(listener, router, &security, async {
                let _ = stop_rx.await;
            })
            .await
        });

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
            .unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let get = |authorization: Option<String>| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = connector.connect(name, tcp).await.unwrap();
                let auth = authorization
                    .map(|a| format!("Authorization: {a}\r\n"))
                    .unwrap_or_default();
                tls.write_all(
                    format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                let _ = tls.read_to_string(&mut out).await;
                out
            }
        };
        let r = get(Some(basic("alice", "secret"))).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("metrics\n"), "{r}");
        let r = get(Some(basic("alice", "wrong"))).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = get(None).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        // Plain HTTP to the TLS port: no HTTP response.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        assert!(
            !out.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );

        stop_tx.send(()).unwrap();
        let served = tokio::time::timeout(Duration::from_secs(10), server).await;
        assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }

    #[test]
    fn credentials_of_the_header() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            basic_credentials(&h(&basic("alice", "pa:ss"))),
            Some((b"alice".to_vec(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            basic_credentials(&h(&basic("alice", ""))),
            Some((b"alice".to_vec(), vec![]))
        );
        assert_eq!(basic_credentials(&h("Basic")), None);
        assert_eq!(basic_credentials(&h("Digest abc")), None);
    }
}
