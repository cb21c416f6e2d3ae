//! Attacks on the Envoy module's batched DPoP replay store on Redis (issue 30): streams that
//! go away while they owe the Redis thread its wake-up, and proofs queued behind a batch a
//! slow Redis holds up. Each runs a real Envoy 1.40 with the built module and a real
//! redis-server on 127.0.0.1; the oracle is the upstream itself: no proof reaches it twice, and
//! no stream is left waiting.
//!
//! Ignored by a plain `cargo test` (they need Envoy, the built module and redis-server);
//! `scripts/test.sh` installs them and runs it with `--include-ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::dpop::DpopKey;
use common::envoy::*;
use common::external::RedisServer;
use common::raw::{self, H2Response};
use common::{Idp, Signer};
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";
const PUBLIC: &str = "https://api.example.com";

struct Module {
    port: u16,
    envoy: Process,
    upstream: RecordingUpstream,
}

async fn module(name: &str, pki: &Pki, idp: &Idp, replay: &str) -> Module {
    let upstream = RecordingUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        upstream: Some(upstream.addr),
        idp: Some(idp.addr),
        ..Default::default()
    };
    let settings = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {ISSUER}/.well-known/jwks.json\n    cluster: idp\n    algorithms: [ES256]\n\
         dpop:\n  enabled: true\n  public_base_url: {PUBLIC}\n  replay:\n{replay}\
         policy:\n  reason_header: true\n"
    );
    let config = with_filter_config(&envoy_config("module", &ports, pki), &settings);
    let dir = pki.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let envoy = start_envoy(&config, &ports, &dir).await;
    Module {
        port: ports.listener,
        envoy,
        upstream,
    }
}

impl Module {
    /// The status and `x-certbound-reason` (`ok` for an allow) of one HTTP/1.1 request.
    async fn outcome(&self, pki: &Pki, token: &str, proof: &str) -> (Option<u16>, String) {
        raw::outcome(&raw::dpop_get(pki, self.port, token, proof).await)
    }

    async fn wait_ready(&self, pki: &Pki, key: &DpopKey, token: &str) {
        for _ in 0..200 {
            let proof = key.proof("GET", &format!("{PUBLIC}/items"), token);
            if self.outcome(pki, token, &proof).await.1 == "ok" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never allowed a fresh proof:\n{}", self.envoy.log());
    }

    /// How many times the upstream received a request carrying `proof`.
    fn reached(&self, proof: &str) -> usize {
        self.upstream.reached_with_proof(proof)
    }
}

fn token_for(signer: &Signer, key: &DpopKey) -> String {
    let mut claims = common::claims(ISSUER, None);
    claims["aud"] = json!(AUDIENCE);
    claims["cnf"] = json!({"jkt": key.jkt()});
    signer.sign(&claims)
}

/// HTTP/2: a burst of streams on one connection, every other one reset as soon as it is sent
/// (HEADERS and RST_STREAM in the same reads, so the first stream of the burst, the one that
/// owes the Redis thread its wake-up, is often gone before its flush event runs). Every stream
/// not reset is answered (none left waiting on a wake-up that went with a reset stream), a
/// proof reaches the upstream at most once whatever is resent afterwards, and the store goes
/// on answering. Repeated, so the reset stream is the burst's first in several rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn streams_reset_while_they_owe_the_flush_leave_no_stream_waiting() {
    let pki = Pki::new("attack-replay-reset");
    let signer = Signer::es256("k1");
    let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
    let redis = RedisServer::start(pki.dir.path()).await;
    let replay = format!(
        "    store: redis\n    url: {}\n    timeout_ms: 1500\n    key_prefix: \"reset:\"\n",
        redis.url()
    );
    let module = module("envoy-reset", &pki, &idp, &replay).await;
    let key = DpopKey::es256();
    let token = token_for(&signer, &key);
    module.wait_ready(&pki, &key, &token).await;
    let htu = format!("{PUBLIC}/items");
    let auth = format!("DPoP {token}");

    const ROUNDS: usize = 6;
    const STREAMS: usize = 16;
    let mut all_proofs = Vec::new();
    for round in 0..ROUNDS {
        let proofs: Vec<String> = (0..STREAMS)
            .map(|_| key.proof("GET", &htu, &token))
            .collect();
        let mut client = raw::http2(&pki, None, module.port).await;
        let mut kept = Vec::new();
        // No await between the sends: h2 writes what is buffered together.
        for (i, proof) in proofs.iter().enumerate() {
            let request = raw::h2_request(
                "GET",
                "/items",
                &[("authorization", &auth), ("dpop", proof)],
            );
            let (response, mut stream) = client.send_request(request, true).unwrap();
            // The first stream of odd rounds, and every other one, is reset at once.
            if (i + round) % 2 == 0 {
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
            } else {
                kept.push((i, response));
            }
        }
        for (i, response) in kept {
            let answer = H2Response::read(response, Duration::from_secs(8)).await;
            assert_eq!(
                (answer.status, answer.header("x-upstream")),
                (Some(200), Some("seen")),
                "round {round}, stream {i} (not reset) was answered {:?} {:?}:\n{}",
                answer.status,
                answer.header("x-certbound-reason"),
                module.envoy.log()
            );
        }
        all_proofs.extend(proofs);
    }

    // Every proof, reset or not, sent twice more at once: it reaches the upstream once at most.
    let resends = all_proofs
        .iter()
        .chain(&all_proofs)
        .map(|proof| module.outcome(&pki, &token, proof));
    let outcomes = futures_util::future::join_all(resends).await;
    for (proof, (status, reason)) in all_proofs.iter().chain(&all_proofs).zip(&outcomes) {
        assert!(
            matches!(status, Some(200) | Some(401)),
            "resend answered {status:?} {reason}"
        );
        assert!(
            module.reached(proof) <= 1,
            "a proof reached the upstream {} times: {proof}",
            module.reached(proof)
        );
    }
    // And the store still answers a fresh proof at once.
    let started = Instant::now();
    let fresh = key.proof("GET", &htu, &token);
    assert_eq!(
        module.outcome(&pki, &token, &fresh).await,
        (Some(200), "ok".into())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A slow Redis holds up one batch; proofs that arrive meanwhile queue behind it. Each stream's
/// answer is due `timeout_ms` after it started waiting, not after the batch before it ended:
/// the second wave answers 503 within its own deadline (not the first batch's plus its own),
/// none is allowed, and once Redis answers again each proof reaches the upstream at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn a_proof_queued_behind_a_slow_batch_keeps_its_own_deadline() {
    let pki = Pki::new("attack-replay-slow");
    let signer = Signer::es256("k1");
    let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
    let redis = RedisServer::start(pki.dir.path()).await;
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let replay = format!(
        "    store: redis\n    url: {}\n    timeout_ms: {}\n    key_prefix: \"slow:\"\n",
        redis.url(),
        TIMEOUT.as_millis()
    );
    let module = module("envoy-slow", &pki, &idp, &replay).await;
    let key = DpopKey::es256();
    let token = token_for(&signer, &key);
    module.wait_ready(&pki, &key, &token).await;
    let htu = format!("{PUBLIC}/items");

    redis.freeze(true);
    let wave = |n: usize, delay: Duration| {
        let proofs: Vec<String> = (0..n).map(|_| key.proof("GET", &htu, &token)).collect();
        let (module, pki, token) = (&module, &pki, &token);
        async move {
            tokio::time::sleep(delay).await;
            let sends = proofs.iter().map(|proof| async move {
                let started = Instant::now();
                let outcome = module.outcome(pki, token, proof).await;
                (proof.clone(), outcome, started.elapsed())
            });
            futures_util::future::join_all(sends).await
        }
    };
    // The first wave's batch waits on the frozen Redis; the second queues behind it.
    let (first, second) =
        futures_util::future::join(wave(8, Duration::ZERO), wave(8, Duration::from_millis(150)))
            .await;
    redis.freeze(false);
    for (wave, outcomes) in [("first", &first), ("second", &second)] {
        for (_, (status, reason), took) in outcomes.iter() {
            assert_eq!(
                *status,
                Some(503),
                "{wave} wave, with Redis frozen: {reason}"
            );
            eprintln!("{wave} wave: 503 after {took:?}");
            // Its own deadline (timeout_ms) and scheduling slack; queued behind the first
            // batch's full timeout it would take about twice as long.
            assert!(
                *took < TIMEOUT + Duration::from_millis(700),
                "{wave} wave answered after {took:?} (timeout_ms {TIMEOUT:?})"
            );
        }
    }

    // Redis answers again: the store recovers, and no proof of either wave passes twice.
    module.wait_ready(&pki, &key, &token).await;
    let proofs: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|(p, _, _)| p.clone())
        .collect();
    let resends = proofs
        .iter()
        .chain(&proofs)
        .map(|proof| module.outcome(&pki, &token, proof));
    futures_util::future::join_all(resends).await;
    for proof in &proofs {
        assert!(
            module.reached(proof) <= 1,
            "a proof answered 503 then resent twice reached the upstream {} times",
            module.reached(proof)
        );
    }
}

/// Redis restarts (a crash, a pod rescheduled) and comes back without the proofs it held (no
/// persistence, or an RDB snapshot older than the window, or AOF's last second): a proof used
/// just before must not pass again once the store answers. The store cannot tell whether a
/// proof made before the server started was used, so it refuses it (503); proofs made after
/// pass as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn a_proof_used_before_redis_restarted_is_not_accepted_again() {
    let pki = Pki::new("attack-replay-restart");
    let signer = Signer::es256("k1");
    let idp = Idp::start_tls(&[&signer], &pki, "idp.example.com").await;
    let mut redis = RedisServer::start(pki.dir.path()).await;
    let replay = format!(
        "    store: redis\n    url: {}\n    timeout_ms: 500\n    key_prefix: \"restart:\"\n",
        redis.url()
    );
    let module = module("envoy-restart", &pki, &idp, &replay).await;
    let key = DpopKey::es256();
    let token = token_for(&signer, &key);
    module.wait_ready(&pki, &key, &token).await;
    let htu = format!("{PUBLIC}/items");

    let used = key.proof("GET", &htu, &token);
    assert_eq!(
        module.outcome(&pki, &token, &used).await,
        (Some(200), "ok".into())
    );
    assert_eq!(module.reached(&used), 1);

    // Redis comes back empty (the test server keeps nothing on disk).
    redis.restart().await;
    let started = Instant::now();
    loop {
        let fresh = key.proof("GET", &htu, &token);
        if module.outcome(&pki, &token, &fresh).await.1 == "ok" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "fresh proofs never passed after the restart:\n{}",
            module.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "fresh proofs pass again {:?} after Redis restarted",
        started.elapsed()
    );

    let (status, reason) = module.outcome(&pki, &token, &used).await;
    assert_ne!(
        status,
        Some(200),
        "a proof used before Redis restarted was accepted again ({reason})"
    );
    assert_eq!(module.reached(&used), 1, "the replay reached the upstream");
}

/// The LDS resource for the reload probes: one plain-HTTP listener whose certbound
/// configuration differs by `generation` in `dpop.max_age_seconds` (and in the replay store's
/// settings, `replay`, only where they say `{generation}`), so each publication is a new
/// configuration.
fn reload_listener(port: u16, jwks: &std::path::Path, replay: &str, generation: usize) -> String {
    let replay = replay.replace("{generation}", &generation.to_string());
    let filter = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_file: {}\n    algorithms: [ES256]\n\
         dpop:\n  enabled: true\n  max_age_seconds: {}\n  public_base_url: {PUBLIC}\n  replay:\n{replay}\
         policy:\n  reason_header: true\n",
        jwks.display(),
        60 + generation,
    );
    module_lds_listener(port, &filter)
}

async fn stat(admin: u16, name: &str) -> u64 {
    let url = format!("http://127.0.0.1:{admin}/stats?filter=^{name}$");
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// An Envoy whose listener (with certbound's module) comes from an LDS file, replaced by
/// [`Reloadable::publish`].
struct Reloadable {
    envoy: Process,
    ports: EnvoyPorts,
    upstream: RecordingUpstream,
    lds: std::path::PathBuf,
    jwks: std::path::PathBuf,
    replay: String,
    signer: Signer,
    http: reqwest::Client,
}

const UPDATES: &str = "listener_manager.lds.update_success";

impl Reloadable {
    async fn start(pki: &Pki, replay: String) -> Self {
        let dir = pki.dir.path();
        let signer = Signer::es256("k1");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
        let upstream = RecordingUpstream::start().await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            upstream: Some(upstream.addr),
            ..Default::default()
        };
        let lds = dir.join("lds.json");
        let bootstrap = format!(
            "node: {{id: reload-attack, cluster: certbound-tests}}\n\
             admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n\
             dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    path_config_source: {{path: {}}}\n\
             static_resources:\n  clusters:\n    - name: upstream\n      type: STATIC\n      connect_timeout: 1s\n      load_assignment:\n        cluster_name: upstream\n        endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]\n",
            ports.admin,
            lds.display(),
            upstream.addr.port()
        );
        std::fs::write(&lds, reload_listener(ports.listener, &jwks, &replay, 0)).unwrap();
        // Streams of a replaced listener keep going for 20 s (they are what this probes).
        let envoy = start_envoy_with(&bootstrap, &ports, dir, &["--drain-time-s", "20"]).await;
        for _ in 0..200 {
            if stat(ports.admin, UPDATES).await >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Self {
            envoy,
            ports,
            upstream,
            lds,
            jwks,
            replay,
            signer,
            // A connection per request: one kept alive would stay with the replaced listener.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// Publishes configuration `generation` and waits until Envoy applied it.
    async fn publish(&self, generation: usize) {
        let before = stat(self.ports.admin, UPDATES).await;
        let text = reload_listener(self.ports.listener, &self.jwks, &self.replay, generation);
        let aside = self.lds.with_extension("tmp");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &self.lds).unwrap();
        for _ in 0..400 {
            if stat(self.ports.admin, UPDATES).await > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("reload {generation} not applied:\n{}", self.envoy.log());
    }

    /// The status of one DPoP request (`None`: no answer within 15 s).
    async fn send(&self, token: &str, proof: &str) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}/items", self.ports.listener);
        self.http
            .get(url)
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .ok()
            .map(|answer| answer.status().as_u16())
    }

    async fn wait_ready(&self, key: &DpopKey, token: &str) {
        for _ in 0..200 {
            if self
                .send(token, &key.proof("GET", &format!("{PUBLIC}/items"), token))
                .await
                == Some(200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never allowed a fresh proof:\n{}", self.envoy.log());
    }

    fn reached(&self, proof: &str) -> usize {
        self.upstream.reached_with_proof(proof)
    }
}

/// The configuration is replaced (LDS) by one with other Redis settings (so a new store, with
/// a thread of its own) while a batch of proofs waits on a frozen Redis: every waiting request
/// is still answered (by the old configuration's Redis thread, an allow once Redis answers or a
/// 503), none hangs, and afterwards no proof reaches the upstream twice through the old and the
/// new configuration together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40, the built module and redis-server: run scripts/test.sh"]
async fn a_configuration_replaced_mid_batch_answers_every_waiting_proof_once() {
    let pki = Pki::new("attack-replay-reload");
    let redis = RedisServer::start(pki.dir.path()).await;
    let replay = format!(
        "    store: redis\n    url: {}\n    timeout_ms: 400{{generation}}\n    key_prefix: \"reload:\"\n",
        redis.url()
    );
    let envoy = Reloadable::start(&pki, replay).await;
    let key = DpopKey::es256();
    let token = token_for(&envoy.signer, &key);
    let htu = format!("{PUBLIC}/items");
    envoy.wait_ready(&key, &token).await;

    redis.freeze(true);
    let proofs: Vec<String> = (0..8).map(|_| key.proof("GET", &htu, &token)).collect();
    let waiting = futures_util::future::join_all(proofs.iter().map(|p| envoy.send(&token, p)));
    let reload = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        envoy.publish(1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.freeze(false);
    };
    let started = Instant::now();
    let (answers, ()) = futures_util::future::join(waiting, reload).await;
    eprintln!(
        "waiting proofs across the reload: {answers:?} in {:?}",
        started.elapsed()
    );
    for answer in &answers {
        assert!(
            matches!(answer, Some(200) | Some(503)),
            "a proof waiting across the reload was answered {answer:?}:\n{}",
            envoy.envoy.log()
        );
    }
    // Resent twice at once through the new configuration: once at most, all told.
    let resends = proofs.iter().chain(&proofs).map(|p| envoy.send(&token, p));
    let resent = futures_util::future::join_all(resends).await;
    for proof in &proofs {
        let reached = envoy.reached(proof);
        assert!(reached <= 1, "a proof reached the upstream {reached} times");
    }
    assert!(
        resent.iter().all(|a| matches!(a, Some(401) | Some(200))),
        "{resent:?}"
    );
}

/// The in-memory store (`store: memory`, the default) across a configuration update that
/// keeps its settings: a proof used under the old configuration must not pass again under the
/// new one (the ext_authz service keeps its store across such reloads; the module made a new,
/// empty one per configuration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Envoy 1.40 and the built module: run scripts/test.sh"]
async fn a_proof_used_before_a_configuration_update_is_not_accepted_after_it() {
    let pki = Pki::new("attack-replay-reload-memory");
    let envoy = Reloadable::start(&pki, "    store: memory\n".into()).await;
    let key = DpopKey::es256();
    let token = token_for(&envoy.signer, &key);
    let htu = format!("{PUBLIC}/items");
    envoy.wait_ready(&key, &token).await;

    let used = key.proof("GET", &htu, &token);
    assert_eq!(envoy.send(&token, &used).await, Some(200));
    envoy.publish(1).await;
    // The new configuration serves (a fresh proof passes), then the used one is resent.
    envoy.wait_ready(&key, &token).await;
    let again = envoy.send(&token, &used).await;
    assert_eq!(
        envoy.reached(&used),
        1,
        "a proof used before the configuration update passed again after it ({again:?})"
    );
    assert_eq!(again, Some(401));
}
