//! The verified-token cache: hits skip the signature, never the binding; entries never outlive
//! `exp` or the key that verified them; the cache is bounded and can be turned off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use certbound_core::clock::ManualClock;
use common::*;

fn hits(certbound: &Certbound) -> (u64, u64) {
    let count = |result: &str| {
        certbound.metric(&format!(
            r#"certbound_token_cache_total{{result="{result}"}}"#
        ))
    };
    (count("hit"), count("miss"))
}

#[tokio::test]
async fn hits_skip_verification_but_the_binding_is_checked_every_time() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let cert = ClientCert::self_signed("a");
    let auth = format!(
        "Bearer {}",
        signer.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    for _ in 0..3 {
        certbound
            .check(request(&[("authorization", &auth)], &cert.url_encoded()))
            .await
            .assert_allowed();
    }
    assert_eq!(hits(&certbound), (2, 1));
    // Same cached token, another certificate: refused on the hit.
    let other = ClientCert::self_signed("b");
    certbound
        .check(request(&[("authorization", &auth)], &other.url_encoded()))
        .await
        .assert_invalid_token("binding_mismatch");
    certbound
        .check(request(&[("authorization", &auth)], ""))
        .await
        .assert_invalid_token("cert_missing");
    assert_eq!(hits(&certbound), (4, 1));
    assert_eq!(certbound.checker().token_cache().unwrap().len(), 1);
}

#[tokio::test]
async fn entries_never_outlive_exp() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let clock = ManualClock::new(now());
    let certbound = Certbound::start_with_clock(
        &config_for(&idp, "leeway_seconds: 0\n"),
        Arc::new(clock.clone()),
    )
    .await;
    certbound
        .wait_serving(std::time::Duration::from_secs(10))
        .await;
    let cert = ClientCert::self_signed("a");
    let mut c = claims(&idp.issuer, Some(&cert.x5t()));
    c["exp"] = serde_json::json!(clock_now(&clock) + 30);
    let auth = format!("Bearer {}", signer.sign(&c));
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_allowed();
    clock.advance(29);
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_allowed();
    assert_eq!(hits(&certbound), (1, 1));
    clock.advance(1);
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_invalid_token("token_expired");
    assert_eq!(
        hits(&certbound),
        (1, 2),
        "an expired token is never served from the cache"
    );
}

fn clock_now(clock: &ManualClock) -> i64 {
    use certbound_core::clock::Clock;
    clock.now()
}

#[tokio::test]
async fn a_hit_needs_the_verifying_key_to_still_be_published() {
    let k1 = Signer::es256("k1");
    let k2 = Signer::es256("k2");
    let idp = Idp::start(&[&k1, &k2]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let cert = ClientCert::self_signed("a");
    let auth = format!(
        "Bearer {}",
        k1.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_allowed();
    idp.set_keys(&[&k2]);
    certbound.checker().keys().refresh(0).await.unwrap();
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_invalid_token("key_unknown");
}

#[tokio::test]
async fn the_cache_is_bounded_and_can_be_turned_off() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "token_cache:\n  max_entries: 10\n")).await;
    let cert = ClientCert::self_signed("a");
    for i in 0..50 {
        let mut c = claims(&idp.issuer, Some(&cert.x5t()));
        c["jti"] = serde_json::json!(format!("t{i}"));
        let auth = format!("Bearer {}", signer.sign(&c));
        certbound
            .check(request(&[("authorization", &auth)], &cert.url_encoded()))
            .await
            .assert_allowed();
    }
    assert_eq!(certbound.checker().token_cache().unwrap().len(), 10);

    let off = Certbound::start(&config_for(&idp, "token_cache:\n  max_entries: 0\n")).await;
    assert!(off.checker().token_cache().is_none());
    let bound = bound_request(&signer, &idp.issuer, &cert);
    for _ in 0..2 {
        off.check(bound.clone()).await.assert_allowed();
    }
    assert_eq!(hits(&off), (0, 0));
}

#[tokio::test]
async fn a_miss_checks_the_signature_and_a_hit_does_not() {
    use certbound_core::Outcome;
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let cert = ClientCert::self_signed("a");
    let auth = format!(
        "Bearer {}",
        signer.sign(&claims(&idp.issuer, Some(&cert.x5t())))
    );
    let access = certbound::grpc::convert::access_request(
        request(&[("authorization", &auth)], &cert.url_encoded()),
        None,
    )
    .unwrap();
    // The answer gate (src/answer_gate.rs) closes on exactly this fact.
    let miss = certbound.checker().check(&access).await;
    assert!(matches!(miss.outcome, Outcome::Allow(_)), "{miss:?}");
    assert_eq!(miss.facts.token_cache, Some(false));
    assert!(miss.facts.signature_checked);
    let hit = certbound.checker().check(&access).await;
    assert!(matches!(hit.outcome, Outcome::Allow(_)), "{hit:?}");
    assert_eq!(hit.facts.token_cache, Some(true));
    assert!(!hit.facts.signature_checked);
}
