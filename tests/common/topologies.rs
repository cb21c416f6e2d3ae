//! Redis as production runs it, on 127.0.0.1 for the tests: a Cluster of three masters with a
//! replica each, and a master with a replica watched by three Sentinels. Every node is a real
//! `redis-server` process, killed when dropped. With [`NodeTls`], every node (and sentinel)
//! speaks TLS only: to clients, on the cluster bus and for replication.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

#[allow(unused_imports)]
pub use super::external::{redis_bin, valkey_bin};
use std::process::Command;
use std::time::Duration;

use super::envoy::{Pki, Process, free_port, spawn};

/// TLS for every node: a server certificate of the test PKI (clients are not asked for one).
#[derive(Clone)]
pub struct NodeTls {
    cert: PathBuf,
    key: PathBuf,
    pub ca: PathBuf,
}

impl NodeTls {
    pub fn new(pki: &Pki) -> Self {
        let (cert, key) = pki.write("redis-node", &pki.peer(&["127.0.0.1", "localhost"]));
        Self {
            cert,
            key,
            ca: pki.path("ca.crt"),
        }
    }

    /// A node on `port` speaks TLS only, to clients, replicas and the cluster bus.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = vec!["--port".into(), "0".into()];
        args.extend(["--tls-port".into(), port.to_string()]);
        args.extend(self.files_args());
        args
    }

    fn files_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-cluster".into(),
            "yes".into(),
        ]
    }

    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.to_string_lossy().into_owned(),
        ]
    }
}

/// `redis://` or, with TLS, `rediss://`.
fn url(tls: Option<&NodeTls>, port: u16) -> String {
    let scheme = if tls.is_some() { "rediss" } else { "redis" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// A port whose cluster bus port (port + 10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn redis_cli(tls: Option<&NodeTls>, args: &[&str]) -> String {
    // Bounded: `--cluster create` waits forever for a cluster that cannot join.
    let output = Command::new("timeout")
        .args(["60", "redis-cli"])
        .args(tls.map(NodeTls::cli_args).unwrap_or_default())
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {port}");
}

fn server(
    bin: &Path,
    name: &'static str,
    dir: &Path,
    port: u16,
    extra: &[&str],
    tls: Option<&NodeTls>,
) -> Process {
    let node_dir = dir.join(format!("node-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut command = Command::new(bin);
    command.args(["--bind", "127.0.0.1"]);
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(tls) => command.args(tls.server_args(port)),
    };
    command
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&node_dir)
        .args(extra);
    spawn(name, command, &node_dir)
}

/// Waits until the master on `port` has its replica caught up (its offset reached the
/// master's). Replication is asynchronous: writes a master acknowledged in the instant before it
/// dies may be lost in a failover, which no store client can see.
pub async fn wait_replicated(port: u16, tls: Option<&NodeTls>) {
    let offset = |info: &str, key: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    for _ in 0..400 {
        let info = redis_cli(tls, &["-p", &port.to_string(), "info", "replication"]);
        let master = offset(&info, "master_repl_offset:");
        let replica = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if master.is_some() && master == replica {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the replica of {port} never caught up");
}

/// Three masters, each with one replica.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    nodes: Vec<Option<Process>>,
    pub tls: Option<NodeTls>,
}

impl RedisCluster {
    /// Six nodes of `bin` (redis-server or valkey-server).
    pub async fn start(dir: &Path, bin: &Path) -> Self {
        Self::start_with(dir, bin, None).await
    }

    /// [`RedisCluster::start`], TLS only with `tls`.
    pub async fn start_with(dir: &Path, bin: &Path, tls: Option<NodeTls>) -> Self {
        let ports: Vec<u16> = (0..6).map(|_| cluster_port()).collect();
        let mut nodes = Vec::new();
        for &port in &ports {
            nodes.push(Some(server(
                bin,
                "redis-cluster-node",
                dir,
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ],
                tls.as_ref(),
            )));
        }
        for &port in &ports {
            wait_port(port).await;
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let created = redis_cli(tls.as_ref(), &args);
        assert!(
            created.contains("[OK]"),
            "cluster create failed:\n{created}"
        );
        let cluster = Self { ports, nodes, tls };
        cluster.wait_ok().await;
        // A replica that has not finished its first sync cannot take over: wait for all three.
        for _ in 0..400 {
            let synced = cluster
                .ports
                .iter()
                .map(|p| cluster.cli(&["-p", &p.to_string(), "info", "replication"]))
                .filter(|info| {
                    info.contains("role:slave") && info.contains("master_link_status:up")
                })
                .count();
            if synced == 3 {
                return cluster;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the replicas never synced");
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.tls.as_ref(), args)
    }

    /// Seed URLs (all six nodes).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|&p| url(self.tls.as_ref(), p))
            .collect()
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub async fn wait_ok(&self) {
        for _ in 0..400 {
            let ok = self
                .ports
                .iter()
                .zip(&self.nodes)
                .filter(|(_, node)| node.is_some())
                .all(|(port, _)| {
                    self.cli(&["-p", &port.to_string(), "cluster", "info"])
                        .contains("cluster_state:ok")
                });
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster never became ok");
    }

    /// The port of a master that has a replica.
    pub fn a_master(&self) -> u16 {
        let nodes = self.cli(&["-p", &self.ports[0].to_string(), "cluster", "nodes"]);
        nodes
            .lines()
            .find(|l| l.contains("master") && !l.contains("fail"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok())
            .expect("a master")
    }

    /// The ports of the replicas, as the cluster sees them now.
    pub fn replicas(&self) -> Vec<u16> {
        let nodes = self.cli(&["-p", &self.ports[0].to_string(), "cluster", "nodes"]);
        nodes
            .lines()
            .filter(|l| l.contains("slave") && !l.contains("fail"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|addr| addr.split(['@', ':']).nth(1))
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the node on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        signal(self.nodes[i].as_ref().expect("running").id(), frozen);
    }

    /// Kills the node on `port` (SIGKILL: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|&p| p == port).unwrap();
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }
}

/// A master and a replica, watched by three sentinels (quorum 2) under the name `certbound`.
pub struct RedisSentinels {
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_ports: Vec<u16>,
    master: Option<Process>,
    _replica: Process,
    _sentinels: Vec<Process>,
    pub tls: Option<NodeTls>,
}

pub const MASTER_NAME: &str = "certbound";

/// SIGSTOP or SIGCONT, with the shell's own kill (no procps needed).
fn signal(pid: u32, stop: bool) {
    let signal = if stop { "-STOP" } else { "-CONT" };
    let status = Command::new("sh")
        .args(["-c", &format!("kill {signal} {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
}

impl RedisSentinels {
    /// A master and a replica of `bin`, and three sentinels (`bin --sentinel`).
    pub async fn start(dir: &Path, bin: &Path) -> Self {
        Self::start_with(dir, bin, None).await
    }

    /// [`RedisSentinels::start`], TLS only with `tls` (the sentinels too).
    pub async fn start_with(dir: &Path, bin: &Path, tls: Option<NodeTls>) -> Self {
        let master_port = free_port();
        let replica_port = free_port();
        let master = server(bin, "redis-master", dir, master_port, &[], tls.as_ref());
        wait_port(master_port).await;
        let replica = server(
            bin,
            "redis-replica",
            dir,
            replica_port,
            &["--replicaof", "127.0.0.1", &master_port.to_string()],
            tls.as_ref(),
        );
        wait_port(replica_port).await;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf: PathBuf = dir.join(format!("sentinel-{i}.conf"));
            // A sentinel's TLS: the same settings as a node's, as configuration lines.
            let listen = match &tls {
                None => format!("port {port}\n"),
                Some(tls) => {
                    let mut lines = format!("port 0\ntls-port {port}\n");
                    for pair in tls.files_args().chunks(2) {
                        let name = pair[0].trim_start_matches("--");
                        lines.push_str(&format!("{name} {}\n", pair[1]));
                    }
                    lines
                }
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n"
                ),
            )
            .unwrap();
            let mut command = Command::new(bin);
            command.arg(&conf).arg("--sentinel");
            sentinels.push(spawn("redis-sentinel", command, dir));
            sentinel_ports.push(port);
        }
        for &port in &sentinel_ports {
            wait_port(port).await;
        }
        // The replica has synced once it reports the master link up.
        for _ in 0..200 {
            let info = redis_cli(
                tls.as_ref(),
                &["-p", &replica_port.to_string(), "info", "replication"],
            );
            if info.contains("master_link_status:up") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            master_port,
            replica_port,
            sentinel_ports,
            master: Some(master),
            _replica: replica,
            _sentinels: sentinels,
            tls,
        }
    }

    /// The sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinel_ports
            .iter()
            .map(|&p| url(self.tls.as_ref(), p))
            .collect()
    }

    /// The master's port as the sentinels see it now.
    /// Stops (SIGSTOP) or resumes (SIGCONT) the replica.
    pub fn freeze_replica(&self, frozen: bool) {
        signal(self._replica.id(), frozen);
    }

    pub fn current_master(&self) -> Option<u16> {
        let answer = redis_cli(
            self.tls.as_ref(),
            &[
                "-p",
                &self.sentinel_ports[0].to_string(),
                "sentinel",
                "get-master-addr-by-name",
                MASTER_NAME,
            ],
        );
        answer.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// Kills the master; the sentinels promote the replica.
    pub fn kill_master(&mut self) {
        if let Some(mut master) = self.master.take() {
            master.kill();
        }
    }

    /// Waits (and returns true) until the sentinels name the replica as master.
    pub async fn wait_failover(&self) -> bool {
        for _ in 0..600 {
            if self.current_master() == Some(self.replica_port) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until the promoted replica takes writes.
    pub async fn wait_writable(&self) {
        for _ in 0..200 {
            let role = redis_cli(
                self.tls.as_ref(),
                &["-p", &self.replica_port.to_string(), "role"],
            );
            if role.starts_with("master") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the replica was never promoted");
    }
}
