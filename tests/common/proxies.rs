//! Each shipped forward-auth setup, started for real: certbound on its shipped config from
//! `deploy/forward-auth/` and the proxy on its own (NGINX, Traefik, Caddy, HAProxy, or Envoy's
//! `http_service` from `deploy/envoy/http-service.yaml`), only the addresses and file paths the
//! files' comments name swapped, in front of a recording upstream that keeps every request
//! byte for byte. Shared by tests/forward_auth_proxies.rs and tests/differential.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::envoy::*;
use super::{ClientCert, Signer, now};

pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "https://api.example.com";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Nginx,
    Traefik,
    Caddy,
    Haproxy,
    Envoy,
}

pub const PROXIES: [Proxy; 5] = [
    Proxy::Nginx,
    Proxy::Traefik,
    Proxy::Caddy,
    Proxy::Haproxy,
    Proxy::Envoy,
];

impl Proxy {
    /// The certbound config the proxy's shipped setup goes with.
    pub fn certbound_config(self) -> &'static str {
        match self {
            Proxy::Nginx => "certbound-nginx.yaml",
            Proxy::Envoy => "certbound-envoy.yaml",
            Proxy::Traefik | Proxy::Caddy | Proxy::Haproxy => "certbound.yaml",
        }
    }

    /// Every header name a client might use to smuggle a certificate in.
    pub const FORGED_CERTIFICATE_HEADERS: [&'static str; 5] = [
        "x-ssl-client-cert",
        "x-forwarded-tls-client-cert",
        "x-client-cert",
        "client-cert",
        "x-forwarded-client-cert",
    ];
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn venv_bin(name: &str) -> PathBuf {
    repo(".venv/bin").join(name)
}

/// One proxy in front of a recording upstream, asking a real certbound process (its decision
/// log in JSON, one line per check, in `certbound.log()`).
pub struct Setup {
    pub proxy: Proxy,
    pub pki: Pki,
    pub signer: Signer,
    pub upstream: RawUpstream,
    pub port: u16,
    /// certbound's configuration, as started.
    pub certbound_yaml: String,
    pub certbound: Process,
    pub process: Process,
}

/// Swaps a shipped file's documented addresses and paths for the test's; each `required` one
/// must be in the file, so the test fails if the file drifts.
pub fn point(text: &str, required: &[(&str, String)], optional: &[(&str, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in required {
        assert!(
            text.contains(from),
            "the shipped config no longer has {from:?}"
        );
        text = text.replace(from, to);
    }
    for (from, to) in optional {
        text = text.replace(from, to);
    }
    text
}

impl Setup {
    pub async fn start(proxy: Proxy) -> Self {
        Self::start_with(proxy, "").await
    }

    /// [`Setup::start`] with `extra` appended to the shipped certbound configuration.
    pub async fn start_with(proxy: Proxy, extra: &str) -> Self {
        let pki = Pki::new(&format!("{proxy:?}"));
        let dir = pki.dir.path().to_owned();
        let signer = Signer::es256("fa-k1");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
        let upstream = RawUpstream::start().await;
        let forward_auth: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let shipped =
            std::fs::read_to_string(repo("deploy/forward-auth").join(proxy.certbound_config()))
                .unwrap();
        let port = free_port();
        let yaml = point(
            &shipped,
            &[
                ("127.0.0.1:9292", forward_auth.to_string()),
                ("deploy/local/jwks.json", jwks.display().to_string()),
                // The public origin, which the file says to set.
                (
                    "https://localhost:8443",
                    format!("https://127.0.0.1:{port}"),
                ),
            ],
            &[],
        ) + extra;
        let (certbound, _) = start_certbound_env(
            &yaml,
            &dir,
            None,
            &[("CERTBOUND_LOG_FORMAT", "json".into())],
        )
        .await;
        let process = match proxy {
            Proxy::Envoy => {
                let ports = EnvoyPorts {
                    listener: port,
                    admin: free_port(),
                    certbound: Some(forward_auth),
                    upstream: Some(upstream.addr),
                    ..Default::default()
                };
                let config =
                    point_envoy_config(&repo("deploy/envoy/http-service.yaml"), &ports, &pki);
                start_envoy(&config, &ports, &dir).await
            }
            _ => start_proxy(proxy, &pki, port, forward_auth, upstream.addr).await,
        };
        let setup = Self {
            proxy,
            pki,
            signer,
            upstream,
            port,
            certbound_yaml: yaml,
            certbound,
            process,
        };
        setup.wait_ready().await;
        setup
    }

    /// Waits until the proxy passes a bound token with its certificate: it may accept
    /// connections before its routes and TLS options are all loaded (Traefik's file provider).
    async fn wait_ready(&self) {
        let cert = self.pki.client("ready");
        let client = https_client(&self.pki, Some(&cert), Http::One);
        let auth = self.bound(&cert, "read");
        for _ in 0..200 {
            if let Ok(response) = client
                .get(format!("https://127.0.0.1:{}/ready", self.port))
                .header("authorization", &auth)
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{:?} did not come up: {}", self.proxy, self.process.log());
    }

    /// A token for `alice` with these scopes, bound by `cnf` when given.
    pub fn token(&self, cnf: Option<Value>, scope: &str) -> String {
        self.token_for("alice", cnf, scope)
    }

    pub fn token_for(&self, sub: &str, cnf: Option<Value>, scope: &str) -> String {
        let now = now();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "client_id": "client-a",
            "scope": scope, "iat": now - 5, "exp": now + 600, "jti": format!("jti-{now}"),
        });
        if let Some(cnf) = cnf {
            claims["cnf"] = cnf;
        }
        self.signer.sign(&claims)
    }

    /// `Bearer` and a token for `alice` bound to `cert`.
    pub fn bound(&self, cert: &ClientCert, scope: &str) -> String {
        format!(
            "Bearer {}",
            self.token(Some(json!({"x5t#S256": cert.x5t()})), scope)
        )
    }

    pub fn label(&self, http: Http, what: &str) -> String {
        format!("{:?} {http:?} {what}", self.proxy)
    }

    /// Every request the upstream received whose target contains `marker`.
    pub fn received(&self, marker: &str) -> Vec<Received> {
        self.upstream
            .all()
            .into_iter()
            .filter(|r| {
                r.target.contains(marker)
                    || r.headers.iter().any(|(k, v)| k == "x-case" && v == marker)
            })
            .collect()
    }
}

impl Drop for Setup {
    /// NGINX's workers outlive a master killed with SIGKILL (what dropping a [`Process`] does):
    /// its master is asked to stop them first (SIGTERM, a fast shutdown that reaps them), and is
    /// waited for until it has exited.
    fn drop(&mut self) {
        if self.proxy != Proxy::Nginx {
            return;
        }
        let pid = self.process.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command name in parentheses; Z: exited, not yet reaped.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if matches!(state, None | Some('Z')) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts NGINX, Traefik, Caddy or HAProxy on its shipped config.
pub async fn start_proxy(
    proxy: Proxy,
    pki: &Pki,
    port: u16,
    forward_auth: SocketAddr,
    upstream: SocketAddr,
) -> Process {
    let dir = pki.dir.path();
    let at = |name: &str| pki.path(name).display().to_string();
    let common = [
        ("127.0.0.1:8443", format!("127.0.0.1:{port}")),
        ("127.0.0.1:9292", forward_auth.to_string()),
        ("127.0.0.1:8080", upstream.to_string()),
    ];
    let files = [
        ("deploy/local/demo-server.pem", at("server.crt")),
        ("deploy/local/demo-server.key", at("server.key")),
        ("deploy/local/demo-ca.pem", at("ca.crt")),
    ];
    let shipped =
        |name: &str| std::fs::read_to_string(repo("deploy/forward-auth").join(name)).unwrap();
    let mut command;
    match proxy {
        Proxy::Nginx => {
            let config = dir.join("nginx.conf");
            // NGINX resolves them against the config's folder: the shipped file names them so.
            let nginx_files = [
                ("../local/demo-server.pem", at("server.crt")),
                ("../local/demo-server.key", at("server.key")),
            ];
            let required: Vec<_> = common.iter().chain(&nginx_files).cloned().collect();
            std::fs::write(&config, point(&shipped("nginx.conf"), &required, &[])).unwrap();
            command = Command::new("nginx");
            command
                .arg("-p")
                .arg(dir)
                .args(["-e", "stderr", "-c"])
                .arg(&config)
                .args(["-g", "daemon off;"]);
        }
        Proxy::Traefik => {
            let dynamic = dir.join("traefik-dynamic.yml");
            let required: Vec<_> = common[1..].iter().chain(&files[..2]).cloned().collect();
            std::fs::write(
                &dynamic,
                point(&shipped("traefik-dynamic.yml"), &required, &[]),
            )
            .unwrap();
            let config = dir.join("traefik.yml");
            let text = point(
                &shipped("traefik.yml"),
                &[
                    common[0].clone(),
                    (
                        "deploy/forward-auth/traefik-dynamic.yml",
                        dynamic.display().to_string(),
                    ),
                ],
                &[],
            );
            std::fs::write(&config, text).unwrap();
            command = Command::new(venv_bin("traefik"));
            command.arg(format!("--configFile={}", config.display()));
        }
        Proxy::Caddy => {
            let config = dir.join("Caddyfile");
            let required: Vec<_> = common.iter().chain(&files[..2]).cloned().collect();
            let text = point(
                &shipped("Caddyfile"),
                &required,
                &[(":8443", format!(":{port}"))],
            );
            std::fs::write(&config, text).unwrap();
            command = Command::new(venv_bin("caddy"));
            command
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&config)
                .env("XDG_DATA_HOME", dir)
                .env("XDG_CONFIG_HOME", dir);
        }
        Proxy::Haproxy => {
            let pem = dir.join("server-with-key.pem");
            let both = format!(
                "{}{}",
                std::fs::read_to_string(pki.path("server.crt")).unwrap(),
                std::fs::read_to_string(pki.path("server.key")).unwrap()
            );
            std::fs::write(&pem, both).unwrap();
            let config = dir.join("haproxy.cfg");
            let lua = repo("deploy/forward-auth/certbound.lua");
            let mut required: Vec<_> = common.to_vec();
            required.push(files[2].clone());
            required.push((
                "deploy/forward-auth/certbound.lua",
                lua.display().to_string(),
            ));
            std::fs::write(&config, point(&shipped("haproxy.cfg"), &required, &[])).unwrap();
            command = Command::new("haproxy");
            command
                .args(["-db", "-f"])
                .arg(&config)
                .env("CERTBOUND_SERVER_PEM", &pem);
        }
        Proxy::Envoy => unreachable!("started by start_envoy"),
    }
    command.current_dir(dir);
    spawn(
        match proxy {
            Proxy::Nginx => "nginx",
            Proxy::Traefik => "traefik",
            Proxy::Caddy => "caddy",
            _ => "haproxy",
        },
        command,
        dir,
    )
}

/// An HTTP/1.1 upstream that records each request head exactly as it arrived (the target byte
/// for byte: no parser in between that would refuse or normalise it; header names lower-cased,
/// duplicates kept in order) and answers `200` with `x-upstream: seen`. Keeps connections open
/// (the proxies pool them); reads `content-length` and chunked bodies.
pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let _ = serve_connection(stream, log).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    pub fn all(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request received whose target starts with `prefix`.
    pub fn received(&self, prefix: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect()
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        buffer.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().splitn(3, ' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let close = value("connection").is_some_and(|c| c.contains("close"));
        let body = if value("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            read_chunked(&mut stream, &mut buffer).await?
        } else {
            let length: usize = value("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            while buffer.len() < length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            buffer.drain(..length);
            length
        };
        log.lock().unwrap().push(Received {
            method: method.clone(),
            target,
            headers,
            body: Ok(body),
        });
        let mut answer = String::from(
            "HTTP/1.1 200 OK\r\nx-upstream: seen\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n",
        );
        if close {
            answer.push_str("connection: close\r\n");
        }
        answer.push_str("\r\n");
        if method != "HEAD" {
            answer.push_str("upstream");
        }
        stream.write_all(answer.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads a chunked body out of `buffer` (refilled from `stream`), trailers included; returns
/// its length.
async fn read_chunked(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        buffer.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
                    let empty = end == 0;
                    buffer.drain(..end + 2);
                    if empty {
                        return Ok(total);
                    }
                    continue;
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
        }
        while buffer.len() < size + 2 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        buffer.drain(..size + 2);
        total += size;
    }
}

/// Sends one request on a fresh connection, byte for byte (HTTP/1.1) or as given (HTTP/2, one
/// stream); its status, or `None` when the connection failed or the stream was reset.
pub async fn send_raw(
    pki: &Pki,
    cert: Option<&ClientCert>,
    port: u16,
    http2: bool,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<u16> {
    use super::raw::{self, H2Response, Step};
    if http2 {
        // Not raw::http2, which waits for an extended-CONNECT setting most proxies never send.
        let stream = raw::tls(pki, cert, port, b"h2").await;
        let (client, connection) = h2::client::handshake(stream).await.ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.ok()?;
        let request = raw::h2_request(method, target, headers);
        let (response, _) = client.send_request(request, true).ok()?;
        H2Response::read(response, Duration::from_secs(5))
            .await
            .status
    } else {
        let head = raw::head(method, target, headers);
        raw::http1(
            pki,
            cert,
            port,
            vec![Step::Send(head)],
            Duration::from_secs(5),
        )
        .await
        .status
    }
}

impl Setup {
    /// certbound's decision log so far: one JSON object per check.
    pub fn decisions(&self) -> Vec<Value> {
        self.certbound
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "certbound::decision")
            .collect()
    }

    /// certbound's decisions for one `x-request-id`, waiting up to 3 s for the first (the log
    /// is written asynchronously).
    pub async fn decisions_for(&self, request_id: &str) -> Vec<Value> {
        for _ in 0..30 {
            let found: Vec<Value> = self
                .decisions()
                .into_iter()
                .filter(|d| d["request_id"] == request_id)
                .collect();
            if !found.is_empty() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }
}
