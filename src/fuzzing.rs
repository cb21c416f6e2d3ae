//! Entry points for fuzzing (`fuzz/`, cargo-fuzz) and for replaying the corpus as an ordinary
//! test (`tests/fuzz_replay.rs`). Each takes arbitrary bytes and must neither panic nor, for the
//! whole-request target, ever allow: no token the fuzzer can make is signed by a trusted key.

use std::sync::{Arc, OnceLock};

use prost::Message;

use crate::grpc::convert;
use crate::grpc::pb::envoy::service::auth::v3::CheckRequest;
use certbound_core::keys::KeySet;
use certbound_core::{Authorization, KeyLookup, Outcome, Policy, bearer, certificate, token, xfcc};

/// A fixed public key nobody holds the private half of (RFC 7517 appendix A.1 example).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"fuzz",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

struct FixedKeys(Arc<KeySet>);

impl KeyLookup for FixedKeys {
    fn key_set(&self, _: usize) -> Option<Arc<KeySet>> {
        Some(Arc::clone(&self.0))
    }
}

fn fixture() -> &'static (Policy, FixedKeys) {
    static FIXTURE: OnceLock<(Policy, FixedKeys)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let yaml = "issuers:\n  - issuer: https://idp.fuzz\n    audiences: [https://api.fuzz]\n    jwks_uri: https://idp.fuzz/jwks\n\
                    certificate:\n  sources: [peer, xfcc, client_cert]\n\
                    policy:\n  rules:\n    - path_prefix: /admin\n      scopes: [admin]\n      groups: [ops]\n";
        let settings = crate::config::Settings::from_yaml(yaml, Vec::new(), None).expect("fuzz policy");
        let keys = KeySet::from_jwks(JWKS.as_bytes()).expect("fuzz JWKS").0;
        (settings.decision.policy, FixedKeys(Arc::new(keys)))
    })
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// XFCC parsing.
pub fn xfcc(data: &[u8]) {
    if let Ok(elements) = xfcc::parse(&text(data)) {
        for element in &elements {
            let _ = (element.get("cert"), element.get("hash"), element.get("by"));
        }
    }
}

/// Certificate input decoding: URL-encoded PEM, raw DER, RFC 9440 header.
pub fn certificate(data: &[u8]) {
    let _ = certificate::decode_url_encoded_pem(&text(data));
    let _ = certificate::decode_der(data);
    let _ = certificate::decode_rfc9440(Some(&text(data)));
    let _ = certificate::decode_file(data);
}

/// Bearer parsing.
pub fn bearer(data: &[u8]) {
    let _ = bearer::bearer_token(&Authorization::One(text(data)));
}

/// JWT header and claims handling up to and including the signature check.
pub fn jwt(data: &[u8]) {
    let (policy, keys) = fixture();
    if let Ok(jwt) = token::parse(&text(data))
        && let Some(issuer) = policy.issuers.first()
    {
        let keys = keys.key_set(0).expect("fixed keys");
        // Whatever the fuzzer builds, the signature cannot verify against the fixed key.
        assert!(
            jwt.verify(0, issuer, &keys, 1_800_000_000, 60).is_err(),
            "a forged JWT verified"
        );
    }
}

/// A whole `CheckRequest` (protobuf bytes) through conversion, decision and response.
pub fn check_request(data: &[u8]) {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let (policy, keys) = fixture();
    let decision = match convert::access_request(request) {
        Ok(access) => policy.decide(keys, &access, 1_800_000_000),
        Err(reason) => certbound_core::Decision::deny(reason),
    };
    assert!(
        !matches!(decision.outcome, Outcome::Allow(_)),
        "a fuzzed request was allowed"
    );
    let response = convert::check_response(&decision, convert::ResponseOptions::default());
    assert_ne!(
        response.status.map(|s| s.code),
        Some(0),
        "a deny without a non-zero status"
    );
}
