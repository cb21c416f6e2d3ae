//! What the hot path allocates: an allowed request with a cached token, decided the way the
//! Envoy module decides it (`Policy::decide_cached`, the certificate as Envoy's SHA-256 digest,
//! the default claim headers, `remove_authorization`). Counted by `allocation-counter`'s global
//! allocator, on this thread: deterministic, unlike a timing, so a change that adds an allocation
//! to every request fails here rather than as noise in a benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certbound_core::keys::KeySet;
use certbound_core::{
    AccessRequest, Authorization, KeyLookup, Outcome, PeerCertificate, TokenCache,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "https://api.example.com";
const NOW: i64 = 1_800_000_000;

struct Keys(Arc<KeySet>);

impl KeyLookup for Keys {
    fn key_set(&self, _: usize) -> Option<Arc<KeySet>> {
        Some(Arc::clone(&self.0))
    }
}

#[test]
fn an_allowed_request_with_a_cached_token_allocates_only_its_answer() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
                     "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                     "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
    let jwks = json!({"keys": [jwk]}).to_string();
    let path =
        std::env::temp_dir().join(format!("certbound-allocations-{}.json", std::process::id()));
    std::fs::write(&path, &jwks).unwrap();
    let text = format!(
        "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwks_file: {}\n\
         upstream:\n  remove_authorization: true\n",
        path.display()
    );
    let settings = certbound_core::config::parse(&text)
        .unwrap()
        .decision_settings(None)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let keys = Keys(Arc::new(KeySet::from_jwks(jwks.as_bytes()).unwrap().0));
    let cache = TokenCache::new(1000, 3600);

    let digest: [u8; 32] = Sha256::digest(b"the client's certificate").into();
    let claims: Value = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "client_id": "client-a", "scope": "read write", "iat": NOW - 5, "exp": NOW + 600,
        "cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode(digest)}});
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let request = AccessRequest {
        authorization: Authorization::One(format!("Bearer {token}")),
        method: "GET".into(),
        path: "/items".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        peer_certificate: PeerCertificate::Sha256Hex(
            digest.iter().map(|b| format!("{b:02x}")).collect(),
        ),
        ..Default::default()
    };
    let policy = &settings.policy;
    let first = policy.decide_cached(&keys, Some(&cache), &request, NOW);
    assert!(matches!(first.outcome, Outcome::Allow(_)), "{first:?}");
    assert_eq!(first.facts.token_cache, Some(false));

    let mut decision = None;
    let count = allocation_counter::measure(|| {
        decision = Some(policy.decide_cached(&keys, Some(&cache), &request, NOW));
    })
    .count_total;
    let decision = decision.expect("decided");
    assert_eq!(decision.facts.token_cache, Some(true), "{decision:?}");
    let Outcome::Allow(upstream) = &decision.outcome else {
        panic!("{decision:?}")
    };
    let set: Vec<(&str, &str)> = upstream
        .set_headers
        .iter()
        .map(|(name, value)| (&**name, value.as_str()))
        .collect();
    assert_eq!(
        set,
        [
            ("x-certbound-client-id", "client-a"),
            ("x-certbound-subject", "alice")
        ]
    );
    let removed: Vec<&str> = upstream.remove_headers.iter().map(|h| &**h).collect();
    assert_eq!(removed, ["authorization", "dpop"]);
    // What is left: the two claim headers' values and the list that holds them (the answer
    // itself), and the list of headers to remove.
    assert!(
        count <= 4,
        "a cached allow made {count} allocations (at most 4: the claim headers' values, their \
         list, and the list of headers to remove)"
    );
}
