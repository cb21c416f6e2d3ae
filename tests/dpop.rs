//! DPoP (RFC 9449) through the gRPC service: proofs made at test time by an independent signer
//! (aws-lc-rs, fields set by hand), keys served over real HTTP, the in-memory replay store.
//! Elsewhere: the Redis store (`tests/dpop_redis.rs`), the npm `dpop` client through real Envoy
//! (`tests/envoy_e2e.rs`, `tests/module_e2e.rs`), hostile proofs (`tests/adversarial.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::dpop::DpopKey;
use common::*;
use serde_json::{Value, json};

const HTU: &str = "https://api.test/api/items";
const ALGS: &str = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA Ed25519";

struct World {
    idp: Idp,
    signer: Signer,
    certbound: Certbound,
    key: DpopKey,
}

impl World {
    async fn start(dpop: &str) -> Self {
        let signer = Signer::es256("k1");
        let idp = Idp::start(&[&signer]).await;
        let config = config_for(&idp, &format!("dpop:\n  enabled: true\n{dpop}"));
        let certbound = Certbound::start(&config).await;
        Self {
            idp,
            signer,
            certbound,
            key: DpopKey::es256(),
        }
    }

    /// A token bound to the world's DPoP key (`cnf.jkt`).
    fn token(&self) -> String {
        self.token_with_cnf(json!({"jkt": self.key.jkt()}))
    }

    fn token_with_cnf(&self, cnf: Value) -> String {
        let mut claims = claims(&self.idp.issuer, None);
        claims["cnf"] = cnf;
        self.signer.sign(&claims)
    }

    /// A Check with these headers and no client certificate.
    async fn check(&self, headers: &[(&str, &str)]) -> Answer {
        self.certbound.check(request(headers, "")).await
    }

    async fn dpop(&self, token: &str, proof: &str) -> Answer {
        let auth = format!("DPoP {token}");
        self.check(&[("authorization", &auth), ("dpop", proof)])
            .await
    }
}

#[tokio::test]
async fn a_bound_token_with_a_good_proof_is_allowed_without_a_client_certificate() {
    let w = World::start("").await;
    let token = w.token();
    let answer = w.dpop(&token, &w.key.proof("GET", HTU, &token)).await;
    answer.assert_allowed();
    assert_eq!(answer.metadata.get("jkt"), Some(&w.key.jkt()), "{answer:?}");
    assert_eq!(
        answer
            .headers
            .get("x-certbound-subject")
            .map(String::as_str),
        Some("alice")
    );
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let proof = w.key.proof("GET", HTU, &token);
    w.check(&[
        ("authorization", &format!("dpop {token}")),
        ("dpop", &proof),
    ])
    .await
    .assert_allowed();
}

#[tokio::test]
async fn a_proof_is_accepted_once() {
    let w = World::start("").await;
    let token = w.token();
    let proof = w.key.proof("GET", HTU, &token);
    w.dpop(&token, &proof).await.assert_allowed();
    let again = w.dpop(&token, &proof).await;
    again.assert_unauthorized(
        "dpop_replayed",
        &format!(r#"DPoP error="invalid_dpop_proof", algs="{ALGS}""#),
    );
    assert_eq!(
        w.certbound
            .metric(r#"certbound_dpop_replay_checks_total{store="memory",result="replayed"}"#),
        1
    );
    assert_eq!(
        w.certbound
            .metric(r#"certbound_checks_total{decision="deny",reason="dpop_replayed"}"#),
        1
    );
    // A new proof for the same token is fine.
    w.dpop(&token, &w.key.proof("GET", HTU, &token))
        .await
        .assert_allowed();
}

#[tokio::test]
async fn the_token_cache_still_applies_to_the_access_token_and_the_proof_is_checked_every_time() {
    let w = World::start("").await;
    let token = w.token();
    for _ in 0..3 {
        w.dpop(&token, &w.key.proof("GET", HTU, &token))
            .await
            .assert_allowed();
    }
    let hits = w
        .certbound
        .metric(r#"certbound_token_cache_total{result="hit"}"#);
    assert_eq!(hits, 2, "the access token is verified once");
    // A cached token with a bad proof is still refused.
    let wrong = w.key.proof("POST", HTU, &token);
    w.dpop(&token, &wrong).await.assert_unauthorized(
        "dpop_method_mismatch",
        &format!(r#"DPoP error="invalid_dpop_proof", algs="{ALGS}""#),
    );
}

#[tokio::test]
async fn challenges_follow_rfc_9449() {
    let w = World::start("").await;
    let token = w.token();
    // No credentials: both schemes are offered.
    w.check(&[])
        .await
        .assert_unauthorized("token_missing", &format!(r#"Bearer, DPoP algs="{ALGS}""#));
    // A DPoP-bound token sent as a Bearer token: a downgrade.
    w.check(&[("authorization", &format!("Bearer {token}"))])
        .await
        .assert_unauthorized(
            "dpop_downgrade",
            &format!(r#"DPoP error="invalid_token", algs="{ALGS}""#),
        );
    // The DPoP scheme without a proof.
    w.check(&[("authorization", &format!("DPoP {token}"))])
        .await
        .assert_unauthorized(
            "dpop_proof_missing",
            &format!(r#"DPoP error="invalid_dpop_proof", algs="{ALGS}""#),
        );
    // A token that is not DPoP-bound, with the DPoP scheme.
    let unbound = w.token_with_cnf(json!({"x5t#S256": "abc"}));
    w.dpop(&unbound, &w.key.proof("GET", HTU, &unbound))
        .await
        .assert_unauthorized(
            "dpop_token_unbound",
            &format!(r#"DPoP error="invalid_token", algs="{ALGS}""#),
        );
    // A bad token with the DPoP scheme.
    let expired = {
        let mut claims = claims(&w.idp.issuer, None);
        claims["cnf"] = json!({"jkt": w.key.jkt()});
        claims["exp"] = json!(now() - 600);
        w.signer.sign(&claims)
    };
    w.dpop(&expired, &w.key.proof("GET", HTU, &expired))
        .await
        .assert_unauthorized(
            "token_expired",
            &format!(r#"DPoP error="invalid_token", algs="{ALGS}""#),
        );
}

#[tokio::test]
async fn the_configured_algorithms_are_the_only_ones_accepted_and_advertised() {
    let w = World::start("  algorithms: [ES384]\n").await;
    let token = w.token();
    w.dpop(&token, &w.key.proof("GET", HTU, &token))
        .await
        .assert_unauthorized(
            "dpop_alg_not_allowed",
            r#"DPoP error="invalid_dpop_proof", algs="ES384""#,
        );
}

#[tokio::test]
async fn a_token_bound_both_ways_needs_the_certificate_and_the_proof() {
    let w = World::start("").await;
    let cert = ClientCert::self_signed("client-a");
    let other = ClientCert::self_signed("client-b");
    let token = w.token_with_cnf(json!({"jkt": w.key.jkt(), "x5t#S256": cert.x5t()}));
    let auth = format!("DPoP {token}");
    let with = |cert: &ClientCert| {
        let proof = w.key.proof("GET", HTU, &token);
        let request = request(
            &[("authorization", &auth), ("dpop", &proof)],
            &cert.url_encoded(),
        );
        w.certbound.check(request)
    };
    with(&cert).await.assert_allowed();
    with(&other)
        .await
        .assert_invalid_token_dpop("binding_mismatch");
    let proof = w.key.proof("GET", HTU, &token);
    w.dpop(&token, &proof)
        .await
        .assert_invalid_token_dpop("cert_missing");
}

#[tokio::test]
async fn mtls_bound_bearer_tokens_work_as_before_with_dpop_enabled() {
    let w = World::start("").await;
    let cert = ClientCert::self_signed("client-a");
    let token = w.token_with_cnf(json!({"x5t#S256": cert.x5t()}));
    let auth = format!("Bearer {token}");
    w.certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_allowed();
    // binding.mode: required still refuses an unbound Bearer token.
    let unbound = w.token_with_cnf(json!({}));
    let auth = format!("Bearer {unbound}");
    w.certbound
        .check(request(&[("authorization", &auth)], &cert.url_encoded()))
        .await
        .assert_invalid_token("x5t_missing");
}

#[tokio::test]
async fn dpop_is_off_unless_enabled() {
    let signer = Signer::es256("k1");
    let idp = Idp::start(&[&signer]).await;
    let certbound = Certbound::start(&config_for(&idp, "")).await;
    let key = DpopKey::es256();
    let mut claims = claims(&idp.issuer, None);
    claims["cnf"] = json!({"jkt": key.jkt()});
    let token = signer.sign(&claims);
    let proof = key.proof("GET", HTU, &token);
    let answer = certbound
        .check(request(
            &[
                ("authorization", &format!("DPoP {token}")),
                ("dpop", &proof),
            ],
            "",
        ))
        .await;
    answer.assert_unauthorized("token_missing", "Bearer");
}

#[tokio::test]
async fn the_url_comes_from_envoy_unless_a_public_base_url_or_trusted_forwarded_headers_say_otherwise()
 {
    let w = World::start("").await;
    let token = w.token();
    let auth = format!("DPoP {token}");
    // Forwarded headers are not trusted by default.
    let proof = w
        .key
        .proof("GET", "https://public.example/api/items", &token);
    w.check(&[
        ("authorization", &auth),
        ("dpop", &proof),
        ("x-forwarded-host", "public.example"),
    ])
    .await
    .assert_unauthorized(
        "dpop_url_mismatch",
        &format!(r#"DPoP error="invalid_dpop_proof", algs="{ALGS}""#),
    );

    let w = World::start("  public_base_url: https://public.example\n").await;
    let token = w.token();
    let proof = w
        .key
        .proof("GET", "https://PUBLIC.example:443/api/items", &token);
    w.dpop(&token, &proof).await.assert_allowed();

    let w = World::start("  trust_forwarded_headers: true\n").await;
    let token = w.token();
    let auth = format!("DPoP {token}");
    let proof = w.key.proof("GET", "http://edge.example/api/items", &token);
    w.check(&[
        ("authorization", &auth),
        ("dpop", &proof),
        ("x-forwarded-host", "edge.example"),
        ("x-forwarded-proto", "http"),
    ])
    .await
    .assert_allowed();
}

#[tokio::test]
async fn nonces_are_required_when_configured_and_shared_by_replicas_with_the_secret() {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "0123456789abcdef0123456789abcdef").unwrap();
    let nonce_config = format!(
        "  nonce:\n    secret_file: {}\n    lifetime_seconds: 60\n",
        secret.path().display()
    );
    let w = World::start(&nonce_config).await;
    let token = w.token();
    // A nonce of the previous slot is accepted, and the answer hands out the current one.
    let keys = certbound_core::dpop::NonceKeys::new(b"0123456789abcdef0123456789abcdef", 60);
    let previous = keys.issue(now() - 60);
    let proof = w
        .key
        .build("GET", HTU, &token)
        .claim("nonce", json!(previous))
        .sign();
    let aged = w.dpop(&token, &proof).await;
    aged.assert_allowed();
    assert_eq!(
        aged.response_headers.get("dpop-nonce"),
        Some(&keys.issue(now())),
        "{aged:?}"
    );
    // No nonce: 401 use_dpop_nonce, with a nonce to use.
    let first = w.dpop(&token, &w.key.proof("GET", HTU, &token)).await;
    first.assert_unauthorized(
        "dpop_nonce_required",
        &format!(r#"DPoP error="use_dpop_nonce", algs="{ALGS}""#),
    );
    let nonce = first
        .headers
        .get("dpop-nonce")
        .expect("a DPoP-Nonce")
        .clone();
    // A made-up nonce is refused the same way.
    let made_up = w
        .key
        .build("GET", HTU, &token)
        .claim("nonce", json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .sign();
    w.dpop(&token, &made_up).await.assert_unauthorized(
        "dpop_nonce_required",
        &format!(r#"DPoP error="use_dpop_nonce", algs="{ALGS}""#),
    );
    // The nonce works here and on another replica with the same secret.
    let with_nonce = |w: &World| {
        w.key
            .build("GET", HTU, &token)
            .claim("nonce", json!(nonce))
            .sign()
    };
    w.dpop(&token, &with_nonce(&w)).await.assert_allowed();
    let replica = Certbound::start(&config_for(
        &w.idp,
        &format!("dpop:\n  enabled: true\n{nonce_config}"),
    ))
    .await;
    let auth = format!("DPoP {token}");
    let proof = with_nonce(&w);
    replica
        .check(request(&[("authorization", &auth), ("dpop", &proof)], ""))
        .await
        .assert_allowed();
}

#[tokio::test]
async fn introspected_tokens_with_cnf_jkt_are_checked_the_same_way() {
    let idp = Idp::start(&[]).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), INTROSPECTION_CLIENT.1).unwrap();
    let key = DpopKey::es256();
    let other = DpopKey::es256();
    const OPAQUE: &str = "opaque-dpop-token-1";
    idp.set_answer(
        OPAQUE,
        json!({"active": true, "iss": idp.issuer, "sub": "alice", "client_id": "client-a",
               "scope": "read", "exp": now() + 600, "cnf": {"jkt": key.jkt()}}),
    );
    let certbound = Certbound::start(&format!(
        "introspection:\n  endpoint: {}\n  issuer: {}\n  client_id: {}\n  client_secret_file: {}\n\
         dpop:\n  enabled: true\n",
        idp.introspect_url(),
        idp.issuer,
        INTROSPECTION_CLIENT.0,
        secret.path().display()
    ))
    .await;
    let auth = format!("DPoP {OPAQUE}");
    let check = |proof: String| {
        let auth = auth.clone();
        let certbound = &certbound;
        async move {
            certbound
                .check(request(&[("authorization", &auth), ("dpop", &proof)], ""))
                .await
        }
    };
    check(key.proof("GET", HTU, OPAQUE)).await.assert_allowed();
    check(other.proof("GET", HTU, OPAQUE))
        .await
        .assert_invalid_token_dpop("dpop_key_mismatch");
    let bearer = format!("Bearer {OPAQUE}");
    certbound
        .check(request(&[("authorization", &bearer)], ""))
        .await
        .assert_invalid_token_dpop("dpop_downgrade");
}
