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
use common::raw::{self, RawResponse, Step};
use common::{Idp, Signer};
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";
const PUBLIC: &str = "https://api.example.com";

/// The certbound settings every replica shares (issuer keys: the module's through its `idp`
/// cluster, the service's from a file of the same keys).
fn settings(keys: &str, redis: &RedisServer) -> String {
    format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n{keys}    algorithms: [ES256]\n\
         dpop:\n  enabled: true\n  public_base_url: {PUBLIC}\n  replay:\n    store: redis\n    url: {}\n    timeout_ms: 300\n\
         policy:\n  reason_header: true\n",
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

async fn module_replica(name: &'static str, pki: &Pki, idp: &Idp, redis: &RedisServer) -> Replica {
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
        &settings(&keys, redis),
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

async fn service_replica(pki: &Pki, signer: &Signer, redis: &RedisServer) -> Replica {
    let dir = pki.dir.path().join("service");
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
    let keys = format!("    jwks_file: {}\n", jwks.display());
    let (certbound, addr) = start_certbound(&settings(&keys, redis), &dir).await;
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
        let auth = format!("DPoP {token}");
        raw::http1(
            pki,
            None,
            self.port,
            vec![Step::Send(raw::head(
                "GET",
                "/items",
                &[("authorization", &auth), ("dpop", proof)],
            ))],
            Duration::from_secs(10),
        )
        .await
    }

    /// The status and `x-certbound-reason` (`ok` for an allow) of one request.
    async fn outcome(&self, pki: &Pki, token: &str, proof: &str) -> (Option<u16>, String) {
        let seen = self.send(pki, token, proof).await;
        let reason = match seen.status {
            Some(200) if seen.header("x-upstream") == Some("seen") => "ok".to_string(),
            _ => seen.header("x-certbound-reason").unwrap_or("").to_string(),
        };
        (seen.status, reason)
    }

    /// Waits until a fresh proof passes (keys loaded, Redis reachable).
    async fn wait_ready(&self, pki: &Pki, key: &DpopKey, token: &str) {
        for _ in 0..200 {
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
        module_replica("envoy-a", &pki, &idp, &redis).await,
        module_replica("envoy-b", &pki, &idp, &redis).await,
        service_replica(&pki, &signer, &redis).await,
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
    let late = module_replica("envoy-c", &pki, &idp, &redis).await;
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
