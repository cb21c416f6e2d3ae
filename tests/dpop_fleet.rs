//! One DPoP replay store for a fleet of both shapes: two Envoy 1.40 processes with certbound's
//! module and one Envoy in front of the ext_authz service, all recording proofs in one real
//! redis-server on 127.0.0.1. A proof used through any one of them is refused (401
//! `dpop_replayed`) through every other; a fresh proof passes once, wherever it is sent; with
//! Redis stopped the module answers 503 `replay_store_unavailable` and resumes when it is back.
//! Every replica is reached at the same public URL (`dpop.public_base_url`), as behind a load
//! balancer, so `htu` matches everywhere.
//!
//! Ignored by a plain `cargo test` (they need Envoy, the built module and redis-server);
//! `scripts/test.sh` installs them and runs it with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::dpop::DpopKey;
use common::envoy::*;
use common::external::RedisServer;
use common::raw::{self, RawResponse};
use common::{Idp, Signer};
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";
const PUBLIC: &str = "https://api.example.com";

/// The certbound settings every replica shares (issuer keys: the module's through its `idp`
/// cluster, the service's from a file of the same keys), with `replay` the `dpop.replay` lines.
fn settings(keys: &str, replay: &str) -> String {
    format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n{keys}    algorithms: [ES256]\n\
         dpop:\n  enabled: true\n  public_base_url: {PUBLIC}\n  replay:\n{replay}\
         policy:\n  reason_header: true\n"
    )
}

/// `dpop.replay` on one standalone server.
fn standalone(redis: &RedisServer) -> String {
    format!(
        "    store: redis\n    url: {}\n    timeout_ms: 300\n",
        redis.url()
    )
}

struct Replica {
    name: &'static str,
    port: u16,
    envoy: Process,
    _upstream: RecordingUpstream,
    _certbound: Option<Process>,
}

async fn module_replica(name: &'static str, pki: &Pki, idp: &Idp, replay: &str) -> Replica {
    let upstream = RecordingUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        upstream: Some(upstream.addr),
        idp: Some(idp.addr),
        ..Default::default()
    };
    let keys = format!("    jwks_uri: {ISSUER}/.well-known/jwks.json\n    cluster: idp\n");
    let config = with_filter_config(
        &envoy_config("module", &ports, pki),
        &settings(&keys, replay),
    );
    let dir = pki.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let envoy = start_envoy(&config, &ports, &dir).await;
    Replica {
        name,
        port: ports.listener,
        envoy,
        _upstream: upstream,
        _certbound: None,
    }
}

async fn service_replica(pki: &Pki, signer: &Signer, replay: &str) -> Replica {
    let dir = pki.dir.path().join("service");
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
    let keys = format!("    jwks_file: {}\n", jwks.display());
    let (certbound, addr) = start_certbound(&settings(&keys, replay), &dir).await;
    let upstream = RecordingUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        certbound: Some(addr),
        upstream: Some(upstream.addr),
        ..Default::default()
    };
    let envoy = start_envoy(&envoy_config("self-signed", &ports, pki), &ports, &dir).await;
    Replica {
        name: "service",
        port: ports.listener,
        envoy,
        _upstream: upstream,
        _certbound: Some(certbound),
    }
}

impl Replica {
    async fn send(&self, pki: &Pki, token: &str, proof: &str) -> RawResponse {
        raw::dpop_get(pki, self.port, token, proof).await
    }

    /// The status and `x-certbound-reason` (`ok` for an allow) of one request.
    async fn outcome(&self, pki: &Pki, token: &str, proof: &str) -> (Option<u16>, String) {
        raw::outcome(&self.send(pki, token, proof).await)
    }

    /// Waits until a fresh proof passes (keys loaded, Redis reachable; after Redis restarted,
    /// once the proofs' leeway is past the restart).
    async fn wait_ready(&self, pki: &Pki, key: &DpopKey, token: &str) {
        for _ in 0..400 {
            let proof = key.proof("GET", &format!("{PUBLIC}/items"), token);
            if self.outcome(pki, token, &proof).await.1 == "ok" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} never allowed a fresh proof:\n{}",
            self.name,
            self.envoy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn a_proof_used_anywhere_in_the_fleet_is_refused_everywhere_else() {
    let pki = Pki::new("fleet");
    let signer = Signer::es256("k1");
    let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
    let mut redis = RedisServer::start(pki.dir.path()).await;
    let fleet = [
        module_replica("envoy-a", &pki, &idp, &standalone(&redis)).await,
        module_replica("envoy-b", &pki, &idp, &standalone(&redis)).await,
        service_replica(&pki, &signer, &standalone(&redis)).await,
    ];
    let key = DpopKey::es256();
    let mut claims = common::claims(ISSUER, None);
    claims["aud"] = json!(AUDIENCE);
    claims["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&claims);
    for replica in &fleet {
        replica.wait_ready(&pki, &key, &token).await;
    }
    let htu = format!("{PUBLIC}/items");

    // A fresh proof first used at each replica in turn: it passes there once, and is refused
    // at every replica afterwards (the first one included).
    for first in &fleet {
        let proof = key.proof("GET", &htu, &token);
        assert_eq!(
            first.outcome(&pki, &token, &proof).await,
            (Some(200), "ok".into()),
            "a fresh proof at {}",
            first.name
        );
        for other in &fleet {
            assert_eq!(
                other.outcome(&pki, &token, &proof).await,
                (Some(401), "dpop_replayed".into()),
                "the proof first used at {} replayed at {}",
                first.name,
                other.name
            );
        }
    }

    // Redis stopped: the module fails closed (503), never allows; then service resumes.
    redis.stop();
    for replica in &fleet[..2] {
        let proof = key.proof("GET", &htu, &token);
        let (status, reason) = replica.outcome(&pki, &token, &proof).await;
        assert_eq!(
            status,
            Some(503),
            "{} with Redis down: {reason}",
            replica.name
        );
    }
    redis.restart().await;
    for replica in &fleet {
        replica.wait_ready(&pki, &key, &token).await;
    }

    // Redis silent (SIGSTOP: connections open, no answer): every replica answers 503 within
    // its timeout (300 ms here), a burst of concurrent checks included; then service resumes.
    redis.freeze(true);
    for replica in &fleet {
        let started = std::time::Instant::now();
        let burst = (0..10).map(|_| {
            let proof = key.proof("GET", &htu, &token);
            let pki = &pki;
            let token = &token;
            async move { replica.outcome(pki, token, &proof).await }
        });
        for (status, reason) in futures_util::future::join_all(burst).await {
            assert_eq!(
                status,
                Some(503),
                "{} with Redis silent: {reason}",
                replica.name
            );
        }
        let took = started.elapsed();
        eprintln!(
            "{}: 10 checks with Redis silent answered 503 in {took:?}",
            replica.name
        );
        assert!(
            took < Duration::from_secs(3),
            "{}: 503s took {took:?}, not bounded by the timeout",
            replica.name
        );
    }
    redis.freeze(false);
    for replica in &fleet {
        replica.wait_ready(&pki, &key, &token).await;
    }

    // An evicting maxmemory-policy would let Redis forget used proofs: a module that starts
    // on such a server says so in Envoy's log.
    redis.config_set("maxmemory-policy", "allkeys-lru").await;
    let late = module_replica("envoy-c", &pki, &idp, &standalone(&redis)).await;
    let mut log = String::new();
    for _ in 0..200 {
        log = late.envoy.log();
        if log.contains("maxmemory-policy allkeys-lru") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the module did not report the evicting policy:\n{log}");
}

/// A module replica and the service, sharing one store, with the token and DPoP key they check.
struct Pair {
    pki: Pki,
    _idp: Idp,
    fleet: [Replica; 2],
    key: DpopKey,
    token: String,
}

impl Pair {
    async fn start(pki: Pki, replay: &str) -> Self {
        let signer = Signer::es256("k1");
        let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
        let fleet = [
            module_replica("envoy-module", &pki, &idp, replay).await,
            service_replica(&pki, &signer, replay).await,
        ];
        let key = DpopKey::es256();
        let mut claims = common::claims(ISSUER, None);
        claims["aud"] = json!(AUDIENCE);
        claims["cnf"] = json!({"jkt": key.jkt()});
        let token = signer.sign(&claims);
        let pair = Self {
            pki,
            _idp: idp,
            fleet,
            key,
            token,
        };
        pair.wait_ready().await;
        pair
    }

    async fn wait_ready(&self) {
        for replica in &self.fleet {
            replica.wait_ready(&self.pki, &self.key, &self.token).await;
        }
    }

    fn proof(&self) -> String {
        self.key
            .proof("GET", &format!("{PUBLIC}/items"), &self.token)
    }

    async fn outcome(&self, at: usize, proof: &str) -> (Option<u16>, String) {
        self.fleet[at].outcome(&self.pki, &self.token, proof).await
    }

    /// `n` fresh proofs, first used at each shape in turn: each passes there once and is then
    /// refused at both. Returns them.
    async fn cross(&self, n: usize) -> Vec<String> {
        let mut used = Vec::new();
        for i in 0..n {
            let proof = self.proof();
            assert_eq!(self.outcome(i % 2, &proof).await, (Some(200), "ok".into()));
            for other in 0..2 {
                assert_eq!(
                    self.outcome(other, &proof).await,
                    (Some(401), "dpop_replayed".into()),
                    "first used at {}, replayed at {}",
                    self.fleet[i % 2].name,
                    self.fleet[other].name
                );
            }
            used.push(proof);
        }
        used
    }

    /// Fresh proofs at both shapes for `during`, while the topology fails over: each is allowed
    /// or refused with 503, nothing else; the allowed ones are returned.
    async fn through(&self, during: Duration) -> (Vec<String>, usize) {
        let (mut accepted, mut unavailable) = (Vec::new(), 0);
        let started = std::time::Instant::now();
        let mut i = 0;
        while started.elapsed() < during {
            let proof = self.proof();
            match self.outcome(i % 2, &proof).await {
                (Some(200), reason) if reason == "ok" => accepted.push(proof),
                (Some(503), _) => unavailable += 1,
                other => panic!(
                    "during the failover {} answered {other:?}",
                    self.fleet[i % 2].name
                ),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (accepted, unavailable)
    }

    /// Every proof ever accepted is refused at both shapes.
    async fn none_replayable(&self, used: &[String]) {
        for proof in used {
            for at in 0..2 {
                assert_eq!(
                    self.outcome(at, proof).await,
                    (Some(401), "dpop_replayed".into()),
                    "a used proof passed at {}",
                    self.fleet[at].name
                );
            }
        }
    }
}

/// Both shapes on a Redis Cluster over TLS (three masters with a replica each, TLS only): a
/// proof used at the module is refused at the service and the other way round; a master killed
/// under load gives 503s and allows of fresh proofs only, never a replay; service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn both_shapes_share_a_tls_redis_cluster_through_a_master_failover() {
    use common::topologies::{NodeTls, RedisCluster, redis_bin, wait_replicated};
    let pki = Pki::new("fleet-cluster");
    let tls = NodeTls::new(&pki);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start_with(dir.path(), &redis_bin(), Some(tls.clone())).await;
    let replay = format!(
        "    store: redis\n    mode: cluster\n    urls: [{}]\n    ca_file: {}\n    timeout_ms: 400\n",
        cluster.urls().join(", "),
        tls.ca.display()
    );
    let pair = Pair::start(pki, &replay).await;
    let mut used = pair.cross(12).await;
    let victim = cluster.a_master();
    wait_replicated(victim, Some(&tls)).await;
    cluster.kill(victim);
    let (accepted, unavailable) = pair.through(Duration::from_secs(4)).await;
    eprintln!(
        "cluster failover under both shapes: {unavailable} answered 503, {} fresh proofs allowed, 0 replays",
        accepted.len()
    );
    assert!(unavailable > 0, "no 503 while a master was gone");
    used.extend(accepted);
    cluster.wait_ok().await;
    pair.wait_ready().await;
    used.extend(pair.cross(4).await);
    pair.none_replayable(&used).await;
}

/// Both shapes behind Sentinel (a master and a replica, three sentinels, plain TCP): shared
/// replay refusal, and the failover followed by the module and the service alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn both_shapes_share_redis_behind_sentinel_through_a_failover() {
    use common::topologies::{MASTER_NAME, RedisSentinels, redis_bin, wait_replicated};
    let pki = Pki::new("fleet-sentinel");
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisSentinels::start(dir.path(), &redis_bin()).await;
    let replay = format!(
        "    store: redis\n    mode: sentinel\n    urls: [{}]\n    sentinel:\n      master_name: {MASTER_NAME}\n    timeout_ms: 400\n",
        redis.urls().join(", ")
    );
    let pair = Pair::start(pki, &replay).await;
    let mut used = pair.cross(6).await;
    wait_replicated(redis.master_port, None).await;
    redis.kill_master();
    let (accepted, unavailable) = pair.through(Duration::from_secs(4)).await;
    assert!(
        redis.wait_failover().await,
        "the sentinels did not fail over"
    );
    eprintln!(
        "sentinel failover under both shapes: {unavailable} answered 503, {} fresh proofs allowed, 0 replays",
        accepted.len()
    );
    assert!(unavailable > 0, "no 503 while the master was gone");
    used.extend(accepted);
    pair.wait_ready().await;
    used.extend(pair.cross(4).await);
    pair.none_replayable(&used).await;
}

/// The module records the proofs of concurrent requests in batches (one pipelined round trip
/// for what arrives together): a burst of fresh proofs, each sent twice at once, passes exactly
/// once per proof and is refused (`dpop_replayed`) the other time, every proof's key in Redis;
/// then, with Redis frozen and killed while a burst waits on it, every waiting stream answers
/// 503 (none allowed, none left waiting), and service resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn the_module_answers_every_proof_of_a_burst_through_its_batched_store() {
    let pki = Pki::new("fleet-burst");
    let signer = Signer::es256("k1");
    let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
    let mut redis = RedisServer::start(pki.dir.path()).await;
    let replay = format!(
        "    store: redis\n    url: {}\n    timeout_ms: 1500\n    key_prefix: \"burst:\"\n",
        redis.url()
    );
    let module = module_replica("envoy-burst", &pki, &idp, &replay).await;
    let key = DpopKey::es256();
    let mut claims = common::claims(ISSUER, None);
    claims["aud"] = json!(AUDIENCE);
    claims["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&claims);
    module.wait_ready(&pki, &key, &token).await;
    let recorded_before = redis.keys("burst:").await.len();
    let htu = format!("{PUBLIC}/items");

    const PROOFS: usize = 48;
    let proofs: Vec<String> = (0..PROOFS)
        .map(|_| key.proof("GET", &htu, &token))
        .collect();
    let sends = proofs
        .iter()
        .chain(&proofs)
        .map(|proof| module.outcome(&pki, &token, proof));
    let outcomes = futures_util::future::join_all(sends).await;
    for (i, proof) in proofs.iter().enumerate() {
        let mut pair = [outcomes[i].clone(), outcomes[i + PROOFS].clone()];
        pair.sort();
        assert_eq!(
            pair,
            [
                (Some(200), "ok".into()),
                (Some(401), "dpop_replayed".into())
            ],
            "proof {i} sent twice at once: {proof}"
        );
    }
    assert_eq!(
        redis.keys("burst:").await.len(),
        recorded_before + PROOFS,
        "every proof of the burst is recorded in Redis"
    );

    // Redis frozen, a burst waiting on it, then Redis killed: every stream gets its 503.
    redis.freeze(true);
    let started = std::time::Instant::now();
    let waiting = (0..24).map(|_| {
        let proof = key.proof("GET", &htu, &token);
        let (module, pki, token) = (&module, &pki, &token);
        async move { module.outcome(pki, token, &proof).await }
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.stop();
    };
    let (outcomes, ()) =
        futures_util::future::join(futures_util::future::join_all(waiting), kill).await;
    for (status, reason) in &outcomes {
        assert_eq!(*status, Some(503), "with Redis killed mid-batch: {reason}");
    }
    let took = started.elapsed();
    eprintln!("24 checks waiting on a frozen, then killed, Redis answered 503 in {took:?}");
    assert!(took < Duration::from_secs(5), "503s took {took:?}");

    redis.restart().await;
    module.wait_ready(&pki, &key, &token).await;
}
