//! `goroscope run --web-config-file`: basic auth (bcrypt hashes) and TLS on the HTTP
//! server, against a real traced program: wrong or missing credentials get 401 with a
//! Basic challenge, right ones the metrics, `unauthenticated_paths` stay open (kubelet
//! probes); with TLS, plain HTTP gets no HTTP response and HTTPS verified against the
//! test CA works. Bad web configs stop the agent with one line before anything is traced.
//! Certificates and hashes are made here, at test time; everything listens on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use integration_tests::{bpf_allowed, fixture, goroscope_bin, http_get, wait_for, Agent, Churn};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A fresh folder for this test's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "goroscope-web-security-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, PEM:
/// `(ca, server cert, server key)`.
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "goroscope test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

/// A response as read off the wire: status and body (headers kept for the challenge).
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 exchange over `stream` (`Connection: close`, read to the end).
fn exchange(
    mut stream: impl Read + Write,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<Reply> {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify: what was read is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {text:?}"),
        )
    })?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no status line: {head:?}"),
            )
        })?;
    Ok(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

fn plain_get(addr: &str, path: &str, authorization: Option<&str>) -> std::io::Result<Reply> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(tcp, path, authorization)
}

/// GET over TLS, the server verified against `ca` (PEM) for the name 127.0.0.1.
fn https_get(
    addr: &str,
    ca: &str,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA PEM"))
        .expect("CA certificate");
    // The agent's provider (see agent/src/export/webconfig.rs).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(rustls::StreamOwned::new(conn, tcp), path, authorization)
}

fn assert_challenged(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r:?}");
    assert!(
        r.head
            .contains("www-authenticate: basic realm=\"goroscope\""),
        "{what}: no Basic challenge: {r:?}"
    );
    assert!(
        !r.body.contains("goroscope_"),
        "{what}: metrics leaked: {r:?}"
    );
}

fn users(password: &str) -> String {
    let hash = bcrypt::hash(password, 10).unwrap();
    format!("basic_auth_users:\n  alice: {hash}\n")
}

/// The blockers fixture with `blocked` goroutines, traced by an agent whose HTTP server
/// has the web config `web`.
fn traced_behind(web: &std::path::Path, blocked: u32) -> (Churn, Agent) {
    let mut p = Churn::start(&fixture(27, "blockers", "default").path);
    assert_eq!(
        p.cmd(&format!("block {blocked}")),
        format!("blocked {blocked}")
    );
    let agent = Agent::start(&[
        "--pid",
        &p.pid.to_string(),
        "--interval-seconds",
        "1",
        "--web-config-file",
        web.to_str().unwrap(),
    ]);
    (p, agent)
}

#[test]
fn basic_auth_guards_everything_but_the_open_paths() {
    if !bpf_allowed("basic_auth_guards_everything_but_the_open_paths") {
        return;
    }
    let d = Dir::new("auth");
    let web = d.write(
        "web.yml",
        &format!(
            "{}unauthenticated_paths: [\"/healthz\"]\n",
            users("right horse")
        ),
    );
    let (p, agent) = traced_behind(&web, 3);
    let pid = p.pid.to_string();
    let addr = agent.addr.clone();
    let right = basic("alice", "right horse");

    // Open path: no credentials needed (what a kubelet probe sends).
    assert_eq!(agent.get("/healthz").status, 200);
    // Everything else: 401 without, or with wrong, credentials.
    for path in [
        "/metrics",
        "/readyz",
        "/debug/goroutines",
        "/",
        "/api/v1/processes",
        "/nothing",
    ] {
        assert_challenged(&plain_get(&addr, path, None).unwrap(), path);
    }
    for (what, authorization) in [
        ("wrong password", basic("alice", "wrong horse")),
        ("unknown user", basic("bob", "right horse")),
        ("prefix of the password", basic("alice", "right hors")),
        ("not Basic", "Bearer right horse".to_string()),
    ] {
        assert_challenged(
            &plain_get(&addr, "/metrics", Some(&authorization)).unwrap(),
            what,
        );
    }
    // The right password: the metrics of the traced process.
    wait_for("/readyz with credentials", Duration::from_secs(30), || {
        (plain_get(&addr, "/readyz", Some(&right)).unwrap().status == 200).then_some(())
    });
    let r = wait_for(
        "the traced pid in /metrics",
        Duration::from_secs(30),
        || {
            let r = plain_get(&addr, "/metrics", Some(&right)).unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body.contains(&format!("pid=\"{pid}\"")).then_some(r)
        },
    );
    assert!(r.body.contains("goroscope_site_goroutines"), "{}", r.body);
    // Cached now: a wrong password still fails, the right one still passes.
    assert_challenged(
        &plain_get(&addr, "/metrics", Some(&basic("alice", "wrong horse"))).unwrap(),
        "wrong password after a right one",
    );
    for path in ["/debug/goroutines", "/api/v1/processes", "/"] {
        let r = plain_get(&addr, path, Some(&right)).unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status:?}");
    drop(p);
}

#[test]
fn tls_serves_https_only() {
    if !bpf_allowed("tls_serves_https_only") {
        return;
    }
    let d = Dir::new("tls");
    let (ca, cert, key) = certificates();
    let (other_ca, _, _) = certificates();
    d.write("server.crt", &cert);
    d.write("server.key", &key);
    let web = d.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{}\
             unauthenticated_paths: [\"/healthz\", \"/readyz\"]\n",
            users("tls secret")
        ),
    );
    let (p, agent) = traced_behind(&web, 2);
    let pid = p.pid.to_string();
    let addr = agent.addr.clone();
    let right = basic("alice", "tls secret");

    // Plain HTTP to the TLS listener: no HTTP response at all (ureq, and raw).
    assert!(
        http_get(&addr, "/healthz", None).is_err(),
        "plain HTTP got an HTTP response from the TLS listener"
    );
    let plain = plain_get(&addr, "/metrics", Some(&right));
    assert!(plain.is_err(), "plain HTTP: {plain:?}");
    // HTTPS, verified against the test CA.
    wait_for("/readyz over HTTPS", Duration::from_secs(30), || {
        (https_get(&addr, &ca, "/readyz", None).unwrap().status == 200).then_some(())
    });
    assert_eq!(https_get(&addr, &ca, "/healthz", None).unwrap().status, 200);
    assert_challenged(
        &https_get(&addr, &ca, "/metrics", None).unwrap(),
        "HTTPS without credentials",
    );
    assert_challenged(
        &https_get(&addr, &ca, "/metrics", Some(&basic("alice", "wrong"))).unwrap(),
        "HTTPS, wrong password",
    );
    let r = wait_for(
        "the traced pid in /metrics",
        Duration::from_secs(30),
        || {
            let r = https_get(&addr, &ca, "/metrics", Some(&right)).unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body.contains(&format!("pid=\"{pid}\"")).then_some(r)
        },
    );
    assert!(r.body.contains("goroscope_site_goroutines"), "{}", r.body);
    // A client that does not trust the certificate's CA gets no answer.
    let untrusted = https_get(&addr, &other_ca, "/healthz", None);
    assert!(untrusted.is_err(), "untrusted CA: {untrusted:?}");
    // The failed handshakes did not hurt the server.
    assert_eq!(https_get(&addr, &ca, "/healthz", None).unwrap().status, 200);
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status:?}");
    drop(p);
}

/// Runs `goroscope run ARGS` (no privileges needed: it must fail before tracing) and
/// returns its exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(goroscope_bin());
    cmd.arg("run").args(args).args(["--listen", "127.0.0.1:0"]);
    for k in std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("GOROSCOPE_"))
    {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (out.status.code(), err)
}

#[test]
fn bad_web_configs_stop_the_agent_with_one_line() {
    let d = Dir::new("bad");
    let (_, cert, key) = certificates();
    let (_, _, other_key) = certificates();
    d.write("server.crt", &cert);
    d.write("server.key", &key);
    d.write("other.key", &other_key);
    d.write("junk.pem", "not PEM\n");
    let tls = |c: &str, k: &str| format!("tls_server_config:\n  cert_file: {c}\n  key_file: {k}\n");
    let cases = [
        ("basic_auth_users: [alice\n".to_string(), "line"),
        (
            "basic_auth_user:\n  alice: x\n".to_string(),
            "basic_auth_user",
        ),
        (
            "basic_auth_users:\n  alice: secret\n".to_string(),
            "basic_auth_users.alice",
        ),
        (tls("missing.crt", "server.key"), "missing.crt"),
        (tls("server.crt", "missing.key"), "missing.key"),
        (tls("junk.pem", "server.key"), "no CERTIFICATE"),
        (tls("server.crt", "junk.pem"), "no PRIVATE KEY"),
        (
            tls("server.crt", "other.key"),
            "is not the key of cert_file",
        ),
        (
            format!("{}  min_version: TLS13\n", tls("server.crt", "server.key")),
            "min_version",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let web = d.write(&format!("web{i}.yml"), text);
        let (code, err) = run(
            &["--pid", "1", "--web-config-file", web.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, Some(2), "{text:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{text:?}: {err}");
        assert!(err.contains(want), "{text:?}: {err:?} does not say {want}");
        assert!(err.contains("web_config_file"), "{err}");
    }
    // The same key from the TOML file and from the environment.
    let toml = d.write(
        "goroscope.toml",
        "web_config_file = \"/nonexistent/web.yml\"\n",
    );
    let (code, err) = run(&["--pid", "1", "--config", toml.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("web_config_file /nonexistent/web.yml"),
        "{err}"
    );
    let bad = d.0.join("web1.yml");
    let (code, err) = run(
        &["--pid", "1"],
        &[("GOROSCOPE_WEB_CONFIG_FILE", bad.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("basic_auth_user"), "{err}");
}
