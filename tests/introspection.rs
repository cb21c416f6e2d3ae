//! Opaque tokens by RFC 7662 introspection against a real endpoint on 127.0.0.1, including the
//! RFC 8705 §3.2 binding in the answer, the cache, and failure handling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use certbound_core::clock::ManualClock;
use common::*;
use serde_json::{Value, json};

const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

/// The client secret, in a file written once per test process.
fn secret_file() -> &'static std::path::Path {
    static FILE: std::sync::OnceLock<tempfile::TempPath> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{}\n", INTROSPECTION_CLIENT.1)).unwrap();
        file.into_temp_path()
    })
}

fn config(idp: &Idp, extra: &str) -> String {
    format!(
        "introspection:\n  endpoint: {}\n  issuer: {}\n  client_id: {}\n  client_secret_file: {}\n{extra}",
        idp.introspect_url(),
        idp.issuer,
        INTROSPECTION_CLIENT.0,
        secret_file().display()
    )
}

fn active(idp: &Idp, cnf: Value) -> Value {
    json!({"active": true, "iss": idp.issuer, "sub": "alice", "client_id": "client-a",
           "scope": "read", "exp": now() + 600, "cnf": cnf})
}

async fn opaque_check(certbound: &Certbound, token: &str, cert: &ClientCert) -> Answer {
    let auth = format!("Bearer {token}");
    certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
}

async fn start(idp: &Idp, extra: &str) -> Certbound {
    Certbound::start(&config(idp, extra)).await
}

#[tokio::test]
async fn active_bound_token_with_matching_certificate_is_allowed() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let certbound = start(&idp, "").await;
    let answer = opaque_check(&certbound, OPAQUE, &cert).await;
    answer.assert_allowed();
    assert_eq!(
        answer
            .headers
            .get("x-certbound-subject")
            .map(String::as_str),
        Some("alice")
    );
    assert_eq!(answer.metadata.get("x5t#S256"), Some(&cert.x5t()));
}

#[tokio::test]
async fn inactive_token_is_401() {
    let idp = Idp::start(&[]).await;
    let certbound = start(&idp, "").await;
    opaque_check(&certbound, "unknown-token", &ClientCert::self_signed("a"))
        .await
        .assert_invalid_token("token_inactive");
}

#[tokio::test]
async fn certificate_mismatch_is_401() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let certbound = start(&idp, "").await;
    opaque_check(&certbound, OPAQUE, &ClientCert::self_signed("b"))
        .await
        .assert_invalid_token("binding_mismatch");
}

#[tokio::test]
async fn cnf_as_a_json_string_is_understood() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    let cnf = json!({"x5t#S256": cert.x5t()}).to_string();
    idp.set_answer(OPAQUE, active(&idp, json!(cnf)));
    let certbound = start(&idp, "").await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
}

#[tokio::test]
async fn unbound_active_token_is_401_in_required_mode() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, Value::Null));
    let certbound = start(&idp, "").await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_invalid_token("cnf_missing");
}

#[tokio::test]
async fn answers_are_cached_and_the_binding_rechecked_on_every_hit() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let certbound = start(&idp, "").await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    assert_eq!(
        idp.introspection_hits(),
        1,
        "the second check must be a cache hit"
    );
    // A hit is still bound: another certificate with the cached token is refused.
    opaque_check(&certbound, OPAQUE, &ClientCert::self_signed("b"))
        .await
        .assert_invalid_token("binding_mismatch");
    assert_eq!(idp.introspection_hits(), 1);
}

#[tokio::test]
async fn cached_answers_expire_at_the_tokens_exp() {
    let idp = Idp::start(&[]).await;
    let clock = ManualClock::new(now());
    let cert = ClientCert::self_signed("a");
    let mut answer = active(&idp, json!({"x5t#S256": cert.x5t()}));
    answer["exp"] = json!(now() + 30);
    idp.set_answer(OPAQUE, answer);
    let certbound = Certbound::start_with_clock(
        &config(&idp, "  cache_ttl_seconds: 300\n"),
        Arc::new(clock.clone()),
    )
    .await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    clock.advance(29);
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.introspection_hits(), 1);

    // Past exp the entry is gone: the endpoint is asked again (and now says inactive).
    clock.advance(2);
    idp.set_answer(OPAQUE, json!({"active": false}));
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_invalid_token("token_inactive");
    assert_eq!(idp.introspection_hits(), 2);
}

#[tokio::test]
async fn inactive_answers_are_cached_briefly() {
    let idp = Idp::start(&[]).await;
    let clock = ManualClock::new(now());
    let certbound = Certbound::start_with_clock(
        &config(&idp, "  inactive_cache_ttl_seconds: 10\n"),
        Arc::new(clock.clone()),
    )
    .await;
    let cert = ClientCert::self_signed("a");
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_invalid_token("token_inactive");
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_invalid_token("token_inactive");
    assert_eq!(idp.introspection_hits(), 1);
    clock.advance(10);
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.introspection_hits(), 2);
}

#[tokio::test]
async fn endpoint_errors_answer_503_and_are_never_cached() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let certbound = start(&idp, "").await;
    idp.set_introspection_status(500);
    let answer = opaque_check(&certbound, OPAQUE, &cert).await;
    answer.assert_unavailable();
    assert_eq!(answer.reason(), "introspection_unavailable");
    idp.set_introspection_status(200);
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.introspection_hits(), 2);
}

#[tokio::test]
async fn rejected_client_credentials_answer_503() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "wrong\n").unwrap();
    let yaml = format!(
        "introspection:\n  endpoint: {}\n  client_id: certbound\n  client_secret_file: {}\n",
        idp.introspect_url(),
        secret.display()
    );
    let certbound = Certbound::start(&yaml).await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_unavailable();
}

#[tokio::test]
async fn client_secret_post_and_secret_files_work() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let yaml = format!(
        "introspection:\n  endpoint: {}\n  client_id: certbound\n  client_secret_file: {}\n  auth_method: client_secret_post\n",
        idp.introspect_url(),
        secret_file().display()
    );
    let certbound = Certbound::start(&yaml).await;
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
}

#[tokio::test]
async fn the_endpoint_can_come_from_discovery_and_jwts_can_be_introspected_too() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    // A JWT-shaped token that no configured issuer could verify: introspection decides.
    let jwt_shaped = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln";
    idp.set_answer(jwt_shaped, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let yaml = format!(
        "introspection:\n  issuer: {}\n  client_id: certbound\n  client_secret_file: {}\n  introspect_jwts: true\n",
        idp.issuer,
        secret_file().display()
    );
    let certbound = Certbound::start(&yaml).await;
    opaque_check(&certbound, jwt_shaped, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.discovery_hits(), 1);
}

#[tokio::test]
async fn issuer_and_audience_checks_apply_to_answers() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    let mut answer = active(&idp, json!({"x5t#S256": cert.x5t()}));
    answer["iss"] = json!("https://someone-else.test");
    idp.set_answer("wrong-iss", answer.clone());
    answer["iss"] = json!(idp.issuer);
    answer["aud"] = json!(["https://other.test"]);
    idp.set_answer("wrong-aud", answer);
    let certbound = start(&idp, &format!("  audiences: [{AUDIENCE}]\n")).await;
    opaque_check(&certbound, "wrong-iss", &cert)
        .await
        .assert_invalid_token("issuer_unknown");
    opaque_check(&certbound, "wrong-aud", &cert)
        .await
        .assert_invalid_token("audience_mismatch");
}

/// `introspect_jwts: true` with a server that does not introspect JWTs (400
/// `unsupported_token_type`): JWTs are verified locally instead (and the server is not asked
/// again for a while), opaque tokens are still introspected.
#[tokio::test]
async fn jwts_the_endpoint_will_not_introspect_are_verified_locally() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    idp.refuse_jwts();
    let cert = ClientCert::self_signed("a");
    idp.set_answer(OPAQUE, active(&idp, json!({"x5t#S256": cert.x5t()})));
    let yaml = config_for(&idp, &config(&idp, "  introspect_jwts: true\n"));
    let certbound = Certbound::start(&yaml).await;
    let bound = signer.sign(&claims(&idp.issuer, Some(&cert.x5t())));
    opaque_check(&certbound, &bound, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.introspection_hits(), 1);
    // Remembered: the next JWTs are not sent to the endpoint; they are still fully checked.
    let other = ClientCert::self_signed("b");
    opaque_check(&certbound, &bound, &other)
        .await
        .assert_invalid_token("binding_mismatch");
    let forged = Signer::es256("k1").sign(&claims(&idp.issuer, Some(&cert.x5t())));
    opaque_check(&certbound, &forged, &cert)
        .await
        .assert_invalid_token("signature_invalid");
    assert_eq!(idp.introspection_hits(), 1);
    // Opaque tokens are introspected as before.
    opaque_check(&certbound, OPAQUE, &cert)
        .await
        .assert_allowed();
    assert_eq!(idp.introspection_hits(), 2);
}

/// `active: false` for a JWT that verifies locally stays a deny: the answer is authoritative
/// (the token may be revoked). A log line hints at `introspect_jwts: false` for servers that
/// answer so for every JWT.
#[tokio::test]
async fn an_inactive_answer_for_a_locally_valid_jwt_stays_denied() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let cert = ClientCert::self_signed("a");
    let yaml = config_for(&idp, &config(&idp, "  introspect_jwts: true\n"));
    let certbound = Certbound::start(&yaml).await;
    let bound = signer.sign(&claims(&idp.issuer, Some(&cert.x5t())));
    opaque_check(&certbound, &bound, &cert)
        .await
        .assert_invalid_token("token_inactive");
    assert_eq!(idp.introspection_hits(), 1);
}

/// RFC 9449 §7.2 for introspected tokens: an answer whose `cnf` names a method certbound does
/// not verify here (`jkt` with DPoP off, `jwk`, anything unknown) is refused even where unbound
/// tokens pass (`when_present`); an answer with no `cnf` at all is the only unbound one.
#[tokio::test]
async fn an_introspected_sender_constrained_token_is_never_taken_as_a_bearer_token() {
    let idp = Idp::start(&[]).await;
    let cert = ClientCert::self_signed("a");
    let certbound = start(&idp, "binding:\n  mode: when_present\n").await;
    for (token, cnf, reason) in [
        (
            "dpop-bound",
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            "dpop_downgrade",
        ),
        (
            "dpop-bound-string",
            json!(r#"{"jkt":"abc"}"#),
            "dpop_downgrade",
        ),
        (
            "jwk-bound",
            json!({"jwk": {"kty": "OKP"}}),
            "cnf_unverified",
        ),
        ("unknown-bound", json!({"mtls_san": "x"}), "cnf_unverified"),
        ("empty-cnf", json!({}), "cnf_invalid"),
    ] {
        idp.set_answer(token, active(&idp, cnf));
        let answer = opaque_check(&certbound, token, &cert).await;
        assert_eq!(answer.reason(), reason, "{token}: {answer:?}");
        answer.assert_invalid_token(reason);
    }
    let mut unbound = active(&idp, Value::Null);
    unbound.as_object_mut().unwrap().remove("cnf");
    idp.set_answer("unbound", unbound);
    opaque_check(&certbound, "unbound", &cert)
        .await
        .assert_allowed();
}
