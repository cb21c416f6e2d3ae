//! Keys in the real world: rotation, outages, stale-if-error, garbage, slow IdPs, thundering
//! herds, several issuers. The IdP is a real HTTP server on 127.0.0.1 that the test controls;
//! time-dependent cases use an injected clock, not sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use certbound_core::KeyLookup;
use certbound_core::clock::ManualClock;
use common::*;

const NOT_SERVING: i32 = 2;
const SERVING: i32 = 1;

async fn check_with(certbound: &Certbound, signer: &Signer, issuer: &str) -> Answer {
    let cert = ClientCert::self_signed("c");
    let auth = format!("Bearer {}", signer.sign(&claims(issuer, Some(&cert.x5t()))));
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
}

#[tokio::test]
async fn rotation_new_key_is_accepted_without_restart_and_a_removed_key_stops_working() {
    let k1 = Signer::es256("k1");
    let k2 = Signer::es256("k2");
    let idp = Idp::start(&[&k1]).await;
    // A long refresh interval: only the unknown-kid refetch and explicit refreshes fetch.
    let certbound = Certbound::start(&config_for(
        &idp,
        "keys:\n  refetch_min_interval_seconds: 0\n",
    ))
    .await;
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();

    // The IdP publishes k2 and starts signing with it: accepted without a restart.
    idp.set_keys(&[&k1, &k2]);
    check_with(&certbound, &k2, &idp.issuer)
        .await
        .assert_allowed();

    // The IdP drops k1: after the next refresh, k1 tokens are refused.
    idp.set_keys(&[&k2]);
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
    certbound.checker().keys().refresh(0).await.unwrap();
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_invalid_token("key_unknown");
    check_with(&certbound, &k2, &idp.issuer)
        .await
        .assert_allowed();
}

/// Found by the soak (scripts/soak.sh): two Checks meet a new `kid` at once. The first one's
/// refetch publishes the key after the second has decided (key unknown) but before the second
/// asks for a refetch, which the rate limit then refuses. The second must decide again with the
/// new keys, not answer `key_unknown`.
#[tokio::test]
async fn a_check_that_decided_with_old_keys_decides_again_after_another_checks_refetch() {
    let k1 = Signer::es256("k1");
    let k2 = Signer::es256("k2");
    let idp = Idp::start(&[&k1]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let checker = certbound.checker();
    let keys = checker.keys();
    // The second Check decides now, with keys that lack k2.
    let seen_by_second = keys.generation();
    idp.set_keys(&[&k1, &k2]);
    let hits = idp.jwks_hits();
    // The first Check's refetch fetches and publishes k2.
    assert!(keys.refetch_unknown_kid(0, keys.generation()).await);
    assert_eq!(idp.jwks_hits(), hits + 1);
    // The second Check's refetch comes within the rate limit: no fetch, but the keys changed
    // since it decided, so it is told to decide again.
    assert!(keys.refetch_unknown_kid(0, seen_by_second).await);
    assert_eq!(idp.jwks_hits(), hits + 1);
    // A Check that decided with the current keys gains nothing from deciding again.
    assert!(!keys.refetch_unknown_kid(0, keys.generation()).await);
    assert_eq!(idp.jwks_hits(), hits + 1);
    check_with(&certbound, &k2, &idp.issuer)
        .await
        .assert_allowed();
}

#[tokio::test]
async fn outage_at_start_is_not_serving_then_serving_once_the_idp_answers() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    idp.set_status(503);
    let certbound = Certbound::start_unready(&config_for(&idp, "")).await;
    assert_eq!(certbound.health("").await, NOT_SERVING);
    let answer = check_with(&certbound, &k1, &idp.issuer).await;
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "keys_unavailable");

    idp.set_status(200);
    certbound.checker().keys().refresh(0).await.unwrap();
    // Health follows the key store at once (a watch channel), no polling interval involved.
    certbound.wait_serving(Duration::from_secs(2)).await;
    assert_eq!(
        certbound
            .health("envoy.service.auth.v3.Authorization")
            .await,
        SERVING
    );
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
}

#[tokio::test]
async fn outage_mid_run_keeps_stale_keys_until_max_stale_then_answers_503() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let clock = ManualClock::new(now());
    let yaml = config_for(&idp, "keys:\n  max_stale_seconds: 600\n");
    let certbound = Certbound::start_with_clock(&yaml, Arc::new(clock.clone())).await;
    certbound.wait_serving(Duration::from_secs(10)).await;
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();

    idp.set_status(500);
    assert!(certbound.checker().keys().refresh(0).await.is_err());
    clock.advance(600);
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
    assert_eq!(certbound.checker().keys().key_age(0), Some(600));

    clock.advance(1);
    let answer = check_with(&certbound, &k1, &idp.issuer).await;
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "keys_unavailable");

    idp.set_status(200);
    certbound.checker().keys().refresh(0).await.unwrap();
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
}

/// certbound SERVING with keys that go stale 3 s after the last good fetch, refreshed every 1-2 s,
/// on a manual clock.
async fn start_with_short_key_timings() -> (Signer, Idp, ManualClock, Certbound) {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let clock = ManualClock::new(now());
    let yaml = config_for(
        &idp,
        "keys:\n  max_stale_seconds: 3\n  min_refresh_seconds: 1\n  max_refresh_seconds: 2\n  \
         refresh_interval_seconds: 1\n",
    );
    let certbound = Certbound::start_with_clock(&yaml, Arc::new(clock.clone())).await;
    certbound.wait_serving(Duration::from_secs(10)).await;
    (k1, idp, clock, certbound)
}

/// Readiness follows whether keys are usable, not whether they were ever loaded: once they pass
/// `keys.max_stale_seconds` every Check for the issuer answers 503, so gRPC health and /readyz
/// say NOT_SERVING; the first good fetch makes them SERVING again. Liveness never changes.
#[tokio::test]
async fn readiness_follows_usable_keys_and_returns_after_the_first_good_fetch() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let (k1, idp, clock, certbound) = start_with_short_key_timings().await;
    let (admin, _stop) = admin(Arc::clone(&certbound.app)).await;
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 200);

    idp.set_status(503);
    clock.advance(4);
    certbound
        .wait_health(ServingStatus::NotServing, Duration::from_secs(3))
        .await;
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 503);
    assert_eq!(certbound.health("liveness").await, SERVING);
    let answer = check_with(&certbound, &k1, &idp.issuer).await;
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "keys_unavailable");

    idp.set_status(200);
    certbound
        .wait_health(ServingStatus::Serving, Duration::from_secs(5))
        .await;
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 200);
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
}

/// The fault-injection finding: after failed refreshes the store used to back off 1, 2, 4, 8 s
/// (up to a hidden 30 s), so checks stayed at 503 for seconds after the IdP came back. While keys
/// are unusable it now retries at least every `keys.min_refresh_seconds`.
#[tokio::test]
async fn after_an_outage_longer_than_the_back_off_service_resumes_within_one_retry_interval() {
    let (k1, idp, clock, certbound) = start_with_short_key_timings().await;

    // Six seconds of outage: the old schedule would be waiting 8 s after its fourth failure.
    idp.set_status(503);
    clock.advance(4);
    tokio::time::sleep(Duration::from_secs(6)).await;
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_unavailable();
    let failed = idp.jwks_hits();
    assert!(
        failed >= 5,
        "retried at least every second: {failed} fetches"
    );

    idp.set_status(200);
    // One retry interval (min_refresh_seconds: 1), plus slack for this noisy machine.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
}

/// A real IdP configured with a slightly different issuer (a trailing slash, `localhost` for
/// `127.0.0.1`) is refused by OIDC discovery; the error shows both values so that the fix is
/// obvious.
#[tokio::test]
async fn a_discovery_issuer_mismatch_names_both_issuers() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let published = idp.issuer.replace("127.0.0.1", "localhost");
    idp.set_discovery_issuer(&published);
    let yaml = format!(
        "issuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n",
        idp.issuer
    );
    let certbound = Certbound::start_unready(&yaml).await;
    let error = certbound
        .checker()
        .keys()
        .refresh(0)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("{published:?}")) && error.contains(&format!("{:?}", idp.issuer)),
        "{error}"
    );
}

#[tokio::test]
async fn a_jwks_that_fails_to_parse_keeps_the_last_good_keys() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    for garbage in [
        serde_json::json!({"nope": 1}),
        serde_json::json!("text"),
        serde_json::json!([1, 2]),
    ] {
        idp.set_jwks_document(garbage);
        assert!(certbound.checker().keys().refresh(0).await.is_err());
        check_with(&certbound, &k1, &idp.issuer)
            .await
            .assert_allowed();
    }
}

#[tokio::test]
async fn unusable_keys_are_skipped_and_the_rest_kept() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[]).await;
    let mut enc = Signer::es256("k1").jwk;
    enc["use"] = serde_json::json!("enc");
    idp.set_jwks_document(serde_json::json!({"keys": [
        enc,
        {"kty": "XYZ", "kid": "weird"},
        {"kty": "EC", "crv": "P-384", "kid": "bad-curve", "x": k1.jwk["x"], "y": k1.jwk["y"]},
        k1.jwk,
    ]}));
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    assert_eq!(certbound.checker().keys().key_set(0).unwrap().len(), 1);
    check_with(&certbound, &k1, &idp.issuer)
        .await
        .assert_allowed();
}

#[tokio::test]
async fn a_slow_idp_never_holds_a_check_longer_than_the_bound() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let certbound =
        Certbound::start(&config_for(&idp, "keys:\n  unknown_kid_wait_ms: 200\n")).await;
    idp.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let answer = check_with(&certbound, &Signer::es256("new"), &idp.issuer).await;
    let elapsed = started.elapsed();
    answer.assert_invalid_token("key_unknown");
    // Bound 200 ms, IdP 3 s: the Check answered with what it had, long before the IdP.
    assert!(
        elapsed < Duration::from_millis(2500),
        "Check took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_checks_with_a_new_kid_cause_one_fetch() {
    let k1 = Signer::es256("k1");
    let k2 = Signer::es256("k2");
    let idp = Idp::start(&[&k1]).await;
    let certbound = Arc::new(Certbound::start(&config_for(&idp, "")).await);
    let before = idp.jwks_hits();
    idp.set_keys(&[&k1, &k2]);
    // Slow the IdP a little so that the checks really overlap the fetch.
    idp.set_delay(Duration::from_millis(100));
    let cert = ClientCert::self_signed("c");
    let auth = format!(
        "Bearer {}",
        k2.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    let checks = (0..100).map(|_| {
        let certbound = Arc::clone(&certbound);
        let request = request(&[("authorization", &auth)], &cert.url_encoded());
        tokio::spawn(async move { certbound.check(request).await })
    });
    for answer in futures_util::future::join_all(checks).await {
        answer.unwrap().assert_allowed();
    }
    assert_eq!(
        idp.jwks_hits() - before,
        1,
        "the IdP was asked more than once"
    );
}

#[tokio::test]
async fn cache_control_max_age_sets_the_next_refresh_within_bounds() {
    let k1 = Signer::es256("k1");
    let idp = Idp::start(&[&k1]).await;
    let certbound = Certbound::start(&config_for(
        &idp,
        "keys:\n  min_refresh_seconds: 60\n  max_refresh_seconds: 900\n  refresh_interval_seconds: 300\n",
    ))
    .await;
    let checker = certbound.checker();
    let keys = checker.keys();
    idp.set_max_age(Some(120));
    assert_eq!(keys.refresh(0).await.unwrap(), Duration::from_secs(120));
    idp.set_max_age(Some(5));
    assert_eq!(keys.refresh(0).await.unwrap(), Duration::from_secs(60));
    idp.set_max_age(Some(86_400));
    assert_eq!(keys.refresh(0).await.unwrap(), Duration::from_secs(900));
    idp.set_max_age(None);
    assert_eq!(keys.refresh(0).await.unwrap(), Duration::from_secs(300));
}

fn two_issuers(a: &Idp, b: &Idp, extra: &str) -> String {
    format!(
        "issuers:\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n  - issuer: {}\n    audiences: [{AUDIENCE}]\n    jwks_uri: {}\n{extra}",
        a.issuer,
        a.jwks_uri(),
        b.issuer,
        b.jwks_uri()
    )
}

#[tokio::test]
async fn the_tokens_issuer_chooses_the_keys_and_only_its_keys_verify() {
    // Both IdPs use the kid "k1", with different keys.
    let ka = Signer::es256("k1");
    let kb = Signer::es256("k1");
    let a = Idp::start(&[&ka]).await;
    let b = Idp::start(&[&kb]).await;
    let certbound = Certbound::start(&two_issuers(&a, &b, "")).await;
    check_with(&certbound, &ka, &a.issuer)
        .await
        .assert_allowed();
    check_with(&certbound, &kb, &b.issuer)
        .await
        .assert_allowed();
    // Signed by B's key but claiming A as issuer: A's keys do not verify it.
    check_with(&certbound, &kb, &a.issuer)
        .await
        .assert_invalid_token("signature_invalid");
}

#[tokio::test]
async fn readiness_waits_for_every_issuer_unless_partial_is_allowed() {
    let ka = Signer::es256("k1");
    let a = Idp::start(&[&ka]).await;
    let b = Idp::start(&[&Signer::es256("k1")]).await;
    b.set_status(500);

    let strict = Certbound::start_unready(&two_issuers(&a, &b, "")).await;
    strict.checker().keys().load_all().await;
    assert_eq!(strict.health("").await, NOT_SERVING);

    let partial =
        Certbound::start_unready(&two_issuers(&a, &b, "keys:\n  ready_when: any\n")).await;
    partial.wait_serving(Duration::from_secs(10)).await;
    // The issuer that loaded works; the other answers 503.
    check_with(&partial, &ka, &a.issuer).await.assert_allowed();
    check_with(&partial, &ka, &b.issuer)
        .await
        .assert_unavailable();
}

/// A static `jwks_file` re-read on every refresh says "keys loaded" once at INFO; the same
/// keys again are a DEBUG "keys unchanged", and a changed file an INFO "keys changed" naming
/// the kids. The real binary, refreshing every second.
#[tokio::test]
async fn a_static_jwks_file_logs_its_keys_once_then_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (k1, k2) = (Signer::es256("k1"), Signer::es256("k2"));
    std::fs::write(&jwks, serde_json::json!({"keys": [k1.jwk]}).to_string()).unwrap();
    let yaml = format!(
        "issuers:\n  - issuer: https://idp.test\n    audiences: [{AUDIENCE}]\n    jwks_file: {}\n\
         keys:\n  refresh_interval_seconds: 1\n  min_refresh_seconds: 1\n",
        jwks.display()
    );
    let (process, _) = common::envoy::start_certbound(&yaml, dir.path()).await;
    let count = |what: &str| process.log().matches(what).count();
    // Three refreshes or more of the same file.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(count("keys loaded"), 1, "{}", process.log());
    assert!(
        process
            .log()
            .contains("keys loaded issuer=https://idp.test keys=1 kids=k1"),
        "{}",
        process.log()
    );
    assert_eq!(
        count("keys changed") + count("keys unchanged"),
        0,
        "{}",
        process.log()
    );

    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [k1.jwk, k2.jwk]}).to_string(),
    )
    .unwrap();
    for _ in 0..100 {
        if count("keys changed") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(count("keys changed"), 1, "{}", process.log());
    assert!(
        process
            .log()
            .contains("keys changed issuer=https://idp.test keys=2 kids=k1,k2"),
        "{}",
        process.log()
    );
    assert_eq!(count("keys loaded"), 1, "{}", process.log());
}
